//! `berth upload azure`'s library against Azurite (page blobs: Put Blob, Put Page, Get Page
//! Ranges, metadata, Shared Key and account SAS checked by the emulator) and against the strict
//! in-tree fake (support/azure_fake.rs: the 4 MiB page cap, alignment, faults, and Resource
//! Manager's image calls, which no emulator has).

#[path = "support/azure_fake.rs"]
mod azure_fake;
mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use berth_cloud::azure::{self, Auth, Blob, BlobOptions, Credentials, ImageSpec, auth, pageblob};
use berth_cloud::{Error, Silent};
use berth_http::{Client, Retry};

use azure_fake::{Fake, Fault};

/// A client retrying fast: the policy's shape, not its minutes.
fn fast_client() -> Client {
    let retry = Retry::new().attempts(8).backoff(Duration::from_millis(20)).max_backoff(Duration::from_millis(100));
    Client::builder("berth-test").retry(retry).build()
}

/// A fixed VHD of `mib` MiB (sparse) with data at the given (offset, length, byte) places and a
/// footer: the disk Azure gets.
fn make_vhd(dir: &Path, name: &str, mib: u64, data: &[(u64, usize, u8)]) -> PathBuf {
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    let size = mib << 20;
    f.set_len(size).unwrap();
    for &(at, len, byte) in data {
        f.write_all_at(&vec![byte; len], at).unwrap();
    }
    f.write_all_at(&azure::vhd::footer(size, [9; 16]), size).unwrap();
    path
}

/// Scattered data: a run across a 4 MiB boundary, a lone 512 bytes, a 5 MiB stretch (two Put
/// Pages at least), a granule of zeros written out, the disk's last sector.
fn scattered(dir: &Path, name: &str) -> PathBuf {
    let p = make_vhd(
        dir,
        name,
        40,
        &[
            (0, 4096, 0xeb),
            ((4 << 20) - 8192, 16384, 1),
            (9 << 20, 512, 2),
            (13 << 20, 5 << 20, 3),
            ((40 << 20) - 512, 512, 4),
        ],
    );
    File::options().write(true).open(&p).unwrap().write_all_at(&[0; 65536], 30 << 20).unwrap();
    p
}

/// The data ranges `[start, end]` of `path` as the upload must send them (granules of 64 KiB
/// that are not all zeros), merged.
fn expected_ranges(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let g = azure::GRANULE as usize;
    let mut r = Vec::new();
    for (i, chunk) in bytes.chunks(g).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            r.push(((i * g) as u64, (i * g + chunk.len()) as u64 - 1));
        }
    }
    azure::merge(r)
}

/// A fresh Azurite with container `images`, a fast client, a scratch folder and the blob `name`
/// (Shared Key, the well-known account).
fn azurite_with_container(name: &str) -> (support::Emulator, tempfile::TempDir, Client, Blob) {
    let emu = support::azurite();
    let client = fast_client();
    let blob = azurite_blob(&emu, name);
    // A fresh Azurite: the container is created, not found.
    assert!(pageblob::create_container(&client, &blob.container_url(name), &blob.credentials, &Silent).unwrap());
    (emu, tempfile::tempdir().unwrap(), client, blob)
}

fn dev_key() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(auth::DEV_KEY).unwrap()
}

/// The blob `name` in container `images` of Azurite's well-known account, by its connection string.
fn azurite_blob(emu: &support::Emulator, name: &str) -> Blob {
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={}/{};",
        auth::DEV_ACCOUNT,
        auth::DEV_KEY,
        emu.url,
        auth::DEV_ACCOUNT
    );
    let options = BlobOptions { container: Some("images".into()), blob_name: name.into(), ..BlobOptions::default() };
    azure::resolve(&options, &|k| (k == "AZURE_STORAGE_CONNECTION_STRING").then(|| cs.clone())).unwrap()
}

