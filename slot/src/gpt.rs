//! The one GPT rewriter of Berth: parses a GPT (header + partition entry array) from sector
//! buffers, reads the attribute words of `ROOT-A`/`ROOT-B`, and encodes both headers and the
//! entry array again with new attributes and correct CRC32s (docs/design.md §2). bootmgr and the
//! update agent both write the slot state through this module; it does no I/O itself.
//!
//! Writing order (the caller's job): the backup entries and backup header first, then the
//! primary entries and primary header, so that a power cut leaves at least one valid copy.
//!
//! [`Gpt::grow_partition`] fits a GPT to a disk that became larger (a grown qcow2 or cloud
//! disk): the backup copy moves to the new end of the disk and a partition (STATE) is extended
//! to the last aligned LBA. Written backup first, a power cut before the primary leaves the old
//! primary pointing at the old, intact backup.
//!
//! ```
//! # use berth_slot::gpt::Gpt;
//! # fn demo(header_sector: &[u8], entries: &[u8]) -> Result<(), berth_slot::gpt::GptError> {
//! let gpt = Gpt::parse(header_sector, entries)?;
//! let slots = gpt.slots()?;
//! let updated = gpt.with_slots(slots)?;
//! let out = updated.encode();
//! // write out.entries at out.backup_entries_lba, out.backup_header at out.backup_header_lba,
//! // then out.entries at out.primary_entries_lba and out.primary_header at out.primary_header_lba.
//! # let _ = out; Ok(()) }
//! ```

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::layout::{ROOT_TYPE_GUID, SECTOR_SIZE, Slot};
use crate::slots::Slots;

/// "EFI PART".
pub const SIGNATURE: [u8; 8] = *b"EFI PART";
/// The size of the GPT header this module writes and the smallest it accepts.
pub const MIN_HEADER_SIZE: usize = 92;
/// The size of a partition entry this module accepts at minimum.
pub const MIN_ENTRY_SIZE: usize = 128;
/// Logical sector size assumed for encoding (a Berth disk uses 512-byte sectors).
const SECTOR: usize = SECTOR_SIZE as usize;
/// Bound on the entry array size (the usual 128 × 128 bytes is 16 KiB).
const MAX_ENTRIES_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// CRC32 (IEEE 802.3, reflected, as UEFI uses it)

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC32 (IEEE, the one of zlib and of UEFI's `CalculateCrc32`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

// ---------------------------------------------------------------------------------------------
// GUIDs

/// A GUID as stored on disk (mixed-endian: the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the textual form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case).
    pub fn parse(s: &str) -> Option<Guid> {
        let s = s.as_bytes();
        if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
            return None;
        }
        let mut text = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                i += 1;
                continue;
            }
            let hi = hex_value(s[i])?;
            let lo = hex_value(s[i + 1])?;
            text[n] = (hi << 4) | lo;
            n += 1;
            i += 2;
        }
        // Text order to disk order: swap the first three fields.
        let mut b = text;
        b[..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Some(Guid(b))
    }

    /// Whether every byte is zero (an unused partition entry).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lower-case textual form, as the kernel matches `root=PARTUUID=`.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a GPT could not be parsed or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GptError {
    /// A buffer is shorter than what it must hold.
    TooShort {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The header does not start with "EFI PART".
    BadSignature,
    /// Header size outside 92..=sector size.
    BadHeaderSize(u32),
    /// The stored header CRC32 does not match.
    HeaderCrc {
        /// Stored in the header.
        stored: u32,
        /// Computed over the header.
        computed: u32,
    },
    /// Entry size below 128, not a multiple of 8, or an absurd entry array size.
    BadEntryGeometry {
        /// Number of entries.
        count: u32,
        /// Size of one entry.
        size: u32,
    },
    /// The stored entry array CRC32 does not match.
    EntriesCrc {
        /// Stored in the header.
        stored: u32,
        /// Computed over the entries.
        computed: u32,
    },
    /// The header is not where it says it is (`my_lba`), or the two copies do not point at
    /// each other.
    WrongLocation {
        /// Which header.
        which: &'static str,
        /// LBA the header claims.
        claimed: u64,
        /// LBA expected.
        expected: u64,
    },
    /// The backup header does not describe the same entry array as the primary.
    BackupMismatch,
    /// No used partition entry with that number.
    NoPartition(u32),
    /// The partition is not a root slot (label or type GUID differ).
    NotASlot {
        /// Partition number.
        number: u32,
        /// What the entry holds.
        label: String,
    },
    /// The disk ends before the backup GPT header the primary names (it shrank, or the GPT
    /// belongs to a larger disk).
    DiskTooSmall {
        /// Sectors the disk has.
        disk_lbas: u64,
        /// LBA of the backup header.
        backup_lba: u64,
    },
    /// A partition cannot grow because another one lies in the space it would take.
    Blocked {
        /// The partition to grow.
        number: u32,
        /// The partition in the way.
        by: u32,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::TooShort { what, needed, got } => write!(f, "{what}: need {needed} bytes, got {got}"),
            GptError::BadSignature => f.write_str("GPT header: no \"EFI PART\" signature"),
            GptError::BadHeaderSize(s) => write!(f, "GPT header: bad header size {s}"),
            GptError::HeaderCrc { stored, computed } => {
                write!(f, "GPT header: CRC32 {stored:#010x} stored, {computed:#010x} computed")
            }
            GptError::BadEntryGeometry { count, size } => {
                write!(f, "GPT header: bad entry array ({count} entries of {size} bytes)")
            }
            GptError::EntriesCrc { stored, computed } => {
                write!(f, "GPT entries: CRC32 {stored:#010x} stored, {computed:#010x} computed")
            }
            GptError::WrongLocation { which, claimed, expected } => {
                write!(f, "{which} GPT header: claims LBA {claimed}, expected {expected}")
            }
            GptError::BackupMismatch => f.write_str("backup GPT header does not match the primary"),
            GptError::NoPartition(n) => write!(f, "GPT: no partition {n}"),
            GptError::NotASlot { number, label } => {
                write!(f, "GPT: partition {number} ({label:?}) is not a Berth root slot")
            }
            GptError::DiskTooSmall { disk_lbas, backup_lba } => {
                write!(f, "GPT: backup header at LBA {backup_lba}, but the disk has only {disk_lbas} sectors")
            }
            GptError::Blocked { number, by } => {
                write!(f, "GPT: partition {number} cannot grow, partition {by} lies after it")
            }
        }
    }
}

