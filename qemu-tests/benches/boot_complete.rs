//! The service manager's cost at boot on the `container-host` image (TCG, one vCPU): PID 1's
//! resident memory once `boot-complete.target` is reached (read from `/proc/1/status` through
//! the guest agent), and the time from stage 2's start to that target (both console lines carry
//! the kernel's timestamps).
//!
//! `cargo bench -p berth-qemu-tests --bench boot_complete`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use berth_qemu_tests::timing::kernel_stamp;
use common::host::{BOOT_COMPLETE, boot_host, first_line};

/// PID 1 should stay under this at boot-complete.
const RSS_GOAL_KIB: u64 = 4096;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and gets no boot.
    if !std::env::args().any(|a| a == "--bench") {
        println!("boot_complete: run with `cargo bench -p berth-qemu-tests --bench boot_complete`");
        return;
    }
    let mut h = boot_host(None, false);
    h.wait_boot_complete();
    let mut a = h.agent();
    let status = a.read("/proc/1/status").unwrap_or_else(|e| h.fail(e));
    let rss_kib: u64 = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| h.fail(format!("no VmRSS in /proc/1/status:\n{status}")));

    // What PID 1 holds open (a packet socket here would mean DHCP runs inside PID 1).
    let fds = a.exec(&["ls", "-l", "/proc/1/fd"], Duration::from_secs(30)).unwrap_or_else(|e| h.fail(e));
    println!("PID 1's open files at boot-complete (ls -l /proc/1/fd):\n{}", fds.stdout.trim_end());

    let timeline = h.machine.timeline();
    let line = |needles: &[&str]| {
        first_line(&timeline, needles).unwrap_or_else(|| h.fail(format!("no console line with {needles:?}")))
    };
    let (stage2_at, stage2) = line(&["berth-init[1]: berth-init ", ": stage 2"]);
    let (complete_at, complete) = line(&[BOOT_COMPLETE]);
    let (took, clock) = match (kernel_stamp(&stage2), kernel_stamp(&complete)) {
        (Some(s), Some(c)) if c >= s => (c - s, "kernel timestamps"),
        // Without stamps on both, the host's arrival times (to its 50 ms polling).
        _ => (complete_at.saturating_sub(stage2_at), "console arrival times"),
    };
    let verdict = if rss_kib < RSS_GOAL_KIB { "within" } else { "OVER" };
    println!("PID 1 resident at boot-complete: {rss_kib} KiB (goal < {RSS_GOAL_KIB} KiB: {verdict})");
    // The manager's own count, from its start of stage 2 (a cross-check of the above).
    let own =
        complete.split_once(" ms after stage 2 began").and_then(|(head, _)| head.rsplit_once('(')).map(|(_, n)| n);
    println!(
        "stage 2 start to boot-complete: {} ms (from {clock}; berth-init says {} ms)",
        took.as_millis(),
        own.unwrap_or("?")
    );
    println!("power-on to boot-complete: {:.1} s (host clock)", complete_at.as_secs_f64());
    a.spawn(&["berthctl", "poweroff"]).unwrap_or_else(|e| h.fail(e));
    drop(a);
    let _ = h.machine.wait_exit(Duration::from_secs(60));
}
