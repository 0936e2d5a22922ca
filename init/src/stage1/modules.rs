//! Stage 1's kernel modules, loaded through `berth_devices` (the loader `berth-devd` uses too;
//! the contract is in `builder/src/kernel/mod.rs`): first the modules the initramfs lists in
//! `berth-modules.always` (ext4, overlay: needed whatever the devices), then the modules of the
//! devices present, by `modalias` against the initramfs's `modules.alias`, rescanning until a
//! bus driver reveals no more devices. The initramfs carries every platform's storage and
//! network drivers; only those of this machine's devices are loaded. [`Modules::rescan`] runs
//! again while stage 1 waits for the root (a SCSI host scans its disks after its driver loaded).

use std::path::Path;
use std::time::Instant;

use berth_devices::coldplug::coldplug;
use berth_devices::modules::{ALWAYS_FILE, Loader, ModuleDb, Outcome, name_of};

use crate::sys::log;

/// The load order `modules.dep` text implies (each path once): dependencies from last to
/// first, then the module, line by line.
pub fn load_order(dep: &str) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for line in dep.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        let module = module.trim();
        if module.is_empty() {
            continue;
        }
        for m in deps.split_ascii_whitespace().rev().chain([module]) {
            if seen.insert(m) {
                order.push(m);
            }
        }
    }
    order
}

/// What [`Modules::load`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Modules of the always-list loaded.
    pub always: usize,
    /// Module files loaded for devices (dependencies included).
    pub for_devices: usize,
    /// Devices with a modalias seen.
    pub devices: usize,
    /// Scans of sysfs.
    pub rounds: usize,
    pub failed: usize,
}

/// The initramfs's modules directory, read once.
pub struct Modules {
    db: ModuleDb,
}

impl Modules {
    pub fn open(dir: &Path) -> Modules {
        let db = ModuleDb::open(dir).unwrap_or_else(|e| {
            log::line(&format!("no modules to load: {e}"));
            ModuleDb::default()
        });
        Modules { db }
    }

    pub fn loader(&self) -> Loader<'_> {
        Loader::new(&self.db)
    }

    /// Loads the always-list, then the modules of the devices present.
    pub fn load(&self, loader: &mut Loader<'_>) -> Summary {
        let mut s = Summary::default();
        let always_path = self.db.dir().join(ALWAYS_FILE);
        let always = match std::fs::read_to_string(&always_path) {
            Ok(text) => text,
            Err(e) => {
                log::line(&format!("{}: {e}; loading every module of the initramfs", always_path.display()));
                std::fs::read_to_string(self.db.dir().join("modules.dep"))
                    .map(|dep| load_order(&dep).iter().map(|p| format!("{p}\n")).collect())
                    .unwrap_or_default()
            }
        };
        for path in always.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let started = Instant::now();
            match loader.load_paths(&[path]) {
                Outcome::Loaded(_) => {
                    s.always += 1;
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    log::line(&format!("module {} loaded ({ms:.1} ms)", name_of(path)));
                }
                Outcome::Failed(p, e) => {
                    s.failed += 1;
                    log::line(&format!("module {} ({p}): failed to load: {e}", name_of(path)));
                }
                Outcome::AlreadyLoaded | Outcome::FailedBefore | Outcome::Unknown => {}
            }
        }
        let c = self.rescan(loader);
        s.for_devices = c.loaded;
        s.devices = c.devices;
        s.rounds = c.rounds;
        s.failed += c.failed;
        s
    }

    /// The modules of the devices present (again): what a new device wants is loaded.
    pub fn rescan(&self, loader: &mut Loader<'_>) -> berth_devices::coldplug::Summary {
        coldplug(loader, Path::new("/sys"), &mut |l: &str| log::line(l))
    }
}

/// Loads the module called `module` and its dependencies, as `<dir>/modules.dep` lists them
/// (stage 2: softdog). Loaded already counts as loaded.
pub fn load_one(dir: &Path, module: &str) -> Result<(), String> {
    let db = ModuleDb::open(dir).map_err(|e| e.to_string())?;
    match Loader::new(&db).load(module) {
        Outcome::Loaded(_) | Outcome::AlreadyLoaded => {
            log::line(&format!("module {module} loaded"));
            Ok(())
        }
        Outcome::Unknown => Err(format!("not in {}", dir.join("modules.dep").display())),
        Outcome::Failed(p, e) => Err(format!("loading {p}: {e}")),
        Outcome::FailedBefore => Err("failed before".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_last_to_first_then_the_module_once() {
        let dep = "kernel/a.ko:\nkernel/c.ko: kernel/b.ko kernel/a.ko\nkernel/d.ko: kernel/c.ko kernel/b.ko kernel/a.ko\n\
                   kernel/e.ko: kernel/a.ko\n";
        assert_eq!(load_order(dep), ["kernel/a.ko", "kernel/b.ko", "kernel/c.ko", "kernel/d.ko", "kernel/e.ko"]);
        assert_eq!(name_of("kernel/drivers/block/virtio_blk.ko"), "virtio_blk");
        assert_eq!(name_of("kernel/fs/ext4/ext4.ko.xz"), "ext4");
    }
}
