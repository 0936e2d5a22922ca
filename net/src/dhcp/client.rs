//! The DHCPv4 client state machine of RFC 2131 §4.4 (its figure 5), without I/O: the caller
//! passes time in, hands over received packets and carries out the [`Action`]s.
//!
//! INIT → SELECTING (DISCOVER, retransmitted after 4, 8, 16, 32, 64, 64, … s ±1 s) → on the
//! first OFFER, REQUESTING (REQUEST naming the server and the offered address, same backoff;
//! after 4 unanswered REQUESTs back to INIT) → on ACK, BOUND → at T1 RENEWING (REQUEST with
//! `ciaddr`, unicast to the server) → at T2 REBINDING (the same, broadcast) → at expiry the
//! lease is lost and the client starts over from INIT. A NAK while requesting, renewing or
//! rebinding also starts over; consecutive NAKs wait 4, 8, … 64 s before the next DISCOVER so
//! that a server that NAKs everything cannot make the client spin. Retransmissions while
//! renewing and rebinding follow §4.4.5: half the time left to T2 (to expiry), at least 60 s.
//!
//! Not implemented: INIT-REBOOT (there is no lease storage), the ARP probe of an offered
//! address with DECLINE, RELEASE, and collecting several OFFERs (the first one wins).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::message::{self, FLAG_BROADCAST, Message, MessageType};

/// Option 55: mask, router, DNS, host name, domain, lease time, T1, T2.
const PARAMETERS: [u8; 8] = [1, 3, 6, 12, 15, 51, 58, 59];
/// REQUESTs in REQUESTING before starting over (about 60 s with the backoff).
const REQUEST_TRIES: u32 = 4;
/// Shorter leases are taken as this long: a zero-second lease would have the client spin
/// (dhcpcd's floor too).
const MIN_LEASE: Duration = Duration::from_secs(20);
/// When neither the ACK nor the OFFER says (a server violating RFC 2131 §4.3.1).
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// RFC 2131 §4.4.5's floor for retransmissions while renewing or rebinding.
const MIN_RENEW_RETRANSMIT: Duration = Duration::from_secs(60);

/// What the client needs to know about its interface.
#[derive(Debug, Clone)]
pub struct Config {
    pub mac: [u8; 6],
    /// Sent as option 12 when set (some clouds register it in their DNS).
    pub host_name: Option<String>,
    /// Option 57: the largest message we take whole (the interface's MTU less the IP and UDP
    /// headers: fragments are not reassembled on our receive path).
    pub max_message_size: u16,
    /// Seeds transaction ids and retransmission jitter.
    pub seed: u64,
}

/// An address lease and what came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// In order of preference (option 3).
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Search domains (option 15).
    pub domains: Vec<String>,
    pub host_name: Option<String>,
    /// `None`: infinite.
    pub duration: Option<Duration>,
    pub t1: Duration,
    pub t2: Duration,
    /// When the lease started: when the REQUEST it answers was sent (RFC 2131 §4.4.1).
    pub acquired: Instant,
}

impl Lease {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(mask_bits(self.prefix_len))
    }

    /// Whether `ip` is on the lease's subnet (a router outside it needs an on-link route).
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let m = mask_bits(self.prefix_len);
        ip.to_bits() & m == self.address.to_bits() & m
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(self.address.to_bits() | !mask_bits(self.prefix_len))
    }

    pub fn renew_at(&self) -> Option<Instant> {
        self.duration.map(|_| self.acquired + self.t1)
    }

    pub fn rebind_at(&self) -> Option<Instant> {
        self.duration.map(|_| self.acquired + self.t2)
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.duration.map(|d| self.acquired + d)
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0)
}

/// Where a packet goes: to port 67 of every host on the link, or of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Broadcast,
    Unicast(Ipv4Addr),
}

/// Why a lease was given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    Expired,
    Nak {
        server: Ipv4Addr,
        message: Option<String>,
    },
    /// The renewal's ACK gave another address.
    Replaced,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        packet: Vec<u8>,
        to: Destination,
    },
    /// Put the lease's address, route and DNS in place (again, when `renewed`: the lifetimes
    /// changed).
    Configure {
        lease: Lease,
        renewed: bool,
    },
    /// Take the lease's address and route away.
    Deconfigure {
        lease: Lease,
        why: Loss,
    },
    /// Worth a log line.
    Note(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Init,
    Selecting,
    Requesting,
    Bound,
    Renewing,
    Rebinding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offer {
    address: Ipv4Addr,
    server: Ipv4Addr,
    lease_time: Option<u32>,
}

#[derive(Debug, Clone)]
enum State {
    Init { at: Instant },
    Selecting { started: Instant, tries: u32, next: Instant },
    Requesting { started: Instant, offer: Offer, tries: u32, sent: Instant, next: Instant },
    Bound(Lease),
    Renewing { lease: Lease, started: Instant, sent: Instant, next: Instant },
    Rebinding { lease: Lease, started: Instant, sent: Instant, next: Instant },
}

/// One interface's DHCP client.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    state: State,
    xid: u32,
    rng: u64,
    /// NAKs since the last lease, for the restart delay.
    naks: u32,
}

