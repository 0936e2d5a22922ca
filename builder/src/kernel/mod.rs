//! The kernel of an image: Debian's kernel package, cut down to the modules the image needs.
//!
//! This module owns everything between "the kernel package is unpacked in the root tree" and
//! "the root and the initramfs carry exactly the modules they need":
//! - finding the kernel in the tree ([`KernelPackage::find`]): its version, its image
//!   (`/boot/vmlinuz-<kver>`), its modules directory (`/usr/lib/modules/<kver>`, or
//!   `/lib/modules/<kver>` in a tree whose `/lib` is a real directory);
//! - indexing its modules ([`ModuleIndex`]) from their own `.modinfo` sections (`depends=`,
//!   `softdep=`, `alias=`; `.ko`, `.ko.xz` and `.ko.zst`) plus `modules.order`,
//!   `modules.builtin` and `modules.builtin.modinfo`, with no host tool: there is no depmod
//!   or modprobe in the build;
//! - selecting modules by name or path glob with their dependency closure ([`Selection`]);
//! - the root's module directory ([`prune_root`]): unselected modules removed, and every file
//!   depmod writes regenerated for the modules left, with depmod's bytes: the text files
//!   (`modules.dep`, `modules.alias`, `modules.softdep`, `modules.symbols`,
//!   `modules.devname`) and kmod's binary indexes (below); `modules.order` filtered;
//! - the initramfs tree ([`initramfs_tree`]): `/init`, every platform's root-disk and network
//!   drivers and their closure, their `modules.dep`, `modules.alias`, the list of modules
//!   loaded whatever the devices ([`ALWAYS_FILE`]) and kmod's indexes. The cpio writer
//!   ([`crate::cpio`]) turns that tree into the archive;
//! - the per-platform driver lists, in `platforms.rs` only ([`PLATFORM_DRIVERS`]): which
//!   drivers go into the initramfs and which only into the root
//!   ([`KernelPackage::root_selection`]), and which the kernel must have
//!   ([`check_drivers`]); and the parameters every image's command line gets
//!   ([`image_cmdline`]).
//!
//! # Names, dependencies, closure
//!
//! A module's name is its file name without `.ko[.xz|.zst]`, with `-` replaced by `_`, as the
//! kernel and kmod name it (`crc32c-intel.ko` is `crc32c_intel`); names in `depends=` and
//! patterns are normalised the same way. `depends=` is what `modpost` resolved from the
//! module's undefined symbols when the kernel was built, the same graph depmod rebuilds from
//! the symbol tables. A module named in `modules.builtin` is part of the kernel image and
//! satisfies any dependency on it. `softdep=` names (`pre:` and `post:`) may be module names
//! or aliases (`ext4` has `pre: crypto-crc32c`, provided by `crc32c_generic` and
//! `crc32c_intel`); they are resolved as modprobe resolves them (name, then every module whose
//! alias matches) and their modules join the closure when the package has them. `post:`
//! modules are included too, because modprobe loads them with the module (`vfio` is of no
//! use without its `post: vfio_iommu_type1`). A softdep nothing provides is skipped and
//! reported ([`Selection::unresolved_softdeps`]): soft dependencies are optional by nature.
//!
//! # `modules.dep`, and the loading contract with `berth-init`
//!
//! Each line is `path: dep1 dep2 ...`, paths relative to the modules directory, exactly
//! depmod's text format: the dependency list is the module's *transitive* hard dependencies,
//! each once, sorted so that a module comes before the modules it depends on (depmod's
//! topological order, reproduced by the same algorithm on the same input: depmod records a
//! module's dependencies in the order the module first uses their symbols, so Berth reads the
//! selected modules' symbol tables for that order, as `modinfo.rs` describes). A loader
//! therefore loads a line's list from the **end backwards**, then the module itself; that is
//! what modprobe does with the same data.
//!
//! Berth writes the *lines* in load order: every module's line comes after the lines of all
//! its dependencies and of its `pre:` soft dependencies (and before its `post:` ones). depmod
//! writes lines in `modules.order` order instead; no consumer depends on line order (modprobe
//! reads only the binary index, below), so each line is depmod's and the line order is
//! Berth's. Loading a module means (stage 1 of `berth-init` and `berth-devd`, docs/design.md
//! §3, both through `berth_devices::modules`):
//!
//! > Find the module's line in `modules.dep`; for each path in its dependency list from last
//! > to first, then for the module's own path, unless that path was already loaded, load it
//! > (`finit_module`; `EEXIST` counts as loaded).
//!
//! Which modules: stage 1 loads every path of [`ALWAYS_FILE`] (in its order, which is load
//! order), then the modules whose `modules.alias` patterns match a `modalias` under
//! `/sys/devices`, again until a round loads nothing new (a bus driver such as `virtio_pci` or
//! `hv_vmbus` reveals the devices on its bus). `berth-devd` does the same from the root's
//! `modules.alias`, and then for each device the kernel announces. Loading every line of
//! `modules.dep` in file order also works (the lines are in load order, so the inner loop never
//! finds anything left to load), and [`Selection::load_order`] gives that sequence; the tests
//! check that the two agree. Modules in the initramfs are
//! stored uncompressed (the archive as a whole is zstd-compressed, and `finit_module` then
//! needs no decompression support), so its `modules.dep` names `.ko` files only.
//!
//! # kmod's binary indexes: `modprobe` in a Berth root
//!
//! kmod (modprobe, `modinfo`, and through modprobe the kernel's `request_module`) reads only
//! the binary indexes depmod writes beside the text files: `libkmod`'s lookups open
//! `<dir>/<index>.bin` and never fall back to the text (only `modules.softdep` is read as
//! text, as a configuration file). Berth writes them as kmod 30's depmod (Debian 12) does,
//! byte for byte (`index.rs` describes the format), from the same data as the text files:
//! - `modules.dep.bin`: module name to its `modules.dep` line;
//! - `modules.alias.bin`: each `alias=` pattern to its module;
//! - `modules.symbols.bin` (and the text `modules.symbols`): `symbol:<name>` to the module
//!   exporting it, from the modules' symbol tables;
//! - `modules.builtin.bin` and `modules.builtin.alias.bin`: built-in module names and their
//!   aliases, from `modules.builtin` and `modules.builtin.modinfo`.
//!
//! So in a Berth root whose image has kmod, `modprobe NAME` works for every module the image
//! kept, and so does loading on demand: the kernel's requests for `fs-overlay`, `nft-expr-*`,
//! `net-pf-*` and the like resolve through these indexes. A module the image left out cannot
//! be loaded, on demand or otherwise: the selection is still what decides what an image can
//! load. Berth's init loads its modules itself from `modules.dep`, with no kmod involved.

