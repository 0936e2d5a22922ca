//! The update agent's units and the clock's, shipped and enabled in every image (docs/design.md §4):
//! `berth-update.service` runs the agent (check, download, stage, reboot),
//! `berth-mark-good.service` marks the booted slot good once `boot-complete.target` is reached,
//! and `berth-timesync.service` sets the clock (SNTP) so that the agent can judge expiry and
//! rollouts. With them goes `/usr/lib/clock-epoch`, whose mtime is the image's build time:
//! the clock floor (`berth_timesync::status`).
//!
//! They go to `/usr/lib/systemd/system` next to `/usr/bin/berth-update` and
//! `/usr/bin/berth-timesync`, before the image's overlay (which may replace them), and are
//! enabled with the image's own `[units] enable` list, so a definition need not name them.

use berth_fstree::{Metadata, Node, NodeKind, Tree};

/// Where the image's units live.
pub const UNIT_DIR: &str = "usr/lib/systemd/system";

/// The agent's daemon: checks the channel, downloads, stages and reboots by its strategy.
/// Ordered after `network-online.target` when something pulls it in, but it does not pull it in
/// itself: boot-complete.target waits for every job of the boot, and on a machine without a
/// network that target only fails after a minute. The agent retries a check that finds no
/// network.
pub const UPDATE_SERVICE: &str = "\
[Unit]
Description=Berth update agent (checks, downloads, stages, reboots)
After=network-online.target berth-timesync.service

[Service]
Type=simple
ExecStart=/usr/bin/berth-update daemon
Restart=on-failure
RestartSec=30s

[Install]
WantedBy=multi-user.target
";

/// Marks the booted slot good once the boot is healthy.
pub const MARK_GOOD_SERVICE: &str = "\
[Unit]
Description=Mark the booted slot good once the boot is healthy
Requires=boot-complete.target
After=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/berth-update mark-good

[Install]
WantedBy=boot-complete.target
";

/// The SNTP client. Ready once the clock is at least the image's build time (and, with
/// `servers = []`, recorded as trusted), before any server answers: the agent, ordered after
/// it, never starts on a clock before the floor, and the boot never waits for a server. It
/// orders itself after `network-online.target` without pulling it in, as the agent does.
pub const TIMESYNC_SERVICE: &str = "\
[Unit]
Description=Berth time synchronisation (SNTP client)
After=network-online.target

[Service]
Type=notify
ExecStart=/usr/bin/berth-timesync daemon
Restart=on-failure
RestartSec=30s

[Install]
WantedBy=multi-user.target
";

/// The units, by name, in the order they are enabled.
pub const UNITS: [(&str, &str); 3] = [
    ("berth-update.service", UPDATE_SERVICE),
    ("berth-mark-good.service", MARK_GOOD_SERVICE),
    ("berth-timesync.service", TIMESYNC_SERVICE),
];

/// The clock floor: an empty file whose mtime (the build's epoch) is the image's build time.
pub const CLOCK_EPOCH: &str = "usr/lib/clock-epoch";

/// The units' names, to be enabled.
pub fn names() -> Vec<String> {
    UNITS.iter().map(|(n, _)| n.to_string()).collect()
}

/// Writes the unit files and the clock floor into the root (replacing what a package may have
/// put there).
pub fn install(root: &mut Tree, epoch: i64) -> anyhow::Result<()> {
    root.mkdir_all(UNIT_DIR, &Metadata::root(0o755, epoch))?;
    if root.lookup(CLOCK_EPOCH).is_some() {
        root.unlink(CLOCK_EPOCH)?;
    }
    root.insert(CLOCK_EPOCH, Node::new(NodeKind::File(b"".as_slice().into()), Metadata::root(0o644, epoch)))?;
    put_units(root, epoch, &UNITS)
}

/// Writes Berth's own unit files into [`UNIT_DIR`], replacing what a package may have put there.
pub(crate) fn put_units(root: &mut Tree, epoch: i64, units: &[(&str, &str)]) -> anyhow::Result<()> {
    for (name, text) in units {
        let path = format!("{UNIT_DIR}/{name}");
        if root.lookup(&path).is_some() {
            root.unlink(&path)?;
        }
        root.insert(&path, Node::new(NodeKind::File(text.as_bytes().into()), Metadata::root(0o644, epoch)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_enable() {
        let mut t = Tree::new(Metadata::root(0o755, 0));
        install(&mut t, 7).unwrap();
        // Installing twice replaces, never fails.
        install(&mut t, 7).unwrap();
        for (name, text) in UNITS {
            let install = berth_units::Install::parse(name, text).unwrap();
            assert_eq!(install.wanted_by.len(), 1, "{name}");
            assert!(text.contains("ExecStart=/usr/bin/berth-update ") || name == "berth-timesync.service", "{name}");
        }
        assert!(TIMESYNC_SERVICE.contains("ExecStart=/usr/bin/berth-timesync daemon"));
        // The floor carries the build's epoch.
        let floor = t.lookup(CLOCK_EPOCH).unwrap();
        assert_eq!(t.node(floor).meta.mtime, 7);
        let made = crate::enablement::enable(&mut t, &names(), 7).unwrap();
        assert_eq!(made.len(), 3, "{made:?}");
        assert!(t.lookup("etc/systemd/system/multi-user.target.wants/berth-timesync.service").is_some());
        let l = t.lookup("etc/systemd/system/multi-user.target.wants/berth-update.service").unwrap();
        assert_eq!(t.node(l).kind, NodeKind::Symlink(b"/usr/lib/systemd/system/berth-update.service".to_vec()));
        assert!(t.lookup("etc/systemd/system/boot-complete.target.wants/berth-mark-good.service").is_some());
    }
}
