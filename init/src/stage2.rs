//! Stage 2, PID 1 of the root (minimal for now): say it is ready, then reap children forever.

use std::time::Duration;

use rustix::mount::{MountFlags, mount};
use rustix::process::{WaitOptions, waitpid};

use crate::cmdline::Cmdline;
use crate::{VERSION, log};

pub fn run() -> Result<(), String> {
    log::line(&format!("berth-init {VERSION}: stage 2"));
    if std::path::Path::new("/proc").is_dir() && !std::path::Path::new("/proc/self").exists() {
        let flags = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
        if let Err(e) = mount("proc", "/proc", "proc", flags, None) {
            log::line(&format!("mounting proc on /proc: {e}"));
        }
    }
    let slot = match Cmdline::read() {
        Ok(c) => c.slot,
        Err(e) => {
            log::line(&format!("{e}; taking the slot from stage 1"));
            None
        }
    };
    let slot = slot.or_else(|| std::env::var("BERTH_SLOT").ok()).unwrap_or_else(|| "?".into());
    log::line(&format!("stage 2 ready (slot {slot})"));
    loop {
        match waitpid(None, WaitOptions::empty()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            // ECHILD (nothing to reap) or anything else: don't spin.
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
