//! Shared by the `berth-ext4` integration tests and the `vs_mkfs` bench: a deterministic random
//! file tree, a way to put that tree on the host (for `mkfs.ext4 -d`), and the external tools
//! (e2fsprogs) that judge an image.
//!
//! Each test binary and the bench use a different subset of this module.
#![allow(dead_code)]

pub mod check;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_fstree::{FileData, Metadata, Node, NodeId, NodeKind, ROOT, Tree};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What tree [`generate`] builds. The same parameters always give the same tree.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    /// Regular-file content in bytes, each inode counted once: large files fill up to it, so
    /// the tree has about this much (more if the fixed part and the small files exceed it).
    pub total_bytes: u64,
    /// Names in the tree (what [`Tree::walk`] yields), the root not counted. At least this many.
    pub entries: usize,
    /// Size of `big/`, a directory of 255-byte names: 10,000 of them fill more leaf blocks than
    /// one htree index block can point to, so the writer needs a two-level index.
    pub big_dir_entries: usize,
    /// Size of `mid/`, a directory whose names have every length from 1 to 255 bytes.
    pub mid_dir_entries: usize,
    /// Largest file; the first large file has exactly this size.
    pub max_file: u64,
    /// Leave out what `mkfs.ext4 -d` cannot reproduce (it does not keep hard-linked symlinks
    /// as one inode, nor times past 2106), so that a mkfs-built image can validate the checker.
    pub mkfs_compatible: bool,
}

impl Params {
    /// The acceptance tree of the issue: 20,000+ entries, about 300 MiB.
    pub fn acceptance() -> Self {
        Params {
            seed: 0x00BE_27E4,
            total_bytes: 300 * MIB,
            entries: 20_000,
            big_dir_entries: 10_000,
            mid_dir_entries: 3_000,
            max_file: 10 * MIB,
            mkfs_compatible: false,
        }
    }

    /// The benchmark tree: about 500 MiB in 20,000 entries, built for `mkfs.ext4 -d` too.
    pub fn bench() -> Self {
        Params { total_bytes: 500 * MIB, mkfs_compatible: true, ..Params::acceptance() }
    }
}

/// Where the fixed part of the tree puts things the checks look at by name.
pub const BIG_DIR: &str = "big";

/// Permission bits and owners drawn for ordinary entries.
const FILE_MODES: &[u16] = &[0o644, 0o644, 0o644, 0o755, 0o755, 0o600, 0o444, 0o640, 0o700];
const IDS: &[u32] = &[1, 100, 1000, 65_534, 65_535, 65_536, 100_000, 4_294_967_294];
/// Sizes right at, below and above block and extent-edge boundaries.
const EDGE_SIZES: &[u64] = &[1, 59, 60, 61, 4095, 4096, 4097, 8191, 8192, 8193, 12_287, 12_288, 16_384, 32_768, 65_535];
/// Name bytes: printable ASCII without `/` and `"`, a space, and some multi-byte UTF-8.
const NAME_ASCII: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+=,@~ ";
const NAME_UTF8: &[&str] = &["é", "ß", "Ж", "日", "€", "😀"];

/// Builds the tree described by `p`, with all content in memory.
pub fn generate(p: &Params) -> Tree {
    let mut g = Gen::new(p);
    g.fixed();
    g.big_dir();
    g.mid_dir();
    g.fill_entries();
    g.large_files();
    g.tree
}

struct Gen<'p> {
    p: &'p Params,
    rng: ChaCha8Rng,
    tree: Tree,
    /// Names added so far (directories, files, links...).
    names: usize,
    /// Content bytes added so far, hard links not counted twice.
    bytes: u64,
    /// Mean size of an ordinary (small) file, chosen so the small files take ~80% of the budget.
    small_mean: u64,
    /// Regular files created so far, as hard-link candidates.
    files: Vec<Vec<u8>>,
    /// A 2 KiB xattr value shared by several inodes (ext4 may share one xattr block).
    shared_xattr: Vec<u8>,
}

