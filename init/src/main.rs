//! `berth-init`: Berth's PID 1.
//!
//! As `/init` in the initramfs (stage 1) it loads the storage modules, waits for the root
//! partition and `switch_root`s into it; as PID 1 of the root (stage 2) it mounts the API
//! filesystems and STATE, sets up the machine's identity, supervises, reaps and shuts down in
//! order and runs the units' service manager (docs/design.md §3, §5). Started as `berthctl` it is the control tool;
//! as `reboot`, `poweroff`, `halt` or `shutdown`, those commands (`berthctl::power`).
//! It is built as a static `x86_64-unknown-linux-musl` binary so that it needs nothing from the
//! image it boots.
//!
//! PID 1 never panics and never exits: every stage runs under `catch_unwind`, and a fatal error
//! syncs, waits 5 s and reboots (so a failed boot counts against the slot's tries). A panic is
//! logged with its location (console and `/dev/kmsg`); one in stage 2's main loop goes through
//! the ordered shutdown, rate-limited when it repeats (`panics`).

mod berthctl;
mod control;
mod manager;
mod stage1;
mod stage2;
mod sys;

use std::path::Path;
use std::time::Duration;

use sys::{log, panics};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    // One binary, several names: `berthctl`, `reboot`, `poweroff`, `halt` and `shutdown` are
    // links to berth-init.
    let name = args.first().and_then(|a| Path::new(a).file_name()).and_then(|n| n.to_str()).unwrap_or("");
    if name == "berthctl" {
        std::process::exit(berthctl::main(&args[1..]));
    }
    if berthctl::power::NAMES.contains(&name) {
        std::process::exit(berthctl::power::main(name, &args[1..]));
    }
    if nix::unistd::getpid().as_raw() != 1 {
        std::process::exit(not_pid1(&args));
    }
    let stage1 = args.first().is_some_and(|a| a == "/init")
        || (Path::new("/sysroot").is_dir() && !Path::new("/etc/os-release").exists());
    panics::install_hook();
    let result = std::panic::catch_unwind(|| if stage1 { stage1::run() } else { stage2::run() });
    let message = match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => "stage returned".to_string(),
        // Before the main loop (which shuts down in order itself): the hook logged where.
        Err(_) => "panicked (the line above says where)".to_string(),
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
    nix::unistd::sync();
    std::thread::sleep(Duration::from_secs(5));
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log::line(&format!("reboot failed: {e}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
