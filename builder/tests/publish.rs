//! `berth keygen` and `berth publish`, checked with the agent's own code (`berth_release`):
//!
//! - keygen: file modes and contents, the key pair matches, no key is ever overwritten
//!   without --force;
//! - publish on small disks written with the builder's own disk, GPT and ESP writers (fast):
//!   the index parses and is accepted with the public key, the sequence grows, the root image
//!   is frames of at most 4 MiB that declare their sizes and expands to exactly ROOT-A, every artifact's size and SHA-256 match, the same version with
//!   other bytes is refused, the same bytes only re-sign, pull-back, two channels sharing a
//!   release, errors (bad key, missing image, broken index, unknown version) leave the
//!   repository byte for byte as it was, and the same disk at the same time gives the same
//!   repository;
//! - publish of `images/minimal.toml` as `berth build` makes it (built once per test binary).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_builder::esp::EspContents;
use berth_builder::publish::{PublishOptions, PublishReport, generate_key, keygen, publish};
use berth_release::signature::{parse_secret_key_file, public_key_hex};
use berth_release::{ArtifactCheck, Index, Timestamp, TrustedKeys, accept};
use berth_slot::Slot;
use sha2::{Digest, Sha256};

mod common;
use common::{key, pattern, small_berth_disk};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// 2026-12-06T19:00:00Z
const NOW: Timestamp = Timestamp(1_796_583_600);

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// The filler's runs (common::pattern): every third 4 KiB zeros, compressible in parts.
const ZERO_EVERY: usize = 4096;

