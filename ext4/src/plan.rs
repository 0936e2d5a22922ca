//! From a tree to a list of inodes with their encoded bodies, independent of the size of the
//! filesystem; then, for a given [`Geometry`], where every block goes.

use std::collections::HashMap;

use berth_fstree::{FileData, NodeKind, ROOT, Tree};

use crate::csum::{fs_seed, inode_seed};
use crate::dir::{self, DirEntry};
use crate::geometry::{Allocator, Geometry, INODE_SIZE};
use crate::xattr::{self, Entry};
use crate::{BLOCK_SIZE, Error, Journal, Options};

pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const JOURNAL_INO: u32 = 8;
/// jbd2's smallest journal.
pub(crate) const MIN_JOURNAL_BLOCKS: u32 = 1024;
pub(crate) const LOST_FOUND_INO: u32 = 11;
/// First inode number given to tree nodes; 1–10 are reserved, 11 is lost+found.
const FIRST_TREE_INO: u32 = 12;
/// Bytes in the inode after the 128-byte base and the 32 extra bytes we use.
pub(crate) const EXTRA_ISIZE: u16 = 32;
const IN_INODE_XATTR_SPACE: usize = INODE_SIZE as usize - 128 - EXTRA_ISIZE as usize - 4;
/// A symlink target shorter than this is stored in the inode itself (a fast symlink).
const FAST_SYMLINK_MAX: usize = 59;
/// Longest extent of initialized blocks.
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
/// Extents in the inode's own root, and in one leaf block.
pub(crate) const ROOT_EXTENTS: usize = 4;
pub(crate) const LEAF_EXTENTS: usize = (BLOCK_SIZE as usize - 12) / 12;

/// The content of an inode beyond its fixed fields.
pub(crate) enum Body<'t> {
    /// Nothing outside the inode (device nodes, FIFOs, sockets, fast symlinks).
    Inline([u8; 60]),
    /// Regular file content, copied when written.
    Data(&'t FileData),
    /// Encoded blocks: a directory or a slow symlink.
    Blocks(Vec<Vec<u8>>),
    /// The jbd2 journal: its superblock, then zeros.
    Journal { blocks: u64 },
}

pub(crate) enum XattrPlace {
    None,
    InInode(Vec<Entry>),
    /// Index into [`Plan::xattr_blocks`].
    Block(usize),
}

pub(crate) struct Item<'t> {
    pub ino: u32,
    pub st_mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub time: i64,
    pub links: u16,
    pub size: u64,
    pub indexed: bool,
    pub is_dir: bool,
    pub body: Body<'t>,
    pub xattrs: XattrPlace,
}

impl Item<'_> {
    /// Blocks of the body (data or encoded), without extent-tree blocks.
    pub fn body_blocks(&self) -> u64 {
        match &self.body {
            Body::Inline(_) => 0,
            Body::Data(d) => d.len().div_ceil(BLOCK_SIZE),
            Body::Blocks(b) => b.len() as u64,
            Body::Journal { blocks } => *blocks,
        }
    }

    pub fn uses_extents(&self) -> bool {
        !matches!(self.body, Body::Inline(_))
    }
}

pub(crate) struct XattrBlock {
    pub entries: Vec<Entry>,
    pub refcount: u32,
}

pub(crate) struct Plan<'t> {
    /// Inodes in ascending number order.
    pub items: Vec<Item<'t>>,
    pub xattr_blocks: Vec<XattrBlock>,
    pub fs_seed: u32,
    pub hash_seed: [u32; 4],
    /// Highest inode number in use.
    pub max_ino: u32,
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File(_) => dir::FT_REG,
        NodeKind::Dir(_) => dir::FT_DIR,
        NodeKind::Symlink(_) => dir::FT_SYMLINK,
        NodeKind::CharDevice { .. } => dir::FT_CHR,
        NodeKind::BlockDevice { .. } => dir::FT_BLK,
        NodeKind::Fifo => dir::FT_FIFO,
        NodeKind::Socket => dir::FT_SOCK,
    }
}

