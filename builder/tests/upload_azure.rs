//! `berth upload azure` end to end, as a user runs it: against Azurite (the blob, credentials from
//! AZURE_STORAGE_CONNECTION_STRING) and against the strict fake (the blob with AZURE_STORAGE_KEY,
//! then the managed image with AZURE_ACCESS_TOKEN), `--json` parsed; a file that is not a
//! fixed VHD and refused credentials fail with one line naming them.

#[path = "../../cloud/tests/support/azure_fake.rs"]
mod azure_fake;
#[path = "../../cloud/tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_cloud::Silent;
use berth_cloud::azure::{self, BlobOptions, auth, pageblob};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A 16 MiB fixed VHD with a little data.
fn vhd(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    let size = 16 << 20;
    f.set_len(size).unwrap();
    f.write_all_at(&[0xeb; 1024], 0).unwrap();
    f.write_all_at(&[3; 300_000], 5 << 20).unwrap();
    f.write_all_at(&azure::vhd::footer(size, [4; 16]), size).unwrap();
    path
}

/// `berth upload azure ARGS` with only the environment given (no AZURE_* from the caller's).
fn berth(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BERTH);
    cmd.arg("upload").arg("azure").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AZURE_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "berth failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one error line of a failed run (progress notes may come before it).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success());
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("berth: error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(err.trim_end().ends_with(lines[0]), "the error ends the output: {err}");
    lines[0].to_string()
}

#[test]
fn cli_uploads_to_azurite_and_a_rerun_sends_nothing() {
    let program = support::emulator_program("node/node_modules/.bin/azurite-blob");
    let emu = support::Emulator::start(
        "azurite",
        &program,
        &[
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "{port}",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = vhd(dir.path(), "berth.azure.vhd");
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={}/{};",
        auth::DEV_ACCOUNT,
        auth::DEV_KEY,
        emu.url,
        auth::DEV_ACCOUNT
    );
    let options =
        BlobOptions { container: Some("images".into()), blob_name: "berth.azure.vhd".into(), ..BlobOptions::default() };
    let blob = azure::resolve(&options, &|k| (k == "AZURE_STORAGE_CONNECTION_STRING").then(|| cs.clone())).unwrap();
    let client = berth_cloud::api::client();
    pageblob::create_container(&client, &blob.container_url("berth.azure.vhd"), &blob.credentials, &Silent).unwrap();

    let env = [("AZURE_STORAGE_CONNECTION_STRING", cs.as_str())];
    let args = [disk.to_str().unwrap(), "--container", "images", "--json"];
    let v = json(&berth(&args, &env));
    let len = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(v["blob_url"], blob.url.as_str());
    assert_eq!(v["image_id"], Value::Null);
    assert_eq!(v["reused_blob"], false);
    assert_eq!(v["bytes_sent"].as_u64().unwrap() + v["bytes_skipped"].as_u64().unwrap(), len);
    // 64 KiB at 0, 300 000 bytes from 5 MiB (5 granules), the footer.
    assert_eq!(v["bytes_sent"], (65536 + 5 * 65536 + 512) as u64);
    assert_eq!(
        azure::merge(pageblob::page_ranges(&client, &blob, &Silent).unwrap()),
        [(0, 65535), (5 << 20, (5 << 20) + 5 * 65536 - 1), (16 << 20, (16 << 20) + 511)]
    );
    let again = json(&berth(&args, &env));
    assert_eq!((again["reused_blob"].as_bool(), again["pages_sent"].as_u64()), (Some(true), Some(0)));
}

#[test]
fn cli_uploads_and_creates_an_image_through_the_fake() {
    let fake = azure_fake::Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let disk = vhd(dir.path(), "berth.azure.vhd");
    let endpoint = format!("{}/{}", fake.url(), azure_fake::ACCOUNT);
    let env = [("AZURE_STORAGE_KEY", azure_fake::KEY_BASE64), ("AZURE_ACCESS_TOKEN", azure_fake::TOKEN)];
    let args = [
        disk.to_str().unwrap(),
        "--account",
        azure_fake::ACCOUNT,
        "--blob-endpoint",
        &endpoint,
        "--container",
        "images",
        "--subscription",
        "sub-1",
        "--resource-group",
        "rg",
        "--location",
        "westeurope",
        "--arm-endpoint",
        &fake.url(),
        "--json",
    ];
    let v = json(&berth(&args, &env));
    assert_eq!(v["image_id"], "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Compute/images/berth");
    assert_eq!((v["reused_blob"].as_bool(), v["reused_image"].as_bool()), (Some(false), Some(false)));
    assert_eq!(fake.blob_bytes("/devstoreaccount1/images/berth.azure.vhd").unwrap(), std::fs::read(&disk).unwrap());
    let again = json(&berth(&args, &env));
    assert_eq!((again["reused_blob"].as_bool(), again["reused_image"].as_bool()), (Some(true), Some(true)));
    assert_eq!(fake.image_put_bodies().len(), 1);

    // An expired token: one line naming AZURE_ACCESS_TOKEN (the blob is fine, the image is not made).
    let mut args2 = args.to_vec();
    let rg = args2.iter().position(|a| *a == "rg").unwrap();
    args2[rg] = "rg2";
    let before = fake.requests().len();
    let out = berth(
        &args2,
        &[("AZURE_STORAGE_KEY", azure_fake::KEY_BASE64), ("AZURE_ACCESS_TOKEN", azure_fake::EXPIRED_TOKEN)],
    );
    // Found before the upload: the one request was the image's GET.
    assert_eq!(fake.requests().len(), before + 1);
    let err = error_line(&out);
    assert!(err.contains("AZURE_ACCESS_TOKEN") && err.contains("ExpiredAuthenticationToken"), "{err}");
}

#[test]
fn cli_refuses_a_file_that_is_not_a_vhd_and_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    File::create(&raw).unwrap().set_len(4 << 20).unwrap();
    let out =
        berth(&[raw.to_str().unwrap(), "--container", "images", "--account", "a"], &[("AZURE_STORAGE_KEY", "a2V5")]);
    assert!(!out.status.success());
    let err = error_line(&out);
    assert!(err.contains("disk.raw") && err.contains("not a fixed VHD"), "{err}");

    let fake = azure_fake::Fake::start();
    let disk = vhd(dir.path(), "berth.azure.vhd");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "d3Jvbmc=\n").unwrap();
    let endpoint = format!("{}/{}", fake.url(), azure_fake::ACCOUNT);
    let out = berth(
        &[
            disk.to_str().unwrap(),
            "--account",
            azure_fake::ACCOUNT,
            "--account-key-file",
            key_file.to_str().unwrap(),
            "--blob-endpoint",
            &endpoint,
            "--container",
            "images",
        ],
        &[],
    );
    let err = error_line(&out);
    assert!(
        err.contains(&format!("--account-key-file {}", key_file.display())) && err.contains("AuthenticationFailed"),
        "{err}"
    );

    // No credentials at all: every source named.
    let out = berth(&[disk.to_str().unwrap(), "--container", "images"], &[]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("AZURE_STORAGE_KEY") && err.contains("--sas-url"), "{err}");
}

#[test]
fn help_names_every_credential_source() {
    let out = Command::new(BERTH).args(["upload", "azure", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for source in [
        "--sas-url",
        "--account-key-file",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_ACCOUNT",
        "--access-token-file",
        "AZURE_ACCESS_TOKEN",
        "Examples:",
    ] {
        assert!(help.contains(source), "--help lacks {source}:\n{help}");
    }
}