/// A small disk as `berth build` lays it out (ESP with slot A's kernel files, ROOT-A filled
/// with `seed`'s pattern) and its manifest; returns the disk's path and ROOT-A's bytes.
fn small_disk(dir: &Path, name: &str, version: &str, seed: u8) -> (PathBuf, Vec<u8>) {
    let disk = dir.join(format!("{name}.img"));
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", b"bootmgr".to_vec()).unwrap();
    esp.add_file("berth/a/vmlinuz", pattern(300_000, seed ^ 0x55, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/initrd.img", pattern(100_000, seed ^ 0xaa, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0 quiet\n".to_vec()).unwrap();
    let (f, plan) = small_berth_disk(&disk, b"publish test", &esp);
    let r = plan.root(Slot::A);
    let root = pattern(r.size as usize, seed, ZERO_EVERY);
    f.write_all_at(&root, r.offset).unwrap();
    let manifest = serde_json::json!({
        "name": name,
        "version": version,
        "cmdline": "console=ttyS0 quiet",
        "partitions": [{"number": 2, "label": "ROOT-A", "offset": r.offset, "size": r.size, "sha256": sha256(&root)}],
    });
    std::fs::write(dir.join(format!("{name}.manifest.json")), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    (disk, root)
}

/// Every file and directory under `dir` with its bytes: to show nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.clone(), None);
                stack.push(p);
            } else {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn options(repo: &Path, image: Option<&Path>, keys: &[&Path]) -> PublishOptions {
    PublishOptions {
        repo: repo.to_path_buf(),
        image: image.map(Path::to_path_buf),
        keys: keys.iter().map(|k| k.to_path_buf()).collect(),
        now: Some(NOW),
        // These disks' ROOT-A is a pattern, not a root with update.toml (M10's checks are
        // tested in publish_keys.rs).
        force: true,
        ..PublishOptions::default()
    }
}

/// The channel's index as an agent trusting `public` accepts it at `now`.
fn accepted(repo: &Path, channel: &str, public: &[&str], now: Timestamp, last: Option<u64>) -> Index {
    let index = std::fs::read(repo.join(format!("channels/{channel}.json"))).unwrap();
    let sig = std::fs::read(repo.join(format!("channels/{channel}.json.sig"))).unwrap();
    let keys: Vec<String> = public.iter().map(|s| s.to_string()).collect();
    let trusted = TrustedKeys::new(&keys, keys.len() as u32).unwrap();
    let floor = last.map(|sequence| berth_release::Floor { sequence, index_sha256: None });
    accept(&index, &sig, &trusted, channel, now, floor).unwrap_or_else(|e| panic!("rejected: {e}")).0
}

/// Every artifact of the release: size and SHA-256 as announced, and the root image expands
/// to exactly `root` (ROOT-A's bytes) with the announced size and SHA-256.
fn check_release(repo: &Path, index: &Index, version: &str, root: &[u8]) {
    let r = index.release(version).unwrap_or_else(|| panic!("{version} not in the index"));
    for a in [&r.root.file, &r.vmlinuz, &r.initrd] {
        let bytes = std::fs::read(repo.join(&a.path)).unwrap();
        let mut c = ArtifactCheck::new(&a.path, a.size, a.sha256);
        c.feed(&bytes).unwrap();
        c.finish().unwrap_or_else(|e| panic!("{e}"));
    }
    let compressed = std::fs::read(repo.join(&r.root.file.path)).unwrap();
    // The agent's contract: frames that each declare their size, at most ZSTD_FRAME_BYTES.
    let (mut rest, mut sizes) = (&compressed[..], Vec::new());
    while !rest.is_empty() {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
        sizes.push(zstd::zstd_safe::get_frame_content_size(&rest[..len]).unwrap().expect("a declared size"));
        rest = &rest[len..];
    }
    assert!(sizes.iter().all(|&n| n <= berth_release::index::ZSTD_FRAME_BYTES), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<u64>(), r.root.image_size);
    assert_eq!(sizes.len() as u64, r.root.image_size.div_ceil(berth_release::index::ZSTD_FRAME_BYTES));
    let image = zstd::stream::decode_all(&compressed[..]).unwrap();
    assert_eq!(image.len() as u64, r.root.image_size);
    assert!(image == root, "root.img.zst does not expand to ROOT-A");
    assert_eq!(sha256(&image), r.root.image_sha256.to_string());
    assert_eq!(r.root.file.path, format!("releases/{version}/root.img.zst"));
    assert_eq!(r.cmdline, "console=ttyS0 quiet");
}

#[test]
fn keygen_writes_a_pair_and_never_overwrites() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("release");
    let public = keygen(&base).unwrap();
    let (secret_file, public_file) = (base.with_extension("key"), base.with_extension("pub"));
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.len(), 65, "{secret:?}");
    assert!(secret.ends_with('\n') && secret[..64].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(std::fs::read_to_string(&public_file).unwrap(), format!("{public}\n"));
    assert_eq!(public_key_hex(&parse_secret_key_file(&secret).unwrap()), public);
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&public_file).unwrap().permissions().mode() & 0o777, 0o644);
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);

    // Refused, files unchanged; either file existing is enough to refuse.
    let e = keygen(&base).unwrap_err().to_string();
    assert!(e.contains("release.key exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    let other = d.path().join("other");
    std::fs::write(other.with_extension("pub"), "x\n").unwrap();
    assert!(keygen(&other).unwrap_err().to_string().contains("other.pub exists"));
    assert!(!other.with_extension("key").exists());

    // --force replaces both with a new pair.
    let k = generate_key(&base, true).unwrap();
    assert_ne!(k.public, public);
    assert_eq!(std::fs::read_to_string(&public_file).unwrap(), format!("{}\n", k.public));
    assert_eq!(std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777, 0o600);
    let again = parse_secret_key_file(&std::fs::read_to_string(&secret_file).unwrap()).unwrap();
    assert_eq!(public_key_hex(&again), k.public);

    assert!(keygen(&d.path().join("no/such/dir/k")).unwrap_err().to_string().contains("no such directory"));

    // The command: the public key on stdout, where the files went on stderr.
    let out = Command::new(BERTH).arg("keygen").arg("--out").arg(d.path().join("cli")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, std::fs::read_to_string(d.path().join("cli.pub")).unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cli.key") && err.contains("cli.pub"), "{err}");
    let out = Command::new(BERTH).arg("keygen").arg("--out").arg(d.path().join("cli")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to replace a key"));
    // Default base in the working directory.
    let out = Command::new(BERTH).arg("keygen").current_dir(d.path()).output().unwrap();
    assert!(out.status.success());
    assert!(d.path().join("berth-release.key").is_file() && d.path().join("berth-release.pub").is_file());
}

#[test]
fn publish_versions_resign_pull_back_and_refuse() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    let (k1, p1) = key(d.path(), "one");
    let (k2, p2) = key(d.path(), "two");
    let (disk1, root1) = small_disk(&d.path().join("b1"), "t", "1.0.0", 1);
    let (disk2, root2) = small_disk(&d.path().join("b2"), "t", "1.1.0", 2);

    // A new channel: sequence 1, signed by both keys, accepted with a threshold of 2.
    let mut o = options(&repo, Some(&disk1), &[&k1, &k2]);
    o.rollout = Some(Duration::from_secs(7200));
    let r = publish(&o).unwrap();
    assert_eq!((r.version.as_deref(), r.sequence, r.unchanged), (Some("1.0.0"), 1, false));
    assert_eq!(r.image_size, 16 << 20);
    assert!(r.compressed_size > 0 && r.compressed_size < r.image_size / 2, "{}", r.compressed_size);
    let index = accepted(&repo, "stable", &[&p1, &p2], NOW, None);
    assert_eq!(index.sequence, 1);
    assert_eq!(index.issued, NOW);
    assert_eq!(index.expires, NOW.plus(Duration::from_secs(30 * 86_400)));
    let rel = index.release("1.0.0").unwrap();
    assert_eq!((rel.rollout.start, rel.rollout.duration_seconds, rel.pulled), (NOW, 7200, false));
    check_release(&repo, &index, "1.0.0", &root1);
    // The index bytes are exactly what Index::to_bytes makes of them.
    assert_eq!(std::fs::read(&r.index).unwrap(), index.to_bytes());
    let sigs: serde_json::Value = serde_json::from_slice(&std::fs::read(&r.signature).unwrap()).unwrap();
    assert_eq!(sigs["signatures"].as_array().unwrap().len(), 2);
    // Files readable by a web server; no temporary files left.
    for f in [&r.index, &r.signature, &r.artifacts[0].path] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o644, "{}", f.display());
    }
    assert_eq!(std::fs::metadata(repo.join("releases/1.0.0")).unwrap().permissions().mode() & 0o777, 0o755);
    let names: Vec<String> =
        snapshot(&repo).keys().map(|p| p.strip_prefix(&repo).unwrap().display().to_string()).collect();
    assert_eq!(
        names,
        [
            "channels",
            "channels/stable.json",
            "channels/stable.json.sig",
            "releases",
            "releases/1.0.0",
            "releases/1.0.0/initrd.img",
            "releases/1.0.0/root.img.zst",
            "releases/1.0.0/root.img.zst.frames",
            "releases/1.0.0/vmlinuz"
        ]
    );

    // A second version: sequence 2, both listed oldest first; later clocks are fine.
    let later = Timestamp(NOW.0 + 3600);
    let r = publish(&PublishOptions { now: Some(later), ..options(&repo, Some(&disk2), &[&k1]) }).unwrap();
    assert_eq!(r.sequence, 2);
    let index = accepted(&repo, "stable", &[&p1], later, Some(1));
    assert_eq!(index.releases.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(), ["1.0.0", "1.1.0"]);
    assert_eq!(index.release("1.0.0").unwrap().rollout.start, NOW, "an older release keeps its rollout");
    assert_eq!(index.release("1.1.0").unwrap().rollout.duration_seconds, 0);
    check_release(&repo, &index, "1.0.0", &root1);
    check_release(&repo, &index, "1.1.0", &root2);
    // Not signed by key two this time: an agent wanting both refuses.
    let sig = std::fs::read(repo.join("channels/stable.json.sig")).unwrap();
    let both = TrustedKeys::new(&[p1.clone(), p2.clone()], 2).unwrap();
    assert!(accept(&std::fs::read(&r.index).unwrap(), &sig, &both, "stable", later, None).is_err());

    // The same image again: only re-signed, sequence 3, the release untouched.
    let before = std::fs::read(repo.join("releases/1.0.0/root.img.zst")).unwrap();
    let r = publish(&options(&repo, Some(&disk1), &[&k1])).unwrap();
    assert!(r.unchanged);
    assert_eq!(r.sequence, 3);
    let index3 = accepted(&repo, "stable", &[&p1], NOW, Some(2));
    assert_eq!(index3.releases, index.releases);
    assert_eq!(std::fs::read(repo.join("releases/1.0.0/root.img.zst")).unwrap(), before);

    // Refusals leave every byte of the repository as it was.
    let snap = snapshot(&repo);
    let (other, _) = small_disk(&d.path().join("b3"), "t", "1.0.0", 3);
    let e = publish(&options(&repo, Some(&other), &[&k1])).unwrap_err().to_string();
    assert!(e.contains("version 1.0.0 is already in channel stable") && e.contains("root image"), "{e}");
    assert!(snapshot(&repo) == snap, "a refused publish changed the repository");

    let bad_key = d.path().join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let (disk4, _) = small_disk(&d.path().join("b4"), "t", "2.0.0", 4);
    let e = format!("{:#}", publish(&options(&repo, Some(&disk4), &[&k1, &bad_key])).unwrap_err());
    assert!(e.contains("bad.key") && e.contains("64 hex digits"), "{e}");
    let public_file = k1.with_extension("pub");
    let e = format!("{:#}", publish(&options(&repo, Some(&disk4), &[&public_file])).unwrap_err());
    assert!(e.contains("one.pub: a public key; sign with the secret key"), "{e}");
    let renamed = d.path().join("one.txt");
    std::fs::copy(&public_file, &renamed).unwrap();
    let e = format!("{:#}", publish(&options(&repo, Some(&disk4), &[&renamed])).unwrap_err());
    assert!(e.contains("one.txt: a public key"), "{e}");
    let e = format!("{:#}", publish(&options(&repo, Some(&disk4), &[&d.path().join("absent.key")])).unwrap_err());
    assert!(e.contains("absent.key"), "{e}");
    let e = format!("{:#}", publish(&options(&repo, Some(&d.path().join("nope.img")), &[&k1])).unwrap_err());
    assert!(e.contains("nope.img: no such disk image"), "{e}");
    let e = format!("{:#}", publish(&options(&repo, Some(&k1), &[&k1])).unwrap_err());
    assert!(e.contains("not a Berth disk image"), "{e}");
    let e = publish(&PublishOptions { pull_back: vec!["9.9.9".into()], ..options(&repo, None, &[&k1]) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("--pull-back 9.9.9") && e.contains("1.0.0, 1.1.0"), "{e}");
    let e =
        publish(&PublishOptions { channel: "beta".into(), ..options(&repo, None, &[&k1]) }).unwrap_err().to_string();
    assert!(e.contains("nothing to publish") && e.contains("channel beta has no index"), "{e}");
    let e = publish(&PublishOptions { channel: "../x".into(), ..options(&repo, Some(&disk4), &[&k1]) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"../x\""), "{e}");
    // A disk without its manifest.
    let bare = d.path().join("bare.img");
    std::fs::copy(&disk4, &bare).unwrap();
    let e = format!("{:#}", publish(&options(&repo, Some(&bare), &[&k1])).unwrap_err());
    assert!(e.contains("no version") && e.contains("bare.manifest.json"), "{e}");
    // A manifest of another build.
    std::fs::copy(d.path().join("b1/t.manifest.json"), d.path().join("bare.manifest.json")).unwrap();
    let e = format!("{:#}", publish(&options(&repo, Some(&bare), &[&k1])).unwrap_err());
    assert!(e.contains("the manifest is of another build"), "{e}");
    assert!(snapshot(&repo) == snap, "a failed publish changed the repository");

    // Pull back without an image: pulled, sequence 4, nothing else changes.
    let r = publish(&PublishOptions { pull_back: vec!["1.0.0".into()], ..options(&repo, None, &[&k1]) }).unwrap();
    assert_eq!((r.version, r.sequence, r.pulled.clone()), (None, 4, vec!["1.0.0".to_string()]));
    let index = accepted(&repo, "stable", &[&p1], NOW, Some(3));
    assert!(index.release("1.0.0").unwrap().pulled);
    assert!(!index.release("1.1.0").unwrap().pulled);
    let json = String::from_utf8(std::fs::read(repo.join("channels/stable.json")).unwrap()).unwrap();
    assert_eq!(json.matches("\"pulled\": true").count(), 1, "{json}");

    // M4: a refresh without an image or a pull-back: sequence 5, a short expiry, the same
    // releases.
    let before = accepted(&repo, "stable", &[&p1], NOW, Some(4));
    let r =
        publish(&PublishOptions { expires: Duration::from_secs(2 * 86_400), ..options(&repo, None, &[&k1]) }).unwrap();
    assert_eq!((r.version, r.sequence, r.pulled.is_empty()), (None, 5, true));
    let index = accepted(&repo, "stable", &[&p1], NOW, Some(4));
    assert_eq!(index.expires, NOW.plus(Duration::from_secs(2 * 86_400)));
    assert_eq!(index.releases, before.releases);

    // A broken index is named, and left alone.
    std::fs::write(repo.join("channels/stable.json"), b"{\"schema\": 1").unwrap();
    let snap = snapshot(&repo);
    let e = publish(&options(&repo, Some(&disk4), &[&k1])).unwrap_err().to_string();
    assert!(e.contains("channels/stable.json") && e.contains("not valid") && e.contains("refusing"), "{e}");
    assert!(snapshot(&repo) == snap);
}

#[test]
fn channels_share_releases_and_the_same_input_gives_the_same_repository() {
    let d = tempfile::tempdir().unwrap();
    let (k, p) = key(d.path(), "k");
    let (disk, root) = small_disk(&d.path().join("b"), "t", "3.1.4", 7);
    let (a, b) = (d.path().join("a"), d.path().join("b-repo"));
    let ra = publish(&options(&a, Some(&disk), &[&k])).unwrap();
    let rb = publish(&options(&b, Some(&disk), &[&k])).unwrap();
    assert_eq!(ra.compressed_size, rb.compressed_size);
    let (sa, sb) = (snapshot(&a), snapshot(&b));
    assert_eq!(sa.len(), sb.len());
    for ((pa, ba), (pb, bb)) in sa.iter().zip(&sb) {
        assert_eq!(pa.strip_prefix(&a).unwrap(), pb.strip_prefix(&b).unwrap());
        assert!(ba == bb, "{} differs between two publishes of the same disk", pa.display());
    }

    // What a killed publish left behind is removed by the next one.
    std::fs::create_dir(a.join("releases/.publish-killed")).unwrap();
    std::fs::write(a.join("releases/.publish-killed/root.img.zst"), b"partial").unwrap();
    std::fs::write(a.join("channels/.beta.json.killed"), b"partial").unwrap();
    // The same version to a second channel of the same repository: its files are reused.
    let before = snapshot(&a);
    let r = publish(&PublishOptions { channel: "beta".into(), ..options(&a, Some(&disk), &[&k]) }).unwrap();
    assert_eq!(r.sequence, 1);
    let beta = accepted(&a, "beta", &[&p], NOW, None);
    check_release(&a, &beta, "3.1.4", &root);
    let after = snapshot(&a);
    for (path, bytes) in &before {
        let stale = path.to_string_lossy().contains("killed");
        assert!(stale || after.get(path) == Some(bytes), "{} changed", path.display());
        assert!(!stale || !after.contains_key(path), "{} left", path.display());
    }
    // … but other bytes under that version are refused while a channel lists them.
    let (other, _) = small_disk(&d.path().join("o"), "t", "3.1.4", 8);
    let e = publish(&PublishOptions { channel: "edge".into(), ..options(&a, Some(&other), &[&k]) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds other artifacts of version 3.1.4"), "{e}");
    assert!(snapshot(&a) == after);
    assert!(!a.join("channels/edge.json").exists());
}

#[test]
fn publish_command_prints_a_summary_and_teaches() {
    let d = tempfile::tempdir().unwrap();
    let (k, p) = key(d.path(), "k");
    let (disk, _) = small_disk(&d.path().join("b"), "t", "0.9.0", 9);
    let repo = d.path().join("repo");
    let out = Command::new(BERTH)
        .args(["publish", "--repo"])
        .arg(&repo)
        .args(["--channel", "edge", "--rollout", "1h30m", "--expires", "7d", "--force", "--image"])
        .arg(&disk)
        .arg("--key")
        .arg(&k)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    eprintln!("{err}");
    for want in ["published 0.9.0 to channel edge: sequence 1", "in 7d", "root.img.zst", "compressed to", "over 1h30m"]
    {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let index = accepted(&repo, "edge", &[&p], Timestamp::now(), None);
    assert_eq!(index.release("0.9.0").unwrap().rollout.duration_seconds, 5400);
    assert_eq!(index.expires.0 - index.issued.0, 7 * 86_400);

    let out = Command::new(BERTH)
        .args(["publish", "--repo"])
        .arg(&repo)
        .args(["--expires", "soon", "--key"])
        .arg(&k)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a duration"));

    for cmd in ["publish", "keygen"] {
        let out = Command::new(BERTH).args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && help.contains("Examples:"), "{help}");
    }
}

/// `images/minimal.toml` as `berth build` makes it, once per test binary.
fn minimal() -> &'static (PathBuf, serde_json::Value) {
    static IMAGE: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("publish-minimal");
        let _ = std::fs::remove_dir_all(&out);
        let options = berth_builder::build::BuildOptions::for_workspace(&ws, ws.join("images/minimal.toml"), out)
            .expect("a cache directory");
        let t = Instant::now();
        let r =
            berth_builder::build::build(&options).unwrap_or_else(|e| panic!("berth build images/minimal.toml: {e:#}"));
        eprintln!("built {} in {:.1} s", r.disk.display(), t.elapsed().as_secs_f64());
        let manifest = serde_json::from_slice(&std::fs::read(&r.manifest_path).unwrap()).unwrap();
        (r.disk, manifest)
    })
}

