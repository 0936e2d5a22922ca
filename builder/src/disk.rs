//! The GPT disk of docs/design.md §2: where each partition lies, and its partition table.
//!
//! This module owns the *placement* of the four partitions (1 `EFI-SYSTEM`, 2 `ROOT-A`,
//! 3 `ROOT-B`, 4 `STATE`, each starting and ending on the 1 MiB alignment), the GUIDs derived
//! from the image's seed, and the writing of the tables themselves: protective MBR, primary and
//! backup GPT headers and entry arrays with their CRCs, through the `gpt` crate. The labels,
//! type GUIDs, default sizes and the slot attribute encoding are not defined here: they come
//! from `berth-slot`, which every Berth binary shares.
//!
//! The flow is: [`DiskLayout::plan`] computes a [`DiskPlan`] (byte offset and length of every
//! partition, so that the ESP, ext4 and other writers can fill their ranges through a
//! [`FileRange`]), then [`write_gpt`] (or [`create_image`]) writes the tables into a sparse file
//! of the planned size. Nothing outside the table sectors is written, so an image file stays
//! sparse until the filesystems are written into it, and the same inputs give the same bytes.
//! STATE gets one sector, [`write_state_marker`]: the mark of a STATE never used, the only one
//! berth-init formats.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use berth_slot::layout::{
    DEFAULT_ESP_SIZE, DEFAULT_ROOT_SIZE, ESP_LABEL, ESP_PARTITION, ESP_TYPE_GUID, PARTITION_ALIGNMENT, ROOT_TYPE_GUID,
    SECTOR_SIZE, STATE_LABEL, STATE_PARTITION, STATE_TYPE_GUID,
};
use berth_slot::{Slot, SlotAttrs};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Number of entries in each GPT partition array (the UEFI minimum; 128 × 128 bytes).
const GPT_ENTRIES: u64 = 128;
/// Size of one GPT partition entry in bytes.
const GPT_ENTRY_SIZE: u64 = 128;
/// Sectors taken by one partition entry array.
const GPT_ARRAY_SECTORS: u64 = GPT_ENTRIES * GPT_ENTRY_SIZE / SECTOR_SIZE;
/// Bytes the primary GPT needs at the start of the disk: protective MBR, header, entry array.
const PRIMARY_GPT_BYTES: u64 = (2 + GPT_ARRAY_SECTORS) * SECTOR_SIZE;
/// Bytes the backup GPT needs at the end of the disk: entry array, then the backup header in
/// the very last sector.
const BACKUP_GPT_BYTES: u64 = (GPT_ARRAY_SECTORS + 1) * SECTOR_SIZE;

/// The smallest STATE a disk sized by [`DiskSize::Total`] may leave: one alignment unit.
/// (STATE is grown to fill the disk on first boot; it only has to exist in the image.)
const MIN_STATE_SIZE: u64 = PARTITION_ALIGNMENT;

/// Parses a type GUID constant of `berth-slot` at compile time, so a malformed constant fails
/// the build instead of a run.
const fn type_guid(s: &str) -> Uuid {
    match Uuid::try_parse(s) {
        Ok(u) => u,
        Err(_) => panic!("berth-slot type GUID constant is not a GUID"),
    }
}

const ESP_TYPE: Uuid = type_guid(ESP_TYPE_GUID);
const ROOT_TYPE: Uuid = type_guid(ROOT_TYPE_GUID);
const STATE_TYPE: Uuid = type_guid(STATE_TYPE_GUID);

