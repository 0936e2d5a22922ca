//! A host's place in a staged rollout (docs/design.md §4): its position is a hash of its machine-id
//! and the release's version, a number in [0, 1) that differs per release (the same hosts are
//! not always first); it may take the release once the rollout's progress passes it.

use crate::artifact::Sha256;
use crate::index::Rollout;
use crate::time::Timestamp;

/// The position of `machine_id` in the rollout of `version`, in [0, 1).
pub fn position(machine_id: &str, version: &str) -> f64 {
    let mut h = Sha256::new();
    for part in [&b"berth rollout v1\0"[..], machine_id.trim().as_bytes(), b"\0", version.as_bytes()] {
        h.update(part);
    }
    let mut top = [0u8; 8];
    top.copy_from_slice(&h.finish().0[..8]);
    // 53 bits: exactly representable, and < 1.
    (u64::from_be_bytes(top) >> 11) as f64 / (1u64 << 53) as f64
}

/// How far the rollout has progressed at `now`, in [0, 1].
pub fn progress(r: &Rollout, now: Timestamp) -> f64 {
    if now < r.start {
        return 0.0;
    }
    if r.duration_seconds == 0 {
        return 1.0;
    }
    // Saturating: a signed index can hold any start (Index::check bounds it, but this stays
    // total for every input).
    (now.0.saturating_sub(r.start.0) as f64 / r.duration_seconds as f64).min(1.0)
}

/// Whether a host at `position` may take a release with rollout `r` at `now`.
pub fn allowed(r: &Rollout, position: f64, now: Timestamp) -> bool {
    let p = progress(r, now);
    p >= 1.0 || (p > 0.0 && position < p)
}

/// When a host at `position` may take it (the rollout's start plus its share of the duration).
pub fn allowed_from(r: &Rollout, position: f64) -> Timestamp {
    // The float-to-int cast saturates; the addition must too.
    Timestamp(r.start.0.saturating_add((position * r.duration_seconds as f64).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_spread_and_progress_lets_them_in() {
        let ps: Vec<f64> = (0..1000).map(|i| position(&format!("{i:032x}"), "2.0.0")).collect();
        assert!(ps.iter().all(|p| (0.0..1.0).contains(p)));
        let low = ps.iter().filter(|p| **p < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 below 0.5");
        assert_ne!(position("m", "1.0.0"), position("m", "2.0.0"));
        let r = Rollout { start: Timestamp(1000), duration_seconds: 100 };
        assert!(!allowed(&r, 0.0, Timestamp(999)));
        assert!(allowed(&r, 0.3, Timestamp(1031)));
        assert!(!allowed(&r, 0.3, Timestamp(1029)));
        assert!(allowed(&r, 0.999, Timestamp(1100)));
        assert_eq!(allowed_from(&r, 0.3), Timestamp(1030));
        let now = Rollout { start: Timestamp(1000), duration_seconds: 0 };
        assert!(allowed(&now, 0.99, Timestamp(1000)));
    }
}
