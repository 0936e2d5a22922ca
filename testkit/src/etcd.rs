//! A test etcd: Debian's `/usr/bin/etcd` (package `etcd-server`, installed by
//! `scripts/setup-host`) started on 127.0.0.1 with free client and peer ports and a data dir of
//! its own, ready once `GET /health` says `{"health":"true"}` (asked on a plain-HTTP metrics port,
//! so that an etcd serving TLS to certificate-holding clients is asked the same way). It can be
//! killed with SIGKILL and started again on the same ports and data dir (its history survives, as a
//! real restart's does); it is killed and its directory removed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian puts etcd.
pub const ETCD: &str = "/usr/bin/etcd";

/// How long a start may take to become healthy (about 2 s here).
const READY: Duration = Duration::from_secs(30);

/// One etcd member on 127.0.0.1, a cluster of one.
pub struct Etcd {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    extra: Vec<String>,
    tls: Option<TlsFiles>,
    /// Plain-HTTP `/health` (etcd's metrics listener), for a TLS etcd that wants client certificates.
    metrics_port: u16,
    child: Option<Child>,
    starts: u32,
}

/// PEM files for an etcd that serves its clients over TLS and asks each for a certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The server's certificate (its names must cover 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA whose client certificates etcd accepts (`--client-cert-auth`).
    pub client_ca: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port on 127.0.0.1")
}

impl Etcd {
    /// Starts an etcd and waits until it is healthy. Panics (naming `scripts/setup-host`) when
    /// etcd is not installed, or when it does not come up (with its log).
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// [`Etcd::start`] with extra flags (`--auto-compaction-retention=1`, …).
    pub fn start_with(extra: &[&str]) -> Etcd {
        Etcd::start_inner(extra, None)
    }

    /// An etcd whose client URL is `https://127.0.0.1:PORT`, with `tls`'s certificate, refusing
    /// clients without a certificate `tls.client_ca` signed.
    pub fn start_tls(tls: TlsFiles) -> Etcd {
        Etcd::start_inner(&[], Some(tls))
    }

    fn start_inner(extra: &[&str], tls: Option<TlsFiles>) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server and etcd-client with scripts/setup-host (as root)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "berth-etcd-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("the test etcd's directory");
        let mut etcd = Etcd {
            dir,
            client_port: 0,
            peer_port: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            metrics_port: 0,
            child: None,
            starts: 0,
        };
        // A port found free can be taken before etcd binds it: try others.
        for attempt in 0..3 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            etcd.metrics_port = free_port();
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(e) if attempt == 2 => panic!("{e}"),
                Err(_) => {
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                }
            }
        }
        unreachable!()
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` for [`Etcd::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The data dir (kept across [`Etcd::kill`] and [`Etcd::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// What etcd logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, no shutdown: what a power cut or an OOM kill does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same flags, ports and data dir, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    /// Lines of the log saying that this etcd serves clients on its client port: a healthy answer
    /// alone could come from another test's etcd that took a port found free here first.
    fn serving_lines(&self) -> usize {
        let port = format!("\"address\":\"127.0.0.1:{}\"", self.client_port);
        self.log().lines().filter(|l| l.contains("\"serving client traffic") && l.contains(&port)).count()
    }

    fn launch(&mut self) -> Result<(), String> {
        let serving_before = self.serving_lines();
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .map_err(|e| format!("etcd's log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("etcd's log: {e}"))?;
        let (c, p) = (self.url(), format!("http://127.0.0.1:{}", self.peer_port));
        let mut cmd = Command::new(ETCD);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key);
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(&t.client_ca);
        }
        let child = cmd
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", self.metrics_port)])
            .args(["--name", "berth-test", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("berth-test={p}"), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("berth-test-{}", std::process::id())])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {ETCD}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.child = None;
                return Err(format!("etcd (start {}) exited early; its log:\n{}", self.starts, self.log()));
            }
            if healthy(self.metrics_port) && self.is_running() && self.serving_lines() > serving_before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!("etcd not healthy within {READY:?}; its log:\n{}", self.log()))
    }
}

/// `GET /health` answers `{"health":"true"}`.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains(r#""health":"true""#)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