/// Errors of planning, writing and reading a Berth GPT disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what} size of {size} bytes is not a positive multiple of the partition alignment ({alignment} bytes)")]
    BadPartitionSize { what: &'static str, size: u64, alignment: u64 },
    #[error("disk size of {size} bytes is not a multiple of the {sector}-byte sector")]
    BadDiskSize { size: u64, sector: u64 },
    #[error(
        "the partition layout does not fit the disk: it needs {needed} bytes ({needed_mib} MiB) \
         but the disk has {available} bytes ({available_mib} MiB)",
        needed_mib = needed.div_ceil(1 << 20),
        available_mib = available / (1 << 20)
    )]
    DoesNotFit { needed: u64, available: u64 },
    #[error("the partition sizes add up to more than 2^64 bytes")]
    Overflow,
    #[error("there is no partition number {number} on a Berth disk (1 to 4)")]
    NoSuchPartition { number: u32 },
    #[error("disk image file is {actual} bytes, larger than the planned disk of {planned} bytes")]
    FileTooLarge { actual: u64, planned: u64 },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing the GPT: {what}: {source}")]
    WriteGpt {
        what: &'static str,
        #[source]
        source: gpt::GptError,
    },
    #[error("writing the protective MBR: {0}")]
    WriteMbr(#[source] gpt::mbr::MBRError),
    #[error("{path}: reading the GPT: {source}")]
    ReadGpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("{path}: partition {number} ({expected}) is missing from the GPT")]
    MissingPartition { path: PathBuf, number: u32, expected: &'static str },
    #[error("{path}: partition {number} is labelled {found:?}, expected {expected:?}")]
    WrongLabel { path: PathBuf, number: u32, found: String, expected: &'static str },
    #[error("{path}: partition {number} ({label}) has type {found}, expected {expected}")]
    WrongType { path: PathBuf, number: u32, label: &'static str, found: Uuid, expected: Uuid },
    #[error("{path}: {what}: {source}")]
    SlotGpt {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: berth_slot::gpt::GptError,
    },
}

/// How big the disk and its STATE partition are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    /// The disk has exactly this many bytes; STATE takes the rest after `ROOT-B`, rounded down
    /// to the alignment, leaving room for the backup GPT.
    Total(u64),
    /// STATE gets exactly this many bytes; the disk is the smallest that holds it (plus one
    /// alignment unit at the end for the backup GPT).
    State(u64),
    /// A disk of `total` bytes whose STATE has `state` bytes; the space after STATE is left
    /// unpartitioned (STATE grows into it on first boot).
    Both { total: u64, state: u64 },
}

/// The inputs of a disk layout: partition sizes and the seed every GUID derives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// Size of `EFI-SYSTEM` in bytes (a multiple of [`PARTITION_ALIGNMENT`]).
    pub esp_size: u64,
    /// Size of each of `ROOT-A` and `ROOT-B` in bytes (a multiple of [`PARTITION_ALIGNMENT`]).
    pub root_size: u64,
    /// Disk and STATE size.
    pub size: DiskSize,
    /// Bytes identifying the image (for example a hash of its definition). The disk GUID and
    /// every partition GUID are derived from it: same seed, same GUIDs.
    pub seed: Vec<u8>,
}

/// One partition of a [`DiskPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// 1-based GPT partition number.
    pub number: u32,
    pub label: &'static str,
    pub type_guid: Uuid,
    /// The unique partition GUID (what `root=PARTUUID=` names).
    pub guid: Uuid,
    /// Byte offset of the first byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// The 64-bit GPT attribute field.
    pub attributes: u64,
}

impl PartitionPlan {
    pub fn first_lba(&self) -> u64 {
        self.offset / SECTOR_SIZE
    }

    /// Last LBA, inclusive (as GPT stores it).
    pub fn last_lba(&self) -> u64 {
        (self.offset + self.size) / SECTOR_SIZE - 1
    }

    /// Byte offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// Where every partition of a Berth disk lies, with its GUIDs and attributes. Made by
/// [`DiskLayout::plan`], so its geometry is always valid; only attributes can be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    disk_size: u64,
    disk_guid: Uuid,
    /// Indexed by partition number - 1.
    partitions: [PartitionPlan; 4],
}

impl DiskLayout {
    /// A layout with the default ESP and root sizes of docs/design.md §2.
    pub fn new(size: DiskSize, seed: impl Into<Vec<u8>>) -> Self {
        DiskLayout { esp_size: DEFAULT_ESP_SIZE, root_size: DEFAULT_ROOT_SIZE, size, seed: seed.into() }
    }

