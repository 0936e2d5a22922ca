//! First-boot provisioning end to end on the `minimal` image: a TOML document handed over
//! through QEMU's fw_cfg (`Options::provision`, as `berth run --config` does) sets the hostname,
//! makes a user with an SSH key (home on STATE through `/home` → `var/home`) and writes a file
//! under /etc. A malformed document names its line on the console and the boot goes on with the
//! image's defaults. Checked through the guest agent.
//!
//! The user plants symlinks in her home, the document is provisioned again as
//! docs/provisioning.md says (the marker removed, a reboot), and nothing is written through them:
//! `/etc/shadow` keeps its bytes, owner and mode. A document that fails is recorded, said on the
//! console and by `berthctl provision-status`, changes nothing, and is not tried on the next boot.
//! The minimal image has no shell: Debian's static busybox (fetched as the container tests fetch
//! it) is copied in to act as the user.
//!
//! The reboots between those boots use the shutdown commands as people type them (`reboot`,
//! `shutdown -r now`, then `berthctl reboot` and `poweroff`), and a `shutdown -r +5` is scheduled
//! and cancelled on the way, all asking PID 1 over the control socket.

mod common;

use std::path::Path;
use std::time::Duration;

use berth_guest_agent::{ExecResult, PORT_NAME};
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, line_with, put_cmdline};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0x7provisioningtestkey alice@host";
/// Provisioned empty with mode 0755, then filled by the agent (which keeps the mode). Provisioning
/// again empties it, so the test runs the copy [`BUSYBOX`].
const BUSYBOX_SEED: &str = "/var/lib/berth-test/busybox";
const BUSYBOX: &str = "/var/lib/berth-test/bin/busybox";
const SH: &str = "/var/lib/berth-test/bin/sh";
const READY: &str = "stage 2 ready (slot a)";

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

