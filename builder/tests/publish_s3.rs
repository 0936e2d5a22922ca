//! `berth publish --repo s3://BUCKET/PREFIX` against moto's server on 127.0.0.1 (default mode:
//! it does not judge signatures, cloud/tests/s3.rs does that in its auth mode):
//!
//! - the objects a publish writes equal, byte for byte, the files a local publish of the same
//!   disk at the same time writes, and nothing else is written; the agent's own
//!   `berth_release::accept` takes the uploaded index and signatures;
//! - a poller reading as an agent does (anonymous GET of the index and its `.sig`, HEAD of every
//!   artifact the index names, every ~50 ms) during a first publish and a second release never
//!   sees a pair that does not verify nor an artifact missing;
//! - two publishes racing for one channel: one wins, the other is refused ("run again"), and the
//!   channel is the winner's, its pair valid;
//! - publishing the same disk again PUTs only the index and its `.sig` (moto's request recorder);
//! - a PUT of the index or its `.sig` that moto carried out but whose answer was lost (a proxy
//!   in front of moto answers 500 after forwarding it) is retried, comes back 412, and is taken
//!   as written because the key holds this run's bytes: the publish succeeds and the channel
//!   verifies (moto cannot lose an answer; the proxy is the one fake part).

mod common;
#[path = "../../cloud/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_builder::esp::EspContents;
use berth_builder::publish::{PublishOptions, publish};
use berth_builder::publish_s3::{S3PublishReport, S3Repo, S3Target, publish_s3, publish_s3_with};
use berth_cloud::Silent;
use berth_cloud::aws::credentials::Credentials;
use berth_cloud::aws::sigv4::{Payload, Signer};
use berth_release::{Index, Timestamp, TrustedKeys, accept};
use berth_slot::Slot;
use common::{key, pattern, small_berth_disk};
use sha2::{Digest, Sha256};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// 2026-12-06T19:00:00Z
const NOW: Timestamp = Timestamp(1_796_583_600);
const BUCKET: &str = "berth-releases";

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A small disk as `berth build` lays it out (slot A's kernel files on the ESP, ROOT-A a pattern
/// from `seed`) with its manifest.
fn small_disk(dir: &Path, name: &str, version: &str, seed: u8) -> PathBuf {
    let disk = dir.join(format!("{name}.img"));
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", b"bootmgr".to_vec()).unwrap();
    esp.add_file("berth/a/vmlinuz", pattern(300_000, seed ^ 0x55, 4096)).unwrap();
    esp.add_file("berth/a/initrd.img", pattern(100_000, seed ^ 0xaa, 4096)).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0 quiet\n".to_vec()).unwrap();
    let (f, plan) = small_berth_disk(&disk, b"publish s3 test", &esp);
    let r = plan.root(Slot::A);
    let root = pattern(r.size as usize, seed, 4096);
    f.write_all_at(&root, r.offset).unwrap();
    let manifest = serde_json::json!({
        "name": name, "version": version, "cmdline": "console=ttyS0 quiet",
        "partitions": [{"number": 2, "label": "ROOT-A", "offset": r.offset, "size": r.size,
                        "sha256": hex(&Sha256::digest(&root))}],
    });
    std::fs::write(dir.join(format!("{name}.manifest.json")), serde_json::to_vec(&manifest).unwrap()).unwrap();
    disk
}

fn options(repo: &Path, image: &Path, key: &Path, now: Timestamp) -> PublishOptions {
    PublishOptions {
        repo: repo.to_path_buf(),
        image: Some(image.to_path_buf()),
        keys: vec![key.to_path_buf()],
        now: Some(now),
        // A pattern, not a root with update.toml (the image checks are publish_keys.rs's).
        force: true,
        ..PublishOptions::default()
    }
}

const ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "AKIDMOTO"), ("AWS_SECRET_ACCESS_KEY", "moto"), ("AWS_DEFAULT_REGION", "us-east-1")];

fn env(name: &str) -> Option<String> {
    ENV.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

fn target(moto: &support::Emulator, prefix: &str) -> S3Target {
    S3Target {
        repo: S3Repo::parse(&format!("s3://{BUCKET}/{prefix}")).unwrap(),
        endpoint: Some(moto.url.clone()),
        region: None,
        profile: None,
        // Agents read anonymously: moto (default mode) honours the canned ACL.
        acl: Some("public-read".into()),
    }
}

fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKIDMOTO".into(),
        secret_access_key: "moto".into(),
        session_token: None,
        source: "test".into(),
    }
}