mod glob;
mod index;
mod modinfo;
mod output;
mod platforms;
mod select;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_fstree::{FileData, NodeId, NodeKind, Tree, TreeError};

pub use index::IndexError;
pub use modinfo::{ModInfo, ModinfoError, ModuleCompression};
pub use output::{Initramfs, RootReport, initramfs_tree, initramfs_tree_for, prune_root};
pub use platforms::{
    DEFAULT_CMDLINE, DriverLists, DriverReport, EVERY_PLATFORM_ROOT, PLATFORM_DRIVERS, PlatformDrivers, Role,
    check_drivers, image_cmdline,
};
pub use select::Selection;

/// The initramfs modules stage 1 loads whatever the devices: they drive no device (so no
/// `modalias` brings them) but stage 2 needs them before it could load from the root. With the
/// initramfs's extra modules (a definition's `initramfs-modules`) and the closure of both, they
/// are listed in [`ALWAYS_FILE`].
pub const INITRAMFS_ALWAYS: &[&str] = &["ext4", "overlay"];

/// The initramfs file naming the modules stage 1 loads unconditionally: one path (as in
/// `modules.dep`) a line, in load order. Every other initramfs module is loaded only when a
/// device's `modalias` matches one of its `modules.alias` patterns. Its name is the loader's
/// (`berth_devices`, which stage 1 uses).
pub use berth_devices::modules::ALWAYS_FILE;

