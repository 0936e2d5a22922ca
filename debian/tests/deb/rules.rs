//! The unpack rules between packages: conflicts, Replaces, shared files, directories,
//! merged-/usr aliasing, hard links across packages. Data archives are built in memory here (the
//! format itself is judged with real tools in the other tests).

use std::path::PathBuf;
use std::sync::Arc;

use berth_debian::deb::{
    Compression, Control, DataArchive, DataEntry, DebError, DebInfo, EntryKind, UnpackOptions, Unpacker,
};
use berth_fstree::{FileData, Metadata, NodeKind};

use super::skeleton;

fn info(package: &str, extra: &str) -> DebInfo {
    let control = Control::parse(&format!("Package: {package}\nVersion: 1\nArchitecture: amd64\n{extra}")).unwrap();
    DebInfo {
        path: PathBuf::from(format!("/pool/{package}_1_amd64.deb")),
        control,
        conffiles: Vec::new(),
        scripts: Vec::new(),
        triggers: None,
        data_member: "data.tar.xz".into(),
        data_compression: Compression::Xz,
    }
}

fn meta(mode: u16) -> Metadata {
    Metadata::root(mode, 100)
}

fn file(path: &str, data: &[u8]) -> DataEntry {
    DataEntry { path: path.into(), meta: meta(0o644), kind: EntryKind::File(Arc::from(data)) }
}

fn dir(path: &str, mode: u16) -> DataEntry {
    DataEntry { path: path.into(), meta: meta(mode), kind: EntryKind::Dir }
}

fn symlink(path: &str, target: &str) -> DataEntry {
    DataEntry { path: path.into(), meta: meta(0o777), kind: EntryKind::Symlink(target.into()) }
}

fn data(entries: Vec<DataEntry>) -> DataArchive {
    DataArchive { entries }
}

fn content(u: &Unpacker, path: &str) -> Vec<u8> {
    let id = u.tree().lookup(path).unwrap_or_else(|| panic!("{path} missing"));
    match &u.tree().node(id).kind {
        NodeKind::File(FileData::Memory(d)) => d.to_vec(),
        k => panic!("{path}: {k:?}"),
    }
}

#[test]
fn conflicting_files_name_both_packages() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("alpha", ""), data(vec![dir("etc", 0o755), file("etc/x.conf", b"alpha")])).unwrap();
    let err = u.apply(&info("beta", ""), data(vec![file("etc/x.conf", b"beta")])).unwrap_err();
    assert!(matches!(err, DebError::Conflict { .. }), "{err}");
    let msg = err.to_string();
    for part in ["/pool/beta_1_amd64.deb", "beta", "alpha", "/etc/x.conf"] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    assert_eq!(u.owner("/etc/x.conf"), Some("alpha"));
}

#[test]
fn identical_files_are_shared() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("libfoo", "Multi-Arch: same\n"), data(vec![file("usr/share/doc/foo", b"same")])).unwrap();
    let mut second = file("usr/share/doc/foo", b"same");
    second.meta.mtime = 999; // another build: mtime differs, content does not
    let r = u.apply(&info("libfoo-i386", ""), data(vec![second])).unwrap();
    assert_eq!(r.shared, 1);
    assert_eq!(content(&u, "usr/share/doc/foo"), b"same");
    let id = u.tree().lookup("usr/share/doc/foo").unwrap();
    assert_eq!(u.tree().node(id).meta.mtime, 100, "the first stays");
    // Different mode is not identical.
    let mut other = file("usr/share/doc/foo", b"same");
    other.meta.mode = 0o600;
    assert!(u.apply(&info("gamma", ""), data(vec![other])).is_err());
}

