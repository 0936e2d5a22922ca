//! The two files an export puts on a disk's ESP: `berth/platform` (the platform word,
//! docs/design.md §8) and `berth/provision.toml` (the ESP provisioning source,
//! docs/provisioning.md).
//!
//! The ESP is edited in place with `fatfs`, on exactly the partition's bytes, with the build's
//! fixed clock (`crate::esp`): the same disk and files give the same bytes. Only files are
//! written, into `berth/`, which every build makes: creating a directory with fatfs 0.3 would
//! need the dot-entry repair `crate::esp` does after a build, and an ESP without `berth/` is not
//! one a build wrote.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use fatfs::{FileSystem, FsOptions};

use crate::disk::FileRange;

/// The ESP's files, named where the guest reads them too (`berth_slot::platform`).
pub use berth_slot::platform::{PLATFORM_FILE, PROVISION_FILE};
/// The file whose timestamp is the build's epoch (the build stamps every entry with it).
const EPOCH_REFERENCE: &str = "EFI/BOOT/BOOTX64.EFI";

/// Why the ESP could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum EspEditError {
    #[error("the ESP is not a FAT filesystem ({0})")]
    NotFat(#[source] io::Error),
    #[error("the ESP has no {0}: not an ESP berth build wrote")]
    Missing(&'static str),
    #[error("ESP: writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("ESP: finishing the filesystem: {0}")]
    Finish(#[source] io::Error),
}

/// Writes `files` (path under `berth/`, content) into the FAT filesystem at `[offset, offset +
/// len)` of `disk`, replacing files of those names, every entry stamped with `epoch`.
pub fn put_files(disk: &File, offset: u64, len: u64, files: &[(&str, &[u8])], epoch: i64) -> Result<(), EspEditError> {
    let opts = FsOptions::new().update_accessed_date(false).time_provider(crate::esp::fixed_clock(epoch));
    let fs = FileSystem::new(FileRange::new(disk, offset, len), opts).map_err(EspEditError::NotFat)?;
    {
        let root = fs.root_dir();
        root.open_dir("berth").map_err(|_| EspEditError::Missing("berth/ directory"))?;
        for (path, content) in files {
            let werr = |source| EspEditError::Write { path: path.to_string(), source };
            // An existing file is truncated and rewritten: the same clusters come back.
            let mut f = root.create_file(path).map_err(werr)?;
            f.seek(SeekFrom::Start(0)).map_err(werr)?;
            f.truncate().map_err(werr)?;
            f.write_all(content).map_err(werr)?;
            f.flush().map_err(werr)?;
        }
    }
    // Unmounting writes FSInfo and clears the dirty bit (else fsck.fat complains).
    fs.unmount().map_err(EspEditError::Finish)
}

/// Reads one file of the ESP (for tests and `berth inspect`-like checks); `None` if absent.
pub fn read_file(disk: &File, offset: u64, len: u64, path: &str) -> Result<Option<Vec<u8>>, EspEditError> {
    use std::io::Read;
    let fs = FileSystem::new(FileRange::new(disk, offset, len), FsOptions::new().update_accessed_date(false))
        .map_err(EspEditError::NotFat)?;
    let root = fs.root_dir();
    let Ok(mut f) = root.open_file(path) else { return Ok(None) };
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|source| EspEditError::Write { path: path.to_string(), source })?;
    Ok(Some(out))
}

/// The build's epoch as the ESP records it: the modification time of bootmgr's entry, which
/// the build stamped with it (FAT keeps even seconds; an odd epoch reads back one second early,
/// which stamps the same FAT time again).
pub fn build_epoch(disk: &File, offset: u64, len: u64) -> Result<i64, EspEditError> {
    let fs = FileSystem::new(FileRange::new(disk, offset, len), FsOptions::new().update_accessed_date(false))
        .map_err(EspEditError::NotFat)?;
    let root = fs.root_dir();
    let boot = root.open_dir("EFI/BOOT").map_err(|_| EspEditError::Missing("EFI/BOOT/ directory"))?;
    let entry = boot
        .iter()
        .filter_map(Result::ok)
        .find(|e| e.file_name().eq_ignore_ascii_case("BOOTX64.EFI"))
        .ok_or(EspEditError::Missing(EPOCH_REFERENCE))?;
    let m = entry.modified();
    let days =
        berth_release::time::days_from_civil(i64::from(m.date.year), i64::from(m.date.month), i64::from(m.date.day));
    Ok(days * 86_400 + i64::from(m.time.hour) * 3600 + i64::from(m.time.min) * 60 + i64::from(m.time.sec))
}
