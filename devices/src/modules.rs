//! Kernel modules by name and by `modalias`: the module directory's `modules.dep` and
//! `modules.alias` ([`ModuleDb`]), each module's load order with its dependencies
//! ([`ModuleDb::closure`]), and loading it with `finit_module(2)` ([`Loader`]). The contract the
//! builder writes these files for is in `builder/src/kernel/mod.rs` ("the loading contract").

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::alias::AliasTable;

/// The initramfs file naming the modules stage 1 loads whatever the devices: one
/// `modules.dep` path a line, in load order (the builder writes it, `builder/src/kernel`).
pub const ALWAYS_FILE: &str = "berth-modules.always";

/// A modules directory's dependency and alias tables.
#[derive(Debug, Clone, Default)]
pub struct ModuleDb {
    dir: PathBuf,
    /// Module name → (its path, its transitive dependencies as `modules.dep` lists them).
    deps: HashMap<String, (String, Vec<String>)>,
    aliases: AliasTable,
}

/// Why a modules directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct DbError {
    /// The file.
    pub path: PathBuf,
    /// The error reading it.
    #[source]
    pub source: std::io::Error,
}

impl ModuleDb {
    /// Reads `<dir>/modules.dep` (required) and `<dir>/modules.alias` (absent: no aliases).
    pub fn open(dir: &Path) -> Result<ModuleDb, DbError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| DbError { path, source })
        };
        let dep = read("modules.dep")?;
        let alias = match read("modules.alias") {
            Ok(a) => a,
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(ModuleDb::from_text(dir, &dep, &alias))
    }

    /// The tables from the files' text (`dir` is where the module paths are relative to).
    pub fn from_text(dir: &Path, modules_dep: &str, modules_alias: &str) -> ModuleDb {
        let deps = modules_dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(m, _)| !m.trim().is_empty())
            .map(|(m, d)| {
                let m = m.trim();
                (name_of(m), (m.to_owned(), d.split_ascii_whitespace().map(str::to_owned).collect()))
            })
            .collect();
        ModuleDb { dir: dir.to_path_buf(), deps, aliases: AliasTable::parse(modules_alias) }
    }

    /// The modules directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many modules `modules.dep` names.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether `modules.dep` names no module.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The alias table.
    pub fn aliases(&self) -> &AliasTable {
        &self.aliases
    }

    /// The modules a device with this `modalias` wants, each once.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        self.aliases.modules_for(modalias)
    }

    /// The paths to load for module `name`, in order: its dependencies from the last of its
    /// `modules.dep` list to the first (each before its users, as depmod sorts them), then the
    /// module. `None` if `modules.dep` does not name it.
    pub fn closure(&self, name: &str) -> Option<Vec<&str>> {
        let (path, deps) = self.deps.get(&name.replace('-', "_"))?;
        Some(deps.iter().rev().map(String::as_str).chain([path.as_str()]).collect())
    }
}

/// `kernel/drivers/char/hw_random/virtio-rng.ko.xz` → `virtio_rng`.
pub fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).replace('-', "_")
}

/// What loading one module did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Loaded now; the paths loaded (dependencies first, the module last).
    Loaded(Vec<String>),
    /// Loaded before (by us, the kernel or stage 1), or built in.
    AlreadyLoaded,
    /// `modules.dep` does not name it.
    Unknown,
    /// A path could not be loaded: which, and the error (`ENODEV`: no device for it here).
    Failed(String, Errno),
    /// A path failed before ([`Outcome::Failed`] was returned then); not tried again.
    FailedBefore,
}

/// What loads one module file (`finit_module`, or a test's stand-in).
type LoadFn<'a> = dyn FnMut(&Path) -> Result<(), Errno> + 'a;

/// Loads modules with their dependencies, remembering what it loaded and what failed (a
/// failed module is not tried again, and its failure is reported once).
pub struct Loader<'a> {
    db: &'a ModuleDb,
    load: Box<LoadFn<'a>>,
    /// Whether `/sys/module/<name>` tells what is loaded already (off in tests).
    ask_sysfs: bool,
    done: HashSet<String>,
    failed: HashSet<String>,
}

impl<'a> Loader<'a> {
    /// A loader calling `finit_module(2)`.
    pub fn new(db: &'a ModuleDb) -> Loader<'a> {
        Loader { ask_sysfs: true, ..Loader::with(db, finit) }
    }

    /// A loader calling `load` for each path (tests).
    pub fn with(db: &'a ModuleDb, load: impl FnMut(&Path) -> Result<(), Errno> + 'a) -> Loader<'a> {
        Loader { db, load: Box::new(load), ask_sysfs: false, done: HashSet::new(), failed: HashSet::new() }
    }