    /// Places the partitions. Fails if a size is not aligned or the partitions do not fit
    /// the disk (the error names the bytes needed and available).
    pub fn plan(&self) -> Result<DiskPlan, DiskError> {
        check_aligned("EFI-SYSTEM", self.esp_size)?;
        check_aligned("ROOT", self.root_size)?;

        // The first partition starts on the first alignment boundary after the primary GPT.
        let esp_start = PRIMARY_GPT_BYTES.next_multiple_of(PARTITION_ALIGNMENT);
        let root_a_start = esp_start.checked_add(self.esp_size).ok_or(DiskError::Overflow)?;
        let root_b_start = root_a_start.checked_add(self.root_size).ok_or(DiskError::Overflow)?;
        let state_start = root_b_start.checked_add(self.root_size).ok_or(DiskError::Overflow)?;

        let (disk_size, state_size) = match self.size {
            DiskSize::Total(total) => {
                check_disk_size(total)?;
                let needed = state_start.checked_add(MIN_STATE_SIZE + BACKUP_GPT_BYTES).ok_or(DiskError::Overflow)?;
                if total < needed {
                    return Err(DiskError::DoesNotFit { needed, available: total });
                }
                // Usable space ends where the backup entry array begins; STATE ends on the last
                // alignment boundary before it.
                let state_end = (total - BACKUP_GPT_BYTES) / PARTITION_ALIGNMENT * PARTITION_ALIGNMENT;
                (total, state_end - state_start)
            }
            DiskSize::State(state) => {
                check_aligned("STATE", state)?;
                let total = state_start
                    .checked_add(state)
                    .and_then(|end| end.checked_add(BACKUP_GPT_BYTES.next_multiple_of(PARTITION_ALIGNMENT)))
                    .ok_or(DiskError::Overflow)?;
                (total, state)
            }
            DiskSize::Both { total, state } => {
                check_disk_size(total)?;
                check_aligned("STATE", state)?;
                let needed = state_start
                    .checked_add(state)
                    .and_then(|end| end.checked_add(BACKUP_GPT_BYTES))
                    .ok_or(DiskError::Overflow)?;
                if total < needed {
                    return Err(DiskError::DoesNotFit { needed, available: total });
                }
                (total, state)
            }
        };

        let part =
            |number: u32, label: &'static str, type_guid: Uuid, offset: u64, size: u64, attrs: u64| PartitionPlan {
                number,
                label,
                type_guid,
                guid: derive_guid(&self.seed, &format!("partition {label}")),
                offset,
                size,
                attributes: attrs,
            };
        let partitions = [
            part(ESP_PARTITION, ESP_LABEL, ESP_TYPE, esp_start, self.esp_size, 0),
            part(
                Slot::A.partition_number(),
                Slot::A.label(),
                ROOT_TYPE,
                root_a_start,
                self.root_size,
                SlotAttrs::FRESH_ACTIVE.apply_to(0),
            ),
            part(
                Slot::B.partition_number(),
                Slot::B.label(),
                ROOT_TYPE,
                root_b_start,
                self.root_size,
                SlotAttrs::EMPTY.apply_to(0),
            ),
            part(STATE_PARTITION, STATE_LABEL, STATE_TYPE, state_start, state_size, 0),
        ];
        Ok(DiskPlan { disk_size, disk_guid: derive_guid(&self.seed, "disk"), partitions })
    }
}

fn check_aligned(what: &'static str, size: u64) -> Result<(), DiskError> {
    if size == 0 || !size.is_multiple_of(PARTITION_ALIGNMENT) {
        return Err(DiskError::BadPartitionSize { what, size, alignment: PARTITION_ALIGNMENT });
    }
    Ok(())
}

fn check_disk_size(size: u64) -> Result<(), DiskError> {
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(DiskError::BadDiskSize { size, sector: SECTOR_SIZE });
    }
    Ok(())
}

