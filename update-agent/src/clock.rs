//! The agent's question to berth-timesync before it judges time (issue 15, M5): an index's
//! expiry, a rollout's start and a maintenance window all compare against the clock, and a
//! clock that was never set (a machine without an RTC battery boots in 1970; a reset RTC or a
//! VM restored from a snapshot can be anywhere) would turn every answer wrong. Until
//! berth-timesync has set the clock this boot (its status file; the contract is
//! `berth_timesync::status`), checks are refused with this error and the daemon asks again
//! soon.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How soon the daemon checks again after [`ClockNotSet`] (instead of its interval).
pub const CLOCK_RETRY: Duration = Duration::from_secs(30);

/// The clock is not to be believed yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "clock not synchronised yet; {0}; expiry and rollouts are judged once berth-timesync has set it \
     (berth-timesync status)"
)]
pub struct ClockNotSet(#[source] pub berth_timesync::ClockError);

/// Ok when berth-timesync has set the clock under `root` and `now` is not before the image's
/// build time.
pub fn clock_ready(root: &Path, now: SystemTime) -> Result<(), ClockNotSet> {
    berth_timesync::status::clock_synchronized_at(root, now).map(drop).map_err(ClockNotSet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_release::Timestamp;
    use berth_timesync::status::{self, Synchronized, system_time};

    #[test]
    fn m5_the_agent_refuses_to_judge_expiry_before_the_clock_is_set() {
        let root = tempfile::tempdir().unwrap();
        let now = system_time(Timestamp(1_796_583_600));
        let e = clock_ready(root.path(), now).unwrap_err();
        let said = crate::one_line(&anyhow::Error::new(e));
        assert!(
            said.starts_with("clock not synchronised yet; berth-timesync has not set the clock since boot"),
            "{said}"
        );

        let synced = Synchronized {
            time: Timestamp(1_796_583_590),
            server: "0.pool.ntp.org (192.0.2.1:123)".into(),
            offset_seconds: 3.5,
            delay_seconds: 0.02,
            stratum: 2,
            adjustment: "step".into(),
        };
        status::write(root.path(), &synced).unwrap();
        clock_ready(root.path(), now).unwrap();

        // A clock before the image's build time is refused even after a synchronisation.
        let floor = root.path().join(status::CLOCK_EPOCH);
        std::fs::create_dir_all(floor.parent().unwrap()).unwrap();
        std::fs::File::create(&floor).unwrap().set_modified(system_time(Timestamp(1_796_583_601))).unwrap();
        let e = clock_ready(root.path(), now).unwrap_err();
        assert!(e.to_string().contains("before this image was built (2026-12-06T19:00:01Z)"), "{e}");
    }
}
