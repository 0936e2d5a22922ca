//! `berthctl verify` as users run it: the built berth-init binary, started under the name
//! `berthctl` (a symlink, as in the image), on Debian's units (units/tests/fixtures, copied from
//! Debian 12's containerd and openssh-server packages; see tests/fixtures/README.md) and on
//! broken ones.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/tests/fixtures")
}

/// A temporary directory with `berthctl` linked to the berth-init binary under test.
struct Berthctl {
    dir: tempfile::TempDir,
}

impl Berthctl {
    fn new() -> Berthctl {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berth-init"), dir.path().join("berthctl")).unwrap();
        Berthctl { dir }
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out: Output = Command::new(self.dir.path().join("berthctl")).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        println!("$ berthctl {}\n[exit {:?}]\n{stdout}{stderr}", args.join(" "), out.status.code());
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

#[test]
fn debian_units_verify_clean() {
    let b = Berthctl::new();
    let containerd = fixtures().join("containerd.service");
    let ssh = fixtures().join("ssh.service");
    let (code, _, stderr) = b.run(&["verify", containerd.to_str().unwrap(), ssh.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("error:"), "{stderr}");
    // Both units use only directives berth-init implements.
    assert!(!stderr.contains("warning:"), "{stderr}");
}

#[test]
fn unsupported_unit_type_is_a_warning() {
    let b = Berthctl::new();
    let socket = fixtures().join("ssh.socket");
    let (code, _, stderr) = b.run(&["verify", socket.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stderr.contains("ssh.socket: warning: socket units are not supported by berth-init"), "{stderr}");
}

#[test]
fn broken_unit_reports_errors_and_warnings_with_lines() {
    let b = Berthctl::new();
    let unit = b.path("broken.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=Broken\nAfter=network.target\n[Service]\nType=sometimes\n\
         ExecStart=/bin/echo \"unterminated\nProtectSystem=strict\nRestart=on-failure\n",
    )
    .unwrap();
    std::fs::create_dir(b.path("broken.service.d")).unwrap();
    std::fs::write(b.path("broken.service.d/override.conf"), "[Service]\nTimeoutStopSec=forever\nPrivateTmp=yes\n")
        .unwrap();
    let (code, stdout, stderr) = b.run(&["verify", unit.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    let file = unit.display().to_string();
    let expected = [
        format!("{file}:5: error: [Service] Type=: unknown service type `sometimes`"),
        format!("{file}:6: error: [Service] ExecStart=: unterminated quote \""),
        format!("{file}:7: warning: [Service] ProtectSystem= is not supported by berth-init and will be ignored"),
        format!("{file}.d/override.conf:2: error: [Service] TimeoutStopSec=: `forever` is not a time span"),
        format!(
            "{file}.d/override.conf:3: warning: [Service] PrivateTmp= is not supported by berth-init and will be ignored"
        ),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    // ExecStart= was dropped, so the service has none: reported at line 5 (Type=).
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    let mut at = 0;
    for want in &expected {
        let found = lines[at..].iter().position(|l| l.starts_with(want.as_str()));
        assert!(found.is_some(), "missing, or out of order: {want}\n{stderr}");
        at += found.unwrap_or(0) + 1;
    }
    assert!(stderr.contains("error: the service has no ExecStart="), "{stderr}");
}

#[test]
fn root_checks_dependencies_and_programs() {
    let b = Berthctl::new();
    let root = b.path("image");
    for p in ["usr/sbin/sshd", "bin/kill", "usr/bin/containerd"] {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
    let containerd = fixtures().join("containerd.service");
    let ssh = fixtures().join("ssh.service");
    let root_arg = format!("--root={}", root.display());
    let (code, _, stderr) = b.run(&["verify", &root_arg, containerd.to_str().unwrap(), ssh.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // /sbin/modprobe is missing, but containerd's ExecStartPre= has the `-` prefix.
    assert!(stderr.contains("containerd.service:21: warning: [Service] ExecStartPre=: /sbin/modprobe"), "{stderr}");

    let needy = b.path("needy.service");
    std::fs::write(&needy, "[Unit]\nRequires=docker.socket missing.service\n[Service]\nExecStart=/usr/bin/absent\n")
        .unwrap();
    let (code, _, stderr) = b.run(&["verify", "--root", root.to_str().unwrap(), needy.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let file = needy.display().to_string();
    assert!(stderr.contains(&format!("{file}:2: error: [Unit] Requires=docker.socket: no such unit")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:2: error: [Unit] Requires=missing.service: no such unit")), "{stderr}");
    assert!(stderr.contains(&format!("{file}:4: error: [Service] ExecStart=: /usr/bin/absent is not")), "{stderr}");
    // Without --root the same file is fine: dependencies are only named.
    let (code, _, stderr) = b.run(&["verify", needy.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn usage_errors_and_other_commands() {
    let b = Berthctl::new();
    assert_eq!(b.run(&["verify"]).0, 2);
    assert_eq!(b.run(&["verify", "--bogus", "x.service"]).0, 2);
    assert_eq!(b.run(&["verify", "--root"]).0, 2);
    assert_eq!(b.run(&["verify", "--root", "/nonexistent-dir", "x.service"]).0, 2);
    let (code, _, stderr) = b.run(&["verify", "/nonexistent/x.service"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("/nonexistent/x.service: error: cannot read the unit file"), "{stderr}");
    let (code, _, stderr) = b.run(&["verify", b.path("not-a-unit").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("is not a valid unit name"), "{stderr}");
    std::os::unix::fs::symlink("/dev/null", b.path("masked.service")).unwrap();
    let (code, _, stderr) = b.run(&["verify", b.path("masked.service").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stderr.contains("masked.service: warning: masked.service is masked"), "{stderr}");
    let template = b.path("kube@.service");
    std::fs::write(&template, "[Unit]\nBindsTo=%i.device\n[Service]\nUser=%i\nExecStart=/bin/k %I\n").unwrap();
    let (code, _, stderr) = b.run(&["verify", template.to_str().unwrap()]);
    assert_eq!(code, 0, "a template is checked as an instance: {stderr}");
    assert!(stderr.contains("BindsTo= is handled as Requires="), "{stderr}");
    let (code, stdout, _) = b.run(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("verify [--root DIR] FILE..."));
    assert!(stdout.contains("is-system-running"));
    let (code, stdout, _) = b.run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("berthctl "));
    assert_eq!(b.run(&["frobnicate"]).0, 2);
}
