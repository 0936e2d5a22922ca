//! A deterministic ext4 writer: a [`berth_fstree::Tree`] in, an ext4 filesystem out.
//!
//! It owns the on-disk ext4 format for Berth: 4 KiB blocks, extents, contiguous file data,
//! hashed (htree) directories, fast and slow symlinks, hard links, device nodes, extended
//! attributes in the inode or in a block, and metadata checksums. The read-only root needs no
//! journal; a writable filesystem (STATE) gets a jbd2 journal and spare inodes
//! ([`Options::writable`]). The UUID, directory hash seed and every timestamp come from
//! [`Options`], so the same tree and options give the same bytes.

#![warn(missing_docs)]

mod csum;
mod dir;
mod geometry;
mod plan;
pub mod superblock;
mod write;
mod xattr;

use std::fs::File;
use std::path::{Path, PathBuf};

use berth_fstree::Tree;
use sha2::{Digest, Sha256};

use crate::geometry::Geometry;
use crate::plan::{Layout, Plan};

/// Size of a filesystem block.
pub const BLOCK_SIZE: u64 = 4096;
/// The most blocks a filesystem may have: without the `64bit` feature (which this writer does
/// not implement) block numbers are 32 bits, so 16 TiB - 4 KiB.
pub const MAX_BLOCKS: u64 = u32::MAX as u64;

/// How to lay out the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Filesystem size in bytes (rounded down to whole blocks). `None`: the smallest that fits.
    pub size: Option<u64>,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Seed of the directory-index hash.
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// Creation and last-write time recorded in the superblock (seconds since the epoch).
    pub timestamp: u32,
    /// A jbd2 journal, for a filesystem that will be mounted read-write (STATE).
    pub journal: Journal,
    /// With a given size: at least one inode per this many bytes, so a writable filesystem
    /// has room for new files (mke2fs uses 16384). `None`: only the inodes the tree needs.
    pub bytes_per_inode: Option<u64>,
    /// Blocks only root may allocate (`s_r_blocks_count`), so a full filesystem still takes
    /// root's writes.
    pub reserved: Reserved,
}

/// How many blocks to reserve for root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reserved {
    /// None: a read-only filesystem.
    #[default]
    None,
    /// Exactly this many blocks (at most half the filesystem, as e2fsck requires).
    Blocks(u64),
    /// `percent` of the blocks, but no more than `at_most` bytes (mke2fs's `-m`, with a cap so
    /// a large disk does not lose hundreds of GiB to it).
    Percent {
        /// Share of the blocks, 0 to 50.
        percent: u8,
        /// Cap in bytes.
        at_most: u64,
    },
}

impl Reserved {
    /// The reservation for `STATE`: 5% (mke2fs's default), at most 256 MiB.
    pub const STATE: Reserved = Reserved::Percent { percent: 5, at_most: 256 << 20 };

    /// Reserved blocks of a filesystem of `blocks` blocks.
    pub fn blocks(self, blocks: u64) -> Result<u64, Error> {
        let n = match self {
            Reserved::None => 0,
            Reserved::Blocks(n) => n,
            Reserved::Percent { percent, at_most } => (blocks * u64::from(percent) / 100).min(at_most / BLOCK_SIZE),
        };
        if n > blocks / 2 {
            return Err(Error::Invalid(format!(
                "{n} reserved blocks is more than half of the filesystem's {blocks} blocks"
            )));
        }
        Ok(n)
    }
}

/// Whether and how large a journal to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Journal {
    /// No journal: the read-only root.
    #[default]
    None,
    /// Sized like mke2fs does for the filesystem's size (4 MiB to 1 GiB).
    Default,
    /// This many blocks (at least 1024).
    Blocks(u32),
}

