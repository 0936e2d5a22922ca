//! EtcdStore against a real etcd (Debian's etcd-server, started by berth_testkit::etcd on
//! 127.0.0.1 with free ports and a data dir of its own; scripts/setup-host installs it). What
//! is checked comes from etcd itself: values read back, leases asked about, and the
//! semaphore's versions read from etcd's revision history (berth_fleet::history).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_fleet::etcd::{Compare, Credentials, Etcd as Client, EtcdError, Op, Range, Txn, code};
use berth_fleet::history::{self, HistoryError};
use berth_fleet::status::FleetStatus;
use berth_fleet::store::{EtcdStore, HostEntry};
use berth_fleet::{Store, StoreError};
use berth_release::fleet::{ClientParams, HostReport};
use berth_release::time::Timestamp;
use berth_testkit::etcd::Etcd;

fn client(etcd: &Etcd) -> Client {
    Client::new(&[etcd.url()]).unwrap()
}

fn store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::new(client(etcd), "berth.fleet/v1").unwrap()
}

fn report(hostname: &str, version: &str, state: &str) -> HostReport {
    HostReport {
        schema: 1,
        hostname: hostname.into(),
        version: version.into(),
        slot: "a".into(),
        state: state.into(),
        staged: None,
        available: None,
        last_check: None,
        last_error: None,
        rolled_back: vec![],
        fleetlock: None,
        interval_seconds: 1,
        jitter_seconds: 0,
        sent: Timestamp::now(),
    }
}

fn who(id: &str, group: &str) -> ClientParams {
    ClientParams { id: id.into(), group: group.into() }
}

#[test]
fn transactions_create_if_absent_answer_conflicts_from_the_failure_branch_and_fail_over() {
    let etcd = Etcd::start();
    // A dead endpoint first: the client goes on to the live one.
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let c = Client::new(&[dead, etcd.url()]).unwrap();
    let k = b"t/key".to_vec();
    let create = |v: &[u8]| Txn {
        compare: vec![Compare::Absent(k.clone())],
        success: vec![Op::Put { key: k.clone(), value: v.to_vec(), lease: 0 }],
        failure: vec![Op::Get(k.clone())],
    };
    let first = c.txn(&create(b"one")).unwrap();
    assert!(first.succeeded);
    assert_eq!(c.endpoint(), etcd.url());
    let second = c.txn(&create(b"two")).unwrap();
    assert!(!second.succeeded, "the key exists: the compare fails");
    let kv = second.first_read().expect("the failure branch reads the key").clone();
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.mod_revision, first.header.revision);

    // A change by someone else: a compare on the old mod_revision loses and is told the new value.
    let rev2 = c.put(&k, b"theirs", 0).unwrap();
    let cas = |seen: u64, v: &[u8]| Txn {
        compare: vec![Compare::ModRevision(k.clone(), seen)],
        success: vec![Op::Put { key: k.clone(), value: v.to_vec(), lease: 0 }],
        failure: vec![Op::Get(k.clone())],
    };
    let lost = c.txn(&cas(kv.mod_revision, b"mine")).unwrap();
    assert!(!lost.succeeded);
    let now = lost.first_read().unwrap();
    assert_eq!((now.value.as_slice(), now.mod_revision), (&b"theirs"[..], rev2));
    let won = c.txn(&cas(now.mod_revision, b"mine")).unwrap();
    assert!(won.succeeded);
    assert_eq!(c.get(&k).unwrap().0.unwrap().value, b"mine");

    // etcd's errors carry the status, the gRPC code and etcd's message.
    let e = c.range(&Range::key(k.clone()).at(won.header.revision + 100)).unwrap_err();
    assert!(
        matches!(&e, EtcdError::Api { status: 400, code: code::OUT_OF_RANGE, message, .. } if message.contains("future revision")),
        "{e:?}"
    );

    // Leases: TTL in capitals is honoured (lower case would grant ~2 s).
    let (lease, ttl) = c.lease_grant(60).unwrap();
    assert_eq!(ttl, 60);
    assert_eq!(c.lease_ttl(lease).unwrap().granted_ttl, 60);
    assert_eq!(c.lease_keepalive(lease).unwrap(), Some(60));
    c.lease_revoke(lease).unwrap();
    assert_eq!(c.lease_keepalive(lease).unwrap(), None, "a gone lease answers 200 without a TTL");

    // The store makes a semaphore once, with the slots given then; later defaults do not change it.
    let s = EtcdStore::new(c, "p").unwrap();
    s.pre_reboot("g", "a", 3, Timestamp(1)).unwrap();
    s.steady_state("g", "a").unwrap();
    let g = s.pre_reboot("g", "a", 1, Timestamp(2)).unwrap();
    s.pre_reboot("g", "b", 1, Timestamp(3)).unwrap();
    s.pre_reboot("g", "c", 1, Timestamp(4)).unwrap();
    assert!(matches!(s.pre_reboot("g", "d", 9, Timestamp(5)), Err(StoreError::Full { slots: 3, .. })));
    let versions = history::versions(s.etcd(), &s.semaphore_key("g")).unwrap();
    assert_eq!(versions.len(), 5);
    assert_eq!(versions[2].revision, g.revision);

    // History etcd compacted cannot be checked: the walk says so instead of checking less.
    let latest = s.health().unwrap();
    s.etcd().compact(latest).unwrap();
    match history::versions(s.etcd(), &s.semaphore_key("g")) {
        Err(HistoryError::Compacted { revision, message, .. }) => {
            assert!(revision < latest && message.contains("compacted"), "{revision} {message}")
        }
        other => panic!("{other:?}"),
    }
}