/// A proposed default module list for a container host's root: overlay storage, bridge and
/// veth networking with netfilter for both iptables back ends, VXLAN and the usual virtual
/// links for overlay networks. A Berth root can load on demand only the modules it carries
/// (see the module docs), so this list errs on the side of what Docker, containerd's CNI
/// plugins, kube-proxy (iptables mode) and Flannel/Calico ask for. On Debian 6.1 kernels its closure is
/// about 140 modules and 5.7 MiB (`xt_*` alone is some 75 of them), against 87 MiB
/// (`-cloud-amd64`) and 379 MiB (`-amd64`) for the whole package.
pub const CONTAINER_HOST_MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "bridge",
    "veth",
    "vxlan",
    "macvlan",
    "ipvlan",
    "dummy",
    "tun",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "nft_nat",
    "nft_reject_inet",
    "nft_fib_inet",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "ipt_REJECT",
    "ip6t_REJECT",
    "xt_*",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_net",
    "sch_htb",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
];

/// Errors of finding, indexing and selecting kernel modules; each names the kernel version,
/// module, pattern or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no kernel in the tree: no /usr/lib/modules/<version> (or /lib/modules/<version>) directory with modules")]
    NoKernel,
    #[error("several kernels in the tree ({}); an image carries exactly one", .versions.join(", "))]
    SeveralKernels { versions: Vec<String> },
    #[error("kernel {version}: no kernel image: neither /boot/vmlinuz-{version} nor {modules_dir}/vmlinuz is a file")]
    NoVmlinuz { version: String, modules_dir: String },
    #[error("kernel module {path}: {source}")]
    Modinfo {
        path: String,
        #[source]
        source: ModinfoError,
    },
    #[error("kernel module name {name} is used by both {first} and {second}")]
    DuplicateModule { name: String, first: String, second: String },
    #[error("{path}: {source}")]
    Tree {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("kernel {version}: module {pattern:?} is neither a module file of the package nor built into the kernel")]
    UnknownModule { pattern: String, version: String },
    #[error(
        "kernel {version} has no {module}, the {role} of {platforms}: neither a module file of the package nor built in (modules.builtin)"
    )]
    MissingPlatformDriver { module: String, role: &'static str, platforms: String, version: String },
    #[error("kernel {version}: module glob {pattern:?} matches no module")]
    GlobMatchesNothing { pattern: String, version: String },
    #[error(
        "kernel {version}: module {module} depends on {dependency}, which is neither a module of the package nor built in"
    )]
    MissingDependency { module: String, dependency: String, version: String },
    #[error("kernel {version}: module dependency cycle: {}", .cycle.join(" -> "))]
    Cycle { cycle: Vec<String>, version: String },
    #[error("kernel {version}: the selection's module {path} is not a module file of this kernel package")]
    ForeignSelection { path: String, version: String },
    #[error("writing {file}: {source}")]
    Index {
        file: &'static str,
        #[source]
        source: IndexError,
    },
}

/// One loadable module of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name (`crc32c_intel` for `crc32c-intel.ko.xz`).
    pub name: String,
    /// Path relative to the modules directory, as `modules.dep` writes it
    /// (`kernel/fs/ext4/ext4.ko`, compression suffix included).
    pub path: String,
    pub compression: ModuleCompression,
    /// Hard dependencies from `depends=`, names normalised, in the module's order.
    pub depends: Vec<String>,
    /// The raw `.modinfo` fields (`softdep=` and `alias=` values verbatim).
    pub info: ModInfo,
    /// The file's content.
    pub data: FileData,
}

impl Module {
    /// [`Module::path`] without the compression suffix (the form `modules.order` uses).
    pub fn uncompressed_path(&self) -> &str {
        strip_compression(&self.path)
    }
}

/// The modules of one kernel: loadable modules in depmod's order (`modules.order` first, then
/// the rest in depmod's hash-table order), built-in module names and built-in aliases.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    version: String,
    modules: Vec<Module>,
    by_name: HashMap<String, usize>,
    builtin: BTreeSet<String>,
    /// `modules.builtin` lines (`kernel/fs/ext4/ext4.ko`), for path globs.
    builtin_paths: Vec<String>,
    /// `(alias pattern normalised, module)` from `modules.builtin.modinfo`.
    builtin_aliases: Vec<(String, String)>,
    /// `modules.order` lines as shipped.
    order: Vec<String>,
}

