//! STATE at every boot (docs/design.md §2, §3), before and after stage 2 mounts it.
//!
//! - [`prepare`], before mounting: finds STATE (label `STATE`, type GUID from
//!   `berth_slot::layout`) on the disk of the root partition; if the disk grew (the backup GPT
//!   is not on its last sector), moves the backup GPT to the end and extends STATE to the last
//!   whole MiB, and extends a STATE that stops short of it likewise; tells the kernel with
//!   `BLKPG_RESIZE_PARTITION` (`BLKRRPART` fails while the root on the same disk is mounted);
//!   then [`settle`]s the filesystem: mounts what is there, repairs a damaged primary
//!   superblock from a backup, and formats only a STATE that is provably new (the builder's
//!   marker, `berth_slot::layout::StateMarker`, or, from images older than the marker, a first
//!   MiB of zeros and no backup superblock anywhere). Anything else is an error: the boot goes
//!   on with a volatile `/var`, and STATE is left as it is for someone to look at.
//! - [`grow_filesystem`], after mounting: grows the ext4 online (`EXT4_IOC_RESIZE_FS`) when it
//!   is smaller than the partition.
//!
//! A boot that finds everything in place changes nothing. Power cuts: the backup GPT copy is
//! written and flushed before the primary changes (a cut in between leaves the old primary and
//! its intact old backup; a torn primary leaves the new backup at the disk's end, where the
//! kernel and bootmgr look, and the next boot rewrites both from it); a new filesystem is
//! preceded by the "formatting" marker and gets its primary superblock last, so a cut leaves
//! the marker (formatted again) or a whole filesystem.

use std::ffi::{c_char, c_int, c_void};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{At, StorageError, invalid};
use berth_ext4::superblock::{self as ext4sb, Health};
use berth_fstree::{Metadata, Tree};
use berth_slot::gpt::{Entry, Gpt, Guid};
use berth_slot::layout::{
    ESP_LABEL, ESP_TYPE_GUID, PARTITION_ALIGNMENT, SECTOR_SIZE, STATE_LABEL, STATE_MARKER_LEN, STATE_MARKER_OFFSET,
    STATE_TYPE_GUID, StateMarker,
};

const SYS_BLOCK: &str = "/sys/class/block";
/// The ext4 superblock starts 1024 bytes into the partition.
const SUPERBLOCK: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
/// A fresh image's STATE is zeros here besides the marker; so is a legacy one.
const FIRST_MIB: u64 = 1 << 20;
/// The largest filesystem put on STATE (M6): 32-bit block numbers (no `64bit` feature) less one
/// block group, 16 TiB - 128 MiB; a larger partition keeps the rest unused.
pub const MAX_FS_BYTES: u64 = (berth_ext4::MAX_BLOCKS + 1 - 32768) * berth_ext4::BLOCK_SIZE;

/// `struct blkpg_partition` (linux/blkpg.h); start and length in bytes.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: c_int,
    devname: [c_char; 64],
    volname: [c_char; 64],
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

const BLKPG_RESIZE_PARTITION: c_int = 3;

// BLKPG is _IO(0x12, 105) although it takes a pointer: hence the "bad" variant.
nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
// EXT4_IOC_RESIZE_FS is _IOW('f', 16, __u64): the new size in filesystem blocks.
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

/// What [`prepare`] found and did; [`Prepared::log_lines`] says it in one line per action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// STATE's device node, e.g. `/dev/vda4`: what to mount.
    pub device: PathBuf,
    /// The disk holding STATE and the root, e.g. `/dev/vda`.
    pub disk: PathBuf,
    /// STATE's size in bytes as the kernel sees it now.
    pub bytes: u64,
    /// The partition was grown in the GPT.
    pub grown: Option<Grown>,
    /// Why both GPT copies were rewritten besides growing (a damaged copy), if they were.
    pub repaired: Option<String>,
    /// A filesystem was created.
    pub created: Option<Created>,
    /// The primary superblock was damaged and was rewritten from a backup: what was found.
    pub fs_repaired: Option<String>,
    /// The health the filesystem's superblock records (L8), when there is a filesystem.
    pub health: Option<Health>,
    /// What went wrong without making STATE unusable (it was not grown, and why).
    pub warnings: Vec<String>,
}

