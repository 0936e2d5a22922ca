//! The streamOptimized VMDK writer (VirtualBox's OVA disk, docs/design.md §8).
//!
//! berth writes the stream itself instead of calling `qemu-img convert -O vmdk`, because
//! qemu-img puts a random content ID in the descriptor and the artifact must be the same bytes
//! for the same disk. The file is the canonical "stream" of a VMDK 1.1 sparse extent:
//!
//! ```text
//! header (gdOffset = GD_AT_END) | descriptor | pad to OVERHEAD sectors
//! { grain marker + zlib(64 KiB grain), padded to 512 }...   non-zero grains, ascending LBA
//! GT marker + grain table                                     after each table's 512 grains
//! GD marker + grain directory | footer marker + header copy (real gdOffset) | EOS marker
//! ```
//!
//! All-zero grains (and whole tables of them) are left out; readers see them as zeros. The raw
//! disk is read sparsely: the holes `SEEK_DATA`/`SEEK_HOLE` report are never read. Grains are
//! deflated on two threads, written in LBA order. The content ID, and the image UUID when the
//! caller gives none, are derived from the written grains, so they change exactly when the
//! content does.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

const SECTOR: u64 = 512;
/// 64 KiB grains, as qemu and VMware write them.
const GRAIN_SECTORS: u64 = 128;
const GRAIN_BYTES: usize = (GRAIN_SECTORS * SECTOR) as usize;
/// Grain table entries per table: one table covers 32 MiB.
const GTES_PER_GT: u64 = 512;
/// Sectors before the first grain (header + descriptor, padded), as qemu and VMware lay it out.
const OVERHEAD: u64 = 128;
const GD_AT_END: u64 = u64::MAX;
/// Header flags: valid new-line test (bit 0), compressed grains (bit 16), markers (bit 17).
const FLAGS: u32 = 1 | (1 << 16) | (1 << 17);
const COMPRESS_DEFLATE: u16 = 1;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Grains read and compressed together; the progress callback runs once per batch.
const BATCH_GRAINS: usize = 64;

/// What the descriptor's `ddb.adapterType` says (and the geometry that goes with it). VirtualBox
/// attaches the disk to the controller its OVF names whatever this says; VMware reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdapterType {
    /// `ide`, geometry 16 heads × 63 sectors (qemu-img's default).
    #[default]
    Ide,
    /// `lsilogic`, geometry 255 heads × 63 sectors.
    LsiLogic,
}

impl AdapterType {
    fn name(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::LsiLogic => "lsilogic",
        }
    }

    /// (cylinders, heads, sectors per track) for a disk of `sectors`.
    fn geometry(self, sectors: u64) -> (u64, u64, u64) {
        let (heads, track, max_cyl) = match self {
            AdapterType::Ide => (16, 63, 16383),
            AdapterType::LsiLogic => (255, 63, 65535),
        };
        ((sectors / (heads * track)).min(max_cyl), heads, track)
    }
}

/// How the stream is written.
#[derive(Clone, Debug)]
pub struct VmdkOptions {
    /// The file name the descriptor's extent line names (the VMDK's own name).
    pub extent_name: String,
    pub adapter: AdapterType,
    /// `ddb.uuid.image`; derived from the content when `None`.
    pub uuid: Option<Uuid>,
    /// zlib level 0–10 (6 = zlib's default). Same level, same bytes.
    pub level: u8,
    /// Compression threads (1 or more); the output does not depend on it.
    pub threads: usize,
}

