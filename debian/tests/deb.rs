//! `.deb` reading and unpacking, judged by real tools: packages built by `dpkg-deb` (xz, zstd,
//! gzip) and by hand with GNU `tar --xattrs` and binutils `ar`; the result compared with what
//! went in. Also the unpack rules (conflicts, Replaces, merged-/usr), the maintainer-script
//! replacements, and, when real Debian packages are at hand, those.
//!
//! Needs `dpkg-deb`, `ar`, `tar` and `xz` (dpkg, binutils, tar, xz-utils). Runs as root for the
//! owner, device-node and `security.*` xattr checks; as another user those parts are skipped
//! with a note.

#[path = "deb/build.rs"]
mod build;
#[path = "deb/real.rs"]
mod real;
#[path = "deb/rules.rs"]
mod rules;
#[path = "deb/setup.rs"]
mod setup;

use std::path::Path;

use berth_debian::deb::{DebError, DebFile, ScriptKind, UnpackOptions, Unpacker, merged_usr_skeleton};
use berth_fstree::{FileData, Metadata, NodeKind, Tree};
use build::{build_by_hand, dpkg_deb, is_root, stage_package};

/// A fresh tree with the merged-/usr skeleton.
pub fn skeleton() -> Tree {
    let mut tree = Tree::new(Metadata::root(0o755, 0));
    merged_usr_skeleton(&mut tree, 0).unwrap();
    tree
}

fn file_bytes(tree: &Tree, path: &str) -> Vec<u8> {
    let id = tree.lookup(path).unwrap_or_else(|| panic!("{path} missing from the tree"));
    match &tree.node(id).kind {
        NodeKind::File(FileData::Memory(d)) => d.to_vec(),
        other => panic!("{path} is not an in-memory file: {other:?}"),
    }
}

/// Unpacks a package built by `dpkg-deb` and checks every staged entry arrived as staged.
fn check_dpkg_deb(compressor: &str, member: &str) {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage_package(dir.path(), &format!("berth-test-{compressor}"));
    let deb = dpkg_deb(dir.path(), &staged.root, compressor);

    let file = DebFile::open(&deb).unwrap();
    let info = file.info();
    assert_eq!(info.package(), format!("berth-test-{compressor}"));
    assert_eq!(info.control.version(), "1.0-1");
    assert_eq!(info.control.architecture(), "all");
    assert_eq!(info.control.depends(), Some("libc6 (>= 2.36), base-files"));
    assert_eq!(info.conffiles, ["/etc/berth-test.conf"]);
    assert_eq!(info.data_member, member);
    let kinds: Vec<_> = info.scripts.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [ScriptKind::Preinst, ScriptKind::Postinst]);
    assert!(info.scripts[1].body.starts_with(b"#!/bin/sh"));

    let mut unpacker = Unpacker::new(skeleton(), UnpackOptions::default());
    let report = unpacker.unpack(&file).unwrap();
    assert_eq!(report.scripts_skipped, [ScriptKind::Preinst, ScriptKind::Postinst]);
    assert_eq!(report.hard_links, 1);
    assert!(report.redirected >= 1, "bin/berth-tool went through /bin: {report:?}");
    let tree = unpacker.into_tree();
    staged.check(&tree);
    // merged-/usr: bin/ is still the skeleton's symlink and the tool is in /usr/bin.
    assert_eq!(tree.node(tree.lookup("bin").unwrap()).kind, NodeKind::Symlink(b"usr/bin".to_vec()));
    assert_eq!(file_bytes(&tree, "usr/bin/berth-tool"), b"#!/bin/sh\necho tool\n");
}

#[test]
fn dpkg_deb_xz() {
    check_dpkg_deb("xz", "data.tar.xz");
}

#[test]
fn dpkg_deb_zstd() {
    check_dpkg_deb("zstd", "data.tar.zst");
}

#[test]
fn dpkg_deb_gzip() {
    check_dpkg_deb("gzip", "data.tar.gz");
}

#[test]
fn dpkg_deb_uncompressed() {
    check_dpkg_deb("none", "data.tar");
}

