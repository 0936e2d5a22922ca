//! First-boot provisioning end to end on the `minimal` image: a TOML document handed over
//! through QEMU's fw_cfg (`Options::provision`, as `berth run --config` does) sets the hostname,
//! makes a user with an SSH key (home on STATE through `/home` → `var/home`) and writes a file
//! under /etc, once: the next boot says it was applied already. A malformed document names its
//! line on the console and the boot goes on with the image's defaults. Checked through the guest
//! agent.

mod common;

use std::time::Duration;

use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, line_with, put_cmdline};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0x7provisioningtestkey alice@host";

fn options(document: &str) -> Options {
    Options {
        overlay: true,
        serial_ports: vec![PORT_NAME.into()],
        provision: Some(document.to_string()),
        ..Options::default()
    }
}

fn agent(m: &Machine) -> Agent {
    Agent::connect(m.serial_port(PORT_NAME).expect("agent port"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", m.console()))
}

#[test]
fn provisions_once_from_fw_cfg_and_survives_a_malformed_document() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let boot = Boot { disk: &image.disk, format: "raw", memory_mib: 768 };

    let document = format!(
        r#"hostname = "node-1"

[[users]]
name = "alice"
ssh_authorized_keys = ["{KEY}"]

[[files]]
path = "/etc/berth-test/provisioned.conf"
content = "written on first boot\n"
mode = "0600"
"#
    );
    let mut m = Machine::start_with(&boot, &options(&document)).unwrap();
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    line_with(&console, "provisioning: hostname node-1");
    line_with(&console, "provisioning: user alice: created with uid 1000");
    line_with(&console, "provisioning: applied opt/org.berth/config (sha256 ");
    // Provisioning ran before the hostname was set, so stage 2 set the provisioned one.
    line_with(&console, "hostname node-1; ");
    let mut a = agent(&m);
    assert_eq!(a.read("/proc/sys/kernel/hostname").unwrap(), "node-1\n");
    assert_eq!(a.read("/etc/hostname").unwrap(), "node-1\n");
    assert_eq!(a.read("/etc/berth-test/provisioned.conf").unwrap(), "written on first boot\n");
    assert!(a.read("/etc/passwd").unwrap().contains("alice:x:1000:1000::/home/alice:/bin/sh\n"));
    // The home is on STATE, reached through /home.
    assert_eq!(a.read("/home/alice/.ssh/authorized_keys").unwrap(), format!("{KEY}\n"));
    assert_eq!(a.read("/var/home/alice/.ssh/authorized_keys").unwrap(), format!("{KEY}\n"));
    let marker = a.read("/var/lib/berth/provisioned").unwrap();
    assert_eq!(marker.trim().len(), 64, "{marker:?}");

    // The next boot keeps all of it and applies nothing again.
    a.spawn(&["berthctl", "reboot"]).unwrap();
    drop(a);
    m.wait_for_count("stage 2 ready (slot a)", 2, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    assert_eq!(console.matches("provisioning: already applied on first boot").count(), 1, "{console}");
    assert_eq!(console.matches("provisioning: hostname node-1").count(), 1, "{console}");
    let mut a = agent(&m);
    assert_eq!(a.read("/proc/sys/kernel/hostname").unwrap(), "node-1\n");
    assert_eq!(a.read("/home/alice/.ssh/authorized_keys").unwrap(), format!("{KEY}\n"));
    a.spawn(&["berthctl", "poweroff"]).unwrap();
    drop(a);
    m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    drop(m);

    // A malformed document: one line naming where, nothing applied, the boot goes on.
    let bad = "hostname = \"node-2\"\n\n[[files]]\npath = 5\n";
    let mut m = Machine::start_with(&boot, &options(bad)).unwrap();
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let line = line_with(&console, "provisioning: provisioning config opt/org.berth/config:4:8: invalid type");
    assert!(line.contains("nothing applied, booting with the image's defaults"), "{line}");
    let mut a = agent(&m);
    assert_ne!(a.read("/proc/sys/kernel/hostname").unwrap(), "node-2\n");
    assert!(a.read("/var/lib/berth/provisioned").is_err(), "a malformed document was marked as applied");
}
