//! `berth upload gce` (berth_cloud::gce) against gcp-storage-emulator (the resumable upload and
//! the object read back) and against the strict in-tree fake (support/gce_fake.rs: the token
//! endpoint, Compute Engine, and the faults: 500/429, a connection dropped mid-chunk, a server
//! that stays down, refused credentials, a failed image operation).

#[path = "support/gce_fake.rs"]
mod gce_fake;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use berth_cloud::gce::{self, Credentials, Options};
use berth_cloud::{Error, Progress};
use berth_http::Retry;
use gce_fake::{GRANULE, GceFake, PROJECT, TestKey};

const BUCKET: &str = "berth-images";

/// What the upload told its progress.
#[derive(Default)]
struct Recorder {
    notes: Mutex<Vec<String>>,
    advanced: Mutex<u64>,
}

impl Progress for Recorder {
    fn start(&self, _: &str, _: u64) {
        *self.advanced.lock().unwrap() = 0;
    }
    fn advance(&self, bytes: u64) {
        *self.advanced.lock().unwrap() += bytes;
    }
    fn finish(&self) {}
    fn note(&self, line: &str) {
        self.notes.lock().unwrap().push(line.to_string());
    }
}

impl Recorder {
    fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }
}

/// The key every fake trusts, and another it does not (made once per test binary: 2048-bit keys
/// take a moment).
fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        (TestKey::generate(dir.path()), TestKey::generate(dir.path()))
    })
}

/// A test's fake, directory and key file.
struct Setup {
    fake: GceFake,
    dir: tempfile::TempDir,
    key: PathBuf,
}

fn setup() -> Setup {
    let (good, _) = keys();
    let fake = GceFake::start(&good.public_der, &[BUCKET]);
    let dir = tempfile::tempdir().unwrap();
    let key = good.write_key_file(&dir.path().join("key.json"), &fake.token_uri());
    Setup { fake, dir, key }
}

impl Setup {
    /// Options against this fake, `chunk` bytes a chunk.
    fn options(&self, chunk: u64) -> Options {
        options(&self.fake.url(), chunk)
    }

    /// `file` uploaded with the good key (through the token endpoint) and a fast client.
    fn upload(&self, file: &Path, opts: &Options, progress: &Recorder) -> Result<gce::Outcome, Error> {
        gce::upload(&fast_client(), file, key_credentials(&self.key), opts, progress)
    }
}

/// Retries without the program's waits.
fn fast_client() -> berth_http::Client {
    gce::client(Retry::new().attempts(4).backoff(Duration::from_millis(10)).max_backoff(Duration::from_millis(40)))
}

fn options(fake_url: &str, chunk: u64) -> Options {
    let mut o = Options::new(BUCKET);
    o.storage_endpoint = fake_url.to_string();
    o.compute_endpoint = fake_url.to_string();
    o.chunk_size = chunk;
    o.poll = Duration::from_millis(20);
    o
}

/// A gce tarball of about `mib` MiB that does not compress (so that it has as many chunks):
/// `disk.raw` of pseudo-random bytes, tar'd and gzip'd by GNU tar.
fn tarball(dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let work = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let mut x = seed | 1;
    let data: Vec<u8> = (0..mib * (1 << 20) + 12345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(work.join("disk.raw"), data).unwrap();
    let out = dir.join(name);
    let st = Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&work).arg("disk.raw").status().unwrap();
    assert!(st.success());
    out
}

fn key_credentials(key: &Path) -> Credentials {
    Credentials::from_key_file(key, &format!("key file {} (--key)", key.display())).unwrap()
}

