//! The parts of the kernel command line stage 1 and stage 2 read.

use std::time::Duration;

/// Default bound on the wait for the root partition.
pub const DEFAULT_ROOT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `root=PARTUUID=<guid>` (the last `root=` wins, as for the kernel), lower-cased.
    pub partuuid: Option<String>,
    /// `root=` if it is not a PARTUUID.
    pub other_root: Option<String>,
    /// `berth.slot=` (the last one before `--`: berth_slot::cmdline, shared with the agent).
    pub slot: Option<String>,
    /// `berth.rootwait=<seconds>`.
    pub root_wait: Duration,
    /// `berth.watchdog=<seconds>`: the watchdog's timeout, 0 = off; `None`: the default.
    pub watchdog: Option<u32>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut c =
            Cmdline { partuuid: None, other_root: None, slot: None, root_wait: DEFAULT_ROOT_WAIT, watchdog: None };
        for word in text.split_ascii_whitespace() {
            if word == "--" {
                break;
            }
            if let Some(root) = word.strip_prefix("root=") {
                match root.strip_prefix("PARTUUID=") {
                    Some(u) => (c.partuuid, c.other_root) = (Some(u.to_ascii_lowercase()), None),
                    None => (c.partuuid, c.other_root) = (None, Some(root.to_string())),
                }
            } else if let Some(secs) = word.strip_prefix("berth.rootwait=")
                && let Ok(s) = secs.parse::<u64>()
            {
                c.root_wait = Duration::from_secs(s);
            } else if let Some(secs) = word.strip_prefix("berth.watchdog=")
                && let Ok(s) = secs.parse::<u32>()
            {
                c.watchdog = Some(s);
            }
        }
        c.slot = berth_slot::cmdline::slot_arg(text).map(str::to_string);
        c
    }

    /// Reads `/proc/cmdline`.
    pub fn read() -> Result<Cmdline, String> {
        std::fs::read_to_string("/proc/cmdline")
            .map(|t| Cmdline::parse(&t))
            .map_err(|e| format!("reading /proc/cmdline: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_bootmgr_appends() {
        let c = Cmdline::parse(
            "console=ttyS0 quiet root=/dev/sda1 root=PARTUUID=ABCDEF01-0000-4000-8000-000000000002 berth.slot=a\n",
        );
        assert_eq!(c.partuuid.as_deref(), Some("abcdef01-0000-4000-8000-000000000002"));
        assert_eq!(c.other_root, None);
        assert_eq!(c.slot.as_deref(), Some("a"));
        assert_eq!(c.root_wait, DEFAULT_ROOT_WAIT);
    }

    #[test]
    fn rootwait_and_init_args() {
        let c = Cmdline::parse("berth.rootwait=3 root=PARTUUID=x -- berth.slot=b");
        assert_eq!(c.root_wait, Duration::from_secs(3));
        assert_eq!(c.slot, None);
        let c = Cmdline::parse("berth.rootwait=soon root=/dev/vda2");
        assert_eq!(c.root_wait, DEFAULT_ROOT_WAIT);
        assert_eq!((c.partuuid, c.other_root.as_deref()), (None, Some("/dev/vda2")));
    }

    #[test]
    fn m2_the_last_berth_slot_wins_as_in_the_update_agent() {
        // bootmgr appends its berth.slot= after whatever the release's command line holds.
        let c = Cmdline::parse("console=ttyS0 berth.slot=a root=PARTUUID=x berth.slot=b");
        assert_eq!(c.slot.as_deref(), Some("b"));
        assert_eq!(Cmdline::parse("berth.slot=b -- berth.slot=a").slot.as_deref(), Some("b"));
    }

    #[test]
    fn watchdog_timeout() {
        assert_eq!(Cmdline::parse("console=ttyS0").watchdog, None);
        assert_eq!(Cmdline::parse("berth.watchdog=0").watchdog, Some(0));
        assert_eq!(Cmdline::parse("berth.watchdog=120 berth.slot=a").watchdog, Some(120));
        assert_eq!(Cmdline::parse("berth.watchdog=soon").watchdog, None);
    }
}