/// Device number in the inode: the old 16-bit form when it fits, else the new form in word 1.
fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        b[..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        b[4..8].copy_from_slice(&new.to_le_bytes());
    }
    b
}

/// Links of a directory: `.`, its name, and each subdirectory's `..`; DIR_NLINK caps it at 1.
fn dir_links(subdirs: usize) -> u16 {
    let n = 2 + subdirs;
    if n >= 65000 { 1 } else { n as u16 }
}

impl<'t> Plan<'t> {
    /// `fs_blocks` is the filesystem size when known; it sizes a default journal.
    pub fn new(tree: &'t Tree, opts: &Options, fs_blocks: Option<u64>) -> Result<Plan<'t>, Error> {
        let fs_seed = fs_seed(&opts.uuid);
        let hash_seed: [u32; 4] =
            std::array::from_fn(|i| u32::from_le_bytes(opts.hash_seed[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4])));

        // Inode numbers in walk order (depth first, sorted), so a directory's files sit together.
        let walk = tree.walk();
        let mut ino_of = vec![0u32; tree.node_count()];
        let mut path_of: Vec<&[u8]> = vec![b"/"; tree.node_count()];
        let mut parent_of = vec![ROOT; tree.node_count()];
        ino_of[ROOT] = ROOT_INO;
        let mut next = FIRST_TREE_INO;
        let mut order = vec![ROOT];
        for (path, id) in &walk {
            if ino_of[*id] == 0 {
                ino_of[*id] = next;
                path_of[*id] = path;
                next += 1;
                order.push(*id);
            }
        }
        for (id, _) in tree.nodes() {
            for (_, child) in tree.entries(id) {
                if tree.node(child).kind.is_dir() {
                    parent_of[child] = id;
                }
            }
        }
        let has_lost_found = tree.lookup("lost+found").is_some_and(|id| tree.node(id).kind.is_dir());
        let names = tree.name_counts();

        let mut xattr_blocks: Vec<XattrBlock> = Vec::new();
        let mut block_index: HashMap<Vec<Entry>, usize> = HashMap::new();
        let mut items = Vec::with_capacity(order.len() + 1);
        for &id in &order {
            let node = tree.node(id);
            let ino = ino_of[id];
            let what = || String::from_utf8_lossy(path_of[id]).into_owned();
            let seed = inode_seed(fs_seed, ino, 0);
            let mut indexed = false;
            let (body, size, links) = match &node.kind {
                NodeKind::File(d) => (Body::Data(d), d.len(), names[id]),
                NodeKind::Dir(_) => {
                    let mut children: Vec<DirEntry> = tree
                        .entries(id)
                        .map(|(name, c)| DirEntry { name, ino: ino_of[c], file_type: file_type(&tree.node(c).kind) })
                        .collect();
                    if id == ROOT && !has_lost_found {
                        children.push(DirEntry { name: b"lost+found", ino: LOST_FOUND_INO, file_type: dir::FT_DIR });
                    }
                    let subdirs = children.iter().filter(|c| c.file_type == dir::FT_DIR).count();
                    let enc = dir::encode(ino, ino_of[parent_of[id]], &children, seed, &hash_seed);
                    indexed = enc.indexed;
                    let size = enc.blocks.len() as u64 * BLOCK_SIZE;
                    (Body::Blocks(enc.blocks), size, u32::from(dir_links(subdirs)))
                }
                NodeKind::Symlink(target) => {
                    if target.is_empty() || target.len() >= BLOCK_SIZE as usize {
                        return Err(Error::Invalid(format!(
                            "{}: symlink target length {} is outside 1..4095",
                            what(),
                            target.len()
                        )));
                    }
                    let body = if target.len() <= FAST_SYMLINK_MAX {
                        let mut b = [0u8; 60];
                        b[..target.len()].copy_from_slice(target);
                        Body::Inline(b)
                    } else {
                        let mut b = vec![0u8; BLOCK_SIZE as usize];
                        b[..target.len()].copy_from_slice(target);
                        Body::Blocks(vec![b])
                    };
                    (body, target.len() as u64, names[id])
                }
                NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                    (Body::Inline(device_block(*major, *minor)), 0, names[id])
                }
                NodeKind::Fifo | NodeKind::Socket => (Body::Inline([0; 60]), 0, names[id]),
            };
            if links > u32::from(u16::MAX) {
                return Err(Error::Invalid(format!("{}: {links} hard links, ext4 allows 65535", what())));
            }
            let entries = xattr::entries(&node.meta.xattrs, &what())?;
            let xattrs = if entries.is_empty() {
                XattrPlace::None
            } else if xattr::fits_in_inode(&entries, IN_INODE_XATTR_SPACE) {
                XattrPlace::InInode(entries)
            } else if xattr::fits_in_block(&entries) {
                // Identical attribute sets share one block, as the kernel's mbcache would.
                let n = *block_index.entry(entries.clone()).or_insert_with(|| {
                    xattr_blocks.push(XattrBlock { entries, refcount: 0 });
                    xattr_blocks.len() - 1
                });
                xattr_blocks[n].refcount += 1;
                XattrPlace::Block(n)
            } else {
                return Err(Error::Invalid(format!("{}: extended attributes exceed one 4 KiB block", what())));
            };
            let st_mode = node.st_mode() as u16;
            items.push(Item {
                ino,
                st_mode,
                uid: node.meta.uid,
                gid: node.meta.gid,
                time: node.meta.mtime,
                links: links as u16,
                size,
                indexed,
                is_dir: node.kind.is_dir(),
                body,
                xattrs,
            });
        }
        if !has_lost_found {
            let seed = inode_seed(fs_seed, LOST_FOUND_INO, 0);
            let enc = dir::encode(LOST_FOUND_INO, ROOT_INO, &[], seed, &hash_seed);
            let root = tree.node(ROOT);
            items.push(Item {
                ino: LOST_FOUND_INO,
                st_mode: 0o040700,
                uid: 0,
                gid: 0,
                time: root.meta.mtime,
                links: 2,
                size: BLOCK_SIZE,
                indexed: false,
                is_dir: true,
                body: Body::Blocks(enc.blocks),
                xattrs: XattrPlace::None,
            });
        }
        let journal_blocks = match opts.journal {
            Journal::None => None,
            Journal::Blocks(n) => Some(u64::from(n)),
            Journal::Default => Some(default_journal_blocks(fs_blocks.unwrap_or(0))),
        };
        if let Some(blocks) = journal_blocks {
            items.push(Item {
                ino: JOURNAL_INO,
                st_mode: 0o100600,
                uid: 0,
                gid: 0,
                time: i64::from(opts.timestamp),
                links: 1,
                size: blocks * BLOCK_SIZE,
                indexed: false,
                is_dir: false,
                body: Body::Journal { blocks },
                xattrs: XattrPlace::None,
            });
        }
        items.sort_by_key(|i| i.ino);
        let max_ino = items.last().map_or(LOST_FOUND_INO, |i| i.ino).max(LOST_FOUND_INO);
        Ok(Plan { items, xattr_blocks, fs_seed, hash_seed, max_ino })
    }

    /// Inodes the filesystem must have.
    pub fn inodes_needed(&self) -> u32 {
        self.max_ino
    }

    /// Lower bound of the blocks the content needs, metadata excluded.
    pub fn content_blocks(&self) -> u64 {
        self.items.iter().map(|i| i.body_blocks()).sum::<u64>() + self.xattr_blocks.len() as u64
    }
}