impl core::error::Error for GptError {}

// ---------------------------------------------------------------------------------------------
// Header

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

/// A parsed and CRC-checked GPT header (either copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header bytes (`header_size` of them), kept whole so reserved fields survive.
    raw: Vec<u8>,
    /// LBA of this header.
    pub my_lba: u64,
    /// LBA of the other copy.
    pub alternate_lba: u64,
    /// First LBA usable by partitions.
    pub first_usable_lba: u64,
    /// Last LBA usable by partitions.
    pub last_usable_lba: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// LBA of this copy's entry array.
    pub entries_lba: u64,
    /// Number of entries in the array.
    pub entry_count: u32,
    /// Size of one entry.
    pub entry_size: u32,
    /// CRC32 of the entry array.
    pub entries_crc: u32,
}

impl Header {
    /// Parses and checks a header sector (signature, size, CRC32, entry geometry).
    pub fn parse(sector: &[u8]) -> Result<Header, GptError> {
        if sector.len() < MIN_HEADER_SIZE {
            return Err(GptError::TooShort { what: "GPT header", needed: MIN_HEADER_SIZE, got: sector.len() });
        }
        if sector[..8] != SIGNATURE {
            return Err(GptError::BadSignature);
        }
        let size = u32_at(sector, 12);
        if (size as usize) < MIN_HEADER_SIZE || size as usize > sector.len().max(SECTOR) {
            return Err(GptError::BadHeaderSize(size));
        }
        if size as usize > sector.len() {
            return Err(GptError::TooShort { what: "GPT header", needed: size as usize, got: sector.len() });
        }
        let mut raw = sector[..size as usize].to_vec();
        let stored = u32_at(&raw, 16);
        raw[16..20].fill(0);
        let computed = crc32(&raw);
        if stored != computed {
            return Err(GptError::HeaderCrc { stored, computed });
        }
        raw[16..20].copy_from_slice(&stored.to_le_bytes());
        let entry_count = u32_at(&raw, 80);
        let entry_size = u32_at(&raw, 84);
        let total = entry_count as usize * entry_size as usize;
        if (entry_size as usize) < MIN_ENTRY_SIZE || !entry_size.is_multiple_of(8) || total > MAX_ENTRIES_BYTES {
            return Err(GptError::BadEntryGeometry { count: entry_count, size: entry_size });
        }
        Ok(Header {
            my_lba: u64_at(&raw, 24),
            alternate_lba: u64_at(&raw, 32),
            first_usable_lba: u64_at(&raw, 40),
            last_usable_lba: u64_at(&raw, 48),
            disk_guid: guid_at(&raw, 56),
            entries_lba: u64_at(&raw, 72),
            entry_count,
            entry_size,
            entries_crc: u32_at(&raw, 88),
            raw,
        })
    }