    /// The database this loader loads from.
    pub fn db(&self) -> &'a ModuleDb {
        self.db
    }

    /// Loads module `name` and its dependencies. EEXIST counts as loaded.
    pub fn load(&mut self, name: &str) -> Outcome {
        let Some(paths) = self.db.closure(name) else { return Outcome::Unknown };
        self.load_paths(&paths)
    }

    /// Loads `paths` in order (a closure, or the always-list), skipping what was loaded.
    pub fn load_paths(&mut self, paths: &[&str]) -> Outcome {
        let mut loaded = Vec::new();
        for &p in paths {
            if self.done.contains(p) {
                continue;
            }
            if self.failed.contains(p) {
                return Outcome::FailedBefore;
            }
            // Loaded already (stage 1, the kernel's own request_module, or built in with
            // parameters): no file to read.
            if self.ask_sysfs && Path::new("/sys/module").join(name_of(p)).join("initstate").exists() {
                self.done.insert(p.to_owned());
                continue;
            }
            match (self.load)(&self.db.dir.join(p)) {
                Ok(()) => {
                    self.done.insert(p.to_owned());
                    loaded.push(p.to_owned());
                }
                Err(Errno::EEXIST) => {
                    self.done.insert(p.to_owned());
                }
                Err(e) => {
                    self.failed.insert(p.to_owned());
                    return Outcome::Failed(p.to_owned(), e);
                }
            }
        }
        if loaded.is_empty() { Outcome::AlreadyLoaded } else { Outcome::Loaded(loaded) }
    }
}

/// `finit_module(2)` on the file; compressed modules are left to the kernel to decompress.
pub fn finit(path: &Path) -> Result<(), Errno> {
    use nix::kmod::{ModuleInitFlags, finit_module};
    let file = std::fs::File::open(path).map_err(|e| e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // MODULE_INIT_COMPRESSED_FILE (not in nix's flags yet).
    let flags = if matches!(ext, "xz" | "zst" | "gz") { 4 } else { 0 };
    finit_module(&file, c"", ModuleInitFlags::from_bits_retain(flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    // Depmod's format: each line's list is the transitive closure, users before what they use.
    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/misc/pvpanic/pvpanic-pci.ko: kernel/drivers/misc/pvpanic/pvpanic.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/misc/pvpanic/pvpanic.ko:
";

    #[test]
    fn closure_loads_dependencies_last_to_first_then_the_module() {
        let db = ModuleDb::from_text(Path::new("/m"), DEP, "alias virtio:d00000004v* virtio_rng\n");
        assert_eq!(db.len(), 8);
        assert_eq!(
            db.closure("virtio_net").unwrap(),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
        assert_eq!(db.closure("virtio-rng").unwrap().last(), Some(&"kernel/drivers/char/hw_random/virtio-rng.ko"));
        assert_eq!(db.closure("nosuch"), None);
        assert_eq!(db.modules_for("virtio:d00000004v00001AF4"), ["virtio_rng"]);
    }

    #[test]
    fn loader_loads_each_path_once_and_remembers_failures() {
        let db = ModuleDb::from_text(Path::new("/m"), DEP, "");
        let calls = RefCell::new(Vec::new());
        let mut l = Loader::with(&db, |p: &Path| {
            let p = p.strip_prefix("/m").unwrap().to_string_lossy().into_owned();
            calls.borrow_mut().push(p.clone());
            match p.as_str() {
                "kernel/drivers/virtio/virtio_ring.ko" => Err(Errno::EEXIST),
                "kernel/drivers/misc/pvpanic/pvpanic-pci.ko" => Err(Errno::ENODEV),
                _ => Ok(()),
            }
        });
        assert_eq!(
            l.load("virtio_rng"),
            Outcome::Loaded(vec![
                "kernel/drivers/virtio/virtio.ko".into(),
                "kernel/drivers/char/hw_random/virtio-rng.ko".into()
            ])
        );
        assert_eq!(l.load("virtio_rng"), Outcome::AlreadyLoaded);
        let Outcome::Loaded(paths) = l.load("virtio_net") else { panic!() };
        assert_eq!(paths.len(), 3);
        let failed = Outcome::Failed("kernel/drivers/misc/pvpanic/pvpanic-pci.ko".into(), Errno::ENODEV);
        assert_eq!(l.load("pvpanic_pci"), failed);
        assert_eq!(l.load("pvpanic_pci"), Outcome::FailedBefore);
        assert_eq!(l.load("nosuch"), Outcome::Unknown);
        // virtio_ring once (EEXIST), virtio once, pvpanic and pvpanic-pci once each.
        drop(l);
        let calls = calls.into_inner();
        assert_eq!(calls.iter().filter(|c| c.ends_with("virtio.ko")).count(), 1);
        assert_eq!(calls.iter().filter(|c| c.ends_with("virtio_ring.ko")).count(), 1);
        assert_eq!(calls.iter().filter(|c| c.ends_with("pvpanic-pci.ko")).count(), 1);
    }
}
