//! A static HTTP/1.1 file server on 127.0.0.1 for release repositories, with the faults the
//! update tests need: answer an error status, drop the connection part-way, or trickle the bytes
//! slowly. It serves `GET` and `HEAD` with single `Range: bytes=N-[M]` requests, one request per
//! connection (`Connection: close`, the loopback server of [`berth_testkit`]), and records every
//! request it answers with what it sent.
//!
//! Guests reach it through a `guestfwd` (see [`crate::Options::guest_forwards`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_testkit::{Reply, Request, Response, Server};

/// What the server does to requests for one path instead of serving it plainly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and a short body) `times` times, then serve normally.
    Status { code: u16, times: u32 },
    /// Send the headers and only `bytes` bytes of the body, then close the connection, `times`
    /// times.
    DropAfter { bytes: u64, times: u32 },
    /// Send the body at about this many bytes per second (until the fault is cleared).
    Throttle { bytes_per_sec: u64 },
}

/// Where guests reach a [`RepoServer`]: http://10.0.2.100/ (port 80) in QEMU's user network.
pub const GUEST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 100);

/// The `guestfwd` that connects [`GUEST_ADDR`]:80 to the server on `port`, one relay process
/// (`relay`, the `berth-guestfwd-relay` binary of this package) per guest connection.
pub fn guest_forward(relay: &Path, port: u16) -> crate::GuestForward {
    guest_forward_at(GUEST_ADDR, relay, port)
}

/// The `guestfwd` that connects `addr`:80 in the guest's network to a server on `port` of
/// 127.0.0.1, through `relay`.
pub fn guest_forward_at(addr: std::net::Ipv4Addr, relay: &Path, port: u16) -> crate::GuestForward {
    crate::GuestForward { addr, port: 80, target: crate::GuestTarget::Cmd(format!("{} {port}", relay.display())) }
}

/// A request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// The path requested, with its leading `/`.
    pub path: String,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes actually written.
    pub sent: u64,
}

#[derive(Default)]
struct Shared {
    faults: HashMap<String, Fault>,
    log: Vec<Logged>,
}

/// A running server; stopped when dropped.
pub struct RepoServer {
    server: Server,
    shared: Arc<Mutex<Shared>>,
    /// Ends throttled transfers still running when the server is dropped.
    stop: Arc<AtomicBool>,
}

impl RepoServer {
    /// Serves the files under `root` on 127.0.0.1 on a free port.
    pub fn start(root: &Path) -> std::io::Result<RepoServer> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_path_buf();
        let server = {
            let (shared, stop) = (shared.clone(), stop.clone());
            Server::start(move |r| answer(r, &root, &shared, &stop))?
        };
        Ok(RepoServer { server, shared, stop })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Sets the fault for requests whose path is `path` (with its leading `/`).
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.lock().faults.insert(path.to_string(), fault);
    }

    /// Serves every path plainly again.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The fault that applies to this request, counting down the ones limited to a number of times.
fn take_fault(shared: &Mutex<Shared>, path: &str) -> Option<Fault> {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let f = s.faults.get_mut(path)?;
    match f {
        Fault::Status { times, .. } | Fault::DropAfter { times, .. } => {
            if *times == 0 {
                return None;
            }
            *times -= 1;
        }
        Fault::Throttle { .. } => {}
    }
    Some(*f)
}

fn log(shared: &Mutex<Shared>, r: &Request, status: u16, sent: u64) {
    let entry = Logged {
        method: r.method.clone(),
        path: r.path().to_string(),
        range: r.header("range").map(str::to_string),
        status,
        sent,
    };
    shared.lock().unwrap_or_else(|p| p.into_inner()).log.push(entry);
}

/// A short text answer with `status`.
fn simple(status: u16, reason: &str) -> Reply {
    Response::status(status).body(format!("{status} {reason}\n")).into()
}