impl<'p> Gen<'p> {
    fn new(p: &'p Params) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let mut shared_xattr = vec![0u8; 2000];
        rng.fill_bytes(&mut shared_xattr);
        let mut root = Metadata::root(0o755, 1_600_000_000);
        root.xattrs.insert(b"user.root".to_vec(), b"the root directory".to_vec());
        let budget = (p.total_bytes as f64 * 0.8) as u64;
        let small_mean = (budget / p.entries.max(1) as u64).clamp(1, 32 * KIB);
        Gen { p, rng, tree: Tree::new(root), names: 0, bytes: 0, small_mean, files: Vec::new(), shared_xattr }
    }

    // ----- primitives -----

    fn meta(&mut self, mode: u16) -> Metadata {
        let (uid, gid) = if self.rng.random_bool(0.8) {
            (0, 0)
        } else {
            (IDS[self.rng.random_range(0..IDS.len())], IDS[self.rng.random_range(0..IDS.len())])
        };
        Metadata { mode, uid, gid, mtime: self.rng.random_range(1_500_000_000..1_700_000_000), xattrs: BTreeMap::new() }
    }

    fn random_mode(&mut self) -> u16 {
        match self.rng.random_range(0..100) {
            0 => 0o4755,
            1 => 0o2755,
            2 => 0o6711,
            _ => FILE_MODES[self.rng.random_range(0..FILE_MODES.len())],
        }
    }

    fn bytes(&mut self, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.rng.fill_bytes(&mut v);
        v
    }

    fn name(&mut self, len: usize) -> Vec<u8> {
        loop {
            let mut n = Vec::with_capacity(len);
            while n.len() < len {
                if len - n.len() >= 4 && self.rng.random_range(0..10) == 0 {
                    let s = NAME_UTF8[self.rng.random_range(0..NAME_UTF8.len())];
                    if n.len() + s.len() <= len {
                        n.extend_from_slice(s.as_bytes());
                        continue;
                    }
                }
                n.push(NAME_ASCII[self.rng.random_range(0..NAME_ASCII.len())]);
            }
            if n != b"." && n != b".." {
                return n;
            }
        }
    }

    /// A fresh name of `len` bytes in directory `dir`.
    fn unique_name(&mut self, dir: &[u8], len: usize) -> Vec<u8> {
        loop {
            let n = self.name(len);
            if self.tree.lookup(path(&join(dir, &n))).is_none() {
                return n;
            }
        }
    }

    fn mkdir(&mut self, p: &[u8], meta: Metadata) -> NodeId {
        self.names += 1;
        self.tree.insert(path(p), Node::new(NodeKind::Dir(BTreeMap::new()), meta)).unwrap()
    }

    fn file(&mut self, p: &[u8], data: Vec<u8>, meta: Metadata) -> NodeId {
        self.names += 1;
        self.bytes += data.len() as u64;
        self.files.push(p.to_vec());
        self.tree.insert(path(p), Node::new(NodeKind::File(FileData::from(data)), meta)).unwrap()
    }

    fn random_file(&mut self, p: &[u8], size: u64) -> NodeId {
        let data = self.bytes(size);
        let mode = self.random_mode();
        let mut meta = self.meta(mode);
        self.maybe_xattrs(&mut meta);
        self.file(p, data, meta)
    }

    fn symlink(&mut self, p: &[u8], target: Vec<u8>, meta: Metadata) -> NodeId {
        self.names += 1;
        self.tree.insert(path(p), Node::new(NodeKind::Symlink(target), meta)).unwrap()
    }

    fn random_symlink(&mut self, p: &[u8]) -> NodeId {
        // Half fast (target stored in the inode, < 60 bytes), half slow (in a data block).
        let len = if self.rng.random_bool(0.5) {
            self.rng.random_range(1..60)
        } else if self.rng.random_bool(0.9) {
            self.rng.random_range(60..300)
        } else {
            self.rng.random_range(300..=4000)
        };
        let target = self.link_target(len);
        // Linux symlinks always have mode 0777 (there is no lchmod), so a host copy has it too.
        let meta = self.meta(0o777);
        self.symlink(p, target, meta)
    }

    fn link_target(&mut self, len: usize) -> Vec<u8> {
        let mut t = Vec::with_capacity(len);
        while t.len() < len {
            if !t.is_empty() && t.len() + 1 < len && self.rng.random_range(0..12) == 0 {
                t.push(b'/');
            } else {
                t.push(NAME_ASCII[self.rng.random_range(0..NAME_ASCII.len())]);
            }
        }
        t
    }

