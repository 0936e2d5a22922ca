//! The in-memory file tree a Berth root filesystem or initramfs is built from.
//!
//! A [`Tree`] holds directories, regular files (content in memory or a byte range of a file on
//! the host), symlinks, hard links, device nodes, FIFOs and sockets, each with mode bits
//! (setuid/setgid/sticky included), owner, mtime and extended attributes. Nothing is unpacked
//! onto the host and no privilege is needed: owners and device nodes are just data here. The
//! writers (`berth-ext4`, the builder's cpio writer) read the tree; they never mutate it.
//!
//! Nodes live in an arena; a directory maps names to [`NodeId`]s. A hard link is a second name
//! for the same `NodeId`, so link counts and inode sharing fall out of the structure.

#![warn(missing_docs)]

mod load;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub use load::LoadOptions;

/// Index of a node in its [`Tree`].
pub type NodeId = usize;

/// The root directory's id.
pub const ROOT: NodeId = 0;

/// Longest name a directory entry may have (ext4 and most Linux filesystems).
pub const MAX_NAME_LEN: usize = 255;

/// Why an operation on a [`Tree`] failed; `path` is the path in the tree (or, for [`Io`], on
/// the host) it was given.
///
/// [`Io`]: TreeError::Io
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are the path (and reason) the messages show
pub enum TreeError {
    /// Nothing at `path`, or a directory on the way is missing.
    #[error("{path}: no such file or directory in the tree")]
    NotFound { path: PathBuf },
    /// A component before the last is not a directory.
    #[error("{path}: a parent is not a directory")]
    NotADirectory { path: PathBuf },
    /// Something is already at `path`.
    #[error("{path}: already exists in the tree")]
    Exists { path: PathBuf },
    /// `path` cannot name a node: `..`, a name over [`MAX_NAME_LEN`], or the root where a parent
    /// is needed (`why` says which).
    #[error("{path}: invalid path for the tree ({why})")]
    InvalidPath { path: PathBuf, why: &'static str },
    /// A hard link to a directory was asked for.
    #[error("{path}: cannot hard-link a directory")]
    LinkToDirectory { path: PathBuf },
    /// A directory that still has entries was to be removed.
    #[error("{path}: directory not empty")]
    NotEmpty { path: PathBuf },
    /// Reading a host file (loading a directory, or a [`FileData::Range`]) failed.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Ownership, permissions, time and extended attributes of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    /// The file type is not part of it: it follows from [`NodeKind`].
    pub mode: u16,
    /// Owner's user id (numeric: no name lookup happens anywhere in the tree).
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch. Writers use it for every timestamp.
    pub mtime: i64,
    /// Extended attributes by full name (for example `security.capability`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Metadata {
    /// Root-owned metadata with the given permission bits and time.
    pub fn root(mode: u16, mtime: i64) -> Self {
        Metadata { mode: mode & 0o7777, uid: 0, gid: 0, mtime, xattrs: BTreeMap::new() }
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Bytes held in memory (shared, so cloning a tree is cheap).
    Memory(Arc<[u8]>),
    /// `len` bytes starting at `offset` of a file on the host, read when the tree is written.
    #[allow(missing_docs)] // the sentence above says what each field is
    Range { path: Arc<Path>, offset: u64, len: u64 },
}

impl FileData {
    /// Size of the content in bytes.
    pub fn len(&self) -> u64 {
        match self {
            FileData::Memory(b) => b.len() as u64,
            FileData::Range { len, .. } => *len,
        }
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the whole content into memory.
    pub fn read_all(&self) -> Result<Vec<u8>, TreeError> {
        match self {
            FileData::Memory(b) => Ok(b.to_vec()),
            FileData::Range { path, offset, len } => {
                use std::os::unix::fs::FileExt;
                let io = |source| TreeError::Io { path: path.to_path_buf(), source };
                let f = std::fs::File::open(path).map_err(io)?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact_at(&mut buf, *offset).map_err(io)?;
                Ok(buf)
            }
        }
    }
}

impl From<Vec<u8>> for FileData {
    fn from(v: Vec<u8>) -> Self {
        FileData::Memory(v.into())
    }
}

impl From<&[u8]> for FileData {
    fn from(v: &[u8]) -> Self {
        FileData::Memory(v.into())
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file and its content.
    File(FileData),
    /// Entries by name, kept sorted so every walk is deterministic.
    Dir(BTreeMap<Vec<u8>, NodeId>),
    /// The link target, as bytes.
    Symlink(Vec<u8>),
    /// A character device node.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device node.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket node (kept as tar and cpio carry it; nothing listens on it).
    Socket,
}

impl NodeKind {
    /// The `S_IFMT` bits of this kind.
    pub fn format_bits(&self) -> u16 {
        match self {
            NodeKind::Fifo => 0o010000,
            NodeKind::CharDevice { .. } => 0o020000,
            NodeKind::Dir(_) => 0o040000,
            NodeKind::BlockDevice { .. } => 0o060000,
            NodeKind::File(_) => 0o100000,
            NodeKind::Symlink(_) => 0o120000,
            NodeKind::Socket => 0o140000,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, NodeKind::Dir(_))
    }
}

/// One inode: what it is and its metadata. Every name a hard link gives it shares both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Owner, mode, time and extended attributes.
    pub meta: Metadata,
    /// File, directory, symlink, device…
    pub kind: NodeKind,
}

impl Node {
    /// A node of this kind with this metadata.
    pub fn new(kind: NodeKind, meta: Metadata) -> Self {
        Node { meta, kind }
    }

    /// Full `st_mode`: file type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        u32::from(self.kind.format_bits()) | u32::from(self.meta.mode & 0o7777)
    }
}

/// A directory tree in memory. Node [`ROOT`] is the root directory.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    pub fn new(root: Metadata) -> Self {
        Tree { nodes: vec![Node::new(NodeKind::Dir(BTreeMap::new()), root)] }
    }

