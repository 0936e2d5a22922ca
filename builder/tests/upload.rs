//! `berth upload aws|gce|azure` end to end, as a user runs it: the `berth` binary against the
//! local emulators (moto's server, gcp-storage-emulator, Azurite; started through berth-cloud's
//! tests/support) and the strict in-tree fakes (cloud/tests/support/*_fake.rs), `--json` parsed,
//! re-runs reusing what is there, failures as one line naming what is wrong, `--help` naming every
//! credential source. [`artifacts`]: what `berth export` writes is what the uploaders take and what
//! arrives in the emulators.
//!
//! One test binary for the three clouds (one link, not four); what they share is here at the top.

#[path = "../../cloud/tests/support/azure_fake.rs"]
mod azure_fake;
mod common;
#[path = "../../cloud/tests/support/ebs_fake.rs"]
mod ebs_fake;
#[path = "../../cloud/tests/support/gce_fake.rs"]
mod gce_fake;
#[path = "../../cloud/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::{azurite, gcs_emulator};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const GIB: u64 = 1 << 30;

/// `berth upload CLOUD ARGS` as a command with an environment of its own: HOME at `home`, none of
/// the caller's AWS_*, AZURE_*, Google credential or proxy variables, only those in `env`.
fn command(cloud: &str, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BERTH);
    cmd.args(["upload", cloud]).args(args).env("HOME", home);
    for (k, _) in std::env::vars_os() {
        let upper = k.to_string_lossy().to_ascii_uppercase();
        let cloud_var = ["AWS_", "AZURE_"].iter().any(|p| upper.starts_with(p))
            || ["GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_AUTH_ACCESS_TOKEN"].contains(&upper.as_str());
        if cloud_var || upper.ends_with("_PROXY") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// `berth upload CLOUD ARGS` run to its end (see [`command`]).
fn berth(cloud: &str, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(cloud, home, args, env).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `--json` result of a run that succeeded.
fn json(out: &Output) -> Value {
    assert!(out.status.success(), "berth failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The error of a failed run: one line, the only one saying "berth: error", and the last (progress
/// notes come before it).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "berth should fail: {}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(out);
    assert_eq!(err.matches("berth: error").count(), 1, "one error line: {err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("berth: error: "), "the error is not one line at the end: {err}");
    last
}

/// `berth upload CLOUD --help` names each of `words`.
fn help_names(cloud: &str, words: &[&str]) {
    let out = Command::new(BERTH).args(["upload", cloud, "--help"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for word in words {
        assert!(help.contains(word), "`berth upload {cloud} --help` does not name {word}:\n{help}");
    }
}

/// moto's server (EBS and EC2 on one port).
fn moto() -> support::Emulator {
    support::moto(&[])
}

/// The keys and region moto is given (it takes any).
const MOTO_ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "AKIDMOTO"), ("AWS_SECRET_ACCESS_KEY", "moto"), ("AWS_DEFAULT_REGION", "us-east-1")];

/// Azurite's connection string for its development account (what a user of Azurite sets).
fn azurite_connection_string(emu: &support::Emulator) -> String {
    use berth_cloud::azure::auth::{DEV_ACCOUNT, DEV_KEY};
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint={}/{DEV_ACCOUNT};",
        emu.url
    )
}

/// The page blob `container/name` in Azurite, as the connection string names it; its container
/// made.
fn azurite_blob(cs: &str, container: &str, name: &str) -> berth_cloud::azure::Blob {
    use berth_cloud::azure::{self, BlobOptions, pageblob};
    let options = BlobOptions { container: Some(container.into()), blob_name: name.into(), ..BlobOptions::default() };
    let blob = azure::resolve(&options, &|k| (k == "AZURE_STORAGE_CONNECTION_STRING").then(|| cs.to_string())).unwrap();
    let client = berth_cloud::api::client();
    pageblob::create_container(&client, &blob.container_url(name), &blob.credentials, &berth_cloud::Silent).unwrap();
    blob
}

mod aws {
    //! `berth upload aws` against the strict EBS/EC2 fake (SigV4 verified with the secret it
    //! knows; credentials from the environment or a profile under a temporary HOME) and moto.

    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use super::{GIB, MOTO_ENV, berth, ebs_fake, error_line, help_names, json, moto, stderr};
    use ebs_fake::EbsFake;

    const BLOCK: u64 = 512 << 10;

    fn keys() -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", ebs_fake::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", ebs_fake::SECRET),
            ("AWS_REGION", ebs_fake::REGION),
        ]
    }

    /// A 1 GiB sparse image with data in three blocks.
    fn image(dir: &Path) -> PathBuf {
        let path = dir.join("cli-test.aws.raw");
        let f = File::create(&path).unwrap();
        f.set_len(GIB).unwrap();
        f.write_all_at(b"EFI PART", 512).unwrap();
        f.write_all_at(&[7; 100_000], 1000 * BLOCK + 5).unwrap();
        f.write_all_at(b"backup", GIB - 512).unwrap();
        path
    }

    #[test]
    fn the_cli_uploads_registers_and_prints_json_then_finds_the_image_again() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let path = image(home);
        let fake = EbsFake::start();
        let url = fake.url();
        let args = ["--endpoint", &url, "--json", "--jobs", "4", "--poll-interval", "0.05", path.to_str().unwrap()];
        let v = json(&berth("aws", home, &args, &keys()));
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
        let aws = home.join(".aws");
        std::fs::create_dir(&aws).unwrap();
        let creds = format!(
            "[ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            ebs_fake::ACCESS_KEY,
            ebs_fake::SECRET
        );
        std::fs::write(aws.join("credentials"), creds).unwrap();
        std::fs::write(aws.join("config"), format!("[profile ci]\nregion = {}\n", ebs_fake::REGION)).unwrap();
        let again =
            json(&berth("aws", home, &["--profile", "ci", "--endpoint", &url, "--json", path.to_str().unwrap()], &[]));
        assert_eq!(
            (&again["image_id"], &again["reused"], &again["blocks_sent"]),
            (&v["image_id"], &serde_json::json!(true), &serde_json::json!(0))
        );
        assert_eq!(fake.images().len(), 1);
        assert_eq!(fake.calls("StartSnapshot"), 1);

        // A wrong secret in the profile: one line naming the file and profile, nothing registered.
        let wrong = format!("[ci]\naws_access_key_id = {}\naws_secret_access_key = wrong\n", ebs_fake::ACCESS_KEY);
        std::fs::write(aws.join("credentials"), wrong).unwrap();
        let args = ["--profile", "ci", "--endpoint", &url, "--name", "other-name", path.to_str().unwrap()];
        let err = error_line(&berth("aws", home, &args, &[]));
        assert!(
            err.contains("credentials from")
                && err.contains(".aws/credentials")
                && err.contains("SignatureDoesNotMatch"),
            "{err}"
        );
        assert_eq!(fake.images().len(), 1);
    }

    #[test]
    fn a_file_that_is_not_whole_gib_fails_on_one_line_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let path = home.join("odd.aws.raw");
        File::create(&path).unwrap().set_len(GIB - 4096).unwrap();
        let fake = EbsFake::start();
        let o = berth("aws", home, &["--endpoint", &fake.url(), path.to_str().unwrap()], &keys());
        assert!(!o.status.success());
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("berth: error: ") && err.contains("odd.aws.raw") && err.contains("whole number of GiB"),
            "{err}"
        );
        assert!(fake.server.requests().is_empty());

        // No credentials anywhere: one line saying where they were looked for.
        let args = ["--endpoint", &fake.url(), "--region", "eu-west-1", path.to_str().unwrap()];
        let err = error_line(&berth("aws", home, &args, &[]));
        assert!(err.contains("AWS_ACCESS_KEY_ID") || err.contains(".aws"), "{err}");
    }

    #[test]
    fn help_names_every_credential_source() {
        help_names(
            "aws",
            &[
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
            ],
        );
    }

    #[test]
    fn the_cli_uploads_to_moto() {
        let moto = moto();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let path = image(home);
        let args = ["--endpoint", moto.url.as_str(), "--json", "--name", "berth-cli-moto", path.to_str().unwrap()];
        let o = berth("aws", home, &args, &MOTO_ENV);
        let v = json(&o);
        assert!(v["image_id"].as_str().unwrap().starts_with("ami-"), "{v}");
        assert!(v["snapshot_id"].as_str().unwrap().starts_with("snap-"), "{v}");
        assert_eq!(
            (&v["region"], &v["blocks_sent"], &v["reused"]),
            (&serde_json::json!("us-east-1"), &serde_json::json!(3), &serde_json::json!(false))
        );
        // moto answers BlockSize 512: said on stderr, 512 KiB blocks sent all the same.
        assert!(stderr(&o).contains("BlockSize 512"), "{}", stderr(&o));
        let again = json(&berth("aws", home, &args, &MOTO_ENV));
        assert_eq!((&again["image_id"], &again["reused"]), (&v["image_id"], &serde_json::json!(true)));
    }
}

