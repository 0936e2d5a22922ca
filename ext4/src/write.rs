//! Encoding inodes, bitmaps, descriptors and superblocks, and writing everything out.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use berth_fstree::FileData;

use crate::csum::{crc32c, inode_seed};
use crate::geometry::{BLOCKS_PER_GROUP, DESC_SIZE, Geometry, INODE_SIZE, INODES_PER_BLOCK};
use crate::plan::{Body, EXTRA_ISIZE, Item, LEAF_EXTENTS, Layout, Plan, ROOT_EXTENTS, XattrPlace, extents};
use crate::{BLOCK_SIZE, Error, Options, Report, xattr};

const BS: usize = BLOCK_SIZE as usize;

const EXTENTS_FL: u32 = 0x0008_0000;
const INDEX_FL: u32 = 0x0000_1000;
const EXTENT_MAGIC: u16 = 0xF30A;

const COMPAT_HAS_JOURNAL: u32 = 0x0004;
const COMPAT_EXT_ATTR: u32 = 0x0008;
const COMPAT_DIR_INDEX: u32 = 0x0020;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// `s_flags`: directory hashes use signed chars (what [`crate::csum::dx_hash`] computes).
const FLAGS_SIGNED_HASH: u32 = 0x0001;
const BG_INODE_ZEROED: u16 = 0x0004;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// ext4 time: the low 32 bits signed, plus two epoch bits in the `_extra` word.
fn time_parts(secs: i64) -> (u32, u32) {
    let lo = secs as i32;
    let epoch = ((secs - i64::from(lo)) >> 32) & 3;
    (lo as u32, epoch as u32)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The extent tree root for the inode, plus any leaf blocks (block number, bytes).
fn extent_tree(runs: &[(u64, u64)], leaves: &[u64], seed: u32) -> ([u8; 60], Vec<(u64, Vec<u8>)>) {
    fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
        put16(b, 0, EXTENT_MAGIC);
        put16(b, 2, entries as u16);
        put16(b, 4, max as u16);
        put16(b, 6, depth);
    }
    fn extent(b: &mut [u8], at: usize, (logical, start, len): (u32, u64, u16)) {
        put32(b, at, logical);
        put16(b, at + 4, len);
        put16(b, at + 6, (start >> 32) as u16);
        put32(b, at + 8, start as u32);
    }
    let ext = extents(runs);
    let mut root = [0u8; 60];
    if leaves.is_empty() {
        header(&mut root, ext.len(), ROOT_EXTENTS, 0);
        for (i, e) in ext.iter().enumerate() {
            extent(&mut root, 12 + i * 12, *e);
        }
        return (root, Vec::new());
    }
    header(&mut root, leaves.len(), ROOT_EXTENTS, 1);
    let mut blocks = Vec::with_capacity(leaves.len());
    for (i, (chunk, &leaf)) in ext.chunks(LEAF_EXTENTS).zip(leaves).enumerate() {
        let at = 12 + i * 12;
        put32(&mut root, at, chunk[0].0);
        put32(&mut root, at + 4, leaf as u32);
        put16(&mut root, at + 8, (leaf >> 32) as u16);
        let mut b = vec![0u8; BS];
        header(&mut b, chunk.len(), LEAF_EXTENTS, 0);
        for (j, e) in chunk.iter().enumerate() {
            extent(&mut b, 12 + j * 12, *e);
        }
        let tail = 12 + LEAF_EXTENTS * 12;
        let csum = crc32c(seed, &b[..tail]);
        put32(&mut b, tail, csum);
        blocks.push((leaf, b));
    }
    (root, blocks)
}

