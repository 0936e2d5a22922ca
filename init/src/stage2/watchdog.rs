//! The system watchdog: PID 1 arms `/dev/watchdog` early in stage 2 and feeds it from its main
//! loop, so a PID 1 that hangs resets the machine (on a slot on trial that costs a try, as a
//! hung boot should). Without a hardware watchdog (the Debian cloud kernel has none), the
//! `softdog` module is loaded from the root's modules. `berth.watchdog=SECONDS` on the kernel
//! command line sets the timeout; 0 leaves the watchdog alone.
//!
//! The ordered shutdown feeds it while it waits for processes and once more right before
//! `reboot(2)`, so a slow but progressing shutdown is not cut.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::libc::c_int;

use crate::sys::log;

/// The default timeout (`berth.watchdog=` changes it).
pub const DEFAULT_TIMEOUT: u32 = 60;
/// The main loop wakes at least once a second: shorter timeouts are raised to this.
pub const MIN_TIMEOUT: u32 = 5;
const DEVICE: &str = "/dev/watchdog";

/// `struct watchdog_info` (linux/watchdog.h).
#[repr(C)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_read!(wdioc_setoptions, b'W', 4, c_int);
/// `WDIOS_DISABLECARD`: stop the timer.
const WDIOS_DISABLECARD: c_int = 1;
nix::ioctl_read!(wdioc_keepalive, b'W', 5, c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, c_int);

/// An armed watchdog, or none.
#[derive(Default)]
pub struct Watchdog {
    device: Option<File>,
    /// Feed at least this often (a third of the timeout).
    every: Duration,
    fed: Option<Instant>,
}

impl Watchdog {
    /// Opens and arms the watchdog with `timeout` seconds (0: none), loading softdog first when
    /// there is no device. Logs one line either way.
    pub fn arm(timeout: u32) -> Watchdog {
        if timeout == 0 {
            log::line("watchdog: off (berth.watchdog=0)");
            return Watchdog::default();
        }
        let timeout = timeout.max(MIN_TIMEOUT);
        let mut loaded = false;
        if !Path::new(DEVICE).exists() {
            match load_softdog() {
                Ok(()) => loaded = true,
                Err(e) => {
                    log::line(&format!("watchdog: none (no {DEVICE}, and softdog: {e})"));
                    return Watchdog::default();
                }
            }
        }
        match open(timeout) {
            Ok((device, identity, actual)) => {
                let name = if loaded || identity == "Software Watchdog" { "softdog".to_string() } else { identity };
                let adjusted =
                    if actual == timeout { String::new() } else { format!(" (the driver's; {timeout}s asked)") };
                log::line(&format!("watchdog: {DEVICE} ({name}) armed, timeout {actual}s{adjusted}"));
                let mut w = Watchdog { device: Some(device), every: feed_interval(actual), fed: None };
                w.feed();
                w
            }
            Err(e) => {
                log::line(&format!("watchdog: {e}; not armed"));
                Watchdog::default()
            }
        }
    }

    /// Feeds it now.
    pub fn feed(&mut self) {
        let Some(device) = &mut self.device else { return };
        let mut dummy: c_int = 0;
        // SAFETY: an open watchdog device; the argument is an int the kernel ignores.
        let ok = unsafe { wdioc_keepalive(device.as_raw_fd(), &mut dummy) }.is_ok();
        if !ok {
            // Any write feeds it too.
            let _ = device.write_all(b"\0");
        }
        self.fed = Some(Instant::now());
    }

    /// Stops the timer for good (a halt: nobody feeds it any more): `WDIOS_DISABLECARD`, then the
    /// magic close (`V`) before closing the device. Says what happened, for the log. A driver
    /// built with `nowayout` refuses both, and resets the halted machine when the timeout passes.
    pub fn disarm(&mut self) -> String {
        let Some(mut device) = self.device.take() else { return "not armed".into() };
        let mut option = WDIOS_DISABLECARD;
        // SAFETY: an open watchdog device; the argument is the int the ioctl reads.
        let stopped = unsafe { wdioc_setoptions(device.as_raw_fd(), &mut option) };
        let closed = device.write_all(b"V");
        drop(device);
        match (stopped, closed) {
            (Ok(_), _) | (_, Ok(())) => "disarmed".into(),
            (Err(e), Err(w)) => format!("not disarmed (WDIOS_DISABLECARD: {e}; magic close: {w})"),
        }
    }

    /// Feeds it if a third of the timeout has passed since the last time.
    pub fn feed_if_due(&mut self) {
        if self.device.is_some() && self.fed.is_none_or(|t| t.elapsed() >= self.every) {
            self.feed();
        }
    }
}

/// A third of the timeout.
pub fn feed_interval(timeout_secs: u32) -> Duration {
    Duration::from_millis(u64::from(timeout_secs) * 1000 / 3)
}

/// Opens the device, sets the timeout; returns it, its identity and the timeout in force.
fn open(timeout: u32) -> Result<(File, String, u32), String> {
    let device = File::options().write(true).open(DEVICE).map_err(|e| format!("opening {DEVICE}: {e}"))?;
    let fd = device.as_raw_fd();
    let mut info = WatchdogInfo { options: 0, firmware_version: 0, identity: [0; 32] };
    // SAFETY: `info` is a `struct watchdog_info` the kernel fills.
    let identity = match unsafe { wdioc_getsupport(fd, &mut info) } {
        Ok(_) => {
            let end = info.identity.iter().position(|&b| b == 0).unwrap_or(info.identity.len());
            String::from_utf8_lossy(&info.identity[..end]).trim().to_string()
        }
        Err(_) => "unknown".to_string(),
    };
    let mut t = c_int::try_from(timeout).unwrap_or(c_int::MAX);
    // SAFETY: an int in, the timeout in force out.
    match unsafe { wdioc_settimeout(fd, &mut t) } {
        Ok(_) => Ok((device, identity, u32::try_from(t).unwrap_or(timeout))),
        Err(e) => {
            // Armed by the open already, with the driver's default: feed it as if it were ours
            // (a third of the asked timeout may be too slow only if the default is shorter).
            log::line(&format!("watchdog: setting the timeout to {timeout}s: {e}"));
            Ok((device, identity, timeout))
        }
    }
}

/// Loads softdog from the root's modules and waits (briefly) for its device node.
fn load_softdog() -> Result<(), String> {
    let release = nix::sys::utsname::uname().map_err(|e| format!("uname: {e}"))?;
    let dir = Path::new("/usr/lib/modules").join(release.release());
    crate::stage1::modules::load_one(&dir, "softdog")?;
    let until = Instant::now() + Duration::from_secs(2);
    while !Path::new(DEVICE).exists() {
        if Instant::now() >= until {
            return Err(format!("loaded, but {DEVICE} did not appear"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fed_at_a_third_of_the_timeout() {
        assert_eq!(feed_interval(60), Duration::from_secs(20));
        assert_eq!(feed_interval(MIN_TIMEOUT), Duration::from_millis(1666));
    }

    #[test]
    fn no_device_is_a_no_op() {
        let mut w = Watchdog::default();
        w.feed_if_due();
        w.feed();
        assert!(w.fed.is_none());
    }
}
