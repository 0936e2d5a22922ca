//! The server against the in-memory store (and a store that fails as told): every status and
//! kind it answers with, the header, body, token and size checks, TLS, the connection cap and
//! a graceful stop. Requests are written byte by byte on sockets, so what is tested is what a
//! client sends.

use std::sync::atomic::AtomicUsize;

use berth_release::fleet::HostReport;

use super::*;
use crate::memory::MemoryStore;
use crate::{Grant, Released, Snapshot};

/// An answer as read off the wire.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn doc(&self) -> ErrorDoc {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn revision(&self) -> u64 {
        self.header(REVISION_HEADER).unwrap_or_else(|| panic!("no revision: {self:?}")).parse().unwrap()
    }
}

fn parse_answer(raw: &[u8]) -> Got {
    let mut raw = raw;
    // Skip interim answers (100 Continue).
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("no answer: {other:?} in {:?}", String::from_utf8_lossy(raw)),
        };
        let status = resp.code.unwrap();
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).to_string()))
            .collect();
        if status == 100 {
            raw = &raw[len..];
            continue;
        }
        let body = raw[len..].to_vec();
        let length: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
        assert_eq!(body.len(), length, "{:?}", String::from_utf8_lossy(raw));
        return Got { status, headers, body };
    }
}

fn send(addr: SocketAddr, raw: &[u8]) -> Got {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_answer(&out)
}

