//! `berth-net`: Berth's network configuration of a container host, DHCPv4 on every Ethernet
//! interface with lease renewal, the default route and `/run/berth/resolv.conf`; and the
//! `berth-netd` service that runs it (`src/main.rs`, docs/design.md §5). PID 1 only brings `lo`
//! up ([`link::loopback_up`]); no packet from the LAN is parsed in PID 1.
//!
//! - [`link`]: which interfaces are Ethernet NICs (sysfs: type 1 with a `device`; bridges,
//!   veths and other virtual links belong to the container runtimes), bringing them up.
//! - [`dhcp`]: the wire format, the client state machine (pure, time passed in) and its
//!   sockets (UDP to send, AF_PACKET to receive; `dhcp::io` says why).
//! - `netlink`: the address (with the lease's lifetime) and the default route (metric 1024 +
//!   ifindex, so that several interfaces' routes coexist; on-link when the router is outside
//!   the prefix, as with GCE's /32 leases).
//! - [`resolv`]: `/run/berth/resolv.conf`, written atomically, nameservers and search domains
//!   of all current leases. **The image must make `/etc/resolv.conf` a symlink to
//!   `/run/berth/resolv.conf`** (the root is read-only; the builder adds the link).
//!
//! [`Network`] runs every interface's client without threads, in one `poll` loop:
//!
//! ```text
//! let mut net = Network::start(Instant::now());
//! loop {
//!     net.poll_once(max_wait);  // poll its sockets until readable or net.next_deadline(),
//!                               // then on_readable (non-blocking reads) and on_tick
//!                               // (carrier checks, retransmissions, T1/T2/expiry)
//!     net.online()              // true while any interface holds an applied lease
//! }
//! ```
//!
//! Not done yet: DHCP on interfaces that appear after start (hotplug), restarting on carrier
//! loss, option 121 (classless static routes, used by some clouds instead of option 3) and
//! option 26 (interface MTU, 1460 on GCE).

pub mod dhcp;
pub mod link;
pub mod log;
mod netlink;
pub mod resolv;
#[cfg(test)]
mod tests;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use dhcp::client::{Action, Client, Config, Lease, Loss};
use dhcp::io::{Received, Sockets};
use netlink::{Address, DefaultRoute, Netlink};

/// How often to look for carrier on an interface just brought up.
const CARRIER_POLL: Duration = Duration::from_millis(100);
/// How long to wait for carrier before sending DISCOVERs anyway.
const CARRIER_WAIT: Duration = Duration::from_secs(10);
/// Default route metric: this plus the ifindex (lower index preferred).
const ROUTE_METRIC: u32 = 1024;
/// Packets handled per interface per [`Network::on_readable`] (a flood must not starve PID 1).
const READ_BATCH: usize = 32;

/// The DHCP clients of all configured interfaces.
pub struct Network {
    links: Vec<Link>,
    netlink: Option<Netlink>,
    resolv_conf: PathBuf,
    buf: Vec<u8>,
}

struct Link {
    name: String,
    index: u32,
    sockets: Sockets,
    client: Client,
    /// Until the interface runs (has carrier): when to look again, when to stop waiting.
    carrier: Option<(Instant, Instant)>,
    /// The lease whose address and route are in the kernel.
    applied: Option<Lease>,
}

impl Network {
    /// DHCP on every Ethernet interface (see [`link::ethernet_interfaces`]), brought up now.
    pub fn start(now: Instant) -> Network {
        let names = link::ethernet_interfaces(Path::new("/sys/class/net"));
        if names.is_empty() {
            log::line("network: no Ethernet interface to configure");
        } else {
            log::line(&format!("network: DHCP on {}", names.join(", ")));
        }
        Network::on_interfaces(&names, now, PathBuf::from(resolv::PATH))
    }

    /// DHCP on the interfaces named, writing DNS servers to `resolv_conf`. An interface that
    /// cannot be set up is logged and left out.
    pub fn on_interfaces(names: &[String], now: Instant, resolv_conf: PathBuf) -> Network {
        let netlink = Netlink::open().map_err(|e| log::line(&format!("network: {e}; leases cannot be applied"))).ok();
        let host_name = host_name();
        let links = names
            .iter()
            .filter_map(|name| {
                Link::open(name, now, host_name.clone()).map_err(|e| log::line(&format!("{name}: no DHCP: {e}"))).ok()
            })
            .collect();
        Network { links, netlink, resolv_conf, buf: vec![0; 16384] }
    }

