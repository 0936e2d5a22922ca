//! Stage 1, `/init` in the initramfs: API filesystems, modules, root by PARTUUID, switch_root.

// Stage 2 loads softdog with it too (stage2/watchdog.rs).
pub(crate) mod modules;
mod root;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_slot::gpt::Guid;
use nix::mount::{MsFlags, mount};

use crate::VERSION;
use crate::sys::cmdline::Cmdline;
use crate::sys::log;
use crate::sys::mounts::{mount_api, mount_move};

const POLL: Duration = Duration::from_millis(100);

pub fn run() -> Result<(), String> {
    log::line(&format!("berth-init {VERSION}: stage 1 (initramfs)"));
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_api("proc", "/proc", "proc", nodev, None)?;
    mount_api("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_api("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;

    let cmdline = Cmdline::read()?;
    let slot = cmdline.slot.clone().unwrap_or_else(|| "?".into());
    let Some(partuuid) = cmdline.partuuid.clone() else {
        return Err(match cmdline.other_root {
            Some(r) => format!("root={r} is not supported: Berth boots root=PARTUUID=<guid>"),
            None => "no root=PARTUUID=<guid> on the kernel command line".into(),
        });
    };
    let guid = Guid::parse(&partuuid).ok_or_else(|| format!("root=PARTUUID={partuuid}: not a GUID"))?;
    log::line(&format!("root=PARTUUID={partuuid} berth.slot={slot}"));

    let kver = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?.release().to_string_lossy().into_owned();
    let started = Instant::now();
    let mods = modules::Modules::open(&Path::new("/usr/lib/modules").join(&kver));
    let mut loader = mods.loader();
    let s = mods.load(&mut loader);
    log::line(&format!(
        "modules for {kver}: {} always, {} for the {} devices present ({} scans), {} failed ({:.0} ms)",
        s.always,
        s.for_devices,
        s.devices,
        s.rounds,
        s.failed,
        started.elapsed().as_secs_f64() * 1000.0
    ));

    // A disk may appear after its controller's driver loaded (SCSI scans asynchronously): the
    // devices are scanned again while waiting, so its modules (sd_mod) load then.
    let device = wait_for_root(&guid, &partuuid, cmdline.root_wait, &mut || {
        mods.rescan(&mut loader);
    })?;
    mount(Some(&device), "/sysroot", Some("ext4"), MsFlags::MS_RDONLY, None::<&str>)
        .map_err(|e| format!("mounting {} (ext4, read-only) on /sysroot: {e}", device.display()))?;
    log::line(&format!("mounted {} read-only on /sysroot", device.display()));
    switch_root(&slot)
}

/// Polls for the partition every 100 ms until `limit`.
fn wait_for_root(
    guid: &Guid,
    partuuid: &str,
    limit: Duration,
    rescan: &mut dyn FnMut(),
) -> Result<std::path::PathBuf, String> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let (found, disks) = root::find(guid);
        if let Some(node) = found {
            log::line(&format!(
                "root found: {} (PARTUUID={partuuid}) after {:.0} ms",
                node.display(),
                started.elapsed().as_secs_f64() * 1000.0
            ));
            return Ok(node);
        }
        if started.elapsed() >= limit {
            let seen: Vec<String> = disks
                .iter()
                .map(|d| {
                    let mut s = format!("{} ({} bytes", d.name, d.bytes);
                    if let Some(p) = &d.problem {
                        s += &format!(", {p}");
                    }
                    s + ")"
                })
                .collect();
            let seen = if seen.is_empty() { "none".to_string() } else { seen.join(", ") };
            return Err(format!(
                "root partition PARTUUID={partuuid} not found after {} s; block devices: {seen}",
                limit.as_secs()
            ));
        }
        if !announced {
            log::line(&format!("waiting up to {} s for PARTUUID={partuuid}", limit.as_secs()));
            announced = true;
        }
        std::thread::sleep(POLL);
        rescan();
    }
}

/// Moves /dev, /proc and /sys into /sysroot, makes it `/` and execs `/sbin/init`.
fn switch_root(slot: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    for api in ["/dev", "/proc", "/sys"] {
        let to = format!("/sysroot{api}");
        if !Path::new(&to).is_dir() {
            // The root is read-only: without a mount point the API filesystem is left behind.
            missing.push(api);
            crate::sys::mounts::detach(api);
        } else if let Err(e) = mount_move(api, &to) {
            log::line(&format!("could not move {api} to {to}: {e}; detaching it"));
            crate::sys::mounts::detach(api);
        }
    }
    if !missing.is_empty() {
        log::line(&format!("warning: the root has no mount point for {}; left behind", missing.join(", ")));
    }
    std::env::set_current_dir("/sysroot").map_err(|e| format!("chdir /sysroot: {e}"))?;
    mount_move(".", "/").map_err(|e| format!("moving /sysroot to /: {e}"))?;
    std::os::unix::fs::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    log::line("switched root; executing /sbin/init (initramfs contents not freed)");
    // The slot also travels in the environment: stage 2 may have no /proc to read it from.
    let e = std::process::Command::new("/sbin/init").arg0("/sbin/init").env("BERTH_SLOT", slot).exec();
    Err(format!("executing /sbin/init: {e}"))
}