/// What a client was answered for one hold: the revisions that took and freed its slot (`None`
/// where the answer was lost to etcd's crash and the retry found the change made already).
type Answers = BTreeMap<String, Vec<(Option<u64>, Option<u64>)>>;

/// One client's loop: take a slot, hold it a while, give it back; counted by a shared counter,
/// every grant and release revision recorded. Unavailable and conflicts are retried as the
/// server's clients retry a 503; after an unanswered attempt, "already held" (or "not held")
/// means that attempt went through.
fn race(
    s: &EtcdStore,
    id: &str,
    rounds: usize,
    inside: &AtomicUsize,
    most: &AtomicUsize,
    log: &Mutex<Answers>,
    unavailable: &AtomicUsize,
) {
    for round in 0..rounds {
        let mut unanswered = false;
        let taken = loop {
            match s.pre_reboot("race", id, 2, Timestamp::now()) {
                Ok(g) if !g.already_held => break Some(g.revision),
                Ok(_) if unanswered => break None,
                Ok(g) => panic!("{id} round {round}: already held at {} before asking", g.revision),
                Err(StoreError::Full { .. }) => std::thread::sleep(Duration::from_millis(10)),
                Err(StoreError::Conflict(_)) => {}
                Err(StoreError::Unavailable(_)) => {
                    unanswered = true;
                    unavailable.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{id}: {e}"),
            }
        };
        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20 + (id.len() as u64 * 7 + round as u64 * 13) % 30));
        inside.fetch_sub(1, Ordering::SeqCst);
        let mut unanswered = false;
        let freed = loop {
            match s.steady_state("race", id) {
                Ok(r) if r.was_held => break Some(r.revision),
                Ok(_) if unanswered => break None,
                Ok(r) => panic!("{id} round {round}: not holding at {}", r.revision),
                Err(StoreError::Conflict(_)) => {}
                Err(StoreError::Unavailable(_)) => {
                    unanswered = true;
                    unavailable.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{id}: {e}"),
            }
        };
        log.lock().unwrap().entry(id.to_string()).or_default().push((taken, freed));
    }
}

