//! Key sets and the checks `berth publish` makes of the image it releases:
//!
//! - H6: `berth keys sign` writes keys/<N>.json that the agent's own walk
//!   (berth_release::keyset::follow) accepts from the image's root keys; `berth publish` signs
//!   with the key set's signing keys only; a revoked key no longer publishes; a root rotation
//!   needs the old and the new root keys; `berth keygen --root` and `berth keys sign --help`.
//! - M10: an image that trusts no key, or keys that do not lead to the signing keys, names no
//!   channel or another one is refused (unless --force), with the repository left as it was.
//! - M13: an image whose update.toml names no version is refused too.
//!
//! The disks are small (the builder's GPT and ESP writers, an ext4 ROOT-A with just
//! /usr/lib/berth/update.toml, written by berth-ext4).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_builder::esp::EspContents;
use berth_builder::keys::{KeysOptions, sign_keyset};
use berth_builder::publish::{PublishOptions, publish};
use berth_release::keyset::{KeySetError, Trust, follow};
use berth_release::{Floor, Timestamp, TrustedKeys, accept};
use berth_slot::Slot;

mod common;
use common::{key, small_berth_disk};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// 2026-12-06T19:00:00Z
const NOW: Timestamp = Timestamp(1_796_583_600);

/// A small disk whose ROOT-A is ext4 holding `update_toml` (if any) as /usr/lib/berth/update.toml.
fn disk(dir: &Path, version: &str, update_toml: Option<&str>) -> PathBuf {
    let disk = dir.join("t.img");
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", b"bootmgr".to_vec()).unwrap();
    esp.add_file("berth/a/vmlinuz", vec![7u8; 5000]).unwrap();
    esp.add_file("berth/a/initrd.img", vec![8u8; 3000]).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0\n".to_vec()).unwrap();
    let (f, plan) = small_berth_disk(&disk, b"publish keys test", &esp);
    let tree_dir = dir.join("tree");
    std::fs::create_dir_all(tree_dir.join("usr/lib/berth")).unwrap();
    if let Some(t) = update_toml {
        std::fs::write(tree_dir.join("usr/lib/berth/update.toml"), t).unwrap();
    }
    let opts = berth_fstree::LoadOptions { all_root: true, mtime: Some(1_700_000_000) };
    let tree = berth_fstree::Tree::from_dir(&tree_dir, &opts).unwrap();
    let r = plan.root(Slot::A);
    let mut ext4 = berth_ext4::Options::derived(Slot::A.label(), b"seed", 1_700_000_000);
    ext4.size = Some(r.size);
    berth_ext4::write_at(&tree, &f, r.offset, &ext4).unwrap();
    let mut root = vec![0u8; r.size as usize];
    f.read_exact_at(&mut root, r.offset).unwrap();
    let manifest = serde_json::json!({
        "name": "t",
        "version": version,
        "cmdline": "console=ttyS0",
        "partitions": [{"label": "ROOT-A", "offset": r.offset, "size": r.size}],
    });
    std::fs::write(dir.join("t.manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    disk
}

fn update_toml(version: &str, channel: &str, keys: &[&str], threshold: u32) -> String {
    format!(
        "version = {version:?}\nchannel = \"http://h/channels/{channel}.json\"\nkeys = {keys:?}\nthreshold = {threshold}\n"
    )
}

fn options(repo: &Path, image: Option<&Path>, keys: &[&Path]) -> PublishOptions {
    PublishOptions {
        repo: repo.to_path_buf(),
        image: image.map(Path::to_path_buf),
        keys: keys.iter().map(|k| k.to_path_buf()).collect(),
        now: Some(NOW),
        ..PublishOptions::default()
    }
}

fn keys_options(repo: &Path, root_keys: &[&Path]) -> KeysOptions {
    KeysOptions {
        repo: repo.to_path_buf(),
        root_keys: root_keys.iter().map(|k| k.to_path_buf()).collect(),
        expires: Duration::from_secs(365 * 86_400),
        now: Some(NOW),
        ..KeysOptions::default()
    }
}

/// What a host whose update.toml trusts `root` (threshold 1) accepts from the repository: it
/// walks the key sets as the agent does, then checks the index.
fn host_accepts(repo: &Path, root: &str) -> Result<(u64, u64), String> {
    let anchor = TrustedKeys::new(&[root.to_string()], 1).unwrap();
    let walked = follow(Trust::anchor(anchor), |v| {
        let read = |p: String| std::fs::read(repo.join(p)).ok();
        Ok::<_, KeySetError>(
            read(berth_release::repo::keyset_path(v)).zip(read(berth_release::repo::keyset_signature_path(v))),
        )
    })
    .map_err(|e| e.to_string())?;
    let trusted = walked.trust.index_keys(NOW).map_err(|e| e.to_string())?;
    let index = std::fs::read(repo.join("channels/stable.json")).unwrap();
    let sig = std::fs::read(repo.join("channels/stable.json.sig")).unwrap();
    let (i, _) = accept(&index, &sig, &trusted, "stable", NOW, None::<Floor>).map_err(|e| e.to_string())?;
    Ok((walked.trust.version(), i.sequence))
}

#[test]
fn h6_publish_signs_with_the_key_sets_signing_keys_and_a_revoked_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (root, root_pub) = key(d.path(), "root");
    let (s1, s1_pub) = key(d.path(), "s1");
    let (s2, s2_pub) = key(d.path(), "s2");
    let repo = d.path().join("repo");
    let image = disk(&d.path().join("v1"), "1.0.0", Some(&update_toml("1.0.0", "stable", &[&root_pub], 1)));

    // Key set 1: s1 signs channels.
    let r = sign_keyset(&KeysOptions { signing: vec![s1_pub.clone()], ..keys_options(&repo, &[&root]) }).unwrap();
    assert_eq!((r.keyset.version, r.previous), (1, 0));
    assert!(repo.join("keys/1.json").is_file() && repo.join("keys/1.json.sig").is_file());
    // The root key itself no longer signs a channel of this repository.
    let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&root])).unwrap_err());
    assert!(e.contains("key set 1") && e.contains("signing keys"), "{e}");
    publish(&options(&repo, Some(&image), &[&s1])).unwrap();
    assert_eq!(host_accepts(&repo, &root_pub), Ok((1, 1)));

    // Key set 2: s1 replaced by s2 (revoked); the key set is checked before it is written.
    let r = sign_keyset(&KeysOptions { signing: vec![s2_pub.clone()], ..keys_options(&repo, &[&root]) }).unwrap();
    assert_eq!(r.revoked, vec![s1_pub.clone()]);
    // Hosts refuse the index s1 signed: the key set they follow now names s2 only.
    let e = host_accepts(&repo, &root_pub).unwrap_err();
    assert!(e.contains("unknown key"), "{e}");
    // The revoked key cannot publish; s2 can, and the host follows.
    let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&s1])).unwrap_err());
    assert!(e.contains("key set 2"), "{e}");
    let mut o = options(&repo, None, &[&s2]);
    o.pull_back = vec![];
    o.image = Some(image.clone());
    publish(&o).unwrap();
    assert_eq!(host_accepts(&repo, &root_pub), Ok((2, 2)));

    // Revoking by --revoke: the last signing key cannot go without a new one.
    let e = format!(
        "{:#}",
        sign_keyset(&KeysOptions { revoke: vec![s2_pub.clone()], ..keys_options(&repo, &[&root]) }).unwrap_err()
    );
    assert!(e.contains("no signing key left"), "{e}");
    // A key set signed by a key that is not a root key is refused, nothing written.
    let e = format!("{:#}", sign_keyset(&keys_options(&repo, &[&s2])).unwrap_err());
    assert!(e.contains("not signed by the root keys"), "{e}");
    assert!(!repo.join("keys/3.json").exists());
}