impl DiskPlan {
    /// Total size of the disk image in bytes.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    pub fn disk_guid(&self) -> Uuid {
        self.disk_guid
    }

    /// All four partitions, in partition-number order.
    pub fn partitions(&self) -> &[PartitionPlan] {
        &self.partitions
    }

    /// The partition with this 1-based number, if it is one of the four.
    pub fn partition(&self, number: u32) -> Option<&PartitionPlan> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.partitions.get(index)
    }

    pub fn esp(&self) -> &PartitionPlan {
        &self.partitions[0]
    }

    pub fn root(&self, slot: Slot) -> &PartitionPlan {
        match slot {
            Slot::A => &self.partitions[1],
            Slot::B => &self.partitions[2],
        }
    }

    pub fn state(&self) -> &PartitionPlan {
        &self.partitions[3]
    }

    /// The boot state currently planned for `slot`.
    pub fn slot_attrs(&self, slot: Slot) -> SlotAttrs {
        SlotAttrs::from_raw(self.root(slot).attributes)
    }

    /// Sets the boot state of `slot`, keeping every other attribute bit as it is.
    pub fn set_slot_attrs(&mut self, slot: Slot, attrs: SlotAttrs) {
        let index = match slot {
            Slot::A => 1,
            Slot::B => 2,
        };
        let p = &mut self.partitions[index];
        p.attributes = attrs.apply_to(p.attributes);
    }

    /// Replaces the whole 64-bit attribute field of a partition (slot bits included).
    pub fn set_attributes(&mut self, number: u32, raw: u64) -> Result<(), DiskError> {
        let index = usize::try_from(number.wrapping_sub(1)).unwrap_or(usize::MAX);
        let p = self.partitions.get_mut(index).ok_or(DiskError::NoSuchPartition { number })?;
        p.attributes = raw;
        Ok(())
    }
}

/// A version-4-shaped GUID derived from `seed` and `purpose` with SHA-256: the same inputs give
/// the same GUID, different purposes give unrelated ones. Other writers use it for their
/// filesystem UUIDs so that every identifier of an image follows from its definition.
pub fn derive_guid(seed: &[u8], purpose: &str) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"berth guid v1\0");
    // Length-prefixed so that no (seed, purpose) pair can collide with another by shifting bytes.
    h.update((seed.len() as u64).to_le_bytes());
    h.update(seed);
    h.update(purpose.as_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Writes the protective MBR and both GPTs of `plan` into `file`, which is extended (sparsely)
/// to the planned disk size if it is shorter. Only the table sectors are written: sector 0,
/// the primary header and entry array, the backup entry array and the backup header (backup
/// first, then primary, as for an update).
pub fn write_gpt(file: &File, plan: &DiskPlan) -> Result<(), DiskError> {
    let io = |what| move |source| DiskError::Io { what, source };
    let len = file.metadata().map_err(io("reading the file size"))?.len();
    if len > plan.disk_size {
        return Err(DiskError::FileTooLarge { actual: len, planned: plan.disk_size });
    }
    if len < plan.disk_size {
        file.set_len(plan.disk_size).map_err(io("extending the file"))?;
    }

    let gpt_err = |what| move |source| DiskError::WriteGpt { what, source };
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(file, Some(plan.disk_guid))
        .map_err(gpt_err("creating the headers"))?;

    let entries: BTreeMap<u32, Partition> = plan
        .partitions
        .iter()
        .map(|p| {
            let entry = Partition {
                part_type_guid: p.type_guid.into(),
                part_guid: p.guid,
                first_lba: p.first_lba(),
                last_lba: p.last_lba(),
                flags: p.attributes,
                name: p.label.to_string(),
            };
            (p.number, entry)
        })
        .collect();
    disk.update_partitions(entries).map_err(gpt_err("setting the partition entries"))?;

    // The gpt crate does not check entries against the usable range; a plan always fits it,
    // but say so plainly rather than write a table sgdisk would reject.
    let (first_usable, last_usable) = {
        let h = disk.header();
        (h.first_usable, h.last_usable)
    };
    if let Some(p) = plan.partitions.iter().find(|p| p.first_lba() < first_usable || p.last_lba() > last_usable) {
        return Err(DiskError::DoesNotFit {
            needed: p.end() + BACKUP_GPT_BYTES,
            available: (last_usable + 1) * SECTOR_SIZE + BACKUP_GPT_BYTES,
        });
    }

    disk.write_inplace().map_err(gpt_err("writing headers and entries"))?;

    // The protective partition covers the whole disk after LBA 0, capped at what 32 bits hold.
    let sectors = plan.disk_size / SECTOR_SIZE;
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(disk.device_mut()).map_err(DiskError::WriteMbr)?;
    Ok(())
}

/// Creates (or truncates) the image file at `path`, sized to the plan (sparse), with the
/// partition tables written. The partitions' contents are left to their writers.
pub fn create_image(path: &Path, plan: &DiskPlan) -> Result<File, DiskError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|source| DiskError::File { path: path.to_path_buf(), source })?;
    write_gpt(&file, plan)?;
    Ok(file)
}