#[test]
fn the_emulator_stores_the_tarball_in_chunks_and_a_kept_session_goes_on_from_its_status() {
    let emu = support::gcs_emulator(BUCKET);
    let http = berth_http::Client::builder("test").no_redirects().build();
    let dir = tempfile::tempdir().unwrap();
    let file = tarball(dir.path(), "emu.gce.tar.gz", 3, 7);
    let bytes = std::fs::read(&file).unwrap();
    let mut opts = Options::new(BUCKET);
    opts.storage_endpoint = emu.url.clone();
    opts.chunk_size = 4 * GRANULE as u64;
    // The emulator takes any token.
    let token = || Credentials::from_token("ya29.emulator".into(), "test token".into()).unwrap();
    let progress = Recorder::default();

    let o = gce::upload_object(&fast_client(), &file, token(), &opts, &progress).unwrap();
    assert!(!o.reused);
    assert_eq!(o.size, bytes.len() as u64);
    assert_eq!(*progress.advanced.lock().unwrap(), bytes.len() as u64, "progress saw every byte");
    let stored = http
        .get_bytes(&format!("{}/download/storage/v1/b/{BUCKET}/o/emu.gce.tar.gz?alt=media", emu.url), 64 << 20)
        .unwrap();
    assert!(stored == bytes, "the object is the file");
    // The emulator's own CRC32C (google-crc32c) is the file's.
    let meta = http.get_bytes(&format!("{}/storage/v1/b/{BUCKET}/o/emu.gce.tar.gz", emu.url), 1 << 20).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["crc32c"], o.crc32c);
    assert!(!gce::gcs::state_path(&file).exists(), "no state file left");

    // Again: the object is there with the same CRC32C, nothing is sent.
    let again = gce::upload_object(&fast_client(), &file, token(), &opts, &progress).unwrap();
    assert!(again.reused);
    assert_eq!(again.crc32c, o.crc32c);

    // A session an earlier run started and left after two chunks (its state file beside the
    // file) is asked where it stands (`bytes */TOTAL`) and finished; same object.
    let file2 = tarball(dir.path(), "emu2.gce.tar.gz", 2, 9);
    let bytes2 = std::fs::read(&file2).unwrap();
    let total = bytes2.len();
    let init = http
        .call("POST", &format!("{}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable&name=emu2.gce.tar.gz", emu.url))
        .header("X-Upload-Content-Type", "application/gzip")
        .header("X-Upload-Content-Length", &total.to_string())
        .send()
        .unwrap();
    let session = init.header("location").unwrap().to_string();
    let first = 2 * 4 * GRANULE;
    let r = http
        .call("PUT", &session)
        .header("Content-Range", &format!("bytes 0-{}/{total}", first - 1))
        .body(bytes2[..first].to_vec())
        .send()
        .unwrap();
    assert_eq!((r.status, r.header("range")), (308, Some(format!("bytes=0-{}", first - 1)).as_deref()));
    let meta = std::fs::metadata(&file2).unwrap();
    let mtime = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let crc = gce::gcs::crc32c_base64(crc32c::crc32c(&bytes2));
    let state = serde_json::json!({
        "session": session, "storage": emu.url, "bucket": BUCKET, "object": "emu2.gce.tar.gz",
        "file": {"size": total, "mtime_ns": mtime, "crc32c": crc},
    });
    std::fs::write(gce::gcs::state_path(&file2), state.to_string()).unwrap();
    let progress = Recorder::default();
    let o2 = gce::upload_object(&fast_client(), &file2, token(), &opts, &progress).unwrap();
    assert!(!o2.reused);
    assert!(
        progress.notes().iter().any(|n| n.contains(&format!("going on from byte {first} of {total}"))),
        "{:?}",
        progress.notes()
    );
    let stored = http
        .get_bytes(&format!("{}/download/storage/v1/b/{BUCKET}/o/emu2.gce.tar.gz?alt=media", emu.url), 64 << 20)
        .unwrap();
    assert!(stored == bytes2, "the resumed object is the file");
    assert!(!gce::gcs::state_path(&file2).exists());
}