/// Encodes one 256-byte inode with its checksum.
fn encode_inode(item: &Item, i_block: &[u8; 60], blocks: u64, xattr_block: u64, fs_seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; INODE_SIZE as usize];
    let (t, t_extra) = time_parts(item.time);
    put16(&mut b, 0x00, item.st_mode);
    put16(&mut b, 0x02, item.uid as u16);
    put32(&mut b, 0x04, item.size as u32);
    for at in [0x08, 0x0C, 0x10, 0x90] {
        put32(&mut b, at, t);
    }
    for at in [0x84, 0x88, 0x8C, 0x94] {
        put32(&mut b, at, t_extra);
    }
    put16(&mut b, 0x18, item.gid as u16);
    put16(&mut b, 0x1A, item.links);
    let sectors = blocks * (BLOCK_SIZE / 512);
    put32(&mut b, 0x1C, sectors as u32);
    put16(&mut b, 0x74, (sectors >> 32) as u16);
    let mut flags = 0;
    if item.uses_extents() {
        flags |= EXTENTS_FL;
    }
    if item.indexed {
        flags |= INDEX_FL;
    }
    put32(&mut b, 0x20, flags);
    b[0x28..0x28 + 60].copy_from_slice(i_block);
    put32(&mut b, 0x68, xattr_block as u32);
    put16(&mut b, 0x76, (xattr_block >> 32) as u16);
    put32(&mut b, 0x6C, (item.size >> 32) as u32);
    put16(&mut b, 0x78, (item.uid >> 16) as u16);
    put16(&mut b, 0x7A, (item.gid >> 16) as u16);
    put16(&mut b, 0x80, EXTRA_ISIZE);
    if let XattrPlace::InInode(entries) = &item.xattrs {
        xattr::write_in_inode(&mut b[128 + EXTRA_ISIZE as usize..], entries);
    }
    // Checksum over the whole inode with both checksum fields zero.
    let csum = crc32c(inode_seed(fs_seed, item.ino, 0), &b);
    put16(&mut b, 0x7C, csum as u16);
    put16(&mut b, 0x82, (csum >> 16) as u16);
    b
}

/// Counts that go into the superblock and descriptors.
struct Usage {
    group_free_blocks: Vec<u32>,
    group_free_inodes: Vec<u32>,
    group_dirs: Vec<u32>,
    group_itable_unused: Vec<u32>,
    block_bitmaps: Vec<Vec<u8>>,
    inode_bitmaps: Vec<Vec<u8>>,
}

fn usage(plan: &Plan, layout: &Layout) -> Usage {
    let geo = &layout.geo;
    let ipg = geo.inodes_per_group;
    let mut block_bitmaps = Vec::with_capacity(geo.groups as usize);
    let mut group_free_blocks = Vec::with_capacity(geo.groups as usize);
    for g in 0..geo.groups {
        let first = geo.group_first(g);
        let len = geo.group_len(g);
        let mut bm = vec![0u8; BS];
        let used_end = layout.end.clamp(first, first + len) - first;
        // Everything below the allocation end is in use: bump allocation leaves no gaps but holes.
        set_bits(&mut bm, 0, used_end);
        // Superblock copies beyond the allocation end are in use too.
        if Geometry::has_super(g) {
            set_bits(&mut bm, 0, (1 + geo.gdt_blocks).min(len));
        }
        for &(s, e) in &layout.holes {
            let (s, e) = (s.clamp(first, first + len), e.clamp(first, first + len));
            clear_bits(&mut bm, s - first, e - first);
        }
        let used = count_bits(&bm, len);
        group_free_blocks.push((len - used) as u32);
        // Bits past the end of a short last group are set, as e2fsck expects.
        set_bits(&mut bm, len, BLOCKS_PER_GROUP);
        block_bitmaps.push(bm);
    }

    let mut inode_bitmaps = vec![vec![0u8; BS]; geo.groups as usize];
    let mut group_dirs = vec![0u32; geo.groups as usize];
    let mut highest = vec![0u32; geo.groups as usize];
    let mut mark = |ino: u32, is_dir: bool| {
        let (g, i) = (((ino - 1) / ipg) as usize, (ino - 1) % ipg);
        inode_bitmaps[g][(i / 8) as usize] |= 1 << (i % 8);
        highest[g] = highest[g].max(i + 1);
        if is_dir {
            group_dirs[g] += 1;
        }
    };
    for ino in 1..11 {
        mark(ino, false);
    }
    for item in &plan.items {
        mark(item.ino, item.is_dir);
    }
    let mut group_free_inodes = Vec::with_capacity(geo.groups as usize);
    for bm in &mut inode_bitmaps {
        group_free_inodes.push(ipg - count_bits(bm, u64::from(ipg)) as u32);
        set_bits(bm, u64::from(ipg), BLOCKS_PER_GROUP);
    }
    let group_itable_unused = highest.iter().map(|h| ipg - h).collect();
    Usage { group_free_blocks, group_free_inodes, group_dirs, group_itable_unused, block_bitmaps, inode_bitmaps }
}