/// From etcd's history: no version over 2 holders, and each client's intervals are exactly the
/// grants and releases it was answered (no holder lost, none freed by someone else).
fn check_history(s: &EtcdStore, log: &Answers, rounds: usize) {
    let versions = history::versions(s.etcd(), &s.semaphore_key("race")).unwrap();
    assert!(history::overfull(&versions).is_empty(), "{:?}", history::overfull(&versions));
    let (most, at) = history::max_holders(&versions);
    assert!(most <= 2, "{most} holders at revision {at}");
    assert_eq!(most, 2, "the race filled both slots at some point");
    let held = history::holds(&versions);
    for (id, answers) in log {
        let from_etcd: Vec<(u64, Option<u64>)> =
            held.iter().filter(|h| &h.id == id).map(|h| (h.taken, h.freed)).collect();
        assert_eq!(from_etcd.len(), rounds, "{id}: {from_etcd:?}");
        for ((taken, freed), (answered_taken, answered_freed)) in from_etcd.iter().zip(answers) {
            assert!(freed.is_some(), "{id} still holds at {taken}");
            assert!(answered_taken.is_none_or(|a| a == *taken), "{id}: taken at {taken}, answered {answered_taken:?}");
            assert!(
                answered_freed.is_none_or(|a| Some(a) == *freed),
                "{id}: freed at {freed:?}, answered {answered_freed:?}"
            );
        }
    }
    assert!(versions.last().unwrap().semaphore.holders.is_empty());
}

#[test]
fn twenty_threads_racing_for_two_slots_never_exceed_them_in_etcds_history() {
    let etcd = Etcd::start();
    let s = Arc::new(store(&etcd));
    let (inside, most, unavailable) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let log = Arc::new(Mutex::new(BTreeMap::new()));
    let start = Instant::now();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (s, inside, most, log, unavailable) =
                (s.clone(), inside.clone(), most.clone(), log.clone(), unavailable.clone());
            std::thread::spawn(move || race(&s, &format!("c{i:02}"), 3, &inside, &most, &log, &unavailable))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 2);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 20);
    check_history(&s, &log, 3);
    eprintln!("20 × 3 holds in {:?}", start.elapsed());
}

