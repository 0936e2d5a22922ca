//! `berth upload gce` end to end, as a user runs it, against the strict GCE fake
//! (cloud/tests/support/gce_fake.rs: token endpoint, Cloud Storage resumable upload, Compute
//! Engine images and operations): `--json` parsed, a second run reusing the object and the
//! image, and failures (a file that is not gzip, a key the service refuses) as one line naming
//! what is wrong.

#[path = "../../cloud/tests/support/gce_fake.rs"]
mod gce_fake;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gce_fake::{GRANULE, GceFake, PROJECT, TestKey};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const BUCKET: &str = "berth-images";

/// A gce tarball of about 1 MiB of bytes that do not compress (several 256 KiB chunks).
fn tarball(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u32 = 0x9e37_79b9;
    let data: Vec<u8> = (0..(1 << 20) + 4321)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(src.join("disk.raw"), data).unwrap();
    let out = dir.join(name);
    assert!(Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&src).arg("disk.raw").status().unwrap().success());
    out
}

/// `berth upload gce ARGS` with only the environment given (no Google variables from the caller's).
fn berth(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BERTH);
    cmd.arg("upload").arg("gce").args(args);
    for k in ["GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_AUTH_ACCESS_TOKEN"] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "berth failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The one-line error of a failed run.
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "berth should fail: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("berth: error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_string()
}

#[test]
fn upload_gce_json_then_a_second_run_reuses_object_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(dir.path());
    let fake = GceFake::start(&key.public_der, &[BUCKET]);
    let key_file = key.write_key_file(&dir.path().join("sa.json"), &fake.token_uri());
    let file = tarball(dir.path(), "berth-0.9.gce.tar.gz");
    let bytes = std::fs::read(&file).unwrap();
    let url = fake.url();
    let common = [
        "--bucket",
        BUCKET,
        "--storage-endpoint",
        &url,
        "--compute-endpoint",
        &url,
        "--chunk-size",
        "256K",
        "--family",
        "berth",
        "--json",
    ];
    let mut args = vec![file.to_str().unwrap(), "--key", key_file.to_str().unwrap()];
    args.extend(common);
    let v = json(&berth(&args, &[]));
    assert_eq!(v["bucket"], BUCKET);
    assert_eq!(v["object"], "berth-0.9.gce.tar.gz");
    assert_eq!(v["size"], bytes.len() as u64);
    assert_eq!(v["crc32c"], base64_crc(&bytes));
    assert_eq!(v["image"], "berth-0-9");
    assert_eq!(v["image_self_link"], format!("{url}/compute/v1/projects/{PROJECT}/global/images/berth-0-9"));
    assert_eq!((v["reused_object"].as_bool(), v["reused_image"].as_bool()), (Some(false), Some(false)));
    assert_eq!(fake.object(BUCKET, "berth-0.9.gce.tar.gz").as_deref(), Some(&bytes[..]));
    let stats = fake.stats();
    assert_eq!(stats.chunks, bytes.len().div_ceil(GRANULE));
    assert_eq!(stats.inserts.len(), 1);
    let features: Vec<&str> =
        stats.inserts[0]["guestOsFeatures"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(features, ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]);
    assert_eq!(stats.inserts[0]["family"], "berth");
    assert_eq!(fake.images()["berth-0-9"]["status"], "READY");

    // Again with an access token from a named variable (and the project given, as a token names
    // none): nothing uploaded, nothing made.
    let token = fake.issue_token();
    let mut args = vec![file.to_str().unwrap(), "--access-token-env", "MY_GCE_TOKEN", "--project", PROJECT];
    args.extend(common);
    let v = json(&berth(&args, &[("MY_GCE_TOKEN", &token)]));
    assert_eq!((v["reused_object"].as_bool(), v["reused_image"].as_bool()), (Some(true), Some(true)));
    assert_eq!(v["image"], "berth-0-9");
    let stats = fake.stats();
    assert_eq!((stats.sessions_started, stats.inserts.len()), (1, 1));
}

