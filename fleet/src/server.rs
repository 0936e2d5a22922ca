//! The fleet's HTTP server (`berth fleet serve`, and in-process in tests): FleetLock's
//! `POST /v1/pre-reboot` and `POST /v1/steady-state`, host reports on `POST /berth/v1/report`,
//! and `GET /berth/v1/health`, answered from a [`Store`]. The server keeps no state of its own,
//! so any number of replicas can serve one etcd-backed fleet.
//!
//! A small blocking HTTP/1.1 server ([`crate::http1`]) on `std::net::TcpListener`: a thread per
//! connection up to [`Config::max_connections`] (further connections wait in the kernel's
//! backlog), one request per connection (`Connection: close`), a read timeout, bodies of at
//! most [`MAX_BODY`]. Optional TLS (rustls, a PEM certificate chain and key) and an optional
//! bearer token (`Authorization: Bearer …`, compared in constant time). Answers follow the
//! wire contract `berth_release::fleet`: 200 with an empty body and the store's revision in
//! `berth-fleet-revision`, or an [`ErrorDoc`] whose kind is one of `berth_release::fleet::kind`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_release::artifact::Sha256;
use berth_release::fleet::{
    ClientParams, ErrorDoc, LockRequest, MAX_REPORT, PRE_REBOOT_PATH, PROTOCOL_HEADER, REPORT_PATH, ReportRequest,
    STEADY_STATE_PATH, check_group, check_id, check_report, kind, printable,
};
use berth_release::time::Timestamp;

use crate::http1::{self, Framing, Head, ReadError, Response};
use crate::{Store, StoreError};

/// `GET` (or `HEAD`): whether the server and its store answer; no token needed.
pub const HEALTH_PATH: &str = "/berth/v1/health";
/// The store's revision after a granted, released or reported request.
pub const REVISION_HEADER: &str = "berth-fleet-revision";
/// On `/v1/steady-state`: `true` when the host held a slot that is now free, `false` when it held none.
pub const RELEASED_HEADER: &str = "berth-fleet-released";
/// The largest request body taken.
pub const MAX_BODY: usize = 64 << 10;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (port 0: any free port, see [`Running::local_addr`]).
    pub listen: SocketAddr,
    /// The bearer token every FleetLock and report request must carry, if any.
    pub token: Option<Token>,
    /// TLS, if any.
    pub tls: Option<Tls>,
    /// Slots of groups made on first use, by group name.
    pub slots: BTreeMap<String, u32>,
    /// Slots of other groups made on first use.
    pub default_slots: u32,
    /// The most connections served at once.
    pub max_connections: usize,
    /// How long a connection may be silent while the server reads a request (and how long a
    /// write of the answer may block).
    pub read_timeout: Duration,
    /// How long reading a whole request may take, however it trickles in.
    pub request_timeout: Duration,
    /// How long [`Running::stop`] waits for requests in flight.
    pub grace: Duration,
    /// One line per request on stderr (answers of 500 and above are logged regardless).
    pub log: bool,
}

impl Config {
    /// Listening on `listen`, no token, no TLS, one slot per group, 256 connections, 10 s reads.
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            token: None,
            tls: None,
            slots: BTreeMap::new(),
            default_slots: 1,
            max_connections: 256,
            read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            log: false,
        }
    }

    /// The slots a group is made with.
    pub fn slots_of(&self, group: &str) -> u32 {
        self.slots.get(group).copied().unwrap_or(self.default_slots)
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The token file is unreadable or holds no usable token.
    #[error("token file {}: {why}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A thread could not be started.
    #[error("cannot start the server's thread: {0}")]
    Thread(io::Error),
}

