//! `berth upload aws` end to end: the binary against the strict EBS/EC2 fake of berth-cloud's
//! tests (SigV4 verified with the secret it knows), credentials from the environment or from a
//! profile under a temporary HOME, the `--json` result parsed; a bad file fails on one line; and
//! against moto's server, which serves EBS and EC2 on one port.

#[path = "../../cloud/tests/support/ebs_fake.rs"]
mod ebs_fake;
#[path = "../../cloud/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use ebs_fake::EbsFake;

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 512 << 10;

/// `berth upload aws ARGS` with an environment of its own: HOME a temporary directory, no AWS or
/// proxy variables but those given.
fn berth(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.arg("upload").arg("aws").args(args).env("HOME", home);
    for (k, _) in std::env::vars() {
        let k_upper = k.to_ascii_uppercase();
        if k_upper.starts_with("AWS_") || k_upper.ends_with("_PROXY") {
            c.env_remove(&k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ebs_fake::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", ebs_fake::SECRET),
        ("AWS_REGION", ebs_fake::REGION),
    ]
}

/// A 1 GiB sparse image with data in three blocks.
fn image(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cli-test.aws.raw");
    let f = File::create(&path).unwrap();
    f.set_len(GIB).unwrap();
    f.write_all_at(b"EFI PART", 512).unwrap();
    f.write_all_at(&[7; 100_000], 1000 * BLOCK + 5).unwrap();
    f.write_all_at(b"backup", GIB - 512).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error line: the last of stderr (progress notes come before it), the only one saying
/// "berth: error".
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(err.matches("berth: error").count(), 1, "{err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("berth: error: "), "the error is not one line at the end: {err}");
    last
}

#[test]
fn the_cli_uploads_registers_and_prints_json_then_finds_the_image_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    let fake = EbsFake::start();
    let url = fake.url();
    let args = ["--endpoint", url.as_str(), "--json", "--jobs", "4", "--poll-interval", "0.05", path.to_str().unwrap()];
    let o = berth(dir.path(), &args, &keys());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let images = fake.images();
    assert_eq!(images.len(), 1);
    assert_eq!(v["image_id"], images[0].id.as_str());
    assert_eq!(v["snapshot_id"], images[0].snapshot_id.as_str());
    assert_eq!(v["name"], "cli-test");
    assert_eq!(v["region"], ebs_fake::REGION);
    assert_eq!(v["blocks_sent"], 3);
    assert_eq!(v["zero_blocks_skipped"], 2048 - 3);
    assert_eq!(v["reused"], false);
    assert_eq!(images[0].params.get("Description").map(String::as_str), Some("Berth image cli-test"));
    assert!(fake.refusals().is_empty(), "{:?}", fake.refusals());

    // Again, credentials from a profile this time: the image is found, nothing registered.
    let aws = dir.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    let creds =
        format!("[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n", ebs_fake::ACCESS_KEY, ebs_fake::SECRET);
    std::fs::write(aws.join("credentials"), creds).unwrap();
    std::fs::write(aws.join("config"), format!("[profile ci]\nregion = {}\n", ebs_fake::REGION)).unwrap();
    let o = berth(dir.path(), &["--profile", "ci", "--endpoint", &url, "--json", path.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (&again["image_id"], &again["reused"], &again["blocks_sent"]),
        (&v["image_id"], &serde_json::json!(true), &serde_json::json!(0))
    );
    assert_eq!(fake.images().len(), 1);
    assert_eq!(fake.calls("StartSnapshot"), 1);

    // A wrong secret in the profile: one line naming the file and profile, nothing registered.
    let wrong = format!("[ci]\naws_access_key_id = {}\naws_secret_access_key = wrong\n", ebs_fake::ACCESS_KEY);
    std::fs::write(aws.join("credentials"), wrong).unwrap();
    let o = berth(
        dir.path(),
        &["--profile", "ci", "--endpoint", &url, "--name", "other-name", path.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    let err = error_line(&o);
    assert!(
        err.contains("credentials from") && err.contains(".aws/credentials") && err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    assert_eq!(fake.images().len(), 1);
}

#[test]
fn a_file_that_is_not_whole_gib_fails_on_one_line_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.aws.raw");
    File::create(&path).unwrap().set_len(GIB - 4096).unwrap();
    let fake = EbsFake::start();
    let o = berth(dir.path(), &["--endpoint", &fake.url(), path.to_str().unwrap()], &keys());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("berth: error: ") && err.contains("odd.aws.raw") && err.contains("whole number of GiB"),
        "{err}"
    );
    assert!(fake.server.requests().is_empty());

    // No credentials anywhere: one line saying where they were looked for.
    let o = berth(dir.path(), &["--endpoint", &fake.url(), "--region", "eu-west-1", path.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    let err = error_line(&o);
    assert!(err.contains("AWS_ACCESS_KEY_ID") || err.contains(".aws"), "{err}");
}

#[test]
fn help_names_every_credential_source() {
    let o = Command::new(env!("CARGO_BIN_EXE_berth")).args(["upload", "aws", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for word in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "--profile",
        "AWS_SHARED_CREDENTIALS_FILE",
        "~/.aws/credentials",
        "AWS_CONFIG_FILE",
        "~/.aws/config",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "--endpoint",
        "Examples:",
    ] {
        assert!(help.contains(word), "--help does not name {word}:\n{help}");
    }
}

#[test]
fn the_cli_uploads_to_moto() {
    let program = support::emulator_program("venv/bin/moto_server");
    let moto = support::Emulator::start("moto", &program, &["-H", "127.0.0.1", "-p", "{port}"]);
    let dir = tempfile::tempdir().unwrap();
    let path = image(dir.path());
    let env =
        [("AWS_ACCESS_KEY_ID", "AKIDMOTO"), ("AWS_SECRET_ACCESS_KEY", "moto"), ("AWS_DEFAULT_REGION", "us-east-1")];
    let args = ["--endpoint", moto.url.as_str(), "--json", "--name", "berth-cli-moto", path.to_str().unwrap()];
    let o = berth(dir.path(), &args, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["image_id"].as_str().unwrap().starts_with("ami-"), "{v}");
    assert!(v["snapshot_id"].as_str().unwrap().starts_with("snap-"), "{v}");
    assert_eq!(
        (&v["region"], &v["blocks_sent"], &v["reused"]),
        (&serde_json::json!("us-east-1"), &serde_json::json!(3), &serde_json::json!(false))
    );
    // moto answers BlockSize 512: said on stderr, 512 KiB blocks sent all the same.
    assert!(stderr(&o).contains("BlockSize 512"), "{}", stderr(&o));
    let o = berth(dir.path(), &args, &env);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&again["image_id"], &again["reused"]), (&v["image_id"], &serde_json::json!(true)));
}