/// STATE grown in the GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// Partition size in bytes before.
    pub old_bytes: u64,
    /// Partition size in bytes after (the same if only the backup GPT moved).
    pub new_bytes: u64,
    /// The backup GPT moved to the new end of the disk.
    pub backup_moved: bool,
}

/// A filesystem created on STATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Filesystem size in bytes.
    pub bytes: u64,
    /// Inodes it has.
    pub inodes: u32,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
    /// Why formatting was allowed.
    pub why: &'static str,
    /// How long writing it took.
    pub took: Duration,
}

/// A mounted filesystem grown by [`grow_filesystem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrown {
    /// Filesystem size in bytes before.
    pub old_bytes: u64,
    /// Filesystem size in bytes after.
    pub new_bytes: u64,
    /// How long the kernel took.
    pub took: Duration,
}

impl Prepared {
    /// One line per action (or one saying there was none), for the console.
    pub fn log_lines(&self) -> Vec<String> {
        let dev = self.device.display();
        let disk = self.disk.display();
        let mut lines = Vec::new();
        if let Some(g) = &self.grown {
            let moved = if g.backup_moved { format!(", backup GPT moved to the end of {disk}") } else { String::new() };
            if g.new_bytes > g.old_bytes {
                lines.push(format!(
                    "STATE {dev}: partition grown from {} to {}{moved}",
                    size_text(g.old_bytes),
                    size_text(g.new_bytes)
                ));
            } else {
                lines.push(format!("STATE {dev}: already fills {disk}{moved}"));
            }
        }
        if let Some(why) = &self.repaired {
            lines.push(format!("GPT of {disk}: {why}; both copies rewritten"));
        }
        if let Some(c) = &self.created {
            lines.push(format!(
                "STATE {dev}: created ext4 of {} ({} inodes, {} reserved for root) in {} ms: {}",
                size_text(c.bytes),
                c.inodes,
                size_text(c.reserved_blocks * berth_ext4::BLOCK_SIZE),
                c.took.as_millis(),
                c.why
            ));
        }
        if let Some(r) = &self.fs_repaired {
            lines.push(format!("STATE {dev}: REPAIRED: {r}"));
        }
        for w in &self.warnings {
            lines.push(format!("STATE {dev}: {w}"));
        }
        if lines.is_empty() {
            lines.push(format!("STATE {dev}: {}, ext4 present", size_text(self.bytes)));
        }
        if let Some(h) = &self.health {
            lines.push(format!("STATE {dev}: {}", health_text(h, &self.device)));
        }
        lines
    }
}