/// A signed request to moto (CreateBucket, ListObjectsV2): status and body.
fn signed(method: &str, url: &str) -> (u16, String) {
    let c = creds();
    let signer = Signer { credentials: &c, region: "us-east-1", service: "s3" };
    let added = signer.sign(method, url, &[], Payload::Bytes(b""), SystemTime::now()).unwrap();
    let http = berth_cloud::api::client();
    let mut call = http.call(method, url);
    for (n, v) in &added {
        call = call.header(n, v);
    }
    let reply = call.send().unwrap();
    (reply.status, reply.text())
}

fn moto_with_bucket(env: &[&str]) -> support::Emulator {
    let moto = support::moto(env);
    let (status, text) = signed("PUT", &format!("{}/{BUCKET}", moto.url));
    assert_eq!(status, 200, "CreateBucket: {text}");
    moto
}

/// Every key under `prefix/` (ListObjectsV2).
fn listed(moto: &support::Emulator, prefix: &str) -> Vec<String> {
    let (status, text) = signed("GET", &format!("{}/{BUCKET}?list-type=2&prefix={prefix}%2F", moto.url));
    assert_eq!(status, 200, "{text}");
    let mut keys: Vec<String> =
        text.split("<Key>").skip(1).map(|s| s.split("</Key>").next().unwrap().to_string()).collect();
    keys.sort();
    keys
}

/// An anonymous GET, as an agent reads a public bucket: the body, or None for a 404.
fn fetch(url: &str) -> Option<Vec<u8>> {
    let r = berth_cloud::api::client().call("GET", url).limit(64 << 20).send().unwrap();
    match r.status {
        200 => Some(r.body),
        404 => None,
        s => panic!("GET {url}: {s} {}", r.text()),
    }
}

/// Every file under `dir`, relative, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn trusted(public: &str) -> TrustedKeys {
    TrustedKeys::new(&[public.to_string()], 1).unwrap()
}

/// The uploaded pair as the agent takes it.
fn accepted(base: &str, public: &str) -> Index {
    let index = fetch(&format!("{base}/channels/stable.json")).expect("the index");
    let sig = fetch(&format!("{base}/channels/stable.json.sig")).expect("its signatures");
    accept(&index, &sig, &trusted(public), "stable", Timestamp::now(), None)
        .unwrap_or_else(|e| panic!("rejected: {e}"))
        .0
}

/// What the poller saw.
#[derive(Default, Debug)]
struct Seen {
    polls: u64,
    sequences: Vec<u64>,
    /// An index read whose `.sig` (read right after) did not verify it, with the index already
    /// replaced when read again: the reader's one documented window (index before step 3, `.sig`
    /// after step 4), which the agent retries at its next check.
    windows: u64,
    failures: Vec<String>,
}