#[test]
fn h6_a_root_rotation_needs_the_old_and_the_new_root_keys() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r1_pub) = key(d.path(), "r1");
    let (r2, r2_pub) = key(d.path(), "r2");
    let (s, s_pub) = key(d.path(), "s");
    let repo = d.path().join("repo");
    sign_keyset(&KeysOptions { signing: vec![s_pub.clone()], ..keys_options(&repo, &[&r1]) }).unwrap();
    // New root r2, signed by r1 alone: refused.
    let e = format!(
        "{:#}",
        sign_keyset(&KeysOptions { root: vec![r2_pub.clone()], ..keys_options(&repo, &[&r1]) }).unwrap_err()
    );
    assert!(e.contains("rotates the root keys"), "{e}");
    let r = sign_keyset(&KeysOptions { root: vec![r2_pub.clone()], ..keys_options(&repo, &[&r1, &r2]) }).unwrap();
    assert!(r.rotated_root && r.revoked == vec![r1_pub.clone()], "{r:?}");
    let image = disk(&d.path().join("v1"), "1.0.0", Some(&update_toml("1.0.0", "stable", &[&r1_pub], 1)));
    publish(&options(&repo, Some(&image), &[&s])).unwrap();
    // A host on r1 and a host built later with r2 both reach key set 2.
    assert_eq!(host_accepts(&repo, &r1_pub), Ok((2, 1)));
    assert_eq!(host_accepts(&repo, &r2_pub), Ok((2, 1)));
    // r1 is out: it cannot sign key set 3.
    let e = format!("{:#}", sign_keyset(&keys_options(&repo, &[&r1])).unwrap_err());
    assert!(e.contains("not signed by the root keys"), "{e}");
}

