//! `berth fs`: the filesystem writers as stand-alone commands.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use berth_fstree::{LoadOptions, Tree};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use berth_builder::size::ByteSize;

#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Write a read-only ext4 filesystem image from a directory (like make_ext4fs).
    ///
    /// Files, directories, symlinks, hard links, device nodes, FIFOs, modes (setuid, setgid,
    /// sticky), owners and extended attributes are taken from SRC_DIR. Output is deterministic:
    /// the UUID and directory hash seed derive from the label and the tree, and every timestamp
    /// is SOURCE_DATE_EPOCH when set. The image is written beside OUT and renamed into place,
    /// so a failure never leaves a partial file.
    ///
    /// Example: berth fs ext4 rootfs/ root.img --size 1G --all-root
    Ext4(Ext4Args),
}

#[derive(Debug, Args)]
pub struct Ext4Args {
    /// Directory whose contents become the filesystem root.
    src_dir: PathBuf,
    /// Image file to write (replaced if it exists).
    out: PathBuf,
    /// Filesystem size, e.g. 512M, 1G, 1073741824 [default: the smallest that fits].
    #[arg(long, value_name = "SIZE")]
    size: Option<ByteSize>,
    /// Make every entry owned by root (uid 0, gid 0), for trees prepared without privileges.
    #[arg(long)]
    all_root: bool,
    /// A filesystem to mount read-write: adds a journal, one inode per 16 KiB and 5% of the
    /// blocks (at most 256 MiB) reserved for root, like mke2fs. Needs --size (at most
    /// 16 TiB - 4 KiB: there is no 64bit feature).
    #[arg(long, requires = "size")]
    writable: bool,
    /// Volume label, at most 16 bytes.
    #[arg(long, default_value = "berth-root")]
    label: String,
    /// Timestamp (seconds since the epoch) for every inode and the superblock.
    /// [default: SOURCE_DATE_EPOCH, else each entry's own mtime]
    #[arg(long, value_name = "SECONDS")]
    timestamp: Option<i64>,
}

pub fn run(cmd: FsCommand) -> anyhow::Result<()> {
    match cmd {
        FsCommand::Ext4(a) => ext4(a),
    }
}

fn ext4(a: Ext4Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if !a.src_dir.is_dir() {
        bail!("{}: not a directory", a.src_dir.display());
    }
    let mtime = match a.timestamp {
        Some(t) => Some(t),
        None => super::source_date_epoch()?,
    };
    let tree = Tree::from_dir(&a.src_dir, &LoadOptions { all_root: a.all_root, mtime })
        .with_context(|| format!("reading {}", a.src_dir.display()))?;
    // Superblock times: the given time, else the newest entry, so they come from the inputs.
    let newest =
        tree.nodes().zip(tree.reachable()).filter(|(_, r)| *r).map(|((_, n), _)| n.meta.mtime).max().unwrap_or(0);
    let stamp = mtime.unwrap_or(newest).clamp(0, i64::from(u32::MAX)) as u32;
    let seed = fingerprint(&tree);
    let mut opts = match a.size {
        Some(size) if a.writable => berth_ext4::Options::writable(&a.label, &seed, stamp, size.0),
        _ => berth_ext4::Options::derived(&a.label, &seed, stamp),
    };
    opts.size = a.size.map(|s| s.0);
    let report =
        berth_ext4::write_file(&tree, &a.out, &opts).with_context(|| format!("writing {}", a.out.display()))?;
    // The writer's temporary file was 0600; the output is the user's like any other new file.
    berth_builder::umask::apply_at(&a.out).with_context(|| format!("setting the mode of {}", a.out.display()))?;
    eprintln!(
        "wrote {}: ext4, {} ({} blocks, {} free), {} inodes ({} free), {} of file data in {:.2} s",
        a.out.display(),
        ByteSize(report.size),
        report.blocks,
        report.free_blocks,
        report.inodes,
        report.free_inodes,
        ByteSize(tree.content_bytes()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A digest of the tree's shape and metadata (not content): the seed of the filesystem UUID.
fn fingerprint(tree: &Tree) -> Vec<u8> {
    let mut h = Sha256::new();
    for (path, id) in tree.walk() {
        let n = tree.node(id);
        h.update(&path);
        h.update([0]);
        h.update(n.st_mode().to_le_bytes());
        h.update(n.meta.uid.to_le_bytes());
        h.update(n.meta.gid.to_le_bytes());
        h.update(n.meta.mtime.to_le_bytes());
        if let berth_fstree::NodeKind::File(d) = &n.kind {
            h.update(d.len().to_le_bytes());
        }
    }
    h.finalize().to_vec()
}
