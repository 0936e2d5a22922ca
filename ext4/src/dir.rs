//! Directory blocks: linear blocks for small directories, hashed (htree) directories for the
//! rest, each block with its metadata checksum.

use crate::BLOCK_SIZE;
use crate::csum::{crc32c, dx_hash};

const BS: usize = BLOCK_SIZE as usize;
/// The checksum tail (a fake entry) at the end of every leaf block.
const TAIL: usize = 12;
/// Bytes of a leaf block usable by entries.
const LEAF_SPACE: usize = BS - TAIL;
/// dx_root: `.` (12) + `..` header (12) + root info (8), then count/limit.
const ROOT_COUNT_OFFSET: usize = 32;
/// dx_node: one empty fake entry (8), then count/limit.
const NODE_COUNT_OFFSET: usize = 8;
/// The dx tail (reserved + checksum) that follows the `limit` index entries.
const DX_TAIL: usize = 8;
const ROOT_LIMIT: usize = (BS - ROOT_COUNT_OFFSET - DX_TAIL) / 8;
const NODE_LIMIT: usize = (BS - NODE_COUNT_OFFSET - DX_TAIL) / 8;
/// `s_def_hash_version` and dx_root hash version: half_md4 (signed via `s_flags`).
pub(crate) const HASH_HALF_MD4: u8 = 1;

pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

/// One directory entry to be written.
pub(crate) struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub file_type: u8,
}

/// Encoded directory content.
pub(crate) struct DirBlocks {
    pub blocks: Vec<Vec<u8>>,
    /// Whether the directory is hashed (the inode gets `EXT4_INDEX_FL`).
    pub indexed: bool,
}

fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

