//! Reading an existing ext4 superblock (any block size, as mke2fs or this crate wrote it):
//! whether it is whole, where its backups are, the health it records, and turning a backup
//! into a primary. What berth-init needs to check STATE before mounting it and to repair a
//! damaged primary superblock instead of formatting.

use crate::csum::{crc32c, fs_seed};

/// Byte offset of the primary superblock, whatever the block size.
pub const PRIMARY_OFFSET: u64 = 1024;
/// Bytes of a superblock.
pub const SIZE: usize = 1024;

const MAGIC: u16 = 0xEF53;
const COMPAT_HAS_JOURNAL: u32 = 0x0004;
const INCOMPAT_RECOVER: u32 = 0x0004;
const INCOMPAT_64BIT: u32 = 0x0080;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// `s_state` bits.
const STATE_VALID: u16 = 0x0001;
const STATE_ERROR: u16 = 0x0002;
const STATE_ORPHANS: u16 = 0x0004;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// A superblock that passed [`Superblock::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    raw: Vec<u8>,
    /// Block size in bytes.
    pub block_size: u64,
    /// Filesystem size in blocks.
    pub blocks: u64,
    /// `s_blocks_per_group`.
    pub blocks_per_group: u64,
    /// `s_first_data_block`: 1 for 1 KiB blocks, else 0.
    pub first_data_block: u64,
    /// `s_block_group_nr`: the group this copy sits in (0 for the primary).
    pub group_nr: u16,
    /// Size of a group descriptor in bytes (32, or `s_desc_size` with the 64bit feature).
    pub desc_size: u64,
    /// The `metadata_csum` feature: metadata carries crc32c checksums.
    pub metadata_csum: bool,
    /// The `64bit` feature.
    pub is_64bit: bool,
    /// The `has_journal` feature.
    pub has_journal: bool,
    /// The `sparse_super` feature: backup superblocks only in groups 0, 1 and powers of 3, 5, 7.
    pub sparse_super: bool,
    /// State and recorded errors.
    pub health: Health,
}

/// What the superblock records about the filesystem's health (`s_state`, `s_errors`,
/// `s_error_count` and the first and last error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `s_state`: bit 0 cleanly unmounted, bit 1 errors detected, bit 2 orphans being recovered.
    pub state: u16,
    /// `s_errors`: what the kernel does on an error (1 continue, 2 remount read-only, 3 panic).
    pub errors_behaviour: u16,
    /// `s_error_count`.
    pub error_count: u32,
    /// The first error recorded, if any.
    pub first_error: Option<ErrorRecord>,
    /// The latest error recorded, if any.
    pub last_error: Option<ErrorRecord>,
}

/// One error the kernel recorded in the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// Seconds since the epoch.
    pub time: u32,
    /// The kernel function that reported it.
    pub function: String,
    /// Its source line.
    pub line: u32,
    /// The inode concerned (0 if none).
    pub inode: u32,
    /// The block concerned (0 if none).
    pub block: u64,
}

impl Health {
    /// The kernel or e2fsck found an error and nothing has repaired it since.
    pub fn has_errors(&self) -> bool {
        self.state & STATE_ERROR != 0 || self.error_count > 0
    }

    /// `clean`, `not clean`, with `, errors` and `, orphans being processed` as they apply.
    pub fn state_text(&self) -> String {
        let mut s = String::from(if self.state & STATE_VALID != 0 { "clean" } else { "not clean" });
        if self.state & STATE_ERROR != 0 {
            s.push_str(", errors");
        }
        if self.state & STATE_ORPHANS != 0 {
            s.push_str(", orphans being processed");
        }
        s
    }

    /// `continue`, `remount-ro` or `panic`, as `errors=` names them.
    pub fn errors_text(&self) -> String {
        match self.errors_behaviour {
            1 => "continue".into(),
            2 => "remount-ro".into(),
            3 => "panic".into(),
            n => format!("unknown ({n})"),
        }
    }
}

impl std::fmt::Display for ErrorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {} s in {}:{}", self.time, self.function, self.line)?;
        if self.inode != 0 {
            write!(f, ", inode {}", self.inode)?;
        }
        if self.block != 0 {
            write!(f, ", block {}", self.block)?;
        }
        Ok(())
    }
}

fn error_record(b: &[u8], time: usize, ino: usize, block: usize, func: usize, line: usize) -> Option<ErrorRecord> {
    let time = u32_at(b, time);
    if time == 0 {
        return None;
    }
    let name = &b[func..func + 32];
    let end = name.iter().position(|&c| c == 0).unwrap_or(32);
    Some(ErrorRecord {
        time,
        function: String::from_utf8_lossy(&name[..end]).into_owned(),
        line: u32_at(b, line),
        inode: u32_at(b, ino),
        block: u64_at(b, block),
    })
}

