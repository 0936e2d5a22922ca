//! Applying data archives to the tree: what dpkg's unpack phase does, in memory.
//!
//! Rules, in the order they are checked for each entry:
//!
//! * **Paths.** Member names are normalized (`./` and `.` dropped); absolute names and `..` are
//!   errors naming the package and path. The root entry (`./`) is ignored: the root directory's
//!   metadata belongs to the builder.
//! * **Merged-/usr.** [`merged_usr_skeleton`] makes `/bin`, `/sbin`, `/lib` and `/lib64` symlinks
//!   into `/usr`. Directories in a path are looked up as the kernel would on the installed system,
//!   following symlinks, so `./bin/sh` lands in `/usr/bin/sh` (as under usrmerge) and a package's
//!   `./lib/` directory entry leaves the `/lib` symlink alone (dpkg keeps a symlink where a
//!   package ships a directory, if the symlink leads to a directory). A symlink a package ships
//!   that would point at its own location once the aliases are merged (`/usr/bin/foo ->
//!   /bin/foo` next to a real `/bin/foo`) is dropped in favour of the real file, as usrmerge does.
//! * **Missing parents** are created as directories (0755 root:root, the entry's mtime).
//!   They count as *implicit*.
//! * **Directories** are shared. The first package that ships a directory explicitly sets its
//!   mode, owner, mtime and xattrs; later packages change nothing. Directories that were implicit
//!   (created for a parent, by the skeleton, or present in the tree handed to [`Unpacker::new`])
//!   take the metadata of the first package that ships them.
//! * **Files** (anything not a directory) belong to the package that installed them. When a
//!   second package ships the same path:
//!   - identical kind, content or target, mode, owner and xattrs (as Multi-Arch: same packages
//!     have): shared, the first stays (mtime may differ);
//!   - the new package `Replaces` the owner (by name; versions are the resolver's business):
//!     the new one is installed and owns the path (reported in [`UnpackReport::replaced`]);
//!   - the owner `Replaces` the new package: the owner's stays (reported in
//!     [`UnpackReport::kept`]), which is what dpkg ends with whichever order the two are
//!     unpacked in;
//!   - otherwise, or when the path was in the tree before any package (not owned): an error
//!     naming both packages ([`DebError::Conflict`]). dpkg refuses the same.
//! * A non-directory over a directory, or a directory over a non-directory that is not a symlink
//!   to a directory, is an error, as in dpkg.
//! * **Hard links** name an earlier path of the same package or any existing non-directory in
//!   the tree; they share the node, so the writers give them one inode.
//! * **Ownership** is the numeric uid/gid of the tar header (names are not looked up: the
//!   target's `/etc/passwd` does not exist yet while unpacking).
//! * **mtime** is the header's (PAX `mtime` rounded down), clamped to
//!   [`UnpackOptions::mtime_clamp`] when given (the reproducible-builds `SOURCE_DATE_EPOCH` rule).
//!
//! If [`Unpacker::apply`] fails, the tree holds part of that package: the build is to be
//! abandoned, not continued.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use berth_fstree::{FileData, Metadata, Node, NodeId, NodeKind, Tree, TreeError};

use super::data::{DataArchive, DataEntry, EntryKind};
use super::path::{self, as_path, join, resolve_parent};
use super::{DebError, DebFile, DebInfo, ScriptKind};

/// The merged-/usr aliases: `/NAME -> usr/NAME`.
pub const USR_ALIASES: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

/// How packages are unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// If set, every mtime later than this is set to it (`SOURCE_DATE_EPOCH`).
    pub mtime_clamp: Option<i64>,
}

impl UnpackOptions {
    fn clamp(&self, t: i64) -> i64 {
        self.mtime_clamp.map_or(t, |c| t.min(c))
    }
}