mod gce {
    //! `berth upload gce` against the strict GCE fake (token endpoint, Cloud Storage resumable
    //! upload, Compute Engine images and operations): a second run reusing the object and the
    //! image, a run killed mid-upload finished by the next, and failures (a file that is not gzip,
    //! a key the service refuses) as one line.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use super::{berth, command, common, error_line, gce_fake, help_names, json};
    use gce_fake::{GRANULE, GceFake, PROJECT, TestKey};

    pub const BUCKET: &str = "berth-images";

    /// A gce tarball of about 1 MiB of bytes that do not compress (several 256 KiB chunks).
    fn tarball(dir: &Path, name: &str) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("disk.raw"), common::noise(9, (1 << 20) + 4321)).unwrap();
        let out = dir.join(name);
        assert!(
            Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&src).arg("disk.raw").status().unwrap().success()
        );
        out
    }

    /// The CRC32C of `bytes` as GCS shows it (base64 of the big-endian value), computed here.
    pub fn base64_crc(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(bytes).to_be_bytes())
    }

    /// The arguments of an upload of `file` to the fake at `url` in 256 KiB chunks, `--json`.
    fn fake_args<'a>(file: &'a Path, url: &'a str) -> Vec<&'a str> {
        let file = file.to_str().unwrap();
        let endpoints = ["--storage-endpoint", url, "--compute-endpoint", url];
        [file, "--bucket", BUCKET].into_iter().chain(endpoints).chain(["--chunk-size", "256K", "--json"]).collect()
    }

    /// A test's start: a temporary HOME, the fake trusting a new key (written to `sa.json`), and
    /// a tarball named `name` with its bytes.
    struct Setup {
        dir: tempfile::TempDir,
        fake: GceFake,
        key_file: PathBuf,
        file: PathBuf,
        bytes: Vec<u8>,
        url: String,
    }

    fn setup(name: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::generate(dir.path());
        let fake = GceFake::start(&key.public_der, &[BUCKET]);
        let key_file = key.write_key_file(&dir.path().join("sa.json"), &fake.token_uri());
        let file = tarball(dir.path(), name);
        let bytes = std::fs::read(&file).unwrap();
        let url = fake.url();
        Setup { dir, fake, key_file, file, bytes, url }
    }

    #[test]
    fn upload_gce_json_then_a_second_run_reuses_object_and_image() {
        let Setup { dir, fake, key_file, file, bytes, url } = setup("berth-0.9.gce.tar.gz");
        let home = dir.path();
        let mut args = fake_args(&file, &url);
        args.extend(["--family", "berth", "--key", key_file.to_str().unwrap()]);
        let v = json(&berth("gce", home, &args, &[]));
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
        let features: Vec<&str> = stats.inserts[0]["guestOsFeatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["type"].as_str().unwrap())
            .collect();
        assert_eq!(features, ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]);
        assert_eq!(stats.inserts[0]["family"], "berth");
        assert_eq!(fake.images()["berth-0-9"]["status"], "READY");

        // Again with an access token from a named variable (and the project given, as a token
        // names none): nothing uploaded, nothing made.
        let token = fake.issue_token();
        let mut args = fake_args(&file, &url);
        args.extend(["--family", "berth", "--access-token-env", "MY_GCE_TOKEN", "--project", PROJECT]);
        let v = json(&berth("gce", home, &args, &[("MY_GCE_TOKEN", &token)]));
        assert_eq!((v["reused_object"].as_bool(), v["reused_image"].as_bool()), (Some(true), Some(true)));
        assert_eq!(v["image"], "berth-0-9");
        let stats = fake.stats();
        assert_eq!((stats.sessions_started, stats.inserts.len()), (1, 1));
    }

    #[test]
    fn a_file_that_is_not_gzip_and_a_refused_key_fail_with_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let trusted = TestKey::generate(home);
        let other = TestKey::generate(home);
        let fake = GceFake::start(&trusted.public_der, &[BUCKET]);
        let url = fake.url();
        let good_key = trusted.write_key_file(&home.join("sa.json"), &fake.token_uri());

        let raw = home.join("disk.gce.tar.gz");
        std::fs::write(&raw, vec![0u8; 8192]).unwrap();
        let args = [
            raw.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--key",
            good_key.to_str().unwrap(),
            "--storage-endpoint",
            &url,
        ];
        let line = error_line(&berth("gce", home, &args, &[]));
        assert!(line.contains(raw.to_str().unwrap()) && line.contains("not a gzip file"), "{line}");
        assert!(fake.requests().is_empty(), "nothing sent for a bad file");

        // The key named by GOOGLE_APPLICATION_CREDENTIALS is not the one the service knows.
        let file = tarball(home, "x.gce.tar.gz");
        let wrong = other.write_key_file(&home.join("wrong.json"), &fake.token_uri());
        let args = [file.to_str().unwrap(), "--bucket", BUCKET, "--storage-endpoint", &url, "--compute-endpoint", &url];
        let line =
            error_line(&berth("gce", home, &args, &[("GOOGLE_APPLICATION_CREDENTIALS", wrong.to_str().unwrap())]));
        assert!(
            line.contains(&format!("key file {} (GOOGLE_APPLICATION_CREDENTIALS)", wrong.display()))
                && line.contains("invalid_grant"),
            "{line}"
        );
        assert!(fake.images().is_empty() && fake.stats().sessions_started == 0);

        // No credentials anywhere: says where they are looked for.
        let line = error_line(&berth("gce", home, &[file.to_str().unwrap(), "--bucket", BUCKET], &[]));
        assert!(line.contains("--key") && line.contains("CLOUDSDK_AUTH_ACCESS_TOKEN"), "{line}");
    }

    #[test]
    fn help_names_every_credential_source_with_an_example() {
        help_names(
            "gce",
            &[
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
            ],
        );
    }

    #[test]
    fn a_run_killed_mid_upload_run_again_finishes_the_same_session() {
        let Setup { dir, fake, key_file, file, bytes, url } = setup("killed.gce.tar.gz");
        let home = dir.path();
        let mut args = fake_args(&file, &url);
        args.extend(["--key", key_file.to_str().unwrap()]);
        // The third chunk reaches the server, its answer never comes, and the process is killed.
        fake.faults(|f| f.stall_chunk = Some(3));
        let mut child = command("gce", home, &args, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let start = std::time::Instant::now();
        while fake.stats().chunks < 3 {
            assert!(start.elapsed().as_secs() < 60, "the upload never reached its third chunk");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let state = home.join(".killed.gce.tar.gz.gce-upload");
        assert!(state.exists(), "the session is kept for the next run");
        assert!(fake.images().is_empty());

        fake.faults(|f| f.stall_chunk = None);
        let v = json(&berth("gce", home, &args, &[]));
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
}

mod azure {
    //! `berth upload azure` against Azurite (the blob, credentials from
    //! AZURE_STORAGE_CONNECTION_STRING) and the strict fake (the blob with AZURE_STORAGE_KEY, then
    //! the managed image with AZURE_ACCESS_TOKEN); a file that is not a fixed VHD and refused
    //! credentials fail with one line naming them.

    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use berth_cloud::Silent;
    use berth_cloud::azure::{self, pageblob};
    use serde_json::Value;

    use super::{
        azure_fake, azurite, azurite_blob, azurite_connection_string, berth, error_line, help_names, json, stderr,
    };

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

    #[test]
    fn cli_uploads_to_azurite_and_a_rerun_sends_nothing() {
        let emu = azurite();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let disk = vhd(home, "berth.azure.vhd");
        let cs = azurite_connection_string(&emu);
        let blob = azurite_blob(&cs, "images", "berth.azure.vhd");

        let env = [("AZURE_STORAGE_CONNECTION_STRING", cs.as_str())];
        let args = [disk.to_str().unwrap(), "--container", "images", "--json"];
        let v = json(&berth("azure", home, &args, &env));
        let len = std::fs::metadata(&disk).unwrap().len();
        assert_eq!(v["blob_url"], blob.url.as_str());
        assert_eq!(v["image_id"], Value::Null);
        assert_eq!(v["reused_blob"], false);
        assert_eq!(v["bytes_sent"].as_u64().unwrap() + v["bytes_skipped"].as_u64().unwrap(), len);
        // 64 KiB at 0, 300 000 bytes from 5 MiB (5 granules), the footer.
        assert_eq!(v["bytes_sent"], (65536 + 5 * 65536 + 512) as u64);
        let client = berth_cloud::api::client();
        assert_eq!(
            azure::merge(pageblob::page_ranges(&client, &blob, &Silent).unwrap()),
            [(0, 65535), (5 << 20, (5 << 20) + 5 * 65536 - 1), (16 << 20, (16 << 20) + 511)]
        );
        let again = json(&berth("azure", home, &args, &env));
        assert_eq!((again["reused_blob"].as_bool(), again["pages_sent"].as_u64()), (Some(true), Some(0)));
    }

    #[test]
    fn cli_uploads_and_creates_an_image_through_the_fake() {
        let fake = azure_fake::Fake::start();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let disk = vhd(home, "berth.azure.vhd");
        let endpoint = format!("{}/{}", fake.url(), azure_fake::ACCOUNT);
        let env = [("AZURE_STORAGE_KEY", azure_fake::KEY_BASE64), ("AZURE_ACCESS_TOKEN", azure_fake::TOKEN)];
        let fake_url = fake.url();
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
            &fake_url,
            "--json",
        ];
        let v = json(&berth("azure", home, &args, &env));
        assert_eq!(v["image_id"], "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Compute/images/berth");
        assert_eq!((v["reused_blob"].as_bool(), v["reused_image"].as_bool()), (Some(false), Some(false)));
        assert_eq!(fake.blob_bytes("/devstoreaccount1/images/berth.azure.vhd").unwrap(), std::fs::read(&disk).unwrap());
        let again = json(&berth("azure", home, &args, &env));
        assert_eq!((again["reused_blob"].as_bool(), again["reused_image"].as_bool()), (Some(true), Some(true)));
        assert_eq!(fake.image_put_bodies().len(), 1);

        // An expired token: one line naming AZURE_ACCESS_TOKEN (the blob is fine, the image is not
        // made).
        let mut args2 = args.to_vec();
        let rg = args2.iter().position(|a| *a == "rg").unwrap();
        args2[rg] = "rg2";
        let before = fake.requests().len();
        let expired =
            [("AZURE_STORAGE_KEY", azure_fake::KEY_BASE64), ("AZURE_ACCESS_TOKEN", azure_fake::EXPIRED_TOKEN)];
        let out = berth("azure", home, &args2, &expired);
        // Found before the upload: the one request was the image's GET.
        assert_eq!(fake.requests().len(), before + 1);
        let err = error_line(&out);
        assert!(err.contains("AZURE_ACCESS_TOKEN") && err.contains("ExpiredAuthenticationToken"), "{err}");
    }

    #[test]
    fn cli_refuses_a_file_that_is_not_a_vhd_and_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let raw = home.join("disk.raw");
        File::create(&raw).unwrap().set_len(4 << 20).unwrap();
        let args = [raw.to_str().unwrap(), "--container", "images", "--account", "a"];
        let err = error_line(&berth("azure", home, &args, &[("AZURE_STORAGE_KEY", "a2V5")]));
        assert!(err.contains("disk.raw") && err.contains("not a fixed VHD"), "{err}");

        let fake = azure_fake::Fake::start();
        let disk = vhd(home, "berth.azure.vhd");
        let key_file = home.join("key");
        std::fs::write(&key_file, "d3Jvbmc=\n").unwrap();
        let endpoint = format!("{}/{}", fake.url(), azure_fake::ACCOUNT);
        let args = [
            disk.to_str().unwrap(),
            "--account",
            azure_fake::ACCOUNT,
            "--account-key-file",
            key_file.to_str().unwrap(),
            "--blob-endpoint",
            &endpoint,
            "--container",
            "images",
        ];
        let err = error_line(&berth("azure", home, &args, &[]));
        assert!(
            err.contains(&format!("--account-key-file {}", key_file.display())) && err.contains("AuthenticationFailed"),
            "{err}"
        );

        // No credentials at all: every source named.
        let out = berth("azure", home, &[disk.to_str().unwrap(), "--container", "images"], &[]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains("AZURE_STORAGE_KEY") && err.contains("--sas-url"), "{err}");
    }

    #[test]
    fn help_names_every_credential_source() {
        help_names(
            "azure",
            &[
                "--sas-url",
                "--account-key-file",
                "AZURE_STORAGE_CONNECTION_STRING",
                "AZURE_STORAGE_SAS_TOKEN",
                "AZURE_STORAGE_KEY",
                "AZURE_STORAGE_ACCOUNT",
                "--access-token-file",
                "AZURE_ACCESS_TOKEN",
                "Examples:",
            ],
        );
    }
}