/// A bearer token (never printed).
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// A token: 1 to 4096 visible ASCII characters (RFC 6750's `b68token` and a little more).
    pub fn new(token: &str) -> Result<Token, String> {
        let t = token.trim();
        if t.is_empty() || t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token must be 1 to 4096 visible ASCII characters (no spaces)".into());
        }
        Ok(Token { digest: digest(t.as_bytes()) })
    }

    /// The token in a file (surrounding whitespace and a final newline are ignored).
    pub fn from_file(path: &Path) -> Result<Token, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Token { path: path.to_path_buf(), why: e.to_string() })?;
        Token::new(&text).map_err(|why| ServerError::Token { path: path.to_path_buf(), why })
    }

    /// Whether an `Authorization` header carries this token. The comparison is of SHA-256
    /// digests, byte by byte without an early exit: neither the token's length nor a prefix
    /// leaks through timing.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some((scheme, given)) = authorization.and_then(|v| v.trim().split_once(' ')) else {
            return false;
        };
        let given = digest(given.trim().as_bytes());
        let same = given.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same & scheme.eq_ignore_ascii_case("bearer")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finish().0
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(hidden)")
    }
}

/// The server's TLS configuration: a certificate chain and its key.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ServerConfig>);

impl Tls {
    /// From PEM files: `cert` holds the server's certificate first, then any intermediates;
    /// `key` its private key (PKCS#8, PKCS#1 or SEC1). The key must match the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, ServerError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| ServerError::Tls(format!("certificate file {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(ServerError::Tls(format!("certificate file {} holds no CERTIFICATE", cert.display())));
        }
        let secret = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| ServerError::Tls(format!("key file {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, secret)
            .map_err(|e| ServerError::Tls(format!("certificate {} with key {}: {e}", cert.display(), key.display())))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls(Arc::new(config)))
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

/// A running server; stopped by [`Running::stop`] or when dropped.
pub struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    grace: Duration,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    active: Mutex<usize>,
    changed: Condvar,
}

impl Shared {
    fn active(&self) -> MutexGuard<'_, usize> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a connection in flight while it lives.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.active() -= 1;
        self.0.changed.notify_all();
    }
}

impl Running {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections being served now.
    pub fn in_flight(&self) -> usize {
        *self.shared.active()
    }

    /// Stops accepting, then waits up to the configured grace for requests in flight; returns
    /// how many were still in flight when it gave up (0 normally).
    pub fn stop(mut self) -> usize {
        self.shutdown()
    }

