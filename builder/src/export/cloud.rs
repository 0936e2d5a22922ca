//! The cloud artifacts (docs/platforms.md): AWS's raw disk, GCE's image tarball and Azure's
//! fixed VHD, each from the stamped copy of the disk ([`super::Ctx`]), in bytes that depend on
//! nothing but the disk and the build's epoch.
//!
//! - `aws`: the raw disk grown to a whole GiB (EBS snapshots are whole GiB).
//! - `gce`: the same whole-GiB disk as `disk.raw`, an oldgnu sparse member ([`crate::tar`]) of a
//!   gzip'd tar ([`super::gzip`]); GCE wants whole GiB too.
//! - `azure`: the disk grown to a whole MiB (Azure refuses any other virtual size) and the VHD
//!   footer ([`super::vhd`]) after it.
//!
//! Growing a disk ([`fit_disk`]) moves the GPT's backup copy to the new end, as a disk grown
//! by the cloud is fixed up on first boot; the partitions stay as they were (STATE grows on
//! first boot, to whatever the instance's disk is).
//!
//! The data a disk holds ([`scan`]) is found by content, not by how the file happens to be
//! stored: `SEEK_DATA`/`SEEK_HOLE` skip the holes, then every 64 KiB block that is all zeros
//! counts as a hole too. So the sparse map, and with it the tarball, is the same whether the
//! copy was a reflink of an input with allocated zeros or a sparse copy.

use std::fs::File;
use std::io::{self, BufWriter};
use std::os::unix::fs::FileExt;
use std::path::Path;

use berth_slot::gpt::{Gpt, Header};
use berth_slot::layout::{SECTOR_SIZE, STATE_PARTITION};
use sha2::{Digest, Sha256};

use super::gzip::GzWriter;
use super::vhd;
use super::{Ctx, ExportError};
use crate::tar::{TarError, TarWriter};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The granularity of the data map: what [`super::copy_disk`] skips when all zeros.
pub const BLOCK: u64 = 64 << 10;
/// The member GCE reads from an image tarball.
pub const GCE_MEMBER: &str = "disk.raw";
/// gzip level of the GCE tarball (gzip's default).
const GZIP_LEVEL: u8 = 6;

/// Why a cloud artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("growing the disk to {size} bytes: {why}")]
    Gpt { size: u64, why: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Tar(#[from] TarError),
    #[error("the disk is {size} bytes; a VHD holds at most {} bytes", vhd::MAX_SIZE)]
    TooLargeForVhd { size: u64 },
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> CloudError {
    move |source| CloudError::Io { what, source }
}

/// Grows the disk file to `new_size` (a multiple of the sector size, at least its size) and
/// moves the GPT's backup header and entry array to the new end: the primary header then
/// points at it and its last usable LBA follows; the old backup's sectors become zeros; the
/// protective MBR covers the new size. Nothing happens if the backup already ends the disk.
pub fn fit_disk(disk: &File, new_size: u64) -> Result<(), CloudError> {
    let gpt_err = |why: String| CloudError::Gpt { size: new_size, why };
    let sector = SECTOR_SIZE as usize;
    let read = |lba: u64, len: usize| -> Result<Vec<u8>, CloudError> {
        let mut buf = vec![0u8; len];
        disk.read_exact_at(&mut buf, lba * SECTOR_SIZE).map_err(io_err("reading the GPT"))?;
        Ok(buf)
    };
    let primary = read(1, sector)?;
    let header = Header::parse(&primary).map_err(|e| gpt_err(format!("primary GPT header: {e}")))?;
    let gpt = Gpt::parse(&primary, &read(header.entries_lba, header.entries_bytes())?)
        .map_err(|e| gpt_err(format!("primary GPT: {e}")))?;
    // An alignment no partition end reaches: only the backup moves, no partition grows.
    let Some(grown) =
        gpt.grow_partition(new_size / SECTOR_SIZE, STATE_PARTITION, u64::MAX).map_err(|e| gpt_err(e.to_string()))?
    else {
        return Ok(());
    };
    disk.set_len(new_size).map_err(io_err("growing the disk"))?;
    let write = |lba: u64, data: &[u8]| disk.write_all_at(data, lba * SECTOR_SIZE).map_err(io_err("writing the GPT"));
    // The old backup first: the new one may overlap it when the disk grows by less than a copy.
    let old_from = gpt.backup_entries_lba().min(gpt.backup_header_lba());
    write(old_from, &vec![0u8; ((gpt.backup_header_lba() + 1 - old_from) * SECTOR_SIZE) as usize])?;
    for copy in grown.gpt.encode().copies() {
        for (lba, bytes) in copy {
            write(lba, &bytes)?;
        }
    }
    // The protective MBR's one partition (type 0xEE from LBA 1) spans the disk, capped at 2^32 − 1.
    let mut mbr = read(0, sector)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[450] == 0xEE {
        let lbas = u32::try_from(new_size / SECTOR_SIZE - 1).unwrap_or(u32::MAX);
        mbr[458..462].copy_from_slice(&lbas.to_le_bytes());
        write(0, &mbr)?;
    }
    Ok(())
}

/// Where a disk holds data: regions (offset, length) of whole [`BLOCK`]s (the last one cut at
/// the end of the disk), in order, merged where they touch; and a digest of them (offsets and
/// bytes), which names the disk's content however it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataMap {
    pub regions: Vec<(u64, u64)>,
    pub digest: [u8; 32],
}

impl DataMap {
    /// Bytes in the regions.
    pub fn data_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }
}