#[test]
fn a_tarball_becomes_an_image_with_a_key_and_a_second_run_makes_nothing_new() {
    let s = setup();
    let file = tarball(s.dir.path(), "berth-1.gce.tar.gz", 1, 1);
    let bytes = std::fs::read(&file).unwrap();
    let mut opts = s.options(GRANULE as u64);
    opts.family = Some("berth".into());
    let progress = Recorder::default();
    let out = s.upload(&file, &opts, &progress).unwrap();

    assert_eq!(s.fake.object(BUCKET, "berth-1.gce.tar.gz").as_deref(), Some(&bytes[..]), "the object is the file");
    assert_eq!(out.crc32c, gce::gcs::crc32c_base64(crc32c::crc32c(&bytes)));
    assert_eq!(
        (out.bucket.as_str(), out.object.as_str(), out.size),
        (BUCKET, "berth-1.gce.tar.gz", bytes.len() as u64)
    );
    assert_eq!(out.image, "berth-1");
    assert_eq!(out.image_self_link, format!("{}/compute/v1/projects/{PROJECT}/global/images/berth-1", s.fake.url()));
    assert!(!out.reused_object && !out.reused_image);

    let stats = s.fake.stats();
    assert_eq!(stats.tokens_issued, 1, "one token for the whole run");
    assert_eq!(stats.sessions_started, 1);
    let chunks = bytes.len().div_ceil(GRANULE);
    assert_eq!(stats.chunks, chunks);
    assert_eq!(stats.chunk_bytes, bytes.len() as u64, "every byte sent once");
    assert_eq!(stats.chunk_ranges[1], format!("bytes {GRANULE}-{}/{}", 2 * GRANULE - 1, bytes.len()));
    assert_eq!(stats.inserts.len(), 1);
    let insert = &stats.inserts[0];
    assert_eq!(insert["name"], "berth-1");
    assert_eq!(insert["family"], "berth");
    assert_eq!(insert["architecture"], "X86_64");
    assert_eq!(insert["rawDisk"]["source"], format!("https://storage.googleapis.com/{BUCKET}/berth-1.gce.tar.gz"));
    let features: Vec<&str> =
        insert["guestOsFeatures"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(features, ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]);
    let images = s.fake.images();
    assert_eq!(images.len(), 1);
    assert_eq!(images["berth-1"]["status"], "READY");
    assert!(!gce::gcs::state_path(&file).exists(), "the state file goes with a finished upload");
    assert!(s.fake.requests().iter().all(|r| r.target.starts_with("/token") || r.header("authorization").is_some()));

    // Run again: the object and the image are there; nothing is uploaded or made.
    let again = s.upload(&file, &opts, &progress).unwrap();
    assert!(again.reused_object && again.reused_image);
    assert_eq!(
        (again.image_self_link.as_str(), again.crc32c.as_str()),
        (out.image_self_link.as_str(), out.crc32c.as_str())
    );
    let stats = s.fake.stats();
    assert_eq!((stats.sessions_started, stats.chunks, stats.inserts.len()), (1, chunks, 1));
    assert_eq!(s.fake.images().len(), 1);
}

#[test]
fn answers_500_and_429_are_retried_everywhere() {
    let s = setup();
    let file = tarball(s.dir.path(), "retry.gce.tar.gz", 1, 2);
    let bytes = std::fs::read(&file).unwrap();
    s.fake.faults(|f| {
        for (method, path, status) in [
            ("POST", "/token", 500),
            ("GET", "/storage/v1/b/", 429),
            ("POST", "/upload/storage/v1/", 503),
            ("PUT", "/upload/storage/v1/", 500),
            ("PUT", "/upload/storage/v1/", 429),
            ("GET", "/global/images/", 500),
            ("POST", "/global/images", 429),
            ("GET", "/global/operations/", 502),
        ] {
            f.fail.push((method.into(), path.into(), status, 1));
        }
    });
    let progress = Recorder::default();
    let out = s.upload(&file, &s.options(GRANULE as u64), &progress).unwrap();
    assert!(!out.reused_image);
    assert_eq!(s.fake.object(BUCKET, "retry.gce.tar.gz").as_deref(), Some(&bytes[..]));
    let stats = s.fake.stats();
    assert_eq!(stats.inserts.len(), 1, "one image, the retried insert included");
    assert_eq!(s.fake.images().len(), 1);
    // The chunk answered 500 was followed by a status query (its first try answered 429, the
    // second said where to go on from), not by a blind resend.
    assert_eq!(stats.status_queries, 1, "{:?}", progress.notes());
    assert_eq!(stats.chunk_bytes, bytes.len() as u64, "the refused chunks never reached the session");
    let notes = progress.notes();
    for code in ["500", "429", "503", "502"] {
        assert!(notes.iter().any(|n| n.contains(code)), "a retry after {code} noted: {notes:?}");
    }
}

