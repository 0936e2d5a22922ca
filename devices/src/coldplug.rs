//! Coldplug: the modules of the devices present. Every device's `modalias` in sysfs is
//! matched against `modules.alias` and the modules it names are loaded; then again, until a
//! round loads nothing new, because a bus driver (`virtio_pci`, `hv_vmbus`, `xen` front ends)
//! reveals the devices on its bus only once it is loaded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::modules::{Loader, Outcome, name_of};

/// Every `(device, modalias)` of the devices under `sys` (`/sys`): the devices of each bus
/// (`bus/*/devices/*`) and of each class (`class/*/*`: input devices have theirs there), and
/// the CPUs' (`devices/system/cpu/modalias`), in a stable order. The device is named by that
/// path relative to `sys`. This lists what a walk of all of `/sys/devices` would find with a
/// few dozen directory reads instead of thousands (a walk costs some 200 ms under emulation).
pub fn modaliases(sys: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut read = |dev: PathBuf| {
        // Some modalias files are unreadable for devices without one (EINVAL/ENODEV).
        if let Ok(a) = std::fs::read_to_string(dev.join("modalias")) {
            let a = a.trim();
            if !a.is_empty() {
                out.push((dev.strip_prefix(sys).unwrap_or(&dev).to_path_buf(), a.to_owned()));
            }
        }
    };
    let sorted = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
        v.sort();
        v
    };
    for bus in sorted(&sys.join("bus")) {
        for dev in sorted(&bus.join("devices")) {
            read(dev);
        }
    }
    for class in sorted(&sys.join("class")) {
        for dev in sorted(&class) {
            read(dev);
        }
    }
    read(sys.join("devices/system/cpu"));
    out
}

/// What a [`coldplug`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Scans of sysfs.
    pub rounds: usize,
    /// Devices with a modalias seen (in the last round).
    pub devices: usize,
    /// Modules loaded (with their dependencies: each path counts).
    pub loaded: usize,
    /// Modules that failed to load (ENODEV included: the device is not one it drives).
    pub failed: usize,
}

/// Loads the modules of the devices under `sys` (`/sys`, see [`modaliases`]), rescanning
/// until a round loads nothing new (at most 16 rounds: a bus nests a few levels deep, never that many). `log`
/// gets a line for each module loaded (naming the device) and each failure.
pub fn coldplug(loader: &mut Loader<'_>, sys: &Path, log: &mut dyn FnMut(&str)) -> Summary {
    let mut s = Summary::default();
    let mut seen: HashSet<String> = HashSet::new();
    for _ in 0..16 {
        s.rounds += 1;
        let devices = modaliases(sys);
        s.devices = devices.len();
        let mut progress = false;
        for (dir, alias) in devices {
            // Each modalias once: identical devices want the same modules.
            if !seen.insert(alias.clone()) {
                continue;
            }
            let device = dir.display().to_string();
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
                log(&format!("module {module} ({path}) for {device} ({modalias}): not loaded: {e}"));
            }
            Outcome::Failed(path, e) => {
                failed += 1;
                log(&format!("module {module} for {device} ({modalias}): not loaded: its dependency {path}: {e}"));
            }
            Outcome::AlreadyLoaded | Outcome::FailedBefore | Outcome::Unknown => {}
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
        let d = sys.path().to_path_buf();
        // sysfs's layout: devices under devices/, linked from bus/*/devices and class/*.
        let put = |dev: &str, link: &str, alias: &str| {
            std::fs::create_dir_all(d.join("devices").join(dev)).unwrap();
            std::fs::write(d.join("devices").join(dev).join("modalias"), format!("{alias}\n")).unwrap();
            let link = d.join(link);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            let depth = link.strip_prefix(&d).unwrap().components().count() - 1;
            std::os::unix::fs::symlink(format!("{}devices/{dev}", "../".repeat(depth)), link).unwrap();
        };
        put(
            "pci0000:00/0000:00:02.0",
            "bus/pci/devices/0000:00:02.0",
            "pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00",
        );
        put(
            "pci0000:00/0000:00:03.0",
            "bus/pci/devices/0000:00:03.0",
            "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00",
        );
        put(
            "LNXSYSTM:00/LNXPWRBN:00/input/input0",
            "class/input/input0",
            "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw",
        );
        std::fs::create_dir_all(d.join("devices/system/cpu")).unwrap();
        std::fs::write(d.join("devices/system/cpu/modalias"), "cpu:type:x86,ven0000fam0006mod003F:feature:,0094\n")
            .unwrap();
        let db = ModuleDb::from_text(
            Path::new("/m"),
            "virtio_pci.ko:\nvirtio_rng.ko:\nevdev.ko:\ncrc32c_intel.ko:\n",
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000004v* virtio_rng\n\
             alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev\nalias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n",
        );
        let root = d.clone();
        let mut loader = Loader::with(&db, |p: &Path| {
            // Loading the bus driver makes its device appear, as in the kernel.
            if p.ends_with("virtio_pci.ko") {
                let v = root.join("devices/pci0000:00/0000:00:02.0/virtio0");
                std::fs::create_dir_all(&v).unwrap();
                std::fs::write(v.join("modalias"), "virtio:d00000004v00001AF4\n").unwrap();
                std::fs::create_dir_all(root.join("bus/virtio/devices")).unwrap();
                std::os::unix::fs::symlink(
                    "../../../devices/pci0000:00/0000:00:02.0/virtio0",
                    root.join("bus/virtio/devices/virtio0"),
                )
                .unwrap();
            }
            if p.ends_with("evdev.ko") { Err(Errno::ENODEV) } else { Ok(()) }
        });
        let mut lines = Vec::new();
        let s = coldplug(&mut loader, &d, &mut |l: &str| lines.push(l.to_owned()));
        assert_eq!(s, Summary { rounds: 3, devices: 5, loaded: 3, failed: 1 });
        assert_eq!(
            lines,
            [
                "module virtio_pci loaded for bus/pci/devices/0000:00:02.0 \
                 (pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00)",
                "module evdev (evdev.ko) for class/input/input0 (input:b0019v0000p0001e0000-e0,1,k74,ramlsfw): \
                 not loaded: ENODEV: No such device",
                "module crc32c_intel loaded for devices/system/cpu (cpu:type:x86,ven0000fam0006mod003F:feature:,0094)",
                "module virtio_rng loaded for bus/virtio/devices/virtio0 (virtio:d00000004v00001AF4)",
            ]
        );
        // Again (stage 1 rescans while it waits for the root): nothing new, no failure repeated.
        lines.clear();
        let s = coldplug(&mut loader, &d, &mut |l: &str| lines.push(l.to_owned()));
        assert_eq!(s, Summary { rounds: 1, devices: 5, loaded: 0, failed: 0 });
        assert!(lines.is_empty(), "{lines:?}");
    }
}