impl Client {
    /// A client in INIT that sends its first DISCOVER at `now`.
    pub fn new(config: Config, now: Instant) -> Client {
        let rng = config.seed;
        Client { config, state: State::Init { at: now }, xid: 0, rng, naks: 0 }
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Init { .. } => Phase::Init,
            State::Selecting { .. } => Phase::Selecting,
            State::Requesting { .. } => Phase::Requesting,
            State::Bound(_) => Phase::Bound,
            State::Renewing { .. } => Phase::Renewing,
            State::Rebinding { .. } => Phase::Rebinding,
        }
    }

    /// The lease held (bound, renewing or rebinding).
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound(l) | State::Renewing { lease: l, .. } | State::Rebinding { lease: l, .. } => Some(l),
            _ => None,
        }
    }

    /// When [`Client::on_timeout`] has something to do; `None` with an infinite lease.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Init { at } => Some(*at),
            State::Selecting { next, .. } | State::Requesting { next, .. } => Some(*next),
            State::Bound(l) => l.renew_at(),
            State::Renewing { next, .. } | State::Rebinding { next, .. } => Some(*next),
        }
    }

    /// Retransmissions and lease timers due at `now`.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.deadline().is_none_or(|d| now < d) {
            return out;
        }
        let state = std::mem::replace(&mut self.state, State::Init { at: now });
        self.state = match state {
            State::Init { .. } => self.discover(now, &mut out),
            State::Selecting { started, tries, .. } => {
                out.push(self.send(MessageType::Discover, started, now, None, None));
                State::Selecting {
                    started,
                    tries: tries.saturating_add(1),
                    next: now + self.backoff(tries.saturating_add(1)),
                }
            }
            State::Requesting { offer, tries, .. } if tries >= REQUEST_TRIES => {
                out.push(Action::Note(format!(
                    "no answer from {} to {tries} requests for {}; starting over",
                    offer.server, offer.address
                )));
                self.discover(now, &mut out)
            }
            State::Requesting { started, offer, tries, .. } => {
                out.push(self.send(MessageType::Request, started, now, None, Some(offer)));
                State::Requesting { started, offer, tries: tries + 1, sent: now, next: now + self.backoff(tries + 1) }
            }
            State::Bound(lease) => self.lease_timer(lease, None, now, &mut out),
            State::Renewing { lease, started, .. } => {
                self.lease_timer(lease, Some((Phase::Renewing, started)), now, &mut out)
            }
            State::Rebinding { lease, started, .. } => {
                self.lease_timer(lease, Some((Phase::Rebinding, started)), now, &mut out)
            }
        };
        out
    }

    /// Goes to RENEWING at once (for tests and `berth-netd --once IFACE --renew`); nothing unless bound.
    pub fn renew(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let State::Bound(lease) = &self.state {
            let lease = lease.clone();
            self.xid = self.next_u32();
            let to = Destination::Unicast(lease.server);
            out.push(self.send_to(MessageType::Request, now, now, Some(&lease), None, to));
            let next = retransmit(now, lease.rebind_at().unwrap_or(now + MIN_RENEW_RETRANSMIT));
            self.state = State::Renewing { lease, started: now, sent: now, next };
        }
        out
    }

    /// A packet that arrived on the client port at `now` (garbage and other clients' replies are
    /// ignored).
    pub fn on_packet(&mut self, bytes: &[u8], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Ok(m) = message::decode(bytes) else { return out };
        if m.op != message::BOOTREPLY || m.xid != self.xid || m.chaddr.get(..6) != Some(&self.config.mac[..]) {
            return out;
        }
        let Some(kind) = m.options.message_type else { return out };
        let from = m.options.server_id;
        let state = std::mem::replace(&mut self.state, State::Init { at: now });
        self.state = match (state, kind) {
            (State::Selecting { started, tries, next }, MessageType::Offer) => {
                let server = from.or((!m.siaddr.is_unspecified()).then_some(m.siaddr));
                match server {
                    Some(server) if usable(m.yiaddr) => {
                        let offer = Offer { address: m.yiaddr, server, lease_time: m.options.lease_time };
                        out.push(self.send(MessageType::Request, started, now, None, Some(offer)));
                        State::Requesting { started, offer, tries: 1, sent: now, next: now + self.backoff(1) }
                    }
                    _ => State::Selecting { started, tries, next },
                }
            }
            (State::Requesting { offer, sent, .. }, MessageType::Ack)
                if from.is_none_or(|s| s == offer.server) && usable(m.yiaddr) =>
            {
                let fallback = offer.lease_time.map_or(Some(DEFAULT_LEASE), lease_duration);
                let lease = make_lease(&m, offer.server, fallback, sent);
                self.naks = 0;
                out.push(Action::Configure { lease: lease.clone(), renewed: false });
                State::Bound(lease)
            }
            (State::Requesting { offer, .. }, MessageType::Nak) if from.is_none_or(|s| s == offer.server) => {
                let why = m.options.message.as_deref().unwrap_or("no reason given");
                out.push(Action::Note(format!(
                    "NAK from {} for {}: {why}; starting over",
                    offer.server, offer.address
                )));
                self.restart(now, &mut out)
            }
            (State::Renewing { lease, sent, .. } | State::Rebinding { lease, sent, .. }, MessageType::Ack)
                if usable(m.yiaddr) =>
            {
                let server = from.unwrap_or(lease.server);
                let renewed = make_lease(&m, server, lease.duration, sent);
                if renewed.address == lease.address {
                    out.push(Action::Configure { lease: renewed.clone(), renewed: true });
                } else {
                    out.push(Action::Deconfigure { lease, why: Loss::Replaced });
                    out.push(Action::Configure { lease: renewed.clone(), renewed: false });
                }
                self.naks = 0;
                State::Bound(renewed)
            }
            (State::Renewing { lease, .. } | State::Rebinding { lease, .. }, MessageType::Nak) => {
                let server = from.unwrap_or(lease.server);
                out.push(Action::Deconfigure { lease, why: Loss::Nak { server, message: m.options.message.clone() } });
                self.restart(now, &mut out)
            }
            (other, _) => other,
        };
        out
    }

    /// A fresh DISCOVER with a new transaction id; the state to be in after it.
    fn discover(&mut self, now: Instant, out: &mut Vec<Action>) -> State {
        self.xid = self.next_u32();
        out.push(self.send(MessageType::Discover, now, now, None, None));
        State::Selecting { started: now, tries: 1, next: now + self.backoff(1) }
    }

    /// After a NAK: DISCOVER now the first time, later after a growing pause.
    fn restart(&mut self, now: Instant, out: &mut Vec<Action>) -> State {
        self.naks = self.naks.saturating_add(1);
        if self.naks <= 1 {
            return self.discover(now, out);
        }
        let secs = 4u64.checked_shl(self.naks - 2).unwrap_or(u64::MAX).min(64);
        State::Init { at: now + Duration::from_secs(secs) }
    }

    /// T1, T2 and expiry of a held lease; `current` is the renewal exchange under way.
    fn lease_timer(
        &mut self,
        lease: Lease,
        current: Option<(Phase, Instant)>,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> State {
        let (Some(t1), Some(t2), Some(expiry)) = (lease.renew_at(), lease.rebind_at(), lease.expires_at()) else {
            return State::Bound(lease);
        };
        if now >= expiry {
            out.push(Action::Deconfigure { lease, why: Loss::Expired });
            return self.discover(now, out);
        }
        let (phase, until) = if now >= t2 {
            (Phase::Rebinding, expiry)
        } else if now >= t1 {
            (Phase::Renewing, t2)
        } else {
            return State::Bound(lease);
        };
        // A new exchange (new xid) on entering RENEWING or REBINDING; retransmissions keep it.
        let started = match current {
            Some((p, started)) if p == phase => started,
            _ => {
                self.xid = self.next_u32();
                now
            }
        };
        // RENEWING asks the server that granted the lease; REBINDING asks any server.
        let to = if phase == Phase::Renewing { Destination::Unicast(lease.server) } else { Destination::Broadcast };
        out.push(self.send_to(MessageType::Request, started, now, Some(&lease), None, to));
        let next = retransmit(now, until);
        if phase == Phase::Renewing {
            State::Renewing { lease, started, sent: now, next }
        } else {
            State::Rebinding { lease, started, sent: now, next }
        }
    }

    /// A broadcast DISCOVER or REQUEST. `held`: renewing or rebinding that lease (`ciaddr`);
    /// `offer`: requesting it (options 50 and 54).
    fn send(
        &self,
        kind: MessageType,
        started: Instant,
        now: Instant,
        held: Option<&Lease>,
        offer: Option<Offer>,
    ) -> Action {
        self.send_to(kind, started, now, held, offer, Destination::Broadcast)
    }

    fn send_to(
        &self,
        kind: MessageType,
        started: Instant,
        now: Instant,
        held: Option<&Lease>,
        offer: Option<Offer>,
        to: Destination,
    ) -> Action {
        let mut m = Message::request(self.xid, self.config.mac);
        m.secs = u16::try_from(now.saturating_duration_since(started).as_secs()).unwrap_or(u16::MAX);
        let o = &mut m.options;
        o.message_type = Some(kind);
        o.client_id = Some([&[message::HTYPE_ETHERNET][..], &self.config.mac].concat());
        o.parameter_request_list = PARAMETERS.to_vec();
        o.max_message_size = Some(self.config.max_message_size.max(576));
        o.host_name = self.config.host_name.clone();
        if let Some(offer) = offer {
            o.requested_ip = Some(offer.address);
            o.server_id = Some(offer.server);
        }
        match held {
            Some(lease) => m.ciaddr = lease.address,
            // No address yet: the server must broadcast its answer.
            None => m.flags = FLAG_BROADCAST,
        }
        Action::Send { packet: m.encode(), to }
    }

    /// 4, 8, 16, 32, 64, 64, … s for the `tries`-th transmission, ±1 s (RFC 2131 §4.1).
    fn backoff(&mut self, tries: u32) -> Duration {
        let base = 4u64.checked_shl(tries.saturating_sub(1)).unwrap_or(u64::MAX).min(64) * 1000;
        let jitter = self.next_u32() % 2001;
        Duration::from_millis(base - 1000 + u64::from(jitter))
    }

    /// splitmix64: enough for transaction ids and jitter, which must differ between clients,
    /// not be secret.
    fn next_u32(&mut self) -> u32 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 32) as u32
    }
}

