//! Unit tests with e2fsprogs as the judge.

use std::process::Command;

use berth_fstree::{Metadata, Node, NodeKind, Tree};

use crate::{Error, Options, write_file};

fn opts() -> Options {
    Options::derived("test", b"unit", 1_700_000_000)
}

fn meta(mode: u16) -> Metadata {
    Metadata::root(mode, 1_700_000_000)
}

fn e2fsck(img: &std::path::Path) -> (bool, String) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck (Debian package e2fsprogs) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn small_tree(dir_entries: usize, name_len: usize) -> Tree {
    let mut t = Tree::new(meta(0o755));
    t.mkdir_all("etc", &meta(0o755)).unwrap();
    t.insert("etc/hostname", Node::new(NodeKind::File(b"berth\n".as_slice().into()), meta(0o644))).unwrap();
    let mut m = meta(0o4755);
    m.uid = 1000;
    m.gid = 100;
    m.xattrs
        .insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    t.insert("etc/big", Node::new(NodeKind::File(vec![7u8; 200_000].into()), m)).unwrap();
    t.hard_link("etc/big", "etc/big2").unwrap();
    t.insert("fast", Node::new(NodeKind::Symlink(b"etc/hostname".to_vec()), meta(0o777))).unwrap();
    t.insert("slow", Node::new(NodeKind::Symlink(vec![b'x'; 300]), meta(0o777))).unwrap();
    t.insert("null", Node::new(NodeKind::CharDevice { major: 1, minor: 3 }, meta(0o666))).unwrap();
    t.insert("fifo", Node::new(NodeKind::Fifo, meta(0o600))).unwrap();
    let mut big = meta(0o644);
    big.xattrs.insert(b"user.big".to_vec(), vec![b'v'; 1500]);
    t.insert("xblock", Node::new(NodeKind::File(Vec::new().into()), big)).unwrap();
    t.mkdir_all("many", &meta(0o755)).unwrap();
    for i in 0..dir_entries {
        let mut name = format!("f{i:05}-");
        while name.len() < name_len {
            name.push('n');
        }
        let path = format!("many/{name}");
        let kind = if i % 50 == 0 { NodeKind::Dir(Default::default()) } else { NodeKind::File(Vec::new().into()) };
        t.insert(&path, Node::new(kind, meta(0o644))).unwrap();
    }
    t
}

#[test]
fn small_tree_passes_e2fsck() {
    for (n, len) in [(0, 8), (300, 20), (10_000, 255)] {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("fs.img");
        write_file(&small_tree(n, len), &img, &opts()).unwrap();
        let (ok, text) = e2fsck(&img);
        assert!(ok, "e2fsck failed for {n} entries of {len} bytes:\n{text}");
    }
}

#[test]
fn too_small_names_sizes_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("fs.img");
    let o = Options { size: Some(1 << 20), ..opts() };
    match write_file(&small_tree(3000, 200), &img, &o) {
        Err(e @ Error::TooSmall { needed, available }) => {
            assert!(needed > available);
            let msg = e.to_string();
            assert!(msg.contains(&needed.to_string()) && msg.contains(&available.to_string()), "{msg}");
        }
        r => panic!("expected TooSmall, got {r:?}"),
    }
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "output or temporary file left behind");
}

#[test]
fn dx_hash_matches_debugfs() {
    let seed = [0x0102_0304u32, 0x0506_0708, 0x090a_0b0c, 0x0d0e_0f10];
    let seed_uuid = "04030201-0807-0605-0c0b-0a09100f0e0d";
    // HASHALG_1 is half_md4 over signed chars, what the writer declares in s_flags.
    for name in
        ["a", "lost+found", "f00001-nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "\u{e9}t\u{e9}"]
    {
        let (h, m) = crate::csum::dx_hash(name.as_bytes(), &seed);
        let out = Command::new("debugfs")
            .args(["-R", &format!("dx_hash -h HASHALG_1 -s {seed_uuid} {name}")])
            .output()
            .expect("debugfs (Debian package e2fsprogs) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{h:#x}")) || text.contains(&format!("0x{h:08x}")),
            "{name}: ours {h:#x}/{m:#x}, debugfs: {text}"
        );
    }
}