mod artifacts {
    //! What `berth export --platform aws,gce,azure` writes is what the uploaders take and what
    //! arrives: a small Berth disk exported by the binary, each artifact uploaded by the binary to
    //! its emulator, and read back there: moto's snapshot block by block equals `NAME.aws.raw`
    //! (holes read as zeros, no block listed over them), gcp-storage-emulator's object equals
    //! `NAME.gce.tar.gz`, Azurite's blob equals `NAME.azure.vhd` and Get Page Ranges lists exactly
    //! its 64 KiB granules with data. The `--json` results are checked against the files.

    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use berth_builder::esp::EspContents;
    use berth_builder::platform::PLATFORM_FILE;
    use berth_cloud::Silent;
    use berth_cloud::aws::credentials::Credentials;
    use berth_cloud::aws::ebs::Ebs;
    use berth_cloud::azure::{self, Auth, auth, pageblob};
    use berth_slot::Slot;

    use super::gce::{BUCKET, base64_crc};
    use super::{
        GIB, MOTO_ENV, azurite, azurite_blob, azurite_connection_string, berth, common, gce_fake, gcs_emulator, json,
        moto,
    };

    /// EBS's block: 512 KiB.
    const BLOCK: u64 = 512 << 10;

    /// A small Berth disk (`dir/in/host.img`) exported for the three clouds into `dir/out`: the
    /// paths of `host.aws.raw`, `host.gce.tar.gz`, `host.azure.vhd`.
    fn exported(dir: &Path) -> [PathBuf; 3] {
        let disk = dir.join("in/host.img");
        let mut esp = EspContents::new();
        esp.add_file("EFI/BOOT/BOOTX64.EFI", common::pattern(70_000, 1, 65536)).unwrap();
        esp.add_file("berth/a/vmlinuz", common::pattern(300_000, 2, 65536)).unwrap();
        esp.add_file("berth/a/initrd.img", common::pattern(200_000, 3, 65536)).unwrap();
        esp.add_file("berth/a/cmdline", b"console=ttyS0\n".to_vec()).unwrap();
        esp.add_file(PLATFORM_FILE, b"metal\n".to_vec()).unwrap();
        esp.add_dir(Slot::B.esp_dir()).unwrap();
        let (f, plan) = common::small_berth_disk(&disk, b"upload artifacts", &esp);
        let root = plan.root(Slot::A);
        f.write_all_at(&common::pattern(root.size as usize, 4, 65536), root.offset).unwrap();
        drop(f);
        let out = dir.join("out");
        let o = Command::new(super::BERTH)
            .arg("export")
            .arg(&disk)
            .args(["--platform", "aws,gce,azure", "--out"])
            .arg(&out)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("BERTH_PROGRESS")
            .output()
            .unwrap();
        assert!(o.status.success(), "berth export: {}", super::stderr(&o));
        ["host.aws.raw", "host.gce.tar.gz", "host.azure.vhd"].map(|n| out.join(n))
    }