impl Options {
    /// Options whose UUID and hash seed are derived from `seed` (for example the image name and
    /// version), so that rebuilding from the same inputs gives the same filesystem.
    pub fn derived(label: &str, seed: &[u8], timestamp: u32) -> Options {
        let derive = |what: &[u8]| -> [u8; 16] {
            let d = Sha256::new().chain_update(what).chain_update(seed).finalize();
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            // An RFC 4122 version-4 shaped UUID, as tools expect.
            b[6] = (b[6] & 0x0F) | 0x40;
            b[8] = (b[8] & 0x3F) | 0x80;
            b
        };
        Options {
            size: None,
            uuid: derive(b"berth-ext4-uuid\0"),
            hash_seed: derive(b"berth-ext4-hash-seed\0"),
            label: label.to_string(),
            timestamp,
            journal: Journal::None,
            bytes_per_inode: None,
            reserved: Reserved::None,
        }
    }

    /// Options for a writable, journaled filesystem of `size` bytes (STATE), with inodes for
    /// one file per 16 KiB like mke2fs and [`Reserved::STATE`] for root.
    pub fn writable(label: &str, seed: &[u8], timestamp: u32, size: u64) -> Options {
        Options {
            size: Some(size),
            journal: Journal::Default,
            bytes_per_inode: Some(16384),
            reserved: Reserved::STATE,
            ..Options::derived(label, seed, timestamp)
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.label.len() > 16 {
            return Err(Error::Invalid(format!("label {:?} is longer than 16 bytes", self.label)));
        }
        if let Journal::Blocks(n) = self.journal
            && n < plan::MIN_JOURNAL_BLOCKS
        {
            return Err(Error::Invalid(format!(
                "a journal needs at least {} blocks, not {n}",
                plan::MIN_JOURNAL_BLOCKS
            )));
        }
        if self.bytes_per_inode.is_some_and(|b| b < BLOCK_SIZE) {
            return Err(Error::Invalid("bytes per inode must be at least the block size (4096)".into()));
        }
        if let Reserved::Percent { percent, .. } = self.reserved
            && percent > 50
        {
            return Err(Error::Invalid(format!("{percent}% reserved for root: at most 50% is allowed")));
        }
        if let Some(size) = self.size
            && size / BLOCK_SIZE > MAX_BLOCKS
        {
            // Written anyway, the block count would be cut to 32 bits: a corrupt filesystem.
            return Err(Error::Invalid(format!(
                "a size of {size} bytes is {} blocks of 4 KiB, but without the 64bit feature (not \
                 implemented) an ext4 filesystem has at most {MAX_BLOCKS} blocks ({} bytes, 16 TiB - 4 KiB)",
                size / BLOCK_SIZE,
                MAX_BLOCKS * BLOCK_SIZE
            )));
        }
        Ok(())
    }
}

/// Why a filesystem could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tree does not fit the size asked for (both in bytes).
    #[error("the tree needs {needed} bytes but only {available} bytes are available")]
    TooSmall {
        /// What the tree and the filesystem's metadata need.
        needed: u64,
        /// What the size asked for gives.
        available: u64,
    },
    /// Reading a file's content from the host or writing the image failed.
    #[error("{path}: {source}")]
    Io {
        /// The host file read or the image written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A tree operation failed (reading a file's content from the host, for one).
    #[error(transparent)]
    Tree(#[from] berth_fstree::TreeError),
    /// The options are inconsistent, or the tree asks for something ext4 cannot hold (too many
    /// hard links or inodes, an unsupported xattr…); the text says what.
    #[error("{0}")]
    Invalid(String),
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Filesystem size in bytes.
    pub size: u64,
    /// Filesystem size in blocks.
    pub blocks: u64,
    /// Blocks left free.
    pub free_blocks: u64,
    /// Inodes the filesystem has room for.
    pub inodes: u32,
    /// Inodes left free (the spare ones a writable filesystem gets, for one).
    pub free_inodes: u32,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
}

/// The smallest filesystem size in bytes that holds `tree` with these options.
pub fn min_size(tree: &Tree, opts: &Options) -> Result<u64, Error> {
    opts.check()?;
    let plan = Plan::new(tree, opts, opts.size.map(|s| s / BLOCK_SIZE))?;
    Ok(plan::smallest(&plan)?.geo.blocks * BLOCK_SIZE)
}

/// Plans the layout for `opts.size` (or the smallest size), failing with [`Error::TooSmall`].
fn layout_for(plan: &Plan, opts: &Options) -> Result<Layout, Error> {
    let smallest = plan::smallest(plan)?;
    let Some(size) = opts.size else {
        return Ok(smallest);
    };
    let needed = smallest.geo.blocks;
    let blocks = size / BLOCK_SIZE;
    if blocks < needed {
        return Err(geometry::too_small(needed, size));
    }
    let inodes = match opts.bytes_per_inode {
        Some(ratio) => u32::try_from(size / ratio).unwrap_or(u32::MAX).max(plan.inodes_needed()),
        None => plan.inodes_needed(),
    };
    let layout =
        Geometry::new(blocks, inodes).map(|geo| Layout::new(plan, geo)).transpose()?.filter(|l| l.end <= l.geo.blocks);
    // A larger size can still fail when it adds a group whose metadata does not fit.
    layout.ok_or_else(|| geometry::too_small(needed, size))
}

/// Writes `tree` as a new file at `path`: into a temporary file beside it, renamed into place
/// only when complete, so a failure leaves no output behind.
pub fn write_file(tree: &Tree, path: &Path, opts: &Options) -> Result<Report, Error> {
    opts.check()?;
    let plan = Plan::new(tree, opts, opts.size.map(|s| s / BLOCK_SIZE))?;
    let layout = layout_for(&plan, opts)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let tmp = tempfile::Builder::new().prefix(".berth-ext4-").tempfile_in(dir).map_err(io)?;
    let size = layout.geo.blocks * BLOCK_SIZE;
    tmp.as_file().set_len(size).map_err(io)?;
    let report = write::write(&plan, &layout, opts, tmp.as_file(), path, 0, write::Durable::No)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(report)
}

/// Writes `tree` into `file` at byte `offset` (for example a partition of a disk image).
/// `opts.size` is the size of that byte range and is required. The range may hold anything
/// before: blocks that must read as zeros are zeroed (by the kernel where it can), except the
/// inode tables past the used inodes, which a kernel mounting the filesystem read-write zeroes
/// in the background (mke2fs's `lazy_itable_init`) and nothing reads before.
pub fn write_at(tree: &Tree, file: &File, offset: u64, opts: &Options) -> Result<Report, Error> {
    write_range(tree, file, offset, opts, write::Durable::No)
}

/// Like [`write_at`], for a device that may lose power meanwhile (STATE formatted at first
/// boot): the primary superblock is zeroed and flushed first, and written last, after a flush
/// of everything else (the backup superblocks included), then flushed too. Until the
/// filesystem is whole the range has no ext4 magic number where the primary superblock
/// belongs, so a power cut never leads to mounting half a filesystem. The range's first 1024
/// bytes (which ext4 leaves unused) are kept until then and zeroed only after the superblock
/// is on the device: a "not yet formatted" marker there outlives a cut at any earlier point.
pub fn write_at_durably(tree: &Tree, file: &File, offset: u64, opts: &Options) -> Result<Report, Error> {
    write_range(tree, file, offset, opts, write::Durable::SuperblockLast)
}

fn write_range(
    tree: &Tree,
    file: &File,
    offset: u64,
    opts: &Options,
    durable: write::Durable,
) -> Result<Report, Error> {
    opts.check()?;
    if opts.size.is_none() {
        return Err(Error::Invalid("writing into a byte range needs its size".into()));
    }
    let plan = Plan::new(tree, opts, opts.size.map(|s| s / BLOCK_SIZE))?;
    let layout = layout_for(&plan, opts)?;
    write::write(&plan, &layout, opts, file, Path::new("<byte range>"), offset, durable)
}

#[cfg(test)]
mod tests;