/// Scans the first `len` bytes of `disk` for data (see the module docs); `progress` gets the
/// position reached.
pub fn scan(disk: &File, len: u64, progress: &dyn Fn(u64)) -> io::Result<DataMap> {
    const CHUNK: u64 = 64 * BLOCK;
    let mut regions: Vec<(u64, u64)> = Vec::new();
    let mut h = Sha256::new();
    h.update(b"berth data map\0");
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(disk, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA here: everything is data.
            Err(_) => pos,
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(disk, rustix::fs::SeekFrom::Hole(data)).unwrap_or(len).min(len);
        // `pos` is a block boundary (or the end), so whole blocks are never read twice.
        let end = hole.div_ceil(BLOCK).saturating_mul(BLOCK).min(len);
        let mut at = data / BLOCK * BLOCK;
        while at < end {
            let n = (end - at).min(CHUNK) as usize;
            disk.read_exact_at(&mut buf[..n], at)?;
            for (i, block) in buf[..n].chunks(BLOCK as usize).enumerate() {
                if block.iter().all(|&b| b == 0) {
                    continue;
                }
                let offset = at + i as u64 * BLOCK;
                h.update(offset.to_le_bytes());
                h.update(block);
                match regions.last_mut() {
                    Some(last) if last.0 + last.1 == offset => last.1 += block.len() as u64,
                    _ => regions.push((offset, block.len() as u64)),
                }
            }
            at += n as u64;
            progress(at);
        }
        pos = end.max(data + 1);
    }
    progress(len);
    Ok(DataMap { regions, digest: h.finalize().into() })
}

/// `size` rounded up to a multiple of `unit`.
pub fn round_up(size: u64, unit: u64) -> u64 {
    size.div_ceil(unit) * unit
}

