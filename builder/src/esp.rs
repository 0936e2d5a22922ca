//! The EFI system partition: a FAT32 filesystem written into a byte range of an image file.
//!
//! This module owns the ESP's *filesystem*: formatting FAT32 (UEFI requires it for the system
//! partition; the cluster size is chosen so the volume really is FAT32), and writing the files
//! docs/design.md §2 puts there (`EFI/BOOT/BOOTX64.EFI`, `berth/<slot>/{vmlinuz,initrd.img,cmdline}`)
//! in a deterministic order with fixed timestamps, a given volume id and label. Which files go
//! there is the caller's business ([`EspContents`]); where the partition lies is `disk`'s.
//!
//! The filesystem code is the `fatfs` crate, driven through a [`FileRange`] so that it sees
//! exactly the partition's bytes. Every time `fatfs` stamps on an entry comes from a fixed
//! clock built from the caller's epoch (`SOURCE_DATE_EPOCH`), never from the wall clock.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use berth_fstree::{FileData, TreeError};
use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use sha2::{Digest, Sha256};

use crate::disk::FileRange;

/// FAT sectors are 512 bytes here, like the disk's.
const FAT_SECTOR: u64 = 512;
/// Fewest clusters a FAT32 volume may have (below this, every reader takes it for FAT16).
pub const FAT32_MIN_CLUSTERS: u64 = 65525;
/// Margin kept above [`FAT32_MIN_CLUSTERS`]: some FAT implementations count clusters slightly
/// differently, and a volume right at the boundary could be read as FAT16 by them.
const FAT32_CLUSTER_MARGIN: u64 = 16;
/// Most clusters a FAT32 volume may have (28-bit cluster numbers minus reserved values).
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF4;
/// Cluster sizes tried, largest first: fewer clusters means a smaller FAT and faster writes,
/// and 4 KiB is the common ESP cluster size. Smaller ones let small ESPs stay FAT32.
const CLUSTER_SIZES: [u32; 4] = [4096, 2048, 1024, 512];
/// What `fatfs` 0.3 reserves at the start of a FAT32 volume (boot sector, FSInfo, backup).
const FATFS_RESERVED_SECTORS: u64 = 8;
/// Offset of the backup boot sector `fatfs` writes (in sectors).
const BACKUP_BOOT_SECTOR: u64 = 6;
/// Largest file FAT32 can hold.
const FAT32_MAX_FILE: u64 = u32::MAX as u64;

/// Errors of building an ESP, each naming the path, label or size at fault.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("ESP path {path:?}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("ESP path {path:?} is added twice")]
    Duplicate { path: String },
    #[error("ESP path {path:?} clashes with {other:?}: FAT names are case-insensitive")]
    CaseClash { path: String, other: String },
    #[error("ESP path {path:?}: {parent:?} is a file, not a directory")]
    ParentIsFile { path: String, parent: String },
    #[error("ESP file {path:?} has {size} bytes; a FAT32 file holds at most {FAT32_MAX_FILE}")]
    FileTooLarge { path: String, size: u64 },
    #[error("ESP volume label {label:?}: {why}")]
    BadLabel { label: String, why: &'static str },
    #[error("ESP byte range (offset {offset}, length {len}) is not a whole number of 512-byte sectors")]
    Unaligned { offset: u64, len: u64 },
    #[error(
        "ESP of {size} bytes is too small for FAT32, which UEFI requires: it needs at least {minimum} bytes \
         ({FAT32_MIN_CLUSTERS} clusters plus the FATs)"
    )]
    TooSmall { size: u64, minimum: u64 },
    #[error("ESP of {size} bytes is too large for FAT32 with clusters of at most 4 KiB")]
    TooLarge { size: u64 },
    #[error("formatting the ESP: {0}")]
    Format(#[source] io::Error),
    #[error("the formatted ESP is {found:?}, not FAT32 (cluster size {cluster_size})")]
    NotFat32 { found: FatType, cluster_size: u32 },
    #[error("ESP: creating {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("ESP: reading the content of {path:?}: {source}")]
    Read {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("ESP: finishing the filesystem: {0}")]
    Finish(#[source] io::Error),
}

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File(FileData),
}