    fn node(&mut self, p: &[u8], kind: NodeKind, meta: Metadata) -> NodeId {
        self.names += 1;
        self.tree.insert(path(p), Node::new(kind, meta)).unwrap()
    }

    fn hard_link(&mut self, target: &[u8], link: &[u8]) {
        self.names += 1;
        self.tree.hard_link(path(target), path(link)).unwrap();
    }

    fn random_hard_link(&mut self, link: &[u8]) -> bool {
        if self.files.is_empty() {
            return false;
        }
        let target = self.files[self.rng.random_range(0..self.files.len())].clone();
        self.hard_link(&target, link);
        true
    }

    /// Size of an ordinary file: mostly under 64 KiB, some empty, some at block edges.
    fn small_size(&mut self) -> u64 {
        match self.rng.random_range(0..100) {
            0..4 => 0,
            4..10 => EDGE_SIZES[self.rng.random_range(0..EDGE_SIZES.len())],
            _ => self.rng.random_range(1..=(2 * self.small_mean).min(65_535)),
        }
    }

    /// Gives a few ordinary files extended attributes: small ones fit in the inode, large ones
    /// need an xattr block, and the shared one is the same on many inodes.
    fn maybe_xattrs(&mut self, meta: &mut Metadata) {
        match self.rng.random_range(0..200) {
            0..4 => {
                let len = self.rng.random_range(0..40);
                let v = self.bytes(len);
                meta.xattrs.insert(b"user.note".to_vec(), v);
            }
            4 => {
                let len = self.rng.random_range(1024..=3072);
                let v = self.bytes(len);
                meta.xattrs.insert(b"user.big".to_vec(), v);
            }
            5 => {
                meta.xattrs.insert(b"user.shared".to_vec(), self.shared_xattr.clone());
            }
            _ => {}
        }
    }

    // ----- sections -----

