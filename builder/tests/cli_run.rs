//! `berth run` as a user runs it.
//!
//! - `--dry-run` prints the overlay and QEMU command lines: TCG unless `--kvm`, console on stdio,
//!   forwards bound to 127.0.0.1, `restrict=on`, the disk itself only with `--persist`.
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
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (img, qemu) = (&lines[0], &lines[1]);

    // The overlay: qcow2 over the disk's absolute path, in TMPDIR.
    let disk = std::fs::canonicalize(&f.disk).unwrap();
    let prefix = format!("qemu-img create -q -f qcow2 -F raw -b {} ", disk.display());
    assert!(img.starts_with(&prefix), "{img}");
    let overlay = &img[prefix.len()..];
    assert!(overlay.starts_with(&format!("{}/berth-run-", f.tmp.display())), "{img}");
    assert!(overlay.ends_with(".qcow2"), "{img}");

    assert!(qemu.starts_with("qemu-system-x86_64 -machine q35 -accel tcg -smp 2 -m 2048 -display none "), "{qemu}");
    assert!(!qemu.contains("kvm"), "{qemu}");
    assert_eq!(after(qemu, "-serial"), "mon:stdio");
    let drives: Vec<&str> = qemu.split(" -drive ").skip(1).map(|d| d.split(' ').next().unwrap()).collect();
    assert_eq!(
        drives,
        [
            format!("if=pflash,format=raw,readonly=on,file={}", f.code.display()),
            format!("if=pflash,format=raw,file={}", Path::new(overlay).with_file_name("OVMF_VARS.fd").display()),
            format!("file={overlay},if=virtio,format=qcow2"),
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
    let qemu = f.dry_run(&["--kvm", "--memory", "1024", "--cpus", "1"]).pop().unwrap();
    assert!(qemu.contains(" -accel kvm -cpu host -smp 1 -m 1024 "), "{qemu}");
    // Without --restrict the guest may reach out; nothing is forwarded.
    assert_eq!(after(&qemu, "-netdev"), "user,id=n0");

    let qemu = f.dry_run(&["--no-network"]).pop().unwrap();
    assert_eq!(after(&qemu, "-nic"), "none");
    assert!(!qemu.contains("-netdev"), "{qemu}");

    // --persist: the disk itself, no overlay.
    let lines = f.dry_run(&["--persist"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!(" -drive file={},if=virtio,format=raw ", f.disk.display())), "{lines:?}");

    // A qcow2 disk is recognised by its magic, with or without an overlay.
    std::fs::write(&f.disk, b"QFI\xfb\0\0\0\x03").unwrap();
    let lines = f.dry_run(&[]);
    assert!(lines[0].contains(" -F qcow2 -b "), "{lines:?}");
    let lines = f.dry_run(&["--persist"]);
    assert!(lines[0].contains(&format!(" -drive file={},if=virtio,format=qcow2 ", f.disk.display())), "{lines:?}");
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
    let qemu = String::from_utf8(qemu.stdout).unwrap().lines().last().unwrap().to_string();
    let doc = std::fs::canonicalize(&doc).unwrap();
    assert_eq!(after(&qemu, "-fw_cfg"), format!("name=opt/org.berth/config,file={}", doc.display()));
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
    for needle in
        ["Examples:", "-p 2222:22", "127.0.0.1", "--persist", "--restrict", "Ctrl-A X", "--dry-run", "--config"]
    {
        assert!(help.contains(needle), "{needle:?} not in:\n{help}");
    }
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
