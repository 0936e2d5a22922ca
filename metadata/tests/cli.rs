//! The `berth-metadata` binary where no network is involved: `platform`, `fetch` on platforms
//! without a metadata service, `report-ready` off Azure, and flags. (The providers are tested
//! against their fakes in the other files; a cloud platform here would send traffic off
//! 127.0.0.1, so none is used.)

use std::path::Path;
use std::process::{Command, Output};

use berth_metadata::record::{InstanceRecord, Outcome};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth-metadata")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A machine: its /run/berth/platform (when given) and its SMBIOS strings.
fn machine(word: Option<&str>, dmi: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(word) = word {
        std::fs::write(dir.path().join("platform"), format!("{word}\n")).unwrap();
    }
    std::fs::create_dir(dir.path().join("dmi")).unwrap();
    for (name, value) in dmi {
        std::fs::write(dir.path().join("dmi").join(name), format!("{value}\n")).unwrap();
    }
    dir
}

fn flags(m: &Path) -> Vec<String> {
    vec![
        "--platform-file".into(),
        m.join("platform").display().to_string(),
        "--dmi-dir".into(),
        m.join("dmi").display().to_string(),
    ]
}

fn run_on(m: &Path, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(flags(m));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run(&all)
}

#[test]
fn platform_prints_the_word_and_how() {
    let m = machine(Some("virtualbox"), &[("sys_vendor", "QEMU")]);
    let out = run_on(m.path(), &["platform"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "virtualbox");
    assert!(lines[1].starts_with("decided by berth-init at boot ("), "{stdout}");
    assert_eq!(lines[2], "SMBIOS says: qemu");

    // No run file: SMBIOS decides, and a cloud contradicting berth-init's word is a warning.
    let m = machine(None, &[("product_name", "Google Compute Engine")]);
    let stdout = text(&run_on(m.path(), &["platform"]).stdout);
    assert!(stdout.starts_with("gce\ndecided by SMBIOS (/sys/class/dmi/id) ("), "{stdout}");
    let m = machine(Some("qemu"), &[("sys_vendor", "Amazon EC2")]);
    let stdout = text(&run_on(m.path(), &["platform"]).stdout);
    assert!(
        stdout.contains("warning: the ESP's berth/platform says qemu but SMBIOS says this machine is on aws"),
        "{stdout}"
    );
    let m = machine(None, &[]);
    assert!(text(&run_on(m.path(), &["platform"]).stdout).starts_with("metal\n"));
}

#[test]
fn fetch_off_the_clouds_writes_a_not_a_cloud_record() {
    for (word, dmi) in [(Some("qemu"), ("sys_vendor", "QEMU")), (None, ("sys_vendor", "QEMU")), (None, ("x", "y"))] {
        let m = machine(word, &[dmi]);
        let out_path = m.path().join("run/berth/metadata/instance.toml");
        let out = run_on(m.path(), &["fetch", "--out", out_path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let record = InstanceRecord::read(&out_path).unwrap();
        let expect = if dmi.0 == "x" { "metal" } else { "qemu" };
        assert_eq!(record, InstanceRecord::empty(expect, Outcome::NotACloud));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("berth-metadata: {expect}: no metadata service on this platform; wrote ")),
            "{stderr}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(out_path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }
}

#[test]
fn report_ready_off_azure_does_nothing() {
    let m = machine(Some("gce"), &[("product_name", "Google Compute Engine")]);
    let marker = m.path().join("azure-ready");
    let out = run_on(m.path(), &["report-ready", "--marker", marker.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("report-ready: nothing to do on gce (only Azure has a ready report)"));
    assert!(!marker.exists());
}

#[test]
fn errors_and_help() {
    let m = machine(Some("cloud"), &[]);
    let out = run_on(m.path(), &["fetch", "--out", m.path().join("i.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown platform 'cloud'"), "{}", text(&out.stderr));

    // A record that cannot be written is an error (its directory is a file here).
    let m = machine(Some("metal"), &[]);
    std::fs::write(m.path().join("blocker"), "").unwrap();
    let out = run_on(m.path(), &["fetch", "--out", m.path().join("blocker/i.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("berth-metadata: error: the instance record: writing"), "{}", text(&out.stderr));

    assert_eq!(run(&["fetch", "--deadline", "0"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let help = text(&run(&["--help"]).stdout);
    for needle in ["/run/berth/platform", "instance.toml", "IMDSv2", "report-ready", "Examples:"] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    let help = text(&run(&["fetch", "--help"]).stdout);
    assert!(help.contains("--deadline <SECS>") && help.contains("[default: 60]"), "{help}");
}