impl VmdkOptions {
    /// Defaults for a disk file called `extent_name`: IDE adapter, level 6, two threads.
    pub fn new(extent_name: impl Into<String>) -> Self {
        VmdkOptions { extent_name: extent_name.into(), adapter: AdapterType::Ide, uuid: None, level: 6, threads: 2 }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmdkInfo {
    /// Length of the VMDK file.
    pub bytes: u64,
    /// Virtual disk size in bytes.
    pub capacity: u64,
    /// Bytes of the disk stored in grains (non-zero grains × 64 KiB, at most the capacity):
    /// OVF's populatedSize.
    pub populated: u64,
    /// SHA-256 over the capacity and every grain record written; the seed of the derived IDs.
    pub content_digest: [u8; 32],
    /// The descriptor's CID.
    pub cid: u32,
    /// The descriptor's `ddb.uuid.image`.
    pub uuid: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    #[error("the raw disk is {0} bytes, not a whole number of 512-byte sectors")]
    Unaligned(u64),
    #[error("the raw disk is empty")]
    Empty,
    #[error("the extent name {0:?} cannot go in a VMDK descriptor (quotes, control characters or over 1024 bytes)")]
    BadName(String),
    #[error("the stream would pass 2 TiB, beyond what a grain table entry can address")]
    TooLarge,
    #[error("reading the raw disk at byte {offset}")]
    Read { offset: u64, source: io::Error },
    #[error("writing the VMDK")]
    Write(#[source] io::Error),
}

/// Writes `len` bytes of the raw disk `src` as a streamOptimized VMDK at `out`'s current
/// position; returns the VMDK's length. `progress` gets the raw bytes done so far, once per
/// batch of grains. `src`'s file position is moved (holes are found with lseek); data is read
/// with positioned reads.
pub fn write_stream_optimized(
    src: &File,
    len: u64,
    out: &mut File,
    opts: &VmdkOptions,
    progress: &dyn Fn(u64),
) -> Result<u64, VmdkError> {
    write(src, len, out, opts, progress).map(|info| info.bytes)
}

/// [`write_stream_optimized`], returning everything the OVF needs to know about the stream.
pub fn write(
    src: &File,
    len: u64,
    out: &mut File,
    opts: &VmdkOptions,
    progress: &dyn Fn(u64),
) -> Result<VmdkInfo, VmdkError> {
    check(len, opts)?;
    let capacity_sectors = len / SECTOR;
    let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
    let start = out.stream_position().map_err(VmdkError::Write)?;

    let mut stream = GrainStream::begin(&mut *out, opts, len)?;
    let data = DataMap::new(src, len);
    let mut next = 0u64; // first grain not yet looked at
    while next < grains {
        let batch = read_batch(src, len, &data, &mut next)?;
        let compressed = compress_all(&batch, opts.level, opts.threads.max(1));
        for ((grain, _), z) in batch.iter().zip(compressed) {
            stream.grain(*grain, &z)?;
        }
        progress((next * GRAIN_BYTES as u64).min(len));
    }
    let (end_sector, populated_grains, content_digest) = stream.finish()?;

    // The IDs come from the grains, so they are written over the placeholders (same length).
    let cid = u32::from_le_bytes(content_digest[..4].try_into().expect("4 bytes"));
    let uuid = opts.uuid.unwrap_or_else(|| derive_uuid(&content_digest, b"ddb.uuid.image"));
    let descriptor = descriptor_text(opts, capacity_sectors, cid, uuid);
    out.seek(SeekFrom::Start(start + SECTOR)).map_err(VmdkError::Write)?;
    out.write_all(descriptor.as_bytes()).map_err(VmdkError::Write)?;
    out.seek(SeekFrom::Start(start + end_sector * SECTOR)).map_err(VmdkError::Write)?;

    Ok(VmdkInfo {
        bytes: end_sector * SECTOR,
        capacity: len,
        populated: (populated_grains * GRAIN_BYTES as u64).min(len),
        content_digest,
        cid,
        uuid,
    })
}

fn check(len: u64, opts: &VmdkOptions) -> Result<(), VmdkError> {
    if len == 0 {
        return Err(VmdkError::Empty);
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(VmdkError::Unaligned(len));
    }
    if opts.extent_name.len() > 1024 || opts.extent_name.chars().any(|c| c == '"' || c.is_control()) {
        return Err(VmdkError::BadName(opts.extent_name.clone()));
    }
    Ok(())
}

/// Reads the next batch of grains holding data, starting at grain `*next`, and moves `*next`
/// past them. Holes are skipped without reading; grains that read as zeros are dropped.
fn read_batch(src: &File, len: u64, data: &DataMap, next: &mut u64) -> Result<Vec<(u64, Vec<u8>)>, VmdkError> {
    let grains = len.div_ceil(GRAIN_BYTES as u64);
    let mut batch = Vec::with_capacity(BATCH_GRAINS);
    while *next < grains && batch.len() < BATCH_GRAINS {
        let grain = match data.next_data(src, *next * GRAIN_BYTES as u64) {
            Some(at) => at / GRAIN_BYTES as u64,
            None => grains,
        };
        if grain >= grains {
            *next = grains;
            break;
        }
        // A whole grain even past the disk's end: VirtualBox refuses a grain that inflates to
        // less than the grain size, so the last, partial one is padded with zeros.
        let mut buf = vec![0u8; GRAIN_BYTES];
        let at = grain * GRAIN_BYTES as u64;
        let n = (len - at).min(GRAIN_BYTES as u64) as usize;
        src.read_exact_at(&mut buf[..n], at).map_err(|source| VmdkError::Read { offset: at, source })?;
        if !all_zero(&buf) {
            batch.push((grain, buf));
        }
        *next = grain + 1;
    }
    Ok(batch)
}

/// A name-based UUID (RFC 9562 version 8) from a content digest and a purpose, so different
/// purposes (disk, machine) get different UUIDs from the same disk.
pub fn derive_uuid(digest: &[u8; 32], purpose: &[u8]) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"berth-uuid\0");
    h.update(purpose);
    h.update([0]);
    h.update(digest);
    let bytes: [u8; 16] = h.finalize()[..16].try_into().expect("16 bytes");
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The output with its position in sectors (every write is whole sectors).
struct Stream<'a> {
    out: BufWriter<&'a mut File>,
    sector: u64,
}

impl Stream<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), VmdkError> {
        debug_assert_eq!(bytes.len() as u64 % SECTOR, 0);
        self.out.write_all(bytes).map_err(VmdkError::Write)?;
        self.sector += bytes.len() as u64 / SECTOR;
        Ok(())
    }

    fn put_padded(&mut self, bytes: &[u8]) -> Result<(), VmdkError> {
        self.out.write_all(bytes).map_err(VmdkError::Write)?;
        let pad = (SECTOR - bytes.len() as u64 % SECTOR) % SECTOR;
        self.out.write_all(&[0u8; SECTOR as usize][..pad as usize]).map_err(VmdkError::Write)?;
        self.sector += (bytes.len() as u64 + pad) / SECTOR;
        Ok(())
    }
}

