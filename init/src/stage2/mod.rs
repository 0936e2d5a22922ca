//! Stage 2, PID 1 of the root: API filesystems and cgroup2, STATE with `/var` and the `/etc`
//! overlay, machine-id, hostname, loopback; then it serves berthctl, reaps every orphan,
//! keeps the guest agent running when the hypervisor offers its channel, and shuts down in
//! order on request (berthctl, Ctrl-Alt-Del, signals).
//!
//! Signals PID 1 acts on (busybox init's convention): SIGINT (Ctrl-Alt-Del) and SIGTERM reboot;
//! SIGUSR2 and SIGPWR power off. All signals it handles arrive through a signalfd, so the main
//! loop is one `poll`.

mod accounts;
mod agent;
mod health;
mod identity;
mod net;
// First-boot provisioning from fw_cfg, run once STATE is up; berthctl reads its status.
pub(crate) mod provision;
mod shutdown;
mod storage;
mod sysctl;
mod watchdog;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::cmdline::Cmdline;
use crate::control::{self, Reply, Request};
use crate::{VERSION, log};
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

    crate::mounts::api_filesystems();
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
    match net::loopback_up() {
        Ok(()) => log::line(&format!("hostname {host}; lo up")),
        Err(e) => log::line(&format!("hostname {host}; {e}")),
    }
    // DHCP on every Ethernet interface, driven by the main loop (no threads in PID 1).
    let network = crate::network::Network::start(Instant::now());
    let control = listen();
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
        agent: agent::Agent::default(),
        network,
        online: false,
        manager,
        waiters: Vec::new(),
        shutdown: None,
    };
    pid1.serve()
}

/// A berthctl client waiting for a start, stop or restart job to finish.
struct Waiter {
    unit: String,
    verb: &'static str,
    stream: UnixStream,
}