/// A raw call the test makes itself, signed with Shared Key as the client signs: `x-ms-date`,
/// `x-ms-version`, then `extra`; `len` the body's length.
fn shared_key_call<'c>(
    client: &'c Client,
    (account, key): (&str, &[u8]),
    method: &str,
    url: &str,
    extra: &[(&str, &str)],
    len: usize,
) -> berth_http::Call<'c> {
    let mut headers = vec![
        ("x-ms-date".to_string(), berth_cloud::time::rfc1123(berth_cloud::time::now())),
        ("x-ms-version".to_string(), auth::VERSION.to_string()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let a = auth::shared_key_authorization(account, key, method, url, &headers, len);
    let mut call = client.call(method, url).header("Authorization", &a);
    for (n, v) in &headers {
        call = call.header(n, v);
    }
    call
}

/// The whole blob, read with Get Blob (signed with the well-known key).
fn download(client: &Client, blob: &Blob) -> Vec<u8> {
    let Auth::SharedKey { account, key } = &blob.credentials.auth else { panic!("shared key expected") };
    let reply = shared_key_call(client, (account, key), "GET", &blob.url, &[], 0).limit(1 << 30).send().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.body
}

#[test]
fn azurite_takes_the_data_pages_and_nothing_else() {
    let (emu, dir, client, blob) = azurite_with_container("disk.azure.vhd");
    let vhd = scattered(dir.path(), "disk.azure.vhd");

    let out = azure::upload_vhd(&client, &blob, &vhd, 8, false, &Silent).unwrap();
    let want = expected_ranges(&vhd);
    // Get Page Ranges lists exactly the data sent: no zero range, nothing missing.
    assert_eq!(out.ranges, want, "{}", emu.log_text());
    assert_eq!(azure::merge(pageblob::page_ranges(&client, &blob, &Silent).unwrap()), want);
    let data: u64 = want.iter().map(|(s, e)| e + 1 - s).sum();
    assert_eq!(out.bytes_sent, data);
    assert_eq!(out.bytes_sent + out.bytes_skipped, std::fs::metadata(&vhd).unwrap().len());
    assert!(out.pages_sent >= 6 && !out.reused, "{out:?}");
    assert_eq!(download(&client, &blob), std::fs::read(&vhd).unwrap(), "the blob equals the VHD byte for byte");

    // Run again: complete, nothing sent.
    let again = azure::upload_vhd(&client, &blob, &vhd, 8, false, &Silent).unwrap();
    assert!(again.reused && again.pages_sent == 0 && again.sha256 == out.sha256, "{again:?}");

    // Another VHD of another length under the same name: refused, then replaced with --overwrite.
    let other = make_vhd(dir.path(), "other.vhd", 3, &[(1 << 20, 512, 7)]);
    let e = azure::upload_vhd(&client, &blob, &other, 8, false, &Silent).unwrap_err().to_string();
    assert!(e.contains("--overwrite") && e.contains(&blob.url), "{e}");
    let replaced = azure::upload_vhd(&client, &blob, &other, 8, true, &Silent).unwrap();
    assert_eq!(replaced.ranges, expected_ranges(&other));
    assert_eq!(download(&client, &blob), std::fs::read(&other).unwrap());
}

#[test]
fn azurite_checks_the_shared_key_and_a_wrong_one_names_its_source() {
    let (emu, dir, client, _good) = azurite_with_container("k.vhd");
    let vhd = make_vhd(dir.path(), "k.vhd", 2, &[(0, 512, 1)]);
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, base64::engine::general_purpose::STANDARD.encode(b"not the key")).unwrap();
    let options = BlobOptions {
        account: Some(auth::DEV_ACCOUNT.into()),
        account_key_file: Some(key_file.clone()),
        blob_endpoint: Some(format!("{}/{}", emu.url, auth::DEV_ACCOUNT)),
        container: Some("images".into()),
        blob_name: "k.vhd".into(),
        ..BlobOptions::default()
    };
    let bad = azure::resolve(&options, &|_| None).unwrap();
    let text = credentials_error(azure::upload_vhd(&client, &bad, &vhd, 2, false, &Silent).unwrap_err());
    assert!(text.contains(&format!("--account-key-file {}", key_file.display())) && text.contains("403"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
}

/// An account SAS signed with the well-known key (version 2020-12-06 and later layout).
fn account_sas(expiry: &str) -> String {
    let (sp, ss, srt, sv) = ("rwdlac", "b", "sco", "2021-08-06");
    let sts = format!("{}\n{sp}\n{ss}\n{srt}\n\n{expiry}\n\nhttp,https\n{sv}\n\n", auth::DEV_ACCOUNT);
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &dev_key()), sts.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let sig: String = sig
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={expiry}&spr=http,https&sig={sig}")
}

#[test]
fn azurite_takes_an_upload_with_an_account_sas() {
    let (emu, dir, client, keyed) = azurite_with_container("sas.vhd");
    let vhd = scattered(dir.path(), "sas.vhd");
    let expiry = berth_cloud::time::iso8601(berth_cloud::time::now() + 3600);
    let options = BlobOptions {
        sas_url: Some(format!("{}/{}/images?{}", emu.url, auth::DEV_ACCOUNT, account_sas(&expiry))),
        blob_name: "sas.vhd".into(),
        ..BlobOptions::default()
    };
    let blob = azure::resolve(&options, &|_| None).unwrap();
    assert_eq!(blob.url, keyed.url);
    let out = azure::upload_vhd(&client, &blob, &vhd, 8, false, &Silent).unwrap();
    assert_eq!(out.ranges, expected_ranges(&vhd), "{}", emu.log_text());
    assert!(!out.blob_url.contains("sig="));
    assert_eq!(download(&client, &keyed), std::fs::read(&vhd).unwrap());

    // A SAS Azurite refuses (signed for other permissions than it says): 403, named, redacted.
    let forged = account_sas(&expiry).replace("sp=rwdlac", "sp=rwdlacu");
    let options =
        BlobOptions { sas_url: Some(format!("{}/{}/images?{forged}", emu.url, auth::DEV_ACCOUNT)), ..options };
    let blob = azure::resolve(&options, &|_| None).unwrap();
    let e = azure::upload_vhd(&client, &blob, &vhd, 8, false, &Silent).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, Error::Credentials { .. }) && text.contains("--sas-url") && text.contains("sig=REDACTED"),
        "{text}"
    );
    let sig = forged.split("sig=").nth(1).unwrap();
    assert!(!text.contains(sig), "{text}");
}