impl Ctx<'_> {
    fn cloud_err(&self, final_path: &Path) -> impl Fn(CloudError) -> ExportError {
        let path = final_path.to_path_buf();
        move |source| ExportError::Cloud { path: path.clone(), source }
    }

    /// `aws`: the stamped raw disk, grown to a whole GiB.
    pub(super) fn write_aws(&self, raw: &File, final_path: &Path) -> Result<(), ExportError> {
        fit_disk(raw, round_up(self.layout.size, GIB)).map_err(self.cloud_err(final_path))
    }

    /// `azure`: the stamped raw disk grown to a whole MiB, then the fixed VHD footer (so the
    /// file is the disk's size + 512 bytes).
    pub(super) fn write_azure(&self, raw: &File, final_path: &Path) -> Result<(), ExportError> {
        let err = self.cloud_err(final_path);
        let size = round_up(self.layout.size, MIB);
        if size > vhd::MAX_SIZE {
            return Err(err(CloudError::TooLargeForVhd { size }));
        }
        fit_disk(raw, size).map_err(&err)?;
        let bar = self.bar("VHD (reading the disk for its unique id)", size);
        let map = scan(raw, size, &|n| bar.set_position(n)).map_err(|e| err(io_err("reading the disk")(e)))?;
        bar.finish_and_clear();
        let unique_id = *crate::vmdk::derive_uuid(&map.digest, b"vhd unique id").as_bytes();
        let footer = vhd::Footer { size, timestamp: self.epoch, unique_id }.encode();
        raw.write_all_at(&footer, size).map_err(|e| err(io_err("writing the VHD footer")(e)))
    }

    /// `gce`: the stamped raw disk grown to a whole GiB, as `disk.raw` (sparse) in a gzip'd
    /// tar written into `out`.
    pub(super) fn write_gce(&self, raw: &File, out: &File, final_path: &Path) -> Result<(), ExportError> {
        let err = self.cloud_err(final_path);
        let size = round_up(self.layout.size, GIB);
        fit_disk(raw, size).map_err(&err)?;
        let bar = self.bar("disk.raw (finding its data)", size);
        let map = scan(raw, size, &|n| bar.set_position(n)).map_err(|e| err(io_err("reading the disk")(e)))?;
        bar.finish_and_clear();
        let bar = self.bar("disk.raw → tar.gz (gzip)", map.data_bytes());
        let gz = GzWriter::new(BufWriter::with_capacity(1 << 20, out), GZIP_LEVEL);
        let mut tar = TarWriter::new(gz, self.epoch).map_err(|e| err(e.into()))?;
        tar.append_sparse(GCE_MEMBER, 0o644, raw, size, &map.regions, &|n| bar.set_position(n))
            .map_err(|e| err(e.into()))?;
        let gz = tar.finish().map_err(|e| err(e.into()))?;
        gz.finish().map_err(|e| err(io_err("finishing the gzip stream")(e)))?;
        bar.finish_and_clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_data_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let len = 40 * BLOCK + 512;
        f.set_len(len).unwrap();
        f.write_all_at(&[1], 0).unwrap(); // block 0
        f.write_all_at(&[2], 2 * BLOCK - 1).unwrap(); // block 1: merges with 0
        f.write_all_at(&vec![0u8; 5 * BLOCK as usize], 10 * BLOCK).unwrap(); // allocated zeros: no data
        f.write_all_at(&[3], 12 * BLOCK + 7).unwrap(); // block 12
        f.write_all_at(&[4], 40 * BLOCK + 100).unwrap(); // the short last block
        let map = scan(&f, len, &|_| {}).unwrap();
        assert_eq!(map.regions, [(0, 2 * BLOCK), (12 * BLOCK, BLOCK), (40 * BLOCK, 512)]);
        assert_eq!(map.data_bytes(), 3 * BLOCK + 512);

        // The same bytes stored without holes: the same map and digest.
        let dense = dir.path().join("dense");
        std::fs::write(&dense, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(scan(&File::open(&dense).unwrap(), len, &|_| {}).unwrap(), map);
        // One byte more: another digest.
        f.write_all_at(&[5], 30 * BLOCK).unwrap();
        assert_ne!(scan(&f, len, &|_| {}).unwrap().digest, map.digest);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(1, GIB), GIB);
        assert_eq!(round_up(GIB, GIB), GIB);
        assert_eq!(round_up(GIB + 512, MIB), GIB + MIB);
    }
}