fn set_bits(bm: &mut [u8], from: u64, to: u64) {
    fill_bits(bm, from, to, true);
}
fn clear_bits(bm: &mut [u8], from: u64, to: u64) {
    fill_bits(bm, from, to, false);
}
/// Sets or clears bits `from..to`, whole bytes at a time in the middle (a large filesystem has
/// thousands of 32768-bit bitmaps; first boot runs this under emulation).
fn fill_bits(bm: &mut [u8], from: u64, to: u64, value: bool) {
    let one = |bm: &mut [u8], i: u64| {
        if value {
            bm[(i / 8) as usize] |= 1 << (i % 8);
        } else {
            bm[(i / 8) as usize] &= !(1 << (i % 8));
        }
    };
    let mut i = from;
    while i < to && !i.is_multiple_of(8) {
        one(bm, i);
        i += 1;
    }
    let whole = (to.saturating_sub(i)) / 8;
    if whole > 0 {
        bm[(i / 8) as usize..(i / 8 + whole) as usize].fill(if value { 0xFF } else { 0 });
        i += whole * 8;
    }
    while i < to {
        one(bm, i);
        i += 1;
    }
}
fn count_bits(bm: &[u8], n: u64) -> u64 {
    let whole = (n / 8) as usize;
    let tail = (0..n % 8).filter(|&k| bm[whole] & (1 << k) != 0).count() as u64;
    bm[..whole].iter().map(|b| u64::from(b.count_ones())).sum::<u64>() + tail
}

/// Group descriptors; `itable_zeroed[g]`: group `g`'s whole inode table reads as zeros (or is
/// written), so the kernel need not zero it.
fn descriptors(layout: &Layout, u: &Usage, itable_zeroed: &[bool], fs_seed: u32) -> Vec<u8> {
    let geo = &layout.geo;
    let mut gdt = vec![0u8; (geo.gdt_blocks * BLOCK_SIZE) as usize];
    let ipg_bytes = (geo.inodes_per_group / 8) as usize;
    for g in 0..geo.groups as usize {
        let d = &mut gdt[g * DESC_SIZE as usize..(g + 1) * DESC_SIZE as usize];
        put32(d, 0x00, layout.block_bitmap[g] as u32);
        put32(d, 0x04, layout.inode_bitmap[g] as u32);
        put32(d, 0x08, layout.inode_table[g] as u32);
        put16(d, 0x0C, u.group_free_blocks[g] as u16);
        put16(d, 0x0E, u.group_free_inodes[g] as u16);
        put16(d, 0x10, u.group_dirs[g] as u16);
        put16(d, 0x12, if itable_zeroed[g] { BG_INODE_ZEROED } else { 0 });
        put16(d, 0x18, crc32c(fs_seed, &u.block_bitmaps[g]) as u16);
        put16(d, 0x1A, crc32c(fs_seed, &u.inode_bitmaps[g][..ipg_bytes]) as u16);
        put16(d, 0x1C, u.group_itable_unused[g] as u16);
        let c = crc32c(crc32c(fs_seed, &(g as u32).to_le_bytes()), &d[..0x1E]);
        let c = crc32c(c, &[0, 0]);
        put16(d, 0x1E, c as u16);
    }
    gdt
}