    /// Everything the issue names explicitly, at fixed paths.
    fn fixed(&mut self) {
        let dir = |mode| Metadata::root(mode, 1_650_000_000);

        // Sizes at block edges, and content with whole zero blocks (holes, if the writer or
        // mkfs make them, must read back as zeros).
        self.mkdir(b"edges", dir(0o755));
        let mut sizes = vec![0, 1, 59, 60, 61, 4095, 4096, 4097, 8191, 8192, 8193, 12_288];
        sizes.extend([65_535, 65_536, 65_537, 131_072, MIB, MIB + 1, 4 * MIB - 4096]);
        for size in sizes {
            let data = self.bytes(size);
            let meta = self.meta(0o644);
            self.file(format!("edges/size-{size}").as_bytes(), data, meta);
        }
        let mut zeros_middle = self.bytes(4096);
        zeros_middle.extend(vec![0; 3 * 4096]);
        zeros_middle.extend(self.bytes(100));
        self.file(b"edges/zeros-middle", zeros_middle, Metadata::root(0o644, 1_650_000_000));
        let mut zero_tail = self.bytes(4096);
        zero_tail.extend(vec![0; 8192]);
        self.file(b"edges/zeros-tail", zero_tail, Metadata::root(0o644, 1_650_000_000));
        self.file(b"edges/all-zero", vec![0; 65_536], Metadata::root(0o644, 1_650_000_000));
        // Timestamps: the epoch, the last second of 32-bit time, and one past 2038 that needs
        // the extra epoch bits of a large inode. That one is past 2106 too, because ext4-view
        // 1.0 rejects stored seconds of 2^31 and above (2038-2106) instead of reading them as
        // negative as the kernel does; mkfs.ext4 -d 1.47.0 drops the epoch bits, so a tree
        // built for it does without.
        let d = self.bytes(10);
        self.file(b"edges/mtime-0", d, Metadata::root(0o644, 0));
        let d = self.bytes(10);
        self.file(b"edges/mtime-2038", d, Metadata::root(0o644, i32::MAX.into()));
        if !self.p.mkfs_compatible {
            let d = self.bytes(10);
            self.file(b"edges/mtime-2106", d, Metadata::root(0o644, 4_300_000_000));
        }

        // Permission bits and owners.
        self.mkdir(b"modes", dir(0o755));
        for (name, mode, uid, gid) in [
            ("setuid", 0o4755, 0, 0),
            ("setgid", 0o2755, 0, 50),
            ("setuid-setgid", 0o6755, 1000, 1000),
            ("all-bits", 0o7777, 2, 3),
            ("no-bits", 0o0000, 0, 0),
            ("user-1000", 0o640, 1000, 100),
            ("uid-over-16-bits", 0o600, 65_536, 70_000),
            ("uid-max", 0o644, 4_294_967_294, 4_294_967_294),
        ] {
            let data = self.bytes(100);
            let meta = Metadata { uid, gid, ..Metadata::root(mode, 1_650_000_000) };
            self.file(format!("modes/{name}").as_bytes(), data, meta);
        }
        self.mkdir(b"modes/sticky", dir(0o1777));
        self.mkdir(b"modes/setgid-dir", Metadata { gid: 100, ..dir(0o2775) });
        let d = self.bytes(5);
        self.file(b"modes/setgid-dir/inherits", d, Metadata { gid: 100, ..dir(0o664) });
        self.mkdir(b"modes/no-access", Metadata { uid: 1000, gid: 1000, ..dir(0o000) });
        let d = self.bytes(5);
        self.file(b"modes/no-access/hidden", d, Metadata { uid: 1000, gid: 1000, ..dir(0o600) });

        // Devices, a FIFO and a socket; both old-style (8-bit) and new-style device numbers.
        self.mkdir(b"devs", dir(0o755));
        self.node(b"devs/null", NodeKind::CharDevice { major: 1, minor: 3 }, dir(0o666));
        self.node(b"devs/tty5", NodeKind::CharDevice { major: 4, minor: 5 }, Metadata { gid: 5, ..dir(0o620) });
        self.node(b"devs/sda", NodeKind::BlockDevice { major: 8, minor: 0 }, Metadata { gid: 6, ..dir(0o660) });
        self.node(b"devs/nvme", NodeKind::BlockDevice { major: 259, minor: 70_000 }, dir(0o660));
        self.node(b"devs/max", NodeKind::CharDevice { major: 4095, minor: 0xF_FFFF }, dir(0o600));
        self.node(b"devs/fifo", NodeKind::Fifo, Metadata { uid: 1000, ..dir(0o644) });
        self.node(b"devs/socket", NodeKind::Socket, dir(0o755));

        // Symlinks at the fast/slow edge (a 59-byte target fits in the inode, 60 does not) and
        // up to the longest target Linux accepts.
        self.mkdir(b"links", dir(0o755));
        for len in [1, 58, 59, 60, 61, 100, 1000, 4000, 4095] {
            let target = self.link_target(len);
            let meta = Metadata { uid: 1000, gid: 1000, ..dir(0o777) };
            self.symlink(format!("links/symlink-{len}").as_bytes(), target, meta);
        }
        self.symlink(b"links/absolute", b"/edges/size-4096".to_vec(), dir(0o777));
        self.symlink(b"links/relative", b"../edges/size-4096".to_vec(), dir(0o777));
        self.symlink(b"links/dangling", b"does/not/exist".to_vec(), dir(0o777));
        // Hard links: four names in three directories, an empty file, a FIFO, a device.
        self.mkdir(b"links/sub", dir(0o755));
        let d = self.bytes(5000);
        self.file(b"links/hard-a", d, Metadata { uid: 7, gid: 8, ..dir(0o4750) });
        self.hard_link(b"links/hard-a", b"links/hard-b");
        self.hard_link(b"links/hard-a", b"links/sub/hard-c");
        self.hard_link(b"links/hard-a", b"edges/hard-d");
        self.file(b"links/empty-a", Vec::new(), dir(0o644));
        self.hard_link(b"links/empty-a", b"links/sub/empty-b");
        self.hard_link(b"devs/fifo", b"links/fifo-link");
        self.hard_link(b"devs/null", b"links/sub/null-link");
        if !self.p.mkfs_compatible {
            self.hard_link(b"links/symlink-100", b"links/sub/symlink-hard");
        }

        // Extended attributes in the inode, in a block, shared, on every kind of node.
        self.mkdir(b"xattrs", dir(0o755));
        let x = |pairs: &[(&str, Vec<u8>)]| -> Xattrs {
            pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect()
        };
        let big = self.bytes(2500);
        let max = self.bytes(3000);
        let long_name = format!("user.{}", "n".repeat(200));
        // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, then permitted/inheritable for two
        // 32-bit words (the kernel rejects other layouts).
        let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
        cap.extend([0x00, 0x04, 0x00, 0x00]); // CAP_NET_BIND_SERVICE (10) permitted
        cap.extend([0; 12]);
        let many: Vec<(String, Vec<u8>)> =
            (0..24).map(|i| (format!("user.k{i:02}"), format!("{i:040}").into_bytes())).collect();
        let many: Vec<(&str, Vec<u8>)> = many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let cases: Vec<(&str, Xattrs)> = vec![
            ("small", x(&[("user.a", b"1".to_vec()), ("user.b", b"hello world".to_vec())])),
            ("empty-value", x(&[("user.empty", Vec::new())])),
            ("big", x(&[("user.big", big), ("user.small", b"s".to_vec())])),
            ("max", x(&[("user.max", max)])),
            ("many", x(&many)),
            ("long-name", x(&[(long_name.as_str(), b"v".to_vec())])),
            ("capability", x(&[("security.capability", cap)])),
            ("trusted", x(&[("trusted.t", b"trusted value".to_vec()), ("user.u", b"u".to_vec())])),
        ];
        for (name, xattrs) in cases {
            let d = self.bytes(300);
            let meta = Metadata { xattrs, ..dir(0o755) };
            self.file(format!("xattrs/{name}").as_bytes(), d, meta);
        }
        for i in 0..5 {
            let d = self.bytes(1000);
            let xattrs = x(&[("user.shared", self.shared_xattr.clone()), ("user.tag", b"x".to_vec())]);
            self.file(format!("xattrs/shared-{i}").as_bytes(), d, Metadata { xattrs, ..dir(0o644) });
        }
        let xattrs = x(&[("user.dir", b"on a directory".to_vec())]);
        self.mkdir(b"xattrs/dir", Metadata { xattrs, ..dir(0o755) });
        // Linux allows only trusted.* and security.* (not user.*) on symlinks and special files.
        let xattrs = x(&[("trusted.sym", b"on a symlink".to_vec())]);
        self.symlink(b"xattrs/symlink", b"small".to_vec(), Metadata { xattrs, ..dir(0o777) });
        let xattrs = x(&[("trusted.dev", b"on a device".to_vec())]);
        self.node(b"xattrs/device", NodeKind::CharDevice { major: 1, minor: 5 }, Metadata { xattrs, ..dir(0o666) });

        // A path 40 directories deep, with something at every tenth level.
        let mut p = b"deep".to_vec();
        self.mkdir(&p, dir(0o755));
        for level in 1..=40 {
            p.extend_from_slice(format!("/l{level:02}").as_bytes());
            self.mkdir(&p, dir(0o755));
            if level % 10 == 0 {
                let d = self.bytes(level * 100);
                self.file(&join(&p, b"file"), d, dir(0o644));
                self.symlink(&join(&p, b"up"), b"../../..".to_vec(), dir(0o777));
            }
        }

        // 255-byte names for directories, files and symlinks, 10 levels of them.
        let mut p = b"long".to_vec();
        self.mkdir(&p, dir(0o755));
        for _ in 0..10 {
            let n = self.name(255);
            p = join(&p, &n);
            self.mkdir(&p, dir(0o755));
        }
        let n = self.name(255);
        let d = self.bytes(12_345);
        self.file(&join(&p, &n), d, dir(0o644));
        let n = self.name(255);
        self.symlink(&join(&p, &n), b"target".to_vec(), dir(0o777));
    }

