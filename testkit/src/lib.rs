//! Berth's loopback HTTP test server, for tests only (a dev-dependency; `berth-qemu-tests`
//! builds its repository and FleetLock servers on it).
//!
//! [`Server`] listens on 127.0.0.1 only, on a free port, and answers each connection's one
//! request (`Connection: close`) on a thread of its own with what the test's handler returns: a
//! [`Response`], raw bytes (a malformed or lying answer), or a function that writes to the
//! connection itself (a trickle, a connection dropped part-way). Every request is recorded
//! ([`Server::requests`]), so a test can assert what was asked, not assume it. The server stops
//! when dropped.
//!
//! It owns the HTTP/1.1 plumbing the tests used to write five times; what a server answers
//! (files, faults, the FleetLock protocol) stays in the test that needs it.

pub mod etcd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The most of a request body that is read (JSON documents, and the cloud fakes' 512 KiB EBS blocks
/// and Azure pages, which the fake must see to refuse one over 4 MiB).
const MAX_BODY: usize = 16 << 20;

/// A request as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`…
    pub method: String,
    /// The request target as sent: the path with its leading `/`, and any query.
    pub target: String,
    /// Header names as sent, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes, at most 16 MiB).
    pub body: Vec<u8>,
    /// The connection's number, from 0, in the order they were accepted.
    pub index: usize,
}

impl Request {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The start of a `Range: bytes=N-…` header: N, or 0 without one.
    pub fn range_start(&self) -> u64 {
        self.header("range").and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.trim().parse().ok()).unwrap_or(0)
    }
}

/// A whole answer: status, headers and body; `Content-Length` (the body's, unless
/// [`Response::announce`] says otherwise) and `Connection: close` are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The `Content-Length` to send instead of the body's length (a server that lies).
    pub announce: Option<u64>,
}

impl Response {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new(), announce: None }
    }

    /// `200 OK` with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Response {
        Response::status(200).body(body)
    }

    /// `status` with a JSON `body` (`Content-Type: application/json`).
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::status(status).header("Content-Type", "application/json").body(body.into())
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Announces `length` bytes whatever the body's length.
    pub fn announce(mut self, length: u64) -> Response {
        self.announce = Some(length);
        self
    }

    /// The response's bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.head().into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// The status line and headers, up to and including the empty line.
    pub fn head(&self) -> String {
        let length = self.announce.unwrap_or(self.body.len() as u64);
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head += &format!("{name}: {value}\r\n");
        }
        head + &format!("Content-Length: {length}\r\nConnection: close\r\n\r\n")
    }
}

/// The usual reason phrase of `status` (clients ignore it; people reading logs do not).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// What the handler answers a request with.
pub enum Reply {
    /// A whole response.
    Response(Response),
    /// These bytes, whatever they are, then the connection is closed.
    Raw(Vec<u8>),
    /// The handler writes to the connection itself; it is shut down afterwards.
    Stream(Box<dyn FnOnce(&mut TcpStream) + Send>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Response(r)
    }
}

impl Reply {
    /// A function that writes to the connection itself.
    pub fn stream(f: impl FnOnce(&mut TcpStream) + Send + 'static) -> Reply {
        Reply::Stream(Box::new(f))
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running loopback server; it stops accepting when dropped.
pub struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on a free port of 127.0.0.1 and answers every request with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> std::io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        // Polled, so that dropping the server ends the thread.
        listener.set_nonblocking(true)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(&listener, &handler, &requests, &stop))
        };
        Ok(Server { port, requests, stop, thread: Some(thread) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request read so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.requests).clone()
    }

    /// The requests read so far, forgetting them.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut *lock(&self.requests))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then freed).
pub fn dead_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map_or(9, |a| a.port())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: &TcpListener, handler: &Arc<Handler>, requests: &Arc<Mutex<Vec<Request>>>, stop: &AtomicBool) {
    let mut index = 0;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (handler, requests) = (handler.clone(), requests.clone());
                std::thread::spawn(move || serve(stream, index, &*handler, &requests));
                index += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(stream: TcpStream, index: usize, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(request) = read_request(&stream, index) else { return };
    lock(requests).push(request.clone());
    let mut out = stream;
    match handler(&request) {
        Reply::Response(r) => {
            let _ = out.write_all(&r.to_bytes());
        }
        Reply::Raw(bytes) => {
            let _ = out.write_all(&bytes);
        }
        Reply::Stream(f) => f(&mut out),
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

fn read_request(stream: &TcpStream, index: usize) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut request = Request { method, target, headers, body: Vec::new(), index };
    let length: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    request.body = vec![0; length.min(MAX_BODY)];
    reader.read_exact(&mut request.body)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw client: the status and the body.
    fn ask(port: u16, request: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = String::from_utf8_lossy(&all[..at]).split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, all[at + 4..].to_vec())
    }

    #[test]
    fn requests_are_answered_by_the_handler_and_recorded() {
        let server = Server::start(|r| match r.path() {
            "/echo" => Response::ok(r.body.clone()).into(),
            "/range" => Response::ok(r.range_start().to_string()).into(),
            "/raw" => Reply::Raw(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "/half" => Reply::stream(|c| {
                let _ = c.write_all(Response::ok("0123456789").announce(20).to_bytes().as_slice());
            }),
            _ => Response::status(404).into(),
        })
        .unwrap();
        assert!(server.url().starts_with("http://127.0.0.1:"));
        let body = "{\"a\":1}";
        let post = format!("POST /echo?x=1 HTTP/1.1\r\nContent-Length: {}\r\nX-Test: yes\r\n\r\n{body}", body.len());
        assert_eq!(ask(server.port(), &post), (200, body.as_bytes().to_vec()));
        assert_eq!(ask(server.port(), "GET /range HTTP/1.1\r\nRange: bytes=42-\r\n\r\n"), (200, b"42".to_vec()));
        assert_eq!(ask(server.port(), "GET /raw HTTP/1.1\r\n\r\n").0, 204);
        assert_eq!(ask(server.port(), "GET /half HTTP/1.1\r\n\r\n"), (200, b"0123456789".to_vec()));
        assert_eq!(ask(server.port(), "GET /nope HTTP/1.1\r\n\r\n").0, 404);
        let seen = server.take_requests();
        assert_eq!(seen.len(), 5);
        assert_eq!((seen[0].method.as_str(), seen[0].path(), seen[0].target.as_str()), ("POST", "/echo", "/echo?x=1"));
        assert_eq!(seen[0].header("x-test"), Some("yes"));
        assert_eq!(seen[0].body, body.as_bytes());
        assert!(server.requests().is_empty());
    }

    #[test]
    fn a_dropped_server_refuses_connections() {
        let server = Server::start(|_| Response::ok("x").into()).unwrap();
        let port = server.port();
        drop(server);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(TcpStream::connect(("127.0.0.1", dead_port())).is_err());
    }
}
