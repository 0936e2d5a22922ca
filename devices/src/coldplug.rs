//! Coldplug: the modules of the devices present. Every `modalias` file under `/sys/devices` is
//! matched against `modules.alias` and the modules it names are loaded; then again, until a
//! round loads nothing new, because a bus driver (`virtio_pci`, `hv_vmbus`, `xen` front ends)
//! reveals the devices on its bus only once it is loaded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::modules::{Loader, Outcome, name_of};

/// Every `(device directory, modalias)` under `root` (`/sys/devices`), in a stable order.
/// Symbolic links (`subsystem`, `driver`, `device`, ...) are not followed, so each device is
/// seen once.
pub fn modaliases(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.file_name() == "modalias" {
                // Some modalias files are unreadable for devices without one (EINVAL/ENODEV).
                if let Ok(a) = std::fs::read_to_string(e.path()) {
                    let a = a.trim();
                    if !a.is_empty() {
                        out.push((dir.clone(), a.to_owned()));
                    }
                }
            }
        }
    }
    out
}

/// What a [`coldplug`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Scans of `/sys/devices`.
    pub rounds: usize,
    /// Devices with a modalias seen (in the last round).
    pub devices: usize,
    /// Modules loaded (with their dependencies: each path counts).
    pub loaded: usize,
    /// Modules that failed to load (ENODEV included: the device is not one it drives).
    pub failed: usize,
}

/// Loads the modules of the devices under `sys_devices`, rescanning until a round loads
/// nothing new (at most 16 rounds: a bus nests a few levels deep, never that many). `log`
/// gets a line for each module loaded (naming the device) and each failure.
pub fn coldplug(loader: &mut Loader<'_>, sys_devices: &Path, log: &mut dyn FnMut(&str)) -> Summary {
    let mut s = Summary::default();
    let mut seen: HashSet<String> = HashSet::new();
    for _ in 0..16 {
        s.rounds += 1;
        let devices = modaliases(sys_devices);
        s.devices = devices.len();
        let mut progress = false;
        for (dir, alias) in devices {
            // Each modalias once: identical devices want the same modules.
            if !seen.insert(alias.clone()) {
                continue;
            }
            let device = dir.strip_prefix(sys_devices).unwrap_or(&dir).display().to_string();
            match load_alias(loader, &alias, &device, log) {
                (0, f) => s.failed += f,
                (n, f) => {
                    s.loaded += n;
                    s.failed += f;
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    s
}

/// Loads the modules `modalias` matches; returns (paths loaded, modules failed). `device`
/// names the device in the log lines.
pub fn load_alias(loader: &mut Loader<'_>, modalias: &str, device: &str, log: &mut dyn FnMut(&str)) -> (usize, usize) {
    let (mut loaded, mut failed) = (0, 0);
    for module in loader.db().modules_for(modalias) {
        match loader.load(module) {
            Outcome::Loaded(paths) => {
                loaded += paths.len();
                let deps = paths.len() - 1;
                let with = if deps == 0 { String::new() } else { format!(" (and {deps} dependencies)") };
                log(&format!("module {module} loaded{with} for {device} ({modalias})"));
            }
            Outcome::Failed(path, e) if name_of(&path) == module => {
                failed += 1;
                log(&format!("module {module} for {device} ({modalias}): not loaded: {e}"));
            }
            Outcome::Failed(path, e) => {
                failed += 1;
                log(&format!("module {module} for {device} ({modalias}): dependency {path}: {e}"));
            }
            Outcome::AlreadyLoaded | Outcome::Unknown => {}
        }
    }
    (loaded, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::ModuleDb;
    use nix::errno::Errno;

    #[test]
    fn rounds_until_a_bus_driver_has_revealed_its_devices() {
        let sys = tempfile::tempdir().unwrap();
        let d = sys.path();
        let put = |rel: &str, alias: &str| {
            std::fs::create_dir_all(d.join(rel)).unwrap();
            std::fs::write(d.join(rel).join("modalias"), format!("{alias}\n")).unwrap();
        };
        put("pci0000:00/0000:00:02.0", "pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00");
        put("pci0000:00/0000:00:03.0", "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00");
        // A symlink loop, as sysfs has everywhere: not followed.
        std::os::unix::fs::symlink("..", d.join("pci0000:00/0000:00:02.0/subsystem")).unwrap();
        let db = ModuleDb::from_text(
            Path::new("/m"),
            "virtio_pci.ko:\nvirtio_rng.ko:\n",
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000004v* virtio_rng\n",
        );
        let root = d.to_path_buf();
        let mut loader = Loader::with(&db, |p: &Path| {
            // Loading the bus driver makes its device appear, as in the kernel.
            if p.ends_with("virtio_pci.ko") {
                let v = root.join("pci0000:00/0000:00:02.0/virtio0");
                std::fs::create_dir_all(&v).unwrap();
                std::fs::write(v.join("modalias"), "virtio:d00000004v00001AF4\n").unwrap();
            }
            Ok::<(), Errno>(())
        });
        let mut lines = Vec::new();
        let s = coldplug(&mut loader, d, &mut |l: &str| lines.push(l.to_owned()));
        assert_eq!(s, Summary { rounds: 3, devices: 3, loaded: 2, failed: 0 });
        assert_eq!(
            lines,
            [
                "module virtio_pci loaded for pci0000:00/0000:00:02.0 (pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00)",
                "module virtio_rng loaded for pci0000:00/0000:00:02.0/virtio0 (virtio:d00000004v00001AF4)",
            ]
        );
    }
}