/// Finds STATE on the disk of `root` (the root partition's device node, e.g. `/dev/vda2`),
/// grows it to the end of the disk if there is room, tells the kernel, and creates its
/// filesystem if it has none. Call before mounting STATE.
///
/// Errors are what leaves no usable STATE (no STATE partition, no readable GPT, the kernel's
/// partition not where the GPT says, formatting failed); a GPT that cannot be grown is only
/// a warning in the report.
pub fn prepare(root: &Path) -> Result<Prepared, StorageError> {
    let disk = Disk::of_partition(root)?;
    let file = File::open(&disk.node).at(|| format!("opening {}", disk.node.display()))?;
    let (gpt, damaged) = disk.read_gpt(&file)?;
    drop(file);
    let state = find_state(&gpt).at(|| format!("{}", disk.node.display()))?;
    let mut report = Prepared {
        device: PathBuf::new(),
        disk: disk.node.clone(),
        bytes: 0,
        grown: None,
        repaired: None,
        created: None,
        fs_repaired: None,
        health: None,
        warnings: Vec::new(),
    };

    // The GPT: grown, or rewritten whole if a copy is damaged, or left alone.
    let mut entry = state.clone();
    let mut new_gpt = None;
    match gpt.grow_partition(disk.lbas, state.number, PARTITION_ALIGNMENT / SECTOR_SIZE) {
        Ok(Some(g)) => {
            report.grown = Some(Grown {
                old_bytes: part_bytes(&state),
                new_bytes: (g.new_last_lba + 1 - state.first_lba) * SECTOR_SIZE,
                backup_moved: g.backup_moved,
            });
            new_gpt = Some(g.gpt);
        }
        Ok(None) => {}
        Err(e) => report.warnings.push(format!("not grown: {e}")),
    }
    if let Some(why) = damaged {
        report.repaired = Some(why);
        new_gpt = new_gpt.or_else(|| Some(gpt.clone()));
    }
    if let Some(new) = new_gpt {
        match disk.write_gpt(&new) {
            Ok(()) => entry = new.partition(state.number).unwrap_or(entry),
            Err(e) => {
                report.warnings.push(format!("GPT not rewritten, STATE not grown: {e}"));
                report.grown = None;
                report.repaired = None;
            }
        }
    }

    // The kernel's view of the partition: same start, and the size the GPT now gives.
    let part = disk.partition(entry.number)?;
    report.device = part.node.clone();
    let (start, sectors) = part.extent()?;
    if start != entry.first_lba {
        return Err(invalid(format!(
            "{}: the kernel has partition {} at sector {start}, the GPT has STATE at {}; not touching it",
            part.node.display(),
            entry.number,
            entry.first_lba
        )));
    }
    let want = entry.last_lba + 1 - entry.first_lba;
    if sectors < want {
        if let Err(e) = disk.tell_kernel(entry.number, start, want) {
            report.warnings.push(format!(
                "the kernel was not told the new size ({e}): {} until the next boot",
                size_text(sectors * SECTOR_SIZE)
            ));
        } else {
            let now = part.extent()?.1;
            if now != want {
                report
                    .warnings
                    .push(format!("BLKPG resize to {want} sectors done, but {}/size says {now}", part.sys.display()));
            }
        }
    }

    // The filesystem, on what the kernel exposes (never more than the GPT says).
    let node = &part.node;
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .at(|| format!("opening {} for writing", node.display()))?;
    report.bytes = dev.seek(SeekFrom::End(0)).at(|| format!("size of {}", node.display()))?;
    let settled = settle(&dev, node, report.bytes, &gpt.header().disk_guid, &entry.unique_guid)?;
    report.created = settled.created;
    report.fs_repaired = settled.repaired;
    report.health = settled.health;
    if settled.marker_cleared {
        report.warnings.push("the format's marker outlived a cut after the format; cleared".into());
    }
    Ok(report)
}

/// What [`settle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// A filesystem was created.
    pub created: Option<Created>,
    /// The primary superblock was rewritten from a backup: what was found.
    pub repaired: Option<String>,
    /// A marker left beside a whole filesystem (a cut just after formatting) was cleared.
    pub marker_cleared: bool,
    /// The health recorded in the (now valid) primary superblock.
    pub health: Option<Health>,
}

