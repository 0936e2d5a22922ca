//! The initramfs: a cpio `newc` archive of a [`Tree`], compressed for the kernel.
//!
//! This module owns the archive format: the `070701` ("newc") header, 4-byte alignment of
//! names and data, inode numbers, link counts, the `TRAILER!!!` entry, and the compression
//! wrapper the kernel unpacks (`zstd`; Debian kernels have `CONFIG_RD_ZSTD`). What goes into
//! the initramfs (`berth-init` as `/init`, kernel modules, `modules.dep`) is decided elsewhere;
//! the one exception is `dev/console`, which is always present: the kernel opens it for PID 1's
//! stdio before `/init` runs, when no devtmpfs is mounted yet.
//!
//! Layout choices, all for byte-identical output from the same tree:
//! - entries come in [`Tree::walk`] order, preceded by `.` (the root directory, so its mode
//!   is set too): names sorted, each directory's entry before its contents (a directory's
//!   entries are listed together, then its subdirectories' contents);
//! - inode numbers count up from 1 in that order;
//! - every entry gets the same mtime when [`CpioOptions::mtime`] is set (else the tree's);
//! - hard links of regular files follow the newc convention of GNU cpio and the kernel's
//!   `gen_init_cpio`: every name carries the same inode number and the full link count, and
//!   only the *last* name carries the data (the others have size 0). The kernel's unpacker
//!   links the later names to the first and then writes the data; GNU cpio defers the
//!   size-0 names until the data arrives. Other kinds (symlinks, devices, FIFOs, sockets) with
//!   several names are written as independent entries, since their "data" (a symlink target)
//!   must be in every entry and no reader needs them to share an inode;
//! - directories have link count 2 + their subdirectories, as on a real filesystem;
//! - extended attributes are not stored: newc has no place for them.

use std::io::{self, Write};

use berth_fstree::{Metadata, Node, NodeId, NodeKind, ROOT, Tree, TreeError};

/// The newc magic.
const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends the archive.
const TRAILER: &str = "TRAILER!!!";
/// Path and device numbers of the console node (`/dev/console` is char 5:1 on Linux).
const CONSOLE_PATH: &str = "dev/console";
const CONSOLE_MAJOR: u32 = 5;
const CONSOLE_MINOR: u32 = 1;
/// The console is PID 1's stdio; root-only, as the kernel's default initramfs has it.
const CONSOLE_MODE: u16 = 0o600;

/// zstd level used by [`Compression::default`]: near the ratio of level 19 on kernel modules
/// (already-compressed `.ko.xz` files do not shrink either way) at a fraction of its time.
pub const DEFAULT_ZSTD_LEVEL: i32 = 12;

/// How the archive is compressed. The kernel tells the formats apart by their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The bare cpio archive.
    None,
    /// A single zstd frame with a content checksum, single-threaded, at this level (1–19).
    /// Single-threaded compression at a fixed level gives the same bytes on every run.
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: DEFAULT_ZSTD_LEVEL }
    }
}

/// Options of [`write_archive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpioOptions {
    /// The mtime of every entry (for example `SOURCE_DATE_EPOCH`); `None` keeps each node's
    /// own mtime (clamped to the 0..=2^32-1 range newc can hold).
    pub mtime: Option<u32>,
    pub compression: Compression,
}