/// The directories and files to put on an ESP. Paths are `/`-separated and relative to the
/// ESP root (a leading `/` is ignored); missing parent directories are added on the way.
#[derive(Debug, Clone, Default)]
pub struct EspContents {
    /// Keyed by path components: component-wise order puts every directory right before its
    /// contents, and names in sorted order, so the write order never depends on insertion.
    entries: BTreeMap<Vec<String>, Entry>,
    /// Upper-cased path → path as given, to catch names FAT would treat as the same.
    folded: BTreeMap<String, String>,
}

impl EspContents {
    pub fn new() -> Self {
        EspContents::default()
    }

    /// Adds an (empty) directory and its parents. Adding an existing directory again is fine.
    pub fn add_dir(&mut self, path: &str) -> Result<(), EspError> {
        let parts = split_path(path)?;
        self.add_parents(path, &parts, parts.len())
    }

    /// Adds a file with the given content (bytes in memory, or a range of a host file read when
    /// the ESP is written), and its parent directories.
    pub fn add_file(&mut self, path: &str, data: impl Into<FileData>) -> Result<(), EspError> {
        let data = data.into();
        let parts = split_path(path)?;
        if data.len() > FAT32_MAX_FILE {
            return Err(EspError::FileTooLarge { path: path.to_string(), size: data.len() });
        }
        self.add_parents(path, &parts, parts.len() - 1)?;
        if self.entries.contains_key(&parts) {
            return Err(EspError::Duplicate { path: path.to_string() });
        }
        self.claim_name(path, &parts)?;
        self.entries.insert(parts, Entry::File(data));
        Ok(())
    }

    /// Number of directories and files (implicit parents included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File(d) => d.len(),
                Entry::Dir => 0,
            })
            .sum()
    }

    /// Makes sure the first `depth` components of `parts` exist as directories.
    fn add_parents(&mut self, path: &str, parts: &[String], depth: usize) -> Result<(), EspError> {
        for i in 1..=depth {
            let dir = &parts[..i];
            match self.entries.get(dir) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => {
                    return Err(EspError::ParentIsFile { path: path.to_string(), parent: dir.join("/") });
                }
                None => {
                    self.claim_name(path, dir)?;
                    self.entries.insert(dir.to_vec(), Entry::Dir);
                }
            }
        }
        Ok(())
    }

    fn claim_name(&mut self, path: &str, parts: &[String]) -> Result<(), EspError> {
        let joined = parts.join("/");
        let folded = joined.to_uppercase();
        if let Some(other) = self.folded.get(&folded) {
            return Err(EspError::CaseClash { path: path.to_string(), other: other.clone() });
        }
        self.folded.insert(folded, joined);
        Ok(())
    }
}

/// Splits and checks a path: every name must be a valid FAT long file name.
fn split_path(path: &str) -> Result<Vec<String>, EspError> {
    let bad = |why| EspError::BadPath { path: path.to_string(), why };
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err(bad("the ESP root cannot be added"));
    }
    let mut parts = Vec::new();
    for name in trimmed.split('/') {
        if name.is_empty() {
            return Err(bad("empty name (doubled or trailing `/`)"));
        }
        if name == "." || name == ".." {
            return Err(bad("`.` and `..` are not names"));
        }
        if name.chars().any(|c| c < ' ' || c == '\x7f' || "\"*:<>?\\|".contains(c)) {
            return Err(bad("a name holds a character FAT does not allow (control, \" * : < > ? \\ |)"));
        }
        // Windows and the FAT specification strip these, so such a name could not be found again.
        if name.ends_with('.') || name.ends_with(' ') {
            return Err(bad("a name ends with `.` or a space"));
        }
        if name.encode_utf16().count() > 255 {
            return Err(bad("a name is longer than 255 UTF-16 units"));
        }
        parts.push(name.to_string());
    }
    Ok(parts)
}

/// How the ESP's filesystem is labelled and stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspOptions {
    /// The FAT volume serial number.
    pub volume_id: u32,
    /// Volume label: up to 11 characters, stored upper-case.
    pub label: String,
    /// Every timestamp of every entry, as seconds since the epoch (`SOURCE_DATE_EPOCH`), UTC.
    /// FAT can only hold 1980 to 2107; times outside are clamped to that range.
    pub mtime: i64,
}