/// Makes the merged-/usr layout: directories `/usr/{bin,sbin,lib,lib64}` (0755 root, if missing)
/// and symlinks `/bin -> usr/bin`, `/sbin -> usr/sbin`, `/lib -> usr/lib`, `/lib64 -> usr/lib64`.
/// A symlink already there with that target is kept; anything else there is an error.
pub fn merged_usr_skeleton(tree: &mut Tree, mtime: i64) -> Result<(), TreeError> {
    let dir = Metadata::root(0o755, mtime);
    for name in USR_ALIASES {
        tree.mkdir_all(format!("usr/{name}"), &dir)?;
        let target = format!("usr/{name}").into_bytes();
        match tree.lookup(name) {
            Some(id) if tree.node(id).kind == NodeKind::Symlink(target.clone()) => {}
            Some(_) => return Err(TreeError::Exists { path: name.into() }),
            None => {
                tree.insert(name, Node::new(NodeKind::Symlink(target), Metadata::root(0o777, mtime)))?;
            }
        }
    }
    Ok(())
}

/// What unpacking one package did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub package: String,
    pub version: String,
    /// Regular files installed (hard links not counted).
    pub files: usize,
    /// Directories created (not those that already existed).
    pub dirs: usize,
    pub symlinks: usize,
    pub hard_links: usize,
    /// Device nodes and FIFOs.
    pub special: usize,
    /// Bytes of regular-file content installed.
    pub bytes: u64,
    /// Entries whose path went through a symlink, such as `./bin/sh` into `/usr/bin/sh`.
    pub redirected: usize,
    /// Identical files another package had installed already (left as they were).
    pub shared: usize,
    /// `(path, previous owner)`: files taken over from a package this one `Replaces`.
    pub replaced: Vec<(String, String)>,
    /// `(path, owner)`: entries not installed because their owner `Replaces` this package.
    pub kept: Vec<(String, String)>,
    /// Symlinks not installed (or removed) because, with `/usr` merged, they would point at
    /// themselves.
    pub alias_loops: Vec<String>,
    /// Maintainer scripts the package has; none was run (the builder's replacements are in
    /// [`setup`](super::setup)).
    pub scripts_skipped: Vec<ScriptKind>,
}

/// Who put a file in the tree.
#[derive(Debug)]
struct Owner {
    name: String,
    replaces: Vec<String>,
}

/// Unpacks packages, in order, into a tree it owns, remembering which package installed each
/// file so later packages can be checked against it.
#[derive(Debug)]
pub struct Unpacker {
    tree: Tree,
    opts: UnpackOptions,
    packages: Vec<Owner>,
    /// Canonical path (relative, `/`-separated) of each installed non-directory → `packages` index.
    owners: HashMap<Vec<u8>, usize>,
    /// Directories whose metadata a package has set.
    explicit_dirs: HashSet<NodeId>,
}

/// The package being applied.
struct Ctx<'a> {
    info: &'a DebInfo,
    pkg: usize,
    report: UnpackReport,
}

impl Ctx<'_> {
    fn err(&self, path: &[u8], why: impl Into<String>) -> DebError {
        DebError::Entry {
            deb: self.info.path.clone(),
            package: self.info.package().to_owned(),
            path: shown(path),
            why: why.into(),
        }
    }

    fn tree_err(&self, path: &[u8]) -> impl Fn(TreeError) -> DebError + '_ {
        let path = path.to_vec();
        move |e| self.err(&path, e.to_string())
    }

    fn conflict(&self, canonical: &[u8], other: String) -> DebError {
        DebError::Conflict {
            deb: self.info.path.clone(),
            package: self.info.package().to_owned(),
            path: shown(canonical),
            other,
        }
    }
}

impl Unpacker {
    /// Starts from `tree` (usually after [`merged_usr_skeleton`]). Its directories count as
    /// implicit; its other nodes belong to no package, so a package shipping the same path with
    /// different content is a conflict.
    pub fn new(tree: Tree, opts: UnpackOptions) -> Unpacker {
        Unpacker { tree, opts, packages: Vec::new(), owners: HashMap::new(), explicit_dirs: HashSet::new() }
    }

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The tree, for steps between packages. Nodes changed here keep the owner they had.
    pub fn tree_mut(&mut self) -> &mut Tree {
        &mut self.tree
    }