struct Pid1 {
    /// Fed from the main loop.
    watchdog: watchdog::Watchdog,
    /// The boot deadline (boot-complete.target on a slot on trial).
    health: health::Deadline,
    signals: SignalFd,
    control: Option<UnixListener>,
    agent: agent::Agent,
    network: crate::network::Network,
    /// An address was up once (what network-online.target means).
    online: bool,
    manager: crate::manager::Manager,
    waiters: Vec<Waiter>,
    /// Requested, waiting for the units to stop: the kind and the latest moment to go on.
    shutdown: Option<(ShutdownKind, Instant)>,
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
                Ok(None) => crate::panics::settle(),
                Ok(Some(kind)) => shutdown::run(kind, &mut self.agent, &mut self.watchdog),
                // The hook logged where. Not fatal()'s bare reboot: the ordered shutdown (L5),
                // through the units' stop jobs when the manager can still take them, else
                // straight to stopping every process and unmounting.
                Err(_) => {
                    let first = !panicked;
                    panicked = true;
                    if first {
                        crate::panics::before_reboot(&mut || self.watchdog.feed());
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
                    shutdown::run(ShutdownKind::Reboot, &mut self.agent, &mut self.watchdog)
                }
            }
        }
    }

    /// One round of the main loop; `Some(kind)` once a shutdown's units have stopped (or
    /// were given up on) and the rest of it is due.
    fn serve_once(&mut self) -> Option<ShutdownKind> {
        self.watchdog.feed_if_due();
        self.agent.tick();
        let mut request = self.wait_once();
        // Judged on the previous tick's outcome (at most a poll round, a second, later).
        if self.shutdown.is_none() && self.health.check(&self.manager).is_some() {
            // As `berthctl reboot`: the ordered shutdown; bootmgr counts the try.
            request = Some(ShutdownKind::Reboot);
        }
        if let Some(kind) = request
            && self.shutdown.is_none()
        {
            self.manager.shutdown();
            self.shutdown = Some((kind, Instant::now() + UNITS_STOP_LIMIT));
        }
        self.manager.tick(self.online);
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
        for fd in self.network.fds() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        for fd in self.manager.fds() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // At most a second (the agent's tick), sooner when a DHCP or unit timer is due.
        let now = Instant::now();
        let deadline = [self.network.next_deadline(), self.manager.next_deadline()].into_iter().flatten().min();
        let wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
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
        let now = Instant::now();
        self.network.on_readable(now);
        self.network.on_tick(now);
        if !self.online && self.network.online() {
            self.online = true;
            log::line("network online");
        }
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
                    if let Some(pid) = status.pid()
                        && !self.manager.on_exit(pid, &status)
                    {
                        self.agent.exited(pid, &status);
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

    /// Serves one berthctl connection.
    fn accept(&mut self) -> Option<ShutdownKind> {
        let stream = match self.control.as_ref()?.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                log::line(&format!("accepting on {}: {e}", control::SOCKET));
                return None;
            }
        };
        let request = match read_request(&stream) {
            Ok(r) => r,
            Err(e) => {
                send(&stream, &Reply::error(e));
                return None;
            }
        };
        let mut kind = None;
        let reply = match request {
            Request::Reboot => {
                kind = Some(ShutdownKind::Reboot);
                Reply::ok("rebooting")
            }
            Request::Poweroff => {
                kind = Some(ShutdownKind::Poweroff);
                Reply::ok("powering off")
            }
            Request::IsSystemRunning => {
                let state = self.manager.system_state();
                if state == "running" { Reply::ok(state) } else { Reply::error(state) }
            }
            Request::List { all } => Reply::ok(self.manager.system_state()).with_units(self.manager.list(all)),
            Request::Status { unit } => match self.manager.status(&unit) {
                Ok(status) => {
                    let lines = self.manager.journal.tail(&status.name, 10);
                    Reply::ok(status.active.clone()).with_lines(lines).with_units(vec![status])
                }
                Err(e) => Reply::error(e.to_string()),
            },
            Request::Start { .. } | Request::Stop { .. } | Request::Restart { .. } | Request::ReloadUnit { .. }
                if self.shutdown.is_some() =>
            {
                Reply::error("the system is shutting down")
            }
            Request::Start { unit } => return self.queue_waiter(stream, "start", |m| m.start(&unit)),
            Request::Stop { unit } => return self.queue_waiter(stream, "stop", |m| m.stop(&unit)),
            Request::Restart { unit } => return self.queue_waiter(stream, "restart", |m| m.restart(&unit)),
            Request::ReloadUnit { unit } => return self.queue_waiter(stream, "reload", |m| m.reload_unit(&unit)),
            Request::Reload => {
                let n = self.manager.reload();
                Reply::ok(format!("reloaded {n} units"))
            }
            Request::Logs { unit, lines, follow } => {
                let name = self.manager.resolve(&unit).unwrap_or(unit);
                let lines = self.manager.journal.tail(&name, lines);
                send(&stream, &Reply::ok(name.clone()).with_lines(lines));
                if follow {
                    let _ = stream.set_nonblocking(true);
                    self.manager.journal.follow(&name, stream);
                }
                return None;
            }
        };
        if let Some(k) = kind {
            log::line(&format!("berthctl: {}", k.verb()));
        }
        send(&stream, &reply);
        kind
    }

    /// Queues a job and keeps the client until it has finished.
    fn queue_waiter(
        &mut self,
        stream: UnixStream,
        verb: &'static str,
        job: impl FnOnce(&mut crate::manager::Manager) -> Result<String, crate::manager::JobError>,
    ) -> Option<ShutdownKind> {
        match job(&mut self.manager) {
            Ok(unit) => {
                log::line(&format!("berthctl: {verb} {unit}"));
                self.waiters.push(Waiter { unit, verb, stream });
            }
            Err(e) => send(&stream, &Reply::error(e.to_string())),
        }
        None
    }

    /// Answers the clients whose jobs have finished.
    fn answer_waiters(&mut self) {
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            if self.manager.has_job(&w.unit) {
                still.push(w);
                continue;
            }
            let (active, failure) = self.manager.outcome(&w.unit);
            let reply = match (w.verb, failure) {
                ("stop", _) => Reply::ok(format!("{}: {active}", w.unit)),
                (_, Some(why)) => {
                    Reply::error(format!("{}: {} failed: {why} (see berthctl status {})", w.unit, w.verb, w.unit))
                }
                (_, None) => Reply::ok(format!("{}: {active}", w.unit)),
            };
            send(&w.stream, &reply);
        }
        self.waiters = still;
    }
}

fn send(stream: &UnixStream, reply: &Reply) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = (&*stream).write_all(reply.to_line().as_bytes());
}

/// Reads one request, from root only, within a second (PID 1 must not wait on a client).
fn read_request(stream: &UnixStream) -> Result<Request, String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    if cred.uid() != 0 {
        return Err(format!("uid {} may not control init; berthctl needs root", cred.uid()));
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("reading the request: {e}"))?;
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request {:?}: {e}", line.trim_end()))
}

/// The control socket, root-only.
fn listen() -> Option<UnixListener> {
    let path = control::SOCKET;
    let _ = std::fs::remove_file(path);
    if let Some(dir) = std::path::Path::new(path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            log::line(&format!("control socket {path}: {e}; berthctl will not work"));
            return None;
        }
    };
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    if let Err(e) = listener.set_nonblocking(true) {
        log::line(&format!("control socket {path}: {e}"));
    }
    Some(listener)
}