/// Makes STATE (`dev`, `bytes` long, on the disk whose GPT disk GUID is `disk_guid`) hold a
/// filesystem the kernel can mount, without ever destroying one (H3):
///
/// 1. A valid primary superblock: nothing to do.
/// 2. The builder's [`StateMarker::Fresh`] with the rest of the first MiB zeros, or
///    [`StateMarker::Formatting`] (a format that a cut interrupted): format.
/// 3. A backup superblock (`sparse_super` groups, any block size) whose filesystem the primary
///    group descriptors belong to: its copy becomes the primary.
/// 4. No marker, no backup superblock anywhere and a first MiB of zeros (an image from before
///    the marker): format.
/// 5. Anything else: an error that says what was found; nothing is written.
pub fn settle(
    dev: &File,
    node: &Path,
    bytes: u64,
    disk_guid: &Guid,
    part_guid: &Guid,
) -> Result<Settled, StorageError> {
    let name = node.display();
    let read = |at: u64, len: usize| -> Result<Vec<u8>, StorageError> {
        let mut b = vec![0u8; len];
        dev.read_exact_at(&mut b, at).at(|| format!("reading {len} bytes of {name} at {at}"))?;
        Ok(b)
    };
    let mut settled = Settled { created: None, repaired: None, marker_cleared: false, health: None };
    if bytes < ext4sb::PRIMARY_OFFSET + ext4sb::SIZE as u64 {
        return Err(invalid(format!("{name} is {bytes} bytes, too small for STATE")));
    }
    let marker_sector = read(STATE_MARKER_OFFSET, STATE_MARKER_LEN)?;
    let marker = StateMarker::parse(&marker_sector, disk_guid);
    let primary = ext4sb::Superblock::parse(&read(ext4sb::PRIMARY_OFFSET, ext4sb::SIZE)?);
    let damage = match primary {
        Ok(sb) => {
            if marker.is_some() {
                // The format finished but the cut came before its last write.
                dev.write_all_at(&[0u8; STATE_MARKER_LEN], STATE_MARKER_OFFSET)
                    .and_then(|()| dev.sync_data())
                    .at(|| format!("clearing the marker of {name}"))?;
                settled.marker_cleared = true;
            }
            settled.health = Some(sb.health);
            return Ok(settled);
        }
        Err(why) => why,
    };

    let first_mib = read(0, FIRST_MIB.min(bytes) as usize)?;
    let rest_zero = first_mib[STATE_MARKER_LEN..].iter().all(|&b| b == 0);
    let why = match marker {
        Some(StateMarker::Fresh) if rest_zero => Some("new STATE (the image's marker)"),
        Some(StateMarker::Formatting) => Some("new STATE (a format cut short is done again)"),
        _ => None,
    };
    if let Some(why) = why {
        settled.created = Some(format(dev, node, bytes, disk_guid, part_guid, why)?);
        settled.health = ext4sb::Superblock::parse(&read(ext4sb::PRIMARY_OFFSET, ext4sb::SIZE)?).ok().map(|s| s.health);
        return Ok(settled);
    }

    // The primary superblock is damaged: look for the backups.
    let mut found = Vec::new();
    let mut magic_at = Vec::new();
    for (at, bs, group) in ext4sb::backup_locations(bytes) {
        let raw = read(at, ext4sb::SIZE)?;
        if raw[0x38..0x3A] != EXT4_MAGIC.to_le_bytes() {
            continue;
        }
        magic_at.push(at);
        if let Ok(sb) = ext4sb::Superblock::parse(&raw)
            && ext4sb::is_backup_at(&sb, at, bs, group)
        {
            found.push((at, group, sb));
        }
    }
    let mut refused = Vec::new();
    for (at, group, sb) in &found {
        let gdt = read(sb.primary_descriptors_offset(), sb.block_size as usize)?;
        if let Err(e) = sb.descriptors_match(&gdt) {
            refused.push(format!("the backup in group {group} (byte {at}): {e}"));
            continue;
        }
        if sb.blocks * sb.block_size > bytes {
            refused.push(format!(
                "the backup in group {group} describes {} bytes, more than {bytes}",
                sb.blocks * sb.block_size
            ));
            continue;
        }
        // A journal that may hold transactions is replayed at mount: the copy must say so.
        let replay = match sb.journal_offset() {
            Some(at) => !ext4sb::journal_is_empty(&read(at, 1024)?),
            None => sb.has_journal,
        };
        // What e2fsck -b does first; the group descriptors are the primary's own (they match).
        dev.write_all_at(&sb.as_primary(replay), ext4sb::PRIMARY_OFFSET)
            .and_then(|()| dev.sync_data())
            .at(|| format!("writing the repaired superblock of {name}"))?;
        let again = ext4sb::Superblock::parse(&read(ext4sb::PRIMARY_OFFSET, ext4sb::SIZE)?)
            .at(|| format!("{name}: the superblock repaired from group {group} reads back bad"))?;
        settled.repaired = Some(format!(
            "primary superblock damaged ({damage}); rewritten from the backup in group {group} (block {} of {} \
             bytes){}",
            at / sb.block_size,
            sb.block_size,
            if replay { "; its journal is replayed at mount" } else { "" }
        ));
        settled.health = Some(again.health);
        return Ok(settled);
    }

    if marker.is_none() && magic_at.is_empty() && first_mib.iter().all(|&b| b == 0) {
        let why = "new STATE (zeros, from an image without the marker)";
        settled.created = Some(format(dev, node, bytes, disk_guid, part_guid, why)?);
        settled.health = ext4sb::Superblock::parse(&read(ext4sb::PRIMARY_OFFSET, ext4sb::SIZE)?).ok().map(|s| s.health);
        return Ok(settled);
    }
    let mut what = vec![format!("primary superblock: {damage}")];
    match marker {
        Some(_) => what.push("the image's marker is there but the rest of the first MiB is not zeros".into()),
        None if first_mib.iter().all(|&b| b == 0) => what.push("the first MiB is zeros".into()),
        None => what.push("no marker of a new STATE, and the first MiB holds data".into()),
    }
    if magic_at.is_empty() {
        what.push("no backup superblock found".into());
    } else if found.is_empty() {
        what.push(format!("ext4 magic numbers at byte offsets {magic_at:?}, none a valid backup superblock"));
    }
    what.extend(refused);
    Err(invalid(format!(
        "{name} was NOT formatted, it may hold data: {}. Look at it with `dumpe2fs`/`e2fsck -n -b BLOCK` from another \
         system; formatting it is a manual decision",
        what.join("; ")
    )))
}