    /// Bytes of the entry array (`entry_count × entry_size`).
    pub fn entries_bytes(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }

    /// Sectors (of `sector_size` bytes) the entry array occupies.
    pub fn entries_sectors(&self, sector_size: usize) -> u64 {
        self.entries_bytes().div_ceil(sector_size.max(1)) as u64
    }

    /// Sets the last usable LBA (kept in the raw bytes too, which [`Header::encode`] starts from).
    fn set_last_usable_lba(&mut self, lba: u64) {
        self.last_usable_lba = lba;
        self.raw[48..56].copy_from_slice(&lba.to_le_bytes());
    }

    /// The header bytes with the given location fields and entries CRC, its own CRC recomputed,
    /// padded with zeros to a whole sector.
    fn encode(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut raw = self.raw.clone();
        raw[24..32].copy_from_slice(&my_lba.to_le_bytes());
        raw[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        raw[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        raw[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        raw[16..20].fill(0);
        let crc = crc32(&raw);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        raw.resize(raw.len().max(SECTOR), 0);
        raw
    }
}

// ---------------------------------------------------------------------------------------------
// Entries

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based partition number (index in the array + 1).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (what `root=PARTUUID=` names).
    pub unique_guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// The 64-bit attribute word.
    pub attributes: u64,
    /// The partition name (UTF-16LE on disk, up to 36 code units).
    pub name: String,
}

/// A primary GPT header with its entry array, both verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    header: Header,
    entries: Vec<u8>,
    backup_entries_lba: u64,
}

/// What to write back: both headers (whole sectors) and the entry array, with their LBAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Primary header sector, at `primary_header_lba` (1).
    pub primary_header: Vec<u8>,
    /// LBA of the primary header.
    pub primary_header_lba: u64,
    /// LBA of the primary entry array.
    pub primary_entries_lba: u64,
    /// Backup header sector, at `backup_header_lba` (the last LBA of the disk).
    pub backup_header: Vec<u8>,
    /// LBA of the backup header.
    pub backup_header_lba: u64,
    /// LBA of the backup entry array.
    pub backup_entries_lba: u64,
    /// The entry array, padded with zeros to whole 512-byte sectors; written at both entry LBAs.
    pub entries: Vec<u8>,
}

impl Encoded {
    /// The writes that put both copies on disk, `(LBA, bytes)`, grouped per copy in the order
    /// they must reach the disk: the backup copy, then the primary (flush after each group).
    /// A copy whose header and entry array are adjacent (the usual layout) is a single write,
    /// so a power cut can tear it only inside one request; otherwise its entry array is
    /// written before its header.
    pub fn copies(&self) -> [Vec<(u64, Vec<u8>)>; 2] {
        let sectors = (self.entries.len() / SECTOR) as u64;
        let backup = if self.backup_entries_lba + sectors == self.backup_header_lba {
            vec![(self.backup_entries_lba, [self.entries.as_slice(), &self.backup_header].concat())]
        } else {
            vec![(self.backup_entries_lba, self.entries.clone()), (self.backup_header_lba, self.backup_header.clone())]
        };
        let primary = if self.primary_header_lba + 1 == self.primary_entries_lba {
            vec![(self.primary_header_lba, [self.primary_header.as_slice(), &self.entries].concat())]
        } else {
            vec![
                (self.primary_entries_lba, self.entries.clone()),
                (self.primary_header_lba, self.primary_header.clone()),
            ]
        };
        [backup, primary]
    }
}