#[test]
fn mtime_clamp() {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage_package(dir.path(), "berth-test-clamp");
    let deb = dpkg_deb(dir.path(), &staged.root, "xz");
    let clamp = build::STAGED_MTIME - 1000;
    let mut unpacker = Unpacker::new(skeleton(), UnpackOptions { mtime_clamp: Some(clamp) });
    unpacker.unpack(&DebFile::open(&deb).unwrap()).unwrap();
    let tree = unpacker.tree();
    let etc = tree.lookup("etc/berth-test.conf").unwrap();
    assert_eq!(tree.node(etc).meta.mtime, clamp);
    // Nothing later than the clamp anywhere (the skeleton's entries are at 0).
    assert!(tree.nodes().all(|(_, n)| n.meta.mtime <= clamp));
    // A clamp later than every mtime changes nothing.
    let mut unpacker = Unpacker::new(skeleton(), UnpackOptions { mtime_clamp: Some(i64::MAX) });
    unpacker.unpack(&DebFile::open(&deb).unwrap()).unwrap();
    let etc = unpacker.tree().lookup("etc/berth-test.conf").unwrap();
    assert_eq!(unpacker.tree().node(etc).meta.mtime, build::STAGED_MTIME);
}

/// GNU tar's PAX headers: `SCHILY.xattr.*` (one value holding a newline byte), a path longer
/// than ustar can hold, and numeric owners; packed with `ar` like dpkg-deb would.
#[test]
fn xattrs_from_gnu_tar_pax() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("usr/bin")).unwrap();
    let long_dir = format!("usr/share/{}", "long-directory-name-".repeat(6));
    std::fs::create_dir_all(data.join(&long_dir)).unwrap();
    std::fs::write(data.join("usr/bin/pinger"), b"\x7fELF fake").unwrap();
    std::fs::write(data.join(format!("{long_dir}/file")), b"deep").unwrap();
    std::fs::write(data.join("usr/bin/plain"), b"no xattrs").unwrap();
    set_xattr(&data.join("usr/bin/pinger"), "user.test", b"hello");
    // cap_dac_override|cap_fowner permitted+effective: the permitted word is 0x0a, a newline.
    let cap = [1u8, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let root = is_root();
    if root {
        set_xattr(&data.join("usr/bin/pinger"), "security.capability", &cap);
    } else {
        eprintln!("note: not root, security.capability not set");
    }
    set_xattr(&data.join(&long_dir), "user.dir", b"d");
    let deb =
        build_by_hand(dir.path(), &data, "berth-xattr", "2.0\n", "data.tar.xz", &["--xattrs", "--xattrs-include=*"]);

    let mut unpacker = Unpacker::new(skeleton(), UnpackOptions::default());
    unpacker.unpack(&DebFile::open(&deb).unwrap()).unwrap();
    let tree = unpacker.tree();
    let pinger = tree.node(tree.lookup("usr/bin/pinger").unwrap());
    assert_eq!(pinger.meta.xattrs.get(&b"user.test"[..]).map(Vec::as_slice), Some(&b"hello"[..]));
    if root {
        assert_eq!(pinger.meta.xattrs.get(&b"security.capability"[..]).map(Vec::as_slice), Some(&cap[..]));
    }
    let plain = tree.node(tree.lookup("usr/bin/plain").unwrap());
    assert!(plain.meta.xattrs.is_empty());
    let long = tree.node(tree.lookup(&long_dir).unwrap());
    assert_eq!(long.meta.xattrs.get(&b"user.dir"[..]).map(Vec::as_slice), Some(&b"d"[..]));
    assert_eq!(file_bytes(tree, &format!("{long_dir}/file")), b"deep");
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", path.display()));
}

/// Asserts `err` names the `.deb` and contains `what`.
fn assert_error(err: DebError, deb: &Path, what: &str) {
    let msg = err.to_string();
    assert!(msg.contains(&deb.display().to_string()), "error does not name {}: {msg}", deb.display());
    assert!(msg.contains(what), "error does not say `{what}`: {msg}");
}

#[test]
fn truncated_deb() {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage_package(dir.path(), "berth-test-trunc");
    let deb = dpkg_deb(dir.path(), &staged.root, "xz");
    let bytes = std::fs::read(&deb).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 1, 30, 4] {
        let short = dir.path().join(format!("cut-{cut}.deb"));
        std::fs::write(&short, &bytes[..cut]).unwrap();
        let err = DebFile::open(&short).unwrap_err();
        assert!(matches!(err, DebError::Format { .. }), "{err}");
        assert_error(err, &short, if cut == 4 { "too short" } else { "truncated" });
    }
    let not_ar = dir.path().join("text.deb");
    std::fs::write(&not_ar, b"this is not an ar archive at all").unwrap();
    assert_error(DebFile::open(&not_ar).unwrap_err(), &not_ar, "not an ar archive");
}

