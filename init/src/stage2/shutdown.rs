//! Ordered reboot, poweroff and halt: stop what runs (SIGTERM, then SIGKILL after a timeout),
//! sync, unmount or remount read-only, `reboot(2)`. Never returns.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::watchdog::Watchdog;
use crate::sys::log;

/// How long processes get between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the kernel gets to take SIGKILLed processes down.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reboot,
    Poweroff,
    /// `RB_HALT_SYSTEM`: the CPUs stop, the machine stays on (the watchdog is disarmed first).
    Halt,
}

impl Kind {
    pub fn verb(self) -> &'static str {
        match self {
            Kind::Reboot => "rebooting",
            Kind::Poweroff => "powering off",
            Kind::Halt => "halting",
        }
    }

    /// `reboot`, `poweroff`, `halt`.
    pub fn word(self) -> &'static str {
        self.power().word()
    }

    pub fn power(self) -> crate::control::Power {
        use crate::control::Power;
        match self {
            Kind::Reboot => Power::Reboot,
            Kind::Poweroff => Power::Poweroff,
            Kind::Halt => Power::Halt,
        }
    }
}

impl From<crate::control::Power> for Kind {
    fn from(p: crate::control::Power) -> Kind {
        use crate::control::Power;
        match p {
            Power::Reboot => Kind::Reboot,
            Power::Poweroff => Kind::Poweroff,
            Power::Halt => Kind::Halt,
        }
    }
}

pub fn run(kind: Kind, watchdog: &mut Watchdog) -> ! {
    let started = Instant::now();
    log::line(&format!("shutdown: {}", kind.verb()));
    // Every process but PID 1 (and kernel threads).
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let _ = kill(Pid::from_raw(-1), Signal::SIGCONT);
    if wait_for_all(STOP_TIMEOUT, watchdog) {
        log::line(&format!("shutdown: all processes ended after SIGTERM ({} ms)", started.elapsed().as_millis()));
    } else {
        log::line(&format!("shutdown: processes left after {} s; sending SIGKILL", STOP_TIMEOUT.as_secs()));
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        if !wait_for_all(KILL_TIMEOUT, watchdog) {
            log::line("shutdown: processes survived SIGKILL (stuck in the kernel); going on");
        }
    }
    watchdog.feed();
    nix::unistd::sync();
    let left = crate::sys::mounts::unmount_all();
    nix::unistd::sync();
    if left.is_empty() {
        log::line(&format!("shutdown: filesystems unmounted; {} ({} ms)", kind.verb(), started.elapsed().as_millis()));
    } else {
        log::line(&format!("shutdown: still writable: {}; {} anyway", left.join(", "), kind.verb()));
    }
    let mode = match kind {
        Kind::Reboot => RebootMode::RB_AUTOBOOT,
        Kind::Poweroff => RebootMode::RB_POWER_OFF,
        Kind::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    if kind == Kind::Halt {
        // Nobody feeds it once the CPUs stop: armed, it would reset the halted machine.
        log::line(&format!("shutdown: watchdog {}", watchdog.disarm()));
    }
    // Last: the machine has the whole timeout to get through the firmware's reset.
    watchdog.feed();
    let Err(e) = reboot(mode);
    crate::fatal(&format!("reboot(2) failed: {e}"))
}

/// Reaps until no process is left (true) or `limit` passes (false).
fn wait_for_all(limit: Duration, watchdog: &mut Watchdog) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return true,
            Ok(WaitStatus::StillAlive) => {
                watchdog.feed_if_due();
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                log::line(&format!("waitpid: {e}"));
                return false;
            }
        }
    }
}