fn superblock(layout: &Layout, u: &Usage, plan: &Plan, opts: &Options, reserved: u64, group: u32) -> Vec<u8> {
    let geo = &layout.geo;
    let mut s = vec![0u8; 1024];
    let free_blocks: u64 = u.group_free_blocks.iter().map(|&n| u64::from(n)).sum();
    let free_inodes: u32 = u.group_free_inodes.iter().sum();
    put32(&mut s, 0x00, geo.inodes());
    put32(&mut s, 0x04, geo.blocks as u32);
    put32(&mut s, 0x08, reserved as u32);
    put32(&mut s, 0x0C, free_blocks as u32);
    put32(&mut s, 0x10, free_inodes);
    put32(&mut s, 0x18, 2); // log2(block size) - 10
    put32(&mut s, 0x1C, 2);
    put32(&mut s, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut s, 0x28, geo.inodes_per_group);
    put32(&mut s, 0x30, opts.timestamp);
    put16(&mut s, 0x36, 0xFFFF); // no mount-count checks
    put16(&mut s, 0x38, 0xEF53);
    put16(&mut s, 0x3A, 1); // clean
    put16(&mut s, 0x3C, 1); // continue on errors
    put32(&mut s, 0x40, opts.timestamp);
    put32(&mut s, 0x4C, 1); // dynamic revision
    put32(&mut s, 0x54, 11); // first non-reserved inode
    put16(&mut s, 0x58, INODE_SIZE as u16);
    put16(&mut s, 0x5A, group as u16);
    let journal = plan.items.iter().position(|i| matches!(i.body, Body::Journal { .. }));
    put32(&mut s, 0x5C, COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | if journal.is_some() { COMPAT_HAS_JOURNAL } else { 0 });
    if let Some(j) = journal {
        put32(&mut s, 0xE0, plan.items[j].ino);
        // A backup of the journal inode's block map, which e2fsck uses if the inode is damaged.
        s[0xFD] = 1;
        let (i_block, _) = extent_tree(&layout.runs[j], &layout.leaves[j], 0);
        s[0x10C..0x10C + 60].copy_from_slice(&i_block);
        put32(&mut s, 0x10C + 60, (plan.items[j].size >> 32) as u32);
        put32(&mut s, 0x10C + 64, plan.items[j].size as u32);
    }
    put32(&mut s, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_FLEX_BG);
    put32(
        &mut s,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM,
    );
    s[0x68..0x78].copy_from_slice(&opts.uuid);
    let label = opts.label.as_bytes();
    s[0x78..0x78 + label.len()].copy_from_slice(label);
    for (i, w) in plan.hash_seed.iter().enumerate() {
        put32(&mut s, 0xEC + i * 4, *w);
    }
    s[0xFC] = crate::dir::HASH_HALF_MD4;
    put32(&mut s, 0x100, 0x000C); // default mount options: user_xattr, acl
    put32(&mut s, 0x108, opts.timestamp);
    put32(&mut s, 0x150, (geo.blocks >> 32) as u32);
    put32(&mut s, 0x154, (reserved >> 32) as u32);
    put32(&mut s, 0x158, (free_blocks >> 32) as u32);
    put16(&mut s, 0x15C, EXTRA_ISIZE);
    put16(&mut s, 0x15E, EXTRA_ISIZE);
    put32(&mut s, 0x160, FLAGS_SIGNED_HASH);
    s[0x174] = geo.log_groups_per_flex();
    s[0x175] = 1; // crc32c
    let c = crc32c(!0, &s[..0x3FC]);
    put32(&mut s, 0x3FC, c);
    s
}

/// The jbd2 superblock of an empty internal journal (big-endian, as jbd2 is).
fn journal_superblock(blocks: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut j = vec![0u8; BS];
    let be = |j: &mut [u8], at: usize, v: u32| j[at..at + 4].copy_from_slice(&v.to_be_bytes());
    be(&mut j, 0x00, 0xC03B_3998); // magic
    be(&mut j, 0x04, 4); // superblock v2
    be(&mut j, 0x0C, BLOCK_SIZE as u32);
    be(&mut j, 0x10, blocks as u32);
    be(&mut j, 0x14, 1); // first log block
    be(&mut j, 0x18, 1); // first expected commit sequence
    // s_start = 0: the journal is empty, nothing to replay.
    j[0x30..0x40].copy_from_slice(uuid);
    be(&mut j, 0x40, 1); // one user: this filesystem
    j
}

