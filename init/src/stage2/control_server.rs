//! The control socket's server side (`berthctl`, `reboot`, `poweroff`, `halt` and `shutdown`
//! talk to it; the wire protocol is [`crate::control`]): accepting a connection, reading one
//! request from root within a second, answering it, keeping the clients of start/stop/restart
//! jobs until their job has finished; a scheduled shutdown goes to [`super::scheduled`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::scheduled::said;
use super::{Pid1, ShutdownKind};
use crate::control::{self, Reply, Request};
use crate::sys::log;

/// A berthctl client waiting for a start, stop or restart job to finish.
pub(super) struct Waiter {
    unit: String,
    verb: &'static str,
    stream: UnixStream,
}

impl Pid1 {
    /// Serves one berthctl connection.
    pub(super) fn accept(&mut self) -> Option<ShutdownKind> {
        let stream = match self.control.as_ref()?.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                log::line(&format!("accepting on {}: {e}", control::SOCKET));
                return None;
            }
        };
        let (request, pid) = match read_request(&stream) {
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
            Request::Halt => {
                kind = Some(ShutdownKind::Halt);
                Reply::ok("halting")
            }
            Request::ScheduleShutdown { .. } | Request::CancelShutdown { .. } if self.shutdown.is_some() => {
                Reply::error("the system is shutting down")
            }
            Request::ScheduleShutdown { power, after_secs: 0, message } => {
                let k = ShutdownKind::from(power);
                log::line(&format!("shutdown: {} now{}", k.word(), said(message.as_deref())));
                kind = Some(k);
                Reply::ok(k.verb())
            }
            Request::ScheduleShutdown { power, after_secs, message } => {
                let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
                let later = ShutdownKind::from(power);
                match self.scheduled.set(later, after_secs, message.as_deref(), Instant::now(), now_us) {
                    Ok(set) => {
                        log::line(&set.log);
                        Reply::ok(set.reply)
                    }
                    Err(e) => Reply::error(e),
                }
            }
            Request::CancelShutdown { message } => {
                let (line, reply) = self.scheduled.cancel(message.as_deref());
                if let Some(line) = line {
                    log::line(&line);
                }
                Reply::ok(reply)
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
            Request::ProvisionMetadata if self.shutdown.is_some() => Reply::error("the system is shutting down"),
            Request::ProvisionMetadata => self.provision_metadata(),
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
            // berthctl, reboot/poweroff/halt/shutdown, berth-devd (the power button), the guest agent.
            log::line(&format!("control socket: {} (asked by pid {pid})", k.verb()));
        }
        send(&stream, &reply);
        kind
    }

    /// `berthctl provision-metadata`: applies the record `berth-metadata fetch` wrote (once per
    /// instance, [`super::provision::metadata`]); when that changed the machine, sets the
    /// hostname again, re-reads the unit files and starts what the default target wants now
    /// (the units the document enabled). Answers at once: the started units go on by themselves.
    fn provision_metadata(&mut self) -> Reply {
        use super::provision::metadata;
        let record = match metadata::read_record(std::path::Path::new(metadata::RECORD_PATH)) {
            Ok(r) => r,
            Err(e) => {
                log::line(&format!("provisioning: {e}"));
                return Reply::error(e);
            }
        };
        let done = metadata::provision(std::path::Path::new("/"), &record);
        for line in &done.lines {
            log::line(line);
        }
        nix::unistd::sync();
        let mut summary = done.summary;
        if done.changed {
            let host = super::identity::hostname();
            match super::identity::write_hosts(std::path::Path::new(super::identity::HOSTS), &host) {
                Ok("written") => log::line(&format!("{} written for {host}", super::identity::HOSTS)),
                Ok(_) => {}
                Err(e) => log::line(&e),
            }
            log::line(&format!("provisioning: hostname {host}"));
            let before = self.manager.default_wants();
            let n = self.manager.reload();
            log::line(&format!("provisioning: reloaded {n} units"));
            let mut started = Vec::new();
            for unit in self.manager.default_wants().difference(&before) {
                match self.manager.start(unit) {
                    Ok(name) => started.push(name),
                    Err(e) => log::line(&format!("provisioning: starting {unit}: {e}")),
                }
            }
            if !started.is_empty() {
                log::line(&format!("provisioning: starting {}", started.join(", ")));
                summary.push_str(&format!("; starting {}", started.join(", ")));
            }
        }
        if done.ok { Reply::ok(summary) } else { Reply::error(summary) }
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
    pub(super) fn answer_waiters(&mut self) {
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

/// Reads one request, from root only, within a second (PID 1 must not wait on a client); returns
/// it with the client's pid.
fn read_request(stream: &UnixStream) -> Result<(Request, i32), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    if cred.uid() != 0 {
        return Err(format!("uid {} may not control init: must be root", cred.uid()));
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("reading the request: {e}"))?;
    let request =
        serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request {:?}: {e}", line.trim_end()))?;
    Ok((request, cred.pid()))
}

/// The control socket, root-only.
pub(super) fn listen() -> Option<UnixListener> {
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
