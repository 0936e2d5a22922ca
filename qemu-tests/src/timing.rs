//! The boot time split, read from console timestamps: the host's arrival time of each console
//! line (for firmware and bootmgr, which have no clock of their own on the console) and the
//! kernel's `[seconds.micros]` stamps, which berth-init's own lines share (CLOCK_MONOTONIC).

use std::fmt;
use std::time::Duration;

/// How long each part of one boot took.
#[derive(Debug, Clone, PartialEq)]
pub struct BootSplit {
    /// QEMU start to bootmgr's first line.
    pub firmware: Duration,
    /// bootmgr's first line to the kernel's start (derived, see [`BootSplit::from_timeline`]).
    pub bootmgr: Duration,
    /// Kernel start to stage 1's first line.
    pub kernel: Duration,
    /// Stage 1's first line to stage 2's.
    pub stage1: Duration,
    /// Stage 2's first line to its ready marker.
    pub stage2: Duration,
}

/// `[   12.345678] …`: the kernel's timestamp of a console line.
pub fn kernel_stamp(line: &str) -> Option<Duration> {
    let rest = line.trim_start_matches(|c: char| c != '[').strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    let secs: f64 = stamp.trim().parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

impl BootSplit {
    /// The split of the first boot in `timeline` (arrival time since QEMU started, line).
    ///
    /// The kernel's start on the host clock is the earliest `arrival - stamp` over its lines:
    /// lines printed before the serial console existed arrive late in a burst and give larger
    /// values; lines printed live give the start itself (to the harness's polling interval).
    pub fn from_timeline(timeline: &[(Duration, String)]) -> Result<BootSplit, String> {
        let find = |needle: &str| {
            timeline.iter().find(|(_, l)| l.contains(needle)).ok_or_else(|| format!("no {needle:?} on the console"))
        };
        let stamp = |needle: &str| -> Result<Duration, String> {
            let (_, line) = find(needle)?;
            kernel_stamp(line).ok_or_else(|| format!("no kernel timestamp on {line:?}"))
        };
        let (bootmgr_at, _) = find("berth-bootmgr ")?;
        let stage1 = stamp("berth-init[1]: berth-init 0.1.0: stage 1")?;
        let stage2 = stamp("berth-init[1]: berth-init 0.1.0: stage 2")?;
        let ready = stamp("berth-init[1]: stage 2 ready")?;
        let (ready_at, _) = find("berth-init[1]: stage 2 ready")?;
        let kernel_start = timeline
            .iter()
            .take_while(|(at, _)| at <= ready_at)
            .filter_map(|(at, l)| kernel_stamp(l).and_then(|s| at.checked_sub(s)))
            .min()
            .ok_or("no kernel timestamps before the ready marker")?;
        let sub = |a: Duration, b: Duration, what: &str| {
            a.checked_sub(b).ok_or_else(|| format!("{what}: {a:?} is before {b:?}"))
        };
        Ok(BootSplit {
            firmware: *bootmgr_at,
            bootmgr: kernel_start.saturating_sub(*bootmgr_at),
            kernel: stage1,
            stage1: sub(stage2, stage1, "stage 2 before stage 1")?,
            stage2: sub(ready, stage2, "ready before stage 2")?,
        })
    }

    /// The parts in boot order, named.
    pub fn parts(&self) -> [(&'static str, Duration); 5] {
        [
            ("firmware", self.firmware),
            ("bootmgr", self.bootmgr),
            ("kernel", self.kernel),
            ("stage 1", self.stage1),
            ("stage 2", self.stage2),
        ]
    }

    pub fn total(&self) -> Duration {
        self.parts().iter().map(|(_, d)| *d).sum()
    }
}

impl fmt::Display for BootSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot time split (TCG):")?;
        for (what, d) in self.parts() {
            write!(f, " {what} {:.2} s,", d.as_secs_f64())?;
        }
        write!(f, " power-on to stage 2 ready {:.2} s", self.total().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64, line: &str) -> (Duration, String) {
        (Duration::from_millis(ms), line.to_string())
    }

    #[test]
    fn split_from_a_timeline() {
        let tl = vec![
            t(5000, "berth-bootmgr 0.1.0"),
            t(5100, "berth-bootmgr: starting the kernel of slot A"),
            // Early kernel lines arrive in a burst when the serial console registers.
            t(7200, "[    0.000000] Linux version 6.1"),
            t(7200, "[    1.000000] serial8250: ttyS0 at I/O 0x3f8"),
            t(8300, "[    2.000000] something live"),
            t(9400, "[    3.100000] berth-init[1]: berth-init 0.1.0: stage 1 (initramfs)"),
            t(11400, "[    5.000000] berth-init[1]: berth-init 0.1.0: stage 2"),
            t(11700, "[    5.250000] berth-init[1]: stage 2 ready (slot a) in 250 ms"),
        ];
        let s = BootSplit::from_timeline(&tl).unwrap();
        assert_eq!(s.firmware, Duration::from_millis(5000));
        assert_eq!(s.bootmgr, Duration::from_millis(1200));
        assert_eq!(s.kernel, Duration::from_millis(3100));
        assert_eq!(s.stage1, Duration::from_millis(1900));
        assert_eq!(s.stage2, Duration::from_millis(250));
        assert!(s.to_string().contains("stage 2 0.25 s"));
        assert!(BootSplit::from_timeline(&tl[..3]).is_err());
    }
}