#[test]
fn a_file_that_is_not_gzip_and_a_refused_key_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestKey::generate(dir.path());
    let other = TestKey::generate(dir.path());
    let fake = GceFake::start(&trusted.public_der, &[BUCKET]);
    let url = fake.url();
    let good_key = trusted.write_key_file(&dir.path().join("sa.json"), &fake.token_uri());

    let raw = dir.path().join("disk.gce.tar.gz");
    std::fs::write(&raw, vec![0u8; 8192]).unwrap();
    let line = error_line(&berth(
        &[raw.to_str().unwrap(), "--bucket", BUCKET, "--key", good_key.to_str().unwrap(), "--storage-endpoint", &url],
        &[],
    ));
    assert!(line.contains(raw.to_str().unwrap()) && line.contains("not a gzip file"), "{line}");
    assert!(fake.requests().is_empty(), "nothing sent for a bad file");

    // The key named by GOOGLE_APPLICATION_CREDENTIALS is not the one the service knows.
    let file = tarball(dir.path(), "x.gce.tar.gz");
    let wrong = other.write_key_file(&dir.path().join("wrong.json"), &fake.token_uri());
    let line = error_line(&berth(
        &[file.to_str().unwrap(), "--bucket", BUCKET, "--storage-endpoint", &url, "--compute-endpoint", &url],
        &[("GOOGLE_APPLICATION_CREDENTIALS", wrong.to_str().unwrap())],
    ));
    assert!(
        line.contains(&format!("key file {} (GOOGLE_APPLICATION_CREDENTIALS)", wrong.display()))
            && line.contains("invalid_grant"),
        "{line}"
    );
    assert!(fake.images().is_empty() && fake.stats().sessions_started == 0);

    // No credentials anywhere: says where they are looked for.
    let line = error_line(&berth(&[file.to_str().unwrap(), "--bucket", BUCKET], &[]));
    assert!(line.contains("--key") && line.contains("CLOUDSDK_AUTH_ACCESS_TOKEN"), "{line}");
}

#[test]
fn help_names_every_credential_source_with_an_example() {
    let out = Command::new(BERTH).args(["upload", "gce", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--key FILE",
        "--access-token-env VAR",
        "--access-token-file FILE",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "CLOUDSDK_AUTH_ACCESS_TOKEN",
        "--chunk-size",
        "--storage-endpoint",
        "--compute-endpoint",
        "Examples:",
        "berth upload gce out/berth.gce.tar.gz --bucket my-images --key sa-key.json",
    ] {
        assert!(help.contains(word), "--help names {word}:\n{help}");
    }
}

fn base64_crc(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(bytes).to_be_bytes())
}

#[test]
fn a_run_killed_mid_upload_run_again_finishes_the_same_session() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(dir.path());
    let fake = GceFake::start(&key.public_der, &[BUCKET]);
    let key_file = key.write_key_file(&dir.path().join("sa.json"), &fake.token_uri());
    let file = tarball(dir.path(), "killed.gce.tar.gz");
    let bytes = std::fs::read(&file).unwrap();
    let url = fake.url();
    let args = [
        file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
        "--bucket",
        BUCKET,
        "--storage-endpoint",
        &url,
        "--compute-endpoint",
        &url,
        "--chunk-size",
        "256K",
        "--json",
    ];
    // The third chunk reaches the server, its answer never comes, and the process is killed.
    fake.faults(|f| f.stall_chunk = Some(3));
    let mut child = Command::new(BERTH)
        .arg("upload")
        .arg("gce")
        .args(args)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("CLOUDSDK_AUTH_ACCESS_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while fake.stats().chunks < 3 {
        assert!(start.elapsed().as_secs() < 60, "the upload never reached its third chunk");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state = dir.path().join(".killed.gce.tar.gz.gce-upload");
    assert!(state.exists(), "the session is kept for the next run");
    assert!(fake.images().is_empty());

    fake.faults(|f| f.stall_chunk = None);
    let v = json(&berth(&args, &[]));
    assert_eq!((v["reused_object"].as_bool(), v["reused_image"].as_bool()), (Some(false), Some(false)));
    assert_eq!(fake.object(BUCKET, "killed.gce.tar.gz").as_deref(), Some(&bytes[..]));
    let stats = fake.stats();
    assert_eq!(stats.sessions_started, 1, "the killed run's session, taken up again");
    assert_eq!(stats.status_queries, 1);
    assert_eq!(stats.chunk_bytes, bytes.len() as u64, "the three chunks the server had were not sent again");
    assert_eq!(stats.inserts.len(), 1);
    assert_eq!(fake.images().len(), 1);
    assert!(!state.exists());
}
