//! Strict fakes of the clouds' instance metadata services, for guests booted as AWS, GCE and
//! Azure machines: [`aws::Imds`] (IMDSv2), [`gce::MetadataServer`], and [`azure::Azure`] (IMDS
//! and the WireServer). Each is written from its provider's API reference
//! (docs/design.md §8, ../shared/reference/platforms-and-clouds.md §4) and answers only as the
//! real one does: AWS refuses a GET without a valid, unexpired token (401) and a token PUT
//! without its TTL header (400); GCE refuses a request without `Metadata-Flavor: Google` (403);
//! Azure's IMDS one without `Metadata: true` or a known `api-version` (400); the WireServer a
//! goal state or health report without `x-ms-version` (400), and it records every health
//! report. A client that works against these is not relying on leniency.
//!
//! Each fake listens on 127.0.0.1 (the loopback server of [`berth_testkit`]) and records every
//! request with what it answered ([`Logged`]). A test configures the [`Instance`] (id,
//! hostname, SSH keys, user data bytes) and may change it while the guest runs (a new instance
//! from the same disk), and sets [`Fault`]s per path prefix: an error status N times, a
//! connection held open and never answered, or one closed without an answer.
//!
//! Guests reach them at the clouds' own addresses: [`Cloud::subnet`] is a QEMU user network
//! that covers 169.254.169.254 (and the WireServer's 168.63.129.16 for Azure) and
//! [`guest_forwards`] joins those addresses' port 80 to the fakes through the
//! `berth-guestfwd-relay` binary, so nothing leaves this machine. [`Cloud::smbios`] gives the
//! SMBIOS strings each cloud's hypervisor reports, from which the guest detects the platform.

pub mod aws;
pub mod azure;
pub mod gce;

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use berth_testkit::{Reply, Request, Response, Server};

use crate::{GuestForward, GuestTarget, Smbios, UserSubnet};

/// Where AWS, GCE and Azure serve instance metadata.
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Azure's WireServer (the fabric endpoint of the ready report).
pub const WIRESERVER_ADDR: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// A cloud whose machine a test plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Gce,
    Azure,
}

impl Cloud {
    /// The platform word (`berth/platform`, `berthctl status`).
    pub fn word(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gce => "gce",
            Cloud::Azure => "azure",
        }
    }

    /// A user network that covers the cloud's metadata addresses. AWS and GCE need only
    /// 169.254.169.254: the link-local /16, the guest at 169.254.0.15. Azure also needs
    /// 168.63.129.16: 168.0.0.0/6 covers both (168.0.0.0–171.255.255.255), the guest at
    /// 168.0.0.15. Either way the guest reaches them on-link, through QEMU's ARP answers for
    /// its forwards.
    pub fn subnet(self) -> UserSubnet {
        match self {
            Cloud::Aws | Cloud::Gce => UserSubnet {
                net: Ipv4Addr::new(169, 254, 0, 0),
                prefix_len: 16,
                host: Ipv4Addr::new(169, 254, 0, 2),
                dhcp_start: Ipv4Addr::new(169, 254, 0, 15),
            },
            Cloud::Azure => UserSubnet {
                net: Ipv4Addr::new(168, 0, 0, 0),
                prefix_len: 6,
                host: Ipv4Addr::new(168, 0, 0, 2),
                dhcp_start: Ipv4Addr::new(168, 0, 0, 15),
            },
        }
    }

    /// The SMBIOS strings of the cloud's hypervisor, as cloud-init's `ds-identify` and
    /// Berth's detection read them from `/sys/class/dmi/id`: AWS Nitro's `Amazon EC2` vendor with
    /// a serial and system UUID starting `ec2` (and the instance id as chassis asset tag); GCE's
    /// `Google Compute Engine` product and `GoogleCloud-` serial; Azure's Hyper-V
    /// `Microsoft Corporation` / `Virtual Machine` and the chassis asset tag that tells Azure from
    /// plain Hyper-V. `instance_id` only colours the strings that carry one on the real cloud.
    pub fn smbios(self, instance_id: &str) -> Vec<Smbios> {
        match self {
            Cloud::Aws => vec![
                Smbios::new(
                    1,
                    [
                        ("manufacturer", "Amazon EC2"),
                        ("product", "m5.large"),
                        ("serial", "ec2e1916-9099-7caf-fd21-01234abcdef1"),
                        ("uuid", "ec2e1916-9099-7caf-fd21-01234abcdef1"),
                    ],
                ),
                Smbios::new(3, [("manufacturer", "Amazon EC2"), ("asset", instance_id)]),
            ],
            Cloud::Gce => vec![Smbios::new(
                1,
                [
                    ("manufacturer", "Google"),
                    ("product", "Google Compute Engine"),
                    ("serial", "GoogleCloud-3F0E8C3A7D5B4E21A9C0B1D2E3F40516"),
                ],
            )],
            Cloud::Azure => vec![
                Smbios::new(
                    1,
                    [
                        ("manufacturer", "Microsoft Corporation"),
                        ("product", "Virtual Machine"),
                        ("serial", "0000-0016-5451-9387-4516-5823-24"),
                    ],
                ),
                Smbios::new(3, [("manufacturer", "Microsoft Corporation"), ("asset", azure::CHASSIS_ASSET_TAG)]),
            ],
        }
    }
}