    pub fn into_tree(self) -> Tree {
        self.tree
    }

    /// The package that installed the file at canonical `path` (no symlinks in it), if any.
    pub fn owner(&self, path: &str) -> Option<&str> {
        let key = path::normalize(path.trim_start_matches('/').as_bytes()).ok()?;
        self.owners.get(&key).map(|&i| self.packages[i].name.as_str())
    }

    /// Reads the data of `deb` and applies it.
    pub fn unpack(&mut self, deb: &DebFile) -> Result<UnpackReport, DebError> {
        let data = deb.read_data()?;
        self.apply(deb.info(), data)
    }

    /// Applies a data archive read by [`DebFile::read_data`] (perhaps on another thread).
    pub fn apply(&mut self, info: &DebInfo, data: DataArchive) -> Result<UnpackReport, DebError> {
        let c = &info.control;
        let name = c.package().to_owned();
        // Two packages of one name (Multi-Arch: same, several architectures) share an owner.
        let pkg = match self.packages.iter().position(|p| p.name == name) {
            Some(i) => i,
            None => {
                let replaces = c.replaces().into_iter().map(str::to_owned).collect();
                self.packages.push(Owner { name: name.clone(), replaces });
                self.packages.len() - 1
            }
        };
        let report = UnpackReport {
            package: name,
            version: c.version().to_owned(),
            scripts_skipped: info.scripts.iter().map(|s| s.kind).collect(),
            ..Default::default()
        };
        let mut ctx = Ctx { info, pkg, report };
        for mut entry in data.entries {
            entry.meta.mtime = self.opts.clamp(entry.meta.mtime);
            self.place(&mut ctx, entry)?;
        }
        Ok(ctx.report)
    }

    fn place(&mut self, ctx: &mut Ctx<'_>, entry: DataEntry) -> Result<(), DebError> {
        let DataEntry { path: raw, meta, kind } = entry;
        let implicit = Metadata::root(0o755, meta.mtime);
        let mut created = Vec::new();
        let (parent, last) =
            resolve_parent(&mut self.tree, &raw, Some(&implicit), &mut created).map_err(|why| ctx.err(&raw, why))?;
        let Some(name) = last else {
            return Ok(()); // the root directory entry
        };
        if parent.followed {
            ctx.report.redirected += 1;
        }
        let canonical = join(&parent.path, name);
        let existing = self.tree.child(parent.dir, name);

        // What the entry would become, for comparing with what is there.
        let new_node = match &kind {
            EntryKind::Dir => None,
            EntryKind::HardLink(target) => {
                let id = self.hard_link_target(ctx, &raw, target)?;
                if existing == Some(id) {
                    return Ok(()); // already this very node
                }
                Some(self.tree.node(id).clone())
            }
            other => node_kind(other).map(|k| Node::new(k, meta.clone())),
        };

        let Some(existing) = existing else {
            return self.install(ctx, &canonical, &raw, meta, kind);
        };
        match (&kind, &self.tree.node(existing).kind) {
            (EntryKind::Dir, NodeKind::Dir(_)) => {
                if self.explicit_dirs.insert(existing) {
                    self.tree.node_mut(existing).meta = meta;
                }
                Ok(())
            }
            (EntryKind::Dir, NodeKind::Symlink(_)) => {
                // dpkg leaves a symlink where a package ships a directory if it leads to one.
                match path::follow(&mut self.tree, &canonical) {
                    Some((id, _)) if self.tree.node(id).kind.is_dir() => Ok(()),
                    _ => Err(ctx.err(&raw, "the package ships a directory where a symlink to a non-directory is")),
                }
            }
            (EntryKind::Dir, _) => {
                Err(ctx.err(&raw, format!("the package ships a directory where {} has a file", self.who(&canonical))))
            }
            (_, NodeKind::Dir(_)) => {
                Err(ctx.err(&raw, "the package ships a non-directory where a directory is (dpkg refuses this too)"))
            }
            _ => {
                let new_node = new_node.ok_or_else(|| ctx.err(&raw, "internal: no node for a non-directory"))?;
                self.collide(ctx, existing, &canonical, &raw, &new_node, meta, kind)
            }
        }
    }