/// Formats STATE: the "formatting" marker first, then an empty journaled ext4 over all of it
/// (up to [`MAX_FS_BYTES`]), superblock last.
fn format(
    dev: &File,
    node: &Path,
    bytes: u64,
    disk_guid: &Guid,
    part_guid: &Guid,
    why: &'static str,
) -> Result<Created, StorageError> {
    dev.write_all_at(&StateMarker::Formatting.encode(disk_guid), STATE_MARKER_OFFSET)
        .and_then(|()| dev.sync_data())
        .at(|| format!("writing the formatting marker to {}", node.display()))?;
    mkfs(node, dev, bytes.min(MAX_FS_BYTES), part_guid, why)
}

/// Grows the ext4 on `device`, mounted on `mount_point`, to fill the partition. `Ok(None)`:
/// it fills it already (up to a last block group too small for the kernel to add).
pub fn grow_filesystem(device: &Path, mount_point: &Path) -> Result<Option<FsGrown>, StorageError> {
    let mut dev = File::open(device).at(|| format!("opening {}", device.display()))?;
    let bytes = dev.seek(SeekFrom::End(0)).at(|| format!("size of {}", device.display()))?;
    let sb = Superblock::read(&dev, device)?;
    // Without 64bit the block count stops at 32 bits (M6): the rest of a larger partition stays unused.
    let limit = if sb.is_64bit { u64::MAX } else { MAX_FS_BYTES / sb.block_size };
    let target = sb.grow_target((bytes / sb.block_size).min(limit));
    if target <= sb.blocks {
        return Ok(None);
    }
    // The ioctl resizes whatever filesystem holds the directory: make sure it is this one.
    let on = std::fs::metadata(mount_point).at(|| format!("{}", mount_point.display()))?.dev();
    let rdev = dev.metadata().at(|| format!("{}", device.display()))?.rdev();
    if on != rdev {
        return Err(invalid(format!("{} is not where {} is mounted", mount_point.display(), device.display())));
    }
    let dir = File::open(mount_point).at(|| format!("opening {}", mount_point.display()))?;
    let started = Instant::now();
    // SAFETY: `target` outlives the call; the kernel only reads the u64 it points to.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &target) }.at(|| {
        format!(
            "growing the ext4 on {} (mounted on {}) from {} to {target} blocks",
            device.display(),
            mount_point.display(),
            sb.blocks
        )
    })?;
    let took = started.elapsed();
    // The mounted filesystem's superblock lives in the device's page cache: this sees it.
    let after = Superblock::read(&dev, device)?.blocks;
    Ok(Some(FsGrown { old_bytes: sb.blocks * sb.block_size, new_bytes: after * sb.block_size, took }))
}