/// The stream being written: grains in ascending order, each grain table after its grains,
/// the directory and the footer at the end. It hashes every grain record for the derived IDs.
struct GrainStream<'a> {
    w: Stream<'a>,
    capacity_sectors: u64,
    descriptor_sectors: u64,
    hasher: Sha256,
    populated: u64,
    gd: Vec<u32>,
    gt: Vec<u32>,
    /// The table `gt` is collecting.
    table: u64,
}

impl<'a> GrainStream<'a> {
    /// Writes the header (directory at the end) and the descriptor with placeholder IDs.
    fn begin(out: &'a mut File, opts: &VmdkOptions, len: u64) -> Result<Self, VmdkError> {
        let capacity_sectors = len / SECTOR;
        let tables = capacity_sectors.div_ceil(GRAIN_SECTORS).div_ceil(GTES_PER_GT);
        let descriptor = descriptor_text(opts, capacity_sectors, 0, opts.uuid.unwrap_or(Uuid::nil()));
        let descriptor_sectors = (descriptor.len() as u64).div_ceil(SECTOR);
        if 1 + descriptor_sectors > OVERHEAD {
            return Err(VmdkError::BadName(opts.extent_name.clone()));
        }
        let mut w = Stream { out: BufWriter::with_capacity(1 << 20, out), sector: 0 };
        w.put(&header_sector(capacity_sectors, descriptor_sectors, GD_AT_END))?;
        w.put_padded(descriptor.as_bytes())?;
        w.put(&vec![0; ((OVERHEAD - w.sector) * SECTOR) as usize])?;
        let mut hasher = Sha256::new();
        hasher.update(b"berth-vmdk\0");
        hasher.update(len.to_le_bytes());
        Ok(GrainStream {
            w,
            capacity_sectors,
            descriptor_sectors,
            hasher,
            populated: 0,
            gd: vec![0; tables as usize],
            gt: vec![0; GTES_PER_GT as usize],
            table: 0,
        })
    }

    /// Appends grain number `grain` (grains come in ascending order) as `zlib` data.
    fn grain(&mut self, grain: u64, zlib: &[u8]) -> Result<(), VmdkError> {
        // Tables fill in grain order: write each table before the first grain past it.
        while grain / GTES_PER_GT > self.table {
            self.flush_table()?;
        }
        let at = u32::try_from(self.w.sector).map_err(|_| VmdkError::TooLarge)?;
        self.gt[(grain % GTES_PER_GT) as usize] = at;
        let mut record = Vec::with_capacity(12 + zlib.len());
        record.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
        record.extend_from_slice(&(zlib.len() as u32).to_le_bytes());
        record.extend_from_slice(zlib);
        self.hasher.update(&record);
        self.w.put_padded(&record)?;
        self.populated += 1;
        Ok(())
    }

    /// Writes the current grain table (its marker, then the table) unless it is empty, records
    /// it in the directory, and moves on to the next table.
    fn flush_table(&mut self) -> Result<(), VmdkError> {
        if self.gt.iter().any(|e| *e != 0) {
            let bytes: Vec<u8> = self.gt.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.w.put(&marker(bytes.len() as u64 / SECTOR, MARKER_GT))?;
            self.gd[self.table as usize] = u32::try_from(self.w.sector).map_err(|_| VmdkError::TooLarge)?;
            self.w.put(&bytes)?;
            self.gt.fill(0);
        }
        self.table += 1;
        Ok(())
    }