/// Guest forwards from `addr`:80 to the servers on 127.0.0.1 at `port`, each through `relay`
/// (the `berth-guestfwd-relay` binary of this package: one relay per guest connection).
pub fn guest_forwards(relay: &Path, targets: &[(Ipv4Addr, u16)]) -> Vec<GuestForward> {
    (targets.iter())
        .map(|&(addr, port)| GuestForward {
            addr,
            port: 80,
            target: GuestTarget::Cmd(format!("{} {port}", relay.display())),
        })
        .collect()
}

/// What one instance's metadata says, in each cloud's terms: AWS's key pair names, GCE's
/// `user:key` lines, Azure's admin user and its `publicKeys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// AWS `i-…`, GCE's numeric id, Azure's `vmId` (a UUID).
    pub id: String,
    /// AWS `meta-data/hostname`, GCE `instance/hostname` (an FQDN), Azure `compute/name`.
    pub hostname: String,
    /// (name, OpenSSH public key line): the key pair's name on AWS, the user on GCE and Azure.
    pub ssh_keys: Vec<(String, String)>,
    /// The user data as the operator gave it (Azure serves it base64-encoded); `None`: unset.
    pub user_data: Option<Vec<u8>>,
}

/// What a fake does to requests whose path starts with a prefix instead of answering them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `code` (with a short body) `times` times, then normally.
    Status { code: u16, times: u32 },
    /// Accept, read the request, and never answer: the connection stays open until the fault
    /// is cleared or the fake dropped (a metadata service that hangs).
    Hang,
    /// Close the connection without an answer `times` times.
    Close { times: u32 },
}

/// A request a fake read, with what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// The target as sent: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered; `None` when the connection was held ([`Fault::Hang`]) or closed.
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
}

