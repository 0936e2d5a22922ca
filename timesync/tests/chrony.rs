//! berth-timesync against a real NTP server on loopback: Debian's chronyd, started by the test
//! with `-x` (it never touches this host's clock) and `-t` (it exits on its own even if the
//! test dies). Nothing here sets the clock: the library measures, and the binary runs with
//! `--dry-run` and its own `--root`. chronyd comes from the `chrony` package (scripts/setup-host).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_timesync::client::{self, Plan, QueryError};
use berth_timesync::ntp::{self, NtpTime, Packet, Refused};

/// A chronyd serving 127.0.0.1 on a port of its own; killed on drop.
struct Chrony {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn chronyd() -> PathBuf {
    ["/usr/sbin/chronyd", "/sbin/chronyd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("chronyd not found: install Debian's chrony (scripts/setup-host does)")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Chrony {
    /// `synchronized`: with `local stratum 8` (a reference of its own); without, chronyd has
    /// no source and answers as unsynchronised.
    fn start(synchronized: bool) -> Chrony {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let conf = dir.path().join("chrony.conf");
        let local = if synchronized { "local stratum 8\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\n{local}cmdport 0\npidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(chronyd());
        // -x: never control the clock; -t: gone after 2 minutes whatever happens; -U: allowed
        // to start without root.
        cmd.args(["-x", "-d", "-U", "-t", "120", "-f"]).arg(&conf);
        if nix_euid_is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("log")).unwrap()))
            .spawn()
            .expect("starting chronyd");
        Chrony { child, port, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until chronyd answers at all (any reply, refused or not).
    fn wait_ready(&mut self) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match client::query(self.addr(), Duration::from_millis(300)) {
                Ok(_) | Err(QueryError::Refused { .. }) => return,
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        let log = std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default();
                        panic!("chronyd exited ({status}):\n{log}");
                    }
                    assert!(Instant::now() < until, "chronyd did not answer on {}: {e}", self.addr());
                }
            }
        }
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn quick(samples: u32) -> Plan {
    Plan {
        samples,
        spacing: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        resolve_timeout: Duration::from_secs(5),
    }
}

#[test]
fn m5_sntp_client_measures_a_real_ntp_server() {
    let mut c = Chrony::start(true);
    c.wait_ready();
    // chronyd's local reference comes up within a moment of starting.
    let until = Instant::now() + Duration::from_secs(20);
    let round = loop {
        let r = client::measure(&[format!("127.0.0.1:{}", c.port)], quick(3));
        if r.samples.len() == 3 || Instant::now() > until {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(round.samples.len(), 3, "{:?}", round.errors);
    for s in &round.samples {
        // The same clock on both ends, over loopback.
        assert!(s.exchange.offset_ns.abs() < 100_000_000, "{s:?}");
        assert!((0..100_000_000).contains(&s.exchange.delay_ns), "{s:?}");
        assert_eq!(s.exchange.stratum, 8, "{s:?}");
        assert_eq!(s.addr, c.addr());
    }
    let best = round.best().unwrap();
    assert!(round.samples.iter().all(|s| s.exchange.delay_ns >= best.exchange.delay_ns));
}

#[test]
fn m5_an_unsynchronised_server_is_refused() {
    let mut c = Chrony::start(false);
    c.wait_ready();
    match client::query(c.addr(), Duration::from_secs(1)) {
        Err(QueryError::Refused { why: Refused::Unsynchronized { leap: 3, .. }, .. }) => {}
        other => panic!("an unsynchronised chronyd gave {other:?}"),
    }
}

/// The binary end to end: `once --dry-run` measures, records the status file the agent reads,
/// and `status` reports it; the clock is left alone.
#[test]
fn m5_berth_timesync_once_records_the_synchronisation() {
    let mut c = Chrony::start(true);
    c.wait_ready();
    let root = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_berth-timesync"));
    let run = |args: &[&str]| {
        let out = Command::new(exe).arg("--root").arg(root.path()).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = run(&["status"]);
    assert!(ok && said.contains("not synchronised: berth-timesync has not set the clock since boot"), "{said}");
    assert!(berth_timesync::status::clock_synchronized_at(root.path(), std::time::SystemTime::now()).is_err());

    let server = format!("127.0.0.1:{}", c.port);
    let until = Instant::now() + Duration::from_secs(30);
    let (ok, said) = loop {
        let r = run(&["once", "--dry-run", &server]);
        if r.0 || Instant::now() > until {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(ok, "{said}");
    assert!(said.contains("clock not changed (dry run)") && said.contains(&server), "{said}");
    let s = berth_timesync::status::clock_synchronized_at(root.path(), std::time::SystemTime::now()).unwrap();
    assert_eq!(s.adjustment, "none");
    assert_eq!(s.stratum, 8);
    assert!(s.server.contains(&server), "{s:?}");
    let (ok, said) = run(&["status"]);
    assert!(ok && said.contains("synchronised at ") && said.contains("stratum 8"), "{said}");

    // No server answers: non-zero, each failure named, the old status kept.
    let silent = format!("127.0.0.1:{}", free_udp_port());
    let (ok, said) = run(&["once", "--dry-run", &silent]);
    // (Over loopback the kernel's port-unreachable ends the wait early: "Connection refused".)
    assert!(!ok && said.contains(&format!("no server gave a usable sample: {silent}: ")), "{said}");
    assert!(berth_timesync::status::clock_synchronized_at(root.path(), std::time::SystemTime::now()).is_ok());
}

/// Replies to one request from a socket of the test, with `shape` applied to a good reply.
fn answer_once(shape: impl Fn(Packet) -> Packet + Send + 'static) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
        let req = Packet::decode(&buf[..n]).unwrap();
        let now = NtpTime::from_system(std::time::SystemTime::now());
        let good = Packet {
            version: 4,
            mode: ntp::MODE_SERVER,
            stratum: 2,
            reference_id: [127, 0, 0, 1],
            reference: now,
            origin: req.transmit,
            receive: now,
            transmit: now,
            ..Packet::default()
        };
        let _ = sock.send_to(&shape(good).encode(), from);
    });
    addr
}

#[test]
fn m5_a_reply_that_does_not_echo_the_request_is_refused() {
    let addr = answer_once(|p| Packet { origin: NtpTime(p.origin.0 ^ 1), ..p });
    match client::query(addr, Duration::from_millis(500)) {
        Err(QueryError::Refused { why: Refused::OriginMismatch, .. }) => {}
        other => panic!("{other:?}"),
    }
    // A kiss-o'-death ends the exchange at once, without waiting out the timeout.
    let addr = answer_once(|p| Packet { stratum: 0, reference_id: *b"DENY", ..p });
    let started = Instant::now();
    match client::query(addr, Duration::from_secs(5)) {
        Err(QueryError::Refused { why: Refused::KissOfDeath(code), .. }) => assert_eq!(code, "DENY"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // The same reply, echoing the request, is taken.
    let addr = answer_once(|p| p);
    let x = client::query(addr, Duration::from_secs(2)).unwrap();
    assert!(x.offset_ns.abs() < 100_000_000, "{x:?}");
}