/// Whether `out`'s bytes `start..end` are known to read as zeros: a hole in a regular file (a
/// fresh image). Block devices, and file systems without `SEEK_DATA`, report data: unknown.
fn reads_as_zeros(out: &File, start: u64, end: u64) -> bool {
    use rustix::fs::{SeekFrom, seek};
    if start >= end {
        return true;
    }
    let Ok(pos) = seek(out, SeekFrom::Current(0)) else { return false };
    let zeros = match seek(out, SeekFrom::Data(start)) {
        Ok(data) => data >= end,
        // No data at or after `start`.
        Err(rustix::io::Errno::NXIO) => true,
        Err(_) => false,
    };
    // Writes are positional; the position is put back only because the file is the caller's.
    let _ = seek(out, SeekFrom::Start(pos));
    zeros
}

/// Makes `out`'s bytes `start..end` read as zeros, without sending zeros through memory where
/// the kernel can do it: nothing for a hole; else punching a hole (a file, or a device with
/// write-zeroes or zeroing discard), a zero range (the device zeroes it itself), and only
/// then plain writes.
fn zero_range(out: &File, out_path: &Path, start: u64, end: u64) -> Result<(), Error> {
    use rustix::fs::{FallocateFlags, fallocate};
    if reads_as_zeros(out, start, end) {
        return Ok(());
    }
    for mode in [FallocateFlags::PUNCH_HOLE, FallocateFlags::ZERO_RANGE] {
        if fallocate(out, mode | FallocateFlags::KEEP_SIZE, start, end - start).is_ok() {
            return Ok(());
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut off = start;
    while off < end {
        let n = (end - off).min(zeros.len() as u64) as usize;
        out.write_all_at(&zeros[..n], off).map_err(io_err(out_path))?;
        off += n as u64;
    }
    Ok(())
}

/// Zeros over `runs`, then `first` at their start: stale bytes in a reused partition must not
/// look like journal blocks to recovery. (Not mke2fs's lazy_journal_init: an earlier journal
/// of the same UUID at the same place, as reinstalling an image leaves, could be replayed.)
fn write_zeroed_run(out: &File, out_path: &Path, runs: &[(u64, u64)], first: &[u8], base: u64) -> Result<(), Error> {
    for &(start, len) in runs {
        zero_range(out, out_path, base + start * BLOCK_SIZE, base + (start + len) * BLOCK_SIZE)?;
    }
    if let Some(&(start, _)) = runs.first() {
        out.write_all_at(first, base + start * BLOCK_SIZE).map_err(io_err(out_path))?;
    }
    Ok(())
}

/// Copies `len` bytes from `from` of a file's content to `out` at `offset`, padding the last
/// block with zeros (the output may be a reused partition).
fn write_data(
    out: &File,
    out_path: &Path,
    offset: u64,
    data: &FileData,
    src: &mut Option<File>,
    from: u64,
    len: u64,
) -> Result<(), Error> {
    match data {
        FileData::Memory(bytes) => {
            out.write_all_at(&bytes[from as usize..(from + len) as usize], offset).map_err(io_err(out_path))?
        }
        FileData::Range { path, offset: src_off, .. } => {
            let f = match src {
                Some(f) => f,
                None => src.insert(File::open(path).map_err(io_err(path))?),
            };
            copy_range(f, path, src_off + from, out, out_path, offset, len)?;
        }
    }
    let tail = (len % BLOCK_SIZE) as usize;
    if tail != 0 {
        let zeros = [0u8; BS];
        out.write_all_at(&zeros[..BS - tail], offset + len).map_err(io_err(out_path))?;
    }
    Ok(())
}

/// In-kernel copy (`copy_file_range`), with a plain read/write loop where it is unsupported.
fn copy_range(
    src: &File,
    src_path: &Path,
    src_off: u64,
    out: &File,
    out_path: &Path,
    dst_off: u64,
    len: u64,
) -> Result<(), Error> {
    let short = || Error::Io {
        path: src_path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file is shorter than when the tree was built"),
    };
    let (mut so, mut d, mut left) = (src_off, dst_off, len);
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut so), out, Some(&mut d), chunk) {
            Ok(0) => return Err(short()),
            Ok(n) => left -= n as u64,
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::INVAL
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP,
            ) => {
                let mut buf = vec![0u8; left.min(1 << 20) as usize];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    src.read_exact_at(&mut buf[..n], so).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof { short() } else { io_err(src_path)(e) }
                    })?;
                    out.write_all_at(&buf[..n], d).map_err(io_err(out_path))?;
                    so += n as u64;
                    d += n as u64;
                    left -= n as u64;
                }
            }
            Err(e) => return Err(io_err(src_path)(e.into())),
        }
    }
    Ok(())
}