impl ModuleIndex {
    /// Builds the index from module files (path relative to the modules directory, content)
    /// and the text of `modules.order`, `modules.builtin` and `modules.builtin.modinfo` (empty
    /// when the package has none).
    pub fn new(
        version: &str,
        files: Vec<(String, FileData)>,
        modules_order: &str,
        modules_builtin: &str,
        builtin_modinfo: &[u8],
    ) -> Result<ModuleIndex, KernelError> {
        let order: Vec<String> = modules_order.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let rank: HashMap<&str, usize> = order.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
        let mut modules = Vec::with_capacity(files.len());
        for (path, data) in files {
            let file_name = path.rsplit('/').next().unwrap_or(&path);
            let Some((compression, stem_len)) = ModuleCompression::of_name(file_name) else { continue };
            let name = normalize(&file_name[..stem_len - 3]);
            let info = modinfo::read_modinfo(&data, compression)
                .map_err(|source| KernelError::Modinfo { path: path.clone(), source })?;
            let mut depends: Vec<String> = Vec::new();
            for d in info.depends.iter().map(|d| normalize(d)) {
                if !depends.contains(&d) {
                    depends.push(d);
                }
            }
            modules.push(Module { name, path, compression, depends, info, data });
        }
        // depmod's module order: those in modules.order by their line, then the others in the
        // order depmod's module table iterates them (a kmod hash table by name, 512 buckets),
        // which its stable sort keeps.
        modules.sort_by(|a, b| {
            let ka = rank.get(a.uncompressed_path()).copied().unwrap_or(usize::MAX);
            let kb = rank.get(b.uncompressed_path()).copied().unwrap_or(usize::MAX);
            ka.cmp(&kb).then_with(|| {
                index::kmod_hash_order(&a.name, MODULE_BUCKETS).cmp(&index::kmod_hash_order(&b.name, MODULE_BUCKETS))
            })
        });
        let mut by_name = HashMap::with_capacity(modules.len());
        for (i, m) in modules.iter().enumerate() {
            if let Some(&j) = by_name.get(&m.name) {
                let first: &Module = &modules[j];
                return Err(KernelError::DuplicateModule {
                    name: m.name.clone(),
                    first: first.path.clone(),
                    second: m.path.clone(),
                });
            }
            by_name.insert(m.name.clone(), i);
        }
        let builtin_paths: Vec<String> = modules_builtin.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let builtin = builtin_paths
            .iter()
            .filter_map(|l| {
                let file = l.rsplit('/').next()?;
                let (_, stem_len) = ModuleCompression::of_name(file)?;
                Some(normalize(&file[..stem_len - 3]))
            })
            .collect();
        let mut builtin_aliases = Vec::new();
        for entry in builtin_modinfo.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            if let Some((module, rest)) = entry.split_once('.')
                && let Some(alias) = rest.strip_prefix("alias=")
            {
                builtin_aliases.push((berth_devices::alias::normalize(alias), module.to_owned()));
            }
        }
        Ok(ModuleIndex {
            version: version.to_owned(),
            modules,
            by_name,
            builtin,
            builtin_paths,
            builtin_aliases,
            order,
        })
    }

    /// The kernel version these modules belong to.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// All loadable modules, in depmod's order.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// The loadable module of this name (`-` and `_` are the same).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.by_name.get(&normalize(name)).map(|&i| &self.modules[i])
    }

    /// Whether the module of this name is built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// `modules.order` as shipped, one path per entry.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// Selects the modules `patterns` name, with their closure. Every pattern must match: see
    /// [`ModuleIndex::select_with_optional`].
    pub fn select<S: AsRef<str>>(&self, patterns: &[S]) -> Result<Selection, KernelError> {
        self.select_with_optional(patterns, &[] as &[&str])
    }

    /// Selects the modules `required` and `optional` name, with their closure.
    ///
    /// A pattern is a module name (`virtio_blk`, `crc32c-intel`), a name glob (`xt_*`), or,
    /// when it contains a `/`, a glob over module paths relative to `kernel/` and without
    /// compression suffix (`fs/overlayfs/*`, `drivers/net/ethernet/intel/**`; `*` stays within
    /// a directory, `**` spans directories). A required name that is neither a module nor
    /// built in, or a required glob that matches nothing, is an error naming it; an optional
    /// one is recorded in [`Selection::unavailable`]. Patterns that match only built-in
    /// modules (by name, or by their `modules.builtin` path) select nothing and are recorded
    /// in [`Selection::builtin`].
    pub fn select_with_optional<S: AsRef<str>, T: AsRef<str>>(
        &self,
        required: &[S],
        optional: &[T],
    ) -> Result<Selection, KernelError> {
        let mut roots = BTreeSet::new();
        let mut builtin = Vec::new();
        let mut unavailable = Vec::new();
        let patterns = required.iter().map(|p| (p.as_ref(), true)).chain(optional.iter().map(|p| (p.as_ref(), false)));
        for (pattern, is_required) in patterns {
            match self.resolve_pattern(pattern) {
                Resolved::Modules(found) => roots.extend(found),
                Resolved::Builtin => builtin.push(pattern.to_owned()),
                Resolved::Nothing if !is_required => unavailable.push(pattern.to_owned()),
                Resolved::Nothing if pattern.contains('/') || glob::has_wildcard(pattern) => {
                    return Err(KernelError::GlobMatchesNothing {
                        pattern: pattern.to_owned(),
                        version: self.version.clone(),
                    });
                }
                Resolved::Nothing => {
                    return Err(KernelError::UnknownModule {
                        pattern: pattern.to_owned(),
                        version: self.version.clone(),
                    });
                }
            }
        }
        select::build(self, roots, builtin, unavailable)
    }

    fn resolve_pattern(&self, pattern: &str) -> Resolved {
        if pattern.contains('/') {
            let found: Vec<usize> = self
                .modules
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    m.uncompressed_path().strip_prefix("kernel/").is_some_and(|p| glob::path_matches(pattern, p))
                })
                .map(|(i, _)| i)
                .collect();
            let in_kernel = || {
                self.builtin_paths
                    .iter()
                    .any(|p| p.strip_prefix("kernel/").is_some_and(|p| glob::path_matches(pattern, p)))
            };
            return if !found.is_empty() {
                Resolved::Modules(found)
            } else if in_kernel() {
                Resolved::Builtin
            } else {
                Resolved::Nothing
            };
        }
        let name = normalize(pattern);
        if glob::has_wildcard(pattern) {
            let found: Vec<usize> = self
                .modules
                .iter()
                .enumerate()
                .filter(|(_, m)| glob::matches(&name, &m.name))
                .map(|(i, _)| i)
                .collect();
            return if !found.is_empty() {
                Resolved::Modules(found)
            } else if self.builtin.iter().any(|b| glob::matches(&name, b)) {
                Resolved::Builtin
            } else {
                Resolved::Nothing
            };
        }
        if let Some(&i) = self.by_name.get(&name) {
            Resolved::Modules(vec![i])
        } else if self.builtin.contains(&name) {
            Resolved::Builtin
        } else {
            Resolved::Nothing
        }
    }

    /// What a `softdep` name stands for, as modprobe looks it up: a module name, a built-in
    /// module, or every loadable module with a matching alias (built-in aliases satisfy it).
    fn resolve_softdep(&self, name: &str) -> Resolved {
        let key = berth_devices::alias::normalize(name);
        if let Some(&i) = self.by_name.get(&key) {
            return Resolved::Modules(vec![i]);
        }
        if self.builtin.contains(&key) {
            return Resolved::Builtin;
        }
        let found: Vec<usize> = self
            .modules
            .iter()
            .enumerate()
            .filter(|(_, m)| m.info.aliases.iter().any(|a| glob::matches(&berth_devices::alias::normalize(a), &key)))
            .map(|(i, _)| i)
            .collect();
        if !found.is_empty() {
            Resolved::Modules(found)
        } else if self.builtin_aliases.iter().any(|(a, _)| glob::matches(a, &key)) {
            Resolved::Builtin
        } else {
            Resolved::Nothing
        }
    }
}