/// STATE's entry: label `STATE` and the STATE type GUID, exactly one.
/// The boot state of `slot` in the GPT of the disk `root` (a partition) is on: what stage 2's
/// boot deadline reads to know whether the booted slot is on trial.
pub fn slot_attrs(root: &Path, slot: berth_slot::layout::Slot) -> Result<berth_slot::attrs::SlotAttrs, StorageError> {
    let disk = Disk::of_partition(root)?;
    let file = File::open(&disk.node).at(|| format!("opening {}", disk.node.display()))?;
    let (gpt, _) = disk.read_gpt(&file)?;
    let slots = gpt.slots().at(|| format!("{}", disk.node.display()))?;
    Ok(slots.get(slot))
}

fn find_state(gpt: &Gpt) -> Result<Entry, StorageError> {
    let ty = Guid::parse(STATE_TYPE_GUID).ok_or_else(|| invalid("the STATE type GUID does not parse".into()))?;
    let mut found = gpt.partitions().filter(|e| e.name == STATE_LABEL && e.type_guid == ty);
    match (found.next(), found.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(invalid(format!("no partition labelled {STATE_LABEL} with type {STATE_TYPE_GUID}"))),
        (Some(a), Some(b)) => Err(invalid(format!(
            "partitions {} and {} are both labelled {STATE_LABEL}: which is STATE?",
            a.number, b.number
        ))),
    }
}

/// The ESP (label `EFI-SYSTEM`, the ESP type GUID) on the disk of `root` (the root
/// partition's device node), as the kernel's device node. Only read, never written or mounted:
/// first-boot provisioning's ESP source (`stage2::provision::esp`) reads a file from it.
pub fn esp(root: &Path) -> Result<PathBuf, StorageError> {
    let disk = Disk::of_partition(root)?;
    let file = File::open(&disk.node).at(|| format!("opening {}", disk.node.display()))?;
    let (gpt, _) = disk.read_gpt(&file)?;
    drop(file);
    let ty = Guid::parse(ESP_TYPE_GUID).ok_or_else(|| invalid("the ESP type GUID does not parse".into()))?;
    let mut found = gpt.partitions().filter(|e| e.name == ESP_LABEL && e.type_guid == ty);
    let entry = match (found.next(), found.next()) {
        (Some(e), None) => e,
        (None, _) => {
            return Err(invalid(format!(
                "{}: no partition labelled {ESP_LABEL} with type {ESP_TYPE_GUID}",
                disk.node.display()
            )));
        }
        (Some(a), Some(b)) => {
            return Err(invalid(format!(
                "{}: partitions {} and {} are both labelled {ESP_LABEL}: which is the ESP?",
                disk.node.display(),
                a.number,
                b.number
            )));
        }
    };
    Ok(disk.partition(entry.number)?.node)
}

fn part_bytes(e: &Entry) -> u64 {
    (e.last_lba + 1 - e.first_lba) * SECTOR_SIZE
}

/// The whole disk a partition belongs to.
struct Disk {
    /// `/dev/vda`.
    node: PathBuf,
    /// `/sys/devices/.../block/vda`.
    sys: PathBuf,
    /// Size in 512-byte sectors.
    lbas: u64,
}

/// A partition as the kernel has it.
struct Part {
    node: PathBuf,
    sys: PathBuf,
}

impl Disk {
    fn of_partition(root: &Path) -> Result<Disk, StorageError> {
        // `/dev/disk/by-*` links lead to the kernel's name.
        let node = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let name = node.file_name().ok_or_else(|| invalid(format!("{}: no device name", root.display())))?;
        let sys_part = Path::new(SYS_BLOCK).join(name);
        if !sys_part.join("partition").exists() {
            return Err(invalid(format!("{}: not a partition (no {}/partition)", root.display(), sys_part.display())));
        }
        // The partition's sysfs directory sits in its disk's.
        let sys = std::fs::canonicalize(sys_part.join(".."))
            .at(|| format!("the disk of {} ({}/..)", root.display(), sys_part.display()))?;
        let disk_name = sys.file_name().ok_or_else(|| invalid(format!("{}: no disk name", sys.display())))?;
        let node = Path::new("/dev").join(disk_name);
        let lbs = read_u64(&sys.join("queue/logical_block_size")).unwrap_or(512);
        if lbs != SECTOR_SIZE {
            return Err(invalid(format!("{}: {lbs}-byte sectors; a Berth disk has 512-byte sectors", node.display())));
        }
        let lbas = read_u64(&sys.join("size")).ok_or_else(|| invalid(format!("{}/size unreadable", sys.display())))?;
        Ok(Disk { node, sys, lbas })
    }

