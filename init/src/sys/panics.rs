//! PID 1's panic policy. PID 1 never unwinds out of `main`: a panic is caught (`main.rs`, and
//! the stage 2 main loop), and
//! - the hook installed here logs where it happened to the console and to `/dev/kmsg`, so
//!   the location survives in the kernel's log even when the console is not kept;
//! - a panic in the stage 2 main loop goes through the ordered shutdown (units stopped in
//!   order, processes signalled, filesystems unmounted), not `fatal()`'s bare reboot;
//! - repeated panic reboots are rate-limited: `/var/lib/berth/init-panics` (on STATE) counts
//!   the panic reboots in a row; the n-th (n ≥ 2) waits 15 s × 2^(n−2), at most 10 minutes,
//!   before it reboots, feeding the watchdog meanwhile, so a deterministic panic does not turn
//!   into a tight reboot loop. A boot that is up [`SETTLED`] with its main loop running removes
//!   the file. Without STATE (volatile `/var`) nothing is counted and nothing waits.
//!
//! A panic before the main loop (stage 1, stage 2's setup) still goes to `fatal()` (sync, 5 s,
//! reboot): no unit runs yet, and the watchdog cannot be fed from there, so it is not delayed.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sys::log;

/// Where the panic reboots in a row are counted.
pub const RECORD: &str = "/var/lib/berth/init-panics";
/// A boot whose main loop has run this long without a panic clears the count.
pub const SETTLED: Duration = Duration::from_secs(600);
/// The longest wait before a panic reboot.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// The line the hook logs: where, and what.
pub fn describe(location: Option<&std::panic::Location<'_>>, payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    match location {
        Some(l) => format!("panic at {}:{}:{}: {what}", l.file(), l.line(), l.column()),
        None => format!("panic (no location): {what}"),
    }
}

/// Installs the hook: the location to the console and `/dev/kmsg`.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let line = describe(info.location(), info.payload());
        log::line(&line);
        // Priority 2 (critical), as the kernel's own panics are logged at that level or above.
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = kmsg.write_all(format!("<2>berth-init[1]: {line}\n").as_bytes());
        }
    }));
}

/// The wait before the `n`-th panic reboot in a row (n counted from 1).
pub fn delay(n: u32) -> Duration {
    if n < 2 {
        return Duration::ZERO;
    }
    Duration::from_secs(15).saturating_mul(1u32 << (n - 2).min(16)).min(MAX_DELAY)
}

/// Counts one more panic reboot in `record` (temporary file and rename); returns the count,
/// or 1 when it cannot be kept.
pub fn count(record: &Path) -> u32 {
    let n = std::fs::read_to_string(record).ok().and_then(|t| t.trim().parse::<u32>().ok()).unwrap_or(0);
    let n = n.saturating_add(1);
    let tmp = record.with_extension("tmp");
    let written = std::fs::write(&tmp, format!("{n}\n")).and_then(|()| std::fs::rename(&tmp, record));
    match written {
        Ok(()) => n,
        Err(e) => {
            log::line(&format!("{}: {e}; panic reboots are not counted", record.display()));
            1
        }
    }
}

/// Before a panic reboot: counts it and waits as [`delay`] says, calling `feed` (the
/// watchdog) every few seconds.
pub fn before_reboot(feed: &mut dyn FnMut()) {
    let n = count(Path::new(RECORD));
    let wait = delay(n);
    if wait.is_zero() {
        return;
    }
    log::line(&format!(
        "panic reboot {n} in a row: waiting {} s before rebooting ({RECORD} counts them; a boot that runs {} min clears it)",
        wait.as_secs(),
        SETTLED.as_secs() / 60
    ));
    let step = Duration::from_secs(5);
    let mut waited = Duration::ZERO;
    while waited < wait {
        feed();
        std::thread::sleep(step.min(wait - waited));
        waited += step;
    }
    feed();
}

static SETTLED_DONE: AtomicBool = AtomicBool::new(false);

/// Called from the main loop: once the machine has been up [`SETTLED`], the count goes.
pub fn settle() {
    if SETTLED_DONE.load(Ordering::Relaxed) {
        return;
    }
    let up = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(Duration::ZERO, |t| Duration::new(t.tv_sec().max(0) as u64, 0));
    if up < SETTLED {
        return;
    }
    SETTLED_DONE.store(true, Ordering::Relaxed);
    match std::fs::remove_file(RECORD) {
        Ok(()) => log::line(&format!("{RECORD}: cleared ({} min without a panic)", SETTLED.as_secs() / 60)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::line(&format!("{RECORD}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l5_panic_reboots_are_rate_limited() {
        assert_eq!(delay(1), Duration::ZERO, "the first reboots at once");
        assert_eq!(delay(2), Duration::from_secs(15));
        assert_eq!(delay(3), Duration::from_secs(30));
        assert_eq!(delay(7), Duration::from_secs(480));
        assert_eq!(delay(8), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);

        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("init-panics");
        assert_eq!(count(&record), 1);
        assert_eq!(count(&record), 2);
        assert_eq!(std::fs::read_to_string(&record).unwrap(), "2\n");
        // Garbage counts as none; a record that cannot be written counts 1.
        std::fs::write(&record, "x").unwrap();
        assert_eq!(count(&record), 1);
        assert_eq!(count(&dir.path().join("missing/init-panics")), 1);
    }

    #[test]
    fn l5_the_panic_line_names_the_location() {
        let here = std::panic::Location::caller();
        let line = describe(Some(here), &"boom");
        assert_eq!(line, format!("panic at {}:{}:{}: boom", here.file(), here.line(), here.column()));
        assert!(line.starts_with("panic at init/src/sys/panics.rs:"), "{line}");
        assert_eq!(describe(None, &String::from("owned")), "panic (no location): owned");
        assert_eq!(describe(None, &5u8), "panic (no location): (no message)");
    }
}