#[test]
fn azurite_takes_a_vhd_qemu_img_made() {
    let Ok(qemu_img) = which("qemu-img") else {
        eprintln!("qemu-img is not installed: skipped");
        return;
    };
    let (emu, dir, client, blob) = azurite_with_container("qemu.vhd");
    let raw = dir.path().join("disk.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(24 << 20).unwrap();
    f.write_all_at(&[5; 70000], 3 << 20).unwrap();
    f.write_all_at(b"end", (24 << 20) - 3).unwrap();
    let vhd = dir.path().join("disk.vhd");
    let st = std::process::Command::new(qemu_img)
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size"])
        .arg(&raw)
        .arg(&vhd)
        .status()
        .unwrap();
    assert!(st.success());
    let out = azure::upload_vhd(&client, &blob, &vhd, 4, false, &Silent).unwrap();
    assert_eq!(out.ranges, expected_ranges(&vhd), "{}", emu.log_text());
    assert_eq!(download(&client, &blob), std::fs::read(&vhd).unwrap());
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
        .ok_or(())
}

#[test]
fn a_file_that_is_not_a_fixed_vhd_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    File::create(&raw).unwrap().set_len(4 << 20).unwrap();
    let blob = Blob {
        url: format!("http://127.0.0.1:{}/a/c/b", berth_testkit::dead_port()),
        credentials: Credentials { auth: Auth::Sas { query: "sig=x".into() }, source: "test".into() },
    };
    let e = azure::upload_vhd(&fast_client(), &blob, &raw, 1, false, &Silent).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("disk.raw"), "{e}");
}