    /// One directory of `big_dir_entries` 255-byte names: files mostly, and some symlinks,
    /// hard links to files elsewhere, subdirectories and special files.
    fn big_dir(&mut self) {
        if self.p.big_dir_entries == 0 {
            return;
        }
        let meta = Metadata::root(0o755, 1_650_000_000);
        self.mkdir(BIG_DIR.as_bytes(), meta);
        for _ in 0..self.p.big_dir_entries {
            let n = self.unique_name(BIG_DIR.as_bytes(), 255);
            let p = join(BIG_DIR.as_bytes(), &n);
            match self.rng.random_range(0..100) {
                0..3 => {
                    self.random_symlink(&p);
                }
                3..6 if self.random_hard_link(&p) => {}
                6 => {
                    let meta = self.meta(0o755);
                    self.mkdir(&p, meta);
                    for i in 0..3 {
                        let size = self.small_size();
                        self.random_file(&join(&p, format!("f{i}").as_bytes()), size);
                    }
                }
                7 => {
                    let meta = self.meta(0o644);
                    self.node(&p, NodeKind::Fifo, meta);
                }
                _ => {
                    let size = self.small_size();
                    self.random_file(&p, size);
                }
            }
        }
    }

    /// One directory whose names have random lengths from 1 to 255 bytes.
    fn mid_dir(&mut self) {
        if self.p.mid_dir_entries == 0 {
            return;
        }
        self.mkdir(b"mid", Metadata::root(0o755, 1_650_000_000));
        for _ in 0..self.p.mid_dir_entries {
            let len = self.rng.random_range(1..=255);
            let n = self.unique_name(b"mid", len);
            let p = join(b"mid", &n);
            if self.rng.random_range(0..20) == 0 {
                self.random_symlink(&p);
            } else {
                let size = self.small_size();
                self.random_file(&p, size);
            }
        }
    }

