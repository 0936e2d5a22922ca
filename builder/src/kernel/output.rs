//! Writing a selection into trees: the root's modules directory, and the initramfs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use berth_fstree::{FileData, Metadata, Node, NodeId, NodeKind, ROOT, Tree};

use super::index::IndexBuilder;
use super::select::{alias_key, index_err};
use super::{
    ALWAYS_FILE, DriverLists, DriverReport, INITRAMFS_ALWAYS, KernelError, KernelPackage, PLATFORM_DRIVERS,
    PlatformDrivers, Selection, check_drivers,
};

/// What [`prune_root`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootReport {
    /// Module files kept.
    pub kept: usize,
    /// Module files removed.
    pub removed: usize,
    /// Bytes of the removed module files.
    pub removed_bytes: u64,
}

/// Cuts the root's modules directory down to `selection`: removes every module file of
/// `kernel` that is not selected (and directories left empty by that), and writes what
/// `depmod` writes for the modules left, with the same bytes: `modules.dep` (lines in load
/// order, see the module docs), `modules.alias`, `modules.softdep`, `modules.symbols`,
/// `modules.devname`, kmod's binary indexes `modules.dep.bin`, `modules.alias.bin`,
/// `modules.symbols.bin`, `modules.builtin.bin` and `modules.builtin.alias.bin`, and a
/// filtered `modules.order` (mode 0644, root-owned, `mtime`). `modules.builtin` and
/// `modules.builtin.modinfo` stay as shipped.
///
/// The tree is rebuilt without the removed nodes, so node ids taken before the call are
/// invalid after it; nothing else in the tree changes.
pub fn prune_root(
    tree: &mut Tree,
    kernel: &KernelPackage,
    selection: &Selection,
    mtime: i64,
) -> Result<RootReport, KernelError> {
    let dir = kernel.modules_dir();
    let keep: BTreeSet<&str> = selection.modules().iter().map(|m| m.path.as_str()).collect();
    // A selection of another kernel, or a decompressed one (`.ko` names for `.ko.xz` files),
    // would remove the very modules it names and leave a modules.dep pointing at nothing.
    let shipped: BTreeSet<&str> = kernel.modules().modules().iter().map(|m| m.path.as_str()).collect();
    if let Some(foreign) = keep.iter().find(|p| !shipped.contains(*p)) {
        return Err(KernelError::ForeignSelection {
            path: (*foreign).to_owned(),
            version: kernel.version().to_owned(),
        });
    }
    let mut report = RootReport { kept: 0, removed: 0, removed_bytes: 0 };
    let mut emptied: BTreeSet<PathBuf> = BTreeSet::new();
    for m in kernel.modules().modules() {
        if keep.contains(m.path.as_str()) {
            report.kept += 1;
            continue;
        }
        let path = dir.join(&m.path);
        detach(tree, &path)?;
        report.removed += 1;
        report.removed_bytes += m.data.len();
        let mut parent = path.parent();
        while let Some(p) = parent
            && p != dir
        {
            emptied.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    // Deepest first, so a directory is looked at after its subdirectories. `kernel/` itself
    // stays even if nothing is selected: the layout depmod expects.
    let mut dirs: Vec<PathBuf> = emptied.into_iter().filter(|p| p != &dir.join("kernel")).collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in dirs {
        if tree.lookup(&d).is_some_and(|id| tree.entries(id).next().is_none()) {
            detach(tree, &d)?;
        }
    }
    let meta = Metadata::root(0o644, mtime);
    // depmod writes an empty file for an index whose source file is missing.
    let builtin_bin = kernel.modules_builtin.as_deref().map(builtin_index).transpose()?.unwrap_or_default();
    let builtin_alias_bin = kernel.builtin_modinfo.as_deref().map(builtin_alias_index).transpose()?.unwrap_or_default();
    for (name, bytes) in [
        ("modules.dep", selection.modules_dep().into_bytes()),
        ("modules.dep.bin", selection.modules_dep_bin()?),
        ("modules.alias", selection.modules_alias().into_bytes()),
        ("modules.alias.bin", selection.modules_alias_bin()?),
        ("modules.softdep", selection.modules_softdep().into_bytes()),
        ("modules.symbols", selection.modules_symbols().into_bytes()),
        ("modules.symbols.bin", selection.modules_symbols_bin()?),
        ("modules.builtin.bin", builtin_bin),
        ("modules.builtin.alias.bin", builtin_alias_bin),
        ("modules.devname", selection.modules_devname().into_bytes()),
        ("modules.order", selection.modules_order().into_bytes()),
    ] {
        put_file(tree, &dir.join(name), bytes.into(), &meta)?;
    }
    *tree = compact(tree)?;
    Ok(report)
}

/// The initramfs tree (before the cpio writer adds `dev/console`).
#[derive(Debug, Clone)]
pub struct Initramfs {
    pub tree: Tree,
    /// The modules it carries (paths uncompressed), whose `load_order` is stage 1's.
    pub selection: Selection,
    /// How the kernel provides every platform's drivers, the root's included: which are built
    /// in, which optional ones it lacks (the caller reports those).
    pub drivers: DriverReport,
}

impl Initramfs {
    /// The optional initramfs drivers this kernel has neither as a module nor built in (an
    /// image built on `linux-image-cloud-amd64` lacks `ahci`).
    pub fn unavailable(&self) -> &[String] {
        self.selection.unavailable()
    }
}

/// Builds the initramfs tree for every platform ([`PLATFORM_DRIVERS`]); see
/// [`initramfs_tree_for`].
pub fn initramfs_tree<S: AsRef<str>>(
    kernel: &KernelPackage,
    extra: &[S],
    init: FileData,
    mtime: i64,
) -> Result<Initramfs, KernelError> {
    initramfs_tree_for(kernel, PLATFORM_DRIVERS, extra, init, mtime)
}

/// Builds the initramfs tree for `platforms`:
///
/// - `/init`: `init` (berth-init, static), mode 0755;
/// - `/usr/lib/modules/<kver>/`: the closure of `platforms`' root-disk and NIC drivers (each of
///   which the kernel must have, as a module or built in: [`check_drivers`]), of their other
///   initramfs drivers and of [`INITRAMFS_ALWAYS`] (those the kernel has), and of `extra` (each
///   of which must exist, like the root's selection), stored uncompressed; `modules.dep` and
///   `modules.alias` for exactly those, [`ALWAYS_FILE`] (the closure of [`INITRAMFS_ALWAYS`]
///   and `extra`; see the module docs for the loading contract), the filtered `modules.order`, `modules.builtin` as shipped (so stage 1
///   can tell a built-in module from a missing one), and, so that kmod's tools work on the
///   initramfs too, kmod's binary indexes as depmod writes them for these files
///   (`modules.dep.bin`, `modules.alias.bin`, `modules.symbols.bin`, `modules.builtin.bin`,
///   and `modules.builtin.alias.bin` from the package's `modules.builtin.modinfo`) and
///   `modules.softdep` (modprobe reads soft dependencies from it, not from an index);
/// - `/lib -> usr/lib` and `/bin -> usr/bin`, as in the merged-/usr root;
/// - mount points `/dev`, `/proc`, `/sys`, `/run`, `/sysroot` (the root is mounted on
///   `/sysroot` before `switch_root`).
///
/// Everything is root-owned with `mtime`; directories 0755, module files 0644.
pub fn initramfs_tree_for<S: AsRef<str>>(
    kernel: &KernelPackage,
    platforms: &[PlatformDrivers],
    extra: &[S],
    init: FileData,
    mtime: i64,
) -> Result<Initramfs, KernelError> {
    let drivers = check_drivers(kernel.modules(), platforms)?;
    let lists = DriverLists::of(platforms);
    let required: Vec<&str> =
        extra.iter().map(AsRef::as_ref).chain(lists.initramfs_required.iter().map(String::as_str)).collect();
    let optional: Vec<&str> =
        lists.initramfs_optional.iter().map(String::as_str).chain(INITRAMFS_ALWAYS.iter().copied()).collect();
    let selection = kernel.modules().select_with_optional(&required, &optional)?.decompressed()?;
    // What stage 1 loads whatever the devices: the extra modules (the definition named them, so
    // they are wanted even if no device asks) and the always-needed ones, with their closure.
    let always = kernel.modules().select_with_optional(extra, INITRAMFS_ALWAYS)?.decompressed()?;
    let always_text: String = always.load_order().iter().map(|p| format!("{p}\n")).collect();
    let dir_meta = Metadata::root(0o755, mtime);
    let file_meta = Metadata::root(0o644, mtime);
    let mut tree = Tree::new(dir_meta.clone());
    let tree_err = |path: &Path| {
        let path = format!("initramfs: {}", path.display());
        move |source| KernelError::Tree { path, source }
    };
    for d in ["dev", "proc", "sys", "run", "sysroot", "usr/bin", "usr/lib"] {
        tree.mkdir_all(d, &dir_meta).map_err(tree_err(Path::new(d)))?;
    }
    for (link, target) in [("lib", "usr/lib"), ("bin", "usr/bin")] {
        let node = Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, mtime));
        tree.insert(link, node).map_err(tree_err(Path::new(link)))?;
    }
    tree.insert("init", Node::new(NodeKind::File(init), Metadata::root(0o755, mtime)))
        .map_err(tree_err(Path::new("init")))?;
    let dir = Path::new("usr/lib/modules").join(selection.version());
    tree.mkdir_all(&dir, &dir_meta).map_err(tree_err(&dir))?;
    for m in selection.modules() {
        let path = dir.join(&m.path);
        if let Some(parent) = path.parent() {
            tree.mkdir_all(parent, &dir_meta).map_err(tree_err(parent))?;
        }
        tree.insert(&path, Node::new(NodeKind::File(m.data.clone()), file_meta.clone())).map_err(tree_err(&path))?;
    }
    let builtin_alias_bin = kernel.builtin_modinfo.as_deref().map(builtin_alias_index).transpose()?.unwrap_or_default();
    for (name, bytes) in [
        ("modules.dep", selection.modules_dep().into_bytes()),
        ("modules.dep.bin", selection.modules_dep_bin()?),
        ("modules.alias", selection.modules_alias().into_bytes()),
        ("modules.alias.bin", selection.modules_alias_bin()?),
        ("modules.softdep", selection.modules_softdep().into_bytes()),
        ("modules.symbols.bin", selection.modules_symbols_bin()?),
        ("modules.order", selection.modules_order().into_bytes()),
        (ALWAYS_FILE, always_text.into_bytes()),
        ("modules.builtin", kernel.modules_builtin().to_vec()),
        ("modules.builtin.bin", builtin_index(kernel.modules_builtin())?),
        ("modules.builtin.alias.bin", builtin_alias_bin),
    ] {
        put_file(&mut tree, &dir.join(name), bytes.into(), &file_meta)?;
    }
    Ok(Initramfs { tree, selection, drivers })
}