impl EspOptions {
    /// Options whose volume id is derived from `seed` (SHA-256), so that it follows from the
    /// image definition like every other identifier of the disk.
    pub fn from_seed(seed: &[u8], label: &str, mtime: i64) -> Self {
        let digest = Sha256::new().chain_update(b"berth esp volume id v1\0").chain_update(seed).finalize();
        let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        EspOptions { volume_id, label: label.to_string(), mtime }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspSummary {
    pub cluster_size: u32,
    pub total_clusters: u32,
    pub free_clusters: u32,
}

/// Formats `[offset, offset + len)` of `file` as FAT32 and writes `contents` into it.
///
/// The whole range is owned by the ESP: its first sectors, the FATs and the root directory are
/// overwritten; the data area is only written where files go. The boot sector's hidden-sectors
/// field is set to `offset / 512`, the partition's start on the disk, as mkfs.fat does.
pub fn write_esp(
    file: &File,
    offset: u64,
    len: u64,
    contents: &EspContents,
    opts: &EspOptions,
) -> Result<EspSummary, EspError> {
    if !offset.is_multiple_of(FAT_SECTOR) || !len.is_multiple_of(FAT_SECTOR) {
        return Err(EspError::Unaligned { offset, len });
    }
    let label = fat_label(&opts.label)?;
    let cluster_size = fat32_cluster_size(len)?;
    let total_sectors = u32::try_from(len / FAT_SECTOR).map_err(|_| EspError::TooLarge { size: len })?;
    let hidden_sectors = u32::try_from(offset / FAT_SECTOR).unwrap_or(u32::MAX);

    let format = FormatVolumeOptions::new()
        .bytes_per_sector(FAT_SECTOR as u16)
        .total_sectors(total_sectors)
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(cluster_size)
        .volume_id(opts.volume_id)
        .volume_label(label);
    fatfs::format_volume(FileRange::new(file, offset, len), format).map_err(EspError::Format)?;
    // fatfs leaves the hidden-sectors field 0; firmware ignores it, some OS tools do not.
    for sector in [0, BACKUP_BOOT_SECTOR] {
        file.write_all_at(&hidden_sectors.to_le_bytes(), offset + sector * FAT_SECTOR + 0x1C)
            .map_err(EspError::Format)?;
    }

    let fs_opts = FsOptions::new().update_accessed_date(false).time_provider(fixed_clock(opts.mtime));
    let fs = FileSystem::new(FileRange::new(file, offset, len), fs_opts).map_err(EspError::Format)?;
    if fs.fat_type() != FatType::Fat32 {
        return Err(EspError::NotFat32 { found: fs.fat_type(), cluster_size });
    }
    {
        let root = fs.root_dir();
        for (parts, entry) in &contents.entries {
            let path = parts.join("/");
            let werr = |source| EspError::Write { path: path.clone(), source };
            match entry {
                Entry::Dir => {
                    root.create_dir(&path).map_err(werr)?;
                }
                Entry::File(data) => {
                    let bytes = data.read_all().map_err(|source| EspError::Read { path: path.clone(), source })?;
                    let mut f = root.create_file(&path).map_err(werr)?;
                    f.write_all(&bytes).map_err(werr)?;
                    f.flush().map_err(werr)?;
                }
            }
        }
    }
    let stats = fs.stats().map_err(EspError::Finish)?;
    let summary = EspSummary {
        cluster_size: stats.cluster_size(),
        total_clusters: stats.total_clusters(),
        free_clusters: stats.free_clusters(),
    };
    // Unmounting writes the FSInfo sector and clears the dirty bit; without it fsck.fat
    // reports the volume as not cleanly unmounted.
    fs.unmount().map_err(EspError::Finish)?;
    fix_dot_entries(file, offset).map_err(EspError::Finish)?;
    Ok(summary)
}

/// Size of one FAT directory entry.
const DIR_ENTRY: usize = 32;
/// Attribute byte of a long-file-name entry.
const ATTR_LFN: u8 = 0x0F;
const ATTR_DIRECTORY: u8 = 0x10;
/// FAT32 entries at or above this end a cluster chain.
const FAT32_CHAIN_END: u32 = 0x0FFF_FFF8;

/// Repairs the `.` and `..` entries `fatfs` 0.3 writes into every new directory.
///
/// fatfs 0.3.6 (the latest release) puts a long-file-name entry before each of them, so they
/// are not the first two entries of the directory, and gives `..` of a top-level directory the
/// root's cluster number instead of 0. FAT requires both (fsck.fat "repairs" such directories
/// by renaming and deleting the dot entries). This pass walks the directory tree from the
/// root, drops those long-name entries, moves the rest of each directory up, and zeroes `..`
/// where it names the root. Files and the FATs are not touched.
fn fix_dot_entries(file: &File, offset: u64) -> io::Result<()> {
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, offset)?;
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([bs[i], bs[i + 1]]));
    let u32_at = |i: usize| u32::from_le_bytes([bs[i], bs[i + 1], bs[i + 2], bs[i + 3]]);
    let sector = u16_at(11);
    let cluster_bytes = sector * u64::from(bs[13]);
    let fat_start = offset + u16_at(14) * sector;
    let data_start = fat_start + u64::from(bs[16]) * u64::from(u32_at(36)) * sector;
    let root = u32_at(44);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("ESP directory walk: {what}"));

    let cluster_offset = |c: u32| data_start + u64::from(c - 2) * cluster_bytes;
    let chain = |first: u32| -> io::Result<Vec<u32>> {
        let mut out = vec![first];
        let mut c = first;
        loop {
            let mut e = [0u8; 4];
            file.read_exact_at(&mut e, fat_start + u64::from(c) * 4)?;
            c = u32::from_le_bytes(e) & 0x0FFF_FFFF;
            if c >= FAT32_CHAIN_END {
                return Ok(out);
            }
            if c < 2 || out.len() > 1 << 20 {
                return Err(bad("broken cluster chain"));
            }
            out.push(c);
        }
    };

    let mut dirs = vec![root];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(dir) = dirs.pop() {
        if !seen.insert(dir) {
            return Err(bad("a directory is reachable twice"));
        }
        let clusters = chain(dir)?;
        let mut data = vec![0u8; clusters.len() * cluster_bytes as usize];
        for (i, c) in clusters.iter().enumerate() {
            let at = i * cluster_bytes as usize;
            file.read_exact_at(&mut data[at..at + cluster_bytes as usize], cluster_offset(*c))?;
        }
        let entries: Vec<&[u8]> = data.chunks_exact(DIR_ENTRY).take_while(|e| e[0] != 0).collect();
        let is_dot = |e: &[u8]| &e[..11] == b".          " || &e[..11] == b"..         ";
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            // A run of long-name entries belongs to the short entry after it.
            let run_end = (i..entries.len()).find(|&j| entries[j][11] != ATTR_LFN).unwrap_or(entries.len());
            let owner = entries.get(run_end);
            let drop_run = dir != root && owner.is_some_and(|e| is_dot(e));
            if !drop_run {
                kept.extend(entries[i..run_end].iter().map(|e| e.to_vec()));
            }
            if let Some(e) = owner {
                let mut e = e.to_vec();
                let first =
                    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16 | u32::from(u16::from_le_bytes([e[26], e[27]]));
                if &e[..11] == b"..         " && first == root {
                    e[20..22].fill(0);
                    e[26..28].fill(0);
                } else if e[0] != 0xE5 && e[11] & ATTR_DIRECTORY != 0 && !is_dot(&e) && first >= 2 {
                    dirs.push(first);
                }
                kept.push(e);
            }
            i = run_end + 1;
        }
        if dir != root && (kept.len() < 2 || &kept[0][..11] != b".          " || &kept[1][..11] != b"..         ") {
            return Err(bad("a directory does not start with `.` and `..`"));
        }
        let mut fixed = kept.concat();
        fixed.resize(data.len(), 0);
        if fixed != data {
            for (i, c) in clusters.iter().enumerate() {
                let at = i * cluster_bytes as usize;
                file.write_all_at(&fixed[at..at + cluster_bytes as usize], cluster_offset(*c))?;
            }
        }
    }
    Ok(())
}