    /// Size of the node arena: every [`NodeId`] is below it. Nodes unlinked since they were
    /// added still occupy their slot; [`Tree::inode_count`] counts what the tree holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes reachable from the root (the root included), each once however many names it has.
    pub fn reachable(&self) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        seen[ROOT] = true;
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            for (_, id) in self.entries(dir) {
                if !seen[id] {
                    seen[id] = true;
                    if self.nodes[id].kind.is_dir() {
                        stack.push(id);
                    }
                }
            }
        }
        seen
    }

    /// Inodes the tree holds: reachable nodes, the root included, hard links counted once.
    pub fn inode_count(&self) -> usize {
        self.reachable().iter().filter(|&&r| r).count()
    }

    /// The node `id`. Panics if `id` is not below [`Tree::node_count`] (ids come from this tree).
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The node `id`, to change; like [`Tree::node`].
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    /// Every node of the arena with its id, unlinked ones included (see [`Tree::reachable`]).
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate()
    }

    /// Entries of a directory node (empty for any other kind).
    pub fn entries(&self, dir: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        let map = match &self.nodes[dir].kind {
            NodeKind::Dir(m) => Some(m),
            _ => None,
        };
        map.into_iter().flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v)))
    }

    /// Finds the node at `path` (absolute or relative to the root). Symlinks are not followed.
    pub fn lookup(&self, path: impl AsRef<Path>) -> Option<NodeId> {
        let names = split(path.as_ref()).ok()?;
        let mut id = ROOT;
        for name in names {
            match &self.nodes[id].kind {
                NodeKind::Dir(m) => id = *m.get(name)?,
                _ => return None,
            }
        }
        Some(id)
    }

    /// Adds `node` at `path`. The parent must exist and be a directory; the name must be free.
    pub fn insert(&mut self, path: impl AsRef<Path>, node: Node) -> Result<NodeId, TreeError> {
        let path = path.as_ref();
        let (parent, name) = self.parent_of(path)?;
        let id = self.nodes.len();
        self.add_entry(parent, name, id, path)?;
        self.nodes.push(node);
        Ok(id)
    }

    /// Creates the directory at `path` and any missing parents with `meta`; existing
    /// directories are kept as they are. Returns the directory's id.
    pub fn mkdir_all(&mut self, path: impl AsRef<Path>, meta: &Metadata) -> Result<NodeId, TreeError> {
        let path = path.as_ref();
        let names = split(path)?;
        let mut id = ROOT;
        for name in names {
            let next = match &self.nodes[id].kind {
                NodeKind::Dir(m) => m.get(name).copied(),
                _ => {
                    return Err(TreeError::NotADirectory { path: path.to_path_buf() });
                }
            };
            id = match next {
                Some(n) => n,
                None => {
                    let n = self.nodes.len();
                    self.add_entry(id, name, n, path)?;
                    self.nodes.push(Node::new(NodeKind::Dir(BTreeMap::new()), meta.clone()));
                    n
                }
            };
        }
        if !self.nodes[id].kind.is_dir() {
            return Err(TreeError::NotADirectory { path: path.to_path_buf() });
        }
        Ok(id)
    }

    /// Makes `link` a hard link to the existing non-directory node at `target`.
    pub fn hard_link(&mut self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<NodeId, TreeError> {
        let target = target.as_ref();
        let id = self.lookup(target).ok_or_else(|| TreeError::NotFound { path: target.to_path_buf() })?;
        if self.nodes[id].kind.is_dir() {
            return Err(TreeError::LinkToDirectory { path: target.to_path_buf() });
        }
        let link = link.as_ref();
        let (parent, name) = self.parent_of(link)?;
        self.add_entry(parent, name, id, link)?;
        Ok(id)
    }

    /// The entry `name` of directory `dir` (`None` if absent or `dir` is not a directory).
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match &self.nodes[dir].kind {
            NodeKind::Dir(m) => m.get(name).copied(),
            _ => None,
        }
    }

    /// Removes the directory entry at `path` (symlinks are not followed) and returns the node it
    /// named. A directory must be empty. The node stays in the arena, so ids stay valid and other
    /// hard links keep naming it; a node no entry names any more is unreachable: [`Tree::walk`],
    /// [`Tree::name_counts`] and the writers no longer see it, though [`Tree::nodes`] and
    /// [`Tree::node_count`] still count it.
    pub fn unlink(&mut self, path: impl AsRef<Path>) -> Result<NodeId, TreeError> {
        let path = path.as_ref();
        let (parent, name) = self.parent_of(path)?;
        let id = self.child(parent, name).ok_or_else(|| TreeError::NotFound { path: path.to_path_buf() })?;
        if let NodeKind::Dir(m) = &self.nodes[id].kind
            && !m.is_empty()
        {
            return Err(TreeError::NotEmpty { path: path.to_path_buf() });
        }
        if let NodeKind::Dir(m) = &mut self.nodes[parent].kind {
            m.remove(name);
        }
        Ok(id)
    }

    /// Number of directory entries naming each node (its hard-link count, not counting the
    /// `.`/`..` links of directories). The root counts 1.
    pub fn name_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        counts[ROOT] = 1;
        for node in &self.nodes {
            if let NodeKind::Dir(m) = &node.kind {
                for &child in m.values() {
                    counts[child] += 1;
                }
            }
        }
        counts
    }

    /// Every entry below the root, with its path relative to the root (bytes, `/`-separated, no
    /// leading slash). Each directory's entries come together, name-sorted, before the walk
    /// descends into its subdirectories in order; so a directory always precedes its contents and
    /// siblings stay adjacent. A hard-linked node appears once per name.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<u8>, NodeId)> = vec![(Vec::new(), ROOT)];
        while let Some((prefix, dir)) = stack.pop() {
            let mut subdirs = Vec::new();
            for (name, id) in self.entries(dir) {
                let mut p = prefix.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                out.push((p.clone(), id));
                if self.nodes[id].kind.is_dir() {
                    subdirs.push((p, id));
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        out
    }

    /// Total bytes of regular-file content the tree holds, each inode counted once.
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .zip(self.reachable())
            .filter(|(_, r)| *r)
            .map(|(n, _)| match &n.kind {
                NodeKind::File(d) => d.len(),
                _ => 0,
            })
            .sum()
    }

    /// Loads a directory of the host into a tree (see [`LoadOptions`]).
    pub fn from_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Tree, TreeError> {
        load::load_dir(dir.as_ref(), opts)
    }

    fn parent_of<'p>(&self, path: &'p Path) -> Result<(NodeId, &'p [u8]), TreeError> {
        let mut names = split(path)?;
        let name =
            names.pop().ok_or(TreeError::InvalidPath { path: path.to_path_buf(), why: "the root has no parent" })?;
        let mut id = ROOT;
        for n in names {
            match &self.nodes[id].kind {
                NodeKind::Dir(m) => id = *m.get(n).ok_or_else(|| TreeError::NotFound { path: path.to_path_buf() })?,
                _ => {
                    return Err(TreeError::NotADirectory { path: path.to_path_buf() });
                }
            }
        }
        if !self.nodes[id].kind.is_dir() {
            return Err(TreeError::NotADirectory { path: path.to_path_buf() });
        }
        Ok((id, name))
    }

    fn add_entry(&mut self, dir: NodeId, name: &[u8], id: NodeId, path: &Path) -> Result<(), TreeError> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir(m) => {
                if m.contains_key(name) {
                    return Err(TreeError::Exists { path: path.to_path_buf() });
                }
                m.insert(name.to_vec(), id);
                Ok(())
            }
            _ => Err(TreeError::NotADirectory { path: path.to_path_buf() }),
        }
    }
}

