//! Berth's own services besides the update agent's (`agent_units`): `berth-devd.service`
//! (devices: modules, `/dev/disk` links, the power button), `berth-netd.service` (DHCP;
//! `network-online.target` requires it), `berth-metadata.service` (the cloud's metadata, first
//! boot of each instance) and `berth-azure-ready.service` (Azure's ready report) in every image
//! and, in test images only
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

/// The cloud's metadata (docs/design.md §3.1, §8): `berth-metadata fetch` asks the metadata
/// service of the platform stage 2 detected (AWS IMDSv2, GCE, Azure IMDS; nothing elsewhere)
/// and records what it offers in `/run/berth/metadata/instance.toml`, then `berthctl
/// provision-metadata` has PID 1 apply it as the first-boot document, once per instance. In its
/// own process, as Afterburn is: PID 1 parses no packet from the network. Off the clouds `fetch`
/// records that there is nothing to ask and PID 1 does nothing. A failure fails this unit only;
/// the boot goes on with the image's configuration. `fetch` has its own deadline (a minute); the
/// start timeout is a bound above it.
pub const METADATA_SERVICE: &str = "\
[Unit]
Description=Berth cloud metadata (hostname, SSH keys and user data of the instance, applied once per instance)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/berth-metadata fetch
ExecStart=/usr/bin/berthctl provision-metadata
TimeoutStartSec=5min

[Install]
WantedBy=multi-user.target
";

/// Azure's ready report to the WireServer (`berth-metadata report-ready`: once per instance,
/// remembered on STATE, retried; a no-op on every other platform). Only after a healthy boot:
/// it requires `boot-complete.target`, the health gate (docs/design.md §3, §5), so a slot that
/// fails its gate never reports ready, and it comes after provisioning and after the slot is
/// marked good. Wanted by `boot-complete.target`, as `berth-mark-good.service` is, so that
/// nothing ordered after `multi-user.target` waits for the report's retries (within its own
/// five-minute deadline; the start timeout is a bound above it).
pub const AZURE_READY_SERVICE: &str = "\
[Unit]
Description=Berth: report the instance ready to Azure after a healthy first boot
Requires=boot-complete.target
After=boot-complete.target berth-mark-good.service berth-metadata.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/berth-metadata report-ready
TimeoutStartSec=10min

[Install]
WantedBy=boot-complete.target
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
    let mut units = vec![
        ("berth-devd.service", DEVD_SERVICE),
        ("berth-netd.service", NETD_SERVICE),
        ("berth-metadata.service", METADATA_SERVICE),
        ("berth-azure-ready.service", AZURE_READY_SERVICE),
    ];
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

    /// The metadata unit fetches, then has PID 1 apply, in one oneshot; the ready report is gated
    /// by the health gate. Every unit parses with nothing ignored.
    #[test]
    fn the_metadata_units_run_in_order_and_the_ready_report_waits_for_a_healthy_boot() {
        let dir = tempfile::tempdir().unwrap();
        let unit_dir = dir.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(&unit_dir).unwrap();
        for (name, text) in units(true) {
            std::fs::write(unit_dir.join(name), text).unwrap();
        }
        let loader = berth_units::Loader::new(dir.path(), berth_units::HostInfo::default());
        for (name, _) in units(true) {
            let u = loader.load(name);
            assert!(u.errors.is_empty() && u.ignored.is_empty(), "{name}: {:?} {:?}", u.errors, u.ignored);
        }
        let m = loader.load("berth-metadata.service");
        let s = m.service.as_ref().unwrap();
        let argv: Vec<&Vec<String>> = s.exec_start.iter().map(|c| &c.argv).collect();
        assert_eq!(
            argv,
            [
                &vec!["/usr/bin/berth-metadata".to_string(), "fetch".into()],
                &vec!["/usr/bin/berthctl".to_string(), "provision-metadata".into()]
            ]
        );
        assert_eq!(s.service_type, berth_units::service::ServiceType::Oneshot);
        assert!(s.remain_after_exit);
        assert!(m.deps.wants.contains(&"network-online.target".to_string()));
        assert!(m.deps.after.contains(&"network-online.target".to_string()));
        let r = loader.load("berth-azure-ready.service");
        for dep in ["boot-complete.target", "berth-metadata.service", "berth-mark-good.service"] {
            assert!(r.deps.after.contains(&dep.to_string()), "{dep}: {:?}", r.deps.after);
        }
        assert!(r.deps.requires.contains(&"boot-complete.target".to_string()));
        assert_eq!(r.service.as_ref().unwrap().exec_start[0].argv, ["/usr/bin/berth-metadata", "report-ready"]);
    }

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
            assert!(
                t.lookup("etc/systemd/system/multi-user.target.wants/berth-metadata.service").is_some(),
                "{made:?}"
            );
            let ready = "etc/systemd/system/boot-complete.target.wants/berth-azure-ready.service";
            assert!(t.lookup(ready).is_some(), "{made:?}");
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