#[test]
fn write_at_into_a_dirty_byte_range() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let disk = d.path().join("disk");
    let (offset, size) = (3 << 20, 8 << 20);
    // A reused partition: every byte set, before and inside the range.
    std::fs::write(&disk, vec![0xA5u8; (offset + size + (1 << 20)) as usize]).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let o = Options { size: Some(size), ..opts() };
    let report = crate::write_at(&small_tree(500, 30), &f, offset, &o).unwrap();
    assert_eq!(report.size, size);
    let mut part = vec![0u8; size as usize];
    f.read_exact_at(&mut part, offset).unwrap();
    let mut after = vec![0u8; 1 << 20];
    f.read_exact_at(&mut after, offset + size).unwrap();
    assert!(after.iter().all(|&b| b == 0xA5), "wrote past the byte range");
    let img = d.path().join("part.img");
    std::fs::write(&img, &part).unwrap();
    let (ok, text) = e2fsck(&img);
    assert!(ok, "e2fsck failed on a filesystem written into a dirty range:\n{text}");
}

#[test]
fn same_inputs_same_bytes_and_size_option_respected() {
    let d = tempfile::tempdir().unwrap();
    let tree = small_tree(2000, 40);
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    write_file(&tree, &a, &opts()).unwrap();
    write_file(&tree, &b, &opts()).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two runs differ");
    let min = crate::min_size(&tree, &opts()).unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().len(), min);
    // A bigger requested size is honoured exactly (rounded to blocks) and still clean.
    let c = d.path().join("c.img");
    let o = Options { size: Some(300 << 20), ..opts() };
    write_file(&tree, &c, &o).unwrap();
    assert_eq!(std::fs::metadata(&c).unwrap().len(), 300 << 20);
    let (ok, text) = e2fsck(&c);
    assert!(ok, "{text}");
}

#[test]
fn large_file_gets_an_extent_tree_and_reads_back() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    // A sparse 600 MiB + 1 byte source with markers: more than 4 extents of 32768 blocks,
    // split again around the superblock copies of groups 1 and 3, so a leaf block is needed.
    let src = d.path().join("src");
    let len: u64 = (600 << 20) + 1;
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(len).unwrap();
    for (i, off) in [0, 4095, 4096, 128 << 20, (128 << 20) + 4096 * 7, len - 1].iter().enumerate() {
        f.write_all_at(&[i as u8 + 1], *off).unwrap();
    }
    drop(f);
    let mut t = Tree::new(meta(0o755));
    let data = berth_fstree::FileData::Range { path: src.as_path().into(), offset: 0, len };
    t.insert("big", Node::new(NodeKind::File(data), meta(0o644))).unwrap();
    let img = d.path().join("fs.img");
    write_file(&t, &img, &opts()).unwrap();
    let (ok, text) = e2fsck(&img);
    assert!(ok, "{text}");
    let stat = Command::new("debugfs").args(["-R", "stat /big"]).arg(&img).output().unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("(ETB0)"), "expected an extent tree block (depth 1):\n{stat}");
    let out = d.path().join("out");
    let st = Command::new("debugfs").args(["-R", &format!("dump /big {}", out.display())]).arg(&img).output().unwrap();
    assert!(st.status.success());
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(), "content differs after dump");
}