/// Writes a standalone FAT32 image file of `len` bytes (sparse where no data goes).
pub fn write_esp_image(
    path: &std::path::Path,
    len: u64,
    contents: &EspContents,
    opts: &EspOptions,
) -> Result<EspSummary, EspError> {
    let ferr = |source| EspError::Write { path: path.display().to_string(), source };
    let file = File::options().read(true).write(true).create(true).truncate(true).open(path).map_err(ferr)?;
    file.set_len(len).map_err(ferr)?;
    write_esp(&file, 0, len, contents, opts)
}

/// Checks a volume label and pads it to the 11 bytes FAT stores; letters are upper-cased, as
/// DOS and mkfs.fat store them.
fn fat_label(label: &str) -> Result<[u8; 11], EspError> {
    let bad = |why| EspError::BadLabel { label: label.to_string(), why };
    if label.len() > 11 {
        return Err(bad("longer than 11 characters"));
    }
    if label.starts_with(' ') {
        return Err(bad("starts with a space"));
    }
    let mut out = *b"NO NAME    ";
    if label.is_empty() {
        return Ok(out);
    }
    out = [b' '; 11];
    for (i, c) in label.bytes().enumerate() {
        let c = c.to_ascii_uppercase();
        let ok = c.is_ascii_uppercase() || c.is_ascii_digit() || b" !#$%&'()-@^_`{}~".contains(&c);
        if !ok {
            return Err(bad("only letters, digits, spaces and ! # $ % & ' ( ) - @ ^ _ ` { } ~ are allowed"));
        }
        out[i] = c;
    }
    Ok(out)
}