#[test]
fn etcd_killed_and_restarted_mid_run_loses_no_holder() {
    let mut etcd = Etcd::start();
    let s = Arc::new(store(&etcd));
    // Two hosts that hold their slots across the crash (rebooting hosts keep theirs).
    let g1 = s.pre_reboot("static", "h1", 2, Timestamp(1)).unwrap();
    s.pre_reboot("static", "h2", 2, Timestamp(2)).unwrap();
    let (inside, most, unavailable) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let log = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let (s, inside, most, log, unavailable) =
                (s.clone(), inside.clone(), most.clone(), log.clone(), unavailable.clone());
            std::thread::spawn(move || race(&s, &format!("k{i}"), 6, &inside, &most, &log, &unavailable))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    etcd.kill();
    // While it is down the store says so, naming the endpoint.
    match s.health() {
        Err(StoreError::Unavailable(why)) => assert!(why.contains(&etcd.url()), "{why}"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(500));
    etcd.restart();
    for t in threads {
        t.join().unwrap();
    }
    assert!(unavailable.load(Ordering::Relaxed) > 0, "the clients saw etcd go");
    let log = log.lock().unwrap();
    check_history(&s, &log, 6);
    let snap = s.snapshot(Timestamp::now()).unwrap();
    let statics = &snap.groups.iter().find(|(g, _)| g == "static").unwrap().1;
    assert_eq!(statics.holders, ["h1", "h2"]);
    assert_eq!(statics.since.get("h1"), Some(&Timestamp(1)));
    let versions = history::versions(s.etcd(), &s.semaphore_key("static")).unwrap();
    assert_eq!(versions[0].revision, g1.revision, "history survives the crash");
}

#[test]
fn locks_are_recursive_unlocks_if_held_and_the_operator_can_free_a_slot() {
    let etcd = Etcd::start();
    let s = store(&etcd);
    let a = s.pre_reboot("workers", "aaaa", 1, Timestamp(100)).unwrap();
    assert!(!a.already_held);
    let again = s.pre_reboot("workers", "aaaa", 1, Timestamp(200)).unwrap();
    assert!(again.already_held);
    assert_eq!(again.revision, a.revision, "nothing written");
    match s.pre_reboot("workers", "bbbb", 1, Timestamp(300)) {
        Err(StoreError::Full { slots: 1, holders, .. }) => {
            assert_eq!(
                (holders[0].id.as_str(), holders[0].since),
                ("aaaa", Some(Timestamp(100))),
                "since the first grant"
            )
        }
        other => panic!("{other:?}"),
    }
    let not = s.steady_state("workers", "bbbb").unwrap();
    assert!(!not.was_held);
    assert!(!s.steady_state("nogroup", "bbbb").unwrap().was_held);
    assert!(matches!(s.pre_reboot("a/b", "x", 1, Timestamp(0)), Err(StoreError::Invalid(_))));

    // More slots; then the operator frees a stuck holder by hostname, another by id.
    s.set_slots("workers", 2).unwrap();
    assert!(!s.pre_reboot("workers", "bbbb", 1, Timestamp(400)).unwrap().already_held);
    s.report(&who("bbbb", "workers"), &report("node-b", "1.0.0", "rebooting"), Timestamp::now()).unwrap();
    let freed = s.unlock("workers", "node-b").unwrap();
    assert_eq!(
        (freed.id.as_str(), freed.hostname.as_deref(), freed.since),
        ("bbbb", Some("node-b"), Some(Timestamp(400)))
    );
    match s.unlock("workers", "node-x") {
        Err(StoreError::Invalid(why)) => assert!(why.contains("aaaa"), "names the holders: {why}"),
        other => panic!("{other:?}"),
    }
    let freed = s.unlock("workers", "aaaa").unwrap();
    assert_eq!(freed.hostname, None);
    let snap = s.snapshot(Timestamp::now()).unwrap();
    assert_eq!(snap.groups, [("workers".to_string(), berth_fleet::semaphore::Semaphore::new(2))]);
    // Forget: the host's keys go.
    let (groups, _) = s.forget("bbbb").unwrap();
    assert_eq!(groups, ["workers"]);
    assert!(s.snapshot(Timestamp::now()).unwrap().hosts.is_empty());
    assert!(s.etcd().get(s.alive_key("workers", "bbbb").as_bytes()).unwrap().0.is_none());
}

#[test]
fn reports_live_under_leases_and_a_quiet_host_is_shown_silent() {
    let etcd = Etcd::start();
    let s = store(&etcd).with_silent_after(Duration::from_secs(3));
    let t0 = Timestamp::now();
    s.report(&who("talker", "workers"), &report("node-1", "1.1.0", "idle"), t0).unwrap();
    s.report(&who("quiet", "workers"), &report("node-2", "1.0.0", "staged"), t0).unwrap();
    let entry = |id: &str| -> HostEntry {
        serde_json::from_slice(&s.etcd().get(s.host_key("workers", id).as_bytes()).unwrap().0.unwrap().value).unwrap()
    };
    let first = entry("talker");
    let lease: i64 = first.lease.parse().unwrap();
    assert_eq!(s.etcd().lease_ttl(lease).unwrap().granted_ttl, 3, "the lease's TTL is the deadline");
    let alive = s.etcd().get(s.alive_key("workers", "talker").as_bytes()).unwrap().0.unwrap();
    assert_eq!(alive.lease, lease);
    assert_eq!(
        s.etcd().get(s.host_key("workers", "talker").as_bytes()).unwrap().0.unwrap().lease,
        0,
        "the last word stays"
    );

    // A report over 16 KiB is refused, and nothing is written.
    let mut big = report("node-1", "1.1.0", "idle");
    big.last_error = Some("x".repeat(17 << 10));
    let before = s.health().unwrap();
    assert!(
        matches!(s.report(&who("talker", "workers"), &big, t0), Err(StoreError::Invalid(why)) if why.contains("16384"))
    );
    assert_eq!(s.health().unwrap(), before);

    // The talker keeps reporting (its lease kept alive), the other goes quiet.
    let start = Instant::now();
    let quiet_gone = loop {
        std::thread::sleep(Duration::from_millis(700));
        s.report(&who("talker", "workers"), &report("node-1", "1.1.0", "idle"), Timestamp::now()).unwrap();
        if s.etcd().get(s.alive_key("workers", "quiet").as_bytes()).unwrap().0.is_none() {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the quiet host's lease never ran out");
    };
    assert!(quiet_gone >= Duration::from_millis(1500), "not before its TTL: {quiet_gone:?}");
    assert_eq!(entry("talker").lease, first.lease, "the same lease, renewed");
    // Read as of t0 so that only the lease decides: the quiet one is silent, not vanished.
    let snap = s.snapshot(t0).unwrap();
    let silent: BTreeMap<_, _> = snap.hosts.iter().map(|h| (h.client_params.id.as_str(), h.silent)).collect();
    assert_eq!(silent, BTreeMap::from([("quiet", true), ("talker", false)]));
    let status = FleetStatus::new(&snap, Timestamp::now());
    assert_eq!(status.versions["1.0.0"]["silent"], 1);
    assert_eq!(status.versions["1.1.0"]["idle"], 1);
    assert!(status.human().contains("SILENT\nnode-2 (quiet) workers 1.0.0 staged"), "{}", status.human());
    // It speaks again: a new lease (the old one is gone), no longer silent.
    s.report(&who("quiet", "workers"), &report("node-2", "1.0.0", "idle"), Timestamp::now()).unwrap();
    assert_ne!(entry("quiet").lease, first.lease);
    assert!(s.snapshot(Timestamp::now()).unwrap().hosts.iter().all(|h| !h.silent));
}

#[test]
fn a_corrupt_semaphore_is_never_overwritten() {
    let etcd = Etcd::start();
    let s = store(&etcd);
    let key = s.semaphore_key("broken");
    let rev = s.etcd().put(key.as_bytes(), b"{not a semaphore", 0).unwrap();
    for result in [
        s.pre_reboot("broken", "a", 1, Timestamp(0)).map(|_| 0),
        s.steady_state("broken", "a").map(|_| 0),
        s.set_slots("broken", 3),
        s.unlock("broken", "a").map(|_| 0),
        s.snapshot(Timestamp(0)).map(|_| 0),
    ] {
        match result {
            Err(StoreError::Corrupt(why)) => assert!(why.contains(&key), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    let kv = s.etcd().get(key.as_bytes()).unwrap().0.unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"{not a semaphore"[..], rev), "left as it was");
    assert!(
        matches!(history::versions(s.etcd(), &key), Err(HistoryError::Corrupt { revision, .. }) if revision == rev)
    );
}

#[test]
fn etcd_with_auth_is_used_with_a_user_and_password() {
    let etcd = Etcd::start();
    let etcdctl = |args: &[&str]| {
        let out = Command::new("etcdctl")
            .arg("--endpoints")
            .arg(etcd.url())
            .args(args)
            .output()
            .expect("etcdctl (etcd-client)");
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    etcdctl(&["user", "add", "root:s3cret", "--interactive=false"]);
    etcdctl(&["auth", "enable"]);
    let anonymous = store(&etcd);
    match anonymous.pre_reboot("g", "a", 1, Timestamp(0)) {
        Err(StoreError::Unavailable(why)) => {
            assert!(why.contains("user name is empty") || why.contains("401"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let c = client(&etcd).with_credentials(Credentials { user: "root".into(), password: "s3cret".into() });
    let s = EtcdStore::new(c, "berth.fleet/v1").unwrap();
    assert!(!s.pre_reboot("g", "a", 1, Timestamp(0)).unwrap().already_held);
    let wrong = client(&etcd).with_credentials(Credentials { user: "root".into(), password: "nope".into() });
    match wrong.get(b"k") {
        Err(e @ EtcdError::Api { .. }) => assert!(e.to_string().contains("authentication failed"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// What the proxy in front of etcd does to the next transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    None,
    /// etcd carries it out; its answer is lost (the connection closed without one).
    LoseAnswer,
    /// Another writer rewrites this key (same value, new mod_revision) just before it: it loses.
    RaceOn(String),
}

/// A proxy on 127.0.0.1 in front of `etcd` that passes every call through except the next
/// transaction, which suffers `fault` (etcd cannot lose an answer on demand; the proxy is the
/// one fake part, etcd does the rest).
fn faulty_proxy(etcd: &Etcd, fault: Arc<Mutex<Fault>>) -> berth_testkit::Server {
    use berth_testkit::{Reply, Response, Server};
    let url = etcd.url();
    Server::start(move |r| {
        let direct = Client::new(std::slice::from_ref(&url)).unwrap();
        let f = if r.path() == "/v3/kv/txn" {
            std::mem::replace(&mut *fault.lock().unwrap(), Fault::None)
        } else {
            Fault::None
        };
        if let Fault::RaceOn(key) = &f {
            let kv = direct.get(key.as_bytes()).unwrap().0.unwrap();
            direct.put(key.as_bytes(), &kv.value, 0).unwrap();
        }
        let http = berth_http::Client::builder("proxy").no_proxy().build();
        let reply = http
            .call("POST", &format!("{url}{}", r.target))
            .header("content-type", "application/json")
            .body(r.body.clone())
            .send()
            .unwrap();
        if f == Fault::LoseAnswer {
            assert!(reply.is_success(), "{}", reply.text());
            return Reply::Raw(Vec::new());
        }
        Response::json(reply.status, reply.text()).into()
    })
    .unwrap()
}

/// The lease ids etcd holds.
fn leases(c: &Client) -> Vec<i64> {
    let v: serde_json::Value = c.call("/v3/lease/leases", &serde_json::json!({})).unwrap();
    let mut ids: Vec<i64> = v["leases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["ID"].as_str().map_or_else(|| l["ID"].as_i64().unwrap(), |s| s.parse().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// An unlock whose transaction committed but whose answer was lost is retried, and the retry
/// finds the slot free: the operator is told it was freed, not that nobody held it. A report
/// whose transaction lost a race leaves no lease behind it.
#[test]
fn a_retried_unlock_says_freed_and_a_lost_report_race_leaks_no_lease() {
    let etcd = Etcd::start();
    // Leases long enough to outlive the test.
    let s = store(&etcd).with_silent_after(Duration::from_secs(30));
    let fault = Arc::new(Mutex::new(Fault::None));
    let proxy = faulty_proxy(&etcd, fault.clone());
    let p = EtcdStore::new(Client::new(&[proxy.url()]).unwrap(), "berth.fleet/v1").unwrap();

    s.pre_reboot("workers", "h1", 1, Timestamp(100)).unwrap();
    s.report(&who("h1", "workers"), &report("node-1", "1.0.0", "rebooting"), Timestamp::now()).unwrap();
    *fault.lock().unwrap() = Fault::LoseAnswer;
    let freed = p.unlock("workers", "node-1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(*fault.lock().unwrap(), Fault::None, "the answer was lost");
    assert_eq!((freed.id.as_str(), freed.hostname.as_deref()), ("h1", Some("node-1")));
    let snap = s.snapshot(Timestamp::now()).unwrap();
    assert_eq!(snap.groups[0].1.holders, Vec::<String>::new());

    // A report with another TTL than the stored one needs a new lease; its first transaction
    // loses to another writer, the second wins: one lease per host, none left over.
    let s3 = &s;
    let p5 = EtcdStore::new(Client::new(&[proxy.url()]).unwrap(), "berth.fleet/v1")
        .unwrap()
        .with_silent_after(Duration::from_secs(50));
    s3.report(&who("h2", "workers"), &report("node-2", "1.0.0", "idle"), Timestamp::now()).unwrap();
    *fault.lock().unwrap() = Fault::RaceOn(s.host_key("workers", "h2"));
    p5.report(&who("h2", "workers"), &report("node-2", "1.0.0", "idle"), Timestamp::now()).unwrap();
    assert_eq!(*fault.lock().unwrap(), Fault::None, "the race happened");
    let entry = |id: &str| -> HostEntry {
        serde_json::from_slice(&s.etcd().get(s.host_key("workers", id).as_bytes()).unwrap().0.unwrap().value).unwrap()
    };
    assert_eq!(entry("h2").ttl, 50);
    let mut held: Vec<i64> = ["h1", "h2"].iter().map(|id| entry(id).lease.parse().unwrap()).collect();
    held.sort();
    assert_eq!(leases(s.etcd()), held, "each host's lease, nothing else");
}