/// Reads the boot state of slots A and B from the GPT of the disk image at `path`. Both GPT
/// headers must be valid, and partitions 2 and 3 must be the root slots.
pub fn read_slots(path: &Path) -> Result<(SlotAttrs, SlotAttrs), DiskError> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(path)
        .map_err(|source| DiskError::ReadGpt { path: path.to_path_buf(), source })?;
    let read = |slot: Slot| -> Result<SlotAttrs, DiskError> {
        let number = slot.partition_number();
        let p = disk.partitions().get(&number).ok_or(DiskError::MissingPartition {
            path: path.to_path_buf(),
            number,
            expected: slot.label(),
        })?;
        if p.name != slot.label() {
            return Err(DiskError::WrongLabel {
                path: path.to_path_buf(),
                number,
                found: p.name.clone(),
                expected: slot.label(),
            });
        }
        if p.part_type_guid.guid != ROOT_TYPE {
            return Err(DiskError::WrongType {
                path: path.to_path_buf(),
                number,
                label: slot.label(),
                found: p.part_type_guid.guid,
                expected: ROOT_TYPE,
            });
        }
        Ok(SlotAttrs::from_raw(p.flags))
    };
    Ok((read(Slot::A)?, read(Slot::B)?))
}

/// Writes the boot state of slots A and B into both GPT copies of the disk image at `path`,
/// keeping every other attribute bit. Both copies must be valid first. The backup is written
/// and flushed before the primary, as bootmgr does, so an interruption leaves one valid copy.
pub fn write_slots(path: &Path, a: SlotAttrs, b: SlotAttrs) -> Result<(), DiskError> {
    use berth_slot::gpt::{Gpt, Header};
    let file_err = |source| DiskError::File { path: path.to_path_buf(), source };
    let gpt_err = |what| move |source| DiskError::SlotGpt { path: path.to_path_buf(), what, source };
    let file = File::options().read(true).write(true).open(path).map_err(file_err)?;
    let read = |lba: u64, len: usize| -> Result<Vec<u8>, DiskError> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, lba * SECTOR_SIZE).map_err(file_err)?;
        Ok(buf)
    };
    let sector = SECTOR_SIZE as usize;
    let primary = read(1, sector)?;
    let header = Header::parse(&primary).map_err(gpt_err("primary GPT header"))?;
    let mut table =
        Gpt::parse(&primary, &read(header.entries_lba, header.entries_bytes())?).map_err(gpt_err("primary GPT"))?;
    table.check_backup(&read(header.alternate_lba, sector)?).map_err(gpt_err("backup GPT header"))?;
    let slots = table.slots().map_err(gpt_err("reading the slots"))?.with(Slot::A, a).with(Slot::B, b);
    let out = table.with_slots(slots).map_err(gpt_err("setting the slots"))?.encode();
    let write = |lba: u64, data: &[u8]| file.write_all_at(data, lba * SECTOR_SIZE).map_err(file_err);
    write(out.backup_entries_lba, &out.entries)?;
    write(out.backup_header_lba, &out.backup_header)?;
    file.sync_data().map_err(file_err)?;
    write(out.primary_entries_lba, &out.entries)?;
    write(out.primary_header_lba, &out.primary_header)?;
    file.sync_data().map_err(file_err)
}

/// Writes STATE's initial content: the "unformatted STATE" marker of this disk
/// ([`berth_slot::layout::StateMarker::Fresh`] with the plan's disk GUID) in its first sector.
/// The rest of STATE stays zeros. berth-init formats STATE on first boot because of it, and
/// otherwise only a legacy STATE of zeros: a damaged filesystem is repaired or left alone (H3).
pub fn write_state_marker(file: &File, plan: &DiskPlan) -> Result<(), DiskError> {
    use berth_slot::layout::{STATE_MARKER_OFFSET, StateMarker};
    let disk = berth_slot::gpt::Guid(plan.disk_guid.to_bytes_le());
    file.write_all_at(&StateMarker::Fresh.encode(&disk), plan.state().offset + STATE_MARKER_OFFSET)
        .map_err(|source| DiskError::Io { what: "writing the marker of a new STATE", source })
}

