//! Stage 2, PID 1 of the root: API filesystems and cgroup2, STATE with `/var` and the `/etc`
//! overlay, the platform ([`platform`]), first-boot provisioning, machine-id, hostname, loopback (here, before any unit starts: services may bind
//! to 127.0.0.1 whatever they are ordered after); then it runs the units, serves berthctl
//! ([`control_server`]), reaps every orphan, and shuts down in order on request (berthctl,
//! Ctrl-Alt-Del, signals). DHCP is `berth-netd.service` and the guest agent, in test images,
//! `berth-guest-agent.service`: units like any other, not code in PID 1.
//!
//! Signals PID 1 acts on (busybox init's convention): SIGINT (Ctrl-Alt-Del) and SIGTERM reboot;
//! SIGUSR2 and SIGPWR power off. All signals it handles arrive through a signalfd, so the main
//! loop is one `poll`. `reboot`, `poweroff`, `halt` and `shutdown` ask over the control socket;
//! a `shutdown` with a time is kept here ([`scheduled`]) until it is due or cancelled.

mod accounts;
mod control_server;
mod health;
mod identity;
// The platform word (ESP, SMBIOS): recorded in /run/berth/platform; berthctl status reads it.
pub(crate) mod platform;
// First-boot provisioning from fw_cfg, run once STATE is up; berthctl reads its status.
pub(crate) mod provision;
mod scheduled;
mod shutdown;
mod storage;
mod sysctl;
mod watchdog;

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::VERSION;
use crate::sys::cmdline::Cmdline;
use crate::sys::log;
pub use shutdown::Kind as ShutdownKind;

const HANDLED: [Signal; 6] =
    [Signal::SIGCHLD, Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR2, Signal::SIGPWR, Signal::SIGHUP];