    /// Random directories under `tree/` until the tree has `entries` names.
    fn fill_entries(&mut self) {
        let mut dirs = vec![(b"tree".to_vec(), 0usize)];
        self.mkdir(b"tree", Metadata::root(0o755, 1_650_000_000));
        while self.names < self.p.entries {
            let (parent, depth) = dirs[self.rng.random_range(0..dirs.len())].clone();
            let len = self.rng.random_range(1..=40);
            let n = self.unique_name(&parent, len);
            let p = join(&parent, &n);
            match self.rng.random_range(0..100) {
                0..8 if depth < 8 => {
                    let mode = if self.rng.random_range(0..20) == 0 { 0o1777 } else { 0o755 };
                    let meta = self.meta(mode);
                    self.mkdir(&p, meta);
                    dirs.push((p, depth + 1));
                }
                8..13 => {
                    self.random_symlink(&p);
                }
                13..17 if self.random_hard_link(&p) => {}
                _ => {
                    let size = self.small_size();
                    self.random_file(&p, size);
                }
            }
        }
    }

    /// Large files (1 MiB up to `max_file`, the first exactly `max_file`) for the rest of the
    /// byte budget.
    fn large_files(&mut self) {
        self.mkdir(b"large", Metadata::root(0o755, 1_650_000_000));
        let mut i = 0;
        while self.bytes < self.p.total_bytes {
            let left = self.p.total_bytes - self.bytes;
            let size = if i == 0 {
                self.p.max_file.min(left)
            } else {
                self.rng.random_range(MIB.min(self.p.max_file)..=self.p.max_file).min(left)
            };
            let meta = self.meta(0o644);
            let data = self.bytes(size);
            self.file(format!("large/file-{i:03}").as_bytes(), data, meta);
            i += 1;
        }
    }
}

/// `a/b` from `a` and `b`.
pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut p = a.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(b);
    p
}

