//! Starting processes from PID 1: a child must not inherit init's blocked signals (they
//! arrive through init's signalfd) nor its ignored SIGPIPE, so each starts with an empty signal
//! mask and every disposition at its default.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};

/// A `Command` for `program` that resets signal state between fork and exec.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls sigaction and sigprocmask, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            reset_signals();
            Ok(())
        })
    };
    cmd
}

/// Default dispositions for every catchable signal, then an empty mask.
fn reset_signals() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL has no handler to be unsafe about.
            let _ = unsafe { sigaction(sig, &default) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