/// depmod's module-name hash table size.
const MODULE_BUCKETS: u32 = 512;

/// What a pattern or softdep name resolved to.
enum Resolved {
    Modules(Vec<usize>),
    Builtin,
    Nothing,
}

/// The kernel package as unpacked in a tree.
#[derive(Debug, Clone)]
pub struct KernelPackage {
    /// Absolute tree path of the modules directory (`/usr/lib/modules/<kver>`).
    modules_dir: PathBuf,
    vmlinuz_path: PathBuf,
    vmlinuz: FileData,
    /// `modules.builtin` as shipped (`None` if absent), copied into the initramfs.
    modules_builtin: Option<Vec<u8>>,
    /// `modules.builtin.modinfo` as shipped, the source of `modules.builtin.alias.bin`.
    builtin_modinfo: Option<Vec<u8>>,
    index: ModuleIndex,
}

impl KernelPackage {
    /// Finds the one kernel in `tree` and indexes its modules.
    ///
    /// A kernel is a directory `/usr/lib/modules/<kver>` (or `/lib/modules/<kver>` when `/lib`
    /// is a directory, not the merged-/usr link) holding `modules.order` or `kernel/`;
    /// directories with neither (a `linux-headers` package's `build` link, say) do not count.
    /// Its image is `/boot/vmlinuz-<kver>`, or `<modules dir>/vmlinuz` as some distributions
    /// ship it. None or several kernels are errors. Every `*.ko`, `*.ko.xz` and `*.ko.zst`
    /// under the modules directory is indexed (symlinks such as `build` are not followed).
    pub fn find(tree: &Tree) -> Result<KernelPackage, KernelError> {
        let mut found: Vec<(String, PathBuf, NodeId)> = Vec::new();
        for base in ["/usr/lib/modules", "/lib/modules"] {
            let Some(dir) = tree.lookup(base) else { continue };
            for (name, id) in tree.entries(dir) {
                let has = |entry: &[u8]| tree.entries(id).any(|(n, _)| n == entry);
                if tree.node(id).kind.is_dir() && (has(b"modules.order") || has(b"kernel")) {
                    let version = String::from_utf8_lossy(name).into_owned();
                    found.push((version, Path::new(base).join(std::ffi::OsStr::from_bytes(name)), id));
                }
            }
        }
        let (version, modules_dir, dir_id) = match found.len() {
            0 => return Err(KernelError::NoKernel),
            1 => found.remove(0),
            _ => {
                return Err(KernelError::SeveralKernels {
                    versions: found.iter().map(|(v, p, _)| format!("{v} in {}", p.display())).collect(),
                });
            }
        };
        let vmlinuz_path = [PathBuf::from(format!("/boot/vmlinuz-{version}")), modules_dir.join("vmlinuz")]
            .into_iter()
            .find(|p| tree.lookup(p).is_some_and(|id| matches!(tree.node(id).kind, NodeKind::File(_))))
            .ok_or_else(|| KernelError::NoVmlinuz {
                version: version.clone(),
                modules_dir: modules_dir.display().to_string(),
            })?;
        let vmlinuz = file_data(tree, &vmlinuz_path)?;

        let mut files = Vec::new();
        let mut stack = vec![(String::new(), dir_id)];
        while let Some((prefix, dir)) = stack.pop() {
            for (name, id) in tree.entries(dir) {
                let rel = format!("{prefix}{}", String::from_utf8_lossy(name));
                match &tree.node(id).kind {
                    NodeKind::Dir(_) => stack.push((format!("{rel}/"), id)),
                    NodeKind::File(data) if ModuleCompression::of_name(&rel).is_some() => {
                        files.push((rel, data.clone()));
                    }
                    _ => {}
                }
            }
        }
        let optional = |name: &str| -> Result<Option<Vec<u8>>, KernelError> {
            let path = modules_dir.join(name);
            if tree.lookup(&path).is_none() {
                return Ok(None);
            }
            file_data(tree, &path)?
                .read_all()
                .map(Some)
                .map_err(|source| KernelError::Tree { path: path.display().to_string(), source })
        };
        let order = optional("modules.order")?.unwrap_or_default();
        let modules_builtin = optional("modules.builtin")?;
        let builtin_modinfo = optional("modules.builtin.modinfo")?;
        let index = ModuleIndex::new(
            &version,
            files,
            &String::from_utf8_lossy(&order),
            &String::from_utf8_lossy(modules_builtin.as_deref().unwrap_or_default()),
            builtin_modinfo.as_deref().unwrap_or_default(),
        )?;
        Ok(KernelPackage { modules_dir, vmlinuz_path, vmlinuz, modules_builtin, builtin_modinfo, index })
    }