    /// A non-directory entry where a non-directory already is.
    #[allow(clippy::too_many_arguments)]
    fn collide(
        &mut self,
        ctx: &mut Ctx<'_>,
        existing: NodeId,
        canonical: &[u8],
        raw: &[u8],
        new_node: &Node,
        meta: Metadata,
        kind: EntryKind,
    ) -> Result<(), DebError> {
        let old = self.tree.node(existing);
        if same_content(old, new_node) {
            ctx.report.shared += 1;
            self.owners.entry(canonical.to_vec()).or_insert(ctx.pkg);
            return Ok(());
        }
        let old_target = match &old.kind {
            NodeKind::Symlink(t) => Some(t.clone()),
            _ => None,
        };
        // Merged-/usr aliasing: `/usr/bin/x -> /bin/x` is `/usr/bin/x -> itself` now; the real
        // file wins, whichever came first.
        if let NodeKind::Symlink(target) = &new_node.kind
            && self.points_at(canonical, target)
        {
            ctx.report.alias_loops.push(shown(canonical));
            return Ok(());
        }
        if let Some(target) = old_target
            && self.points_at(canonical, &target)
        {
            ctx.report.alias_loops.push(shown(canonical));
            return self.replace(ctx, canonical, raw, meta, kind);
        }
        let other = match self.owners.get(canonical) {
            Some(&o) if o == ctx.pkg => {
                let why = format!("the package ships `{}` twice (after merging /usr)", shown(canonical));
                return Err(ctx.err(raw, why));
            }
            Some(&o) => o,
            None => return Err(ctx.conflict(canonical, "the initial tree (before any package)".into())),
        };
        let other_name = self.packages[other].name.clone();
        if self.packages[ctx.pkg].replaces.contains(&other_name) {
            ctx.report.replaced.push((shown(canonical), other_name));
            return self.replace(ctx, canonical, raw, meta, kind);
        }
        if self.packages[other].replaces.contains(&self.packages[ctx.pkg].name) {
            ctx.report.kept.push((shown(canonical), other_name));
            return Ok(());
        }
        Err(ctx.conflict(canonical, format!("package {other_name}")))
    }

    /// Whether a symlink at `at` with `target` would lead back to `at` itself.
    fn points_at(&mut self, at: &[u8], target: &[u8]) -> bool {
        let full = if target.first() == Some(&b'/') { target.to_vec() } else { join(path::dir_of(at), target) };
        match resolve_parent(&mut self.tree, &full, None, &mut Vec::new()) {
            Ok((parent, Some(name))) => join(&parent.path, name) == at,
            _ => false,
        }
    }

    fn replace(
        &mut self,
        ctx: &mut Ctx<'_>,
        canonical: &[u8],
        raw: &[u8],
        meta: Metadata,
        kind: EntryKind,
    ) -> Result<(), DebError> {
        self.tree.unlink(as_path(canonical)).map_err(ctx.tree_err(raw))?;
        self.install(ctx, canonical, raw, meta, kind)
    }