#[test]
fn a_connection_dropped_mid_chunk_resumes_from_the_offset_the_server_reports() {
    let s = setup();
    let file = tarball(s.dir.path(), "drop.gce.tar.gz", 3, 3);
    let bytes = std::fs::read(&file).unwrap();
    let chunk = 4 * GRANULE;
    // The second chunk: a quarter of it reaches the session, then the connection goes.
    s.fake.faults(|f| f.drop_chunk = Some((2, GRANULE)));
    let progress = Recorder::default();
    s.upload(&file, &s.options(chunk as u64), &progress).unwrap();
    assert_eq!(s.fake.object(BUCKET, "drop.gce.tar.gz").as_deref(), Some(&bytes[..]));
    let stats = s.fake.stats();
    assert_eq!(stats.status_queries, 1);
    let resumed_at = chunk + GRANULE;
    assert!(
        stats.chunk_ranges[2].starts_with(&format!("bytes {resumed_at}-")),
        "the chunk after the drop starts where the server said: {:?}",
        stats.chunk_ranges
    );
    // Only the part of the dropped chunk the server did not keep went again.
    assert_eq!(stats.chunk_bytes, (bytes.len() + chunk - GRANULE) as u64);
    assert_eq!(stats.sessions_started, 1);
    assert_eq!(*progress.advanced.lock().unwrap(), bytes.len() as u64);
}

#[test]
fn an_interrupted_run_run_again_finishes_the_same_session_and_makes_one_image() {
    let s = setup();
    let file = tarball(s.dir.path(), "cut.gce.tar.gz", 2, 4);
    let bytes = std::fs::read(&file).unwrap();
    let opts = s.options(2 * GRANULE as u64);
    s.fake.faults(|f| f.fail_uploads_after_chunks = Some(2));
    let e = s.upload(&file, &opts, &Recorder::default()).unwrap_err();
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
    assert!(!e.to_string().contains("upload_id"), "the session URI is a secret: {e}");
    let state = gce::gcs::state_path(&file);
    assert!(state.exists(), "the session is kept for the next run");
    assert!(s.fake.images().is_empty() && s.fake.stats().inserts.is_empty(), "no image from a failed upload");

    s.fake.faults(|f| f.fail_uploads_after_chunks = None);
    let progress = Recorder::default();
    let out = s.upload(&file, &opts, &progress).unwrap();
    assert!(!out.reused_object && !out.reused_image);
    assert_eq!(s.fake.object(BUCKET, "cut.gce.tar.gz").as_deref(), Some(&bytes[..]));
    let stats = s.fake.stats();
    assert_eq!(stats.sessions_started, 1, "the same session, taken up again");
    assert_eq!(stats.chunk_bytes, bytes.len() as u64, "no byte sent twice");
    assert!(
        progress.notes().iter().any(|n| n.contains(&format!("going on from byte {}", 4 * GRANULE))),
        "{:?}",
        progress.notes()
    );
    assert_eq!(stats.inserts.len(), 1);
    assert_eq!(s.fake.images().len(), 1);
    assert!(!state.exists());
}

#[test]
fn a_kept_session_the_server_has_forgotten_is_replaced_by_a_new_one() {
    let s = setup();
    let file = tarball(s.dir.path(), "old.gce.tar.gz", 1, 14);
    let bytes = std::fs::read(&file).unwrap();
    let opts = s.options(GRANULE as u64);
    s.fake.faults(|f| f.fail_uploads_after_chunks = Some(1));
    s.upload(&file, &opts, &Recorder::default()).unwrap_err();
    assert!(gce::gcs::state_path(&file).exists());
    s.fake.faults(|f| f.fail_uploads_after_chunks = None);
    s.fake.forget_sessions();
    let progress = Recorder::default();
    let out = s.upload(&file, &opts, &progress).unwrap();
    assert!(!out.reused_object);
    assert!(progress.notes().iter().any(|n| n.contains("session is gone")), "{:?}", progress.notes());
    assert_eq!(s.fake.object(BUCKET, "old.gce.tar.gz").as_deref(), Some(&bytes[..]));
    assert_eq!(s.fake.stats().sessions_started, 2);
    assert_eq!(s.fake.images().len(), 1);
}