/// Errors of writing an initramfs, naming the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("initramfs: /{path} has {size} bytes; a newc archive entry holds at most 4 GiB - 1")]
    FileTooLarge { path: String, size: u64 },
    #[error("initramfs: /{path}: {what} {value} does not fit the 32-bit newc field")]
    FieldTooLarge { path: String, what: &'static str, value: u64 },
    #[error("initramfs: /{CONSOLE_PATH} exists in the tree but is not the console (a char device 5:1)")]
    ConsoleConflict,
    #[error("initramfs: adding /{CONSOLE_PATH}: {0}")]
    AddConsole(#[source] TreeError),
    #[error("initramfs: reading the content of /{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("initramfs: zstd level {level} is outside 1..=19")]
    BadLevel { level: i32 },
    #[error("initramfs: writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// Writes `tree` (plus `dev/console` if missing) as a newc archive, compressed as asked, to
/// `out`, and returns `out` once everything, compression trailer included, is written.
pub fn write_archive<W: Write>(tree: &Tree, opts: &CpioOptions, out: W) -> Result<W, CpioError> {
    match opts.compression {
        Compression::None => write_newc(tree, opts.mtime, out),
        Compression::Zstd { level } => {
            if !(1..=19).contains(&level) {
                return Err(CpioError::BadLevel { level });
            }
            let mut enc = zstd::stream::Encoder::new(out, level).map_err(CpioError::Write)?;
            // The checksum lets the kernel (and `zstd -t`) catch a damaged initrd at boot.
            enc.include_checksum(true).map_err(CpioError::Write)?;
            let enc = write_newc(tree, opts.mtime, enc)?;
            enc.finish().map_err(CpioError::Write)
        }
    }
}

/// Writes the uncompressed newc archive.
fn write_newc<W: Write>(tree: &Tree, mtime: Option<u32>, out: W) -> Result<W, CpioError> {
    let with_console;
    let tree = match console_state(tree, mtime)? {
        Some(added) => {
            with_console = added;
            &with_console
        }
        None => tree,
    };

    let mut entries: Vec<(Vec<u8>, NodeId)> = vec![(b".".to_vec(), ROOT)];
    entries.extend(tree.walk());

    let names = tree.name_counts();
    // Index of the last entry naming each node: where a hard-linked file's data goes.
    let mut last_name = vec![usize::MAX; tree.node_count()];
    for (i, (_, id)) in entries.iter().enumerate() {
        last_name[*id] = i;
    }
    let mut subdirs = vec![0u32; tree.node_count()];
    for (id, node) in tree.nodes() {
        if node.kind.is_dir() {
            subdirs[id] = tree.entries(id).filter(|(_, child)| tree.node(*child).kind.is_dir()).count() as u32;
        }
    }

    let mut w = Writer { out, written: 0 };
    let mut inos = vec![0u32; tree.node_count()];
    let mut next_ino = 1u32;
    for (i, (path, id)) in entries.iter().enumerate() {
        let node = tree.node(*id);
        let shared = matches!(node.kind, NodeKind::File(_)) && names[*id] > 1;
        let ino = if shared && inos[*id] != 0 {
            inos[*id]
        } else {
            let ino = next_ino;
            next_ino = next_ino.wrapping_add(1);
            if shared {
                inos[*id] = ino;
            }
            ino
        };
        let shown = || String::from_utf8_lossy(path).into_owned();
        let (nlink, rdev, body): (u32, (u32, u32), Option<Vec<u8>>) = match &node.kind {
            NodeKind::Dir(_) => (2 + subdirs[*id], (0, 0), None),
            NodeKind::File(data) => {
                if data.len() > u64::from(u32::MAX) {
                    return Err(CpioError::FileTooLarge { path: shown(), size: data.len() });
                }
                let nlink = if shared { names[*id] } else { 1 };
                let body = if last_name[*id] == i {
                    Some(data.read_all().map_err(|source| CpioError::Read { path: shown(), source })?)
                } else {
                    None
                };
                (nlink, (0, 0), body)
            }
            NodeKind::Symlink(target) => (1, (0, 0), Some(target.clone())),
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                (1, (*major, *minor), None)
            }
            NodeKind::Fifo | NodeKind::Socket => (1, (0, 0), None),
        };
        let body = body.unwrap_or_default();
        let header = Header {
            ino,
            mode: node.st_mode(),
            uid: node.meta.uid,
            gid: node.meta.gid,
            nlink,
            mtime: mtime.unwrap_or_else(|| clamp_time(node.meta.mtime)),
            filesize: u32::try_from(body.len())
                .map_err(|_| CpioError::FileTooLarge { path: shown(), size: body.len() as u64 })?,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
        };
        w.entry(&header, path, &body)?;
    }
    w.entry(&Header { nlink: 1, ..Header::default() }, TRAILER.as_bytes(), &[])?;
    Ok(w.out)
}

/// Checks the tree's `dev/console`. Returns a copy of the tree with `dev/` and the console
/// added if it has none, `None` if the tree already has the right node.
fn console_state(tree: &Tree, mtime: Option<u32>) -> Result<Option<Tree>, CpioError> {
    if let Some(id) = tree.lookup(CONSOLE_PATH) {
        return match tree.node(id).kind {
            NodeKind::CharDevice { major: CONSOLE_MAJOR, minor: CONSOLE_MINOR } => Ok(None),
            _ => Err(CpioError::ConsoleConflict),
        };
    }
    let time = mtime.map_or_else(|| tree.node(ROOT).meta.mtime, i64::from);
    let mut t = tree.clone();
    t.mkdir_all("dev", &Metadata::root(0o755, time)).map_err(CpioError::AddConsole)?;
    let console = Node::new(
        NodeKind::CharDevice { major: CONSOLE_MAJOR, minor: CONSOLE_MINOR },
        Metadata::root(CONSOLE_MODE, time),
    );
    t.insert(CONSOLE_PATH, console).map_err(CpioError::AddConsole)?;
    Ok(Some(t))
}

fn clamp_time(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// The fields of one newc header that vary; the archive's own device numbers and the
/// checksum are always 0.
#[derive(Debug, Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

struct Writer<W> {
    out: W,
    /// Bytes written so far, for the 4-byte alignment.
    written: u64,
}

impl<W: Write> Writer<W> {
    fn entry(&mut self, h: &Header, name: &[u8], body: &[u8]) -> Result<(), CpioError> {
        let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::FieldTooLarge {
            path: String::from_utf8_lossy(name).into_owned(),
            what: "name length",
            value: name.len() as u64 + 1,
        })?;
        let mut head = Vec::with_capacity(110 + name.len() + 4);
        head.extend_from_slice(MAGIC);
        for field in [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.filesize,
            0, // devmajor
            0, // devminor
            h.rdevmajor,
            h.rdevminor,
            namesize,
            0, // check (only used by the "070702" CRC format)
        ] {
            head.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        head.extend_from_slice(name);
        head.push(0);
        self.put(&head)?;
        self.pad()?;
        self.put(body)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes).map_err(CpioError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// newc aligns both the name's end and the data's end to 4 bytes from the archive start.
    fn pad(&mut self) -> Result<(), CpioError> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut t = Tree::new(Metadata::root(0o755, 7));
        t.mkdir_all("bin", &Metadata::root(0o755, 7)).unwrap();
        t.insert("bin/a", Node::new(NodeKind::File(b"hello".as_slice().into()), Metadata::root(0o755, 7))).unwrap();
        t.hard_link("bin/a", "bin/b").unwrap();
        t
    }

    /// Splits an uncompressed archive into (name, header fields, data).
    fn parse(mut a: &[u8]) -> Vec<(String, Vec<u32>, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0usize;
        loop {
            assert_eq!(&a[..6], MAGIC);
            let f: Vec<u32> = (0..13)
                .map(|i| u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap())
                .collect();
            let namesize = f[11] as usize;
            let name = String::from_utf8(a[110..110 + namesize - 1].to_vec()).unwrap();
            let data_start = (off + 110 + namesize).next_multiple_of(4) - off;
            let size = f[6] as usize;
            let data = a[data_start..data_start + size].to_vec();
            let next = (off + data_start + size).next_multiple_of(4) - off;
            out.push((name.clone(), f, data));
            if name == TRAILER {
                assert_eq!(next, a.len());
                return out;
            }
            a = &a[next..];
            off += next;
        }
    }

    #[test]
    fn layout_links_and_console() {
        let opts = CpioOptions { mtime: Some(99), compression: Compression::None };
        let bytes = write_archive(&tree(), &opts, Vec::new()).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes);
        let names: Vec<_> = e.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, [".", "bin", "dev", "bin/a", "bin/b", "dev/console", TRAILER]);
        // Hard links: same inode, nlink 2, data only in the last name.
        assert_eq!(e[3].1[0], e[4].1[0]);
        assert_eq!((e[3].1[4], e[3].1[6]), (2, 0));
        assert_eq!((e[4].1[4], e[4].2.as_slice()), (2, b"hello".as_slice()));
        // Root: 2 + two subdirectories.
        assert_eq!(e[0].1[4], 4);
        assert_eq!(e[0].1[1], 0o040755);
        let console = &e[5].1;
        assert_eq!((console[1], console[9], console[10]), (0o020600, 5, 1));
        assert!(e[..6].iter().all(|(_, f, _)| f[5] == 99));
        let inos: Vec<_> = e.iter().map(|(_, f, _)| f[0]).collect();
        assert_eq!(inos, [1, 2, 3, 4, 4, 5, 0]);
    }

    #[test]
    fn console_conflict_and_levels() {
        let mut t = tree();
        t.mkdir_all("dev", &Metadata::root(0o755, 0)).unwrap();
        t.insert("dev/console", Node::new(NodeKind::File(Vec::new().into()), Metadata::root(0o600, 0))).unwrap();
        let e = write_archive(&t, &CpioOptions::default(), Vec::new()).unwrap_err();
        assert!(matches!(e, CpioError::ConsoleConflict), "{e}");
        let opts = CpioOptions { mtime: None, compression: Compression::Zstd { level: 0 } };
        assert!(matches!(write_archive(&tree(), &opts, Vec::new()), Err(CpioError::BadLevel { level: 0 })));
    }

    #[test]
    fn zstd_round_trip() {
        let opts = CpioOptions { mtime: Some(1), compression: Compression::default() };
        let z = write_archive(&tree(), &opts, Vec::new()).unwrap();
        let raw = write_archive(&tree(), &CpioOptions { compression: Compression::None, ..opts }, Vec::new()).unwrap();
        assert_eq!(zstd::decode_all(z.as_slice()).unwrap(), raw);
    }
}