    /// `len` bytes of `f` at `offset` (holes read as zeros).
    fn read_at(f: &File, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// The indexes of the `block`-sized blocks of `f` that `SEEK_DATA` finds data in (a block
    /// wholly in a hole reads as zeros); the whole file where the filesystem cannot say.
    fn blocks_with_data(f: &File, block: u64) -> Vec<u64> {
        use rustix::fs::{SeekFrom, seek};
        let size = f.metadata().unwrap().len();
        let mut out: Vec<u64> = Vec::new();
        let mut pos = 0;
        while pos < size {
            let start = match seek(f, SeekFrom::Data(pos)) {
                Ok(start) => start,
                // ENXIO: no data after pos.
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => return (0..size.div_ceil(block)).collect(),
            };
            let end = seek(f, SeekFrom::Hole(start)).unwrap_or(size).min(size);
            for i in start / block..end.div_ceil(block) {
                if out.last() != Some(&i) {
                    out.push(i);
                }
            }
            pos = end;
        }
        out
    }

    /// The merged byte ranges of `path` that Azure's page list should show: each 64 KiB granule
    /// (the last one shorter) with a byte that is not zero.
    fn granules_with_data(path: &Path) -> Vec<(u64, u64)> {
        let f = File::open(path).unwrap();
        let size = f.metadata().unwrap().len();
        let g = azure::GRANULE;
        let mut ranges = Vec::new();
        for block in blocks_with_data(&f, g) {
            let start = block * g;
            let len = g.min(size - start);
            if read_at(&f, start, len).iter().any(|&b| b != 0) {
                ranges.push((start, start + len - 1));
            }
        }
        azure::merge(ranges)
    }

    /// The aws raw disk through `berth upload aws` into moto, then read back block by block.
    fn aws_arrives(raw: &Path, home: &Path) {
        let moto = moto();
        let args = ["--endpoint", moto.url.as_str(), "--json", raw.to_str().unwrap()];
        let v = json(&berth("aws", home, &args, &MOTO_ENV));
        let f = File::open(raw).unwrap();
        let size = f.metadata().unwrap().len();
        assert_eq!(size % GIB, 0, "the aws disk is whole GiB");
        let snapshot = v["snapshot_id"].as_str().unwrap();
        assert!(snapshot.starts_with("snap-") && v["image_id"].as_str().unwrap().starts_with("ami-"), "{v}");
        assert_eq!((v["name"].as_str(), v["reused"].as_bool()), (Some("host"), Some(false)), "{v}");

        // The blocks with data in the file: those sent, each equal to the file's; no other listed.
        let data: Vec<u64> = blocks_with_data(&f, BLOCK)
            .into_iter()
            .filter(|&i| read_at(&f, i * BLOCK, BLOCK).iter().any(|&b| b != 0))
            .collect();
        assert!(!data.is_empty());
        assert_eq!(v["blocks_sent"].as_u64(), Some(data.len() as u64), "{v}");
        assert_eq!(v["zero_blocks_skipped"].as_u64(), Some(size / BLOCK - data.len() as u64), "{v}");
        let creds = Credentials {
            access_key_id: MOTO_ENV[0].1.into(),
            secret_access_key: MOTO_ENV[1].1.into(),
            session_token: None,
            source: "test keys [moto]".into(),
        };
        let client = berth_cloud::api::client();
        let ebs = Ebs::new(&client, &moto.url, "us-east-1", &creds, &Silent);
        let (listed, _) = ebs.list_blocks(snapshot).unwrap();
        assert_eq!(listed.iter().map(|b| b.index).collect::<Vec<_>>(), data, "ListSnapshotBlocks: the data blocks");
        for b in &listed {
            let (got, _) = ebs.get_block(snapshot, b).unwrap();
            assert!(got == read_at(&f, b.index * BLOCK, BLOCK), "snapshot block {} is not the file's", b.index);
        }
    }

    /// The gce tarball through `berth upload gce`: the object into gcp-storage-emulator, the image
    /// through the strict fake's Compute Engine; the object downloaded and compared.
    fn gce_arrives(tarball: &Path, home: &Path) {
        let emu = gcs_emulator(BUCKET);
        // The fake makes images only of objects in its own buckets (as GCE checks the object): it
        // is given the file, the emulator gets it from berth.
        let key = gce_fake::TestKey::generate(home);
        let fake = gce_fake::GceFake::start(&key.public_der, &[BUCKET]);
        let bytes = std::fs::read(tarball).unwrap();
        let object = tarball.file_name().unwrap().to_str().unwrap();
        fake.put_object(BUCKET, object, bytes.clone());
        let token = fake.issue_token();
        let compute = fake.url();
        let args = [
            tarball.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--project",
            gce_fake::PROJECT,
            "--access-token-env",
            "GCE_TOKEN",
            "--storage-endpoint",
            &emu.url,
            "--compute-endpoint",
            &compute,
            "--chunk-size",
            "256K",
            "--json",
        ];
        let v = json(&berth("gce", home, &args, &[("GCE_TOKEN", &token)]));
        assert_eq!((v["bucket"].as_str(), v["object"].as_str()), (Some(BUCKET), Some(object)), "{v}");
        assert_eq!(v["size"].as_u64(), Some(bytes.len() as u64), "{v}");
        assert_eq!(v["crc32c"], base64_crc(&bytes));
        assert_eq!((v["image"].as_str(), v["reused_object"].as_bool()), (Some("host"), Some(false)), "{v}");
        assert_eq!(fake.images()["host"]["status"], "READY");

        let client = berth_cloud::api::client();
        let stored = client
            .get_bytes(&format!("{}/download/storage/v1/b/{BUCKET}/o/{object}?alt=media", emu.url), 1 << 30)
            .unwrap();
        assert!(stored == bytes, "the object is not the tarball ({} bytes, the file {})", stored.len(), bytes.len());
        let meta = client.get_bytes(&format!("{}/storage/v1/b/{BUCKET}/o/{object}", emu.url), 1 << 20).unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta["crc32c"], v["crc32c"], "the emulator's own CRC32C");
    }

