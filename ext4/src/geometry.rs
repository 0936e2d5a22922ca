//! Block groups, where their fixed metadata sits, and the block allocator.

use crate::{BLOCK_SIZE, Error};

pub(crate) const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_SIZE;
pub(crate) const INODE_SIZE: u64 = 256;
pub(crate) const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
/// Group descriptor size without the 64bit feature.
pub(crate) const DESC_SIZE: u64 = 32;
/// A last group smaller than this is dropped, as mke2fs does: it would be mostly overhead.
const MIN_LAST_GROUP: u64 = 64;

/// The shape of a filesystem of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub gdt_blocks: u64,
}

impl Geometry {
    /// The geometry of `blocks` blocks holding at least `inodes` inodes, or `None` if the
    /// inodes cannot fit that many groups.
    pub fn new(blocks: u64, inodes: u32) -> Option<Geometry> {
        let mut blocks = blocks;
        let last = blocks % BLOCKS_PER_GROUP;
        if blocks > BLOCKS_PER_GROUP && last != 0 && last < MIN_LAST_GROUP {
            blocks -= last;
        }
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        // Block numbers are 32 bits without the 64bit feature.
        if !(MIN_LAST_GROUP..=crate::MAX_BLOCKS).contains(&blocks) {
            return None;
        }
        let groups = groups as u32;
        let ipg = inodes.div_ceil(groups).max(INODES_PER_BLOCK).next_multiple_of(INODES_PER_BLOCK);
        if u64::from(ipg) > BLOCKS_PER_GROUP || u64::from(ipg) * u64::from(groups) > u64::from(u32::MAX) {
            return None;
        }
        let gdt_blocks = (u64::from(groups) * DESC_SIZE).div_ceil(BLOCK_SIZE);
        Some(Geometry { blocks, groups, inodes_per_group: ipg, gdt_blocks })
    }

    pub fn inodes(&self) -> u32 {
        self.inodes_per_group * self.groups
    }

    pub fn itable_blocks(&self) -> u64 {
        u64::from(self.inodes_per_group / INODES_PER_BLOCK)
    }

    pub fn group_first(&self, g: u32) -> u64 {
        u64::from(g) * BLOCKS_PER_GROUP
    }

    /// Blocks in group `g` (the last one may be short).
    pub fn group_len(&self, g: u32) -> u64 {
        (self.blocks - self.group_first(g)).min(BLOCKS_PER_GROUP)
    }

    /// sparse_super: superblock copies live in groups 0, 1 and powers of 3, 5 and 7.
    pub fn has_super(g: u32) -> bool {
        if g <= 1 {
            return true;
        }
        [3u32, 5, 7].iter().any(|&b| {
            let mut n = g;
            while n.is_multiple_of(b) {
                n /= b;
            }
            n == 1
        })
    }

    /// Groups carrying a superblock and descriptor-table copy.
    pub fn super_groups(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.groups).filter(|&g| Self::has_super(g))
    }

    /// `log2(groups per flex group)`: one flex group spanning the filesystem, since all
    /// bitmaps and inode tables are packed at its start.
    pub fn log_groups_per_flex(&self) -> u8 {
        (self.groups.next_power_of_two().trailing_zeros() as u8).max(4)
    }
}

/// A bump allocator over the block space that steps around superblock copies. Allocation
/// never fails while planning; the caller compares [`Allocator::end`] with the size.
#[derive(Debug, Clone)]
pub(crate) struct Allocator {
    next: u64,
    /// Reserved ranges (start, end) in ascending order: superblock + descriptor copies.
    reserved: Vec<(u64, u64)>,
    /// Free holes skipped to keep a run contiguous.
    pub holes: Vec<(u64, u64)>,
}

impl Allocator {
    pub fn new(geo: &Geometry) -> Allocator {
        let reserved =
            geo.super_groups().map(|g| (geo.group_first(g), geo.group_first(g) + 1 + geo.gdt_blocks)).collect();
        Allocator { next: 0, reserved, holes: Vec::new() }
    }

    /// First block after everything allocated so far (and after the reserved area it is in).
    pub fn end(&self) -> u64 {
        self.next
    }

    fn skip_reserved(&mut self) {
        while let Some(&(_, e)) = self.reserved.iter().find(|&&(s, e)| self.next >= s && self.next < e) {
            self.next = e;
        }
    }

    fn next_reserved_start(&self) -> Option<u64> {
        self.reserved.iter().map(|&(s, _)| s).find(|&s| s >= self.next)
    }

    /// `n` blocks as few runs as possible, in ascending order.
    pub fn alloc(&mut self, n: u64) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut left = n;
        while left > 0 {
            self.skip_reserved();
            let room = self.next_reserved_start().map_or(u64::MAX, |s| s - self.next);
            let take = left.min(room);
            runs.push((self.next, take));
            self.next += take;
            left -= take;
        }
        runs
    }

    /// `n` blocks in one run; space skipped to find it is left free.
    pub fn alloc_contiguous(&mut self, n: u64) -> u64 {
        loop {
            self.skip_reserved();
            let room = self.next_reserved_start().map_or(u64::MAX, |s| s - self.next);
            if room >= n {
                let start = self.next;
                self.next += n;
                return start;
            }
            let hole_end = self.next + room;
            self.holes.push((self.next, hole_end));
            self.next = hole_end;
        }
    }
}

/// The error for a filesystem that needs `needed_blocks` but was given `available_bytes`.
pub(crate) fn too_small(needed_blocks: u64, available_bytes: u64) -> Error {
    Error::TooSmall { needed: needed_blocks * BLOCK_SIZE, available: available_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let g: Vec<u32> = (0..60).filter(|&g| Geometry::has_super(g)).collect();
        assert_eq!(g, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn allocator_steps_around_backups() {
        let geo = Geometry::new(4 * BLOCKS_PER_GROUP, 100).unwrap();
        let mut a = Allocator::new(&geo);
        assert_eq!(a.alloc(1), [(1 + geo.gdt_blocks, 1)]);
        let runs = a.alloc(BLOCKS_PER_GROUP);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].0, BLOCKS_PER_GROUP + 1 + geo.gdt_blocks);
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), BLOCKS_PER_GROUP);
    }
}
