//! The ESP provisioning source (docs/provisioning.md): `berth/provision.toml` on the EFI system
//! partition, for machines without QEMU's fw_cfg (VirtualBox, Vagrant boxes, bare metal).
//! `berth export --provision FILE` puts it there. The ESP is never mounted: the file is read
//! from the partition's device with fatfs, through [`ReadOnly`], which fails every write, so
//! nothing here can change the ESP the firmware boots from. Stage 2 reads `berth/platform`
//! with the same reader ([`read_file`], `crate::stage2::platform`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{MAX_DOCUMENT, ProvisionError, Source};

/// The document's path on the ESP.
pub const ESP_PATH: &str = berth_slot::platform::PROVISION_FILE;

/// A device fatfs may read and seek but never write: every `write` fails (fatfs writes only
/// when asked to change the volume, or on unmount when it had changed it).
pub struct ReadOnly<R>(pub R);

impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Seek> Seek for ReadOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl<R> Write for ReadOnly<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "the ESP is read-only to provisioning"))
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing was written, so there is nothing to flush.
        Ok(())
    }
}

/// The ESP on the boot disk (the disk of the root partition), as a device node; the error says
/// why it was not found (the caller names the file it wanted).
pub fn device() -> Result<PathBuf, String> {
    let root = crate::stage2::storage::root_partition().map_err(|e| format!("the root partition: {e}"))?;
    crate::stage2::storage::partition::esp(&root).map_err(|e| e.to_string())
}

/// `berth/provision.toml` from the FAT filesystem on `device` (a partition, or an image file
/// in tests); `None` when it has none. At most [`MAX_DOCUMENT`] bytes are read.
pub fn read(device: &Path) -> Result<Option<Vec<u8>>, ProvisionError> {
    let bytes = read_file(device, ESP_PATH, MAX_DOCUMENT).map_err(|why| ProvisionError::Esp { why })?;
    if bytes.as_ref().is_some_and(|b| b.len() as u64 > MAX_DOCUMENT) {
        return Err(ProvisionError::TooLarge(Source::Esp));
    }
    Ok(bytes)
}

/// The file at `path` (`berth/provision.toml`, `berth/platform`) on the FAT filesystem on
/// `device`, read-only; `None` when it has none. At most `limit` + 1 bytes are read, so that
/// the caller can tell a file larger than `limit`. The error says what failed, on which device.
pub fn read_file(device: &Path, path: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let file = File::open(device).map_err(|e| format!("opening {}: {e}", device.display()))?;
    // The access date is a write; the ESP stays as the firmware and the update agent left it.
    let options = fatfs::FsOptions::new().update_accessed_date(false);
    let fs = fatfs::FileSystem::new(ReadOnly(file), options)
        .map_err(|e| format!("{}: not a FAT filesystem: {e}", device.display()))?;
    let root = fs.root_dir();
    let mut doc = match root.open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening it on {}: {e}", device.display())),
    };
    let mut bytes = Vec::new();
    (&mut doc)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading it on {}: {e}", device.display()))?;
    Ok(Some(bytes))
}

#[cfg(test)]
/// A FAT volume (an ESP as the builder makes one, small) in a file, holding `files`.
pub(crate) fn fat_image(files: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
    let mut image = tempfile::NamedTempFile::new().unwrap();
    image.as_file().set_len(8 << 20).unwrap();
    fatfs::format_volume(image.as_file_mut(), fatfs::FormatVolumeOptions::new().volume_label(*b"EFI-SYSTEM ")).unwrap();
    {
        let fs = fatfs::FileSystem::new(image.as_file_mut(), fatfs::FsOptions::new()).unwrap();
        for (path, data) in files {
            let parts: Vec<&str> = path.split('/').collect();
            for n in 1..parts.len() {
                fs.root_dir().create_dir(&parts[..n].join("/")).unwrap();
            }
            let mut f = fs.root_dir().create_file(path).unwrap();
            std::io::Write::write_all(&mut f, data).unwrap();
        }
        fs.unmount().unwrap();
    }
    image
}