    /// Puts a new entry at `canonical`, whose parent exists and whose name is free.
    fn install(
        &mut self,
        ctx: &mut Ctx<'_>,
        canonical: &[u8],
        raw: &[u8],
        meta: Metadata,
        kind: EntryKind,
    ) -> Result<(), DebError> {
        let at = as_path(canonical);
        match kind {
            EntryKind::Dir => {
                let dir = Node::new(NodeKind::Dir(Default::default()), meta);
                let id = self.tree.insert(at, dir).map_err(ctx.tree_err(raw))?;
                self.explicit_dirs.insert(id);
                ctx.report.dirs += 1;
                return Ok(());
            }
            EntryKind::HardLink(target) => {
                let id = self.hard_link_target(ctx, raw, &target)?;
                let target = self.canonical_of(id, &target);
                self.tree.hard_link(as_path(&target), at).map_err(ctx.tree_err(raw))?;
                ctx.report.hard_links += 1;
            }
            EntryKind::File(data) => {
                ctx.report.files += 1;
                ctx.report.bytes += data.len() as u64;
                let node = Node::new(NodeKind::File(FileData::Memory(data)), meta);
                self.tree.insert(at, node).map_err(ctx.tree_err(raw))?;
            }
            other => {
                if matches!(other, EntryKind::Symlink(_)) {
                    ctx.report.symlinks += 1;
                } else {
                    ctx.report.special += 1;
                }
                let kind = node_kind(&other).ok_or_else(|| ctx.err(raw, "internal: entry has no node kind"))?;
                self.tree.insert(at, Node::new(kind, meta)).map_err(ctx.tree_err(raw))?;
            }
        }
        self.owners.insert(canonical.to_vec(), ctx.pkg);
        Ok(())
    }

    /// The node a hard link entry names: an earlier entry of this package or any node in the
    /// tree, found through symlinked directories like every other path.
    fn hard_link_target(&mut self, ctx: &Ctx<'_>, raw: &[u8], target: &[u8]) -> Result<NodeId, DebError> {
        let missing = || ctx.err(raw, format!("hard link to `{}`, which is not in the tree", shown(target)));
        let (parent, name) = resolve_parent(&mut self.tree, target, None, &mut Vec::new()).map_err(|_| missing())?;
        let id = name.and_then(|n| self.tree.child(parent.dir, n)).ok_or_else(missing)?;
        if self.tree.node(id).kind.is_dir() {
            return Err(ctx.err(raw, format!("hard link to directory `{}`", shown(target))));
        }
        Ok(id)
    }

    /// The canonical path of hard-link target `raw_target` (known to resolve to `id`).
    fn canonical_of(&mut self, id: NodeId, raw_target: &[u8]) -> Vec<u8> {
        match resolve_parent(&mut self.tree, raw_target, None, &mut Vec::new()) {
            Ok((parent, Some(name))) if self.tree.child(parent.dir, name) == Some(id) => join(&parent.path, name),
            _ => raw_target.to_vec(),
        }
    }

    fn who(&self, canonical: &[u8]) -> String {
        match self.owners.get(canonical) {
            Some(&o) => format!("package {}", self.packages[o].name),
            None => "the initial tree".into(),
        }
    }
}

/// The tree node kind of an entry that is neither a directory nor a hard link.
fn node_kind(kind: &EntryKind) -> Option<NodeKind> {
    Some(match kind {
        EntryKind::File(d) => NodeKind::File(FileData::Memory(Arc::clone(d))),
        EntryKind::Symlink(t) => NodeKind::Symlink(t.clone()),
        EntryKind::CharDevice { major, minor } => NodeKind::CharDevice { major: *major, minor: *minor },
        EntryKind::BlockDevice { major, minor } => NodeKind::BlockDevice { major: *major, minor: *minor },
        EntryKind::Fifo => NodeKind::Fifo,
        EntryKind::Dir | EntryKind::HardLink(_) => return None,
    })
}

/// Same kind, content or target, permissions, owner and xattrs; the mtime may differ.
fn same_content(a: &Node, b: &Node) -> bool {
    let meta = a.meta.mode == b.meta.mode
        && a.meta.uid == b.meta.uid
        && a.meta.gid == b.meta.gid
        && a.meta.xattrs == b.meta.xattrs;
    let kind = match (&a.kind, &b.kind) {
        (NodeKind::File(FileData::Memory(x)), NodeKind::File(FileData::Memory(y))) => {
            Arc::ptr_eq(x, y) || x[..] == y[..]
        }
        (NodeKind::File(x), NodeKind::File(y)) => x.len() == y.len() && x.read_all().ok() == y.read_all().ok(),
        (x, y) => x == y,
    };
    meta && kind
}

/// A tree path for messages: absolute, lossy UTF-8.
fn shown(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}
