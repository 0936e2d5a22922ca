//! Real Debian packages, when some are at hand: each `.deb` in `$BERTH_REAL_DEBS` (a directory)
//! or `/var/cache/apt/archives` is unpacked alone and compared with what `dpkg-deb
//! --fsys-tarfile | tar -tv` lists; a directory given in `$BERTH_REAL_DEBS` is also unpacked as
//! one root and the maintainer-script replacements run on it. Without packages these checks
//! print a note and pass. Timings are printed (`--nocapture`) for the performance report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use berth_debian::deb::setup::{self, Accounts, OsRelease};
use berth_debian::deb::{DebFile, UnpackOptions, Unpacker};
use berth_fstree::{NodeKind, Tree};

use super::skeleton;

fn real_debs() -> (Vec<PathBuf>, bool) {
    let (dir, from_env) = match std::env::var_os("BERTH_REAL_DEBS") {
        Some(d) => (PathBuf::from(d), true),
        None => (PathBuf::from("/var/cache/apt/archives"), false),
    };
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "deb")).collect())
        .unwrap_or_default();
    debs.sort();
    (debs, from_env)
}

/// One line of `tar --numeric-owner -tv`: the type letter, mode, owner, size and link target.
#[derive(Debug)]
struct Listed {
    kind: char,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    target: Option<String>,
}

fn mode_bits(s: &str) -> u16 {
    let b = s.as_bytes();
    let mut m = 0u16;
    for (i, bit) in [(1, 0o400), (2, 0o200), (4, 0o040), (5, 0o020), (7, 0o004), (8, 0o002)] {
        if b[i] != b'-' {
            m |= bit;
        }
    }
    for (i, x, special) in [(3, 0o100, 0o4000), (6, 0o010, 0o2000), (9, 0o001, 0o1000)] {
        match b[i] {
            b'x' => m |= x,
            b's' | b't' => m |= x | special,
            b'S' | b'T' => m |= special,
            _ => {}
        }
    }
    m
}

/// What GNU tar lists for the package's data archive, keyed by normalized path.
fn tar_listing(deb: &Path) -> BTreeMap<String, Listed> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar --numeric-owner --quoting-style=literal -tvf -")
        .arg("sh")
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "listing {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // drwxr-xr-x 0/0 0 2023-01-01 00:00 ./usr/ [-> target | link to target]
        let mut f = line.splitn(6, ' ').filter(|s| !s.is_empty());
        let (perm, owner) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        let rest: Vec<&str> = line.split_whitespace().collect();
        let size = rest.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let name_start = line.find(" ./").map(|i| i + 1).or_else(|| line.find(" /").map(|i| i + 1)).unwrap_or(0);
        let name_part = &line[name_start..];
        let (name, target) = match name_part.split_once(" -> ").or_else(|| name_part.split_once(" link to ")) {
            Some((n, t)) => (n, Some(t.to_owned())),
            None => (name_part, None),
        };
        let (uid, gid) =
            owner.split_once('/').map(|(u, g)| (u.parse().unwrap_or(0), g.parse().unwrap_or(0))).unwrap_or((0, 0));
        let path = name.trim_start_matches("./").trim_end_matches('/').to_owned();
        if path.is_empty() {
            continue;
        }
        map.insert(
            path,
            Listed { kind: perm.chars().next().unwrap_or('?'), mode: mode_bits(perm), uid, gid, size, target },
        );
    }
    map
}

/// The tree path of a package path with the merged-/usr aliases resolved.
fn merged(path: &str) -> String {
    for alias in ["bin", "sbin", "lib", "lib64"] {
        if let Some(rest) = path.strip_prefix(alias).and_then(|r| r.strip_prefix('/')) {
            return format!("usr/{alias}/{rest}");
        }
    }
    path.to_owned()
}

#[test]
fn real_debian_packages_match_tar_listing() {
    let (debs, _) = real_debs();
    if debs.is_empty() {
        eprintln!("note: no .deb in $BERTH_REAL_DEBS or /var/cache/apt/archives; real-package check skipped");
        return;
    }
    let mut biggest = (0u64, String::new(), 0.0f64, 0.0f64);
    for deb in &debs {
        let t0 = Instant::now();
        let file = DebFile::open(deb).unwrap();
        let data = file.read_data().unwrap();
        let read = t0.elapsed().as_secs_f64();
        let bytes = data.content_bytes();
        let t1 = Instant::now();
        let mut u = Unpacker::new(skeleton(), UnpackOptions::default());
        let report = u.apply(file.info(), data).unwrap();
        let apply = t1.elapsed().as_secs_f64();
        eprintln!(
            "{}: {} files, {} MiB, read {:.3}s, apply {:.3}s, scripts skipped {:?}",
            file.info().package(),
            report.files,
            bytes >> 20,
            read,
            apply,
            report.scripts_skipped
        );
        if bytes > biggest.0 {
            biggest = (bytes, file.info().package().to_owned(), read, apply);
        }
        let tree = u.tree();
        for (path, l) in tar_listing(deb) {
            let at = merged(&path);
            if l.kind == 'd' && ["bin", "sbin", "lib", "lib64"].contains(&path.as_str()) {
                continue; // the alias stays a symlink
            }
            if report.alias_loops.contains(&format!("/{at}")) {
                continue;
            }
            let id = tree.lookup(&at).unwrap_or_else(|| panic!("{}: {at} missing", deb.display()));
            let node = tree.node(id);
            let ok_kind = match (l.kind, &node.kind) {
                ('-', NodeKind::File(d)) => d.len() == l.size,
                ('h', NodeKind::File(_)) => {
                    let target = merged(l.target.as_deref().unwrap_or_default().trim_start_matches("./"));
                    tree.lookup(&target) == Some(id)
                }
                ('l', NodeKind::Symlink(t)) => l.target.as_deref() == Some(&*String::from_utf8_lossy(t)),
                ('d', NodeKind::Dir(_)) => true,
                ('p', NodeKind::Fifo) | ('c', NodeKind::CharDevice { .. }) | ('b', NodeKind::BlockDevice { .. }) => {
                    true
                }
                _ => false,
            };
            assert!(ok_kind, "{}: {at}: tar says {l:?}, tree has {node:?}", deb.display());
            if l.kind != 'l' {
                assert_eq!(node.meta.mode, l.mode, "{}: mode of {at}", deb.display());
            }
            assert_eq!((node.meta.uid, node.meta.gid), (l.uid, l.gid), "{}: owner of {at}", deb.display());
        }
    }
    eprintln!(
        "biggest: {} with {} MiB of content: read (decompress + tar) {:.2}s, apply {:.3}s",
        biggest.1,
        biggest.0 >> 20,
        biggest.2,
        biggest.3
    );
}