impl Superblock {
    /// Parses and checks a superblock: the magic number, its checksum (with `metadata_csum`)
    /// and a plausible geometry. The error says what is wrong.
    pub fn parse(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < SIZE {
            return Err(format!("{} bytes, not a superblock", b.len()));
        }
        let b = &b[..SIZE];
        if u16_at(b, 0x38) != MAGIC {
            return Err(format!("no ext4 magic number (0x{:04X} where 0xEF53 belongs)", u16_at(b, 0x38)));
        }
        let (incompat, ro_compat) = (u32_at(b, 0x60), u32_at(b, 0x64));
        let metadata_csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        if metadata_csum {
            let (want, got) = (crc32c(!0, &b[..0x3FC]), u32_at(b, 0x3FC));
            if want != got {
                return Err(format!("superblock checksum 0x{got:08X} where its bytes give 0x{want:08X}"));
            }
        }
        let log = u32_at(b, 0x18);
        let per_group = u64::from(u32_at(b, 0x20));
        if log > 6 {
            return Err(format!("implausible block size (log {log})"));
        }
        let block_size = 1024u64 << log;
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let blocks = u64::from(u32_at(b, 0x04)) | if is_64bit { u64::from(u32_at(b, 0x150)) << 32 } else { 0 };
        let first_data_block = u64::from(u32_at(b, 0x14));
        if per_group == 0 || per_group > 8 * block_size || blocks <= first_data_block || u32_at(b, 0x28) == 0 {
            return Err(format!("implausible geometry ({blocks} blocks of {block_size} bytes, {per_group} per group)"));
        }
        if first_data_block != u64::from(block_size == 1024) {
            return Err(format!("first data block {first_data_block} with {block_size}-byte blocks"));
        }
        let health = Health {
            state: u16_at(b, 0x3A),
            errors_behaviour: u16_at(b, 0x3C),
            error_count: u32_at(b, 0x194),
            first_error: error_record(b, 0x198, 0x19C, 0x1A0, 0x1A8, 0x1C8),
            last_error: error_record(b, 0x1CC, 0x1D0, 0x1D8, 0x1E0, 0x1D4),
        };
        Ok(Superblock {
            raw: b.to_vec(),
            block_size,
            blocks,
            blocks_per_group: per_group,
            first_data_block,
            group_nr: u16_at(b, 0x5A),
            desc_size: if is_64bit { u64::from(u16_at(b, 0xFE)).max(32) } else { 32 },
            metadata_csum,
            is_64bit,
            has_journal: u32_at(b, 0x5C) & COMPAT_HAS_JOURNAL != 0,
            sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
            health,
        })
    }