/// What [`Gpt::grow_partition`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    /// The GPT afterwards; [`Gpt::encode`] gives the sectors to write, backup copy first.
    pub gpt: Gpt,
    /// Whether the backup header and entry array move to the new end of the disk.
    pub backup_moved: bool,
    /// The partition's last LBA before.
    pub old_last_lba: u64,
    /// The partition's last LBA after (the same as before if only the backup moves).
    pub new_last_lba: u64,
}

impl Gpt {
    /// Parses the primary header sector (LBA 1) and its entry array (read from
    /// `header.entries_lba`, at least [`Header::entries_bytes`] long), checking both CRC32s.
    /// The backup entry array is assumed to sit right before the backup header until
    /// [`Gpt::check_backup`] says otherwise.
    pub fn parse(primary_header: &[u8], entries: &[u8]) -> Result<Gpt, GptError> {
        let header = Header::parse(primary_header)?;
        if header.my_lba != 1 {
            return Err(GptError::WrongLocation { which: "primary", claimed: header.my_lba, expected: 1 });
        }
        Gpt::with_header(header, entries)
    }

    /// Like [`Gpt::parse`] for an already parsed header (either copy); the entries must be that
    /// copy's.
    pub fn with_header(header: Header, entries: &[u8]) -> Result<Gpt, GptError> {
        let n = header.entries_bytes();
        if entries.len() < n {
            return Err(GptError::TooShort { what: "GPT entries", needed: n, got: entries.len() });
        }
        let computed = crc32(&entries[..n]);
        if computed != header.entries_crc {
            return Err(GptError::EntriesCrc { stored: header.entries_crc, computed });
        }
        // The layout of a primary view: this copy at LBA 1, the other at the end.
        let (primary_lba, backup_lba) = if header.my_lba == 1 {
            (header.my_lba, header.alternate_lba)
        } else {
            (header.alternate_lba, header.my_lba)
        };
        let sectors = header.entries_sectors(SECTOR);
        let backup_entries_lba =
            if header.my_lba == 1 { backup_lba.saturating_sub(sectors) } else { header.entries_lba };
        let mut header = header;
        if header.my_lba != 1 {
            // Seen from the primary: entries right after the primary header.
            header.my_lba = primary_lba;
            header.alternate_lba = backup_lba;
            header.entries_lba = 2;
        }
        Ok(Gpt { header, entries: entries[..n].to_vec(), backup_entries_lba })
    }

    /// Checks a backup header sector against this (primary) GPT: valid CRC, at the LBA the
    /// primary names, pointing back at LBA 1, same entry array (count, size, CRC). Remembers
    /// where its entry array is, for [`Gpt::encode`].
    pub fn check_backup(&mut self, backup_header: &[u8]) -> Result<Header, GptError> {
        let b = Header::parse(backup_header)?;
        if b.my_lba != self.header.alternate_lba {
            return Err(GptError::WrongLocation {
                which: "backup",
                claimed: b.my_lba,
                expected: self.header.alternate_lba,
            });
        }
        if b.alternate_lba != 1 {
            return Err(GptError::WrongLocation { which: "backup (alternate)", claimed: b.alternate_lba, expected: 1 });
        }
        if b.entry_count != self.header.entry_count
            || b.entry_size != self.header.entry_size
            || b.entries_crc != self.header.entries_crc
            || b.disk_guid != self.header.disk_guid
        {
            return Err(GptError::BackupMismatch);
        }
        self.backup_entries_lba = b.entries_lba;
        Ok(b)
    }

    /// The primary header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// LBA of the backup header (the last LBA of the disk).
    pub fn backup_header_lba(&self) -> u64 {
        self.header.alternate_lba
    }

    /// LBA of the backup entry array.
    pub fn backup_entries_lba(&self) -> u64 {
        self.backup_entries_lba
    }

    fn entry_bytes(&self, number: u32) -> Option<&[u8]> {
        let idx = (number as usize).checked_sub(1)?;
        if idx >= self.header.entry_count as usize {
            return None;
        }
        let size = self.header.entry_size as usize;
        self.entries.get(idx * size..(idx + 1) * size)
    }