#[test]
fn publishes_the_minimal_image() {
    let (disk, manifest) = minimal();
    let d = tempfile::tempdir().unwrap();
    let (k, p) = key(d.path(), "k");
    let repo = d.path().join("repo");
    let r: PublishReport = publish(&options(&repo, Some(disk), &[&k])).unwrap();
    let version = manifest["version"].as_str().unwrap();
    assert_eq!(r.version.as_deref(), Some(version));
    eprintln!(
        "published {version}: root {} -> {} bytes ({:.2}%) in {:.2} s (compressing {:.2} s); vmlinuz {}, initrd {}",
        r.image_size,
        r.compressed_size,
        r.ratio() * 100.0,
        r.elapsed.as_secs_f64(),
        r.compress_time.as_secs_f64(),
        r.artifacts[1].size,
        r.artifacts[2].size
    );
    let index = accepted(&repo, "stable", &[&p], NOW, None);
    let rel = index.release(version).unwrap();
    let part = manifest["partitions"].as_array().unwrap().iter().find(|p| p["label"] == "ROOT-A").unwrap();
    assert_eq!(rel.root.image_size, part["size"].as_u64().unwrap());
    assert_eq!(rel.root.image_sha256.to_string(), part["sha256"].as_str().unwrap());
    assert_eq!(rel.cmdline, manifest["cmdline"].as_str().unwrap());
    let mut root = vec![0u8; rel.root.image_size as usize];
    std::fs::File::open(disk).unwrap().read_exact_at(&mut root, part["offset"].as_u64().unwrap()).unwrap();
    for a in [&rel.root.file, &rel.vmlinuz, &rel.initrd] {
        let bytes = std::fs::read(repo.join(&a.path)).unwrap();
        assert_eq!((bytes.len() as u64, sha256(&bytes)), (a.size, a.sha256.to_string()), "{}", a.path);
    }
    let image = zstd::stream::decode_all(&std::fs::read(repo.join(&rel.root.file.path)).unwrap()[..]).unwrap();
    assert!(image == root, "root.img.zst does not expand to ROOT-A");

    // The released root carries the agent's units, enabled, and an update.toml the agent reads
    // (debugfs, from e2fsprogs, as an independent reader of the ext4 image).
    let root_file = d.path().join("root.img");
    std::fs::write(&root_file, &image).unwrap();
    let debugfs = |cmd: &str| -> String {
        let out = Command::new("debugfs")
            .args(["-R", cmd])
            .arg(&root_file)
            .output()
            .expect("running debugfs (install e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (name, text) in berth_builder::agent_units::UNITS {
        assert_eq!(debugfs(&format!("cat /usr/lib/systemd/system/{name}")), text, "{name}");
    }
    assert!(debugfs("ls /etc/systemd/system/multi-user.target.wants").contains("berth-update.service"));
    assert!(debugfs("ls /etc/systemd/system/boot-complete.target.wants").contains("berth-mark-good.service"));
    let toml = debugfs("cat /usr/lib/berth/update.toml");
    let c = berth_release::UpdateConfig::from_texts(&[(PathBuf::from("/usr/lib/berth/update.toml"), toml.clone())])
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(c.version.as_deref(), Some(version));

    // Without its manifest, the version comes from the image's own update.toml.
    let m = berth_builder::publish::manifest_path(disk);
    let aside = m.with_extension("aside");
    std::fs::rename(&m, &aside).unwrap();
    let bare = publish(&options(&d.path().join("bare"), Some(disk), &[&k]));
    std::fs::rename(&aside, &m).unwrap();
    let bare = bare.unwrap();
    assert_eq!(bare.version.as_deref(), Some(version));
    assert_eq!(
        std::fs::read(d.path().join("bare/releases").join(version).join("root.img.zst")).unwrap(),
        std::fs::read(repo.join(&rel.root.file.path)).unwrap()
    );

    // Again on the same repository: re-signed, sequence 2.
    let r2 = publish(&options(&repo, Some(disk), &[&k])).unwrap();
    assert!(r2.unchanged);
    assert_eq!(accepted(&repo, "stable", &[&p], NOW, Some(1)).sequence, 2);
}

/// L10: a secret key file that group or others can read is refused, naming the file, its mode
/// and the fix, before the repository is touched.
#[test]
fn l10_publish_refuses_a_secret_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let (k, _) = key(d.path(), "loose");
    let (disk, _) = small_disk(&d.path().join("b"), "t", "1.0.0", 1);
    let repo = d.path().join("repo");
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = format!("{:#}", publish(&options(&repo, Some(&disk), &[&k])).unwrap_err());
        let want = format!("{}: secret key with mode {mode:04o}", k.display());
        assert!(e.contains(&want) && e.contains(&format!("chmod 600 {}", k.display())), "{e}");
        assert!(!repo.exists(), "a refused publish created the repository");
    }
    let out = Command::new(BERTH)
        .args(["publish", "--repo"])
        .arg(&repo)
        .arg("--image")
        .arg(&disk)
        .arg("--key")
        .arg(&k)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mode 0604") && err.contains("chmod 600"), "{err}");
    // 0600 (as keygen writes it) and 0400 pass this check.
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Err(e) = publish(&options(&repo, Some(&disk), &[&k])) {
            assert!(!format!("{e:#}").contains("chmod"), "{e:#}");
        }
    }
}