fn put_entry(b: &mut [u8], at: usize, ino: u32, rec: usize, name: &[u8], ft: u8) {
    b[at..at + 4].copy_from_slice(&ino.to_le_bytes());
    b[at + 4..at + 6].copy_from_slice(&(rec as u16).to_le_bytes());
    b[at + 6] = name.len() as u8;
    b[at + 7] = ft;
    b[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

/// One leaf block holding `entries`; the last entry stretches to the checksum tail.
fn leaf_block(entries: &[(&[u8], u32, u8)], seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    let mut pos = 0;
    for (i, &(name, ino, ft)) in entries.iter().enumerate() {
        let rec = if i + 1 == entries.len() { LEAF_SPACE - pos } else { rec_len(name.len()) };
        put_entry(&mut b, pos, ino, rec, name, ft);
        pos += rec;
    }
    if entries.is_empty() {
        // An empty leaf is one unused entry spanning the block.
        put_entry(&mut b, 0, 0, LEAF_SPACE, b"", 0);
    }
    // Tail: inode 0, rec_len 12, name_len 0, file type 0xDE, checksum.
    b[LEAF_SPACE + 4..LEAF_SPACE + 6].copy_from_slice(&(TAIL as u16).to_le_bytes());
    b[LEAF_SPACE + 7] = 0xDE;
    let csum = crc32c(seed, &b[..LEAF_SPACE]);
    b[LEAF_SPACE + 8..].copy_from_slice(&csum.to_le_bytes());
    b
}

/// Splits entries (already in order, given by their record sizes) into runs that each fit one
/// leaf block; returns the index of each run's first entry.
fn pack(sizes: &[usize]) -> Vec<usize> {
    let mut starts = vec![0];
    let mut used = 0;
    for (i, &s) in sizes.iter().enumerate() {
        if used + s > LEAF_SPACE {
            starts.push(i);
            used = 0;
        }
        used += s;
    }
    starts
}

/// Encodes a directory with inode `ino` whose parent is `parent`. `seed` is the inode's
/// checksum seed; `hash_seed` the filesystem's directory hash seed.
pub(crate) fn encode(ino: u32, parent: u32, children: &[DirEntry], seed: u32, hash_seed: &[u32; 4]) -> DirBlocks {
    let dot: (&[u8], u32, u8) = (b".", ino, FT_DIR);
    let dotdot: (&[u8], u32, u8) = (b"..", parent, FT_DIR);
    let total: usize = 12 + 12 + children.iter().map(|c| rec_len(c.name.len())).sum::<usize>();
    if total <= LEAF_SPACE {
        let mut all = vec![dot, dotdot];
        all.extend(children.iter().map(|c| (c.name, c.ino, c.file_type)));
        return DirBlocks { blocks: vec![leaf_block(&all, seed)], indexed: false };
    }

    // Hashed: sort by (hash, minor hash), pack into leaves, index the leaves.
    let mut hashed: Vec<(u32, u32, &DirEntry)> = children
        .iter()
        .map(|c| {
            let (h, m) = dx_hash(c.name, hash_seed);
            (h, m, c)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));
    let sizes: Vec<usize> = hashed.iter().map(|e| rec_len(e.2.name.len())).collect();
    let starts = pack(&sizes);
    let mut leaves = Vec::with_capacity(starts.len());
    // Lowest hash of each leaf; the low bit marks a leaf continuing a run of equal hashes.
    let mut leaf_hash = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let e = starts.get(n + 1).copied().unwrap_or(hashed.len());
        let run: Vec<_> = hashed[s..e].iter().map(|x| (x.2.name, x.2.ino, x.2.file_type)).collect();
        leaves.push(leaf_block(&run, seed));
        let h = hashed[s].0;
        let continued = s > 0 && hashed[s - 1].0 == h;
        leaf_hash.push(if continued { h | 1 } else { h });
    }

    let mut root = vec![0u8; BS];
    put_entry(&mut root, 0, ino, 12, b".", FT_DIR);
    put_entry(&mut root, 12, parent, BS - 12, b"..", FT_DIR);
    root[28] = HASH_HALF_MD4;
    root[29] = 8; // info length

    if leaves.len() <= ROOT_LIMIT {
        // One level: root → leaves at logical blocks 1..
        let targets: Vec<(u32, u32)> = leaf_hash.iter().enumerate().map(|(i, &h)| (h, 1 + i as u32)).collect();
        fill_index(&mut root, ROOT_COUNT_OFFSET, ROOT_LIMIT, &targets, seed);
        let mut blocks = vec![root];
        blocks.extend(leaves);
        return DirBlocks { blocks, indexed: true };
    }

    // Two levels: root → nodes (logical 1..=n) → leaves (after the nodes).
    root[30] = 1; // indirect levels
    let nodes_n = leaves.len().div_ceil(NODE_LIMIT);
    let first_leaf = 1 + nodes_n as u32;
    let mut nodes = Vec::with_capacity(nodes_n);
    let mut root_targets = Vec::with_capacity(nodes_n);
    for (k, chunk) in leaf_hash.chunks(NODE_LIMIT).enumerate() {
        let base = k * NODE_LIMIT;
        let targets: Vec<(u32, u32)> =
            chunk.iter().enumerate().map(|(i, &h)| (h, first_leaf + (base + i) as u32)).collect();
        let mut node = vec![0u8; BS];
        // A fake empty entry spanning the block hides the index from linear readers.
        node[4..6].copy_from_slice(&(BS as u16).to_le_bytes());
        fill_index(&mut node, NODE_COUNT_OFFSET, NODE_LIMIT, &targets, seed);
        nodes.push(node);
        root_targets.push((chunk[0], 1 + k as u32));
    }
    fill_index(&mut root, ROOT_COUNT_OFFSET, ROOT_LIMIT, &root_targets, seed);
    let mut blocks = vec![root];
    blocks.extend(nodes);
    blocks.extend(leaves);
    DirBlocks { blocks, indexed: true }
}

/// Writes count/limit and the (hash, block) entries at `at`, then the dx tail checksum.
/// The first entry's hash slot holds count/limit, so its hash is implied.
fn fill_index(b: &mut [u8], at: usize, limit: usize, targets: &[(u32, u32)], seed: u32) {
    b[at..at + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    b[at + 2..at + 4].copy_from_slice(&(targets.len() as u16).to_le_bytes());
    for (i, &(hash, block)) in targets.iter().enumerate() {
        let e = at + i * 8;
        if i > 0 {
            b[e..e + 4].copy_from_slice(&hash.to_le_bytes());
        }
        b[e + 4..e + 8].copy_from_slice(&block.to_le_bytes());
    }
    let tail = at + limit * 8;
    let csum = crc32c(crc32c(seed, &b[..at + targets.len() * 8]), &b[tail..tail + 4]);
    let csum = crc32c(csum, &[0; 4]);
    b[tail + 4..tail + 8].copy_from_slice(&csum.to_le_bytes());
}