    /// The sockets to poll for reading; call [`Network::on_readable`] when one is readable.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.links.iter().map(|l| l.sockets.fd()).collect()
    }

    /// Reads what arrived on every interface (non-blocking) and acts on it.
    pub fn on_readable(&mut self, now: Instant) {
        let mut changed = false;
        for link in &mut self.links {
            // Every packet read counts, well-formed or not (L4).
            for _ in 0..READ_BATCH {
                let range = match link.sockets.receive(&mut self.buf) {
                    Ok(Some(Received::Payload(range))) => range,
                    Ok(Some(Received::Skipped)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        log::line(&format!("{}: DHCP: {e}", link.name));
                        break;
                    }
                };
                let actions = link.client.on_packet(self.buf.get(range).unwrap_or_default(), now);
                changed |= link.carry_out(&mut self.netlink, actions, now);
            }
            link.sockets.drain_udp();
        }
        if changed {
            self.write_resolv_conf();
        }
    }

    /// Carrier checks, retransmissions and lease timers due at `now`.
    pub fn on_tick(&mut self, now: Instant) {
        let mut changed = false;
        for link in &mut self.links {
            if !link.carrier_ready(now) {
                continue;
            }
            let actions = link.client.on_timeout(now);
            changed |= link.carry_out(&mut self.netlink, actions, now);
        }
        if changed {
            self.write_resolv_conf();
        }
    }

    /// When [`Network::on_tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.links.iter().filter_map(|l| l.carrier.map(|(check, _)| check).or_else(|| l.client.deadline())).min()
    }

    /// Whether any interface holds a lease that is applied.
    pub fn online(&self) -> bool {
        self.links.iter().any(|l| l.applied.is_some())
    }

    /// The applied leases by interface.
    pub fn leases(&self) -> Vec<(&str, &Lease)> {
        self.links.iter().filter_map(|l| Some((l.name.as_str(), l.applied.as_ref()?))).collect()
    }

    /// Renews every bound lease now (for `berth-netd --once IFACE --renew` and tests).
    pub fn renew(&mut self, now: Instant) {
        for link in &mut self.links {
            let actions = link.client.renew(now);
            link.carry_out(&mut self.netlink, actions, now);
        }
    }

    /// The names of the interfaces being configured (those that could be set up).
    pub fn interfaces(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.name.as_str()).collect()
    }

    /// One line per interface for `berthctl status` (sd_notify `STATUS=`): the client's phase
    /// and the lease it holds, e.g. "eth0: bound 10.0.2.15/24 (netmask 255.255.255.0) from 10.0.2.2".
    pub fn status(&self) -> String {
        let one = |l: &Link| {
            let phase = format!("{:?}", l.client.phase()).to_lowercase();
            match l.client.lease() {
                Some(lease) => format!(
                    "{}: {phase} {}/{} (netmask {}) from {}",
                    l.name,
                    lease.address,
                    lease.prefix_len,
                    lease.netmask(),
                    lease.server
                ),
                None => format!("{}: {phase}", l.name),
            }
        };
        self.links.iter().map(one).collect::<Vec<_>>().join("; ")
    }

    /// One round of the loop: waits until a socket is readable, the next deadline or
    /// `max_wait`, whichever comes first, then reads what arrived and runs the timers.
    pub fn poll_once(&mut self, max_wait: Duration) {
        let now = Instant::now();
        let wake = self.next_deadline().map_or(max_wait, |d| d.saturating_duration_since(now).min(max_wait));
        let ms = u16::try_from(wake.as_millis()).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd> = self.fds().into_iter().map(|fd| PollFd::new(fd, PollFlags::POLLIN)).collect();
        // EINTR or a failed poll: the reads below are non-blocking and the timers check the clock.
        let _ = poll(&mut fds, PollTimeout::from(ms));
        drop(fds);
        let now = Instant::now();
        self.on_readable(now);
        self.on_tick(now);
    }

    /// Runs in the foreground until `done` or `until`; returns whether `done` held.
    pub fn run_until(&mut self, until: Instant, done: impl Fn(&Network) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            self.poll_once((until - now).min(Duration::from_secs(1)));
        }
    }

    fn write_resolv_conf(&self) {
        if let Err(e) = resolv::write(&self.resolv_conf, &resolv::render(&self.leases())) {
            log::line(&format!("network: {e}"));
        }
    }
}