    /// Writes the last table, the directory, the footer and the end-of-stream marker; returns
    /// the stream's length in sectors, the grains stored and the content digest.
    fn finish(mut self) -> Result<(u64, u64, [u8; 32]), VmdkError> {
        self.flush_table()?;
        let gd_sector = self.w.sector + 1;
        let gd_bytes: Vec<u8> = self.gd.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.w.put(&marker((gd_bytes.len() as u64).div_ceil(SECTOR), MARKER_GD))?;
        self.w.put_padded(&gd_bytes)?;
        self.w.put(&marker(1, MARKER_FOOTER))?;
        self.w.put(&header_sector(self.capacity_sectors, self.descriptor_sectors, gd_sector))?;
        self.w.put(&marker(0, MARKER_EOS))?;
        self.w.out.flush().map_err(VmdkError::Write)?;
        Ok((self.w.sector, self.populated, self.hasher.finalize().into()))
    }
}

/// A metadata marker sector: {numSectors u64, size u32 = 0, type u32, zeros}.
fn marker(sectors: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// The SparseExtentHeader (VMDK 1.1, version 3), little-endian, packed.
fn header_sector(capacity: u64, descriptor_sectors: u64, gd_offset: u64) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptorOffset
    h[36..44].copy_from_slice(&descriptor_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // 48..56 rgdOffset = 0: no redundant tables in a stream.
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    // 72 uncleanShutdown = 0; then the bytes that detect new-line mangling by file transfers.
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&COMPRESS_DEFLATE.to_le_bytes());
    h
}

fn descriptor_text(opts: &VmdkOptions, sectors: u64, cid: u32, uuid: Uuid) -> String {
    let (cyl, heads, track) = opts.adapter.geometry(sectors);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {sectors} SPARSE \"{name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cyl}\"\n\
         ddb.geometry.heads = \"{heads}\"\n\
         ddb.geometry.sectors = \"{track}\"\n\
         ddb.uuid.image = \"{uuid}\"\n\
         ddb.virtualHWVersion = \"4\"\n",
        name = opts.extent_name,
        adapter = opts.adapter.name(),
    )
}

/// Zero test that the compiler vectorises (an early-exit `all` over bytes does not).
fn all_zero(buf: &[u8]) -> bool {
    buf.chunks(4096).all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0)
}

/// zlib streams of every grain of the batch, in batch order, split across `threads` threads.
fn compress_all(batch: &[(u64, Vec<u8>)], level: u8, threads: usize) -> Vec<Vec<u8>> {
    let per = batch.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter().map(|(_, g)| miniz_oxide::deflate::compress_to_vec_zlib(g, level)).collect::<Vec<_>>()
                })
            })
            .collect();
        // A compression thread only panics on allocation failure; pass that on as is.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Where the raw disk has data, from `SEEK_DATA`; everything is data where the file system
/// cannot say.
struct DataMap {
    sparse: bool,
    len: u64,
}

impl DataMap {
    fn new(src: &File, len: u64) -> Self {
        // ENXIO: no data at all (a file of one hole), which is an answer too.
        let sparse =
            matches!(rustix::fs::seek(src, rustix::fs::SeekFrom::Data(0)), Ok(_) | Err(rustix::io::Errno::NXIO));
        DataMap { sparse, len }
    }

    /// The first byte at or after `offset` that may hold data, or `None` if only holes follow.
    fn next_data(&self, src: &File, offset: u64) -> Option<u64> {
        if offset >= self.len {
            return None;
        }
        if !self.sparse {
            return Some(offset);
        }
        match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) if at < self.len => Some(at),
            Ok(_) | Err(rustix::io::Errno::NXIO) => None,
            // Any other answer: read it rather than guess it is a hole.
            Err(_) => Some(offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_readers_look() {
        let h = header_sector(2048, 1, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 0x30001);
        assert_eq!(u64::from_le_bytes(h[56..64].try_into().unwrap()), u64::MAX);
        assert_eq!(&h[73..77], b"\n \r\n");
        assert_eq!(u16::from_le_bytes(h[77..79].try_into().unwrap()), 1);
    }

    #[test]
    fn descriptor_fits_the_overhead_and_keeps_its_length() {
        let o = VmdkOptions::new("disk.vmdk");
        let a = descriptor_text(&o, 1 << 24, 0, Uuid::nil());
        let b = descriptor_text(&o, 1 << 24, 0xdead_beef, derive_uuid(&[7; 32], b"x"));
        assert_eq!(a.len(), b.len());
        assert!(a.contains("createType=\"streamOptimized\"") && a.contains("RW 16777216 SPARSE \"disk.vmdk\""));
        assert!(b.contains("CID=deadbeef"));
    }

    #[test]
    fn derived_uuids_differ_by_purpose_and_are_stable() {
        let d = [1u8; 32];
        assert_eq!(derive_uuid(&d, b"a"), derive_uuid(&d, b"a"));
        assert_ne!(derive_uuid(&d, b"a"), derive_uuid(&d, b"b"));
        assert_eq!(derive_uuid(&d, b"a").get_version_num(), 8);
    }
}