#[test]
fn posix_acl_is_stored_in_ext4_format_and_reads_back() {
    // VFS form: version 2, then (tag u16, perm u16, id u32): USER_OBJ rw, USER 1000 r, GROUP_OBJ r,
    // MASK r, OTHER none.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in
        [(1u16, 6u16, u32::MAX), (2, 4, 1000), (4, 4, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)]
    {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    let mut m = meta(0o640);
    m.xattrs.insert(b"system.posix_acl_access".to_vec(), acl.clone());
    let mut t = Tree::new(meta(0o755));
    t.insert("f", Node::new(NodeKind::File(b"x".as_slice().into()), m)).unwrap();
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("fs.img");
    write_file(&t, &img, &opts()).unwrap();
    let (ok, text) = e2fsck(&img);
    assert!(ok, "{text}");
    // libext2fs converts the on-disk ACL back to the VFS form when reading it.
    let out = d.path().join("acl");
    let st = Command::new("debugfs")
        .args(["-R", &format!("ea_get -f {} /f system.posix_acl_access", out.display())])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());
    let got = std::fs::read(&out).unwrap_or_default();
    // The ids of entries without one are not stored on disk; compare tags, perms and real ids.
    let strip = |v: &[u8]| -> Vec<(u16, u16, Option<u32>)> {
        v[4..]
            .chunks_exact(8)
            .map(|e| {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                (tag, u16::from_le_bytes([e[2], e[3]]), matches!(tag, 2 | 8).then_some(id))
            })
            .collect()
    };
    assert!(got.len() == acl.len(), "ACL read back has {} bytes, expected {}: {got:?}", got.len(), acl.len());
    assert_eq!(strip(&got), strip(&acl));
}

#[test]
fn writable_journaled_filesystem_is_clean_and_has_free_inodes() {
    let d = tempfile::tempdir().unwrap();
    for size in [64u64 << 20, 700 << 20] {
        let img = d.path().join(format!("state-{size}.img"));
        let o = Options::writable("STATE", b"unit", 1_700_000_000, size);
        let report = write_file(&small_tree(20, 10), &img, &o).unwrap();
        assert_eq!(report.size, size);
        assert!(u64::from(report.inodes) >= size / 16384, "{report:?}");
        let (ok, text) = e2fsck(&img);
        assert!(ok, "e2fsck on a journaled filesystem of {size} bytes:\n{text}");
        let out = Command::new("dumpe2fs").arg("-h").arg(&img).output().expect("dumpe2fs (e2fsprogs)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("has_journal"), "{text}");
        assert!(text.contains("Journal backup:           inode blocks"), "{text}");
        let want = if size < 128 << 20 { "Total journal size:       4096k" } else { "Total journal size:       16M" };
        assert!(text.contains(want), "{text}");
    }
}

#[test]
fn writable_filesystem_over_garbage_is_clean_lazy_and_has_an_empty_journal() {
    // What first boot does to STATE on a reused disk (write_at_durably, as berth-init calls it).
    use rand::RngCore;
    use rand_chacha::rand_core::SeedableRng;
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let disk = d.path().join("disk");
    // Three block groups, inside a file of random bytes that held an older filesystem with
    // files at the same place and the same inode density: stale inodes in the same tables.
    let (offset, size) = (1u64 << 20, 3u64 << 27);
    let mut garbage = vec![0u8; (offset + size + (1 << 20)) as usize];
    rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut garbage);
    std::fs::write(&disk, &garbage).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let old = Options { size: Some(size), bytes_per_inode: Some(16384), ..opts() };
    crate::write_at(&small_tree(3000, 30), &f, offset, &old).unwrap();
    let empty = Tree::new(meta(0o755));
    let o = Options::writable("STATE", b"new", 1_800_000_000, size);
    // As first boot formats STATE: the old superblock goes first, the new one comes last.
    let report = crate::write_at_durably(&empty, &f, offset, &o).unwrap();
    assert_eq!(report.size, size);
    let mut after = vec![0u8; 1 << 20];
    f.read_exact_at(&mut after, offset + size).unwrap();
    assert!(after == garbage[(offset + size) as usize..], "wrote past the byte range");
    drop(f);
    let img = d.path().join("part.img");
    std::fs::write(&img, &std::fs::read(&disk).unwrap()[offset as usize..(offset + size) as usize]).unwrap();
    let (ok, text) = e2fsck(&img);
    assert!(ok, "e2fsck failed on a writable filesystem written over garbage:\n{text}");

    // The inode tables past the used inodes were not written, so no group claims them zeroed
    // (the kernel zeroes them after mounting); the stale bytes really are still there.
    let out = Command::new("dumpe2fs").arg(&img).output().expect("dumpe2fs (e2fsprogs)");
    let dump = String::from_utf8_lossy(&out.stdout);
    let groups: Vec<&str> = dump.lines().filter(|l| l.starts_with("Group ")).collect();
    assert_eq!(groups.len(), 3, "{dump}");
    assert!(groups.iter().all(|l| !l.contains("ITABLE_ZEROED")), "{dump}");
    let tables: Vec<usize> = dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Inode table at "))
        .filter_map(|r| r.split('-').next()?.parse().ok())
        .collect();
    assert_eq!(tables.len(), 3, "{dump}");
    let image = std::fs::read(&img).unwrap();
    for (g, t) in tables.iter().enumerate() {
        let second = &image[(t + 1) * 4096..(t + 2) * 4096];
        assert!(second.iter().any(|&b| b != 0), "group {g}: expected stale bytes past the used inode table block");
    }
    // The journal, though, reads as zeros past its superblock: recovery must find nothing.
    let journal = d.path().join("journal");
    let st = Command::new("debugfs").args(["-R", &format!("dump <8> {}", journal.display())]).arg(&img).output();
    assert!(st.unwrap().status.success());
    let journal = std::fs::read(&journal).unwrap();
    assert_eq!(journal.len(), 4096 * 4096, "mke2fs sizes the journal of 384 MiB at 16 MiB");
    assert_eq!(journal[..4], [0xC0, 0x3B, 0x39, 0x98]);
    assert!(journal[4096..].iter().all(|&b| b == 0), "stale bytes in the journal");
}