/// mke2fs's journal size for a filesystem of `blocks` blocks: 4 MiB up to 1 GiB.
fn default_journal_blocks(blocks: u64) -> u64 {
    const STEPS: [(u64, u64); 7] = [
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
        (u64::MAX, 262144),
    ];
    if blocks < 32768 {
        return u64::from(MIN_JOURNAL_BLOCKS);
    }
    STEPS.iter().find(|(limit, _)| blocks < *limit).map_or(262144, |s| s.1)
}

/// Where every block goes for one geometry.
pub(crate) struct Layout {
    pub geo: Geometry,
    pub block_bitmap: Vec<u64>,
    pub inode_bitmap: Vec<u64>,
    pub inode_table: Vec<u64>,
    pub xattr_block: Vec<u64>,
    /// Per item (same order as [`Plan::items`]): its body's block runs.
    pub runs: Vec<Vec<(u64, u64)>>,
    /// Per item: extent-tree leaf blocks, when the extents outgrow the inode.
    pub leaves: Vec<Vec<u64>>,
    /// First block past everything allocated.
    pub end: u64,
    pub holes: Vec<(u64, u64)>,
}

/// Extents (logical block, physical start, length) of a list of runs.
pub(crate) fn extents(runs: &[(u64, u64)]) -> Vec<(u32, u64, u16)> {
    let mut out = Vec::new();
    let mut logical = 0u64;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_EXTENT_LEN);
            out.push((logical as u32, start + done, n as u16));
            logical += n;
            done += n;
        }
    }
    // 32768 is stored as 32768: the high bit only means "uninitialized" above that value.
    out
}