impl Logged {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Book {
    faults: Vec<(String, Fault)>,
    log: Vec<Logged>,
}

/// One listening fake: the loopback server, its faults and its log. The cloud modules give it
/// the function that answers a request as the real service would.
struct Endpoint {
    server: Server,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Endpoint {
    fn start(answer: impl Fn(&Request) -> Response + Send + Sync + 'static) -> std::io::Result<Endpoint> {
        let book = Arc::new(Mutex::new(Book::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (book, stop) = (book.clone(), stop.clone());
            Server::start(move |r| reply(r, &answer, &book, &stop))?
        };
        Ok(Endpoint { server, book, stop })
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn set_fault(&self, prefix: &str, fault: Fault) {
        let mut b = lock(&self.book);
        b.faults.retain(|(p, _)| p != prefix);
        b.faults.push((prefix.to_string(), fault));
    }

    fn clear_faults(&self) {
        lock(&self.book).faults.clear();
    }

    fn requests(&self) -> Vec<Logged> {
        lock(&self.book).log.clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Ends the held connections of Fault::Hang.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The fault for `path` (the longest matching prefix), counting down a limited one; a spent
/// one is forgotten.
fn take_fault(book: &Mutex<Book>, path: &str) -> Option<Fault> {
    let mut b = lock(book);
    let i = (b.faults.iter().enumerate())
        .filter(|(_, (p, _))| path.starts_with(p.as_str()))
        .max_by_key(|(_, (p, _))| p.len())
        .map(|(i, _)| i)?;
    let fault = b.faults[i].1;
    match fault {
        Fault::Status { times, .. } | Fault::Close { times } if times <= 1 => {
            b.faults.remove(i);
        }
        Fault::Status { code, times } => b.faults[i].1 = Fault::Status { code, times: times - 1 },
        Fault::Close { times } => b.faults[i].1 = Fault::Close { times: times - 1 },
        Fault::Hang => {}
    }
    Some(fault)
}

fn log(book: &Mutex<Book>, r: &Request, status: Option<u16>) {
    let entry = Logged {
        method: r.method.clone(),
        target: r.target.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
        status,
        at: Instant::now(),
    };
    lock(book).log.push(entry);
}

fn reply(
    r: &Request,
    answer: &(impl Fn(&Request) -> Response + Send + Sync),
    book: &Arc<Mutex<Book>>,
    stop: &Arc<AtomicBool>,
) -> Reply {
    match take_fault(book, r.path()) {
        Some(Fault::Status { code, .. }) => {
            log(book, r, Some(code));
            Response::status(code).header("Content-Type", "text/plain").body(format!("{code} injected fault\n")).into()
        }
        Some(Fault::Close { .. }) => {
            log(book, r, None);
            Reply::Raw(Vec::new())
        }
        Some(Fault::Hang) => {
            log(book, r, None);
            let (book, stop, path) = (book.clone(), stop.clone(), r.path().to_string());
            Reply::stream(move |_conn: &mut TcpStream| {
                // Held until the fault is cleared or the fake dropped; then closed unanswered.
                while !stop.load(Ordering::SeqCst)
                    && lock(&book).faults.iter().any(|(p, f)| *f == Fault::Hang && path.starts_with(p.as_str()))
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        }
        None => {
            let response = answer(r);
            log(book, r, Some(response.status));
            response.into()
        }
    }
}

/// The query parameter `name` of `target` (no percent-decoding: the fakes' parameters are plain).
fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod client {
    //! A raw HTTP/1.1 client for the fakes' own tests: one request per connection, as the
    //! fakes answer.
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Answer {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// Sends `method target` with `headers` and `body`; `None` when the connection closed or
    /// stayed silent for `timeout` without an answer.
    pub fn ask_within(
        port: u16,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Option<Answer> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
        for (n, v) in headers {
            req += &format!("{n}: {v}\r\n");
        }
        req += &format!("Content-Length: {}\r\n\r\n", body.len());
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let at = all.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&all[..at]).into_owned();
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Answer { status, headers, body: all[at + 4..].to_vec() })
    }

    pub fn ask(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        ask_within(port, method, target, headers, body, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to {method} {target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::client::{ask, ask_within};
    use super::*;

    #[test]
    fn faults_count_down_hold_and_close() {
        let e = Endpoint::start(|_| Response::ok("fine")).unwrap();
        e.set_fault("/a", Fault::Status { code: 500, times: 2 });
        e.set_fault("/a/b", Fault::Close { times: 1 });
        assert_eq!(ask(e.port(), "GET", "/a/x", &[], b"").status, 500);
        // The longer prefix wins.
        assert!(ask_within(e.port(), "GET", "/a/b", &[], b"", Duration::from_secs(5)).is_none());
        assert_eq!(ask(e.port(), "GET", "/a/b", &[], b"").status, 500);
        assert_eq!(ask(e.port(), "GET", "/a/x", &[], b"").text(), "fine");
        assert_eq!(ask(e.port(), "GET", "/a/b", &[], b"").status, 200);

        e.set_fault("/", Fault::Hang);
        let started = Instant::now();
        assert!(ask_within(e.port(), "GET", "/z", &[], b"", Duration::from_millis(700)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(700), "a held connection was closed early");
        e.clear_faults();
        assert_eq!(ask(e.port(), "GET", "/z", &[], b"").status, 200);
        let log = e.requests();
        let statuses: Vec<Option<u16>> = log.iter().map(|l| l.status).collect();
        assert_eq!(statuses, [Some(500), None, Some(500), Some(200), Some(200), None, Some(200)]);
        assert_eq!(log[0].path(), "/a/x");
    }

    #[test]
    fn queries_and_forwards() {
        assert_eq!(query("/m?api-version=2021-02-01&format=text", "format"), Some("text"));
        assert_eq!(query("/m?api-version=2021-02-01&format=text", "api-version"), Some("2021-02-01"));
        assert_eq!(query("/m?recursive", "recursive"), Some(""));
        assert_eq!(query("/m", "format"), None);
        let f = guest_forwards(Path::new("/bin/relay"), &[(METADATA_ADDR, 4000), (WIRESERVER_ADDR, 4001)]);
        assert_eq!(f[1].addr, WIRESERVER_ADDR);
        assert_eq!(f[1].target, GuestTarget::Cmd("/bin/relay 4001".into()));
        // Every forward lies inside its cloud's network, away from the host and the guest.
        for cloud in [Cloud::Aws, Cloud::Gce, Cloud::Azure] {
            let s = cloud.subnet();
            let mask = u32::MAX << (32 - s.prefix_len);
            let inside = |a: Ipv4Addr| u32::from(a) & mask == u32::from(s.net);
            let mut addrs = vec![METADATA_ADDR];
            if cloud == Cloud::Azure {
                addrs.push(WIRESERVER_ADDR);
            }
            for a in addrs {
                assert!(inside(a) && a != s.host && a != s.dhcp_start, "{cloud:?}: {a}");
            }
            assert!(inside(s.host) && inside(s.dhcp_start), "{cloud:?}");
        }
        let aws = Cloud::Aws.smbios("i-0abc");
        assert!(aws[0].fields.iter().all(|(k, v)| !["serial", "uuid"].contains(&k.as_str()) || v.starts_with("ec2")));
        assert_eq!(aws[1].fields[1], ("asset".into(), "i-0abc".into()));
    }
}
