//! `berth-init`: Berth's PID 1.
//!
//! As `/init` in the initramfs (stage 1) it loads the storage modules, waits for the root
//! partition and `switch_root`s into it; as PID 1 of the root (stage 2) it will mount the API
//! filesystems and STATE, run the units and supervise, reap and shut down (DESIGN.md §3, §5).
//! Stage 2 is minimal for now: it says it is ready and reaps children forever.
//! It is built as a static `x86_64-unknown-linux-musl` binary so that it needs nothing from the
//! image it boots.
//!
//! PID 1 never panics and never exits: every stage runs under `catch_unwind`, and a fatal error
//! syncs, waits 5 s and reboots (so a failed boot counts against the slot's tries).

mod cmdline;
mod log;
mod modules;
mod root;
mod stage1;
mod stage2;
#[allow(dead_code)] // until stage 2 calls it
mod state;

use std::path::Path;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    if !rustix::process::getpid().is_init() {
        std::process::exit(not_pid1(&args));
    }
    let stage1 = args.first().is_some_and(|a| a == "/init")
        || (Path::new("/sysroot").is_dir() && !Path::new("/etc/os-release").exists());
    let result = std::panic::catch_unwind(|| if stage1 { stage1::run() } else { stage2::run() });
    let message = match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => "stage returned".to_string(),
        Err(_) => "panicked".to_string(),
    };
    fatal(&message)
}

/// Not PID 1: `--version`, or usage.
fn not_pid1(args: &[String]) -> i32 {
    match args.get(1).map(String::as_str) {
        Some("--version") | Some("-V") => {
            log::out(&format!("berth-init {VERSION}\n"));
            0
        }
        Some("--help") | Some("-h") => {
            log::out(&usage());
            0
        }
        _ => {
            log::err(&usage());
            2
        }
    }
}

fn usage() -> String {
    format!(
        "berth-init {VERSION}: Berth's PID 1 (run by the kernel, as /init in the initramfs or as \
         /sbin/init)\nusage: berth-init --version\n"
    )
}

/// Logs `message`, syncs, waits 5 s and reboots; never returns.
pub(crate) fn fatal(message: &str) -> ! {
    log::line(&format!("fatal: {message}; rebooting in 5 s"));
    rustix::fs::sync();
    std::thread::sleep(Duration::from_secs(5));
    rustix::fs::sync();
    let e = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    log::line(&format!("reboot failed: {e:?}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