#[test]
fn m10_publish_refuses_an_image_whose_hosts_could_not_update_again() {
    let d = tempfile::tempdir().unwrap();
    let (k, k_pub) = key(d.path(), "k");
    let (_, other_pub) = key(d.path(), "other");
    let repo = d.path().join("repo");
    let cases: [(&str, Option<String>, &str); 5] = [
        ("no-toml", None, "holds no /usr/lib/berth/update.toml"),
        ("no-channel", Some(format!("version = \"1.0.0\"\nkeys = [{k_pub:?}]\n")), "names no channel"),
        ("other-channel", Some(update_toml("1.0.0", "beta", &[&k_pub], 1)), "not channel \"stable\""),
        ("other-key", Some(update_toml("1.0.0", "stable", &[&other_pub], 1)), "do not accept these signing keys"),
        (
            "threshold",
            Some(update_toml("1.0.0", "stable", &[&k_pub, &other_pub], 2)),
            "do not accept these signing keys",
        ),
    ];
    for (name, toml, why) in &cases {
        let image = disk(&d.path().join(name), "1.0.0", toml.as_deref());
        let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&k])).unwrap_err());
        assert!(e.contains(why) && e.contains("--force"), "{name}: {e}");
        assert!(!repo.join("channels/stable.json").exists(), "{name}: a refused publish wrote the index");
    }
    // A channel and no key: the image's own update.toml is refused as the agent refuses it.
    let toml = "version = \"1.0.0\"\nchannel = \"http://h/channels/stable.json\"\nkeys = []\n";
    let image = disk(&d.path().join("no-keys"), "1.0.0", Some(toml));
    let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&k])).unwrap_err());
    assert!(e.contains("no trusted keys"), "{e}");
    // --force publishes it anyway.
    let image = disk(&d.path().join("forced"), "1.0.0", None);
    publish(&PublishOptions { force: true, ..options(&repo, Some(&image), &[&k]) }).unwrap();
    // A good image goes in.
    let image = disk(&d.path().join("good"), "2.0.0", Some(&update_toml("2.0.0", "stable", &[&k_pub], 1)));
    let r = publish(&options(&repo, Some(&image), &[&k])).unwrap();
    assert_eq!(r.version.as_deref(), Some("2.0.0"));
}

