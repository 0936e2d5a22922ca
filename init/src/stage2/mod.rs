//! Stage 2, PID 1 of the root: API filesystems and cgroup2, STATE with `/var` and the `/etc`
//! overlay, machine-id, hostname, loopback; then it serves berthctl, reaps every orphan,
//! keeps the guest agent running when the hypervisor offers its channel, and shuts down in
//! order on request (berthctl, Ctrl-Alt-Del, signals).
//!
//! Signals PID 1 acts on (busybox init's convention): SIGINT (Ctrl-Alt-Del) and SIGTERM reboot;
//! SIGUSR2 and SIGPWR power off. All signals it handles arrive through a signalfd, so the main
//! loop is one `poll`.

mod agent;
mod identity;
mod net;
mod shutdown;
mod storage;

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
    let slot = match Cmdline::read() {
        Ok(c) => c.slot,
        Err(e) => {
            log::line(&format!("{e}; taking the slot from stage 1"));
            None
        }
    };
    let slot = slot.or_else(|| std::env::var("BERTH_SLOT").ok()).unwrap_or_else(|| "?".into());
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::remove_var("BERTH_SLOT") };

    let storage = storage::setup();
    // TEMPORARY (wt-prov, for qemu-tests/tests/provision.rs): the lead engineer's stage 2 makes
    // this call; keep exactly one at merge. After /var and /etc, before the hostname and units.
    for line in crate::provision::run() {
        log::line(&line);
    }
    match identity::machine_id() {
        Ok((id, false)) => log::line(&format!("machine-id {id}")),
        Ok((id, true)) => log::line(&format!("machine-id {id} (generated: first boot)")),
        Err(e) => log::line(&format!("no machine-id: {e}")),
    }
    let host = identity::hostname();
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
    let mut pid1 = Pid1 { signals, control, agent: agent::Agent::default(), network, online: false, running: true };
    pid1.serve()
}

struct Pid1 {
    signals: SignalFd,
    control: Option<UnixListener>,
    agent: agent::Agent,
    network: crate::network::Network,
    /// An address was up once (what network-online.target will mean).
    online: bool,
    running: bool,
}

impl Pid1 {
    /// The main loop; returns only to shut down (which does not return).
    fn serve(&mut self) -> ! {
        loop {
            self.agent.tick();
            let request = self.wait_once();
            if let Some(kind) = request {
                self.running = false;
                shutdown::run(kind, &mut self.agent);
            }
        }
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
        // At most a second (the agent's tick), sooner when a DHCP timer is due.
        let now = Instant::now();
        let wait = self.network.next_deadline().map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
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
                    if let Some(pid) = status.pid() {
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
        let (reply, kind) = match read_request(&stream) {
            Ok(Request::Reboot) => (Reply::ok("rebooting"), Some(ShutdownKind::Reboot)),
            Ok(Request::Poweroff) => (Reply::ok("powering off"), Some(ShutdownKind::Poweroff)),
            Ok(Request::IsSystemRunning) => {
                (if self.running { Reply::ok("running") } else { Reply::error("stopping") }, None)
            }
            Err(e) => (Reply::error(e), None),
        };
        if let Some(k) = kind {
            log::line(&format!("berthctl: {}", k.verb()));
        }
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false,"message":"?"}"#.into());
        text.push('\n');
        let _ = (&stream).write_all(text.as_bytes());
        kind
    }
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