    /// The GPT, from the primary copy or, if that is unusable, the backup
    /// ([`berth_slot::device::read`]).
    fn read_gpt(&self, file: &File) -> Result<(Gpt, Option<String>), StorageError> {
        berth_slot::device::read(file, &self.node, self.lbas).map_err(invalid)
    }

    /// Writes both GPT copies, the backup flushed before the primary is touched.
    fn write_gpt(&self, gpt: &Gpt) -> Result<(), StorageError> {
        let node = self.node.display();
        let file = OpenOptions::new().read(true).write(true).open(&self.node).at(|| format!("opening {node}"))?;
        let out = gpt.encode();
        for (copy, writes) in ["backup", "primary"].into_iter().zip(out.copies()) {
            for (lba, bytes) in &writes {
                file.write_all_at(bytes, lba * SECTOR_SIZE)
                    .at(|| format!("writing the {copy} GPT to {node} at LBA {lba}"))?;
            }
            file.sync_data().at(|| format!("flushing the {copy} GPT to {node}"))?;
        }
        match self.read_gpt(&file)? {
            (again, None) if again.encode() == out => Ok(()),
            _ => Err(invalid(format!("the GPT read back from {node} is not the one written"))),
        }
    }

    /// The kernel's partition `number` of this disk.
    fn partition(&self, number: u32) -> Result<Part, StorageError> {
        let dir = std::fs::read_dir(&self.sys).at(|| format!("{}", self.sys.display()))?;
        for entry in dir.filter_map(|e| e.ok()) {
            if read_u64(&entry.path().join("partition")) == Some(u64::from(number)) {
                return Ok(Part { node: Path::new("/dev").join(entry.file_name()), sys: entry.path() });
            }
        }
        Err(invalid(format!("{}: the kernel has no partition {number}", self.node.display())))
    }

    /// `BLKPG_RESIZE_PARTITION`: partition `number` now has `sectors` sectors from `start`.
    fn tell_kernel(&self, number: u32, start: u64, sectors: u64) -> Result<(), StorageError> {
        let node = self.node.display();
        let file = File::open(&self.node).at(|| format!("opening {node}"))?;
        let bytes = |s: u64| i64::try_from(s * SECTOR_SIZE).map_err(|_| invalid(format!("{s} sectors: too large")));
        let mut part = BlkpgPartition {
            start: bytes(start)?,
            length: bytes(sectors)?,
            pno: c_int::try_from(number).map_err(|_| invalid(format!("partition number {number}")))?,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: size_of::<BlkpgPartition>() as c_int,
            data: (&raw mut part).cast(),
        };
        // SAFETY: `arg` and the partition it points to outlive the call; the kernel only reads.
        unsafe { blkpg(file.as_raw_fd(), &arg) }
            .map(|_| ())
            .at(|| format!("BLKPG_RESIZE_PARTITION of partition {number} on {node}"))
    }
}

impl Part {
    /// Start and size in 512-byte sectors, as the kernel has them.
    fn extent(&self) -> Result<(u64, u64), StorageError> {
        let get = |f: &str| {
            read_u64(&self.sys.join(f)).ok_or_else(|| invalid(format!("{}/{f} unreadable", self.sys.display())))
        };
        Ok((get("start")?, get("size")?))
    }
}

/// Writes an empty journaled ext4 over the first `bytes` of `dev`, superblock last.
fn mkfs(node: &Path, dev: &File, bytes: u64, guid: &Guid, why: &'static str) -> Result<Created, StorageError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let timestamp = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
    // The partition GUID comes from the image, the same on every machine booted from it: fresh
    // random bytes make the UUID (and so every metadata checksum) and the directory hash seed
    // this machine's own, and differ from those of an earlier install on the same disk.
    let mut seed = guid.0.to_vec();
    seed.extend_from_slice(&random16(now));
    let tree = Tree::new(Metadata::root(0o755, i64::from(timestamp)));
    let opts = berth_ext4::Options::writable(STATE_LABEL, &seed, timestamp, bytes);
    let started = Instant::now();
    let report =
        berth_ext4::write_at_durably(&tree, dev, 0, &opts).at(|| format!("creating ext4 on {}", node.display()))?;
    Ok(Created {
        bytes: report.size,
        inodes: report.inodes,
        reserved_blocks: report.reserved_blocks,
        why,
        took: started.elapsed(),
    })
}