pub fn run() -> Result<(), String> {
    let started = Instant::now();
    log::line(&format!("berth-init {VERSION}: stage 2"));
    // Before anything can fork: blocked signals queue on the signalfd instead of being lost.
    let mut mask = SigSet::empty();
    for s in HANDLED {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(|e| format!("blocking signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    // Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        log::line(&format!("routing Ctrl-Alt-Del to init: {e}"));
    }

    crate::sys::mounts::api_filesystems();
    let (slot, watchdog_timeout) = match Cmdline::read() {
        Ok(c) => (c.slot, c.watchdog),
        Err(e) => {
            log::line(&format!("{e}; taking the slot from stage 1"));
            (None, None)
        }
    };
    // Early: a stage 2 that hangs from here on resets the machine.
    let mut watchdog = watchdog::Watchdog::arm(watchdog_timeout.unwrap_or(watchdog::DEFAULT_TIMEOUT));
    let slot = slot.or_else(|| std::env::var("BERTH_SLOT").ok()).unwrap_or_else(|| "?".into());
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::remove_var("BERTH_SLOT") };

    let storage = storage::setup();
    watchdog.feed();
    // Once /run/berth exists, before any unit starts: berth-metadata.service reads the word.
    for line in platform::run() {
        log::line(&line);
    }
    // First-boot provisioning: after /var and /etc exist, before the hostname is set and units start.
    for line in provision::run() {
        log::line(&line);
    }
    // sysctl.d (provisioning may have written /etc/sysctl.d), before any unit starts.
    for line in sysctl::run() {
        log::line(&line);
    }
    watchdog.feed();
    match identity::machine_id() {
        Ok((id, false)) => log::line(&format!("machine-id {id}")),
        Ok((id, true)) => log::line(&format!("machine-id {id} (generated: first boot)")),
        Err(e) => log::line(&format!("no machine-id: {e}")),
    }
    let host = identity::hostname();
    match identity::write_hosts(std::path::Path::new(identity::HOSTS), &host) {
        Ok("written") => log::line(&format!("{} written for {host}", identity::HOSTS)),
        Ok(_) => {}
        Err(e) => log::line(&e),
    }
    match berth_net::link::loopback_up() {
        Ok(()) => log::line(&format!("hostname {host}; lo up")),
        Err(e) => log::line(&format!("hostname {host}; {e}")),
    }
    let control = control_server::listen();
    let persistence = match &storage {
        storage::Storage::Persistent { device } => format!("STATE on {}", device.display()),
        storage::Storage::Volatile { why } => format!("STATE volatile: {why}"),
    };
    log::line(&format!(
        "stage 2 ready (slot {slot}) in {:.0} ms; {persistence}",
        started.elapsed().as_secs_f64() * 1000.0
    ));
    // update.toml's health-timeout, read now that the /etc overlay is up.
    let health = health::Deadline::start(&slot, started);
    watchdog.feed();
    let mut manager = crate::manager::Manager::new(started);
    if let storage::Storage::Volatile { why } = &storage {
        // Said again where `berthctl logs berth-init` finds it for as long as this boot lasts.
        manager.journal.record("berth-init", None, &storage::volatile_warning(why));
    }
    manager.boot();
    let mut pid1 = Pid1 {
        watchdog,
        health,
        signals,
        control,
        manager,
        waiters: Vec::new(),
        shutdown: None,
        scheduled: Default::default(),
    };
    pid1.serve()
}

struct Pid1 {
    /// Fed from the main loop.
    watchdog: watchdog::Watchdog,
    /// The boot deadline (boot-complete.target on a slot on trial).
    health: health::Deadline,
    signals: SignalFd,
    control: Option<UnixListener>,
    manager: crate::manager::Manager,
    waiters: Vec<control_server::Waiter>,
    /// Requested, waiting for the units to stop: the kind and the latest moment to go on.
    shutdown: Option<(ShutdownKind, Instant)>,
    /// A `shutdown +M` / `shutdown hh:mm` waiting for its time.
    scheduled: scheduled::Schedule,
}

/// The longest the units may take to stop before PID 1 goes on with the shutdown anyway
/// (each unit's own TimeoutStopSec= applies first).
const UNITS_STOP_LIMIT: Duration = Duration::from_secs(180);

impl Pid1 {
    /// The main loop; returns only to shut down (which does not return).
    fn serve(&mut self) -> ! {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let mut panicked = false;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve_once())) {
                Ok(None) => crate::sys::panics::settle(),
                Ok(Some(kind)) => shutdown::run(kind, &mut self.watchdog),
                // The hook logged where. Not fatal()'s bare reboot: the ordered shutdown (L5),
                // through the units' stop jobs when the manager can still take them, else
                // straight to stopping every process and unmounting.
                Err(_) => {
                    let first = !panicked;
                    panicked = true;
                    if first {
                        crate::sys::panics::before_reboot(&mut || self.watchdog.feed());
                    }
                    if first && self.shutdown.is_none() {
                        log::line("panic in the main loop: stopping the units in order, then rebooting");
                        if catch_unwind(AssertUnwindSafe(|| self.manager.shutdown())).is_ok() {
                            self.shutdown = Some((ShutdownKind::Reboot, Instant::now() + UNITS_STOP_LIMIT));
                            continue;
                        }
                    }
                    log::line("panic in the main loop while shutting down: stopping every process and rebooting");
                    let _ = catch_unwind(AssertUnwindSafe(|| self.manager.journal.stop_persisting()));
                    shutdown::run(ShutdownKind::Reboot, &mut self.watchdog)
                }
            }
        }
    }

    /// One round of the main loop; `Some(kind)` once a shutdown's units have stopped (or
    /// were given up on) and the rest of it is due.
    fn serve_once(&mut self) -> Option<ShutdownKind> {
        self.watchdog.feed_if_due();
        let mut request = self.wait_once();
        // Judged on the previous tick's outcome (at most a poll round, a second, later).
        if self.shutdown.is_none() && self.health.check(&self.manager).is_some() {
            // As `berthctl reboot`: the ordered shutdown; bootmgr counts the try.
            request = Some(ShutdownKind::Reboot);
        }
        if let Some((kind, line)) = self.scheduled.due(Instant::now()) {
            log::line(&line);
            request = request.or(Some(kind));
        }
        if let Some(kind) = request
            && self.shutdown.is_none()
        {
            self.manager.shutdown();
            self.shutdown = Some((kind, Instant::now() + UNITS_STOP_LIMIT));
        }
        self.manager.tick();
        self.answer_waiters();
        if let Some((kind, limit)) = self.shutdown {
            let late = Instant::now() >= limit;
            if self.manager.stopped() || late {
                if late {
                    log::line("units did not all stop in time; going on with the shutdown");
                } else {
                    log::line("all units stopped");
                }
                self.manager.journal.stop_persisting();
                return Some(kind);
            }
        }
        None
    }

    /// One poll round: signals, reaping, at most one control request. Returns a shutdown
    /// request if one arrived.
    fn wait_once(&mut self) -> Option<ShutdownKind> {
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let control_at = self.control.as_ref().map(|l| {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        for fd in self.manager.fds() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // At most a second (the watchdog and the boot deadline), sooner when a unit timer is due.
        let now = Instant::now();
        let wait = self.manager.next_deadline().map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
        let ms = wait.min(Duration::from_secs(1)).as_millis() as u16;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                log::line(&format!("poll: {e}"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let control_ready = control_at
            .and_then(|i| fds.get(i))
            .and_then(|f| f.revents())
            .is_some_and(|r| r.intersects(PollFlags::POLLIN));
        drop(fds);
        self.manager.on_readable();
        let mut request = self.drain_signals();
        self.reap();
        if control_ready && let Some(kind) = self.accept() {
            request = request.or(Some(kind));
        }
        request
    }

    fn drain_signals(&mut self) -> Option<ShutdownKind> {
        let mut request = None;
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
                    let kind = match sig {
                        Signal::SIGINT => Some((ShutdownKind::Reboot, "Ctrl-Alt-Del")),
                        Signal::SIGTERM => Some((ShutdownKind::Reboot, "SIGTERM")),
                        Signal::SIGUSR2 | Signal::SIGPWR => Some((ShutdownKind::Poweroff, sig.as_str())),
                        _ => None,
                    };
                    if let Some((kind, why)) = kind {
                        log::line(&format!("{why} (from pid {}): {}", info.ssi_pid, kind.verb()));
                        request = Some(kind);
                    }
                }
                Ok(None) => return request,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::line(&format!("reading the signalfd: {e}"));
                    return request;
                }
            }
        }
    }

    /// Reaps every child that has exited (orphans included).
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    // An orphan that was no unit's needs nothing more than the reaping.
                    if let Some(pid) = status.pid() {
                        let _ = self.manager.on_exit(pid, &status);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    log::line(&format!("waitpid: {e}"));
                    return;
                }
            }
        }
    }
}