#[test]
fn truncated_data_stream() {
    // The ar index is intact but the xz stream inside is cut: reading the data fails cleanly.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("usr/share")).unwrap();
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("usr/share/noise"), noise).unwrap();
    let xz = dir.path().join("data.tar.xz");
    build::run(std::process::Command::new("tar").arg("-C").arg(&data).args(["-cJf"]).arg(&xz).arg("."));
    let mut bytes = std::fs::read(&xz).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&xz, bytes).unwrap();
    let deb = build::ar_deb(dir.path(), "berth-cut", "2.0\n", &xz, "data.tar.xz");
    let file = DebFile::open(&deb).unwrap();
    let err = file.read_data().unwrap_err();
    assert!(matches!(err, DebError::Member { .. }), "{err}");
    assert_error(err, &deb, "data.tar.xz");
}

#[test]
fn wrong_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("x"), b"x").unwrap();
    let deb = build_by_hand(dir.path(), &data, "berth-v3", "3.0\n", "data.tar.xz", &[]);
    let err = DebFile::open(&deb).unwrap_err();
    assert!(matches!(&err, DebError::Version { found, .. } if found == "3.0"), "{err}");
    assert_error(err, &deb, "3.0");
}

#[test]
fn unknown_data_compression() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("x"), b"x").unwrap();
    let deb = build_by_hand(dir.path(), &data, "berth-bz2", "2.0\n", "data.tar.bz2", &[]);
    let err = DebFile::open(&deb).unwrap_err();
    assert!(matches!(err, DebError::Compression { .. }), "{err}");
    assert_error(err, &deb, "data.tar.bz2");
}

#[test]
fn members_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage_package(dir.path(), "berth-test-order");
    let deb = dpkg_deb(dir.path(), &staged.root, "xz");
    let x = dir.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    build::run(std::process::Command::new("ar").arg("x").arg(&deb).current_dir(&x));
    let swapped = dir.path().join("swapped.deb");
    build::run(
        std::process::Command::new("ar")
            .arg("rc")
            .arg(&swapped)
            .args(["debian-binary", "data.tar.xz", "control.tar.xz"])
            .current_dir(&x),
    );
    assert_error(DebFile::open(&swapped).unwrap_err(), &swapped, "control.tar");
    // Members starting with `_` are allowed in between and ignored.
    let extra = dir.path().join("extra.deb");
    std::fs::write(x.join("_signature"), b"sig").unwrap();
    build::run(
        std::process::Command::new("ar")
            .arg("rc")
            .arg(&extra)
            .args(["debian-binary", "_signature", "control.tar.xz", "data.tar.xz"])
            .current_dir(&x),
    );
    let file = DebFile::open(&extra).unwrap();
    assert_eq!(file.info().package(), "berth-test-order");
}

/// A data archive with a member name escaping the root (`..`, absolute): GNU tar will not
/// write one, so the header is made with the tar crate's raw API and compressed with `xz`.
#[test]
fn path_escape_is_refused() {
    for (evil, what) in [("./usr/../../etc/evil", "`..`"), ("/etc/evil", "absolute")] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..evil.len()].copy_from_slice(evil.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(4);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        let tar_path = dir.path().join("data.tar");
        std::fs::write(&tar_path, b.into_inner().unwrap()).unwrap();
        build::run(std::process::Command::new("xz").arg("-k").arg(&tar_path));
        let deb = build::ar_deb(dir.path(), "berth-evil", "2.0\n", &dir.path().join("data.tar.xz"), "data.tar.xz");
        let err = DebFile::open(&deb).unwrap().read_data().unwrap_err();
        assert!(matches!(err, DebError::Entry { .. }), "{err}");
        assert_error(err, &deb, what);
        let msg = DebFile::open(&deb).unwrap().read_data().unwrap_err().to_string();
        assert!(msg.contains("berth-evil") && msg.contains(evil), "names package and path: {msg}");
    }
}