#[test]
fn a_token_about_to_expire_is_renewed() {
    let s = setup();
    let file = tarball(s.dir.path(), "renew.gce.tar.gz", 1, 15);
    // Tokens that live 4 minutes are within the 5 minutes before expiry at once: each call gets
    // a fresh one (a long upload renews its token the same way).
    s.fake.faults(|f| f.token_lifetime = Some(240));
    s.upload(&file, &s.options(GRANULE as u64), &Recorder::default()).unwrap();
    let stats = s.fake.stats();
    assert!(
        stats.tokens_issued > stats.chunks,
        "a token per call: {} tokens, {} chunks",
        stats.tokens_issued,
        stats.chunks
    );
}

#[test]
fn a_run_interrupted_while_the_image_is_made_waits_for_it_when_run_again() {
    let s = setup();
    let file = tarball(s.dir.path(), "slow.gce.tar.gz", 1, 5);
    let mut opts = s.options(GRANULE as u64);
    s.fake.set_op_polls(10_000);
    opts.operation_timeout = Duration::from_millis(300);
    let e = s.upload(&file, &opts, &Recorder::default()).unwrap_err();
    assert!(matches!(e, Error::Operation { .. }) && e.to_string().contains("run again"), "{e}");
    assert_eq!(s.fake.images()["slow"]["status"], "PENDING");

    s.fake.finish_operations_within(3);
    opts.operation_timeout = Duration::from_secs(30);
    let out = s.upload(&file, &opts, &Recorder::default()).unwrap();
    assert!(out.reused_object && out.reused_image);
    assert_eq!(s.fake.images()["slow"]["status"], "READY");
    assert_eq!(s.fake.stats().inserts.len(), 1);
}

#[test]
fn an_image_made_meanwhile_is_reported_and_one_from_another_object_refused() {
    let s = setup();
    let file = tarball(s.dir.path(), "race.gce.tar.gz", 1, 6);
    let opts = s.options(GRANULE as u64);
    s.upload(&file, &opts, &Recorder::default()).unwrap();
    // images.get misses it (404) as if another run made it meanwhile: the insert is refused
    // 409 alreadyExists, and that image is the one reported.
    s.fake.faults(|f| f.fail.push(("GET".into(), "/global/images/".into(), 404, 1)));
    let out = s.upload(&file, &opts, &Recorder::default()).unwrap();
    assert!(out.reused_image);
    assert_eq!(s.fake.stats().inserts_refused, 1);
    assert_eq!(s.fake.images().len(), 1);

    // Another file asked to be the same image: refused, naming it.
    let other = tarball(s.dir.path(), "other.gce.tar.gz", 1, 8);
    let mut o2 = opts.clone();
    o2.image = Some("race".into());
    let e = s.upload(&other, &o2, &Recorder::default()).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("image race exists already"), "{e}");
}

#[test]
fn a_failed_image_operation_is_an_error_and_leaves_no_image() {
    for stays in [true, false] {
        let s = setup();
        let file = tarball(s.dir.path(), "bad.gce.tar.gz", 1, 10);
        s.fake.faults(|f| {
            f.insert_error = Some("The image file is not a valid disk image".into());
            f.failed_image_stays = stays;
        });
        let e = s.upload(&file, &s.options(GRANULE as u64), &Recorder::default()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Operation { .. }), "{text}");
        assert!(text.contains("images.insert bad") && text.contains("not a valid disk image"), "{text}");
        assert!(s.fake.images().is_empty(), "no image left (the FAILED one deleted: {stays})");
        assert_eq!(s.fake.stats().deletes, usize::from(stays));
        assert!(text.contains(if stays { "the image it left was deleted" } else { "no image was left" }), "{text}");
    }
}

#[test]
fn an_object_whose_crc32c_is_not_the_files_makes_no_image() {
    let s = setup();
    let file = tarball(s.dir.path(), "lie.gce.tar.gz", 1, 11);
    s.fake.faults(|f| f.lie_crc32c = true);
    let e = s.upload(&file, &s.options(GRANULE as u64), &Recorder::default()).unwrap_err();
    assert!(e.to_string().contains("CRC32C") && e.to_string().contains("no image made"), "{e}");
    assert!(s.fake.stats().inserts.is_empty() && s.fake.images().is_empty());
}