/// The next retransmission while renewing or rebinding: half the time left before `until`, at
/// least 60 s, but no later than `until` itself (where the next phase starts).
fn retransmit(now: Instant, until: Instant) -> Instant {
    let half = until.saturating_duration_since(now) / 2;
    (now + half.max(MIN_RENEW_RETRANSMIT)).min(until)
}

/// An address a server may give: not 0.0.0.0, broadcast, loopback or multicast.
fn usable(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_loopback() || a.is_multicast())
}

/// Option 51 as a duration: `None` for infinite, at least [`MIN_LEASE`].
fn lease_duration(secs: u32) -> Option<Duration> {
    (secs != u32::MAX).then(|| Duration::from_secs(u64::from(secs)).max(MIN_LEASE))
}

/// The lease an ACK grants; `fallback` is the duration when the ACK lacks option 51.
fn make_lease(m: &Message, server: Ipv4Addr, fallback: Option<Duration>, acquired: Instant) -> Lease {
    let o = &m.options;
    let duration = o.lease_time.map_or(fallback, lease_duration);
    let d = duration.unwrap_or(Duration::MAX);
    let secs = |s: Option<u32>| s.map(|s| Duration::from_secs(u64::from(s))).filter(|s| !s.is_zero());
    let t2 = secs(o.rebinding_time).filter(|t| *t < d).unwrap_or(d.mul_f64(0.875));
    let t1 = secs(o.renewal_time).filter(|t| *t <= t2).unwrap_or((d / 2).min(t2));
    Lease {
        address: m.yiaddr,
        prefix_len: prefix_len(o.subnet_mask, m.yiaddr),
        server,
        routers: o.routers.iter().copied().filter(|r| usable(*r)).collect(),
        dns: o.dns_servers.iter().copied().filter(|r| usable(*r) || r.is_loopback()).collect(),
        domains: o.domain_name.as_deref().map(|d| d.split(' ').map(str::to_string).collect()).unwrap_or_default(),
        host_name: o.host_name.clone(),
        duration,
        t1,
        t2,
        acquired,
    }
}