#[test]
fn replaces_either_way_round() {
    // New package Replaces the owner: the new file wins.
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("old", ""), data(vec![file("usr/bin/tool", b"old")])).unwrap();
    let r = u.apply(&info("new", "Replaces: old (<< 2)\n"), data(vec![file("usr/bin/tool", b"new")])).unwrap();
    assert_eq!(r.replaced, [("/usr/bin/tool".to_string(), "old".to_string())]);
    assert_eq!(content(&u, "usr/bin/tool"), b"new");
    assert_eq!(u.owner("usr/bin/tool"), Some("new"));

    // The owner Replaces the package unpacked after it: the owner's file stays.
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("new", "Replaces: old\n"), data(vec![file("usr/bin/tool", b"new")])).unwrap();
    let r = u.apply(&info("old", ""), data(vec![file("usr/bin/tool", b"old")])).unwrap();
    assert_eq!(r.kept, [("/usr/bin/tool".to_string(), "new".to_string())]);
    assert_eq!(content(&u, "usr/bin/tool"), b"new");
}

#[test]
fn replacing_a_hard_linked_file_leaves_the_other_name() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    let link = DataEntry { path: "usr/bin/b".into(), meta: meta(0o644), kind: EntryKind::HardLink("usr/bin/a".into()) };
    u.apply(&info("old", ""), data(vec![file("usr/bin/a", b"old"), link])).unwrap();
    u.apply(&info("new", "Replaces: old\n"), data(vec![file("usr/bin/a", b"new")])).unwrap();
    assert_eq!(content(&u, "usr/bin/a"), b"new");
    assert_eq!(content(&u, "usr/bin/b"), b"old");
    let b = u.tree().lookup("usr/bin/b").unwrap();
    assert_eq!(u.tree().name_counts()[b], 1);
}

#[test]
fn directories_first_explicit_wins() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    // `var/lib/x` arrives before its parents: they are made implicitly.
    let r = u.apply(&info("one", ""), data(vec![file("var/lib/x", b"x"), dir("var", 0o700)])).unwrap();
    assert_eq!(r.files, 1);
    let var = u.tree().lookup("var").unwrap();
    assert_eq!(u.tree().node(var).meta.mode, 0o700, "an implicit directory takes the first explicit metadata");
    let lib = u.tree().lookup("var/lib").unwrap();
    assert_eq!(u.tree().node(lib).meta.mode, 0o755, "implicit: 0755 root");
    u.apply(&info("two", ""), data(vec![dir("var", 0o755), dir("var/lib", 0o750)])).unwrap();
    assert_eq!(u.tree().node(var).meta.mode, 0o700, "the first explicit one stays");
    assert_eq!(u.tree().node(lib).meta.mode, 0o750, "var/lib was implicit until now");
    // The skeleton's /usr/bin is implicit too.
    u.apply(&info("three", ""), data(vec![dir("usr/bin", 0o711)])).unwrap();
    let bin = u.tree().lookup("usr/bin").unwrap();
    assert_eq!(u.tree().node(bin).meta.mode, 0o711);
}

