//! moto's server (`scripts/setup-emulators` installs it under target/emulators, or
//! `$BERTH_EMULATORS`) on 127.0.0.1 as the S3 endpoint of a release repository, in its default
//! mode (it does not judge signatures; cloud/tests/s3.rs does that in its auth mode). Guests
//! read the bucket anonymously over plain HTTP, path-style, through a `guestfwd` at
//! [`GUEST_ADDR`]: `http://10.0.2.102/<bucket>/<key>`.
//!
//! The launching logic is cloud/tests/support's, cut down to what these tests need.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where guests reach a [`Moto`]: http://10.0.2.102/ in QEMU's user network.
pub const GUEST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 102);

/// A running moto server; killed when dropped. Its output goes to a log file in its own
/// temporary directory.
pub struct Moto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// Where `scripts/setup-emulators` installed the emulators.
fn emulators_dir() -> PathBuf {
    match std::env::var_os("BERTH_EMULATORS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/emulators"),
    }
}

impl Moto {
    /// Starts moto on a free port of 127.0.0.1 and waits (60 s at most) until it listens.
    pub fn start() -> Result<Moto, String> {
        let program = emulators_dir().join("venv/bin/moto_server");
        if !program.exists() {
            return Err(format!("{} is missing: run scripts/setup-emulators", program.display()));
        }
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port on 127.0.0.1: {e}"))?
            .port();
        let dir = tempfile::tempdir().map_err(|e| format!("moto's temporary directory: {e}"))?;
        let log = std::fs::File::create(dir.path().join("moto.log")).map_err(|e| format!("moto's log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("moto's log: {e}"))?;
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let mut moto = Moto { child, port, dir };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!("moto exited ({status}) before listening:\n{}", moto.log()));
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("moto did not listen on 127.0.0.1:{port} within 60 s:\n{}", moto.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What moto printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Creates `bucket` (CreateBucket, unsigned: moto's default mode takes it) in us-east-1.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let (status, body) = self.request("PUT", &format!("/{bucket}"))?;
        if status != 200 {
            return Err(format!("CreateBucket {bucket}: {status} {body}"));
        }
        Ok(())
    }

    /// An anonymous request as a guest's agent makes it: the status and the body.
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        let what = |e: std::io::Error| format!("{method} {}{path}: {e}", self.url());
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(what)?;
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(what)?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(what)?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).map_err(what)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status =
            reply.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status: {reply}"))?;
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    /// The `guestfwd` that connects [`GUEST_ADDR`]:80 to this server (`relay`: the
    /// `berth-guestfwd-relay` binary).
    pub fn guest_forward(&self, relay: &Path) -> crate::GuestForward {
        crate::http::guest_forward_at(GUEST_ADDR, relay, self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