#[test]
fn refused_credentials_are_one_line_naming_their_source() {
    let s = setup();
    let file = tarball(s.dir.path(), "cred.gce.tar.gz", 1, 12);
    let opts = s.options(GRANULE as u64);
    let one_line = |e: &Error| {
        let t = e.to_string();
        assert!(!t.contains('\n'), "one line: {t}");
        t
    };

    // A key the service does not know (its signature does not verify).
    let (_, wrong) = keys();
    let wrong_key = wrong.write_key_file(&s.dir.path().join("wrong.json"), &s.fake.token_uri());
    let e = gce::upload(&fast_client(), &file, key_credentials(&wrong_key), &opts, &Recorder::default()).unwrap_err();
    let t = one_line(&e);
    assert!(matches!(e, Error::Credentials { .. }), "{t}");
    assert!(
        t.contains(&wrong_key.display().to_string()) && t.contains("invalid_grant") && t.contains("Signature"),
        "{t}"
    );

    // The clock two hours off: the assertion is expired as the service sees it.
    s.fake.faults(|f| f.clock_skew = 7200);
    let e = s.upload(&file, &opts, &Recorder::default()).unwrap_err();
    let t = one_line(&e);
    assert!(t.contains(&s.key.display().to_string()) && t.contains("short-lived"), "{t}");
    s.fake.faults(|f| f.clock_skew = 0);

    // An access token that has expired (the service forgot it): 401, naming the variable.
    let token = s.fake.issue_token();
    s.fake.expire_tokens();
    let creds = Credentials::from_token(token, "environment variable CLOUDSDK_AUTH_ACCESS_TOKEN".into()).unwrap();
    let mut o = opts.clone();
    o.project = Some(PROJECT.into());
    let e = gce::upload(&fast_client(), &file, creds, &o, &Recorder::default()).unwrap_err();
    let t = one_line(&e);
    assert!(matches!(e, Error::Credentials { .. }), "{t}");
    assert!(t.contains("CLOUDSDK_AUTH_ACCESS_TOKEN") && t.contains("401"), "{t}");

    // A given token that is good works, without a token exchange.
    let token = s.fake.issue_token();
    let creds = Credentials::from_token(token, "environment variable T (--access-token-env)".into()).unwrap();
    gce::upload(&fast_client(), &file, creds, &o, &Recorder::default()).unwrap();
    assert_eq!(s.fake.stats().tokens_issued, 0);
    assert_eq!(s.fake.images().len(), 1);
}

#[test]
fn a_file_that_is_not_a_gzip_tarball_is_refused_before_anything_is_sent() {
    let s = setup();
    let file = s.dir.path().join("raw.gce.tar.gz");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    let e = s.upload(&file, &s.options(GRANULE as u64), &Recorder::default()).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains(&file.display().to_string()), "{e}");
    assert!(s.fake.requests().is_empty());
    // A chunk size that is not a multiple of 256 KiB, too.
    let good = tarball(s.dir.path(), "ok.gce.tar.gz", 1, 13);
    let e = s.upload(&good, &s.options(300_000), &Recorder::default()).unwrap_err();
    assert!(e.to_string().contains("256 KiB"), "{e}");
    assert!(s.fake.requests().is_empty());
}

#[test]
fn an_image_of_the_name_from_other_bytes_of_the_same_object_is_refused() {
    let s = setup();
    let opts = s.options(GRANULE as u64);
    let file = tarball(s.dir.path(), "same.gce.tar.gz", 1, 20);
    let first = s.upload(&file, &opts, &Recorder::default()).unwrap();
    let label = &s.fake.stats().inserts[0]["labels"]["berth-crc32c"];
    assert_eq!(label.as_str().unwrap().len(), 8, "the CRC32C label: {label}");
    // Rebuilt: same name, same size, other bytes. The object is replaced, but the image made
    // of the old bytes is not taken for this one's.
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[4096..8192] {
        *b = !*b;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(bytes.len() as u64, first.size, "same size, so only the CRC32C tells them apart");
    let progress = Recorder::default();
    let e = s.upload(&file, &opts, &progress).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("CRC32C"), "{e}");
    assert!(progress.notes().iter().any(|n| n.contains("exists with other contents")), "{:?}", progress.notes());
    assert_eq!(s.fake.object(BUCKET, "same.gce.tar.gz").as_deref(), Some(&bytes[..]), "the object is the new file");
    assert_eq!(s.fake.stats().inserts.len(), 1);
}