    fn shutdown(&mut self) -> usize {
        let Some(acceptor) = self.acceptor.take() else { return 0 };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // accept() blocks: a connection of our own wakes it to see the flag.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port()),
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = acceptor.join();
        let deadline = Instant::now() + self.grace;
        let mut active = self.shared.active();
        while *active > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            active =
                self.shared.changed.wait_timeout(active, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
        *active
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts serving `store` as `config` says; returns once the address is bound.
pub fn start(config: Config, store: Arc<dyn Store>) -> Result<Running, ServerError> {
    let listener =
        TcpListener::bind(config.listen).map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let shared = Arc::new(Shared::default());
    let grace = config.grace;
    let ctx = Arc::new(Ctx { config, store });
    let acceptor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("fleet-accept".into())
            .spawn(move || accept_loop(listener, ctx, shared))
            .map_err(ServerError::Thread)?
    };
    Ok(Running { addr, shared, acceptor: Some(acceptor), grace })
}

fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, shared: Arc<Shared>) {
    loop {
        {
            // At the cap, further connections wait in the backlog until one ends.
            let mut active = shared.active();
            while *active >= ctx.config.max_connections.max(1) && !shared.stopping.load(Ordering::SeqCst) {
                active = shared
                    .changed
                    .wait_timeout(active, Duration::from_secs(1))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // Out of descriptors and the like: pass, and let in-flight connections end.
                if ctx.config.log {
                    eprintln!("berth fleet: accept failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        *shared.active() += 1;
        let guard = InFlight(shared.clone());
        let conn_ctx = ctx.clone();
        let spawned = std::thread::Builder::new().name("fleet-conn".into()).spawn(move || {
            let _guard = guard;
            conn_ctx.serve(stream, peer);
        });
        if let Err(e) = spawned {
            // The closure (and with it the guard and the stream) is dropped: the count is right
            // and the client sees a closed connection.
            if ctx.config.log {
                eprintln!("berth fleet: cannot start a thread for {peer}: {e}");
            }
        }
    }
}

struct Ctx {
    config: Config,
    store: Arc<dyn Store>,
}

/// What the server answers and what it logs about it.
struct Answer {
    response: Response,
    who: Option<ClientParams>,
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer { response, who: None }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    PreReboot,
    SteadyState,
    Report,
    Health,
}

fn error(status: u16, kind: &str, value: impl Into<String>) -> Response {
    let doc = ErrorDoc { kind: kind.to_string(), value: value.into() };
    Response::json(status, serde_json::to_vec(&doc).unwrap_or_default())
}

fn invalid(value: impl Into<String>) -> Response {
    error(400, kind::INVALID_CLIENT_IDENTITY, value)
}

fn store_error(e: &StoreError) -> Response {
    let (status, kind) = store_status(e);
    let response = error(status, kind, e.to_string());
    if status == 503 { response.with("retry-after", "1") } else { response }
}

/// The status and kind a store failure is answered with.
fn store_status(e: &StoreError) -> (u16, &'static str) {
    match e {
        StoreError::Full { .. } => (409, kind::FAILED_LOCK),
        StoreError::Unavailable(_) => (503, kind::ETCD_UNAVAILABLE),
        StoreError::Conflict(_) => (503, kind::ETCD_CONFLICT),
        StoreError::Corrupt(_) => (500, kind::CORRUPT_SEMAPHORE),
        StoreError::Invalid(_) => (400, kind::INVALID_CLIENT_IDENTITY),
    }
}

fn revision(status: u16, revision: u64) -> Response {
    Response::empty(status).with(REVISION_HEADER, revision.to_string())
}

impl Ctx {
    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let stream = Timed {
            sock: stream,
            per_call: self.config.read_timeout,
            read_deadline: Instant::now() + self.config.request_timeout,
        };
        match &self.config.tls {
            None => {
                let mut stream = stream;
                if self.exchange(&mut stream, peer) {
                    linger(&stream.sock);
                }
            }
            Some(tls) => {
                let conn = match rustls::ServerConnection::new(tls.0.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        self.log(format_args!("{peer}: TLS: {e}"));
                        return;
                    }
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                if !self.exchange(&mut tls, peer) {
                    return;
                }
                tls.conn.send_close_notify();
                while tls.conn.wants_write() {
                    if tls.conn.write_tls(&mut tls.sock).is_err() {
                        break;
                    }
                }
                linger(&tls.sock.sock);
            }
        }
    }

    fn log(&self, line: fmt::Arguments<'_>) {
        if self.config.log {
            eprintln!("berth fleet: {line}");
        }
    }

    /// One request, one answer; whether there was one (not when the client went away or timed
    /// out: nothing is left to say, and the connection just closes).
    fn exchange<S: Read + Write>(&self, s: &mut S, peer: SocketAddr) -> bool {
        let started = Instant::now();
        let mut buf = Vec::new();
        let (answer, head) = match http1::read_head(s, &mut buf) {
            Ok(head) => match self.handle(&head, s, buf) {
                Some(answer) => (answer, Some(head)),
                None => return false,
            },
            Err(ReadError::Closed) => return false,
            Err(ReadError::Io(e)) => {
                self.log(format_args!("{peer}: no request: {e}"));
                return false;
            }
            Err(ReadError::Malformed(why)) => (invalid(why).into(), None),
            Err(ReadError::TooLarge(why)) => (error(413, kind::REQUEST_TOO_LARGE, why).into(), None),
        };
        let head_only = head.as_ref().is_some_and(|h| h.method == "HEAD");
        let written = answer.response.write_to(s, head_only);
        let sent = written.is_ok();
        // Store failures are the operator's business even when requests are not logged.
        if self.config.log || answer.response.status >= 500 {
            let request = head.as_ref().map_or("-".to_string(), |h| format!("{} {}", h.method, h.path));
            let who = answer.who.as_ref().map_or(String::new(), |w| format!(" {}/{}", w.group, w.id));
            let outcome = match serde_json::from_slice::<ErrorDoc>(&answer.response.body) {
                Ok(doc) => format!(" {}: {}", doc.kind, doc.value),
                Err(_) => answer.response.headers.iter().map(|(n, v)| format!(" {n}={v}")).collect::<String>(),
            };
            let failed = written.err().map_or(String::new(), |e| format!(" (answer not sent: {e})"));
            eprintln!(
                "berth fleet: {peer} {request}{who} -> {}{outcome} ({} ms){failed}",
                answer.response.status,
                started.elapsed().as_millis()
            );
        }
        sent
    }

    /// The answer to a request whose head was read; `None` when the body could not be read
    /// (the peer went away: nobody to answer).
    fn handle<S: Read + Write>(&self, head: &Head, s: &mut S, buf: Vec<u8>) -> Option<Answer> {
        let route = match head.path.as_str() {
            PRE_REBOOT_PATH => Route::PreReboot,
            STEADY_STATE_PATH => Route::SteadyState,
            REPORT_PATH => Route::Report,
            HEALTH_PATH => Route::Health,
            other => return Some(error(404, kind::NOT_FOUND, format!("no such path: {other}")).into()),
        };
        let allowed = if route == Route::Health { "GET, HEAD" } else { "POST" };
        if !allowed.split(", ").any(|m| m == head.method) {
            let why = format!("{} takes {allowed}, not {}", head.path, head.method);
            return Some(error(405, kind::METHOD_NOT_ALLOWED, why).with("allow", allowed).into());
        }
        if route == Route::Health {
            return Some(self.health().into());
        }
        if let Some(token) = &self.config.token
            && !token.accepts(head.header("authorization"))
        {
            let why = if head.header("authorization").is_some() {
                "the bearer token is not this server's"
            } else {
                "this server requires a bearer token (Authorization: Bearer …)"
            };
            let response = error(401, kind::UNAUTHORIZED, why).with("www-authenticate", "Bearer realm=\"berth fleet\"");
            return Some(response.into());
        }
        match head.header(PROTOCOL_HEADER) {
            Some(v) if v.eq_ignore_ascii_case("true") => {}
            Some(v) => return Some(invalid(format!("the header {PROTOCOL_HEADER} is {v:?}, not \"true\"")).into()),
            None => return Some(invalid(format!("the header {PROTOCOL_HEADER}: true is missing")).into()),
        }
        let framing = match http1::framing(head) {
            Ok(f) => f,
            Err(ReadError::Malformed(why)) => return Some(invalid(why).into()),
            Err(other) => return Some(invalid(format!("{other:?}")).into()),
        };
        if let Framing::Length(n) = framing
            && n > MAX_BODY as u64
        {
            let why = format!("a body of {n} bytes (at most {MAX_BODY})");
            return Some(error(413, kind::REQUEST_TOO_LARGE, why).into());
        }
        if head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").and_then(|()| s.flush()).is_err()
        {
            return None;
        }
        let body = match http1::read_body(s, framing, buf, MAX_BODY) {
            Ok(body) => body,
            Err(ReadError::Malformed(why)) => return Some(invalid(why).into()),
            Err(ReadError::TooLarge(why)) => return Some(error(413, kind::REQUEST_TOO_LARGE, why).into()),
            Err(ReadError::Closed | ReadError::Io(_)) => return None,
        };
        Some(match route {
            Route::PreReboot | Route::SteadyState => match lock_request(&body) {
                Ok(who) => {
                    let response =
                        if route == Route::PreReboot { self.pre_reboot(&who) } else { self.steady_state(&who) };
                    Answer { response, who: Some(who) }
                }
                Err(response) => response.into(),
            },
            Route::Report => self.report(&body),
            Route::Health => self.health().into(),
        })
    }

    fn pre_reboot(&self, who: &ClientParams) -> Response {
        let slots = self.config.slots_of(&who.group);
        match self.store.pre_reboot(&who.group, &who.id, slots, Timestamp::now()) {
            Ok(grant) => revision(200, grant.revision),
            Err(e) => store_error(&e),
        }
    }

    fn steady_state(&self, who: &ClientParams) -> Response {
        match self.store.steady_state(&who.group, &who.id) {
            Ok(released) => revision(200, released.revision).with(RELEASED_HEADER, released.was_held.to_string()),
            Err(e) => store_error(&e),
        }
    }

    fn report(&self, body: &[u8]) -> Answer {
        let request: ReportRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the body is not a host report ({{\"client_params\":…,\"report\":…}}): {e}");
                return invalid(why).into();
            }
        };
        let who = request.client_params;
        if let Err(why) = check_id(&who.id).and_then(|()| check_group(&who.group)) {
            return Answer { response: invalid(why), who: Some(who) };
        }
        // What `berth fleet status` prints: nothing that reaches a terminal as an escape or a line.
        if let Err(why) = check_report(&request.report) {
            return Answer { response: invalid(why), who: Some(who) };
        }
        let mut report = request.report;
        report.last_error = report.last_error.as_deref().map(printable);
        if let Some(f) = &mut report.fleetlock {
            f.value = printable(&f.value);
        }
        let size = serde_json::to_vec(&report).map_or(usize::MAX, |v| v.len());
        if size > MAX_REPORT {
            let why = format!("a report of {size} bytes (at most {MAX_REPORT})");
            return Answer { response: error(413, kind::REQUEST_TOO_LARGE, why), who: Some(who) };
        }
        let response = match self.store.report(&who, &report, Timestamp::now()) {
            Ok(rev) => revision(200, rev),
            Err(e) => store_error(&e),
        };
        Answer { response, who: Some(who) }
    }

    fn health(&self) -> Response {
        match self.store.health() {
            Ok(rev) => {
                let body = serde_json::json!({ "status": "ok", "revision": rev });
                Response::json(200, serde_json::to_vec(&body).unwrap_or_default())
                    .with(REVISION_HEADER, rev.to_string())
            }
            // The health path needs no token: its answer names no etcd endpoint and repeats
            // no etcd message (the log has them).
            Err(e) => {
                eprintln!("berth fleet: health: {e}");
                let (status, kind) = store_status(&e);
                let response = error(status, kind, "the fleet's store does not answer (the server's log says why)");
                if status == 503 { response.with("retry-after", "1") } else { response }
            }
        }
    }
}

/// A FleetLock request's client params, checked.
fn lock_request(body: &[u8]) -> Result<ClientParams, Response> {
    let request: LockRequest = serde_json::from_slice(body).map_err(|e| {
        invalid(format!("the body is not a FleetLock request ({{\"client_params\":{{\"id\",\"group\"}}}}): {e}"))
    })?;
    let who = request.client_params;
    check_id(&who.id).and_then(|()| check_group(&who.group)).map_err(invalid)?;
    Ok(who)
}

/// A connection whose every read and write waits at most the read timeout, and whose reads
/// end at a deadline: a client trickling a byte at a time cannot hold a connection (and its
/// thread) for long. Writes have no deadline: an answer after a slow store call still goes out.
struct Timed {
    sock: TcpStream,
    per_call: Duration,
    read_deadline: Instant,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.read_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the request took too long to arrive"));
        }
        self.sock.set_read_timeout(Some(left.min(self.per_call)))?;
        self.sock.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.per_call))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Closes a connection so the answer arrives: a client still sending a body the server did
/// not read (a refused upload) would otherwise get a reset that can destroy the answer in
/// flight. Reads what comes for at most a second.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut total = 0usize;
    let mut reader = stream;
    while total < 4 * MAX_BODY && Instant::now() < deadline {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests;
