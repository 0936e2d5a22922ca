//! Berth's own services besides the update agent's (`agent_units`): `berth-devd.service`
//! (devices: modules, `/dev/disk` links, the power button) and `berth-netd.service` (DHCP;
//! `network-online.target` requires it) in every image and, in test images only
//! (`[debug] guest-agent = true`), `berth-guest-agent.service`. They go to
//! `/usr/lib/systemd/system` before the image's overlay (which may replace them) and are enabled
//! with the image's own `[units] enable` list.

use berth_fstree::{Metadata, Tree};

use crate::agent_units::UNIT_DIR;

/// DHCPv4 on every Ethernet interface. Ready (`READY=1`) once the first lease is applied, so
/// `network-online.target`, which requires it (`RequiredBy=`) and is ordered after it, is
/// reached then, or fails when no lease came within `TimeoutStartSec=` (the manager stops it,
/// and `Restart=` starts it again to keep asking). On a machine without an Ethernet interface
/// `ExecCondition=` skips it: nothing waits a minute for a lease that cannot come.
///
/// Runs as root with every capability: it needs only CAP_NET_ADMIN and CAP_NET_RAW, but
/// berth-init does not support `AmbientCapabilities=`/`CapabilityBoundingSet=` yet (review §4.2
/// step 3).
pub const NETD_SERVICE: &str = "\
[Unit]
Description=Berth network configuration (DHCPv4 on every Ethernet interface)
Before=network-online.target

[Service]
Type=notify
ExecCondition=/usr/bin/berth-netd --has-interfaces
ExecStart=/usr/bin/berth-netd
TimeoutStartSec=60s
Restart=on-failure
RestartSec=5s

[Install]
WantedBy=multi-user.target
RequiredBy=network-online.target
";

/// The devices (berth-devices, docs/design.md §8): loads the modules of the devices present
/// (`modalias` coldplug from the root's `modules.alias`) and of those that appear later
/// (uevents), keeps `/dev/disk/by-partuuid` and `/dev/disk/by-label`, and powers off on the
/// ACPI power button. Started first (`DefaultDependencies=no`) and ready once coldplug is done,
/// before `sysinit.target`: every unit with default dependencies (berth-netd, which needs the
/// NIC's module, and whatever mounts a disk by label) starts after the devices' modules are in.
/// Not stopped by the shutdown before the final SIGTERM, so the power key works to the end.
pub const DEVD_SERVICE: &str = "\
[Unit]
Description=Berth devices (modules for the devices present and appearing, /dev/disk links, the power button)
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=notify
ExecStart=/usr/bin/berth-devd
TimeoutStartSec=60s
Restart=on-failure
RestartSec=1s

[Install]
WantedBy=sysinit.target
";

/// The guest agent: unauthenticated root command execution for whoever reaches the
/// hypervisor's virtio-serial port `org.berth.agent.0`, so only in test images. Started first
/// (`DefaultDependencies=no`, wanted by `sysinit.target`) and always again when it ends; skipped
/// when the hypervisor offers no such port (`ExecCondition=`: with no udev there is no
/// `/dev/virtio-ports/` link for a `ConditionPathExists=`). `KillMode=process`: what a test
/// spawned through it outlives an agent restart, as it did when PID 1 ran the agent.
pub const GUEST_AGENT_SERVICE: &str = "\
[Unit]
Description=Berth guest agent (test images only: root access over virtio-serial, unauthenticated)
DefaultDependencies=no

[Service]
Type=simple
ExecCondition=/usr/libexec/berth/guest-agent --find-port
ExecStart=/usr/libexec/berth/guest-agent
Restart=always
RestartSec=1s
KillMode=process

[Install]
WantedBy=sysinit.target
";

/// The units for an image, by name; the guest agent's only `with_agent`.
pub fn units(with_agent: bool) -> Vec<(&'static str, &'static str)> {
    let mut units = vec![("berth-devd.service", DEVD_SERVICE), ("berth-netd.service", NETD_SERVICE)];
    if with_agent {
        units.push(("berth-guest-agent.service", GUEST_AGENT_SERVICE));
    }
    units
}

/// The units' names, to be enabled.
pub fn names(with_agent: bool) -> Vec<String> {
    units(with_agent).iter().map(|(n, _)| n.to_string()).collect()
}

/// Writes the unit files into the root (replacing what a package may have put there).
pub fn install(root: &mut Tree, epoch: i64, with_agent: bool) -> anyhow::Result<()> {
    root.mkdir_all(UNIT_DIR, &Metadata::root(0o755, epoch))?;
    crate::agent_units::put_units(root, epoch, &units(with_agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devd_and_netd_are_enabled_in_every_image_and_the_guest_agent_only_in_test_images() {
        assert!(GUEST_AGENT_SERVICE.contains(berth_guest_agent::INSTALL_PATH));
        for with_agent in [false, true] {
            let mut t = Tree::new(Metadata::root(0o755, 0));
            install(&mut t, 7, with_agent).unwrap();
            install(&mut t, 7, with_agent).unwrap();
            let made = crate::enablement::enable(&mut t, &names(with_agent), 7).unwrap();
            assert!(t.lookup("etc/systemd/system/multi-user.target.wants/berth-netd.service").is_some(), "{made:?}");
            assert!(t.lookup("etc/systemd/system/sysinit.target.wants/berth-devd.service").is_some(), "{made:?}");
            let l = t.lookup("etc/systemd/system/network-online.target.requires/berth-netd.service").unwrap();
            assert_eq!(
                t.node(l).kind,
                berth_fstree::NodeKind::Symlink(b"/usr/lib/systemd/system/berth-netd.service".to_vec())
            );
            let agent = t.lookup("etc/systemd/system/sysinit.target.wants/berth-guest-agent.service");
            assert_eq!(agent.is_some(), with_agent);
            assert_eq!(t.lookup("usr/lib/systemd/system/berth-guest-agent.service").is_some(), with_agent);
        }
    }
}