#[test]
fn the_fake_refuses_what_the_services_refuse() {
    let s = setup();
    let http = berth_http::Client::builder("test").no_redirects().build();
    let url = s.fake.url();
    let bearer = format!("Bearer {}", s.fake.issue_token());
    let total = 4 * GRANULE;
    let init_url = format!("{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable&name=t.tar.gz");
    let init = |auth: Option<&str>| {
        let mut c = http.call("POST", &init_url).header("X-Upload-Content-Length", &total.to_string());
        if let Some(a) = auth {
            c = c.header("Authorization", a);
        }
        c.send().unwrap()
    };
    assert_eq!(init(None).status, 401, "no token");
    assert_eq!(init(Some("Bearer ya29.unknown")).status, 401, "a token it did not issue");
    let session = init(Some(&bearer)).header("location").unwrap().to_string();
    let put = |range: &str, body: Vec<u8>| {
        http.call("PUT", &session)
            .header("Authorization", &bearer)
            .header("Content-Range", range)
            .body(body)
            .send()
            .unwrap()
    };
    let r = put(&format!("bytes */{total}"), Vec::new());
    assert_eq!((r.status, r.header("range")), (308, None), "nothing persisted: no Range");
    let r = put(&format!("bytes 0-299999/{total}"), vec![1; 300_000]);
    assert_eq!(r.status, 400, "an intermediate chunk not a multiple of 256 KiB");
    assert!(r.text().contains("262144"), "{}", r.text());
    let r = put(&format!("bytes 0-{}/{total}", GRANULE - 1), vec![1; GRANULE]);
    assert_eq!((r.status, r.header("range")), (308, Some(format!("bytes=0-{}", GRANULE - 1)).as_deref()));
    assert_eq!(
        put(&format!("bytes 0-{}/{total}", GRANULE - 1), vec![1; GRANULE]).status,
        400,
        "not at the persisted offset"
    );
    let r = put(&format!("bytes {}-{}/{total}", 2 * GRANULE, 3 * GRANULE - 1), vec![1; GRANULE]);
    assert_eq!(r.status, 400, "a gap");
    assert_eq!(put(&format!("bytes {GRANULE}-{}/{total}", 2 * GRANULE - 1), vec![1; 10]).status, 400, "body ≠ range");

    let token = |assertion: &str| {
        http.call("POST", &s.fake.token_uri())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(
                format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}")
                    .into_bytes(),
            )
            .send()
            .unwrap()
    };
    let r = token("eyJhbGciOiJSUzI1NiJ9.e30.AAAA");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid_grant"), "{}", r.text());

    let images = format!("{url}/compute/v1/projects/{PROJECT}/global/images");
    let insert = |body: serde_json::Value| {
        http.call("POST", &images).header("Authorization", &bearer).body(body.to_string().into_bytes()).send().unwrap()
    };
    let r = insert(
        serde_json::json!({"name": "x", "rawDisk": {"source": format!("https://storage.googleapis.com/{BUCKET}/none")}}),
    );
    assert_eq!(r.status, 400, "rawDisk.source names no object: {}", r.text());
    s.fake.put_object(BUCKET, "t.tar.gz", vec![0x1f, 0x8b]);
    let good = |name: &str| serde_json::json!({"name": name, "rawDisk": {"source": format!("https://storage.googleapis.com/{BUCKET}/t.tar.gz")}});
    assert_eq!(insert(good("Bad_Name")).status, 400, "an invalid name");
    assert_eq!(insert(good("ok")).status, 200);
    let r = insert(good("ok"));
    assert_eq!(r.status, 409);
    assert!(r.text().contains("alreadyExists"), "{}", r.text());
}