impl Link {
    fn open(name: &str, now: Instant, host_name: Option<String>) -> Result<Link, String> {
        link::set_up(name)?;
        let index = link::index(name)?;
        let mac = link::mac(name)?;
        // Replies are taken unfragmented only: ask for what fits the MTU.
        let mtu = link::mtu(name).unwrap_or(1500);
        let max_message_size = u16::try_from(mtu.saturating_sub(28)).unwrap_or(u16::MAX).max(576);
        let sockets = Sockets::open(name, index)?;
        let config = Config { mac, host_name, max_message_size, seed: seed(mac) };
        let client = Client::new(config, now);
        Ok(Link {
            name: name.to_string(),
            index,
            sockets,
            client,
            carrier: Some((now, now + CARRIER_WAIT)),
            applied: None,
        })
    }

    /// Whether the client may run: the interface has carrier, or waiting for it is over.
    fn carrier_ready(&mut self, now: Instant) -> bool {
        let Some((check, give_up)) = self.carrier else { return true };
        if now < check {
            return false;
        }
        match link::is_running(&self.name) {
            Ok(true) => {}
            _ if now >= give_up => {
                log::line(&format!("{}: no carrier after {} s; trying DHCP anyway", self.name, CARRIER_WAIT.as_secs()))
            }
            _ => {
                self.carrier = Some((now + CARRIER_POLL, give_up));
                return false;
            }
        }
        self.carrier = None;
        true
    }

    /// Does what the client asks; returns whether the DNS configuration may have changed.
    fn carry_out(&mut self, netlink: &mut Option<Netlink>, actions: Vec<Action>, now: Instant) -> bool {
        let mut changed = false;
        for action in actions {
            match action {
                Action::Send { packet, to } => {
                    if let Err(e) = self.sockets.send(&packet, to) {
                        log::line(&format!("{}: DHCP: {e}", self.name));
                    }
                }
                Action::Configure { lease, renewed } => {
                    self.apply(netlink, lease, renewed, now);
                    changed = true;
                }
                Action::Deconfigure { lease, why } => {
                    self.remove(netlink, &lease, &why);
                    changed = true;
                }
                Action::Note(note) => log::line(&format!("{}: DHCP: {note}", self.name)),
            }
        }
        changed
    }

    fn apply(&mut self, netlink: &mut Option<Netlink>, lease: Lease, renewed: bool, now: Instant) {
        let what = format!("{}: DHCP lease {}/{}", self.name, lease.address, lease.prefix_len);
        let Some(nl) = netlink else {
            log::line(&format!("{what}: no netlink socket to apply it with"));
            return;
        };
        if let Err(e) = nl.replace_address(&self.address(&lease, now)) {
            log::line(&format!("{what}: {e}"));
            self.applied = None;
            return;
        }
        let route = self.route(&lease);
        if let Some(old) = self.applied.as_ref().and_then(|l| self.route(l)).filter(|old| Some(*old) != route)
            && let Err(e) = nl.delete_default_route(&old)
        {
            log::line(&format!("{what}: {e}"));
        }
        if let Some(route) = &route
            && let Err(e) = nl.replace_default_route(route)
        {
            log::line(&format!("{what}: {e}"));
        }
        if renewed {
            log::line(&format!("{what} renewed by {}, {}", lease.server, duration(&lease)));
        } else {
            log::line(&format!("{what} {}", describe(&lease)));
        }
        self.applied = Some(lease);
    }

    fn remove(&mut self, netlink: &mut Option<Netlink>, lease: &Lease, why: &Loss) {
        let what = format!("{}: DHCP lease {}/{}", self.name, lease.address, lease.prefix_len);
        let why = match why {
            Loss::Expired => "expired".to_string(),
            Loss::Nak { server, message } => {
                format!("refused by {server} ({})", message.as_deref().unwrap_or("NAK without a reason"))
            }
            Loss::Replaced => "replaced by another address".to_string(),
        };
        if let Some(nl) = netlink {
            let route = self.route(lease);
            for result in [
                route.map_or(Ok(()), |r| nl.delete_default_route(&r)),
                nl.delete_address(&self.address(lease, Instant::now())),
            ] {
                if let Err(e) = result {
                    log::line(&format!("{what}: {e}"));
                }
            }
        }
        self.applied = None;
        log::line(&format!("{what} {why}; address removed"));
    }

