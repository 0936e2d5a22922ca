//! `berth run` as a user runs it.
//!
//! - `--dry-run` prints a shell script (state directory, firmware variables, overlay, QEMU) that
//!   `sh` runs as printed (QEMU replaced by a script in PATH): TCG unless `--kvm`, console on
//!   stdio, forwards bound to 127.0.0.1, `restrict=on`, the disk itself only with `--persist`.
//! - The options for real work reach QEMU's command line: the platforms' disk controllers,
//!   `--headless`/`--console`, `--monitor`, `--qmp`, `--guestfwd` (loopback only, relayed by
//!   berth itself), `--qemu-arg` and `--`; a headless run without a real QEMU says where things are;
//!   headless, the first Ctrl-C presses the power button over QMP and the second ends QEMU.
//! - Bad input and missing tools are one-line errors naming what to do, and leave nothing behind.
//! - One real boot (QEMU, TCG): the minimal image reaches stage 2 on the terminal console; after
//!   berth is sent SIGTERM, QEMU is gone, the disk is bit-for-bit unchanged and the temporary
//!   overlay removed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use sha2::{Digest, Sha256};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A disk to run, stand-in firmware files (a dry run needs them to exist, not to work) and a
/// TMPDIR of its own, to see what a run leaves behind.
struct Fixture {
    dir: tempfile::TempDir,
    disk: PathBuf,
    code: PathBuf,
    vars: PathBuf,
    tmp: PathBuf,
}

fn fixture(disk_bytes: &[u8]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("disk.img"), disk_bytes).unwrap();
    std::fs::write(p("CODE.fd"), b"code").unwrap();
    std::fs::write(p("VARS.fd"), b"vars").unwrap();
    std::fs::create_dir(p("tmp")).unwrap();
    Fixture { disk: p("disk.img"), code: p("CODE.fd"), vars: p("VARS.fd"), tmp: p("tmp"), dir }
}

impl Fixture {
    /// `berth run DISK --ovmf-code .. --ovmf-vars .. ARGS` with this fixture's TMPDIR and PATH.
    fn run(&self, args: &[&str], path: Option<&Path>) -> Output {
        let mut c = Command::new(BERTH);
        c.arg("run").arg(&self.disk).arg("--ovmf-code").arg(&self.code).arg("--ovmf-vars").arg(&self.vars);
        c.args(args).env("TMPDIR", &self.tmp).stdin(Stdio::null());
        if let Some(p) = path {
            c.env("PATH", p);
        }
        c.output().expect("running berth")
    }

    /// The QEMU line of a dry run.
    fn dry_qemu(&self, args: &[&str]) -> String {
        qemu_line(&self.dry_run(args)).to_string()
    }

    /// The lines a dry run prints; it must succeed and leave TMPDIR empty.
    fn dry_run(&self, args: &[&str]) -> Vec<String> {
        let out = self.run(&[&["--dry-run"], args].concat(), None);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        self.assert_tmp_empty();
        String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
    }

    fn assert_tmp_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    }
}

/// The line of a dry run's script that starts QEMU.
fn qemu_line(lines: &[String]) -> &str {
    let mut q = lines.iter().filter(|l| l.starts_with("qemu-system-x86_64 "));
    let line = q.next().unwrap_or_else(|| panic!("no QEMU line in {lines:?}"));
    assert!(q.next().is_none(), "two QEMU lines in {lines:?}");
    line
}

/// The argument following `flag` on a command line (paths here need no quoting).
fn after<'a>(line: &'a str, flag: &str) -> &'a str {
    let words: Vec<&str> = line.split(' ').collect();
    let i = words.iter().position(|w| *w == flag).unwrap_or_else(|| panic!("no {flag} in {line}"));
    words[i + 1]
}