/// A byte range `[offset, offset + len)` of a file, seen as a whole device with its own
/// position: what a filesystem writer formats when it writes into one partition of a disk
/// image. Reads and writes use positioned I/O, so several ranges of one file do not share
/// (or disturb) the file's cursor. Writing past the end of the range fails instead of spilling
/// into the next partition.
#[derive(Debug)]
pub struct FileRange<'f> {
    file: &'f File,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<'f> FileRange<'f> {
    pub fn new(file: &'f File, offset: u64, len: u64) -> Self {
        FileRange { file, offset, len, pos: 0 }
    }

    /// The range of one planned partition.
    pub fn partition(file: &'f File, p: &PartitionPlan) -> Self {
        FileRange::new(file, p.offset, p.size)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the range in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for FileRange<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("write past the end of the {}-byte range at offset {}", self.len, self.offset),
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        let put = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FileRange<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn layout(size: DiskSize) -> DiskLayout {
        DiskLayout { esp_size: 64 * MIB, root_size: 16 * MIB, size, seed: b"test".to_vec() }
    }

    #[test]
    fn total_size_gives_state_the_rest() {
        let plan = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        let offsets: Vec<_> = plan.partitions().iter().map(|p| (p.offset / MIB, p.size / MIB)).collect();
        assert_eq!(offsets, [(1, 64), (65, 16), (81, 16), (97, 52)]);
        assert_eq!(plan.disk_size(), 150 * MIB);
        assert_eq!(plan.slot_attrs(Slot::A), SlotAttrs::FRESH_ACTIVE);
        assert_eq!(plan.slot_attrs(Slot::B), SlotAttrs::EMPTY);
    }

    #[test]
    fn state_size_gives_smallest_disk() {
        let plan = layout(DiskSize::State(8 * MIB)).plan().unwrap();
        assert_eq!(plan.state().size, 8 * MIB);
        assert_eq!(plan.disk_size(), (97 + 8 + 1) * MIB);
        let both = layout(DiskSize::Both { total: 200 * MIB, state: 8 * MIB }).plan().unwrap();
        assert_eq!(both.state().end(), 105 * MIB);
        assert_eq!(both.disk_size(), 200 * MIB);
    }

    #[test]
    fn misfits_and_misalignment_are_errors() {
        let e = layout(DiskSize::Total(97 * MIB)).plan().unwrap_err();
        assert!(matches!(e, DiskError::DoesNotFit { needed, available } if needed > available), "{e}");
        let mut l = layout(DiskSize::Total(150 * MIB));
        l.esp_size += 512;
        assert!(matches!(l.plan(), Err(DiskError::BadPartitionSize { what: "EFI-SYSTEM", .. })));
        assert!(matches!(layout(DiskSize::Total(150 * MIB + 1)).plan(), Err(DiskError::BadDiskSize { .. })));
        let huge = DiskLayout { esp_size: u64::MAX / MIB * MIB, ..layout(DiskSize::State(MIB)) };
        assert!(matches!(huge.plan(), Err(DiskError::Overflow)));
    }

    #[test]
    fn guids_follow_the_seed() {
        let a = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        let b = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        assert_eq!(a, b);
        let mut other = layout(DiskSize::Total(150 * MIB));
        other.seed = b"other".to_vec();
        let c = other.plan().unwrap();
        assert_ne!(a.disk_guid(), c.disk_guid());
        let mut guids: Vec<_> = a.partitions().iter().map(|p| p.guid).collect();
        guids.push(a.disk_guid());
        guids.sort();
        guids.dedup();
        assert_eq!(guids.len(), 5);
        assert_eq!(a.disk_guid().get_version_num(), 4);
        assert_eq!(a.disk_guid().get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn attributes_keep_foreign_bits() {
        let mut plan = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        plan.set_attributes(2, 1 << 60 | 1).unwrap();
        let want = SlotAttrs { priority: 2, tries: 3, successful: false };
        plan.set_slot_attrs(Slot::A, want);
        assert_eq!(plan.root(Slot::A).attributes, want.apply_to(1 << 60 | 1));
        assert!(matches!(plan.set_attributes(5, 0), Err(DiskError::NoSuchPartition { number: 5 })));
        assert!(matches!(plan.set_attributes(0, 0), Err(DiskError::NoSuchPartition { number: 0 })));
    }

    #[test]
    fn write_slots_rewrites_both_copies_and_keeps_foreign_bits() {
        use berth_slot::gpt::{Gpt, Header};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut plan = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        plan.set_attributes(3, 1 << 60 | 1).unwrap();
        drop(create_image(&path, &plan).unwrap());

        let a = SlotAttrs { priority: 1, tries: 0, successful: true };
        let b = SlotAttrs { priority: 2, tries: 3, successful: false };
        write_slots(&path, a, b).unwrap();
        assert_eq!(read_slots(&path).unwrap(), (a, b));

        // The backup copy on its own says the same, and B's foreign bits survived.
        let f = File::open(&path).unwrap();
        let mut sector = vec![0u8; SECTOR_SIZE as usize];
        f.read_exact_at(&mut sector, plan.disk_size() - SECTOR_SIZE).unwrap();
        let header = Header::parse(&sector).unwrap();
        let mut entries = vec![0u8; header.entries_bytes()];
        f.read_exact_at(&mut entries, header.entries_lba * SECTOR_SIZE).unwrap();
        let backup = Gpt::with_header(header, &entries).unwrap();
        assert_eq!(backup.slots().unwrap().get(Slot::B), b);
        assert_eq!(backup.partition(3).unwrap().attributes, b.apply_to(1 << 60 | 1));

        // A damaged primary is refused rather than half-rewritten.
        f.read_exact_at(&mut sector, SECTOR_SIZE).unwrap();
        sector[0] ^= 0xff;
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&sector, SECTOR_SIZE).unwrap();
        let e = write_slots(&path, SlotAttrs::FRESH_ACTIVE, SlotAttrs::EMPTY).unwrap_err();
        assert!(matches!(e, DiskError::SlotGpt { what: "primary GPT header", .. }), "{e}");
    }

    #[test]
    fn h3_a_new_images_state_carries_the_marker_of_its_own_disk() {
        use berth_slot::gpt::Header;
        use berth_slot::layout::StateMarker;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let plan = layout(DiskSize::Total(150 * MIB)).plan().unwrap();
        let f = create_image(&path, &plan).unwrap();
        write_state_marker(&f, &plan).unwrap();
        // berth-init reads the disk GUID from the GPT, as here.
        let mut sector = vec![0u8; SECTOR_SIZE as usize];
        f.read_exact_at(&mut sector, SECTOR_SIZE).unwrap();
        let disk = Header::parse(&sector).unwrap().disk_guid;
        let mut first_mib = vec![0u8; MIB as usize];
        f.read_exact_at(&mut first_mib, plan.state().offset).unwrap();
        assert_eq!(StateMarker::parse(&first_mib, &disk), Some(StateMarker::Fresh));
        assert!(first_mib[512..].iter().all(|&b| b == 0), "the rest of STATE's first MiB must be zeros");
        // Nothing else of STATE, nor of the partition before it, was written.
        let mut before = vec![0u8; 4096];
        f.read_exact_at(&mut before, plan.state().offset - 4096).unwrap();
        assert!(before.iter().all(|&b| b == 0));
    }

    #[test]
    fn file_range_stays_inside() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(100).unwrap();
        let mut r = FileRange::new(&f, 10, 20);
        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), 20);
        r.seek(SeekFrom::Start(15)).unwrap();
        let e = r.write_all(&[1u8; 10]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let mut all = vec![0u8; 100];
        f.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all[25..30], &[1u8; 5]);
        assert_eq!(all[30], 0);
        r.seek(SeekFrom::Start(0)).unwrap();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len(), 20);
        assert!(r.seek(SeekFrom::Current(-100)).is_err());
    }
}