/// Reads as an agent does until `stop`: the index, its `.sig`, HEAD of every artifact named.
fn poll(base: String, public: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let http = berth_cloud::api::client();
    while !stop.load(Ordering::Relaxed) {
        let index = fetch(&format!("{base}/channels/stable.json"));
        let sig = fetch(&format!("{base}/channels/stable.json.sig"));
        let mut s = seen.lock().unwrap();
        s.polls += 1;
        if let Some(index) = index {
            match sig.map(|sig| accept(&index, &sig, &trusted(&public), "stable", Timestamp::now(), None)) {
                Some(Ok((i, _))) => {
                    if s.sequences.last() != Some(&i.sequence) {
                        s.sequences.push(i.sequence);
                    }
                    for r in &i.releases {
                        for a in [&r.root.file, &r.vmlinuz, &r.initrd].into_iter().chain(r.root.frames.as_ref()) {
                            let h = http.call("HEAD", &format!("{base}/{}", a.path)).send().unwrap();
                            let len = h.header("content-length").and_then(|l| l.parse::<u64>().ok());
                            if h.status != 200 || len != Some(a.size) {
                                s.failures
                                    .push(format!("seq {}: {} answered {} ({len:?})", i.sequence, a.path, h.status));
                            }
                        }
                    }
                }
                other => {
                    let again = fetch(&format!("{base}/channels/stable.json"));
                    if again.as_ref() != Some(&index) {
                        s.windows += 1;
                    } else {
                        s.failures.push(format!("the index and its .sig do not verify: {other:?}"));
                    }
                }
            }
        }
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_bucket_holds_what_a_local_publish_writes_and_a_reader_never_sees_half_a_channel() {
    let moto = moto_with_bucket(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (k, public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let two = small_disk(&dir.path().join("in2"), "host", "1.1.0", 22);
    let base = format!("{}/{BUCKET}/fleet", moto.url);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let poller = {
        let (base, public, stop, seen) = (base.clone(), public.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || poll(base, public, stop, seen))
    };

    // The first release through the CLI, as a user runs it (credentials from the environment).
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(BERTH);
    cmd.args(["publish", "--repo", &format!("s3://{BUCKET}/fleet"), "--endpoint", &moto.url, "--acl", "public-read"])
        .args(["--force", "--image"])
        .arg(&one)
        .arg("--key")
        .arg(&k)
        .env("HOME", &home)
        .env_remove("BERTH_PROGRESS")
        .env_remove("AWS_PROFILE");
    for (n, v) in ENV {
        cmd.env(n, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "berth publish s3: {stderr}");
    assert!(
        stderr.contains("published 1.0.0 to channel stable") && stderr.contains("environment (AWS_ACCESS_KEY_ID)"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(200));

    // The second through the library, at a fixed time, beside a local publish of the same disks.
    let local = dir.path().join("local");
    let first_local = {
        let mut o = options(&local, &one, &k, NOW);
        // The CLI's publish ran at the real time: the local twin of the first is made at that
        // index's own issued time, so that both indexes are the same bytes.
        let uploaded = Index::parse(&fetch(&format!("{base}/channels/stable.json")).unwrap()).unwrap();
        o.now = Some(uploaded.issued);
        publish(&o).unwrap()
    };
    assert_eq!(first_local.sequence, 1);
    let now = Timestamp::now();
    let r =
        publish_s3(&options(Path::new("/nonexistent"), &two, &k, now), &target(&moto, "fleet"), &env, &Silent).unwrap();
    publish(&options(&local, &two, &k, now)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();

    // Releases first, then the .sig (old and new), the index, the .sig (new alone).
    let order: Vec<&str> = r.uploaded.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        order,
        [
            "fleet/releases/1.1.0/root.img.zst.frames",
            "fleet/releases/1.1.0/root.img.zst",
            "fleet/releases/1.1.0/vmlinuz",
            "fleet/releases/1.1.0/initrd.img",
            "fleet/channels/stable.json.sig",
            "fleet/channels/stable.json",
            "fleet/channels/stable.json.sig",
        ],
        "{r:?}"
    );
    // Byte for byte the local repository, and nothing else in the bucket.
    let want = files(&local);
    let keys: Vec<String> = want.iter().map(|(rel, _)| format!("fleet/{rel}")).collect();
    assert_eq!(listed(&moto, "fleet"), keys);
    for (rel, bytes) in &want {
        let got = fetch(&format!("{base}/{rel}")).unwrap_or_else(|| panic!("{rel} missing"));
        assert!(&got == bytes, "{rel}: the bucket's {} bytes differ from the local {} bytes", got.len(), bytes.len());
    }
    let index = accepted(&base, &public);
    assert_eq!((index.sequence, index.releases.len()), (2, 2));

    let seen = seen.lock().unwrap();
    eprintln!("poller: {seen:?}");
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert_eq!(seen.sequences, [1, 2], "the poller saw both publishes: {seen:?}");
    assert!(seen.polls >= 10, "{seen:?}");
}

#[test]
fn racing_publishes_one_wins_and_the_other_is_refused() {
    let moto = moto_with_bucket(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (k, public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let t = target(&moto, "race");
    let base = format!("{}/{BUCKET}/race", moto.url);
    let none = Path::new("/nonexistent");
    publish_s3(&options(none, &one, &k, NOW), &t, &env, &Silent).unwrap();

    // Deterministic: another publish runs to its end between this one's .sig and its index.
    let later = Timestamp(NOW.0 + 60);
    let other: Mutex<Option<S3PublishReport>> = Mutex::new(None);
    let refresh = |now| PublishOptions { image: None, now: Some(now), ..options(none, &one, &k, now) };
    let e = publish_s3_with(&refresh(later), &t, &env, &Silent, &|| {
        *other.lock().unwrap() = Some(publish_s3(&refresh(Timestamp(NOW.0 + 120)), &t, &env, &Silent).unwrap());
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("another publish changed channel stable") && e.contains("run again"), "{e}");
    assert!(other.lock().unwrap().is_some());
    let index = accepted(&base, &public);
    assert_eq!((index.sequence, index.issued), (2, Timestamp(NOW.0 + 120)), "the channel is the winner's");

    // Free-running: two threads at once, five rounds; each round exactly one wins (or the second
    // starts after the first ended and both win), and the channel always verifies.
    let mut refused = 0;
    for round in 0..5i64 {
        let before = accepted(&base, &public).sequence;
        let results: Vec<Result<S3PublishReport, String>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2i64)
                .map(|i| {
                    let o = refresh(Timestamp(NOW.0 + 1000 + round * 10 + i));
                    let t = &t;
                    s.spawn(move || publish_s3(&o, t, &env, &Silent).map_err(|e| e.to_string()))
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count() as u64;
        for r in &results {
            if let Err(e) = r {
                assert!(e.contains("another publish") && e.contains("run again"), "{e}");
                refused += 1;
            }
        }
        assert!(won >= 1, "{results:?}");
        assert_eq!(accepted(&base, &public).sequence, before + won, "{results:?}");
    }
    eprintln!("refused in the free-running rounds: {refused} of 5");
}

#[test]
fn publishing_the_same_disk_again_puts_only_the_index_pair() {
    let moto = moto_with_bucket(&["MOTO_ENABLE_RECORDING=True"]);
    let http = berth_cloud::api::client();
    let recorder = |what: &str| http.post_json(&format!("{}/moto-api/recorder/{what}", moto.url), &[], "").unwrap().0;
    assert_eq!(recorder("stop-recording"), 200);
    let dir = tempfile::tempdir().unwrap();
    let (k, public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let t = target(&moto, "again");
    let none = Path::new("/nonexistent");
    let first = publish_s3(&options(none, &one, &k, NOW), &t, &env, &Silent).unwrap();
    assert_eq!(first.uploaded.len(), 6, "{first:?}");

    assert_eq!(recorder("reset-recording"), 200);
    assert_eq!(recorder("start-recording"), 200);
    let again = publish_s3(&options(none, &one, &k, Timestamp(NOW.0 + 60)), &t, &env, &Silent).unwrap();
    assert_eq!(recorder("stop-recording"), 200);
    assert!(again.publish.unchanged, "{again:?}");
    let text = String::from_utf8(
        http.get_bytes(&format!("{}/moto-api/recorder/download-recording", moto.url), 1 << 30).unwrap(),
    )
    .unwrap();
    let mut puts = Vec::new();
    let mut heads = 0;
    for entry in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let entry = entry.unwrap();
        let method = entry["method"].as_str().unwrap_or_default().to_string();
        let path = entry["url"].as_str().unwrap_or_default().to_string();
        match method.as_str() {
            "PUT" => puts.push(path.split_once("/again/").map_or(path.clone(), |(_, p)| p.to_string())),
            "HEAD" => heads += 1,
            _ => {}
        }
    }
    assert_eq!(puts, ["channels/stable.json.sig", "channels/stable.json", "channels/stable.json.sig"], "{text}");
    assert_eq!(heads, 4, "each of the release's files checked by HEAD: {text}");
    let index = accepted(&format!("{}/{BUCKET}/again", moto.url), &public);
    assert_eq!((index.sequence, index.releases.len()), (2, 1));
}

#[test]
fn help_names_every_credential_source_and_the_s3_flags_need_an_s3_repo() {
    let out = Command::new(BERTH).args(["publish", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "s3://BUCKET/PREFIX",
        "--endpoint",
        "--region",
        "--profile",
        "--acl",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "If-Match",
        "s3:ListBucket",
    ] {
        assert!(help.contains(word), "`berth publish --help` does not name {word}:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BERTH)
        .args(["publish", "--repo"])
        .arg(dir.path())
        .args(["--endpoint", "http://127.0.0.1:1", "--key", "k.key"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--endpoint applies to an s3://BUCKET/PREFIX repository"), "{err}");
    // No region anywhere: one line saying where to give it, naming the credentials' source.
    let out = Command::new(BERTH)
        .args(["publish", "--repo", "s3://some-bucket/x", "--endpoint", "http://127.0.0.1:1", "--key", "k.key"])
        .env("HOME", dir.path())
        .env("AWS_ACCESS_KEY_ID", "AKID")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no region: give --region"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// A proxy to moto on 127.0.0.1 that forwards every request and passes the answer on, except
/// that the first PUT of each distinct body to a key `lose` picks is carried out by moto and then
/// answered 500, as if the answer were lost: the client's retry meets its own write. Returns the
/// server and the keys whose answers it lost.
fn lossy_proxy(moto: &str, lose: fn(&str) -> bool) -> (berth_testkit::Server, Arc<Mutex<Vec<String>>>) {
    use berth_testkit::{Response as Answer, Server};
    let lost = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::<(String, String)>::new()));
    let (moto, lost2) = (moto.to_string(), lost.clone());
    let server = Server::start(move |r| {
        let http = berth_cloud::api::client();
        let mut call = http.call(&r.method, &format!("{moto}{}", r.target)).limit(64 << 20);
        for (n, v) in &r.headers {
            if !["host", "content-length", "connection", "transfer-encoding"].contains(&n.to_ascii_lowercase().as_str())
            {
                call = call.header(n, v);
            }
        }
        if r.method == "PUT" {
            call = call.body(r.body.clone());
        }
        let reply = call.send().unwrap();
        let sha = r.header("x-amz-meta-sha256").unwrap_or_default().to_string();
        if r.method == "PUT" && lose(r.path()) && seen.lock().unwrap().insert((r.path().into(), sha)) {
            assert!(reply.is_success(), "moto refused {}: {}", r.path(), reply.text());
            lost2.lock().unwrap().push(r.path().to_string());
            return Answer::status(500).body("<Error><Code>InternalError</Code></Error>").into();
        }
        let mut a = Answer::status(reply.status).body(reply.body.clone());
        for h in ["etag", "x-amz-meta-sha256", "cache-control", "content-type"] {
            if let Some(v) = reply.header(h) {
                a = a.header(h, v);
            }
        }
        if r.method == "HEAD"
            && let Some(len) = reply.header("content-length").and_then(|l| l.parse().ok())
        {
            a = a.announce(len);
        }
        a.into()
    })
    .unwrap();
    (server, lost)
}

#[test]
fn a_put_whose_answer_was_lost_counts_as_written_when_the_key_holds_its_bytes() {
    let moto = moto_with_bucket(&[]);
    let (proxy, lost) = lossy_proxy(&moto.url, |path| path.contains("/channels/"));
    let dir = tempfile::tempdir().unwrap();
    let (k, public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let two = small_disk(&dir.path().join("in2"), "host", "1.1.0", 22);
    let mut t = target(&moto, "lossy");
    t.endpoint = Some(proxy.url());
    let base = format!("{}/{BUCKET}/lossy", moto.url);
    let none = Path::new("/nonexistent");

    // A new channel: the .sig and the index are written If-None-Match: *, each answer lost.
    let first = publish_s3(&options(none, &one, &k, NOW), &t, &env, &Silent).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(accepted(&base, &public).sequence, 1);
    assert_eq!(
        *lost.lock().unwrap(),
        ["/berth-releases/lossy/channels/stable.json.sig", "/berth-releases/lossy/channels/stable.json"]
    );
    assert_eq!(first.uploaded.len(), 6, "{first:?}");

    // An existing channel: steps 2, 3 and 4 (If-Match) each lose their answer once.
    lost.lock().unwrap().clear();
    let second = publish_s3(&options(none, &two, &k, Timestamp(NOW.0 + 60)), &t, &env, &Silent)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        *lost.lock().unwrap(),
        [
            "/berth-releases/lossy/channels/stable.json.sig",
            "/berth-releases/lossy/channels/stable.json",
            "/berth-releases/lossy/channels/stable.json.sig"
        ]
    );
    let order: Vec<&str> = second.uploaded.iter().rev().take(3).map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        order,
        ["lossy/channels/stable.json.sig", "lossy/channels/stable.json", "lossy/channels/stable.json.sig"]
    );
    let index = accepted(&base, &public);
    assert_eq!((index.sequence, index.releases.len()), (2, 2));
    // The .sig holds the new signatures alone (step 4 was taken as done, not skipped).
    let sig = fetch(&format!("{base}/channels/stable.json.sig")).unwrap();
    let sigs: berth_release::Signatures = serde_json::from_slice(&sig).unwrap();
    assert_eq!(sigs.signatures.len(), 1, "{}", String::from_utf8_lossy(&sig));
}

/// Step 3 alone: only the index's answer is lost. Before, the 412 of the retry was taken for
/// another publish, the old `.sig` was put back over the new index, and no agent took the channel.
#[test]
fn a_lost_answer_to_the_index_put_alone_leaves_a_channel_that_verifies() {
    let moto = moto_with_bucket(&[]);
    let (proxy, lost) = lossy_proxy(&moto.url, |path| path.ends_with("/channels/stable.json"));
    let dir = tempfile::tempdir().unwrap();
    let (k, public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let mut t = target(&moto, "index");
    let base = format!("{}/{BUCKET}/index", moto.url);
    let none = Path::new("/nonexistent");
    publish_s3(&options(none, &one, &k, NOW), &t, &env, &Silent).unwrap();

    t.endpoint = Some(proxy.url());
    let now = Timestamp(NOW.0 + 60);
    let refresh = PublishOptions { image: None, now: Some(now), ..options(none, &one, &k, now) };
    publish_s3(&refresh, &t, &env, &Silent).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(*lost.lock().unwrap(), ["/berth-releases/index/channels/stable.json"]);
    let index = accepted(&base, &public);
    assert_eq!((index.sequence, index.issued), (2, now));
}

/// The restore path: another writer replaces the index alone (a plain PUT, no `.sig`) between
/// this publish's `.sig` and its index. The index PUT meets 412, the key holds other bytes, so
/// the `.sig` this publish wrote is put back to what it was, and the error says so.
#[test]
fn an_index_replaced_alone_mid_publish_gets_its_old_sig_back() {
    let moto = moto_with_bucket(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (k, _public) = key(dir.path(), "release");
    let one = small_disk(&dir.path().join("in1"), "host", "1.0.0", 11);
    let t = target(&moto, "restore");
    let base = format!("{}/{BUCKET}/restore", moto.url);
    let none = Path::new("/nonexistent");
    publish_s3(&options(none, &one, &k, NOW), &t, &env, &Silent).unwrap();
    let (index_url, sig_url) = (format!("{base}/channels/stable.json"), format!("{base}/channels/stable.json.sig"));
    let old_sig = fetch(&sig_url).unwrap();

    let foreign = b"{\"not\":\"an index this publish wrote\"}".to_vec();
    let refresh = PublishOptions { image: None, now: Some(Timestamp(NOW.0 + 60)), ..options(none, &one, &k, NOW) };
    let e = publish_s3_with(&refresh, &t, &env, &Silent, &|| {
        // Between the .sig with both signatures and the index: the index alone replaced.
        assert_ne!(fetch(&sig_url).unwrap(), old_sig, "the .sig with both signatures was not written first");
        let c = creds();
        let signer = Signer { credentials: &c, region: "us-east-1", service: "s3" };
        let added = signer.sign("PUT", &index_url, &[], Payload::Bytes(&foreign), SystemTime::now()).unwrap();
        let http = berth_cloud::api::client();
        let mut call = http.call("PUT", &index_url).body(foreign.clone());
        for (n, v) in &added {
            call = call.header(n, v);
        }
        let reply = call.send().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("another publish changed channel stable") && e.contains("its old .sig was put back"), "{e}");
    assert_eq!(fetch(&sig_url).unwrap(), old_sig, "the .sig is not the one from before this publish");
    // (The other writer's object is private: read it signed.)
    let (status, text) = signed("GET", &index_url);
    assert_eq!((status, text.into_bytes()), (200, foreign), "the other writer's index was overwritten");
}