#[test]
fn dry_run_boots_a_temporary_overlay_with_forwards_on_loopback_only() {
    let f = fixture(&[0u8; 4096]);
    let lines = f.dry_run(&["-p", "2222:22", "--forward", "8080:80", "--restrict"]);
    assert_eq!(lines.len(), 6, "{lines:?}");
    // A new temporary directory, its firmware variables, the overlay, QEMU, and it is removed.
    assert_eq!(lines[0], r#"dir=$(mktemp -d "${TMPDIR:-/tmp}/berth-run-XXXXXX")"#);
    assert_eq!(lines[1], format!(r#"cp {} "$dir/OVMF_VARS.fd""#, f.vars.display()));
    assert_eq!(lines[2], r#"chmod 600 "$dir/OVMF_VARS.fd""#);
    assert_eq!(lines[5], r#"rm -r "$dir""#);
    let (img, qemu) = (&lines[3], &lines[4]);

    // The overlay: qcow2 over the disk's absolute path, in the temporary directory.
    let disk = std::fs::canonicalize(&f.disk).unwrap();
    assert_eq!(img, &format!(r#"qemu-img create -q -f qcow2 -F raw -b {} "$dir/overlay.qcow2""#, disk.display()));

    assert!(qemu.starts_with("qemu-system-x86_64 -machine q35 -accel tcg -smp 2 -m 2048 -display none "), "{qemu}");
    assert!(!qemu.contains("kvm"), "{qemu}");
    assert_eq!(after(qemu, "-serial"), "mon:stdio");
    let drives: Vec<&str> = qemu.split(" -drive ").skip(1).map(|d| d.split(' ').next().unwrap()).collect();
    assert_eq!(
        drives,
        [
            format!("if=pflash,format=raw,readonly=on,file={}", f.code.display()),
            r#""if=pflash,format=raw,file=$dir/OVMF_VARS.fd""#.to_string(),
            r#""file=$dir/overlay.qcow2,if=virtio,format=qcow2""#.to_string(),
        ]
    );
    assert_eq!(
        after(qemu, "-netdev"),
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80"
    );
    assert_eq!(after(qemu, "-device"), "virtio-net-pci,netdev=n0");
}

#[test]
fn dry_run_options_reach_the_command_line() {
    let f = fixture(&[0u8; 4096]);
    let qemu = f.dry_qemu(&["--kvm", "--memory", "1024", "--cpus", "1"]);
    assert!(qemu.contains(" -accel kvm -cpu host -smp 1 -m 1024 "), "{qemu}");
    // Without --restrict the guest may reach out; nothing is forwarded.
    assert_eq!(after(&qemu, "-netdev"), "user,id=n0");

    let qemu = f.dry_qemu(&["--no-network"]);
    assert_eq!(after(&qemu, "-nic"), "none");
    assert!(!qemu.contains("-netdev"), "{qemu}");

    // --persist: the disk itself, no overlay.
    let lines = f.dry_run(&["--persist"]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(!lines.concat().contains("qemu-img"), "{lines:?}");
    assert!(qemu_line(&lines).contains(&format!(" -drive file={},if=virtio,format=raw ", f.disk.display())));

    // A qcow2 disk is recognised by its magic, with or without an overlay.
    std::fs::write(&f.disk, b"QFI\xfb\0\0\0\x03").unwrap();
    let lines = f.dry_run(&[]);
    assert!(lines[3].starts_with("qemu-img create -q -f qcow2 -F qcow2 -b "), "{lines:?}");
    let qemu = f.dry_qemu(&["--persist"]);
    assert!(qemu.contains(&format!(" -drive file={},if=virtio,format=qcow2 ", f.disk.display())), "{qemu}");

    // So is a VMDK (the disk inside an OVA), booted only through the overlay.
    std::fs::write(&f.disk, b"KDMV\x03\0\0\0").unwrap();
    let lines = f.dry_run(&["--platform", "virtualbox"]);
    assert!(lines[3].starts_with("qemu-img create -q -f qcow2 -F vmdk -b "), "{lines:?}");
    let out = f.run(&["--dry-run", "--persist"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a VMDK, which QEMU boots only through an overlay"), "{err}");
}

#[test]
fn dry_run_hands_the_provisioning_document_over_fw_cfg() {
    let f = fixture(&[0u8; 4096]);
    let doc = f.dir.path().join("first-boot.toml");
    std::fs::write(&doc, "hostname = \"node-1\"\n").unwrap();
    // A relative path works from anywhere: the command line has the absolute one.
    let qemu = Command::new(BERTH)
        .current_dir(f.dir.path())
        .arg("run")
        .arg(&f.disk)
        .args(["--ovmf-code", f.code.to_str().unwrap(), "--ovmf-vars", f.vars.to_str().unwrap()])
        .args(["--dry-run", "--config", "first-boot.toml"])
        .env("TMPDIR", &f.tmp)
        .output()
        .unwrap();
    assert!(qemu.status.success(), "{}", String::from_utf8_lossy(&qemu.stderr));
    let lines: Vec<String> = String::from_utf8(qemu.stdout).unwrap().lines().map(String::from).collect();
    let qemu = qemu_line(&lines);
    let doc = std::fs::canonicalize(&doc).unwrap();
    assert_eq!(after(qemu, "-fw_cfg"), format!("name=opt/org.berth/config,file={}", doc.display()));
    f.assert_tmp_empty();
    // Without --config there is no fw_cfg item.
    assert!(!f.dry_run(&[]).concat().contains("-fw_cfg"));
    // A missing document is one clear line.
    let out = f.run(&["--dry-run", "--config", "/nonexistent/first-boot.toml"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--config /nonexistent/first-boot.toml: cannot read the provisioning document"), "{err}");
    f.assert_tmp_empty();
}

#[test]
fn help_teaches_with_examples() {
    let out = Command::new(BERTH).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Examples:",
        "-p 2222:22",
        "127.0.0.1",
        "--persist",
        "--restrict",
        "Ctrl-A X",
        "--dry-run",
        "--config",
        "--headless",
        "--console <FILE|unix:PATH>",
        "tail -f",
        "--monitor <PATH>",
        "socat - UNIX-CONNECT:PATH",
        "--qmp <PATH>",
        "--guestfwd <GUESTADDR:PORT=127.0.0.1:HOSTPORT>",
        "--guestfwd 10.0.2.100:80=127.0.0.1:8080",
        "--qemu-arg <ARG>",
        "--state-dir <DIR>",
        "sh run.sh",
        "--disk-bus <BUS>",
    ] {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
    // Each platform with its disk controller, the names from platform.rs.
    for (platform, bus) in [
        ("metal", "NVMe disk"),
        ("qemu", "virtio-blk disk"),
        ("virtualbox", "virtio-scsi disk"),
        ("vagrant-libvirt", "virtio-blk disk"),
        ("vagrant-virtualbox", "virtio-scsi disk"),
    ] {
        let row = help.lines().find(|l| l.trim_start().starts_with(&format!("{platform} "))).unwrap_or_else(|| {
            panic!("no row for {platform} in:\n{help}");
        });
        assert!(row.contains(bus), "{row}");
    }
}

/// A stand-in `qemu-system-x86_64` in its own PATH directory: it records its arguments and the
/// files of the state directory it was given (as its pflash variables), then exits with `code`.
fn fake_qemu(dir: &Path, code: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("fake-bin");
    let capture = dir.join("capture");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&capture).unwrap();
    let script = format!(
        r#"#!/bin/sh
printf '%s\n' "$@" > {capture}/args
for a in "$@"; do
    case "$a" in if=pflash,format=raw,file=*) state=$(dirname "${{a#if=pflash,format=raw,file=}}") ;; esac
done
ls -l "$state" > {capture}/state-listing
cp "$state"/* {capture}/
exit {code}
"#,
        capture = capture.display()
    );
    let qemu = bin.join("qemu-system-x86_64");
    std::fs::write(&qemu, script).unwrap();
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// PATH with `first` before the test's own (for the real qemu-img).
fn path_with(first: &Path) -> std::ffi::OsString {
    let mut p = first.as_os_str().to_owned();
    p.push(":");
    p.push(std::env::var_os("PATH").unwrap_or_default());
    p
}

fn qemu_img_info(image: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img").arg("info").arg("--output=json").arg(image).output().unwrap();
    assert!(out.status.success(), "qemu-img info: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dry_run_script_runs_as_printed() {
    let f = fixture(&[0u8; 1 << 20]);
    let bin = fake_qemu(f.dir.path(), 0);
    let capture = f.dir.path().join("capture");
    let script = f.dry_run(&["--restrict", "-p", "2222:22"]).join("\n");

    let out = Command::new("sh")
        .args(["-e", "-c", &script])
        .env("PATH", path_with(&bin))
        .env("TMPDIR", &f.tmp)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "sh: {}\n{script}", String::from_utf8_lossy(&out.stderr));

    // QEMU got the printed arguments, with $dir a new directory in TMPDIR ...
    let args: Vec<String> = std::fs::read_to_string(capture.join("args")).unwrap().lines().map(String::from).collect();
    let vars_arg = args.iter().find(|a| a.starts_with("if=pflash,format=raw,file=")).unwrap();
    let state = Path::new(vars_arg.trim_start_matches("if=pflash,format=raw,file=")).parent().unwrap();
    assert_eq!(state.parent().unwrap(), f.tmp);
    assert!(state.file_name().unwrap().to_str().unwrap().starts_with("berth-run-"), "{state:?}");
    let printed =
        qemu_line(&script.lines().map(String::from).collect::<Vec<_>>()).replace("$dir", state.to_str().unwrap());
    assert_eq!(format!("qemu-system-x86_64 {}", args.join(" ")), printed.replace('"', ""));
    // ... holding a writable copy of the variables and the overlay over the disk ...
    let listing = std::fs::read_to_string(capture.join("state-listing")).unwrap();
    assert!(listing.lines().any(|l| l.starts_with("-rw-------") && l.ends_with(" OVMF_VARS.fd")), "{listing}");
    assert_eq!(std::fs::read(capture.join("OVMF_VARS.fd")).unwrap(), b"vars");
    let info = qemu_img_info(&capture.join("overlay.qcow2"));
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["backing-filename"], std::fs::canonicalize(&f.disk).unwrap().to_str().unwrap(), "{info}");
    assert_eq!(info["backing-filename-format"], "raw", "{info}");
    // ... which the script removed afterwards.
    f.assert_tmp_empty();

    // With --state-dir the script makes that directory and leaves the files there.
    let state = f.dir.path().join("vm state");
    let lines = f.dry_run(&["--state-dir", state.to_str().unwrap()]);
    assert_eq!(lines[0], format!("mkdir -p '{}'", state.display()));
    assert!(!lines.concat().contains("$dir") && !lines.concat().contains("rm "), "{lines:?}");
    assert!(!state.exists(), "a dry run made {}", state.display());
    let out = Command::new("sh")
        .args(["-e", "-c", &lines.join("\n")])
        .env("PATH", path_with(&bin))
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success(), "sh: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(state.join("OVMF_VARS.fd")).unwrap(), b"vars");
    assert_eq!(qemu_img_info(&state.join("overlay.qcow2"))["format"], "qcow2");
}

#[test]
fn platforms_choose_the_disk_controller() {
    let f = fixture(&[0u8; 4096]);
    let drive_of = |args: &[&str]| {
        let q = f.dry_qemu(args);
        let start = q.find(" -drive \"file=").unwrap_or_else(|| panic!("{q}"));
        q[start..q.find(" -nic ").or_else(|| q.find(" -netdev ")).unwrap()].to_string()
    };
    let blk = r#" -drive "file=$dir/overlay.qcow2,if=virtio,format=qcow2""#;
    let scsi =
        r#" -drive "file=$dir/overlay.qcow2,if=none,id=disk0,format=qcow2" -device scsi-hd,bus=scsi0.0,drive=disk0"#;
    let nvme = r#" -drive "file=$dir/overlay.qcow2,if=none,id=disk0,format=qcow2" -device nvme,serial=berth-disk0,drive=disk0"#;
    assert_eq!(drive_of(&[]), blk);
    assert_eq!(drive_of(&["--platform", "qemu"]), blk);
    assert_eq!(drive_of(&["--platform", "vagrant-libvirt"]), blk);
    assert_eq!(drive_of(&["--platform", "metal"]), nvme);
    assert_eq!(drive_of(&["--platform", "vagrant-virtualbox"]), scsi);
    let q = f.dry_qemu(&["--platform", "virtualbox"]);
    assert!(q.contains(&format!(" -device virtio-scsi-pci,id=scsi0{scsi} ")), "{q}");
    assert!(q.contains(" -device virtio-net-pci,netdev=n0 "), "{q}");
    // --disk-bus wins over the platform's.
    assert_eq!(drive_of(&["--platform", "virtualbox", "--disk-bus", "nvme"]), nvme);
    assert_eq!(drive_of(&["--disk-bus", "virtio-scsi"]), scsi);

    for (args, needle) in [
        (&["--platform", "vmware"][..], "unknown platform 'vmware'; known: metal, qemu, virtualbox, vagrant-libvirt"),
        (&["--disk-bus", "ide"][..], "expected virtio-blk, virtio-scsi or nvme"),
    ] {
        let out = f.run(&[&["--dry-run"], args].concat(), None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn consoles_monitors_and_pass_through_reach_qemu() {
    let f = fixture(&[0u8; 4096]);
    let d = f.dir.path();
    let p = |n: &str| d.join(n).display().to_string();

    // --headless alone: the console in the state directory.
    let q = f.dry_qemu(&["--headless"]);
    assert_eq!(after(&q, "-serial"), r#""file:$dir/console.log""#);
    assert!(!q.contains("stdio"), "{q}");

    // --console FILE, relative to where berth runs; unix:PATH a socket; both imply --headless.
    let out = Command::new(BERTH)
        .current_dir(d)
        .arg("run")
        .arg(&f.disk)
        .args(["--ovmf-code", f.code.to_str().unwrap(), "--ovmf-vars", f.vars.to_str().unwrap()])
        .args(["--dry-run", "--console", "con.log", "--monitor", "mon.sock", "--qmp", "qmp.sock"])
        .env("TMPDIR", &f.tmp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    let q = qemu_line(&lines);
    assert_eq!(after(q, "-serial"), format!("file:{}", p("con.log")));
    assert!(
        q.ends_with(&format!(
            " -chardev socket,id=qmp,path={},server=on,wait=off -mon chardev=qmp,mode=control \
             -chardev socket,id=hmp,path={},server=on,wait=off -mon chardev=hmp,mode=readline",
            p("qmp.sock"),
            p("mon.sock")
        )),
        "{q}"
    );
    let q = f.dry_qemu(&["--console", &format!("unix:{}", p("con.sock"))]);
    assert!(
        q.contains(&format!(
            " -chardev socket,id=console,path={},server=on,wait=off -serial chardev:console",
            p("con.sock")
        )),
        "{q}"
    );

    // Pass-through: --qemu-arg in order, then everything after `--`, last on the line.
    let q = f.dry_qemu(&[
        "--qemu-arg=-no-reboot",
        "--qemu-arg",
        "-rtc",
        "--qemu-arg",
        "base=utc",
        "--",
        "-device",
        "virtio-rng-pci",
    ]);
    assert!(q.ends_with(" -no-reboot -rtc base=utc -device virtio-rng-pci"), "{q}");

    // Sockets QEMU could not make are refused before anything starts.
    let long = format!("{}/{}.sock", d.display(), "s".repeat(110));
    for (args, needle) in [
        (vec!["--monitor".to_string(), long.clone()], "a unix socket path is at most 107 bytes".to_string()),
        (vec!["--qmp".into(), p("nodir/q.sock")], format!("the directory {} does not exist", p("nodir"))),
        (vec!["--console".into(), d.display().to_string()], "is a directory".into()),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = f.run(&[&["--dry-run"], &args[..]].concat(), None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.lines().count() == 1, "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {needle:?} not in {err}");
    }
    let out = f.run(&["--dry-run", "--console", "unix:"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && err.contains("unix: needs a socket path"), "{err}");
    f.assert_tmp_empty();
}

#[test]
fn guestfwd_is_relayed_by_berth_to_loopback_only() {
    use std::io::Write;
    let f = fixture(&[0u8; 4096]);
    let q = f.dry_qemu(&[
        "--restrict",
        "--guestfwd",
        "10.0.2.100:80=127.0.0.1:8080",
        "--guestfwd",
        "10.0.2.101:443=localhost:8443",
    ]);
    // QEMU starts berth itself for each connection (its own absolute path, quoted for QEMU's
    // shell-like splitting), so the guest may open as many connections as it likes.
    assert_eq!(
        after(&q, "-netdev"),
        format!(
            "'user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:{BERTH} guestfwd-relay 8080,\
             guestfwd=tcp:10.0.2.101:443-cmd:{BERTH} guestfwd-relay 8443'"
        )
        .split(' ')
        .next()
        .unwrap()
    );
    assert!(
        q.contains(&format!(
            "-cmd:{BERTH} guestfwd-relay 8080,guestfwd=tcp:10.0.2.101:443-cmd:{BERTH} guestfwd-relay 8443' "
        )),
        "{q}"
    );

    for (spec, needle) in [
        ("10.0.2.100:80=192.168.1.10:8080", "the host side \"192.168.1.10\" is not 127.0.0.1 or localhost"),
        ("10.0.2.100:80=10.0.2.2:8080", "is not 127.0.0.1 or localhost"),
        ("10.0.2.2:80=127.0.0.1:8080", "the gateway to the host"),
        ("10.1.2.100:80=127.0.0.1:8080", "not a host address of QEMU's user network 10.0.2.0/24"),
        ("10.0.2.100=127.0.0.1:8080", "no ':' before the guest port"),
    ] {
        let out = f.run(&["--dry-run", "--guestfwd", spec], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{spec}: {err}");
        assert!(err.contains(needle) && err.contains(spec), "{spec}: {needle:?} not in {err}");
    }
    let out = f.run(&["--dry-run", "--no-network", "--guestfwd", "10.0.2.100:80=127.0.0.1:8080"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"), "{out:?}");

    // The relay joins its stdin and stdout to the server, both ways, and ends with it.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        let (mut conn, _) = server.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        conn.write_all(format!("got {got}").as_bytes()).unwrap();
    });
    let mut relay = Command::new(BERTH)
        .args(["guestfwd-relay", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    relay.stdin.take().unwrap().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let out = relay.wait_with_output().unwrap();
    serve.join().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got GET / HTTP/1.0\r\n\r\n");
    // Nothing listening: it fails quietly (its stderr would go to the guest).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(BERTH).args(["guestfwd-relay", &closed.to_string()]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(), "{out:?}");
}

#[test]
fn headless_run_says_where_everything_is_and_returns_qemus_status() {
    let f = fixture(&[0u8; 1 << 20]);
    let bin = fake_qemu(f.dir.path(), 3);
    let capture = f.dir.path().join("capture");
    let state = f.dir.path().join("state");
    let mon = f.dir.path().join("mon.sock");
    let mut c = Command::new(BERTH);
    c.arg("run").arg(&f.disk).arg("--ovmf-code").arg(&f.code).arg("--ovmf-vars").arg(&f.vars);
    c.args(["--headless", "--guestfwd", "10.0.2.100:80=127.0.0.1:8080"]).arg("--monitor").arg(&mon);
    c.arg("--state-dir").arg(&state).env("PATH", path_with(&bin)).env("TMPDIR", &f.tmp).stdin(Stdio::null());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let console = state.join("console.log");
    for line in [
        format!(
            "berth: console in {} (kept in {}); follow it with: tail -f {}",
            console.display(),
            state.display(),
            console.display()
        ),
        format!("berth: QEMU monitor on {}; connect with: socat - UNIX-CONNECT:{}", mon.display(), mon.display()),
        "berth: guest 10.0.2.100:80 -> 127.0.0.1:8080".to_string(),
        "berth: waiting for QEMU to exit; Ctrl-C presses the guest's power button, a second Ctrl-C ends QEMU".into(),
    ] {
        assert!(err.lines().any(|l| l == line), "{line:?} not in:\n{err}");
    }
    let args = std::fs::read_to_string(capture.join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert!(args.contains(&format!("file:{}", console.display()).as_str()), "{args:?}");
    // berth's own QMP socket, in the state directory, after the user's sockets.
    let own = format!("socket,id=qmp,path={},server=on,wait=off", state.join("berth-qmp.sock").display());
    assert!(args.contains(&own.as_str()), "{args:?}");
    // The state directory keeps the run's files; TMPDIR got nothing.
    assert_eq!(std::fs::read(state.join("OVMF_VARS.fd")).unwrap(), b"vars");
    assert_eq!(qemu_img_info(&state.join("overlay.qcow2"))["format"], "qcow2");
    f.assert_tmp_empty();

    // Without --state-dir the temporary directory is gone after QEMU.
    let out = f.run(&["--console", f.dir.path().join("c.log").to_str().unwrap()], Some(&bin_and_system_path(&bin)));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    f.assert_tmp_empty();
}

/// Headless, the first Ctrl-C presses the power button through berth's own QMP socket and the
/// second ends QEMU. A real QEMU running only the firmware (a blank disk boots nothing, and OVMF
/// ignores the button): a few seconds, no guest.
#[test]
fn headless_ctrl_c_presses_the_power_button_then_ends_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let state = dir.path().join("state");
    let err_file = dir.path().join("berth.err");
    let mut berth = Command::new(BERTH)
        .arg("run")
        .arg(&disk)
        .args(["--no-network", "--cpus", "1", "--memory", "256", "--console"])
        .arg(dir.path().join("console.log"))
        .arg("--state-dir")
        .arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&err_file).unwrap_or_default();
    let wait_until = |what: &str, ok: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < Duration::from_secs(30), "waited 30 s for {what}; berth said:\n{}", stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let sock = state.join("berth-qmp.sock");
    wait_until("QEMU's QMP socket", &|| std::os::unix::net::UnixStream::connect(&sock).is_ok());
    let pid = rustix::process::Pid::from_child(&berth);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    wait_until("the power button", &|| stderr().contains("berth: pressed the guest's power button"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(berth.try_wait().unwrap().is_none(), "berth ended on the first Ctrl-C: {}", stderr());

    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = berth.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = berth.kill();
            panic!("berth still runs 30 s after the second Ctrl-C: {}", stderr());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = stderr();
    assert!(err.contains("terminating on signal 2"), "QEMU did not get the second Ctrl-C: {err}");
    assert!(status.code().is_some(), "berth died of a signal ({status}): {err}");
}

/// `fake_qemu`'s directory and the system's PATH, as one PATH value for [`Fixture::run`].
fn bin_and_system_path(bin: &Path) -> PathBuf {
    PathBuf::from(path_with(bin))
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    let f = fixture(&[0u8; 4096]);
    let missing = f.dir.path().join("nope.img");
    let out = Command::new(BERTH).arg("run").arg(&missing).env("TMPDIR", &f.tmp).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("berth: error: ") && err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let cases: [(&[&str], &str); 4] = [
        (&["-p", "22"], "HOST:GUEST"),
        (&["-p", "0:22"], "port 0"),
        (&["--no-network", "-p", "2222:22"], "cannot be used with"),
        (&["--cpus", "0"], "--cpus"),
    ];
    for (args, needle) in cases {
        let out = f.run(args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    f.assert_tmp_empty();
}

#[test]
fn missing_qemu_tools_are_named_with_their_debian_package() {
    let f = fixture(&[0u8; 4096]);
    let empty = f.dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    for (args, line) in [
        (&[][..], "berth: error: qemu-img not found in PATH: install the Debian package qemu-utils\n"),
        (
            &["--persist"][..],
            "berth: error: qemu-system-x86_64 not found in PATH: install the Debian package qemu-system-x86\n",
        ),
    ] {
        let out = f.run(args, Some(&empty));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.ends_with(line), "{args:?}: {err}");
        f.assert_tmp_empty();
    }
}

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `images/minimal.toml` built with this workspace's binaries and the user's package cache,
/// its slot A command line replaced by `console=ttyS0` (mtools on the ESP).
fn minimal_image(out: &Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let options = BuildOptions::for_workspace(&root, root.join("images/minimal.toml"), out.to_path_buf())
        .expect("a cache directory");
    let report = build(&options).unwrap_or_else(|e| panic!("berth build images/minimal.toml: {e:#}"));
    let esp = report.manifest.partitions.iter().find(|p| p.number == 1).expect("ESP in the manifest");
    let cmdline = out.join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
    let target = format!("{}@@{}", report.disk.display(), esp.offset);
    let put = Command::new("mcopy")
        .args(["-i", &target, "-o"])
        .arg(&cmdline)
        .arg("::/berth/a/cmdline")
        .output()
        .expect("running mcopy (install mtools)");
    assert!(put.status.success(), "mcopy: {}", String::from_utf8_lossy(&put.stderr));
    report.disk
}

#[test]
fn boots_the_minimal_image_on_a_throwaway_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let disk = minimal_image(dir.path());
    let before = sha256(&disk);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();

    // One vCPU and TCG keep the boot steady on a busy 2-core machine.
    let started = Instant::now();
    let mut berth = Command::new(BERTH)
        .arg("run")
        .arg(&disk)
        .args(["--restrict", "--cpus", "1", "--memory", "768"])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = berth.stdout.take().unwrap();
    // Ends at EOF: when berth and QEMU, which share the pipe, have both exited.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = berth.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut console = String::new();
    let deadline = started + Duration::from_secs(180);
    let mut ready = false;
    while !ready {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                ready = line.contains("stage 2 ready (slot a)");
                console.push_str(&line);
                console.push('\n');
            }
            Err(_) => break,
        }
    }
    if !ready {
        let _ = berth.kill();
        panic!("no \"stage 2 ready (slot a)\" within 180 s; berth: {:?}; console:\n{console}", berth.try_wait());
    }
    eprintln!("power-on to stage 2 in {:.1} s", started.elapsed().as_secs_f64());

    // As a user's `kill` would: berth passes it on to QEMU and cleans up after it.
    rustix::process::kill_process(rustix::process::Pid::from_child(&berth), rustix::process::Signal::TERM).unwrap();
    let stop = Instant::now();
    let status = loop {
        if let Some(s) = berth.try_wait().unwrap() {
            break s;
        }
        if stop.elapsed() > Duration::from_secs(30) {
            let _ = berth.kill();
            panic!("berth still runs 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // QEMU, which shares the console pipe, has closed it too: it exited.
    let qemu_gone = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break true,
            Err(mpsc::RecvTimeoutError::Timeout) => break false,
        }
    };
    assert!(qemu_gone, "QEMU still holds the console open 30 s after berth exited ({status})");
    reader.join().unwrap();
    let stderr = errors.join().unwrap();

    assert!(stderr.contains("berth: console on this terminal; Ctrl-A X quits QEMU"), "{stderr}");
    assert!(stderr.contains("terminating on signal 15"), "QEMU did not get the SIGTERM: {stderr}");
    assert!(status.code().is_some(), "berth died of a signal ({status}); stderr: {stderr}");
    assert_eq!(sha256(&disk), before, "the disk changed: the guest wrote to it, not to the overlay");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "the overlay was left behind: {left:?}");
}