// ----- the strict fake: what Azurite does not check, and Resource Manager -----

fn fake_blob(fake: &Fake, key: &[u8], source: &str) -> Blob {
    Blob {
        url: format!("{}/{}/images/disk.azure.vhd", fake.url(), azure_fake::ACCOUNT),
        credentials: Credentials {
            auth: Auth::SharedKey { account: azure_fake::ACCOUNT.into(), key: key.to_vec() },
            source: source.into(),
        },
    }
}

/// What the strict-fake tests start from: the fake, the scattered VHD (in `_dir`), a fast
/// client and the blob `disk.azure.vhd` under the fake's key.
struct FakeRun {
    fake: Fake,
    _dir: tempfile::TempDir,
    vhd: PathBuf,
    client: Client,
    blob: Blob,
}

fn fake_run() -> FakeRun {
    let fake = Fake::start();
    let dir = tempfile::tempdir().unwrap();
    let vhd = scattered(dir.path(), "disk.azure.vhd");
    let blob = fake_blob(&fake, azure_fake::KEY, "test");
    FakeRun { fake, _dir: dir, vhd, client: fast_client(), blob }
}

impl FakeRun {
    /// The blob in the fake equals the VHD byte for byte.
    fn assert_blob_is_the_vhd(&self) {
        let blob = self.fake.blob_bytes("/devstoreaccount1/images/disk.azure.vhd").unwrap();
        assert!(blob == std::fs::read(&self.vhd).unwrap(), "the blob differs from the VHD");
    }

    /// The image `name` from `blob_url`, with the fake's good token.
    fn image(&self, name: &str, blob_url: &str) -> Result<azure::ImageOutcome, Error> {
        azure::create_image(&self.client, &spec(&self.fake, azure_fake::TOKEN, name), blob_url, &Silent)
    }
}

/// `e` is an [`Error::Credentials`]; its text.
fn credentials_error(e: Error) -> String {
    let text = e.to_string();
    assert!(matches!(e, Error::Credentials { .. }), "{text}");
    text
}

fn spec(fake: &Fake, token: &str, name: &str) -> ImageSpec {
    ImageSpec {
        endpoint: fake.url(),
        subscription: "sub-1".into(),
        resource_group: "rg".into(),
        location: "westeurope".into(),
        name: name.into(),
        token: token.into(),
        token_source: "AZURE_ACCESS_TOKEN".into(),
        poll_interval: Duration::from_millis(20),
        timeout: Duration::from_secs(20),
    }
}

#[test]
fn fake_upload_then_image_then_rerun_reuses_both() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, .. } = &run;
    let blob = fake_blob(fake, azure_fake::KEY, "AZURE_STORAGE_KEY");
    let out = azure::upload_vhd(client, &blob, vhd, 16, false, &Silent).unwrap();
    assert_eq!(out.ranges, expected_ranges(vhd));
    run.assert_blob_is_the_vhd();
    assert!(fake.max_page_write() <= 4 << 20);
    let image = run.image("berth-1", &out.blob_url).unwrap();
    assert!(!image.reused && image.id.ends_with("/providers/Microsoft.Compute/images/berth-1"), "{image:?}");
    let body = fake.image_put_bodies();
    assert_eq!(body.len(), 1);
    assert_eq!(body[0]["properties"]["hyperVGeneration"], "V2");
    assert_eq!(body[0]["properties"]["storageProfile"]["osDisk"]["blobUri"], out.blob_url.as_str());

    let again = azure::upload_vhd(client, &blob, vhd, 16, false, &Silent).unwrap();
    assert!(again.reused);
    let image2 = run.image("berth-1", &again.blob_url).unwrap();
    assert!(image2.reused && image2.id == image.id);
    assert_eq!(fake.image_put_bodies().len(), 1, "one image, never two");

    // The same name from another blob: refused, never replaced.
    let other = format!("{}/{}/images/other.vhd", fake.url(), azure_fake::ACCOUNT);
    let e = run.image("berth-1", &other).unwrap_err().to_string();
    assert!(e.contains("never replaces"), "{e}");
}

