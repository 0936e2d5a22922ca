//! `berth fleet` end to end, as operators run it: real etcd (Debian's `/usr/bin/etcd`, started
//! on 127.0.0.1 by `berth_testkit::etcd`), `berth fleet serve` processes, clients speaking plain
//! HTTP/1.1 on sockets (the protocol's header and body, nothing borrowed from the server).
//!
//! - [`two_replicas_twenty_clients_two_slots_through_kills`] (issue 20's Must-show): two
//!   replicas, 20 clients racing for a group of 2 slots, 3 rounds each, while one replica is
//!   killed with SIGKILL and restarted and etcd is killed with SIGKILL and restarted; never more
//!   than 2 holders, checked from etcd's own revision history (every version of the semaphore
//!   key), and every hold freed by its own client's steady-state: no holder lost, none freed by
//!   another.
//! - [`unlock_frees_a_host_that_never_returns`]: status (human and `--json`), unlock by
//!   hostname, slots, forget, reports shown.
//! - [`token_tls_and_a_graceful_stop`]: HTTPS with an `openssl req -x509` certificate, judged
//!   by `openssl s_client` verifying it; 401 without and with a wrong token; SIGTERM exits 0.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_fleet::history;
use berth_fleet::status::FleetStatus;
use berth_release::fleet::{ClientParams, HostReport, ReportRequest};
use berth_release::time::Timestamp;
use berth_testkit::etcd::Etcd;
use common::text;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const PREFIX: &str = "berth.fleet/v1";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An answer off the wire.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Got {
    fn revision(&self) -> u64 {
        self.headers["berth-fleet-revision"].parse().unwrap()
    }

    fn kind(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"));
        v["kind"].as_str().unwrap().to_string()
    }

    fn value(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        v["value"].as_str().unwrap().to_string()
    }
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Got> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{why}: {:?}", text(raw)));
    let raw = text(raw);
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| bad("no head"))?;
    let mut lines = head.split("\r\n");
    let status =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Got { status, headers, body: body.to_string() })
}

/// One request on a fresh connection; transport failures are errors (the caller switches).
fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<Got> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nfleet-lock-protocol: true\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    parse_answer(&out)
}

fn lock_body(id: &str, group: &str) -> String {
    serde_json::json!({"client_params": {"id": id, "group": group}}).to_string()
}

fn lock(addr: SocketAddr, path: &str, id: &str, group: &str) -> Got {
    post(addr, path, &lock_body(id, group)).unwrap()
}

fn report(addr: SocketAddr, id: &str, group: &str, hostname: &str) -> Got {
    let r = ReportRequest {
        client_params: ClientParams { id: id.into(), group: group.into() },
        report: HostReport {
            schema: 1,
            hostname: hostname.into(),
            version: "1.2.0".into(),
            slot: "b".into(),
            state: "rebooting".into(),
            staged: None,
            available: Some("1.2.0".into()),
            last_check: Some(Timestamp::now()),
            last_error: None,
            rolled_back: Vec::new(),
            fleetlock: None,
            interval_seconds: 3600,
            jitter_seconds: 0,
            sent: Timestamp::now(),
        },
    };
    post(addr, "/berth/v1/report", &serde_json::to_string(&r).unwrap()).unwrap()
}