/// Splits a tree path into names, rejecting `..` and names that no filesystem can hold.
fn split(path: &Path) -> Result<Vec<&[u8]>, TreeError> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                let n = n.as_bytes();
                if n.len() > MAX_NAME_LEN {
                    return Err(TreeError::InvalidPath {
                        path: path.to_path_buf(),
                        why: "a name is longer than 255 bytes",
                    });
                }
                out.push(n);
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(TreeError::InvalidPath { path: path.to_path_buf(), why: "`..` is not allowed" });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Node {
        Node::new(NodeKind::File(data.into()), Metadata::root(0o644, 0))
    }

    #[test]
    fn insert_lookup_link_walk() {
        let mut t = Tree::new(Metadata::root(0o755, 0));
        t.mkdir_all("/usr/bin", &Metadata::root(0o755, 0)).unwrap();
        let f = t.insert("/usr/bin/a", file(b"hello")).unwrap();
        assert_eq!(t.hard_link("/usr/bin/a", "/usr/bin/b").unwrap(), f);
        assert_eq!(t.lookup("usr/bin/b"), Some(f));
        assert_eq!(t.name_counts()[f], 2);
        let paths: Vec<_> = t.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(paths, ["usr", "usr/bin", "usr/bin/a", "usr/bin/b"]);
        assert!(matches!(t.insert("/usr/bin/a", file(b"")), Err(TreeError::Exists { .. })));
        assert!(matches!(t.insert("/nope/x", file(b"")), Err(TreeError::NotFound { .. })));
        assert!(matches!(t.insert("/usr/bin/a/x", file(b"")), Err(TreeError::NotADirectory { .. })));
        assert!(matches!(t.hard_link("/usr", "/x"), Err(TreeError::LinkToDirectory { .. })));
        assert!(matches!(t.insert("/../x", file(b"")), Err(TreeError::InvalidPath { .. })));
        assert_eq!(t.content_bytes(), 5);
        assert_eq!(t.inode_count(), 4);
        t.insert("/usr/gone", file(b"12345678")).unwrap();
        t.unlink("/usr/gone").unwrap();
        assert_eq!((t.inode_count(), t.content_bytes()), (4, 5), "an unlinked file still counted");
    }

    #[test]
    fn child_and_unlink() {
        let mut t = Tree::new(Metadata::root(0o755, 0));
        let bin = t.mkdir_all("/usr/bin", &Metadata::root(0o755, 0)).unwrap();
        let f = t.insert("/usr/bin/a", file(b"hello")).unwrap();
        t.hard_link("/usr/bin/a", "/usr/bin/b").unwrap();
        assert_eq!(t.child(bin, b"a"), Some(f));
        assert_eq!(t.child(f, b"x"), None);
        assert!(matches!(t.unlink("/usr"), Err(TreeError::NotEmpty { .. })));
        assert!(matches!(t.unlink("/usr/bin/c"), Err(TreeError::NotFound { .. })));
        assert_eq!(t.unlink("/usr/bin/a").unwrap(), f);
        assert_eq!(t.lookup("/usr/bin/a"), None);
        assert_eq!(t.name_counts()[f], 1);
        assert_eq!(t.unlink("/usr/bin/b").unwrap(), f);
        assert_eq!(t.name_counts()[f], 0);
        assert_eq!(t.unlink("/usr/bin").unwrap(), bin);
        let paths: Vec<_> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, [b"usr".to_vec()]);
        // The freed name can be used again.
        t.insert("/usr/bin", file(b"x")).unwrap();
    }
}