    fn address(&self, lease: &Lease, now: Instant) -> Address {
        let lifetime = match lease.expires_at() {
            // At least a second: the kernel refuses a zero lifetime.
            Some(t) => {
                u32::try_from(t.saturating_duration_since(now).as_secs()).unwrap_or(netlink::INFINITE - 1).max(1)
            }
            None => netlink::INFINITE,
        };
        Address {
            index: self.index,
            address: lease.address,
            prefix_len: lease.prefix_len,
            // /31 and /32 have no broadcast address (RFC 3021).
            broadcast: (lease.prefix_len < 31).then(|| lease.broadcast()),
            lifetime,
        }
    }

    fn route(&self, lease: &Lease) -> Option<DefaultRoute> {
        let router = *lease.routers.first()?;
        Some(DefaultRoute {
            index: self.index,
            router,
            source: lease.address,
            onlink: !lease.on_link(router),
            metric: ROUTE_METRIC.saturating_add(self.index),
        })
    }
}

/// "from 10.0.2.2, router 10.0.2.2, DNS 10.0.2.3, 86400 s": a lease in a log line.
pub fn describe(lease: &Lease) -> String {
    let router = lease.routers.first().map_or("no router".to_string(), |r| format!("router {r}"));
    let dns = if lease.dns.is_empty() {
        "no DNS".to_string()
    } else {
        format!("DNS {}", lease.dns.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "))
    };
    format!("from {}, {router}, {dns}, {}", lease.server, duration(lease))
}

fn duration(lease: &Lease) -> String {
    lease.duration.map_or("infinite".to_string(), |d| format!("{} s", d.as_secs()))
}

/// Our host name for option 12, unless it is a placeholder.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    let plain = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    (plain && !name.is_empty() && name != "localhost").then(|| name.to_string())
}

/// Differs between interfaces and boots: transaction ids must not collide with other clients'.
fn seed(mac: [u8; 6]) -> u64 {
    let random = random_bytes16().map(|b| u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let fallback =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut m = [0u8; 8];
    for (d, s) in m.iter_mut().zip(mac) {
        *d = s;
    }
    random.unwrap_or_else(fallback) ^ u64::from_ne_bytes(m)
}

/// 16 bytes from the kernel's generator without waiting for it to be seeded (GRND_INSECURE,
/// Linux 5.6+): transaction ids must differ between clients, not be secret. `None` on older kernels.
fn random_bytes16() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    // SAFETY: the kernel writes at most `b.len()` bytes into `b`, which outlives the call.
    let n = unsafe { nix::libc::getrandom(b.as_mut_ptr().cast(), b.len(), nix::libc::GRND_INSECURE) };
    (n == b.len() as isize).then_some(b)
}

#[cfg(test)]
mod l4 {
    use std::net::UdpSocket;
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    use super::*;

    /// A flood of packets that pass the filter but are not DHCP (here: any datagram socket as
    /// the packet socket, so that what each one holds is not an IPv4 packet) is read
    /// `READ_BATCH` at a time: the main loop gets its turn between batches.
    #[test]
    fn l4_malformed_packets_count_against_the_read_batch() {
        let packet = UdpSocket::bind("127.0.0.1:0").unwrap();
        packet.set_nonblocking(true).unwrap();
        let probe = packet.try_clone().unwrap();
        let to = packet.local_addr().unwrap();
        let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 3 * READ_BATCH;
        for _ in 0..sent {
            flood.send_to(b"not an IPv4 packet", to).unwrap();
        }
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let config = Config { mac: [2, 0, 0, 0, 0, 1], host_name: None, max_message_size: 576, seed: 1 };
        let dir = tempfile::tempdir().unwrap();
        let mut net = Network {
            links: vec![Link {
                name: "flood0".into(),
                index: 0,
                sockets: Sockets::from_parts(OwnedFd::from(packet), udp),
                client: Client::new(config, now),
                carrier: None,
                applied: None,
            }],
            netlink: None,
            resolv_conf: dir.path().join("resolv.conf"),
            buf: vec![0; 16384],
        };
        let left = || {
            let mut n = 0;
            let mut b = [0u8; 64];
            while probe.recv(&mut b).is_ok() {
                n += 1;
            }
            n
        };
        net.on_readable(now);
        net.on_readable(now);
        // Two rounds read two batches; the third is still queued (the old loop read them all
        // in the first round).
        assert_eq!(left(), sent - 2 * READ_BATCH);
    }
}
