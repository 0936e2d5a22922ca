//! Acceptance test of the ext4 writer: a large random tree with every kind of entry is written,
//! `e2fsck -fn` must find nothing, and two independent readers (`ext4-view` and `debugfs`) must
//! read back every entry as it was. Also: output is reproducible, a too-small size fails
//! cleanly, and the checker itself is validated against an image made by `mkfs.ext4 -d`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_ext4::{BLOCK_SIZE, Error, Options, write_file};
use berth_fstree::{Metadata, Node, NodeKind, Tree};
use common::{Params, check, describe, e2fsck, generate, scratch, tool};
use sha2::{Digest, Sha256};

fn options() -> Options {
    Options {
        size: None,
        uuid: *b"berth-ext4-test!",
        hash_seed: [0x5e, 0xed, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        label: "berth-test".to_string(),
        timestamp: 1_700_000_000,
        journal: berth_ext4::Journal::None,
        bytes_per_inode: None,
        reserved: berth_ext4::Reserved::None,
    }
}

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs e2fsck and both readers on `image`; panics with every mismatch found.
fn judge(tree: &Tree, image: &Path, dir: &Path) {
    let t = Instant::now();
    match e2fsck(image) {
        Ok(out) => eprintln!("e2fsck -fn: clean ({:.1} s)\n{}", t.elapsed().as_secs_f64(), out.trim_end()),
        Err(e) => panic!("{e}"),
    }
    let report = check::check_image(tree, image, dir);
    for n in &report.notes {
        eprintln!("{n}");
    }
    report.assert_ok();
}

#[test]
fn big_tree_reads_back() {
    let dir = scratch();
    let t = Instant::now();
    let tree = generate(&Params::acceptance());
    eprintln!("tree: {} (generated in {:.1} s)", describe(&tree), t.elapsed().as_secs_f64());
    assert!(tree.walk().len() >= 20_000);
    assert!(tree.content_bytes() >= 290 << 20);

    let image = dir.path().join("big.ext4");
    let t = Instant::now();
    let report = write_file(&tree, &image, &options()).expect("write_file");
    eprintln!("write_file: {:.1} s, {report:?}", t.elapsed().as_secs_f64());
    assert_eq!(std::fs::metadata(&image).unwrap().len(), report.size);
    judge(&tree, &image, dir.path());
}

#[test]
fn same_tree_same_bytes() {
    let dir = scratch();
    let tree = generate(&Params::acceptance());
    let (a, b) = (dir.path().join("a.ext4"), dir.path().join("b.ext4"));
    write_file(&tree, &a, &options()).expect("first write");
    // A clone is a different allocation with the same content: nothing may depend on addresses.
    write_file(&tree.clone(), &b, &options()).expect("second write");
    let (ha, hb) = (sha256(&a), sha256(&b));
    eprintln!("sha256: {ha} / {hb}");
    assert_eq!(ha, hb, "two writes of the same tree with the same options differ");
}

#[test]
fn too_small_fails_cleanly() {
    let dir = scratch();
    let mut tree = Tree::new(Metadata::root(0o755, 0));
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    tree.insert("/big-file", Node::new(NodeKind::File(data.into()), Metadata::root(0o644, 0))).unwrap();
    let image = dir.path().join("small.ext4");
    let size = 1 << 20;
    let err = write_file(&tree, &image, &Options { size: Some(size), ..options() })
        .expect_err("a 3 MiB file cannot fit in a 1 MiB filesystem");
    let msg = err.to_string();
    eprintln!("error: {msg}");
    let Error::TooSmall { needed, available } = err else { panic!("expected Error::TooSmall, got {err:?}") };
    assert!(needed > available, "needed {needed} <= available {available}");
    assert!(needed > 3 << 20, "needed {needed} is less than the content alone");
    assert!(available <= size, "available {available} is more than the requested {size}");
    assert!(msg.contains(&needed.to_string()) && msg.contains(&available.to_string()), "{msg}");
    assert!(!image.exists(), "the output file was left behind");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // The size the error names is enough.
    let report = write_file(&tree, &image, &Options { size: Some(needed), ..options() }).expect("write at `needed`");
    assert!(report.size <= needed.div_ceil(BLOCK_SIZE) * BLOCK_SIZE);
    e2fsck(&image).unwrap();
}

/// The checker must accept a correct image and reject wrong ones, or the tests above prove
/// nothing. The reference is `mkfs.ext4 -d` on the tree put on disk, with `e2fsck -fyD`
/// afterwards to index its directories (mkfs does not build htrees itself).
#[test]
fn checker_accepts_mkfs_image_and_catches_mismatches() {
    // Owners, device nodes and trusted.* xattrs can only be put on the host as root.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0) != 0 {
        eprintln!("SKIPPED: materializing the tree for mkfs.ext4 -d needs root");
        return;
    }
    let dir = scratch();
    let params = Params {
        total_bytes: 24 << 20,
        entries: 8_000,
        // mkfs.ext4 -d adds names to a directory by scanning it whole, so a 10,000-name
        // directory alone takes it ~40 s; this one still gets an htree from e2fsck -D.
        big_dir_entries: 4_000,
        mid_dir_entries: 1_000,
        max_file: 2 << 20,
        mkfs_compatible: true,
        ..Params::acceptance()
    };
    let tree = generate(&params);
    eprintln!("tree: {}", describe(&tree));
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let t = Instant::now();
    common::materialize(&tree, &src).unwrap();
    eprintln!("materialized in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let image = dir.path().join("mkfs.ext4");
    std::fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
    let out = Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F", "-b", "4096", "-N", "32768", "-O", "^has_journal", "-E", "root_owner=0:0", "-d"])
        .arg(&src)
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("mkfs.ext4 -d: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let out = Command::new(tool("e2fsck", "e2fsprogs")).arg("-fyD").arg(&image).output().unwrap();
    // 0: clean, 1: changed (the directories were indexed).
    assert!(out.status.code().is_some_and(|c| c <= 1), "e2fsck -fyD: {}", String::from_utf8_lossy(&out.stdout));
    eprintln!("e2fsck -fyD: {:.1} s", t.elapsed().as_secs_f64());
    // mkfs.ext4 -d does not copy the root directory's mtime; make the tree say what it wrote.
    let mut tree = tree;
    let fs = ext4_view::Ext4::load_from_path(&image).unwrap();
    tree.node_mut(berth_fstree::ROOT).meta.mtime = fs.metadata("/").unwrap().modified().seconds();
    judge(&tree, &image, dir.path());

    // Now break the expectation in known ways; every one must be reported, at its path.
    let mut wrong = tree.clone();
    let mut expect = Vec::new();
    let mut change = |p: &str, f: &dyn Fn(&mut Node)| {
        let id = wrong.lookup(p).unwrap_or_else(|| panic!("{p} not in the tree"));
        f(wrong.node_mut(id));
        expect.push(format!("/{p}:"));
    };
    change("edges/size-4097", &|n| {
        if let NodeKind::File(d) = &mut n.kind {
            let mut v = d.read_all().unwrap();
            v[4096] ^= 1;
            *d = v.into();
        }
    });
    change("modes/setuid", &|n| n.meta.mode = 0o755);
    change("modes/user-1000", &|n| n.meta.uid = 1001);
    change("xattrs/big", &|n| {
        n.meta.xattrs.get_mut(b"user.big".as_slice()).unwrap()[2000] ^= 1;
    });
    change("xattrs/small", &|n| {
        n.meta.xattrs.remove(b"user.a".as_slice());
    });
    change("links/symlink-100", &|n| {
        if let NodeKind::Symlink(t) = &mut n.kind {
            t[50] ^= 1;
        }
    });
    change("devs/nvme", &|n| n.kind = NodeKind::BlockDevice { major: 259, minor: 70_001 });
    change("devs/fifo", &|n| n.kind = NodeKind::Socket);
    let report = check::check_image(&wrong, &image, dir.path());
    for e in &expect {
        assert!(
            report.failures.iter().any(|f| f.contains(e.as_str())),
            "the checker missed the change at {e}; it reported:\n{}",
            report.failures.join("\n")
        );
    }
    // Every failure is about a changed path (the FIFO has a second name, links/fifo-link).
    for f in &report.failures {
        assert!(expect.iter().any(|e| f.contains(e.as_str())) || f.contains("/links/fifo-link:"), "unexpected: {f}");
    }
    eprintln!("{} failures reported for {} changes", report.failures.len(), expect.len());
}