/// `modules.builtin.bin` from `modules.builtin`, as depmod reads it: one path per line, lines
/// not starting with a letter skipped; the key is the file name up to its first `.`, `-` made
/// `_`; the value empty.
fn builtin_index(text: &[u8]) -> Result<Vec<u8>, KernelError> {
    let mut ix = IndexBuilder::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        if !line[0].is_ascii_alphabetic() {
            continue;
        }
        let file = line.rsplit(|&b| b == b'/').next().unwrap_or_default();
        if file.is_empty() {
            continue;
        }
        // Only a `.` ends the name: a last line without one keeps its newline, as in depmod.
        let name: String =
            String::from_utf8_lossy(file.split(|&b| b == b'.').next().unwrap_or_default()).replace('-', "_");
        ix.insert(&name, "", 0).map_err(index_err("modules.builtin.bin"))?;
    }
    ix.write().map_err(index_err("modules.builtin.bin"))
}

/// `modules.builtin.alias.bin` from `modules.builtin.modinfo` (NUL-ended `module.key=value`
/// entries): each `alias` value, normalised as in `modules.alias.bin`, to its module, all of
/// priority 0. This follows depmod's stream reading, quirks included: an entry without `=`
/// makes it skip the entry after it too, and a last entry without its NUL is dropped.
fn builtin_alias_index(modinfo: &[u8]) -> Result<Vec<u8>, KernelError> {
    let mut ix = IndexBuilder::new();
    let mut rest = modinfo;
    // Reads up to `end` (consumed), stopping early at a NUL (consumed) or the end of the data;
    // the bytes read if `end` was found.
    let read_to = |rest: &mut &[u8], end: u8| -> Option<Vec<u8>> {
        let stop = rest.iter().position(|&b| b == end || b == 0);
        let (bytes, found) = match stop {
            Some(i) => {
                let found = rest[i] == end;
                let bytes = rest[..i].to_vec();
                *rest = &rest[i + 1..];
                (bytes, found)
            }
            None => {
                *rest = &[];
                (Vec::new(), false)
            }
        };
        found.then_some(bytes)
    };
    while !rest.is_empty() {
        let Some(module) = read_to(&mut rest, b'.').filter(|m| !m.is_empty()) else { continue };
        if read_to(&mut rest, b'=').as_deref() != Some(b"alias") {
            read_to(&mut rest, 0);
            continue;
        }
        let Some(alias) = read_to(&mut rest, 0).filter(|a| !a.is_empty()) else { continue };
        let Some(key) = alias_key(&String::from_utf8_lossy(&alias)) else { continue };
        ix.insert(&key, &String::from_utf8_lossy(&module), 0).map_err(index_err("modules.builtin.alias.bin"))?;
    }
    ix.write().map_err(index_err("modules.builtin.alias.bin"))
}