fn run(a: &mut Agent, argv: &[&str]) -> ExecResult {
    a.exec(argv, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")))
}

/// `script` run by busybox's sh as alice (busybox su, as root: no password).
fn as_alice(a: &mut Agent, script: &str) {
    let r = run(a, &[BUSYBOX, "su", "-s", SH, "alice", "-c", script]);
    assert_eq!(r.status, Some(0), "as alice: {script}: {r:?}");
}

/// Owner, group, mode, links and type of `path` (busybox stat, not following a link).
fn stat(a: &mut Agent, path: &str) -> String {
    let r = run(a, &[BUSYBOX, "stat", "-c", "%u %g %a %h %F", path]);
    assert_eq!(r.status, Some(0), "stat {path}: {r:?}");
    r.stdout.trim().to_string()
}

/// Reboots with `argv` and waits for stage 2 of boot number `count`; the agent of the new boot.
fn reboot(m: &mut Machine, a: Agent, argv: &[&str], count: usize) -> Agent {
    let mut a = a;
    a.spawn(argv).unwrap();
    drop(a);
    m.wait_for_count(READY, count, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    agent(m)
}

#[test]
fn provisions_once_from_fw_cfg_and_survives_a_malformed_document() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let boot = Boot { disk: &image.disk, format: "raw", memory_mib: 768 };
    let cache = berth_builder::build::default_cache_dir().expect("a cache directory");
    let busybox = berth_qemu_tests::oci::fetch_busybox(Path::new("/"), &cache)
        .unwrap_or_else(|e| panic!("fetching busybox-static: {e}"))
        .binary;

    let document = format!(
        r#"hostname = "node-1"

[[users]]
name = "alice"
ssh_authorized_keys = ["{KEY}"]

[[files]]
path = "/etc/berth-test/provisioned.conf"
content = "written on first boot\n"
mode = "0600"

[[files]]
path = "{BUSYBOX_SEED}"
content = ""
mode = "0755"
"#
    );
    let mut m = Machine::start_with(&boot, &options(&document)).unwrap();
    m.wait_for(READY, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    line_with(&console, "provisioning: hostname node-1");
    line_with(&console, "provisioning: user alice: created with uid 1000");
    line_with(&console, "provisioning: applied fw_cfg opt/org.berth/config (sha256 ");
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
    // The document's SHA-256, then its source.
    let (digest, source) = marker.split_once('\n').unwrap_or_else(|| panic!("{marker:?}"));
    assert_eq!((digest.len(), source), (64, "fw_cfg opt/org.berth/config\n"), "{marker:?}");
    let r = run(&mut a, &["berthctl", "provision-status"]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.starts_with(&format!("applied: fw_cfg opt/org.berth/config with sha256 {digest}")), "{r:?}");

    // H1: alice deletes her authorized_keys and plants the temporary name 81879cc wrote
    // through, a link to /etc/shadow; the admin provisions again, as the docs say.
    a.write_bytes(BUSYBOX_SEED, &busybox, Duration::from_secs(180)).unwrap_or_else(|e| panic!("copying busybox: {e}"));
    for argv in [
        [BUSYBOX_SEED, "mkdir", "-p", "/var/lib/berth-test/bin"].as_slice(),
        &[BUSYBOX_SEED, "cp", BUSYBOX_SEED, BUSYBOX],
        &[BUSYBOX, "ln", "-s", "busybox", SH],
    ] {
        let r = run(&mut a, argv);
        assert_eq!(r.status, Some(0), "{argv:?}: {r:?}");
    }
    let shadow = a.read("/etc/shadow").unwrap();
    let shadow_stat = stat(&mut a, "/etc/shadow");
    assert!(shadow_stat.starts_with("0 ") && shadow_stat.ends_with(" 1 regular file"), "{shadow_stat}");
    as_alice(
        &mut a,
        &format!(
            "{BUSYBOX} rm /home/alice/.ssh/authorized_keys && {BUSYBOX} ln -s /etc/shadow /home/alice/.ssh/.authorized_keys.berth-tmp"
        ),
    );
    assert_eq!(run(&mut a, &[BUSYBOX, "rm", "/var/lib/berth/provisioned"]).status, Some(0));
    let mut a = reboot(&mut m, a, &["/usr/sbin/reboot"], 2);
    let console = m.console();
    line_with(&console, "control socket: rebooting (asked by pid ");
    assert_eq!(console.matches("provisioning: applied fw_cfg opt/org.berth/config").count(), 2, "{console}");
    assert_eq!(console.matches("1 SSH key(s) added to /home/alice/.ssh/authorized_keys").count(), 2, "{console}");
    assert_eq!(a.read("/etc/shadow").unwrap(), shadow, "/etc/shadow was written through the planted link");
    assert_eq!(stat(&mut a, "/etc/shadow"), shadow_stat);
    assert_eq!(a.read("/home/alice/.ssh/authorized_keys").unwrap(), format!("{KEY}\n"));
    assert_eq!(stat(&mut a, "/home/alice/.ssh/authorized_keys"), "1000 1000 600 1 regular file");
    let planted = run(&mut a, &[BUSYBOX, "readlink", "/home/alice/.ssh/.authorized_keys.berth-tmp"]);
    assert_eq!(planted.stdout, "/etc/shadow\n", "{planted:?}");

    // H1: now her ~/.ssh is a link to /etc, and the admin changed the hostname meanwhile. The
    // document fails, changes nothing (the hostname stays), is recorded and shown.
    as_alice(&mut a, &format!("{BUSYBOX} rm -r /home/alice/.ssh && {BUSYBOX} ln -s /etc /home/alice/.ssh"));
    a.write("/etc/hostname", "changed-by-admin\n").unwrap();
    assert_eq!(run(&mut a, &[BUSYBOX, "rm", "/var/lib/berth/provisioned"]).status, Some(0));
    // shutdown +M is kept by PID 1 and cancelled; unknown options are usage errors.
    let r = run(&mut a, &["/usr/sbin/shutdown", "-r", "+5", "provision", "test"]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("Reboot scheduled for ") && r.stdout.contains("use 'shutdown -c' to cancel"), "{r:?}");
    let r = run(&mut a, &["/usr/sbin/shutdown", "-c"]);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("The reboot scheduled for ") && r.stdout.ends_with(" cancelled.\n"), "{r:?}");
    let console = m.console();
    let line = line_with(&console, "shutdown: reboot scheduled for ");
    assert!(line.contains(", in 5 min: \"provision test\""), "{line}");
    line_with(&console, "shutdown: the reboot scheduled for ");
    let r = run(&mut a, &["/usr/sbin/halt", "--bogus"]);
    assert_eq!(r.status, Some(2), "{r:?}");
    assert!(r.stderr.contains("halt: unknown option `--bogus`"), "{r:?}");
    let mut a = reboot(&mut m, a, &["/usr/sbin/shutdown", "-r", "now"], 3);
    let console = m.console();
    let line = line_with(&console, "provisioning: user alice: /var/home/alice/.ssh is a symbolic link; not followed");
    assert!(line.contains("nothing applied, booting with the image's defaults"), "{line}");
    line_with(&console, "provisioning: recorded as failed in /var/lib/berth/provision-failed (sha256 ");
    assert_eq!(a.read("/proc/sys/kernel/hostname").unwrap(), "changed-by-admin\n");
    assert!(a.read("/etc/authorized_keys").is_err(), "the keys were written into /etc");
    assert_eq!(a.read("/etc/shadow").unwrap(), shadow);
    assert_eq!(stat(&mut a, "/etc/shadow"), shadow_stat);
    let r = run(&mut a, &["berthctl", "provision-status"]);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stdout.contains("failed: fw_cfg opt/org.berth/config with sha256 "), "{r:?}");
    assert!(r.stdout.contains(": user alice: /var/home/alice/.ssh is a symbolic link; not followed\n"), "{r:?}");

    // The next boot does not try it again.
    let mut a = reboot(&mut m, a, &["berthctl", "reboot"], 4);
    let console = m.console();
    let line = line_with(&console, "failed on an earlier boot: user alice: /var/home/alice/.ssh is a symbolic link");
    assert!(line.contains("not tried again (to retry it: rm /var/lib/berth/provision-failed, then reboot)"), "{line}");
    assert_eq!(console.matches("provisioning: recorded as failed").count(), 1, "{console}");
    assert_eq!(a.read("/proc/sys/kernel/hostname").unwrap(), "changed-by-admin\n");
    a.spawn(&["/usr/sbin/poweroff"]).unwrap();
    drop(a);
    m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    drop(m);

    // A malformed document: one line naming where, nothing applied, the boot goes on.
    let bad = "hostname = \"node-2\"\n\n[[files]]\npath = 5\n";
    let mut m = Machine::start_with(&boot, &options(bad)).unwrap();
    m.wait_for(READY, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let line = line_with(&console, "provisioning: provisioning config opt/org.berth/config:4:8: invalid type");
    assert!(line.contains("nothing applied, booting with the image's defaults"), "{line}");
    let mut a = agent(&m);
    assert_ne!(a.read("/proc/sys/kernel/hostname").unwrap(), "node-2\n");
    assert!(a.read("/var/lib/berth/provisioned").is_err(), "a malformed document was marked as applied");
}