fn request(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: fleet\r\nfleet-lock-protocol: true\r\n{extra}content-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn lock_body(id: &str, group: &str) -> String {
    serde_json::json!({"client_params": {"id": id, "group": group}}).to_string()
}

fn lock(addr: SocketAddr, path: &str, id: &str, group: &str) -> Got {
    send(addr, &request(path, "", &lock_body(id, group)))
}

fn server_with(store: Arc<dyn Store>, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    start(config, store).unwrap()
}

fn server(tweak: impl FnOnce(&mut Config)) -> (Running, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    (server_with(store.clone(), tweak), store)
}

fn report(hostname: &str) -> HostReport {
    HostReport {
        schema: 1,
        hostname: hostname.into(),
        version: "1.1.0".into(),
        slot: "b".into(),
        state: "idle".into(),
        staged: None,
        available: None,
        last_check: None,
        last_error: None,
        rolled_back: Vec::new(),
        fleetlock: None,
        interval_seconds: 60,
        jitter_seconds: 0,
        sent: Timestamp(1_796_000_000),
    }
}

#[test]
fn slots_are_granted_refused_with_their_holders_and_freed() {
    let (srv, _store) = server(|c| {
        c.slots.insert("workers".into(), 2);
    });
    let addr = srv.local_addr();
    let a = lock(addr, PRE_REBOOT_PATH, "host-a", "workers");
    assert_eq!((a.status, a.body.len()), (200, 0), "{a:?}");
    let b = lock(addr, PRE_REBOOT_PATH, "host-b", "workers");
    assert_eq!(b.status, 200);
    assert!(b.revision() > a.revision());
    let c = lock(addr, PRE_REBOOT_PATH, "host-c", "workers");
    assert_eq!(c.status, 409, "{c:?}");
    let doc = c.doc();
    assert_eq!(doc.kind, "failed_lock");
    assert!(doc.value.starts_with("all 2 reboot slots of group workers are held: host-a since 20"), "{}", doc.value);
    assert!(doc.value.contains(", host-b since "), "{}", doc.value);
    // Recursive: a holder asking again is granted and nothing changes.
    let again = lock(addr, PRE_REBOOT_PATH, "host-a", "workers");
    assert_eq!((again.status, again.revision()), (200, b.revision()));
    let freed = lock(addr, STEADY_STATE_PATH, "host-a", "workers");
    assert_eq!((freed.status, freed.header(RELEASED_HEADER)), (200, Some("true")), "{freed:?}");
    assert!(freed.revision() > b.revision());
    let none = lock(addr, STEADY_STATE_PATH, "host-a", "workers");
    assert_eq!((none.status, none.header(RELEASED_HEADER)), (200, Some("false")));
    assert_eq!(none.revision(), freed.revision());
    assert_eq!(lock(addr, PRE_REBOOT_PATH, "host-c", "workers").status, 200);
    // Another group gets the default slot count: one.
    assert_eq!(lock(addr, PRE_REBOOT_PATH, "x", "db").status, 200);
    assert_eq!(lock(addr, PRE_REBOOT_PATH, "y", "db").status, 409);
}

#[test]
fn requests_outside_the_protocol_are_refused_with_their_kind() {
    let (srv, store) = server(|_| {});
    let addr = srv.local_addr();
    let body = lock_body("h", "g");
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            format!("POST /v1/pre-reboot HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(),
            400,
            "invalid_client_identity",
            "fleet-lock-protocol: true is missing",
        ),
        (
            format!(
                "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: yes\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            400,
            "invalid_client_identity",
            "\"yes\"",
        ),
        (request(PRE_REBOOT_PATH, "", "{not json"), 400, "invalid_client_identity", "not a FleetLock request"),
        (request(PRE_REBOOT_PATH, "", r#"{"client_params":{"id":"h"}}"#), 400, "invalid_client_identity", "group"),
        (request(PRE_REBOOT_PATH, "", &lock_body("a/b", "g")), 400, "invalid_client_identity", "id \"a/b\""),
        (request(STEADY_STATE_PATH, "", &lock_body("h", "a b")), 400, "invalid_client_identity", "group \"a b\""),
        (request(PRE_REBOOT_PATH, "", &lock_body(&"x".repeat(129), "g")), 400, "invalid_client_identity", "id"),
        (request("/v1/other", "", &body), 404, "not_found", "/v1/other"),
        (b"GET /v1/pre-reboot HTTP/1.1\r\n\r\n".to_vec(), 405, "method_not_allowed", "takes POST, not GET"),
        (b"POST /berth/v1/health HTTP/1.1\r\n\r\n".to_vec(), 405, "method_not_allowed", "GET, HEAD"),
        (
            b"POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\ncontent-length: 70000\r\n\r\n".to_vec(),
            413,
            "request_too_large",
            "70000 bytes",
        ),
        (b"HELLO\r\n\r\n".to_vec(), 400, "invalid_client_identity", "not an HTTP/1.1 request"),
        (
            b"POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\ncontent-length: 2\r\n\
              transfer-encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
            "invalid_client_identity",
            "both Transfer-Encoding and Content-Length",
        ),
    ];
    for (raw, status, kind, words) in cases {
        let got = send(addr, &raw);
        assert_eq!(got.status, status, "{:?}: {got:?}", String::from_utf8_lossy(&raw));
        let doc = got.doc();
        assert_eq!((got.status, doc.kind.as_str()), (status, kind), "{:?}: {doc:?}", String::from_utf8_lossy(&raw));
        assert!(doc.value.contains(words), "{:?}: {:?} lacks {words:?}", String::from_utf8_lossy(&raw), doc.value);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(got.header("connection"), Some("close"));
        if status == 405 {
            assert!(got.header("allow").is_some());
        }
    }
    // An oversized body sent whole still gets its answer (the server drains before closing).
    let big = "x".repeat(200 << 10);
    let got = send(addr, &request(PRE_REBOOT_PATH, "", &big));
    assert_eq!((got.status, got.doc().kind.as_str()), (413, "request_too_large"));
    // An oversized chunked body too.
    let chunked = format!(
        "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_eq!(send(addr, chunked.as_bytes()).status, 413);
    // Nothing refused reached the store.
    assert_eq!(store.health().unwrap(), 0);
    assert!(store.snapshot(Timestamp(0)).unwrap().groups.is_empty());
}

#[test]
fn chunked_bodies_expect_continue_and_health_are_served() {
    let (srv, _store) = server(|_| {});
    let addr = srv.local_addr();
    let body = lock_body("h", "g");
    let chunked = format!(
        "POST /v1/pre-reboot HTTP/1.1\r\nfleet-lock-protocol: true\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    assert_eq!(send(addr, chunked.as_bytes()).status, 200);
    // curl sends Expect: 100-continue for larger bodies and waits for the interim answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/steady-state HTTP/1.1\r\nfleet-lock-protocol: true\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let got = parse_answer(&out);
    assert_eq!((got.status, got.header(RELEASED_HEADER)), (200, Some("true")));
    let health = send(addr, b"GET /berth/v1/health HTTP/1.1\r\n\r\n");
    assert_eq!(health.status, 200);
    let doc: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["revision"].as_u64(), Some(got.revision()));
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"HEAD /berth/v1/health?probe=1 HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\n"), "{out:?}");
}

#[test]
fn a_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-Token_1\n").unwrap();
    let token = Token::from_file(&file).unwrap();
    assert_eq!(format!("{token:?}"), "Token(hidden)");
    let (srv, _store) = server(|c| c.token = Some(token));
    let addr = srv.local_addr();
    let body = lock_body("h", "g");
    for (auth, why) in [
        ("", "requires a bearer token"),
        ("authorization: Bearer s3cret-Token_2\r\n", "is not this server's"),
        ("authorization: Bearer s3cret-Token_\r\n", "is not this server's"),
        ("authorization: Basic s3cret-Token_1\r\n", "is not this server's"),
        ("authorization: s3cret-Token_1\r\n", "is not this server's"),
    ] {
        let got = send(addr, &request(PRE_REBOOT_PATH, auth, &body));
        assert_eq!((got.status, got.doc().kind.as_str()), (401, "unauthorized"), "{auth:?}");
        assert!(got.doc().value.contains(why), "{auth:?}: {:?}", got.doc());
        assert_eq!(got.header("www-authenticate"), Some("Bearer realm=\"berth fleet\""));
    }
    // Without the header the token is still checked first: nothing about the request leaks.
    let got = send(addr, b"POST /v1/pre-reboot HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(got.status, 401);
    for auth in ["authorization: Bearer s3cret-Token_1\r\n", "authorization: bearer  s3cret-Token_1 \r\n"] {
        assert_eq!(send(addr, &request(PRE_REBOOT_PATH, auth, &body)).status, 200, "{auth:?}");
    }
    // Health is open: load balancers probe it without credentials.
    assert_eq!(send(addr, b"GET /berth/v1/health HTTP/1.1\r\n\r\n").status, 200);
    // Unusable token files are refused with the file's name.
    std::fs::write(&file, " \n").unwrap();
    let e = Token::from_file(&file).unwrap_err().to_string();
    assert!(e.contains("token") && e.contains("visible ASCII"), "{e}");
    std::fs::write(&file, "two words").unwrap();
    assert!(Token::from_file(&file).is_err());
    let e = Token::from_file(&dir.path().join("absent")).unwrap_err().to_string();
    assert!(e.contains("absent"), "{e}");
}

#[test]
fn reports_are_kept_and_oversized_ones_refused() {
    let (srv, store) = server(|_| {});
    let addr = srv.local_addr();
    let r = ReportRequest {
        client_params: ClientParams { id: "h1".into(), group: "workers".into() },
        report: report("node-1"),
    };
    let got = send(addr, &request(REPORT_PATH, "", &serde_json::to_string(&r).unwrap()));
    assert_eq!((got.status, got.body.len()), (200, 0), "{got:?}");
    let snap = store.snapshot(Timestamp::now()).unwrap();
    assert_eq!(snap.revision, got.revision());
    assert_eq!(snap.hosts.len(), 1);
    assert_eq!(
        (snap.hosts[0].client_params.clone(), snap.hosts[0].report.clone()),
        (r.client_params.clone(), r.report.clone())
    );
    let mut big = report("node-2");
    big.last_error = Some("e".repeat(MAX_REPORT));
    let big = ReportRequest { client_params: r.client_params.clone(), report: big };
    let got = send(addr, &request(REPORT_PATH, "", &serde_json::to_string(&big).unwrap()));
    assert_eq!((got.status, got.doc().kind.as_str()), (413, "request_too_large"), "{got:?}");
    let got = send(addr, &request(REPORT_PATH, "", r#"{"client_params":{"id":"h","group":"g"}}"#));
    assert_eq!((got.status, got.doc().kind.as_str()), (400, "invalid_client_identity"));
    assert!(got.doc().value.contains("report"), "{:?}", got.doc());
    let bad_id = ReportRequest { client_params: ClientParams { id: "a b".into(), group: "g".into() }, ..r };
    assert_eq!(send(addr, &request(REPORT_PATH, "", &serde_json::to_string(&bad_id).unwrap())).status, 400);
    assert_eq!(store.snapshot(Timestamp::now()).unwrap().hosts.len(), 1);
}

/// A report whose hostname or short fields could carry a terminal escape or a forged line is
/// refused; control characters in its free text are replaced before it is stored.
#[test]
fn report_text_that_would_reach_a_terminal_raw_is_refused_or_replaced() {
    let (srv, store) = server(|_| {});
    let addr = srv.local_addr();
    let who = ClientParams { id: "h1".into(), group: "workers".into() };
    let post = |report: HostReport| {
        let r = ReportRequest { client_params: who.clone(), report };
        send(addr, &request(REPORT_PATH, "", &serde_json::to_string(&r).unwrap()))
    };
    for bad in [
        HostReport { hostname: "node\u{1b}]0;owned\u{7}".into(), ..report("x") },
        HostReport { hostname: "node-1\nREBOOT SLOTS".into(), ..report("x") },
        HostReport { version: "1.0\u{1b}[2J".into(), ..report("node-1") },
        HostReport { state: "idle\nSILENT".into(), ..report("node-1") },
        HostReport { slot: "b".repeat(129), ..report("node-1") },
    ] {
        let got = post(bad);
        assert_eq!((got.status, got.doc().kind.as_str()), (400, "invalid_client_identity"), "{got:?}");
    }
    assert!(store.snapshot(Timestamp::now()).unwrap().hosts.is_empty());
    let mut r = report("node-1");
    r.last_error = Some("failed\u{1b}[31m\nREBOOT SLOTS".into());
    r.fleetlock = Some(ErrorDoc { kind: "failed_lock".into(), value: "held\u{9b}2J".into() });
    assert_eq!(post(r).status, 200);
    let kept = store.snapshot(Timestamp::now()).unwrap().hosts[0].report.clone();
    assert_eq!(kept.last_error.as_deref(), Some("failed\u{fffd}[31m REBOOT SLOTS"));
    assert_eq!(kept.fleetlock.map(|f| f.value), Some("held\u{fffd}2J".into()));
}

/// A store that fails every call as told.
struct Failing(StoreError);

impl Store for Failing {
    fn pre_reboot(&self, _: &str, _: &str, _: u32, _: Timestamp) -> Result<Grant, StoreError> {
        Err(self.0.clone())
    }
    fn steady_state(&self, _: &str, _: &str) -> Result<Released, StoreError> {
        Err(self.0.clone())
    }
    fn report(&self, _: &ClientParams, _: &HostReport, _: Timestamp) -> Result<u64, StoreError> {
        Err(self.0.clone())
    }
    fn health(&self) -> Result<u64, StoreError> {
        Err(self.0.clone())
    }
    fn snapshot(&self, _: Timestamp) -> Result<Snapshot, StoreError> {
        Err(self.0.clone())
    }
    fn set_slots(&self, _: &str, _: u32) -> Result<u64, StoreError> {
        Err(self.0.clone())
    }
}

#[test]
fn store_failures_have_their_status_and_kind() {
    for (error, status, kind, words) in [
        (
            StoreError::Unavailable("http://127.0.0.1:2379: connection refused".into()),
            503,
            "etcd_unavailable",
            "127.0.0.1:2379",
        ),
        (StoreError::Conflict("16 tries on group g".into()), 503, "etcd_conflict", "16 tries"),
        (
            StoreError::Corrupt("berth.fleet/v1/groups/g/semaphore: expected value".into()),
            500,
            "corrupt_semaphore",
            "semaphore",
        ),
    ] {
        let srv = server_with(Arc::new(Failing(error)), |_| {});
        let addr = srv.local_addr();
        let r =
            ReportRequest { client_params: ClientParams { id: "h".into(), group: "g".into() }, report: report("n") };
        for raw in [
            request(PRE_REBOOT_PATH, "", &lock_body("h", "g")),
            request(STEADY_STATE_PATH, "", &lock_body("h", "g")),
            request(REPORT_PATH, "", &serde_json::to_string(&r).unwrap()),
            b"GET /berth/v1/health HTTP/1.1\r\n\r\n".to_vec(),
        ] {
            let got = send(addr, &raw);
            let doc = got.doc();
            assert_eq!((got.status, doc.kind.as_str()), (status, kind), "{:?}", String::from_utf8_lossy(&raw));
            // The health path, which needs no token, keeps the store's detail to the log.
            if raw.starts_with(b"GET /berth/v1/health") {
                assert!(!doc.value.contains(words) && doc.value.contains("the server's log"), "{doc:?}");
            } else {
                assert!(doc.value.contains(words), "{doc:?}");
            }
            assert_eq!(got.header("retry-after").is_some(), status == 503);
        }
    }
}

#[test]
fn twenty_clients_never_hold_more_than_two_slots() {
    let (srv, store) = server(|c| {
        c.slots.insert("race".into(), 2);
    });
    let addr = srv.local_addr();
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (holding, most) = (holding.clone(), most.clone());
            std::thread::spawn(move || {
                let id = format!("c{i:02}");
                for _ in 0..3 {
                    loop {
                        let got = lock(addr, PRE_REBOOT_PATH, &id, "race");
                        if got.status == 200 {
                            break;
                        }
                        assert_eq!(got.doc().kind, "failed_lock");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(now <= 2, "{now} holders");
                    std::thread::sleep(Duration::from_millis(3));
                    holding.fetch_sub(1, Ordering::SeqCst);
                    let got = lock(addr, STEADY_STATE_PATH, &id, "race");
                    assert_eq!((got.status, got.header(RELEASED_HEADER)), (200, Some("true")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 2);
    let snap = store.snapshot(Timestamp::now()).unwrap();
    assert!(snap.groups[0].1.holders.is_empty());
    // 60 grants and 60 releases, each one revision.
    assert_eq!(snap.revision, 120);
}

/// A store whose lock takes its time: a request in flight during a stop.
struct Slow(MemoryStore, Duration);

impl Store for Slow {
    fn pre_reboot(&self, g: &str, id: &str, slots: u32, now: Timestamp) -> Result<Grant, StoreError> {
        std::thread::sleep(self.1);
        self.0.pre_reboot(g, id, slots, now)
    }
    fn steady_state(&self, g: &str, id: &str) -> Result<Released, StoreError> {
        self.0.steady_state(g, id)
    }
    fn report(&self, w: &ClientParams, r: &HostReport, now: Timestamp) -> Result<u64, StoreError> {
        self.0.report(w, r, now)
    }
    fn health(&self) -> Result<u64, StoreError> {
        self.0.health()
    }
    fn snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError> {
        self.0.snapshot(now)
    }
    fn set_slots(&self, g: &str, n: u32) -> Result<u64, StoreError> {
        self.0.set_slots(g, n)
    }
}

#[test]
fn a_stop_finishes_requests_in_flight_then_refuses_connections() {
    let srv = server_with(Arc::new(Slow(MemoryStore::new(), Duration::from_millis(400))), |_| {});
    let addr = srv.local_addr();
    let client = std::thread::spawn(move || lock(addr, PRE_REBOOT_PATH, "h", "g"));
    while srv.in_flight() == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    assert_eq!(srv.stop(), 0);
    assert!(started.elapsed() >= Duration::from_millis(200), "stop did not wait: {:?}", started.elapsed());
    assert_eq!(client.join().unwrap().status, 200);
    let refused = TcpStream::connect(addr);
    assert!(refused.is_err(), "still listening");
}

#[test]
fn connections_beyond_the_cap_wait_and_silent_ones_time_out() {
    let (srv, _store) = server(|c| {
        c.max_connections = 1;
        c.read_timeout = Duration::from_millis(300);
    });
    let addr = srv.local_addr();
    // A connection that sends nothing holds the only place until its read times out.
    let idle = TcpStream::connect(addr).unwrap();
    while srv.in_flight() == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let got = lock(addr, PRE_REBOOT_PATH, "h", "g");
    assert_eq!(got.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    let mut rest = Vec::new();
    (&idle).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the silent connection got {rest:?}");
}

#[test]
fn a_request_trickling_in_is_cut_off_at_the_request_timeout() {
    let (srv, _store) = server(|c| {
        c.read_timeout = Duration::from_millis(300);
        c.request_timeout = Duration::from_millis(800);
    });
    let mut s = TcpStream::connect(srv.local_addr()).unwrap();
    let started = Instant::now();
    // A byte every 100 ms: each read is quick, the whole never arrives.
    let mut cut = None;
    for b in b"POST /v1/pre-reboot HTTP/1.1\r\nx-slow: ".iter().chain(std::iter::repeat_n(&b'a', 100)) {
        if s.write_all(&[*b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = cut.expect("the server never cut the connection");
    assert!(cut >= Duration::from_millis(700) && cut < Duration::from_secs(3), "cut after {cut:?}");
    while srv.in_flight() > 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the connection's thread lives on");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn tls_serves_with_a_pem_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls = Tls::from_pem_files(&cert, &key).unwrap();
    let (srv, _store) = server(|c| c.tls = Some(tls));
    let addr = srv.local_addr();

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    for name in ["localhost", "127.0.0.1"] {
        let conn = rustls::ClientConnection::new(client.clone(), name.to_string().try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        s.write_all(&request(PRE_REBOOT_PATH, "", &lock_body("h", "g"))).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let got = parse_answer(&out);
        assert_eq!(got.status, 200, "{name}: {got:?}");
    }
    // Plain HTTP on the TLS port: no HTTP answer, the connection closes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(PRE_REBOOT_PATH, "", &lock_body("h", "g"))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&out));
    // A key that is not the certificate's is refused at start, naming both files.
    let other = dir.path().join("other.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let e = Tls::from_pem_files(&cert, &other).unwrap_err().to_string();
    assert!(e.contains("cert.pem") && e.contains("other.pem"), "{e}");
    let e = Tls::from_pem_files(&key, &key).unwrap_err().to_string();
    assert!(e.contains("no CERTIFICATE"), "{e}");
}