fn dumpe2fs_h(img: &std::path::Path) -> String {
    let out = Command::new("dumpe2fs").arg("-h").arg(img).output().expect("dumpe2fs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn m7_writable_filesystem_reserves_blocks_for_root() {
    let d = tempfile::tempdir().unwrap();
    // 5% of a small one; 256 MiB (65536 blocks) of a large one, not 5%.
    for (size, want) in [(300u64 << 20, 3840u64), (10 << 30, 65536)] {
        let img = d.path().join(format!("state-{size}.img"));
        let o = Options::writable("STATE", b"unit", 1_700_000_000, size);
        let report = write_file(&Tree::new(meta(0o755)), &img, &o).unwrap();
        assert_eq!(report.reserved_blocks, want);
        let (ok, text) = e2fsck(&img);
        assert!(ok, "e2fsck with {want} reserved blocks:\n{text}");
        let dump = dumpe2fs_h(&img);
        assert!(dump.contains(&format!("Reserved block count:     {want}\n")), "{dump}");
    }
    // The read-only root reserves nothing; more than half is refused.
    let img = d.path().join("root.img");
    write_file(&small_tree(3, 10), &img, &opts()).unwrap();
    assert!(dumpe2fs_h(&img).contains("Reserved block count:     0\n"));
    let o = Options { size: Some(64 << 20), reserved: crate::Reserved::Blocks(9000), ..opts() };
    let e = write_file(&small_tree(3, 10), &d.path().join("half.img"), &o).unwrap_err();
    assert!(e.to_string().contains("more than half"), "{e}");
}

#[test]
fn m6_sixteen_tib_and_more_is_refused_not_written_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("big.img");
    for size in [16u64 << 40, (16 << 40) + (1 << 30), u64::MAX] {
        let o = Options::writable("STATE", b"unit", 1_700_000_000, size);
        match write_file(&Tree::new(meta(0o755)), &img, &o) {
            Err(e @ Error::Invalid(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("64bit") && msg.contains(&size.to_string()), "{msg}");
            }
            r => panic!("{size} bytes: expected a refusal, got {r:?}"),
        }
        assert!(std::fs::read_dir(d.path()).unwrap().next().is_none(), "left a file behind");
    }
    // The largest size without 64bit passes the check (writing it takes 1 GiB of bitmaps).
    let o = Options::writable("STATE", b"unit", 1_700_000_000, crate::MAX_BLOCKS * crate::BLOCK_SIZE);
    o.check().unwrap();
    assert!(crate::geometry::Geometry::new(crate::MAX_BLOCKS + 1, 1).is_none());
}