    /// The kernel version (`6.1.0-56-cloud-amd64`).
    pub fn version(&self) -> &str {
        self.index.version()
    }

    /// Absolute tree path of the modules directory.
    pub fn modules_dir(&self) -> &Path {
        &self.modules_dir
    }

    /// Absolute tree path of the kernel image.
    pub fn vmlinuz_path(&self) -> &Path {
        &self.vmlinuz_path
    }

    /// The kernel image (an EFI-stub bzImage on x86), for the ESP.
    pub fn vmlinuz(&self) -> &FileData {
        &self.vmlinuz
    }

    /// `modules.builtin` as shipped (empty when the package has none).
    pub fn modules_builtin(&self) -> &[u8] {
        self.modules_builtin.as_deref().unwrap_or_default()
    }

    pub fn modules(&self) -> &ModuleIndex {
        &self.index
    }

    /// Shorthand for [`ModuleIndex::select`].
    pub fn select<S: AsRef<str>>(&self, patterns: &[S]) -> Result<Selection, KernelError> {
        self.index.select(patterns)
    }

    /// The root's modules: `named` (the definition's; each must exist) with every platform's
    /// drivers ([`PLATFORM_DRIVERS`]), and their closure. See [`KernelPackage::root_selection_for`].
    pub fn root_selection<S: AsRef<str>>(&self, named: &[S]) -> Result<Selection, KernelError> {
        self.root_selection_for(PLATFORM_DRIVERS, named)
    }