    /// The used entry with 1-based `number`, or `None` if absent or unused.
    pub fn partition(&self, number: u32) -> Option<Entry> {
        let e = self.entry_bytes(number)?;
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            return None;
        }
        let units = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0);
        let name = char::decode_utf16(units).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        Some(Entry {
            number,
            type_guid,
            unique_guid: guid_at(e, 16),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            attributes: u64_at(e, 48),
            name,
        })
    }

    /// Every used entry, in partition-number order.
    pub fn partitions(&self) -> impl Iterator<Item = Entry> + '_ {
        (1..=self.header.entry_count).filter_map(|n| self.partition(n))
    }

    /// Fits the GPT to a disk of `disk_lbas` sectors and grows partition `number` into the
    /// space at its end: the backup header moves to the disk's last LBA with its entry array
    /// right before it, the last usable LBA follows, and the partition's last LBA becomes the
    /// last usable LBA rounded down to a multiple of `align_lbas` (minus one: partitions end
    /// just before an aligned boundary). A partition never shrinks, and another partition in
    /// the added space is an error ([`GptError::Blocked`]).
    ///
    /// `Ok(None)`: nothing to do (the backup is at the end and the partition reaches the last
    /// aligned LBA), so applying the result a second time does nothing.
    pub fn grow_partition(&self, disk_lbas: u64, number: u32, align_lbas: u64) -> Result<Option<Growth>, GptError> {
        let part = self.partition(number).ok_or(GptError::NoPartition(number))?;
        let old_backup = self.header.alternate_lba;
        let entries_sectors = self.header.entries_sectors(SECTOR);
        let last_lba = match disk_lbas.checked_sub(1) {
            Some(l) if l >= old_backup && l > entries_sectors + 1 => l,
            _ => return Err(GptError::DiskTooSmall { disk_lbas, backup_lba: old_backup }),
        };
        let mut gpt = self.clone();
        let backup_moved = last_lba != old_backup;
        if backup_moved {
            let entries_lba = last_lba - entries_sectors;
            gpt.header.alternate_lba = last_lba;
            gpt.backup_entries_lba = entries_lba;
            gpt.header.set_last_usable_lba(entries_lba - 1);
        }
        let align = align_lbas.max(1);
        // Never past the backup entry array, whatever the header claims (it is read from the
        // disk; u64::MAX overflowed here).
        let last_usable = gpt.header.last_usable_lba.min(last_lba - entries_sectors - 1);
        let aligned_end = (last_usable + 1) / align * align;
        let new_last_lba = aligned_end.saturating_sub(1).max(part.last_lba);
        if new_last_lba > part.last_lba {
            let in_the_way =
                |o: &Entry| o.number != number && o.first_lba <= new_last_lba && o.last_lba > part.last_lba;
            if let Some(o) = self.partitions().find(in_the_way) {
                return Err(GptError::Blocked { number, by: o.number });
            }
            let at = (number as usize - 1) * self.header.entry_size as usize + 40;
            gpt.entries[at..at + 8].copy_from_slice(&new_last_lba.to_le_bytes());
        } else if !backup_moved {
            return Ok(None);
        }
        gpt.header.entries_crc = crc32(&gpt.entries);
        Ok(Some(Growth { gpt, backup_moved, old_last_lba: part.last_lba, new_last_lba }))
    }

    /// A copy with partition `number`'s attribute word replaced by `raw`.
    pub fn with_attributes(&self, number: u32, raw: u64) -> Result<Gpt, GptError> {
        if self.partition(number).is_none() {
            return Err(GptError::NoPartition(number));
        }
        let mut out = self.clone();
        let at = (number as usize - 1) * self.header.entry_size as usize + 48;
        out.entries[at..at + 8].copy_from_slice(&raw.to_le_bytes());
        out.header.entries_crc = crc32(&out.entries);
        Ok(out)
    }

    /// The entry of a root slot, checked to be one (label and type GUID).
    pub fn slot_partition(&self, slot: Slot) -> Result<Entry, GptError> {
        let number = slot.partition_number();
        let e = self.partition(number).ok_or(GptError::NoPartition(number))?;
        if e.name != slot.label() || Some(e.type_guid) != Guid::parse(ROOT_TYPE_GUID) {
            return Err(GptError::NotASlot { number, label: e.name });
        }
        Ok(e)
    }

    /// Both slots' attribute words.
    pub fn slots(&self) -> Result<Slots, GptError> {
        Ok(Slots::from_raw(self.slot_partition(Slot::A)?.attributes, self.slot_partition(Slot::B)?.attributes))
    }

    /// A copy with both slots' attribute words replaced.
    pub fn with_slots(&self, slots: Slots) -> Result<Gpt, GptError> {
        self.slot_partition(Slot::A)?;
        self.slot_partition(Slot::B)?;
        self.with_attributes(Slot::A.partition_number(), slots.raw(Slot::A))?
            .with_attributes(Slot::B.partition_number(), slots.raw(Slot::B))
    }

    /// Both headers and the entry array, CRCs recomputed, ready to write (backup first).
    pub fn encode(&self) -> Encoded {
        let h = &self.header;
        let crc = crc32(&self.entries);
        let mut entries = self.entries.clone();
        entries.resize(entries.len().div_ceil(SECTOR) * SECTOR, 0);
        Encoded {
            primary_header: h.encode(1, h.alternate_lba, h.entries_lba, crc),
            primary_header_lba: 1,
            primary_entries_lba: h.entries_lba,
            backup_header: h.encode(h.alternate_lba, 1, self.backup_entries_lba, crc),
            backup_header_lba: h.alternate_lba,
            backup_entries_lba: self.backup_entries_lba,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn guid_round_trip_and_mixed_endian() {
        let g = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(g.0[..4], [0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(g.0[4..6], [0x1F, 0xF8]);
        assert_eq!(g.0[6..8], [0xD2, 0x11]);
        assert_eq!(g.0[8..], [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93"), None);
        assert_eq!(Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93g"), None);
    }

    /// A synthetic disk of `lbas` sectors with ESP, ROOT-A, ROOT-B.
    fn synthetic(lbas: u64) -> (Vec<u8>, Vec<u8>) {
        let mut entries = vec![0u8; 128 * 128];
        let root = Guid::parse(ROOT_TYPE_GUID).unwrap();
        for (i, (name, ty, attrs)) in [
            ("EFI-SYSTEM", Guid::parse(crate::layout::ESP_TYPE_GUID).unwrap(), 0u64),
            ("ROOT-A", root, 7),
            ("ROOT-B", root, 9),
        ]
        .iter()
        .enumerate()
        {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&ty.0);
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&(2048 * (i as u64 + 1)).to_le_bytes());
            e[40..48].copy_from_slice(&(2048 * (i as u64 + 2) - 1).to_le_bytes());
            e[48..56].copy_from_slice(&attrs.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(&SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(lbas - 1).to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(lbas - 34).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        (h, entries)
    }

    #[test]
    fn parse_update_encode() {
        let (h, e) = synthetic(10_000);
        let gpt = Gpt::parse(&h, &e).unwrap();
        assert_eq!(gpt.partition(2).unwrap().name, "ROOT-A");
        assert_eq!(gpt.partition(4), None);
        assert_eq!(gpt.partition(0), None);
        assert_eq!(gpt.slots().unwrap(), Slots::from_raw(7, 9));
        assert_eq!(gpt.backup_entries_lba(), 10_000 - 1 - 32);
        let new = gpt.with_slots(Slots::from_raw(7, 0x0102_0000_0000_0000)).unwrap();
        let out = new.encode();
        assert_eq!(out.primary_header_lba, 1);
        assert_eq!(out.backup_header_lba, 9_999);
        assert_eq!(out.entries.len(), 16384);
        let reparsed = Gpt::parse(&out.primary_header, &out.entries).unwrap();
        assert_eq!(reparsed.partition(3).unwrap().attributes, 0x0102_0000_0000_0000);
        // Only the attributes and the CRCs changed in the primary header.
        assert_eq!(out.primary_header[..16], h[..16]);
        assert_eq!(out.primary_header[20..88], h[20..88]);
        let mut r = reparsed.clone();
        let backup = r.check_backup(&out.backup_header).unwrap();
        assert_eq!((backup.my_lba, backup.alternate_lba, backup.entries_lba), (9_999, 1, 9_999 - 32));
        // A GPT read from the backup copy encodes the same sectors.
        let from_backup = Gpt::with_header(backup, &out.entries).unwrap();
        assert_eq!(from_backup.encode(), out);
    }

    #[test]
    fn corruption_is_refused() {
        let (h, e) = synthetic(10_000);
        let mut bad = h.clone();
        bad[40] ^= 1;
        assert!(matches!(Gpt::parse(&bad, &e), Err(GptError::HeaderCrc { .. })));
        let mut bad_e = e.clone();
        bad_e[200] ^= 1;
        assert!(matches!(Gpt::parse(&h, &bad_e), Err(GptError::EntriesCrc { .. })));
        let mut sig = h.clone();
        sig[0] = b'X';
        assert_eq!(Gpt::parse(&sig, &e), Err(GptError::BadSignature));
        assert!(matches!(Gpt::parse(&h, &e[..100]), Err(GptError::TooShort { .. })));
        assert!(matches!(Gpt::parse(&h[..50], &e), Err(GptError::TooShort { .. })));
        let gpt = Gpt::parse(&h, &e).unwrap();
        assert_eq!(gpt.with_attributes(5, 1), Err(GptError::NoPartition(5)));
        // A backup that does not match is refused.
        let mut g = gpt.clone();
        assert!(g.check_backup(&h).is_err());
    }

    #[test]
    fn non_slot_partition_is_refused() {
        let (h, e) = synthetic(10_000);
        let gpt = Gpt::parse(&h, &e).unwrap();
        let mut swapped = gpt.entries.clone();
        swapped[128 + 56] = b'X';
        let g = Gpt { entries: swapped, ..gpt };
        assert!(matches!(g.slots(), Err(GptError::NotASlot { number: 2, .. })));
    }

    /// [`synthetic`] plus STATE as partition 4 from LBA 8192 to `state_last`.
    fn with_state(lbas: u64, state_last: u64) -> Gpt {
        let (mut h, mut e) = synthetic(lbas);
        let entry = &mut e[3 * 128..4 * 128];
        entry[..16].copy_from_slice(&Guid::parse(crate::layout::STATE_TYPE_GUID).unwrap().0);
        entry[16] = 4;
        entry[32..40].copy_from_slice(&8192u64.to_le_bytes());
        entry[40..48].copy_from_slice(&state_last.to_le_bytes());
        for (j, u) in "STATE".encode_utf16().enumerate() {
            entry[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
        h[88..92].copy_from_slice(&crc32(&e).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        Gpt::parse(&h, &e).unwrap()
    }

    #[test]
    fn grow_moves_the_backup_and_extends_to_the_aligned_end() {
        // A 12,000-sector disk with a 1 MiB STATE (8192..=10239), grown to 50,000 sectors.
        let gpt = with_state(12_000, 10_239);
        let grown = gpt.grow_partition(50_000, 4, 2048).unwrap().unwrap();
        assert!(grown.backup_moved);
        assert_eq!((grown.old_last_lba, grown.new_last_lba), (10_239, 49_151));
        let out = grown.gpt.encode();
        assert_eq!((out.backup_header_lba, out.backup_entries_lba), (49_999, 49_999 - 32));
        let mut reparsed = Gpt::parse(&out.primary_header, &out.entries).unwrap();
        let backup = reparsed.check_backup(&out.backup_header).unwrap();
        assert_eq!(backup.entries_lba, 49_967);
        assert_eq!(reparsed.header().last_usable_lba, 49_966);
        assert_eq!(reparsed.header().first_usable_lba, 34);
        assert_eq!(reparsed.partition(4).unwrap().last_lba, 49_151);
        assert_eq!(reparsed.partition(4).unwrap().first_lba, 8192);
        for n in 1..=3 {
            assert_eq!(reparsed.partition(n), gpt.partition(n));
        }
        // The backup copy alone describes the same GPT.
        assert_eq!(Gpt::with_header(backup, &out.entries).unwrap().encode(), out);
        // Idempotent: nothing left to do on the same disk.
        assert_eq!(reparsed.grow_partition(50_000, 4, 2048), Ok(None));
    }

    #[test]
    fn grow_without_moving_the_backup() {
        // The backup is at the end already but STATE stops 2 MiB short of the aligned end.
        let gpt = with_state(50_000, 45_055);
        let grown = gpt.grow_partition(50_000, 4, 2048).unwrap().unwrap();
        assert!(!grown.backup_moved);
        assert_eq!(grown.new_last_lba, 49_151);
        let out = grown.gpt.encode();
        assert_eq!((out.backup_header_lba, out.backup_entries_lba), (49_999, 49_967));
        let reparsed = Gpt::parse(&out.primary_header, &out.entries).unwrap();
        assert_eq!(reparsed.header().last_usable_lba, 50_000 - 34);
        // Only the entry and the CRCs changed.
        assert_eq!(out.primary_header[20..88], gpt.encode().primary_header[20..88]);
    }

    #[test]
    fn grow_nothing_to_do_never_shrinks_and_refuses_what_it_cannot() {
        assert_eq!(with_state(50_000, 49_151).grow_partition(50_000, 4, 2048), Ok(None));
        // Past the aligned end already (as sgdisk's "4:0:0" leaves it): not shrunk.
        assert_eq!(with_state(50_000, 49_966).grow_partition(50_000, 4, 2048), Ok(None));
        // Grown disk, partition already unaligned at the old end: only the backup moves
        // if the new aligned end is not past it.
        let g = with_state(49_300, 49_200).grow_partition(49_400, 4, 2048).unwrap().unwrap();
        assert!(g.backup_moved);
        assert_eq!(g.new_last_lba, 49_200);
        assert_eq!(
            with_state(50_000, 49_151).grow_partition(49_000, 4, 2048),
            Err(GptError::DiskTooSmall { disk_lbas: 49_000, backup_lba: 49_999 })
        );
        assert_eq!(with_state(50_000, 49_151).grow_partition(50_000, 5, 2048), Err(GptError::NoPartition(5)));
        // ROOT-B (6144..=8191) is followed by STATE.
        assert_eq!(
            with_state(50_000, 45_055).grow_partition(50_000, 3, 2048),
            Err(GptError::Blocked { number: 3, by: 4 })
        );
        assert!(GptError::Blocked { number: 3, by: 4 }.to_string().contains("partition 4"));
    }

    /// Found by the fuzz target (slot/tests/fuzz.rs): a header claiming u64::MAX as its last
    /// usable LBA overflowed `last_usable_lba + 1` (a panic in PID 1's debug builds); the
    /// partition ends before the backup entry array instead.
    #[test]
    fn grow_with_a_last_usable_lba_past_the_disk() {
        let mut h = with_state(50_000, 45_055).encode().primary_header;
        let e = with_state(50_000, 45_055).encode().entries;
        h[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        let gpt = Gpt::parse(&h, &e).unwrap();
        let grown = gpt.grow_partition(50_000, 4, 2048).unwrap().unwrap();
        assert_eq!((grown.backup_moved, grown.new_last_lba), (false, 49_151));
        let grown = gpt.grow_partition(50_000, 4, 1).unwrap().unwrap();
        assert_eq!(grown.new_last_lba, 49_999 - 32 - 1);
    }

    #[test]
    fn copies_are_one_write_each_backup_first() {
        let out = with_state(50_000, 49_151).encode();
        let [backup, primary] = out.copies();
        assert_eq!(backup.len(), 1);
        assert_eq!(backup[0].0, 49_999 - 32);
        assert_eq!(backup[0].1[..16384], out.entries[..]);
        assert_eq!(backup[0].1[16384..], out.backup_header[..]);
        assert_eq!(primary.len(), 1);
        assert_eq!(primary[0].0, 1);
        assert_eq!(primary[0].1[..512], out.primary_header[..]);
        assert_eq!(primary[0].1[512..], out.entries[..]);
        // Entries away from their header: entries first, then the header.
        let apart = Encoded { primary_entries_lba: 3, backup_entries_lba: 49_900, ..out.clone() };
        let [backup, primary] = apart.copies();
        assert_eq!(backup.iter().map(|w| w.0).collect::<Vec<_>>(), [49_900, 49_999]);
        assert_eq!(primary.iter().map(|w| w.0).collect::<Vec<_>>(), [3, 1]);
    }
}