/// The prefix length of a contiguous subnet mask; the address's classful default without one
/// (or with a malformed one), as RFC 2131 clients traditionally do.
fn prefix_len(mask: Option<Ipv4Addr>, address: Ipv4Addr) -> u8 {
    if let Some(mask) = mask {
        let ones = mask.to_bits().leading_ones();
        if mask.to_bits() == mask_bits(ones as u8) {
            return ones as u8;
        }
    }
    match address.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::message::{Options, decode};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// A fake clock: `t0` plus seconds.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
        fn secs(&self, t: Instant) -> f64 {
            t.duration_since(self.0).as_secs_f64()
        }
    }

    fn config() -> Config {
        Config { mac: MAC, host_name: Some("berth".into()), max_message_size: 1472, seed: 7 }
    }

    fn sent(actions: &[Action]) -> Vec<(Message, Destination)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { packet, to } => Some((decode(packet).expect("our own packet decodes"), *to)),
                _ => None,
            })
            .collect()
    }

    fn only_sent(actions: &[Action]) -> (Message, Destination) {
        let s = sent(actions);
        assert_eq!(s.len(), 1, "{actions:?}");
        s.into_iter().next().unwrap()
    }

    /// A server's reply to `request`.
    fn reply(request: &Message, kind: MessageType, options: Options) -> Vec<u8> {
        let mut m = request.clone();
        m.op = message::BOOTREPLY;
        m.flags = 0;
        m.yiaddr = if kind == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { ADDRESS };
        m.options = Options { message_type: Some(kind), server_id: Some(SERVER), ..options };
        m.encode()
    }

    fn lease_options() -> Options {
        Options {
            lease_time: Some(86400),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![SERVER],
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            domain_name: Some("example.com".into()),
            ..Options::default()
        }
    }

    /// A client bound at `clock.at(at)` with `options`; returns the Configure action's lease.
    fn bound(clock: &Clock, at: f64, options: Options) -> (Client, Lease) {
        let mut c = Client::new(config(), clock.at(at));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(at)));
        let (request, _) =
            only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, options.clone()), clock.at(at)));
        let actions = c.on_packet(&reply(&request, MessageType::Ack, options), clock.at(at + 0.5));
        let [Action::Configure { lease, renewed: false }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(c.phase(), Phase::Bound);
        (c, lease.clone())
    }

    #[test]
    fn init_broadcasts_a_discover_at_once() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        assert_eq!((c.phase(), c.deadline()), (Phase::Init, Some(clock.at(0.0))));
        let (m, to) = only_sent(&c.on_timeout(clock.at(0.0)));
        assert_eq!(to, Destination::Broadcast);
        assert_eq!((m.op, m.htype, m.hlen, m.flags, m.ciaddr), (1, 1, 6, FLAG_BROADCAST, Ipv4Addr::UNSPECIFIED));
        assert_eq!(&m.chaddr[..6], &MAC);
        assert_eq!(m.options.message_type, Some(MessageType::Discover));
        assert_eq!(m.options.client_id.as_deref(), Some(&[1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56][..]));
        assert_eq!(m.options.parameter_request_list, PARAMETERS);
        assert_eq!(m.options.max_message_size, Some(1472));
        assert_eq!(m.options.host_name.as_deref(), Some("berth"));
        assert_eq!((m.options.requested_ip, m.options.server_id), (None, None));
        assert_eq!(c.phase(), Phase::Selecting);
    }

    #[test]
    fn discover_backs_off_4_8_16_32_64_64_seconds_within_one_second() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (first, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let mut last = 0.0;
        for (i, want) in [4.0, 8.0, 16.0, 32.0, 64.0, 64.0, 64.0].into_iter().enumerate() {
            let due = clock.secs(c.deadline().unwrap());
            assert!((due - last - want).abs() <= 1.0, "retransmission {i}: after {} s, not {want} ± 1", due - last);
            // Nothing before the deadline.
            assert!(c.on_timeout(clock.at(due - 0.01)).is_empty());
            let (m, to) = only_sent(&c.on_timeout(clock.at(due)));
            assert_eq!(
                (m.xid, to, m.options.message_type),
                (first.xid, Destination::Broadcast, Some(MessageType::Discover))
            );
            assert_eq!(m.secs, due as u16);
            last = due;
        }
        assert_eq!(c.phase(), Phase::Selecting);
    }

    #[test]
    fn an_offer_is_requested_by_broadcast_naming_server_and_address() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let (m, to) = only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(1.0)));
        assert_eq!(c.phase(), Phase::Requesting);
        assert_eq!(
            (to, m.xid, m.flags, m.ciaddr),
            (Destination::Broadcast, discover.xid, FLAG_BROADCAST, Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(m.options.message_type, Some(MessageType::Request));
        assert_eq!((m.options.requested_ip, m.options.server_id), (Some(ADDRESS), Some(SERVER)));
        let due = clock.secs(c.deadline().unwrap());
        assert!((due - 5.0).abs() <= 1.0, "first REQUEST retransmission at {due} s");
        // A second OFFER changes nothing.
        assert!(c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(1.5)).is_empty());
    }

    #[test]
    fn replies_for_someone_else_and_garbage_are_ignored() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let good = reply(&discover, MessageType::Offer, lease_options());
        let mut other_xid = decode(&good).unwrap();
        other_xid.xid ^= 1;
        let mut other_mac = decode(&good).unwrap();
        other_mac.chaddr[5] ^= 1;
        let mut a_request = decode(&good).unwrap();
        a_request.op = message::BOOTREQUEST;
        let mut no_server = decode(&good).unwrap();
        no_server.options.server_id = None;
        no_server.siaddr = Ipv4Addr::UNSPECIFIED;
        let mut zero_address = decode(&good).unwrap();
        zero_address.yiaddr = Ipv4Addr::UNSPECIFIED;
        for bad in [other_xid, other_mac, a_request, no_server, zero_address] {
            assert!(c.on_packet(&bad.encode(), clock.at(1.0)).is_empty(), "{bad:?}");
        }
        assert!(c.on_packet(&good[..100], clock.at(1.0)).is_empty());
        assert!(c.on_packet(&reply(&discover, MessageType::Ack, lease_options()), clock.at(1.0)).is_empty());
        assert!(c.on_packet(&reply(&discover, MessageType::Nak, Options::default()), clock.at(1.0)).is_empty());
        assert_eq!(c.phase(), Phase::Selecting);
        // Without option 54, siaddr names the server.
        let mut siaddr_only = decode(&good).unwrap();
        siaddr_only.options.server_id = None;
        siaddr_only.siaddr = SERVER;
        let (m, _) = only_sent(&c.on_packet(&siaddr_only.encode(), clock.at(1.0)));
        assert_eq!(m.options.server_id, Some(SERVER));
    }

    #[test]
    fn an_ack_binds_with_the_lease_timed_from_the_request() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let (request, _) =
            only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(1.0)));
        // An ACK from another server is not ours to take.
        let mut foreign = decode(&reply(&request, MessageType::Ack, lease_options())).unwrap();
        foreign.options.server_id = Some(Ipv4Addr::new(10, 0, 2, 99));
        assert!(c.on_packet(&foreign.encode(), clock.at(1.2)).is_empty());
        let actions = c.on_packet(&reply(&request, MessageType::Ack, lease_options()), clock.at(1.5));
        let [Action::Configure { lease, renewed: false }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(
            *lease,
            Lease {
                address: ADDRESS,
                prefix_len: 24,
                server: SERVER,
                routers: vec![SERVER],
                dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
                domains: vec!["example.com".into()],
                host_name: None,
                duration: Some(Duration::from_secs(86400)),
                t1: Duration::from_secs(43200),
                t2: Duration::from_secs(75600),
                acquired: clock.at(1.0),
            }
        );
        assert_eq!((c.phase(), c.lease(), c.deadline()), (Phase::Bound, Some(lease), Some(clock.at(43201.0))));
        assert_eq!(
            (lease.netmask(), lease.broadcast()),
            (Ipv4Addr::new(255, 255, 255, 0), Ipv4Addr::new(10, 0, 2, 255))
        );
        assert!(lease.on_link(SERVER) && !lease.on_link(Ipv4Addr::new(10, 0, 3, 1)));
        assert!(c.on_timeout(clock.at(43200.0)).is_empty());
    }

    #[test]
    fn server_t1_t2_are_used_when_consistent() {
        let clock = Clock(Instant::now());
        let with = |t1, t2| Options { renewal_time: t1, rebinding_time: t2, lease_time: Some(1000), ..lease_options() };
        let (_, l) = bound(&clock, 0.0, with(Some(100), Some(200)));
        assert_eq!((l.t1, l.t2), (Duration::from_secs(100), Duration::from_secs(200)));
        let (_, l) = bound(&clock, 0.0, with(Some(300), Some(2000)));
        assert_eq!((l.t1, l.t2), (Duration::from_secs(300), Duration::from_secs(875)));
        let (_, l) = bound(&clock, 0.0, with(Some(900), Some(800)));
        assert_eq!((l.t1, l.t2), (Duration::from_secs(500), Duration::from_secs(800)));
        let (_, l) = bound(&clock, 0.0, with(None, Some(300)));
        assert_eq!((l.t1, l.t2), (Duration::from_secs(300), Duration::from_secs(300)));
        let (_, l) = bound(&clock, 0.0, Options { lease_time: Some(2), ..lease_options() });
        assert_eq!(l.duration, Some(MIN_LEASE));
    }

    #[test]
    fn t1_renews_by_unicast_with_ciaddr_and_an_ack_extends_the_lease() {
        let clock = Clock(Instant::now());
        let (mut c, lease) = bound(&clock, 0.0, lease_options());
        let (m, to) = only_sent(&c.on_timeout(clock.at(43200.0)));
        assert_eq!(c.phase(), Phase::Renewing);
        assert_eq!((to, m.ciaddr, m.flags), (Destination::Unicast(SERVER), ADDRESS, 0));
        assert_eq!((m.options.requested_ip, m.options.server_id), (None, None));
        // Half of the 32400 s left to T2.
        assert_eq!(c.deadline(), Some(clock.at(43200.0 + 16200.0)));
        let (again, to) = only_sent(&c.on_timeout(clock.at(59400.0)));
        assert_eq!((again.xid, to, again.secs), (m.xid, Destination::Unicast(SERVER), 16200));
        let actions = c.on_packet(&reply(&again, MessageType::Ack, lease_options()), clock.at(59400.2));
        let [Action::Configure { lease: renewed, renewed: true }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(renewed.acquired, clock.at(59400.0));
        assert_eq!(renewed.address, lease.address);
        assert_eq!((c.phase(), c.deadline()), (Phase::Bound, Some(clock.at(59400.0 + 43200.0))));
    }

    #[test]
    fn renewing_retransmits_at_least_60_s_apart_and_stops_at_t2() {
        let clock = Clock(Instant::now());
        let (mut c, _) = bound(&clock, 0.0, Options { lease_time: Some(400), ..lease_options() });
        // T1 200 s, T2 350 s.
        only_sent(&c.on_timeout(clock.at(200.0)));
        assert_eq!(c.deadline(), Some(clock.at(275.0)));
        only_sent(&c.on_timeout(clock.at(275.0)));
        assert_eq!(c.deadline(), Some(clock.at(335.0)), "60 s at least");
        only_sent(&c.on_timeout(clock.at(335.0)));
        assert_eq!(c.deadline(), Some(clock.at(350.0)), "no later than T2");
    }

    #[test]
    fn t2_rebinds_by_broadcast_and_any_server_may_answer() {
        let clock = Clock(Instant::now());
        let (mut c, _) = bound(&clock, 0.0, lease_options());
        let (renew, _) = only_sent(&c.on_timeout(clock.at(43200.0)));
        let (m, to) = only_sent(&c.on_timeout(clock.at(75600.0)));
        assert_eq!(c.phase(), Phase::Rebinding);
        assert_eq!((to, m.ciaddr, m.flags), (Destination::Broadcast, ADDRESS, 0));
        assert_ne!(m.xid, renew.xid, "a new exchange");
        // Half of the 10800 s left.
        assert_eq!(c.deadline(), Some(clock.at(75600.0 + 5400.0)));
        // A late answer to the renewal is not taken.
        assert!(c.on_packet(&reply(&renew, MessageType::Ack, lease_options()), clock.at(75601.0)).is_empty());
        let mut other = decode(&reply(&m, MessageType::Ack, lease_options())).unwrap();
        other.options.server_id = Some(Ipv4Addr::new(10, 0, 2, 4));
        let actions = c.on_packet(&other.encode(), clock.at(75601.0));
        let [Action::Configure { lease, renewed: true }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 4));
        assert_eq!(c.phase(), Phase::Bound);
    }

    #[test]
    fn expiry_deconfigures_and_starts_over() {
        let clock = Clock(Instant::now());
        let (mut c, lease) = bound(&clock, 0.0, lease_options());
        only_sent(&c.on_timeout(clock.at(43200.0)));
        only_sent(&c.on_timeout(clock.at(75600.0)));
        let mut t = 75600.0;
        while let Some(d) = c.deadline().filter(|_| c.phase() == Phase::Rebinding) {
            t = clock.secs(d);
            if t >= 86400.0 {
                break;
            }
            only_sent(&c.on_timeout(d));
        }
        assert_eq!(t, 86400.0);
        let actions = c.on_timeout(clock.at(86400.0));
        assert_eq!(actions.first(), Some(&Action::Deconfigure { lease, why: Loss::Expired }));
        let (m, _) = only_sent(&actions);
        assert_eq!(m.options.message_type, Some(MessageType::Discover));
        assert_eq!((c.phase(), c.lease()), (Phase::Selecting, None));
    }

    #[test]
    fn a_stalled_clock_skips_to_the_phase_it_is_in() {
        let clock = Clock(Instant::now());
        let (mut c, _) = bound(&clock, 0.0, lease_options());
        let (m, to) = only_sent(&c.on_timeout(clock.at(80000.0)));
        assert_eq!((c.phase(), to, m.ciaddr), (Phase::Rebinding, Destination::Broadcast, ADDRESS));
        let (mut c, lease) = bound(&clock, 0.0, lease_options());
        let actions = c.on_timeout(clock.at(90000.0));
        assert_eq!(actions.first(), Some(&Action::Deconfigure { lease, why: Loss::Expired }));
        assert_eq!(c.phase(), Phase::Selecting);
    }

    #[test]
    fn a_nak_while_renewing_drops_the_lease_and_repeated_naks_slow_down() {
        let clock = Clock(Instant::now());
        let (mut c, lease) = bound(&clock, 0.0, lease_options());
        let (renew, _) = only_sent(&c.on_timeout(clock.at(43200.0)));
        let nak = Options { message: Some("wrong network".into()), ..Options::default() };
        let actions = c.on_packet(&reply(&renew, MessageType::Nak, nak), clock.at(43200.1));
        let why = Loss::Nak { server: SERVER, message: Some("wrong network".into()) };
        assert_eq!(actions.first(), Some(&Action::Deconfigure { lease, why }));
        let (discover, _) = only_sent(&actions);
        assert_eq!(c.phase(), Phase::Selecting);
        // The second NAK in a row (while requesting) waits 4 s, the third 8 s.
        let mut t = 43201.0;
        let mut discover = discover;
        for pause in [4.0, 8.0, 16.0] {
            let (request, _) =
                only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(t)));
            let actions = c.on_packet(&reply(&request, MessageType::Nak, Options::default()), clock.at(t));
            assert!(matches!(actions.as_slice(), [Action::Note(n)] if n.contains("NAK from 10.0.2.2")), "{actions:?}");
            assert_eq!((c.phase(), c.deadline()), (Phase::Init, Some(clock.at(t + pause))));
            t += pause;
            discover = only_sent(&c.on_timeout(clock.at(t))).0;
        }
        // A lease resets the count.
        let (request, _) = only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(t)));
        assert_eq!(c.on_packet(&reply(&request, MessageType::Ack, lease_options()), clock.at(t)).len(), 1);
        assert_eq!(c.naks, 0);
    }

    #[test]
    fn unanswered_requests_go_back_to_discover() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let (request, _) =
            only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, lease_options()), clock.at(0.0)));
        for _ in 1..REQUEST_TRIES {
            let d = c.deadline().unwrap();
            let (m, _) = only_sent(&c.on_timeout(d));
            assert_eq!((m.xid, m.options.requested_ip), (request.xid, Some(ADDRESS)));
        }
        let actions = c.on_timeout(c.deadline().unwrap());
        assert!(matches!(actions.first(), Some(Action::Note(n)) if n.contains("no answer from 10.0.2.2")));
        let (m, _) = only_sent(&actions);
        assert_eq!(m.options.message_type, Some(MessageType::Discover));
        assert_ne!(m.xid, discover.xid);
        assert_eq!(c.phase(), Phase::Selecting);
    }

    #[test]
    fn a_renewal_with_another_address_replaces_the_lease() {
        let clock = Clock(Instant::now());
        let (mut c, lease) = bound(&clock, 0.0, lease_options());
        let (renew, _) = only_sent(&c.renew(clock.at(10.0)));
        assert_eq!(c.phase(), Phase::Renewing);
        let mut ack = decode(&reply(&renew, MessageType::Ack, lease_options())).unwrap();
        ack.yiaddr = Ipv4Addr::new(10, 0, 2, 16);
        let actions = c.on_packet(&ack.encode(), clock.at(10.5));
        let [Action::Deconfigure { lease: old, why: Loss::Replaced }, Action::Configure { lease: new, renewed: false }] =
            actions.as_slice()
        else {
            panic!("{actions:?}")
        };
        assert_eq!((old, new.address), (&lease, Ipv4Addr::new(10, 0, 2, 16)));
        // renew() does nothing unless bound.
        let mut fresh = Client::new(config(), clock.at(0.0));
        assert!(fresh.renew(clock.at(0.0)).is_empty());
    }

    #[test]
    fn an_infinite_lease_has_no_deadline() {
        let clock = Clock(Instant::now());
        let (mut c, lease) = bound(&clock, 0.0, Options { lease_time: Some(u32::MAX), ..lease_options() });
        assert_eq!((lease.duration, c.deadline()), (None, None));
        assert!(c.on_timeout(clock.at(1e9)).is_empty());
        assert_eq!(c.phase(), Phase::Bound);
    }

    #[test]
    fn an_ack_without_a_lease_time_takes_the_offers() {
        let clock = Clock(Instant::now());
        let mut c = Client::new(config(), clock.at(0.0));
        let (discover, _) = only_sent(&c.on_timeout(clock.at(0.0)));
        let offer = Options { lease_time: Some(600), ..lease_options() };
        let (request, _) = only_sent(&c.on_packet(&reply(&discover, MessageType::Offer, offer), clock.at(0.0)));
        let actions = c.on_packet(&reply(&request, MessageType::Ack, Options::default()), clock.at(0.0));
        let [Action::Configure { lease, .. }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(lease.duration, Some(Duration::from_secs(600)));
        // And no mask: the classful default.
        assert_eq!(lease.prefix_len, 8);
    }

    #[test]
    fn prefix_lengths_from_masks() {
        let a = Ipv4Addr::new(192, 168, 1, 10);
        let m = |a, b, c, d| Some(Ipv4Addr::new(a, b, c, d));
        assert_eq!(prefix_len(m(255, 255, 255, 0), a), 24);
        assert_eq!(prefix_len(m(255, 255, 255, 255), a), 32);
        assert_eq!(prefix_len(m(255, 255, 240, 0), a), 20);
        assert_eq!(prefix_len(m(0, 0, 0, 0), a), 0);
        assert_eq!(prefix_len(m(255, 0, 255, 0), a), 24, "not contiguous: classful");
        assert_eq!(prefix_len(None, Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(mask_bits(0), 0);
        assert_eq!(mask_bits(32), u32::MAX);
    }
}