/// 16 bytes that differ between machines; the clock stands in on kernels before 5.6.
fn random16(now: Duration) -> [u8; 16] {
    crate::sys::random::bytes16().unwrap_or_else(|| now.as_nanos().to_le_bytes())
}

/// The fields of an ext4 superblock that growing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    blocks: u64,
    block_size: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    /// Inode-table blocks per group.
    itable_blocks: u64,
    desc_size: u64,
    reserved_gdt_blocks: u64,
    is_64bit: bool,
}

impl Superblock {
    fn read(dev: &File, node: &Path) -> Result<Superblock, StorageError> {
        let mut b = [0u8; 1024];
        dev.read_exact_at(&mut b, SUPERBLOCK).at(|| format!("reading the superblock of {}", node.display()))?;
        Superblock::parse(&b).at(|| format!("{}", node.display()))
    }

    fn parse(b: &[u8; 1024]) -> Result<Superblock, StorageError> {
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let u32_at = |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
        if u16_at(0x38) != u64::from(EXT4_MAGIC) {
            return Err(invalid("no ext4 superblock".into()));
        }
        let log = u32_at(0x18);
        let (per_group, ipg, isize) = (u32_at(0x20), u32_at(0x28), u16_at(0x58));
        if log > 6 || per_group == 0 || ipg == 0 || isize == 0 {
            return Err(invalid(format!(
                "implausible ext4 superblock (log block size {log}, {per_group} blocks and {ipg} inodes of {isize} bytes per group)"
            )));
        }
        let block_size = 1024 << log;
        let is_64bit = u32_at(0x60) & 0x80 != 0;
        Ok(Superblock {
            blocks: u32_at(0x04) | if is_64bit { u32_at(0x150) << 32 } else { 0 },
            block_size,
            first_data_block: u32_at(0x14),
            blocks_per_group: per_group,
            itable_blocks: (ipg * isize).div_ceil(block_size),
            desc_size: if is_64bit { u16_at(0xFE).max(32) } else { 32 },
            reserved_gdt_blocks: u16_at(0xCE),
            is_64bit,
        })
    }

    /// The block count the kernel grows to for a partition of `part_blocks`: it leaves out a
    /// last group too small for its metadata (ext4_resize_fs). Counting that metadata at its
    /// largest keeps the ioctl (which logs even when it does nothing) for growth it will do.
    fn grow_target(&self, part_blocks: u64) -> u64 {
        if part_blocks <= self.blocks {
            return self.blocks;
        }
        let group = (part_blocks - 1 - self.first_data_block) / self.blocks_per_group;
        let group_first = self.first_data_block + group * self.blocks_per_group;
        let gdt_blocks = ((group + 1) * self.desc_size).div_ceil(self.block_size);
        let overhead = 1 + gdt_blocks + self.reserved_gdt_blocks;
        if group_first + overhead + 2 + self.itable_blocks + 1 >= part_blocks {
            group_first.max(self.blocks)
        } else {
            part_blocks
        }
    }
}

/// STATE's health for the console (L8): one quiet line when the superblock records no error,
/// a loud one with the first and last error when it does.
pub fn health_text(h: &Health, device: &Path) -> String {
    let base = format!("ext4 {}, errors={}", h.state_text(), h.errors_text());
    if !h.has_errors() {
        return format!("{base}, no errors recorded");
    }
    let mut s = format!("WARNING: the filesystem records {} error(s) ({base})", h.error_count);
    if let Some(e) = &h.first_error {
        s += &format!("; first {e}");
    }
    if let Some(e) = &h.last_error {
        s += &format!("; last {e}");
    }
    s + &format!("; check it with `e2fsck -f {}` while it is not mounted", device.display())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `512 MiB`, `8.0 GiB`.
fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

#[cfg(test)]
mod tests;