/// Removes the entry at `path` from its parent directory. The node stays in the arena,
/// unreachable, until [`compact`] drops it.
fn detach(tree: &mut Tree, path: &Path) -> Result<(), KernelError> {
    let missing = || KernelError::Tree {
        path: path.display().to_string(),
        source: berth_fstree::TreeError::NotFound { path: path.to_path_buf() },
    };
    let parent = path.parent().and_then(|p| tree.lookup(p)).ok_or_else(missing)?;
    let name = path.file_name().ok_or_else(missing)?;
    use std::os::unix::ffi::OsStrExt;
    match &mut tree.node_mut(parent).kind {
        NodeKind::Dir(entries) => entries.remove(name.as_bytes()).map(|_| ()).ok_or_else(missing),
        _ => Err(missing()),
    }
}

/// Writes a regular file at `path` (parents created 0755), replacing a file already there.
fn put_file(tree: &mut Tree, path: &Path, data: FileData, meta: &Metadata) -> Result<(), KernelError> {
    let err = |source| KernelError::Tree { path: path.display().to_string(), source };
    if let Some(id) = tree.lookup(path) {
        let node = tree.node_mut(id);
        if !matches!(node.kind, NodeKind::File(_)) {
            return Err(KernelError::NotAFile { path: path.display().to_string() });
        }
        *node = Node::new(NodeKind::File(data), meta.clone());
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        tree.mkdir_all(parent, &Metadata::root(0o755, meta.mtime)).map_err(err)?;
    }
    tree.insert(path, Node::new(NodeKind::File(data), meta.clone())).map_err(err)?;
    Ok(())
}

/// A copy of `tree` holding only the nodes reachable from the root, hard links kept.
/// (`Tree` has no removal of its own; this keeps node counts, `content_bytes` and every
/// writer's view exactly those of a tree built without the removed files.)
fn compact(tree: &Tree) -> Result<Tree, KernelError> {
    let mut out = Tree::new(tree.node(ROOT).meta.clone());
    let mut first_name: HashMap<NodeId, PathBuf> = HashMap::new();
    for (raw, id) in tree.walk() {
        use std::os::unix::ffi::OsStrExt;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
        let err = |source| KernelError::Tree { path: path.display().to_string(), source };
        if let Some(first) = first_name.get(&id) {
            out.hard_link(first, &path).map_err(err)?;
            continue;
        }
        let node = tree.node(id);
        let copy = match &node.kind {
            NodeKind::Dir(_) => Node::new(NodeKind::Dir(Default::default()), node.meta.clone()),
            _ => node.clone(),
        };
        out.insert(&path, copy).map_err(err)?;
        first_name.insert(id, path);
    }
    Ok(out)
}