impl Layout {
    pub fn new(plan: &Plan, geo: Geometry) -> Result<Layout, Error> {
        let mut a = Allocator::new(&geo);
        let g = geo.groups as u64;
        // All bitmaps and inode tables packed at the start (flex_bg), then content.
        let bb = a.alloc_contiguous(g);
        let ib = a.alloc_contiguous(g);
        let inode_table = (0..geo.groups).map(|_| a.alloc_contiguous(geo.itable_blocks())).collect();
        let xattr_block = plan.xattr_blocks.iter().map(|_| a.alloc_contiguous(1)).collect();
        let mut runs = Vec::with_capacity(plan.items.len());
        let mut leaves = Vec::with_capacity(plan.items.len());
        for item in &plan.items {
            let r = a.alloc(item.body_blocks());
            let n = extents(&r).len();
            let l = if n > ROOT_EXTENTS {
                let count = n.div_ceil(LEAF_EXTENTS);
                if count > ROOT_EXTENTS {
                    return Err(Error::Invalid(format!("inode {}: file too large ({n} extents)", item.ino)));
                }
                (0..count).map(|_| a.alloc_contiguous(1)).collect()
            } else {
                Vec::new()
            };
            runs.push(r);
            leaves.push(l);
        }
        Ok(Layout {
            geo,
            block_bitmap: (0..g).map(|i| bb + i).collect(),
            inode_bitmap: (0..g).map(|i| ib + i).collect(),
            inode_table,
            xattr_block,
            runs,
            leaves,
            end: a.end(),
            holes: a.holes,
        })
    }
}

/// The smallest layout holding `plan`.
pub(crate) fn smallest(plan: &Plan) -> Result<Layout, Error> {
    let inodes = plan.inodes_needed();
    let mut blocks = (plan.content_blocks() + 64).max(256);
    loop {
        let geo = Geometry::new(blocks, inodes)
            .ok_or_else(|| Error::Invalid(format!("{inodes} inodes cannot fit an ext4 filesystem")))?;
        let layout = Layout::new(plan, geo)?;
        if layout.end <= geo.blocks {
            // Shrink to what is used, if that keeps the same group structure.
            if let Some(tight) = Geometry::new(layout.end.max(256), inodes)
                && tight.groups == geo.groups
                && tight.inodes_per_group == geo.inodes_per_group
            {
                let l = Layout::new(plan, tight)?;
                if l.end <= tight.blocks {
                    return Ok(l);
                }
            }
            return Ok(layout);
        }
        blocks = layout.end + (layout.end - geo.blocks).max(16);
    }
}