    /// The root's modules: `named` (each must exist) with all of `platforms`' drivers and
    /// [`INITRAMFS_ALWAYS`], those of the initramfs included (a device of theirs that appears after boot, a hot-added disk or
    /// NIC, is loaded from the root), and their closure. A root-disk or NIC driver the kernel
    /// lacks is an error ([`check_drivers`]); optional ones it lacks are recorded in
    /// [`Selection::unavailable`].
    pub fn root_selection_for<S: AsRef<str>>(
        &self,
        platforms: &[PlatformDrivers],
        named: &[S],
    ) -> Result<Selection, KernelError> {
        check_drivers(&self.index, platforms)?;
        let lists = DriverLists::of(platforms);
        let required: Vec<&str> =
            named.iter().map(AsRef::as_ref).chain(lists.initramfs_required.iter().map(String::as_str)).collect();
        let optional: Vec<&str> = (lists.initramfs_optional.iter().chain(&lists.root_optional))
            .map(String::as_str)
            .chain(INITRAMFS_ALWAYS.iter().copied())
            .collect();
        self.index.select_with_optional(&required, &optional)
    }
}

fn file_data(tree: &Tree, path: &Path) -> Result<FileData, KernelError> {
    let id = tree.lookup(path).ok_or_else(|| KernelError::Tree {
        path: path.display().to_string(),
        source: TreeError::NotFound { path: path.to_path_buf() },
    })?;
    match &tree.node(id).kind {
        NodeKind::File(data) => Ok(data.clone()),
        _ => Err(KernelError::NotAFile { path: path.display().to_string() }),
    }
}

/// A module name as the kernel spells it: `-` becomes `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn strip_compression(path: &str) -> &str {
    path.strip_suffix(".xz").or_else(|| path.strip_suffix(".zst")).unwrap_or(path)
}