/// Clusters of a FAT32 volume of `total_sectors` with `sectors_per_cluster`, laid out as
/// `fatfs` 0.3 lays it out (8 reserved sectors, two FATs of 32-bit entries sized for the data
/// area plus the two reserved entries).
fn fat32_clusters(total_sectors: u64, sectors_per_cluster: u64) -> u64 {
    let Some(t0) = total_sectors.checked_sub(FATFS_RESERVED_SECTORS) else { return 0 };
    let t1 = t0 + 2 * sectors_per_cluster;
    let entries_per_cluster_and_fats = sectors_per_cluster * FAT_SECTOR / 4 + 2;
    let sectors_per_fat = t1.div_ceil(entries_per_cluster_and_fats);
    t0.saturating_sub(2 * sectors_per_fat) / sectors_per_cluster
}

/// The cluster size used for a FAT32 volume of `len` bytes: the largest of 4 KiB, 2 KiB, 1 KiB
/// and 512 bytes that leaves enough clusters for FAT32. (A 256 MiB ESP gets 2 KiB: with 4 KiB
/// clusters it would have too few clusters and be FAT16.)
pub fn fat32_cluster_size(len: u64) -> Result<u32, EspError> {
    let sectors = len / FAT_SECTOR;
    for size in CLUSTER_SIZES {
        let clusters = fat32_clusters(sectors, u64::from(size) / FAT_SECTOR);
        if (FAT32_MIN_CLUSTERS + FAT32_CLUSTER_MARGIN..=FAT32_MAX_CLUSTERS).contains(&clusters) {
            return Ok(size);
        }
    }
    if fat32_clusters(sectors, 1) < FAT32_MIN_CLUSTERS + FAT32_CLUSTER_MARGIN {
        Err(EspError::TooSmall { size: len, minimum: fat32_min_size() })
    } else {
        Err(EspError::TooLarge { size: len })
    }
}

/// The smallest byte size a FAT32 ESP can have here (512-byte clusters).
pub fn fat32_min_size() -> u64 {
    let enough = |sectors: u64| fat32_clusters(sectors, 1) >= FAT32_MIN_CLUSTERS + FAT32_CLUSTER_MARGIN;
    // The cluster count grows with the volume, so search for the first size that is enough.
    let (mut lo, mut hi) = (0u64, 1u64 << 20);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if enough(mid) { hi = mid } else { lo = mid + 1 }
    }
    lo * FAT_SECTOR
}

/// A clock that always says the same time: the one `fatfs` stamps entries with.
#[derive(Debug)]
pub(crate) struct FixedClock(DateTime);

