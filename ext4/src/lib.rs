//! A deterministic ext4 writer: a [`berth_fstree::Tree`] in, a read-only ext4 filesystem out.
//!
//! It owns the on-disk ext4 format for Berth: 4 KiB blocks, extents, contiguous file data,
//! hashed (htree) directories, fast and slow symlinks, hard links, device nodes, extended
//! attributes in the inode or in a block, and metadata checksums. There is no journal: the root
//! filesystem is mounted read-only. The UUID, directory hash seed and every timestamp come from
//! [`Options`], so the same tree and options give the same bytes.

use std::fs::File;
use std::path::{Path, PathBuf};

use berth_fstree::Tree;

/// Size of a filesystem block.
pub const BLOCK_SIZE: u64 = 4096;

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
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the tree needs {needed} bytes but only {available} bytes are available")]
    TooSmall { needed: u64, available: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] berth_fstree::TreeError),
    #[error("{0}")]
    Invalid(String),
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Filesystem size in bytes.
    pub size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
}

/// The smallest filesystem size in bytes that holds `tree` with these options.
pub fn min_size(tree: &Tree, opts: &Options) -> Result<u64, Error> {
    let _ = (tree, opts);
    todo!()
}

/// Writes `tree` as a new file at `path`: into a temporary file beside it, renamed into place
/// only when complete, so a failure leaves no output behind.
pub fn write_file(tree: &Tree, path: &Path, opts: &Options) -> Result<Report, Error> {
    let _ = (tree, path, opts);
    todo!()
}

/// Writes `tree` into `file` at byte `offset` (for example a partition of a disk image).
/// `opts.size` is the size of that byte range and is required.
pub fn write_at(tree: &Tree, file: &File, offset: u64, opts: &Options) -> Result<Report, Error> {
    let _ = (tree, file, offset, opts);
    todo!()
}
