//! The host side of the guest agent channel: a client for `berth-guest-agent` on the QEMU end
//! of its virtio-serial port (a Unix socket). Requests and replies are
//! [`berth_guest_agent`]'s wire types.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_guest_agent::{Envelope, ExecResult, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("guest agent at {socket}: {what}")]
    Channel { socket: PathBuf, what: String },
    #[error("guest agent: no reply to {request} within {secs} s")]
    Timeout { request: String, secs: u64 },
    #[error("guest agent: {request}: {message}")]
    Failed { request: String, message: String },
}

/// A connection to the guest agent.
pub struct Agent {
    socket: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Agent {
    /// Connects to QEMU's end of the channel and waits (bounded) until the agent answers a ping:
    /// the guest may still be booting.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Agent, AgentError> {
        let chan = |what: String| AgentError::Channel { socket: socket.to_path_buf(), what };
        let started = Instant::now();
        // QEMU creates the socket shortly after it starts.
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
                        && started.elapsed() < timeout =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(chan(format!("connecting: {e}"))),
            }
        };
        let reader = BufReader::new(stream.try_clone().map_err(|e| chan(e.to_string()))?);
        // Seeded from the clock so that replies meant for an earlier connection never match.
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let mut agent = Agent { socket: socket.to_path_buf(), stream, reader, next_id: (seed as u64) & 0xffff_ffff };
        loop {
            match agent.request(&Request::Ping, Duration::from_secs(2)) {
                Ok(Reply::Pong) => return Ok(agent),
                Ok(other) => return Err(chan(format!("unexpected reply to ping: {other:?}"))),
                Err(AgentError::Timeout { .. }) if started.elapsed() < timeout => {}
                Err(AgentError::Timeout { .. }) => {
                    return Err(AgentError::Timeout { request: "ping".into(), secs: timeout.as_secs() });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `request` and waits up to `timeout` for its reply.
    pub fn request(&mut self, request: &Request, timeout: Duration) -> Result<Reply, AgentError> {
        self.next_id += 1;
        let id = self.next_id;
        let name = describe(request);
        let mut line = serde_json::to_string(&Envelope { id, body: request.clone() })
            .map_err(|e| AgentError::Failed { request: name.clone(), message: e.to_string() })?;
        line.push('\n');
        self.stream.write_all(line.as_bytes()).map_err(|e| self.channel(format!("sending {name}: {e}")))?;
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AgentError::Timeout { request: name, secs: timeout.as_secs() });
            }
            self.reader.get_ref().set_read_timeout(Some(left)).map_err(|e| self.channel(e.to_string()))?;
            text.clear();
            match self.reader.read_line(&mut text) {
                Ok(0) => return Err(self.channel("QEMU closed the channel".into())),
                Ok(_) => {
                    // Replies to earlier requests (or pings) are skipped.
                    if let Ok(reply) = serde_json::from_str::<Envelope<Reply>>(text.trim_end())
                        && reply.id == id
                    {
                        return Ok(reply.body);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(AgentError::Timeout { request: name, secs: timeout.as_secs() });
                }
                Err(e) => return Err(self.channel(format!("reading the reply to {name}: {e}"))),
            }
        }
    }

    /// Runs `argv` in the guest.
    pub fn exec(&mut self, argv: &[&str], timeout: Duration) -> Result<ExecResult, AgentError> {
        // The guest kills the command when this side stops waiting for it.
        let timeout_seconds = Some(timeout.as_secs().max(1));
        let req = Request::Exec { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_seconds };
        match self.request(&req, timeout)? {
            Reply::Exited(r) => Ok(r),
            other => Err(self.failed(&req, other)),
        }
    }

    /// Runs `argv` in the guest without waiting for it (for commands that take the guest, and
    /// so the agent, down, like `berthctl reboot`).
    pub fn spawn(&mut self, argv: &[&str]) -> Result<(), AgentError> {
        let req = Request::Exec { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_seconds: None };
        match self.request(&req, Duration::from_secs(5)) {
            Ok(Reply::Exited(r)) if r.status != Some(0) => {
                Err(AgentError::Failed { request: describe(&req), message: format!("{r:?}") })
            }
            Ok(Reply::Error { message }) => Err(AgentError::Failed { request: describe(&req), message }),
            _ => Ok(()),
        }
    }

    /// A guest file's contents.
    pub fn read(&mut self, path: &str) -> Result<String, AgentError> {
        let req = Request::Read { path: path.into() };
        match self.request(&req, Duration::from_secs(30))? {
            Reply::Data { data } => Ok(data),
            other => Err(self.failed(&req, other)),
        }
    }

    /// Writes a guest file; `Err(AgentError::Failed)` carries the guest's error (with its OS
    /// error number, for example `(os error 30)` for EROFS).
    pub fn write(&mut self, path: &str, data: &str) -> Result<(), AgentError> {
        let req = Request::Write { path: path.into(), data: data.into() };
        match self.request(&req, Duration::from_secs(30))? {
            Reply::Written => Ok(()),
            other => Err(self.failed(&req, other)),
        }
    }

    /// Writes a guest file with any bytes (base64 on the wire, in chunks of at most
    /// [`berth_guest_agent::WRITE_CHUNK_BYTES`], each waited for up to `timeout`).
    pub fn write_bytes(&mut self, path: &str, bytes: &[u8], timeout: Duration) -> Result<(), AgentError> {
        for req in Request::write_base64(path, bytes) {
            match self.request(&req, timeout)? {
                Reply::Written => {}
                other => return Err(self.failed(&req, other)),
            }
        }
        Ok(())
    }

    /// Starts `argv` in the guest and returns its pid without waiting for it; its stdout and
    /// stderr go to the guest file `output`. PID 1, not the agent, reaps it; the agent keeps
    /// answering meanwhile.
    pub fn spawn_detached(&mut self, argv: &[&str], output: &str) -> Result<u32, AgentError> {
        let req = Request::Spawn { argv: argv.iter().map(|s| s.to_string()).collect(), output: output.into() };
        match self.request(&req, Duration::from_secs(30))? {
            Reply::Spawned { pid } => Ok(pid),
            other => Err(self.failed(&req, other)),
        }
    }

    fn channel(&self, what: String) -> AgentError {
        AgentError::Channel { socket: self.socket.clone(), what }
    }

    fn failed(&self, req: &Request, reply: Reply) -> AgentError {
        let message = match reply {
            Reply::Error { message } => message,
            other => format!("unexpected reply {other:?}"),
        };
        AgentError::Failed { request: describe(req), message }
    }
}

fn describe(req: &Request) -> String {
    req.summary()
}