/// A set of packages from `$BERTH_REAL_DEBS` unpacked as one root, packages read on two threads,
/// then every maintainer-script replacement.
#[test]
fn real_root_with_replacements() {
    let (debs, from_env) = real_debs();
    if !from_env || debs.is_empty() {
        eprintln!("note: $BERTH_REAL_DEBS not set; real-root check skipped");
        return;
    }
    let start = Instant::now();
    let files: Vec<DebFile> = debs.iter().map(|d| DebFile::open(d).unwrap()).collect();
    // Decompression is the expensive part: two readers, applied in order as they finish.
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let mut unpacker = Unpacker::new(skeleton(), UnpackOptions { mtime_clamp: Some(1_700_000_000) });
    let mut reports = Vec::new();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (tx, files, next) = (tx.clone(), &files, &next);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    if tx.send((i, f.read_data())).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut want = 0;
        for (i, data) in rx {
            pending.insert(i, data);
            while let Some(data) = pending.remove(&want) {
                reports.push(unpacker.apply(files[want].info(), data.unwrap()).unwrap());
                want += 1;
            }
        }
    });
    let unpacked = start.elapsed().as_secs_f64();
    let mut tree: Tree = unpacker.into_tree();
    let t = 1_700_000_000;
    let base = setup::base_files(&mut tree, t).unwrap();
    let users = setup::users(&mut tree, &Accounts::default(), t).unwrap();
    let ca = setup::ca_bundle(&mut tree, t).unwrap();
    let mut alts = Vec::new();
    for f in &files {
        for s in &f.info().scripts {
            alts.extend(setup::parse_alternatives(&s.body).0);
        }
    }
    let chosen = setup::alternatives(&mut tree, &alts, t).unwrap();
    let os = OsRelease { name: "Berth".into(), version_id: "0.1".into(), pretty_name: None, build_id: "test".into() };
    setup::os_release(&mut tree, &os, t).unwrap();
    setup::dpkg_status(&mut tree, files.iter().map(|f| &f.info().control), t).unwrap();
    eprintln!(
        "{} packages, {} MiB: unpacked in {unpacked:.2}s; base-files {}, users {:?}, {} CA certificates, alternatives {:?}",
        files.len(),
        tree.content_bytes() >> 20,
        base.installed,
        users.users,
        ca.certificates.len(),
        chosen.chosen
    );
    let names: Vec<&str> = files.iter().map(|f| f.info().package()).collect();
    if names.contains(&"bash") {
        assert!(tree.lookup("usr/bin/bash").is_some());
    }
    if names.contains(&"base-passwd") {
        assert!(users.base_passwd && users.users.contains(&"_apt".to_string()));
    }
    if names.contains(&"ca-certificates") {
        assert!(ca.certificates.len() > 100, "{}", ca.certificates.len());
        // The judge: openssl reads every certificate of the bundle.
        let id = tree.lookup("etc/ssl/certs/ca-certificates.crt").unwrap();
        let NodeKind::File(d) = &tree.node(id).kind else { panic!("bundle is not a file") };
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.crt");
        std::fs::write(&bundle, d.read_all().unwrap()).unwrap();
        let out = Command::new("openssl").args(["storeutl", "-noout", "-certs"]).arg(&bundle).output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            let n = text.lines().filter(|l| l.contains(": Certificate")).count();
            assert_eq!(n, ca.certificates.len(), "openssl sees every certificate");
        }
    }
    if names.contains(&"mawk") {
        assert!(chosen.chosen.iter().any(|(n, p)| n == "awk" && p == "/usr/bin/mawk"));
    }
    if names.contains(&"base-files") {
        let id = tree.lookup("var/run").unwrap();
        assert_eq!(tree.node(id).kind, NodeKind::Symlink(b"/run".to_vec()));
    }
}
