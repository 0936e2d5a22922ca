//! Console logging: `[  seconds.micros] berth-init[1]: message`, CLOCK_MONOTONIC like the
//! kernel's own lines. Write errors are ignored (PID 1 must not die because stderr is closed).

use std::io::Write;

use nix::time::{ClockId, clock_gettime};

/// One log line on stderr (the console).
pub fn line(message: &str) {
    let (sec, nsec) = match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec(), t.tv_nsec()),
        Err(_) => (0, 0),
    };
    err(&format!("[{sec:5}.{:06}] berth-init[1]: {message}\n", nsec / 1000));
}

pub fn err(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

pub fn out(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}