#[test]
fn directory_and_file_clashes() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("one", ""), data(vec![dir("etc", 0o755), file("etc/f", b"f")])).unwrap();
    let err = u.apply(&info("two", ""), data(vec![dir("etc/f", 0o755)])).unwrap_err();
    assert!(err.to_string().contains("package one"), "{err}");
    let err = u.apply(&info("three", ""), data(vec![file("etc", b"x")])).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
    // A file under a path whose parent is a file.
    let err = u.apply(&info("four", ""), data(vec![file("etc/f/g", b"x")])).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn merged_usr_redirects_and_drops_alias_loops() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    // bookworm-style: ./bin/ and ./lib/ directories with files, the /lib64 loader symlink.
    let r = u
        .apply(
            &info("bash", ""),
            data(vec![
                dir("bin", 0o755),
                file("bin/bash", b"bash"),
                dir("lib", 0o755),
                dir("lib/x86_64-linux-gnu", 0o755),
                file("lib/x86_64-linux-gnu/libc.so.6", b"libc"),
                dir("lib64", 0o755),
                symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            ]),
        )
        .unwrap();
    assert_eq!(r.redirected, 4, "{r:?}");
    assert_eq!(content(&u, "usr/bin/bash"), b"bash");
    assert_eq!(content(&u, "usr/lib/x86_64-linux-gnu/libc.so.6"), b"libc");
    assert!(u.tree().lookup("usr/lib64/ld-linux-x86-64.so.2").is_some());
    for alias in ["bin", "lib", "lib64", "sbin"] {
        let id = u.tree().lookup(alias).unwrap();
        assert_eq!(u.tree().node(id).kind, NodeKind::Symlink(format!("usr/{alias}").into_bytes()));
    }
    // A compatibility symlink /usr/bin/bash -> /bin/bash would point at itself: dropped.
    let r = u.apply(&info("compat", ""), data(vec![symlink("usr/bin/bash", "/bin/bash")])).unwrap();
    assert_eq!(r.alias_loops, ["/usr/bin/bash"]);
    assert_eq!(content(&u, "usr/bin/bash"), b"bash");
    // The other order: the symlink first, then the real file replaces it.
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("compat", ""), data(vec![symlink("usr/bin/sh", "../../bin/sh")])).unwrap();
    let r = u.apply(&info("dash", ""), data(vec![file("bin/sh", b"dash")])).unwrap();
    assert_eq!(r.alias_loops, ["/usr/bin/sh"]);
    assert_eq!(content(&u, "usr/bin/sh"), b"dash");
    // trixie-style: the package ships the alias symlinks itself; identical, so shared.
    let r =
        u.apply(&info("base-files", ""), data(vec![symlink("bin", "usr/bin"), symlink("lib64", "usr/lib64")])).unwrap();
    assert_eq!(r.shared, 2);
    // A different /bin symlink conflicts with the skeleton.
    let err = u.apply(&info("weird", ""), data(vec![symlink("sbin", "usr/bin")])).unwrap_err();
    assert!(err.to_string().contains("before any package"), "{err}");
}

#[test]
fn hard_links_to_other_packages_and_errors() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    u.apply(&info("one", ""), data(vec![file("usr/bin/a", b"a")])).unwrap();
    // A hard link to a node another package installed, through the /bin alias.
    let link = DataEntry { path: "usr/bin/b".into(), meta: meta(0o644), kind: EntryKind::HardLink("bin/a".into()) };
    let r = u.apply(&info("two", ""), data(vec![link])).unwrap();
    assert_eq!(r.hard_links, 1);
    assert_eq!(u.tree().lookup("usr/bin/a"), u.tree().lookup("usr/bin/b"));
    let missing = DataEntry { path: "usr/bin/c".into(), meta: meta(0o644), kind: EntryKind::HardLink("nope".into()) };
    let err = u.apply(&info("three", ""), data(vec![missing])).unwrap_err();
    assert!(err.to_string().contains("/nope") && err.to_string().contains("three"), "{err}");
    let to_dir = DataEntry { path: "usr/bin/d".into(), meta: meta(0o644), kind: EntryKind::HardLink("usr".into()) };
    assert!(u.apply(&info("four", ""), data(vec![to_dir])).unwrap_err().to_string().contains("directory"));
}

#[test]
fn same_package_twice_through_the_aliases() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
    let err = u.apply(&info("dup", ""), data(vec![file("bin/x", b"one"), file("usr/bin/x", b"two")])).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn clamp_applies_to_implicit_directories() {
    let mut u = Unpacker::new(skeleton(), UnpackOptions { mtime_clamp: Some(50) });
    u.apply(&info("one", ""), data(vec![file("opt/a/b", b"b")])).unwrap();
    for p in ["opt", "opt/a", "opt/a/b"] {
        let id = u.tree().lookup(p).unwrap();
        assert_eq!(u.tree().node(id).meta.mtime, 50, "{p}");
    }
}