/// Whether the write must survive a power cut in a way the caller can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durable {
    /// Plain writes, no flushes (an image file, renamed into place when complete).
    No,
    /// The primary superblock zeroed and flushed first, written last after a flush of
    /// everything else, and flushed: the magic number appears only on a whole filesystem. The
    /// first 1024 bytes of block 0 are zeroed after that (see [`crate::write_at_durably`]).
    SuperblockLast,
}

/// Writes one block per entry of `blocks`, merging consecutive block numbers into one write.
fn put_runs(out: &File, out_path: &Path, base: u64, blocks: &[u64], data: &[Vec<u8>]) -> Result<(), Error> {
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i + 1;
        while j < blocks.len() && blocks[j] == blocks[j - 1] + 1 {
            j += 1;
        }
        out.write_all_at(&data[i..j].concat(), base + blocks[i] * BLOCK_SIZE).map_err(io_err(out_path))?;
        i = j;
    }
    Ok(())
}

/// Writes the whole filesystem into `out` at byte `base`. Blocks that must be zero but are not
/// written (inode tables past the used inodes, the journal) are only zeroed where `out` is not
/// known to hold zeros there already.
pub(crate) fn write(
    plan: &Plan,
    layout: &Layout,
    opts: &Options,
    out: &File,
    out_path: &Path,
    base: u64,
    durable: Durable,
) -> Result<Report, Error> {
    let geo = &layout.geo;
    let reserved = opts.reserved.blocks(geo.blocks)?;
    let at = |block: u64| base + block * BLOCK_SIZE;
    let put = |block: u64, bytes: &[u8]| out.write_all_at(bytes, at(block)).map_err(io_err(out_path));
    let flush = || out.sync_data().map_err(io_err(out_path));
    if durable == Durable::SuperblockLast {
        // An older filesystem's superblock must not describe the half-written new one.
        out.write_all_at(&[0u8; BS - 1024], base + 1024).map_err(io_err(out_path))?;
        flush()?;
    }

    // Content first, in allocation order, so the bulk of the writes are sequential.
    // Only the inode-table blocks up to the highest inode in use are built (a large STATE has
    // hundreds of MiB of empty inode table).
    let mut itable = vec![0u8; (u64::from(plan.max_ino) * INODE_SIZE).next_multiple_of(BLOCK_SIZE) as usize];
    for (i, item) in plan.items.iter().enumerate() {
        let runs = &layout.runs[i];
        let seed = inode_seed(plan.fs_seed, item.ino, 0);
        match &item.body {
            Body::Data(d) => {
                // Runs are contiguous except around superblock copies: write per run.
                let mut done = 0u64;
                let mut src = None;
                for &(start, len) in runs {
                    let bytes = (len * BLOCK_SIZE).min(d.len() - done);
                    write_data(out, out_path, at(start), d, &mut src, done, bytes)?;
                    done += bytes;
                }
            }
            Body::Blocks(blocks) => {
                let mut k = 0;
                for &(start, len) in runs {
                    let n = len as usize;
                    put(start, &blocks[k..k + n].concat())?;
                    k += n;
                }
            }
            Body::Journal { blocks } => {
                let jsb = journal_superblock(*blocks, &opts.uuid);
                write_zeroed_run(out, out_path, runs, &jsb, base)?;
            }
            Body::Inline(_) => {}
        }
        let (i_block, leaf_blocks) = match &item.body {
            Body::Inline(b) => (*b, Vec::new()),
            _ => extent_tree(runs, &layout.leaves[i], seed),
        };
        for (nr, bytes) in &leaf_blocks {
            put(*nr, bytes)?;
        }
        let xattr_block = match item.xattrs {
            XattrPlace::Block(n) => layout.xattr_block[n],
            _ => 0,
        };
        let blocks = item.body_blocks() + layout.leaves[i].len() as u64 + u64::from(xattr_block != 0);
        let inode = encode_inode(item, &i_block, blocks, xattr_block, plan.fs_seed);
        let off = (u64::from(item.ino - 1) * INODE_SIZE) as usize;
        itable[off..off + INODE_SIZE as usize].copy_from_slice(&inode);
    }
    for (x, &nr) in plan.xattr_blocks.iter().zip(&layout.xattr_block) {
        put(nr, &xattr::block(&x.entries, x.refcount, nr, plan.fs_seed))?;
    }

    let usage = usage(plan, layout);
    // Inode tables: only the blocks holding used inodes are written. The rest must read as
    // zeros for ITABLE_ZEROED; where that is not known (a reused partition), the flag stays
    // clear and the kernel zeroes them in the background once mounted read-write (mke2fs's
    // lazy_itable_init); until then nothing reads past bg_itable_unused, which metadata_csum
    // makes the kernel and e2fsck honour.
    let per_group = u64::from(geo.inodes_per_group) * INODE_SIZE;
    let itb = geo.itable_blocks();
    let mut itable_zeroed = Vec::with_capacity(geo.groups as usize);
    for g in 0..geo.groups as usize {
        let used = (geo.inodes_per_group - usage.group_itable_unused[g]).div_ceil(INODES_PER_BLOCK);
        let (table, used) = (layout.inode_table[g], u64::from(used));
        if used > 0 {
            let from = (g as u64 * per_group) as usize;
            put(table, &itable[from..from + (used * BLOCK_SIZE) as usize])?;
        }
        itable_zeroed.push(used == itb || reads_as_zeros(out, at(table + used), at(table + itb)));
    }
    // Bitmaps sit in consecutive blocks (flex_bg packing): one write per consecutive run.
    put_runs(out, out_path, base, &layout.block_bitmap, &usage.block_bitmaps)?;
    put_runs(out, out_path, base, &layout.inode_bitmap, &usage.inode_bitmaps)?;
    let gdt = descriptors(layout, &usage, &itable_zeroed, plan.fs_seed);
    let mut primary = None;
    for g in geo.super_groups() {
        let sb = superblock(layout, &usage, plan, opts, reserved, g);
        let first = geo.group_first(g);
        let mut block = vec![0u8; BS];
        // The primary superblock sits 1024 bytes in; copies start their group's first block.
        let off = if g == 0 { 1024 } else { 0 };
        block[off..off + 1024].copy_from_slice(&sb);
        if g == 0 && durable == Durable::SuperblockLast {
            primary = Some(block);
        } else {
            put(first, &block)?;
        }
        put(first + 1, &gdt)?;
    }
    if let Some(block) = primary {
        flush()?;
        out.write_all_at(&block[1024..], base + 1024).map_err(io_err(out_path))?;
        flush()?;
        out.write_all_at(&block[..1024], base).map_err(io_err(out_path))?;
        flush()?;
    }
    let free_blocks: u64 = usage.group_free_blocks.iter().map(|&n| u64::from(n)).sum();
    Ok(Report {
        size: geo.blocks * BLOCK_SIZE,
        blocks: geo.blocks,
        free_blocks,
        inodes: geo.inodes(),
        free_inodes: usage.group_free_inodes.iter().sum(),
        reserved_blocks: reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges_match_bit_by_bit() {
        for from in 0..20u64 {
            for to in from..40u64 {
                let mut fast = vec![0x5Au8; 6];
                let mut slow = fast.clone();
                set_bits(&mut fast, from, to);
                for i in from..to {
                    slow[(i / 8) as usize] |= 1 << (i % 8);
                }
                assert_eq!(fast, slow, "set {from}..{to}");
                clear_bits(&mut fast, from, to);
                for i in from..to {
                    slow[(i / 8) as usize] &= !(1 << (i % 8));
                }
                assert_eq!(fast, slow, "clear {from}..{to}");
                let naive = (0..to).filter(|&i| slow[(i / 8) as usize] & (1 << (i % 8)) != 0).count() as u64;
                assert_eq!(count_bits(&fast, to), naive, "count {to}");
            }
        }
    }
}