    /// The azure VHD through `berth upload azure` into Azurite: the blob downloaded and compared,
    /// its page list the VHD's granules with data.
    fn azure_arrives(vhd: &Path, home: &Path) {
        let emu = azurite();
        let cs = azurite_connection_string(&emu);
        let name = vhd.file_name().unwrap().to_str().unwrap();
        let blob = azurite_blob(&cs, "images", name);
        let args = [vhd.to_str().unwrap(), "--container", "images", "--json"];
        let v = json(&berth("azure", home, &args, &[("AZURE_STORAGE_CONNECTION_STRING", &cs)]));
        let bytes = std::fs::read(vhd).unwrap();
        assert_eq!(v["blob_url"], blob.url.as_str());
        assert_eq!(v["reused_blob"].as_bool(), Some(false), "{v}");
        let want = granules_with_data(vhd);
        let client = berth_cloud::api::client();
        let listed = azure::merge(pageblob::page_ranges(&client, &blob, &Silent).unwrap());
        assert_eq!(listed, want, "Get Page Ranges: the VHD's granules with data, none over its holes");
        let data: u64 = want.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(v["bytes_sent"].as_u64(), Some(data), "{v}");
        assert_eq!(v["bytes_skipped"].as_u64(), Some(bytes.len() as u64 - data), "{v}");

        // The blob, downloaded with the account's key.
        let Auth::SharedKey { account, key } = &blob.credentials.auth else { panic!("a shared key expected") };
        // The date signed: Azurite's own, from its Date header (the clocks are the same).
        let date = client.call("GET", &emu.url).send().unwrap().header("date").expect("a Date header").to_string();
        let headers = [("x-ms-date".to_string(), date), ("x-ms-version".to_string(), auth::VERSION.to_string())];
        let authorization = auth::shared_key_authorization(account, key, "GET", &blob.url, &headers, 0);
        let mut call = client.call("GET", &blob.url).limit(1 << 30).header("Authorization", &authorization);
        for (n, v) in &headers {
            call = call.header(n, v);
        }
        let reply = call.send().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.body == bytes, "the blob is not the VHD ({} bytes, the file {})", reply.body.len(), bytes.len());
    }

    /// An artifact's upload and check: (file, HOME).
    type Arrives = fn(&Path, &Path);

    #[test]
    fn exported_artifacts_arrive_whole_in_moto_the_gcs_emulator_and_azurite() {
        let dir = tempfile::tempdir().unwrap();
        let [aws, gce, vhd] = exported(dir.path());
        // The three clouds at once (each its own emulator and HOME); a panic in one fails the test.
        let runs = [("aws", aws_arrives as Arrives, &aws), ("gce", gce_arrives, &gce), ("azure", azure_arrives, &vhd)];
        std::thread::scope(|s| {
            for (name, run, file) in runs {
                let home = dir.path().join(format!("home-{name}"));
                std::fs::create_dir(&home).unwrap();
                std::thread::Builder::new().name(name.into()).spawn_scoped(s, move || run(file, &home)).unwrap();
            }
        });
    }
}