impl TimeProvider for FixedClock {
    fn get_current_date(&self) -> Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// The clock for `epoch`. fatfs 0.3 only takes a `&'static` time provider, so each distinct
/// (clamped, FAT-representable) time gets one leaked clock, kept for reuse: a build uses one.
pub(crate) fn fixed_clock(epoch: i64) -> &'static FixedClock {
    static CLOCKS: Mutex<BTreeMap<i64, &'static FixedClock>> = Mutex::new(BTreeMap::new());
    let dt = dos_datetime(epoch);
    let key = i64::from(dt.date.year) << 40
        | i64::from(dt.date.month) << 32
        | i64::from(dt.date.day) << 24
        | i64::from(dt.time.hour) << 16
        | i64::from(dt.time.min) << 8
        | i64::from(dt.time.sec);
    let mut clocks = CLOCKS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    clocks.entry(key).or_insert_with(|| Box::leak(Box::new(FixedClock(dt))))
}

/// Seconds since the epoch (UTC) → FAT date and time, clamped to 1980-01-01 00:00:00 …
/// 2107-12-31 23:59:59, the range FAT can store.
fn dos_datetime(epoch: i64) -> DateTime {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (year, month, day) = berth_release::time::civil_from_days(days);
    if year < 1980 {
        return DateTime {
            date: Date { year: 1980, month: 1, day: 1 },
            time: Time { hour: 0, min: 0, sec: 0, millis: 0 },
        };
    }
    if year > 2107 {
        return DateTime {
            date: Date { year: 2107, month: 12, day: 31 },
            time: Time { hour: 23, min: 59, sec: 59, millis: 0 },
        };
    }
    DateTime {
        date: Date { year: year as u16, month: month as u16, day: day as u16 },
        time: Time { hour: (secs / 3600) as u16, min: (secs / 60 % 60) as u16, sec: (secs % 60) as u16, millis: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn dates() {
        let d = dos_datetime(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
        assert_eq!(dos_datetime(0).date.year, 1980);
        assert_eq!(dos_datetime(-5).date, Date { year: 1980, month: 1, day: 1 });
        assert_eq!(dos_datetime(i64::MAX / 2).date.year, 2107);
        let leap = dos_datetime(951_782_400); // 2000-02-29
        assert_eq!((leap.date.month, leap.date.day), (2, 29));
        assert!(std::ptr::eq(fixed_clock(100), fixed_clock(100)));
    }

    #[test]
    fn cluster_sizes() {
        assert_eq!(fat32_cluster_size(256 * MIB).unwrap(), 2048);
        assert_eq!(fat32_cluster_size(64 * MIB).unwrap(), 512);
        assert_eq!(fat32_cluster_size(1024 * MIB).unwrap(), 4096);
        let min = fat32_min_size();
        assert!(min > 32 * MIB && min < 34 * MIB, "{min}");
        assert!(fat32_cluster_size(min).is_ok());
        assert!(matches!(fat32_cluster_size(min - 512), Err(EspError::TooSmall { .. })));
    }

    #[test]
    fn paths_and_labels() {
        let mut c = EspContents::new();
        c.add_file("/EFI/BOOT/BOOTX64.EFI", b"x".as_slice()).unwrap();
        c.add_dir("EFI/BOOT").unwrap();
        assert_eq!(c.len(), 3);
        assert!(matches!(c.add_file("EFI/BOOT/BOOTX64.EFI", vec![]), Err(EspError::Duplicate { .. })));
        assert!(matches!(c.add_file("efi/x", vec![]), Err(EspError::CaseClash { .. })));
        assert!(matches!(c.add_file("EFI/BOOT/BOOTX64.EFI/x", vec![]), Err(EspError::ParentIsFile { .. })));
        for bad in ["", "/", "a//b", "a/../b", "a:b", "a.", "x/"] {
            assert!(matches!(c.add_file(bad, vec![]), Err(EspError::BadPath { .. })), "{bad}");
        }
        assert_eq!(&fat_label("efi-system").unwrap(), b"EFI-SYSTEM ");
        assert_eq!(&fat_label("").unwrap(), b"NO NAME    ");
        assert!(fat_label("TWELVE CHARS").is_err());
        assert!(fat_label("a.b").is_err());
    }
}