#[test]
fn m13_publish_refuses_an_image_without_its_own_version() {
    let d = tempfile::tempdir().unwrap();
    let (k, k_pub) = key(d.path(), "k");
    let repo = d.path().join("repo");
    let toml = format!("channel = \"http://h/channels/stable.json\"\nkeys = [{k_pub:?}]\n");
    let image = disk(&d.path().join("v"), "1.0.0", Some(&toml));
    let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&k])).unwrap_err());
    assert!(e.contains("names no version"), "{e}");
    // The version published is the image's own, not the manifest's.
    let image = disk(&d.path().join("w"), "1.0.0", Some(&update_toml("1.0.0", "stable", &[&k_pub], 1)));
    std::fs::write(
        d.path().join("w/t.manifest.json"),
        std::fs::read_to_string(d.path().join("w/t.manifest.json")).unwrap().replace("1.0.0", "9.0.0"),
    )
    .unwrap();
    let e = format!("{:#}", publish(&options(&repo, Some(&image), &[&k])).unwrap_err());
    assert!(e.contains("says version 1.0.0") && e.contains("9.0.0"), "{e}");
}

#[test]
fn h6_the_commands_teach_root_keys_and_key_sets() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(BERTH).current_dir(d.path()).args(["keygen", "--root"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(d.path().join("berth-root.key").is_file() && err.contains("keep it offline"), "{err}");
    let out = Command::new(BERTH).args(["keys", "sign", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["--root-key", "--signing-key", "--revoke", "--root-threshold", "Rotate the root keys"] {
        assert!(help.contains(want), "berth keys sign --help lacks {want}:\n{help}");
    }
    let (s, _) = key(d.path(), "s");
    let repo = d.path().join("repo");
    let out = Command::new(BERTH)
        .args(["keys", "sign", "--repo"])
        .arg(&repo)
        .arg("--root-key")
        .arg(d.path().join("berth-root.key"))
        .arg("--signing-key")
        .arg(s.with_extension("pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("key set 1 written"), "{out:?}");
    let out = Command::new(BERTH).args(["keys", "show", "--repo"]).arg(&repo).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"version\": 1"), "{out:?}");
}

#[test]
fn m8_publish_signs_a_frame_list_that_cuts_and_authenticates_every_frame() {
    let d = tempfile::tempdir().unwrap();
    let (k, k_pub) = key(d.path(), "k");
    let repo = d.path().join("repo");
    let image = disk(&d.path().join("v"), "1.0.0", Some(&update_toml("1.0.0", "stable", &[&k_pub], 1)));
    publish(&options(&repo, Some(&image), &[&k])).unwrap();
    let index = berth_release::Index::parse(&std::fs::read(repo.join("channels/stable.json")).unwrap()).unwrap();
    let root = &index.releases[0].root;
    let list = root.frames.as_ref().expect("a frame list in the index");
    assert_eq!(list.path, "releases/1.0.0/root.img.zst.frames");
    let bytes = std::fs::read(repo.join(&list.path)).unwrap();
    assert_eq!((bytes.len() as u64, berth_release::artifact::sha256(&bytes)), (list.size, list.sha256));
    let frames = berth_release::index::FrameList::parse(&bytes, root.file.size, root.image_size).unwrap();
    // 16 MiB of root: four frames of 4 MiB; each listed slice is one whole zstd frame.
    assert_eq!(frames.0.len(), 4);
    let zst = std::fs::read(repo.join(&root.file.path)).unwrap();
    let mut at = 0usize;
    for (n, sha) in &frames.0 {
        let frame = &zst[at..at + *n as usize];
        assert_eq!(berth_release::artifact::sha256(frame), *sha);
        assert_eq!(zstd::bulk::decompress(frame, 4 << 20).unwrap().len(), 4 << 20);
        at += *n as usize;
    }
    assert_eq!(at, zst.len());
}