/// A `berth fleet serve` process on a fixed port (so a restart comes back where clients look).
struct Replica {
    args: Vec<String>,
    addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Replica {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut r = Replica {
            args: args.iter().map(|s| s.to_string()).collect(),
            addr,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        r.launch();
        r
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(BERTH)
            .args(["fleet", "serve", "--listen", &self.addr.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log().contains(&format!("serving FleetLock and reports on http://{}", self.addr))
                || self.log().contains(&format!("serving FleetLock and reports on https://{}", self.addr))
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth fleet serve exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "berth fleet serve did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to finish anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, and its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        rustix::process::kill_process(rustix::process::Pid::from_child(&c), rustix::process::Signal::TERM).unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn berth<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> std::process::Output {
    Command::new(BERTH).args(args).output().unwrap()
}

fn berth_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = berth(args);
    assert!(out.status.success(), "berth {args:?}: {}\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// What one client saw in one round.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// The revision its granted pre-reboot answered with.
    granted: u64,
    /// The revision its steady-state answered with.
    released: u64,
    /// The steady-state said it freed the slot (false: a retry after an answer that was lost).
    freed_by_this_answer: bool,
}

#[derive(Default)]
struct Tally {
    transport_errors: AtomicUsize,
    unavailable: AtomicUsize,
    full: AtomicUsize,
}

/// One client: `rounds` times lock → hold → unlock, alternating replicas, switching on
/// transport errors, retrying 409 and 503.
#[allow(clippy::too_many_arguments)]
fn client(
    i: usize,
    replicas: [SocketAddr; 2],
    rounds: usize,
    holding: &AtomicUsize,
    most: &AtomicUsize,
    grants: &AtomicUsize,
    tally: &Tally,
    deadline: Instant,
) -> Vec<Round> {
    let id = format!("c{i:02}");
    let mut next = i % 2;
    let rng = std::cell::Cell::new((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let rand = |lo: u64, hi: u64| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        lo + x % (hi - lo)
    };
    // Until 200: the answer. Any other status must be one the server is allowed to give here.
    let mut ask = |path: &str| -> Got {
        loop {
            assert!(Instant::now() < deadline, "{id}: out of time on {path}");
            let addr = replicas[next];
            next = 1 - next;
            match post(addr, path, &lock_body(&id, "race")) {
                Ok(got) if got.status == 200 => return got,
                Ok(got) => {
                    match (got.status, got.kind().as_str()) {
                        (409, "failed_lock") => tally.full.fetch_add(1, Ordering::Relaxed),
                        (503, "etcd_unavailable" | "etcd_conflict") => {
                            tally.unavailable.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("{id} {path}: unexpected {other:?}: {got:?}"),
                    };
                    std::thread::sleep(Duration::from_millis(rand(5, 20)));
                }
                Err(_) => {
                    tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(rand(5, 20)));
                }
            }
        }
    };
    let mut out = Vec::new();
    for _ in 0..rounds {
        let granted = ask("/v1/pre-reboot").revision();
        grants.fetch_add(1, Ordering::SeqCst);
        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        assert!(now <= 2, "{id}: {now} clients hold a slot at once");
        std::thread::sleep(Duration::from_millis(rand(50, 150)));
        holding.fetch_sub(1, Ordering::SeqCst);
        let got = ask("/v1/steady-state");
        out.push(Round {
            granted,
            released: got.revision(),
            freed_by_this_answer: got.headers["berth-fleet-released"] == "true",
        });
    }
    out
}

#[test]
fn two_replicas_twenty_clients_two_slots_through_kills() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start();
    let url = etcd.url();
    let args = ["--etcd", url.as_str(), "--slots", "race=2"];
    let mut one = Replica::start(dir.path(), "replica-1", &args);
    let two = Replica::start(dir.path(), "replica-2", &args);
    let replicas = [one.addr, two.addr];

    const CLIENTS: usize = 20;
    const ROUNDS: usize = 3;
    let holding = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (holding, most, grants, tally) = (holding.clone(), most.clone(), grants.clone(), tally.clone());
            std::thread::spawn(move || client(i, replicas, ROUNDS, &holding, &most, &grants, &tally, deadline))
        })
        .collect();

    // Mid-run, by progress (not by the clock, so a slow machine still kills mid-run): replica 1
    // is killed and restarted, then etcd is killed and restarted.
    let wait_for = |n: usize| {
        while grants.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the clients stalled at {} grants", grants.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(8);
    one.kill();
    let replica_killed_at = grants.load(Ordering::SeqCst);
    let held_at_replica_kill = holding.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    one.launch();
    wait_for(25);
    etcd.kill();
    let etcd_killed_at = grants.load(Ordering::SeqCst);
    let held_at_etcd_kill = holding.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart();
    let etcd_back_at = grants.load(Ordering::SeqCst);

    let rounds: Vec<Vec<Round>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let run_time = started.elapsed();
    assert!(replica_killed_at < CLIENTS * ROUNDS && etcd_back_at < CLIENTS * ROUNDS, "the kills came after the run");
    assert_eq!(most.load(Ordering::SeqCst), 2, "the clients never held both slots");
    assert!(tally.transport_errors.load(Ordering::SeqCst) > 0, "no client met the killed replica");

    // etcd's own word: every version of the semaphore key since it was made.
    let client = berth_fleet::etcd::Etcd::new(std::slice::from_ref(&url)).unwrap();
    let key = format!("{PREFIX}/groups/race/semaphore");
    let versions = history::versions(&client, &key).unwrap();
    assert!(history::overfull(&versions).is_empty(), "{:?}", history::overfull(&versions));
    let (max, at) = history::max_holders(&versions);
    assert_eq!(max, 2, "most holders in etcd's history: {max} at revision {at}");
    assert!(versions.iter().all(|v| v.semaphore.total_slots == 2));
    let last = versions.last().unwrap();
    assert!(last.semaphore.holders.is_empty(), "still held: {:?}", last.semaphore.holders);
    // One version per grant and per release (the first grant makes the key): nothing else
    // was written, and no retry after a lost answer wrote twice.
    assert_eq!(versions.len(), 2 * CLIENTS * ROUNDS, "versions of {key}");
    let holds = history::holds(&versions);
    let mut lost_answers = 0;
    for (i, rounds) in rounds.iter().enumerate() {
        let id = format!("c{i:02}");
        let mine: Vec<_> = holds.iter().filter(|h| h.id == id).collect();
        assert_eq!(mine.len(), ROUNDS, "{id}'s holds in etcd: {mine:?}");
        for (held, round) in mine.iter().zip(rounds) {
            let freed = held.freed.unwrap_or_else(|| panic!("{id} still holds from {}", held.taken));
            // The grant this client was answered is the hold in etcd (or, after a lost answer,
            // the recursive re-grant of it, read later).
            assert!(held.taken <= round.granted && round.granted < freed, "{id}: {held:?} vs {round:?}");
            if round.freed_by_this_answer {
                // Freed by this client's own steady-state, at the revision it was told.
                assert_eq!(freed, round.released, "{id}: {held:?} vs {round:?}");
            } else {
                // Its steady-state committed but the answer was lost (a replica or etcd was
                // killed); the retry found it freed: still by this client, before the retry.
                assert!(freed <= round.released, "{id}: {held:?} vs {round:?}");
                lost_answers += 1;
            }
        }
    }

    // The fleet view, as an operator reads it.
    let status: FleetStatus = serde_json::from_str(&berth_ok(&["fleet", "status", "--etcd", &url, "--json"])).unwrap();
    let race = status.groups.iter().find(|g| g.group == "race").unwrap();
    assert_eq!((race.total_slots, race.holders.len()), (2, 0));
    assert!(status.revision >= last.revision);

    // SIGTERM: stops, exits 0.
    let mut two = two;
    let exit = two.terminate();
    assert!(exit.success(), "{exit}: {}", two.log());
    assert!(two.log().contains("berth fleet: stopped"), "{}", two.log());
    eprintln!(
        "{CLIENTS} clients x {ROUNDS} rounds in {run_time:?}: {} versions, most holders {max}; replica killed at grant \
         {replica_killed_at} ({held_at_replica_kill} holding), etcd killed at {etcd_killed_at} ({held_at_etcd_kill} \
         holding) and back at {etcd_back_at}; {} transport errors, {} \
         503s, {} 409s, {lost_answers} lost answers",
        versions.len(),
        tally.transport_errors.load(Ordering::SeqCst),
        tally.unavailable.load(Ordering::SeqCst),
        tally.full.load(Ordering::SeqCst),
    );
}

#[test]
fn unlock_frees_a_host_that_never_returns() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let url = etcd.url();
    let prefix = "tests/fleet-a";
    let srv = Replica::start(dir.path(), "replica", &["--etcd", &url, "--prefix", prefix]);
    let store = ["--etcd", url.as_str(), "--prefix", prefix];
    let cmd = |args: &[&str]| -> Vec<String> { args.iter().chain(&store).map(|s| s.to_string()).collect() };

    assert_eq!(report(srv.addr, "s1", "stuck", "node-stuck").status, 200);
    assert_eq!(report(srv.addr, "w1", "stuck", "node-w1").status, 200);
    // The stuck host takes the only slot and is never heard of again.
    assert_eq!(lock(srv.addr, "/v1/pre-reboot", "s1", "stuck").status, 200);
    let refused = lock(srv.addr, "/v1/pre-reboot", "w1", "stuck");
    assert_eq!((refused.status, refused.kind().as_str()), (409, "failed_lock"));
    assert!(refused.value().contains("group stuck are held: s1 since "), "{}", refused.value());

    let status: FleetStatus = serde_json::from_str(&berth_ok(&cmd(&["fleet", "status", "--json"]))).unwrap();
    let group = status.groups.iter().find(|g| g.group == "stuck").unwrap();
    assert_eq!(group.total_slots, 1);
    assert_eq!(group.holders.len(), 1);
    assert_eq!((group.holders[0].id.as_str(), group.holders[0].hostname.as_deref()), ("s1", Some("node-stuck")));
    assert!(group.holders[0].since.is_some());
    assert_eq!(status.hosts.len(), 2);
    assert_eq!(status.versions["1.2.0"].values().sum::<u32>(), 2);
    let human = berth_ok(&cmd(&["fleet", "status"]));
    assert!(human.contains("node-stuck") && human.contains("stuck"), "{human}");

    // Unlock names the holders when asked to free someone who holds nothing.
    let out = berth(&cmd(&["fleet", "unlock", "--group", "stuck", "node-w1"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("holders: node-stuck (s1)"), "{}", text(&out.stderr));
    // By hostname, as an operator knows the host.
    let freed = berth_ok(&cmd(&["fleet", "unlock", "--group", "stuck", "node-stuck"]));
    assert!(freed.contains("held by s1 (node-stuck) since "), "{freed}");
    let granted = lock(srv.addr, "/v1/pre-reboot", "w1", "stuck");
    assert_eq!(granted.status, 200, "{granted:?}");

    // More slots for the group, in etcd: a second host is granted while w1 holds.
    let set = berth_ok(&cmd(&["fleet", "slots", "--group", "stuck", "2"]));
    assert!(set.contains("group stuck has 2 reboot slots"), "{set}");
    assert_eq!(lock(srv.addr, "/v1/pre-reboot", "w2", "stuck").status, 200);
    assert_eq!(lock(srv.addr, "/v1/pre-reboot", "w3", "stuck").status, 409);
    // By id too; the freed host asking again is not holding.
    berth_ok(&cmd(&["fleet", "unlock", "--group", "stuck", "w2"]));
    let again = lock(srv.addr, "/v1/steady-state", "w2", "stuck");
    assert_eq!((again.status, again.headers["berth-fleet-released"].as_str()), (200, "false"));

    // A decommissioned host is forgotten.
    let forgot = berth_ok(&cmd(&["fleet", "forget", "s1"]));
    assert!(forgot.contains("forgot s1 in group stuck"), "{forgot}");
    let status: FleetStatus = serde_json::from_str(&berth_ok(&cmd(&["fleet", "status", "--json"]))).unwrap();
    assert_eq!(status.hosts.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["w1"]);

    // Another prefix is another fleet in the same etcd.
    let other: FleetStatus = serde_json::from_str(&berth_ok(&["fleet", "status", "--etcd", &url, "--json"])).unwrap();
    assert!(other.groups.is_empty() && other.hosts.is_empty());
    // No etcd: one line naming it.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = berth(&["fleet", "status", "--etcd", &dead]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(&dead), "{}", text(&out.stderr));
    // A replica starts without its etcd (it may come up later), answers 503 etcd_unavailable
    // naming the endpoint, and logs that even with --quiet.
    let orphan = Replica::start(dir.path(), "orphan", &["--etcd", &dead, "--quiet"]);
    let got = lock(orphan.addr, "/v1/pre-reboot", "h", "g");
    assert_eq!((got.status, got.kind().as_str()), (503, "etcd_unavailable"), "{got:?}");
    assert!(got.value().contains(&dead), "{}", got.value());
    assert_eq!(got.headers["retry-after"], "1");
    let log = orphan.log();
    assert!(log.contains("warning: store etcd") && log.contains("-> 503 etcd_unavailable"), "{log}");
}

/// Sends `request` through `openssl s_client`, which verifies the server's certificate against
/// `ca` for `localhost`; the raw answer.
fn over_tls(addr: SocketAddr, ca: &Path, request: &str) -> String {
    let mut child = Command::new(common::tool("openssl", "openssl"))
        .args(["s_client", "-quiet", "-ign_eof", "-verify_return_error", "-verify_hostname", "localhost"])
        .args(["-servername", "localhost", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl s_client: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn token_tls_and_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, token) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("token"));
    common::ok(
        Command::new(common::tool("openssl", "openssl"))
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    std::fs::write(&token, "fleet-token-1\n").unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (cert_s, key_s, token_s) = (path(&cert), path(&key), path(&token));
    let mut srv = Replica::start(
        dir.path(),
        "tls",
        &["--store", "memory", "--token-file", &token_s, "--tls-cert", &cert_s, "--tls-key", &key_s],
    );
    assert!(srv.log().contains("token: required"), "{}", srv.log());
    let body = lock_body("h1", "workers");
    let request = |auth: &str| {
        format!(
            "POST /v1/pre-reboot HTTP/1.1\r\nhost: localhost\r\nfleet-lock-protocol: true\r\n{auth}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for auth in ["", "authorization: Bearer fleet-token-2\r\n"] {
        let got = parse_answer(over_tls(srv.addr, &cert, &request(auth)).as_bytes()).unwrap();
        assert_eq!((got.status, got.kind().as_str()), (401, "unauthorized"), "{auth:?}");
        assert_eq!(got.headers["www-authenticate"], "Bearer realm=\"berth fleet\"");
    }
    let got = parse_answer(over_tls(srv.addr, &cert, &request("authorization: Bearer fleet-token-1\r\n")).as_bytes())
        .unwrap();
    assert_eq!(got.status, 200, "{got:?}");
    // Plain HTTP on the TLS port is not answered in HTTP.
    let plain = post(srv.addr, "/v1/pre-reboot", &body);
    assert!(plain.is_err(), "{plain:?}");
    // A client that holds a slot while the server is told to stop: it stops, exits 0.
    let exit = srv.terminate();
    assert!(exit.success(), "{exit}: {}", srv.log());
    let log = srv.log();
    assert!(log.contains("SIGTERM: no new connections") && log.contains("berth fleet: stopped"), "{log}");
    assert!(log.contains("POST /v1/pre-reboot -> 401 unauthorized"), "{log}");

    // Refused at start, naming the file.
    let missing = dir.path().join("absent-token");
    let out =
        berth(&["fleet", "serve", "--store", "memory", "--listen", "127.0.0.1:0", "--token-file", &path(&missing)]);
    assert!(!out.status.success() && text(&out.stderr).contains("absent-token"), "{}", text(&out.stderr));
    let out = berth(&[
        "fleet",
        "serve",
        "--store",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &cert_s,
    ]);
    assert!(!out.status.success() && text(&out.stderr).contains("key file"), "{}", text(&out.stderr));
    let out = berth(&["fleet", "serve", "--store", "memory", "--tls-cert", &cert_s]);
    assert!(!out.status.success() && text(&out.stderr).contains("--tls-key"), "{}", text(&out.stderr));
    let out = berth(&["fleet", "serve", "--store", "memory", "--slots", "a b=2"]);
    assert!(!out.status.success() && text(&out.stderr).contains("group \"a b\""), "{}", text(&out.stderr));
}

#[test]
fn help_names_every_option_and_file() {
    let cases: [(&str, &[&str]); 5] = [
        (
            "serve",
            &[
                "--listen",
                "--store",
                "--etcd",
                "--prefix",
                "--etcd-user",
                "--etcd-password-file",
                "--etcd-ca",
                "--etcd-cert",
                "--etcd-key",
                "--silent-after",
                "--token-file",
                "--tls-cert",
                "--tls-key",
                "--slots",
                "--default-slots",
                "--max-connections",
                "--quiet",
                "Authorization: Bearer",
                "SIGTERM",
                "fleet-lock-protocol: true",
                "failed_lock",
                "etcd_unavailable",
                "Examples:",
            ],
        ),
        ("status", &["--json", "--etcd", "--prefix", "--etcd-password-file", "Examples:"]),
        ("unlock", &["--group", "ID|HOSTNAME", "--etcd", "Example:"]),
        ("slots", &["--group", "<N>", "--etcd", "Example:"]),
        ("forget", &["<ID>", "--etcd", "Example:"]),
    ];
    for (command, words) in cases {
        let help = berth_ok(&["fleet", command, "--help"]);
        for word in words {
            assert!(help.contains(word), "`berth fleet {command} --help` does not name {word}:\n{help}");
        }
    }
    let top = berth_ok(&["fleet", "--help"]);
    for command in ["serve", "status", "unlock", "slots", "forget"] {
        assert!(top.contains(command), "`berth fleet --help` does not name {command}:\n{top}");
    }
}

/// `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) {
    common::ok(Command::new(common::tool("openssl", "openssl")).args(args));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA, and
/// a second CA that signed neither; PEM files in `dir`.
fn private_pki(dir: &Path) {
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subj) = (p(&format!("{ca}.key")), p(&format!("{ca}.crt")), format!("/CN=berth test {ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-days", "2", "-subj", &subj, "-keyout", &key, "-out", &crt]);
        openssl(&args);
    }
    for (who, ext) in [("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")] {
        let (key, csr, crt) = (p(&format!("{who}.key")), p(&format!("{who}.csr")), p(&format!("{who}.crt")));
        let subj = format!("/CN=berth-{who}");
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&args);
        let extfile = p(&format!("{who}.ext"));
        std::fs::write(&extfile, format!("{ext}\n")).unwrap();
        let (ca_crt, ca_key) = (p("ca.crt"), p("ca.key"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &crt,
        ]);
    }
}

/// An etcd that serves TLS with a private CA's certificate and wants client certificates: berth
/// fleet reaches it with --etcd-ca, --etcd-cert and --etcd-key, and is refused, naming why,
/// without the client certificate or with the wrong CA.
#[test]
fn etcd_over_tls_with_a_private_ca_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    private_pki(dir.path());
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let etcd = Etcd::start_tls(berth_testkit::etcd::TlsFiles {
        cert: f("server.crt").into(),
        key: f("server.key").into(),
        client_ca: f("ca.crt").into(),
    });
    let url = etcd.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (ca, cert, key) = (f("ca.crt"), f("client.crt"), f("client.key"));
    let tls = ["--etcd", &url, "--etcd-ca", &ca, "--etcd-cert", &cert, "--etcd-key", &key];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(tls.iter()).map(|s| s.to_string()).collect() };

    let set = berth_ok(&with(&["fleet", "slots", "--group", "tls-group", "3"]));
    assert!(set.contains("tls-group") && set.contains('3'), "{set}");
    let status: FleetStatus = serde_json::from_str(&berth_ok(&with(&["fleet", "status", "--json"]))).unwrap();
    let json = serde_json::to_string(&status).unwrap();
    assert!(json.contains("tls-group"), "{json}");

    // No client certificate: etcd refuses the handshake. A CA that did not sign etcd's
    // certificate: berth refuses etcd. Plain http with TLS files: refused before any call.
    let other = f("other-ca.crt");
    let cases: [(&[&str], &str); 3] = [
        // (TLS 1.3: etcd's refusal comes after the handshake, as a closed connection.)
        (&["--etcd", &url, "--etcd-ca", &ca], "did not answer"),
        (&["--etcd", &url, "--etcd-ca", &other, "--etcd-cert", &cert, "--etcd-key", &key], "UnknownIssuer"),
        (&["--etcd", "http://127.0.0.1:9", "--etcd-ca", &ca], "plain HTTP"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["fleet", "status", "--json"];
        args.extend(flags);
        let out = berth(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {}", text(&out.stdout));
        assert!(err.contains(needle), "{args:?}: {needle:?} not in:\n{err}");
    }
    // A key file where the certificate belongs: named.
    let out = berth(&["fleet", "status", "--etcd", &url, "--etcd-ca", &ca, "--etcd-cert", &key, "--etcd-key", &key]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("client.key") && err.contains("no CERTIFICATE"), "{err}");
}