fn answer(r: &Request, root: &Path, shared: &Arc<Mutex<Shared>>, stop: &Arc<AtomicBool>) -> Reply {
    let path = r.path().to_string();
    if r.method != "GET" && r.method != "HEAD" {
        log(shared, r, 405, 0);
        return simple(405, "Method Not Allowed");
    }
    let fault = take_fault(shared, &path);
    if let Some(Fault::Status { code, .. }) = fault {
        log(shared, r, code, 0);
        return simple(code, "Injected Fault");
    }
    let Some(mut file) = resolve(root, &path).and_then(|p| std::fs::File::open(p).ok()) else {
        log(shared, r, 404, 0);
        return simple(404, "Not Found");
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        log(shared, r, 500, 0);
        return simple(500, "Internal Server Error");
    };
    let (status, start, end) = match r.header("range").map(|v| parse_range(v, len)) {
        None => (200, 0, len),
        Some(Some((s, e))) => (206, s, e),
        Some(None) => {
            log(shared, r, 416, 0);
            return Response::status(416).header("Content-Range", format!("bytes */{len}")).into();
        }
    };
    let mut head = Response::status(status).header("Accept-Ranges", "bytes");
    if status == 206 {
        head = head.header("Content-Range", format!("bytes {start}-{}/{len}", end.saturating_sub(1)));
    }
    let head = head.header("Content-Type", "application/octet-stream").announce(end - start).head();
    let (r, shared, stop) = (r.clone(), shared.clone(), stop.clone());
    Reply::stream(move |out| {
        let sent = send(out, &head, &r.method, &mut file, (start, end), fault, &stop);
        log(&shared, &r, status, sent);
    })
}

/// Writes `head` and, for a `GET`, the file's bytes `start..end` with `fault`'s limit or rate;
/// returns the body bytes written (the connection is closed after it either way).
fn send(
    out: &mut TcpStream,
    head: &str,
    method: &str,
    file: &mut std::fs::File,
    (start, end): (u64, u64),
    fault: Option<Fault>,
    stop: &AtomicBool,
) -> u64 {
    if out.write_all(head.as_bytes()).is_err() || method == "HEAD" {
        return 0;
    }
    let limit = match fault {
        Some(Fault::DropAfter { bytes, .. }) => (end - start).min(bytes),
        _ => end - start,
    };
    let rate = match fault {
        Some(Fault::Throttle { bytes_per_sec }) => Some(bytes_per_sec.max(1)),
        _ => None,
    };
    let mut buf = vec![0u8; if rate.is_some() { 16 << 10 } else { 1 << 20 }];
    let mut sent = 0u64;
    let _ = (|| -> std::io::Result<()> {
        file.seek(SeekFrom::Start(start))?;
        while sent < limit && !stop.load(Ordering::SeqCst) {
            let n = (limit - sent).min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])?;
            out.write_all(&buf[..n])?;
            sent += n as u64;
            if let Some(r) = rate {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
            }
        }
        Ok(())
    })();
    // Short of `end`, the server's shutdown after this reply is the dropped connection a reset
    // proxy or a crashed server would leave.
    sent
}

/// `bytes=N-` or `bytes=N-M` against a file of `len` bytes: the half-open range to send.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => len,
        b => b.parse::<u64>().ok()?.checked_add(1)?.min(len),
    };
    (start < end).then_some((start, end))
}

/// The file under `root` for a request path, refusing anything that climbs out of it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let p = root.join(rel);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, path: &str, range: Option<&str>) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(r) = range {
            req += &format!("Range: {r}\r\n");
        }
        req += "\r\n";
        s.write_all(req.as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&all[..at]).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, all[at + 4..].to_vec())
    }

    #[test]
    fn serves_ranges_and_faults() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::create_dir_all(dir.path().join("r")).unwrap();
        std::fs::write(dir.path().join("r/f"), &data).unwrap();
        let s = RepoServer::start(dir.path()).unwrap();
        assert_eq!(get(s.port(), "/r/f", None), (200, data.clone()));
        assert_eq!(get(s.port(), "/r/f", Some("bytes=10-")), (206, data[10..].to_vec()));
        assert_eq!(get(s.port(), "/r/f", Some("bytes=10-19")), (206, data[10..20].to_vec()));
        assert_eq!(get(s.port(), "/r/f", Some("bytes=200000-")).0, 416);
        assert_eq!(get(s.port(), "/nope", None).0, 404);
        assert_eq!(get(s.port(), "/../etc/passwd", None).0, 404);
        s.set_fault("/r/f", Fault::Status { code: 500, times: 2 });
        assert_eq!(get(s.port(), "/r/f", None).0, 500);
        assert_eq!(get(s.port(), "/r/f", None).0, 500);
        assert_eq!(get(s.port(), "/r/f", None).0, 200);
        s.set_fault("/r/f", Fault::DropAfter { bytes: 1000, times: 1 });
        assert_eq!(get(s.port(), "/r/f", None), (200, data[..1000].to_vec()));
        assert_eq!(get(s.port(), "/r/f", None), (200, data.clone()));
        let log = s.requests();
        assert_eq!(log.len(), 11);
        assert_eq!(log[1].range.as_deref(), Some("bytes=10-"));
        assert_eq!(log[9].sent, 1000);
    }
}