#[test]
fn fake_refuses_what_azure_refuses() {
    let run = fake_run();
    let FakeRun { client, blob, .. } = &run;
    assert_eq!(base64::engine::general_purpose::STANDARD.encode(azure_fake::KEY), azure_fake::KEY_BASE64);
    pageblob::create(client, blob, (8 << 20) + 512, &[], &Silent).unwrap();
    // Raw calls the client never makes: over 4 MiB, misaligned, a range ≠ the body.
    let raw = |range: &str, len: usize| {
        let url = format!("{}?comp=page", blob.url);
        let extra = [("x-ms-page-write", "update"), ("x-ms-range", range)];
        let call = shared_key_call(client, (azure_fake::ACCOUNT, azure_fake::KEY), "PUT", &url, &extra, len);
        let r = call.body(vec![1u8; len]).send().unwrap();
        (r.status, r.header("x-ms-error-code").unwrap_or("").to_string())
    };
    let big = (4 << 20) + 512;
    assert_eq!(raw(&format!("bytes=0-{}", big - 1), big), (413, "RequestBodyTooLarge".to_string()));
    assert_eq!(raw("bytes=100-611", 512), (416, "InvalidPageRange".to_string()));
    assert_eq!(raw("bytes=0-1023", 512), (400, "InvalidHeaderValue".to_string()));
    assert_eq!(raw("bytes=0-511", 512).0, 201);
    // And the library refuses to make such a call at all.
    assert!(matches!(pageblob::put_page(client, blob, 0, &vec![1; big], &Silent), Err(Error::Invalid(_))));
}

#[test]
fn fake_faults_are_retried_and_the_upload_completes() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, blob, .. } = &run;
    fake.fault(Fault::Status(500), 2);
    fake.fault(Fault::Status(503), 1);
    fake.fault(Fault::Status(429), 1);
    fake.fault(Fault::Drop, 2);
    fake.fault(Fault::Cut, 1);
    // And the page list comes in answers of two ranges, each after the marker of the last.
    fake.page_ranges_per_answer(2);
    let out = azure::upload_vhd(client, blob, vhd, 4, false, &Silent).unwrap();
    assert_eq!(fake.faults_left(), 0, "every fault was hit");
    let lists = fake.requests().iter().filter(|r| r.target.contains("comp=pagelist")).count();
    assert!(lists >= 3, "{lists} Get Page Ranges calls");
    assert_eq!(out.ranges, expected_ranges(vhd));
    run.assert_blob_is_the_vhd();
}

#[test]
fn fake_wrong_key_and_expired_token_give_one_line_naming_the_source() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, blob: good, .. } = &run;
    let bad = fake_blob(fake, b"wrong key", "--account-key-file /keys/azure");
    let text = credentials_error(azure::upload_vhd(client, &bad, vhd, 4, false, &Silent).unwrap_err());
    assert!(
        text.starts_with("credentials from --account-key-file /keys/azure") && text.contains("AuthenticationFailed"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    assert!(fake.image_put_bodies().is_empty());

    let out = azure::upload_vhd(client, good, vhd, 4, false, &Silent).unwrap();
    let e = azure::create_image(client, &spec(fake, azure_fake::EXPIRED_TOKEN, "img"), &out.blob_url, &Silent);
    let text = credentials_error(e.unwrap_err());
    assert!(
        text.contains("AZURE_ACCESS_TOKEN") && text.contains("ExpiredAuthenticationToken") && !text.contains('\n'),
        "{text}"
    );
    assert!(fake.image_put_bodies().is_empty());
}

#[test]
fn fake_failed_provisioning_is_reported_and_the_image_deleted() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, blob, .. } = &run;
    let out = azure::upload_vhd(client, blob, vhd, 4, false, &Silent).unwrap();
    fake.fail_next_image("the VHD is corrupt");
    let e = run.image("img", &out.blob_url).unwrap_err().to_string();
    assert!(e.contains("Failed") && e.contains("the VHD is corrupt") && e.contains("deleted"), "{e}");
    assert!(!fake.image_exists("img"), "nothing half-registered");
    // A blob that does not exist is refused by Resource Manager.
    let missing = format!("{}/{}/images/none.vhd", fake.url(), azure_fake::ACCOUNT);
    let e = run.image("img2", &missing).unwrap_err().to_string();
    assert!(e.contains("400") && e.contains("InvalidParameter"), "{e}");
    // Then it works.
    let ok = run.image("img", &out.blob_url).unwrap();
    assert!(!ok.reused);
    assert_eq!(fake.image_put_bodies().len(), 2, "the failed one, then the good one");
}