    /// The superblock's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Block groups of the filesystem.
    pub fn groups(&self) -> u64 {
        (self.blocks - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// This backup made the primary: group number 0, "needs recovery" set if
    /// `journal_needs_recovery` (a backup never records it, and without it the kernel would
    /// discard the journal's transactions), checksum recomputed.
    pub fn as_primary(&self, journal_needs_recovery: bool) -> Vec<u8> {
        let mut b = self.raw.clone();
        b[0x5A..0x5C].copy_from_slice(&0u16.to_le_bytes());
        if self.has_journal && journal_needs_recovery {
            let incompat = u32_at(&b, 0x60) | INCOMPAT_RECOVER;
            b[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        }
        if self.metadata_csum {
            let c = crc32c(!0, &b[..0x3FC]);
            b[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
        }
        b
    }

    /// Byte offset of the journal's first block (its jbd2 superblock), from the copy of the
    /// journal inode's extent root the superblock keeps (`s_jnl_blocks`); `None` without a
    /// journal or when that copy is not a one-level extent tree starting at block 0.
    pub fn journal_offset(&self) -> Option<u64> {
        let i = &self.raw[0x10C..0x10C + 60];
        if !self.has_journal || self.raw[0xFD] != 1 || u16_at(i, 0) != 0xF30A || u16_at(i, 2) == 0 {
            return None;
        }
        if u16_at(i, 6) != 0 || u32_at(i, 12) != 0 {
            return None;
        }
        let start = u64::from(u16_at(i, 18)) << 32 | u64::from(u32_at(i, 20));
        (start > self.first_data_block && start < self.blocks).then_some(start * self.block_size)
    }

    /// Byte offset of the block after the primary superblock: the first block of group
    /// descriptors (with `meta_bg` too: the first meta group's).
    pub fn primary_descriptors_offset(&self) -> u64 {
        (self.first_data_block + 1) * self.block_size
    }

    /// Whether `block` (the descriptor block at [`Superblock::primary_descriptors_offset`])
    /// holds this filesystem's descriptors for its first groups: each one's checksum (with
    /// `metadata_csum`) matches, and its bitmaps and inode table lie inside the filesystem.
    /// A backup superblock that fails this belongs to another (older) filesystem, or the
    /// descriptors are damaged too.
    pub fn descriptors_match(&self, block: &[u8]) -> Result<(), String> {
        let per_block = (self.block_size / self.desc_size) as usize;
        let n = (self.groups() as usize).min(per_block).min(block.len() / self.desc_size as usize);
        let seed = if u32_at(&self.raw, 0x60) & INCOMPAT_CSUM_SEED != 0 {
            u32_at(&self.raw, 0x270)
        } else {
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&self.raw[0x68..0x78]);
            fs_seed(&uuid)
        };
        let ds = self.desc_size as usize;
        for g in 0..n {
            let d = &block[g * ds..(g + 1) * ds];
            let hi = |at: usize| if self.is_64bit && ds >= 64 { u64::from(u32_at(d, at)) << 32 } else { 0 };
            for (what, lo, hi_at) in
                [("block bitmap", 0x00, 0x20), ("inode bitmap", 0x04, 0x24), ("inode table", 0x08, 0x28)]
            {
                let at = u64::from(u32_at(d, lo)) | hi(hi_at);
                if at == 0 || at >= self.blocks {
                    return Err(format!("group {g}'s {what} at block {at}, outside the filesystem"));
                }
            }
            if self.metadata_csum {
                let mut c = crc32c(crc32c(seed, &(g as u32).to_le_bytes()), &d[..0x1E]);
                c = crc32c(c, &[0, 0]);
                if ds > 0x20 {
                    c = crc32c(c, &d[0x20..]);
                }
                if c as u16 != u16_at(d, 0x1E) {
                    return Err(format!("group {g}'s descriptor checksum does not match this superblock"));
                }
            }
        }
        Ok(())
    }
}

/// Whether the jbd2 superblock `jsb` (the journal's first bytes) says the journal is empty:
/// its magic number and no start of a log to replay (`s_start` 0).
pub fn journal_is_empty(jsb: &[u8]) -> bool {
    let be = |at: usize| u32::from_be_bytes([jsb[at], jsb[at + 1], jsb[at + 2], jsb[at + 3]]);
    jsb.len() >= 0x20 && be(0) == 0xC03B_3998 && be(0x1C) == 0
}

/// Where backup superblocks may be in a range of `bytes`: for each block size from 1 KiB to
/// 64 KiB with the default 8 × block size blocks per group, the `sparse_super` groups (1 and
/// the powers of 3, 5 and 7), as (byte offset, block size, group), in ascending offset.
pub fn backup_locations(bytes: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for log in 0..=6u32 {
        let bs = 1024u64 << log;
        let per_group = 8 * bs;
        let first = u64::from(bs == 1024);
        let max_group = bytes / bs / per_group + 1;
        let mut groups = vec![1u64];
        for base in [3u64, 5, 7] {
            let mut g = base;
            while g <= max_group {
                groups.push(g);
                g *= base;
            }
        }
        groups.sort_unstable();
        for g in groups {
            let at = (first + g * per_group) * bs;
            if at + SIZE as u64 <= bytes {
                out.push((at, bs, g));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether a superblock found at byte `at` (from [`backup_locations`]) is a backup of its own
/// filesystem in that place: block size, group and group number agree with where it sits.
pub fn is_backup_at(sb: &Superblock, at: u64, block_size: u64, group: u64) -> bool {
    sb.block_size == block_size
        && sb.blocks_per_group == 8 * block_size
        && (sb.first_data_block + group * sb.blocks_per_group) * sb.block_size == at
        && u64::from(sb.group_nr) == group % 65536
        && group < sb.groups()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_locations_are_the_sparse_super_groups() {
        let at: Vec<(u64, u64, u64)> = backup_locations(1 << 30).into_iter().filter(|&(_, bs, _)| bs == 4096).collect();
        let groups: Vec<u64> = at.iter().map(|&(_, _, g)| g).collect();
        assert_eq!(groups, [1, 3, 5, 7]);
        assert_eq!(at[0].0, 32768 * 4096);
        // 1 KiB blocks: group 1 starts at block 8193.
        assert!(backup_locations(1 << 30).contains(&(8193 * 1024, 1024, 1)));
        assert!(backup_locations(1 << 20).is_empty());
    }
}
