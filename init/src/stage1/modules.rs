//! Loading the initramfs's kernel modules in `modules.dep` order with `finit_module(2)`.
//!
//! Each `modules.dep` line is `path.ko: dep1.ko dep2.ko …` (paths relative to the modules
//! directory, the dependency list being the transitive closure). For each line in order, its
//! dependencies are loaded from last to first, then the module itself, skipping what is loaded
//! already (libkmod's order: it prepends each dependency while parsing). EEXIST counts as loaded.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use crate::sys::log;

/// The load order `modules.dep` text implies (each path once).
pub fn load_order(dep: &str) -> Vec<&str> {
    let mut seen = HashSet::new();
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

/// `kernel/drivers/block/virtio_blk.ko` → `virtio_blk`.
fn name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file)
}

/// What [`load_all`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub loaded: usize,
    /// EEXIST: loaded already (or built in).
    pub present: usize,
    /// ENODEV (no such hardware here), or a dependency of it was not loaded.
    pub not_here: usize,
    pub failed: usize,
}

/// Loads every module `<dir>/modules.dep` names.
pub fn load_all(dir: &Path) -> Summary {
    let mut s = Summary::default();
    let dep_path = dir.join("modules.dep");
    let dep = match std::fs::read_to_string(&dep_path) {
        Ok(d) => d,
        Err(e) => {
            log::line(&format!("no modules to load: {}: {e}", dep_path.display()));
            return s;
        }
    };
    let deps: HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_ascii_whitespace().collect()))
        .collect();
    // Modules that are not loaded and will not be: their dependents are skipped.
    let mut unavailable: HashSet<&str> = HashSet::new();
    for path in load_order(&dep) {
        if let Some(missing) = deps.get(path).and_then(|d| d.iter().find(|d| unavailable.contains(*d))) {
            unavailable.insert(path);
            s.not_here += 1;
            log::line(&format!("module {} skipped: needs {}, which is not loaded", name(path), name(missing)));
            continue;
        }
        let started = Instant::now();
        match load(&dir.join(path)) {
            Ok(()) => {
                s.loaded += 1;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                log::line(&format!("module {} loaded ({ms:.1} ms)", name(path)));
            }
            Err(Errno::EEXIST) => s.present += 1,
            Err(Errno::ENODEV) => {
                unavailable.insert(path);
                s.not_here += 1;
                log::line(&format!("module {} not loaded: no such device here", name(path)));
            }
            Err(e) => {
                unavailable.insert(path);
                s.failed += 1;
                log::line(&format!("module {} ({path}): failed to load: {e}", name(path)));
            }
        }
    }
    s
}

/// Loads the module called `module` and its dependencies, as `<dir>/modules.dep` lists them
/// (stage 2: softdog). Loaded already counts as loaded.
pub fn load_one(dir: &Path, module: &str) -> Result<(), String> {
    let dep_path = dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(|e| format!("{}: {e}", dep_path.display()))?;
    let (path, deps) = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d))
        .find(|(m, _)| name(m) == module)
        .ok_or_else(|| format!("not in {}", dep_path.display()))?;
    for p in deps.split_ascii_whitespace().rev().chain([path]) {
        match load(&dir.join(p)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading {p}: {e}")),
        }
    }
    log::line(&format!("module {module} loaded"));
    Ok(())
}

fn load(path: &Path) -> Result<(), Errno> {
    let file = std::fs::File::open(path).map_err(|e| e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO))?;
    // MODULE_INIT_COMPRESSED_FILE: let the kernel decompress (the builder ships them
    // uncompressed, so this is only a fallback).
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let flags = if matches!(ext, "xz" | "zst" | "gz") { 4 } else { 0 };
    finit_module(&file, c"", ModuleInitFlags::from_bits_retain(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_last_to_first_then_the_module_once() {
        let dep = "kernel/a.ko:\nkernel/c.ko: kernel/b.ko kernel/a.ko\nkernel/d.ko: kernel/c.ko kernel/b.ko kernel/a.ko\n\
                   kernel/e.ko: kernel/a.ko\n";
        assert_eq!(load_order(dep), ["kernel/a.ko", "kernel/b.ko", "kernel/c.ko", "kernel/d.ko", "kernel/e.ko"]);
        assert_eq!(name("kernel/drivers/block/virtio_blk.ko"), "virtio_blk");
        assert_eq!(name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
    }
}