/// A tree path (bytes) as a [`Path`].
pub fn path(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// Shows a path for messages, cutting long ones so that a failure list stays readable.
pub fn show(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    if s.chars().count() <= 90 { format!("/{s}") } else { format!("/{}...", s.chars().take(87).collect::<String>()) }
}

/// Puts `tree` into the existing empty directory `dir`: contents, owners, modes, xattrs and
/// mtimes, hard links as hard links. Needs root (owners, device nodes, `trusted.*`).
pub fn materialize(tree: &Tree, dir: &Path) -> std::io::Result<()> {
    materialize_inner(tree, dir).map_err(|(p, e)| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

fn materialize_inner(tree: &Tree, dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};
    let walk = tree.walk();
    let mut first: BTreeMap<NodeId, PathBuf> = BTreeMap::new();
    let set_meta = |p: &Path, node: &Node| -> std::io::Result<()> {
        // Owner first: chown clears setuid/setgid bits and security.capability.
        std::os::unix::fs::lchown(p, Some(node.meta.uid), Some(node.meta.gid))?;
        if !matches!(node.kind, NodeKind::Symlink(_)) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(node.meta.mode.into()))?;
        }
        for (k, v) in &node.meta.xattrs {
            rustix::fs::lsetxattr(p, OsStr::from_bytes(k), v, rustix::fs::XattrFlags::empty())?;
        }
        Ok(())
    };
    let create = |dst: &Path, node: &Node| -> std::io::Result<()> {
        let dev = |kind, major, minor| {
            let mode = Mode::from_raw_mode(node.meta.mode.into());
            rustix::fs::mknodat(CWD, dst, kind, mode, rustix::fs::makedev(major, minor))
        };
        match &node.kind {
            NodeKind::Dir(_) => std::fs::create_dir(dst)?,
            NodeKind::File(data) => std::fs::write(dst, data.read_all().map_err(std::io::Error::other)?)?,
            NodeKind::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), dst)?,
            NodeKind::CharDevice { major, minor } => dev(FileType::CharacterDevice, *major, *minor)?,
            NodeKind::BlockDevice { major, minor } => dev(FileType::BlockDevice, *major, *minor)?,
            NodeKind::Fifo => dev(FileType::Fifo, 0, 0)?,
            NodeKind::Socket => dev(FileType::Socket, 0, 0)?,
        }
        set_meta(dst, node)
    };
    set_meta(dir, tree.node(ROOT)).map_err(|e| (dir.to_path_buf(), e))?;
    for (p, id) in &walk {
        let dst = dir.join(path(p));
        let done = match first.get(id) {
            Some(src) => std::fs::hard_link(src, &dst),
            None => create(&dst, tree.node(*id)),
        };
        done.map_err(|e| (dst.clone(), e))?;
        first.entry(*id).or_insert(dst);
    }
    // Times last, children before parents: adding entries changes a directory's mtime. Node ids
    // grow as a tree is built, so a child always has a larger id than its parent.
    let times = |p: &Path, mtime: i64| {
        let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
        let ts = Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| (p.to_path_buf(), e.into()))
    };
    for (id, p) in first.iter().rev() {
        times(p, tree.node(*id).meta.mtime)?;
    }
    times(dir, tree.node(ROOT).meta.mtime)
}

/// Some facts about a tree, printed by the tests and the bench.
pub fn describe(tree: &Tree) -> String {
    let walk = tree.walk();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut hard_links = 0;
    for (_, id) in &walk {
        if !seen.insert(*id) {
            hard_links += 1;
            continue;
        }
        let k = match &tree.node(*id).kind {
            NodeKind::File(_) => "files",
            NodeKind::Dir(_) => "dirs",
            NodeKind::Symlink(_) => "symlinks",
            _ => "special",
        };
        *kinds.entry(k).or_default() += 1;
    }
    format!(
        "{} entries ({} inodes + root; {kinds:?}, {hard_links} extra hard-link names), {:.1} MiB of content",
        walk.len(),
        seen.len(),
        tree.content_bytes() as f64 / MIB as f64
    )
}

/// The path of an external tool, or a panic that names the Debian package providing it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: it is needed to judge the image (Debian package `{package}`)")
}

/// Runs `e2fsck -fn` on an image: `Ok(output)` if it exits 0, `Err(message)` otherwise.
pub fn e2fsck(image: &Path) -> Result<String, String> {
    let out = Command::new(tool("e2fsck", "e2fsprogs")).arg("-fn").arg(image).output().expect("running e2fsck");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("e2fsck -fn {} failed ({}):\n{text}", image.display(), out.status))
    }
}

/// A scratch directory on a real disk: under the target directory, not `/tmp` (which may be a
/// small tmpfs), since images and trees here take hundreds of MiB. With `BERTH_KEEP_SCRATCH`
/// set it is kept, to look at a failing image.
pub fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let mut dir = tempfile::Builder::new().prefix("berth-ext4-").tempdir_in(base).unwrap();
    if std::env::var_os("BERTH_KEEP_SCRATCH").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}