#[test]
fn fake_interrupted_upload_run_again_finishes_with_one_image() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, blob, .. } = &run;
    let spec = spec(fake, azure_fake::TOKEN, "berth-1");
    fake.fail_pages_after(3);
    let e = azure::upload_vhd(client, blob, vhd, 2, false, &Silent).unwrap_err();
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    assert!(fake.pages_written() >= 3);
    assert!(fake.image_put_bodies().is_empty());

    fake.fail_pages_after(u64::MAX);
    let out = azure::upload_vhd(client, blob, vhd, 2, false, &Silent).unwrap();
    assert!(!out.reused, "the unfinished blob is completed, not taken as done");
    run.assert_blob_is_the_vhd();
    azure::create_image(client, &spec, &out.blob_url, &Silent).unwrap();
    let again = azure::upload_vhd(client, blob, vhd, 2, false, &Silent).unwrap();
    assert!(again.reused);
    assert!(azure::create_image(client, &spec, &again.blob_url, &Silent).unwrap().reused);
    assert_eq!(fake.image_put_bodies().len(), 1, "exactly one image");
}

#[test]
fn a_sas_never_appears_in_a_client_error() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = make_vhd(dir.path(), "s.vhd", 1, &[(0, 512, 1)]);
    let expiry = berth_cloud::time::iso8601(berth_cloud::time::now() + 3600);
    // A URL the HTTP client cannot use at all (a port out of range): its own error.
    let options = BlobOptions {
        sas_url: Some(format!("http://127.0.0.1:99999/acct/images?sv=2021-08-06&se={expiry}&sr=c&sp=rw&sig=TOPSECRET")),
        blob_name: "s.vhd".into(),
        ..BlobOptions::default()
    };
    let blob = azure::resolve(&options, &|_| None).unwrap();
    let e = azure::upload_vhd(&fast_client(), &blob, &vhd, 1, false, &Silent).unwrap_err().to_string();
    assert!(!e.contains("TOPSECRET"), "{e}");
    assert!(e.contains("Get Blob Properties"), "{e}");
}

#[test]
fn fake_image_through_a_location_header_and_a_token_kept_home() {
    let run = fake_run();
    let FakeRun { fake, vhd, client, blob, .. } = &run;
    let out = azure::upload_vhd(client, blob, vhd, 4, false, &Silent).unwrap();
    fake.answer_with_location();
    let image = run.image("loc", &out.blob_url).unwrap();
    assert!(!image.reused && image.id.ends_with("/images/loc"));
    let polled = fake.requests().iter().filter(|r| r.path().contains("/operationresults/")).count();
    assert!(polled >= 2, "the Location was polled until done: {polled}");
    // A token is never sent to another host than the Resource Manager endpoint.
    let mut other = spec(fake, azure_fake::TOKEN, "loc2");
    other.endpoint = format!("http://localhost:{}", fake.url().rsplit(':').next().unwrap());
    let e = azure::create_image(client, &other, &out.blob_url, &Silent).unwrap_err().to_string();
    assert!(e.contains("not followed with the token"), "{e}");
    assert!(fake.requests().iter().all(|r| !r.path().ends_with("/operationresults/loc2")), "never polled");
}
