//! The few rtnetlink requests a DHCP client needs: add/replace and delete an IPv4 address
//! with its prefix length, broadcast address and lifetimes, and a default route through a
//! router. Netlink rather than SIOCSIFADDR/SIOCADDRT: one request sets address, prefix and
//! broadcast together, the address carries the lease's lifetime (the kernel drops it at expiry
//! even if we could not), and replacing is atomic on renewal.
//!
//! Requests are acknowledged synchronously (NLM_F_ACK); the kernel answers at once, the 2 s
//! receive timeout only bounds a kernel that does not.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;

// From <linux/netlink.h> and <linux/rtnetlink.h>.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const AF_INET: u8 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;
/// Lifetime "forever" in `ifa_cacheinfo`.
pub const INFINITE: u32 = u32::MAX;

/// An address to add: `address/prefix_len` on interface `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub broadcast: Option<Ipv4Addr>,
    /// Valid (and preferred) lifetime in seconds, or [`INFINITE`].
    pub lifetime: u32,
}

/// A default route through `router` out of interface `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub index: u32,
    pub router: Ipv4Addr,
    /// Preferred source: our address on that interface.
    pub source: Ipv4Addr,
    /// Whether the router is outside our prefix (a /32 lease, as on GCE): on-link anyway.
    pub onlink: bool,
    pub metric: u32,
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Netlink, String> {
        let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
            .map_err(|e| format!("netlink socket: {e}"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| format!("binding the netlink socket: {e}"))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0))
            .map_err(|e| format!("netlink socket timeout: {e}"))?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Adds the address, or updates its lifetime when it is there already.
    pub fn replace_address(&mut self, a: &Address) -> Result<(), String> {
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &address_body(a, true))
            .map_err(|e| format!("adding {}/{}: {}", a.address, a.prefix_len, describe(e)))
    }

    /// Removes the address; gone already is fine.
    pub fn delete_address(&mut self, a: &Address) -> Result<(), String> {
        match self.request(RTM_DELADDR, 0, &address_body(a, false)) {
            Ok(()) | Err(Errno::EADDRNOTAVAIL) | Err(Errno::ENODEV) => Ok(()),
            Err(e) => Err(format!("removing {}/{}: {}", a.address, a.prefix_len, describe(e))),
        }
    }

    /// Adds the route, or replaces the one with the same metric.
    pub fn replace_default_route(&mut self, r: &DefaultRoute) -> Result<(), String> {
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &route_body(r, true))
            .map_err(|e| format!("adding the default route via {}: {}", r.router, describe(e)))
    }

    /// Removes the route; gone already (with its address or interface) is fine.
    pub fn delete_default_route(&mut self, r: &DefaultRoute) -> Result<(), String> {
        match self.request(RTM_DELROUTE, 0, &route_body(r, false)) {
            Ok(()) | Err(Errno::ESRCH) | Err(Errno::ENODEV) => Ok(()),
            Err(e) => Err(format!("removing the default route via {}: {}", r.router, describe(e))),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> Result<(), Errno> {
        self.seq = self.seq.wrapping_add(1);
        let msg = message(kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, body);
        sendto(self.fd.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
        let mut buf = vec![0u8; 8192];
        // Anything else queued (there should be nothing) is skipped; the timeout ends the wait.
        for _ in 0..64 {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if let Some(result) = ack(buf.get(..n).unwrap_or_default(), self.seq) {
                return result;
            }
        }
        Err(Errno::EIO)
    }
}

fn describe(e: Errno) -> String {
    match e {
        Errno::EAGAIN => "netlink: no answer from the kernel within 2 s".into(),
        e => format!("netlink: {e}"),
    }
}

/// nlmsghdr + body.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(body);
    m
}

/// One rtattr, padded to 4 bytes.
fn attr(b: &mut Vec<u8>, kind: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(data);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// ifaddrmsg + attributes. Deleting needs only the address and prefix.
fn address_body(a: &Address, add: bool) -> Vec<u8> {
    let mut b = vec![AF_INET, a.prefix_len, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&a.index.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &a.address.octets());
    attr(&mut b, IFA_ADDRESS, &a.address.octets());
    if add {
        if let Some(brd) = a.broadcast {
            attr(&mut b, IFA_BROADCAST, &brd.octets());
        }
        // struct ifa_cacheinfo: preferred, valid, then two timestamps the kernel ignores here.
        let mut info = Vec::with_capacity(16);
        for v in [a.lifetime, a.lifetime, 0, 0] {
            info.extend_from_slice(&v.to_ne_bytes());
        }
        attr(&mut b, IFA_CACHEINFO, &info);
    }
    b
}

/// rtmsg + attributes for 0.0.0.0/0 in the main table.
fn route_body(r: &DefaultRoute, add: bool) -> Vec<u8> {
    // Deleting with scope "nowhere" matches the route whatever its scope (as `ip route del`).
    let scope = if add { RT_SCOPE_UNIVERSE } else { RT_SCOPE_NOWHERE };
    let mut b = vec![AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_DHCP, scope, RTN_UNICAST];
    b.extend_from_slice(&(if r.onlink { RTNH_F_ONLINK } else { 0 }).to_ne_bytes());
    attr(&mut b, RTA_GATEWAY, &r.router.octets());
    attr(&mut b, RTA_OIF, &r.index.to_ne_bytes());
    attr(&mut b, RTA_PRIORITY, &r.metric.to_ne_bytes());
    if add {
        attr(&mut b, RTA_PREFSRC, &r.source.octets());
    }
    b
}

/// The outcome in an NLMSG_ERROR answering `seq`, if `bytes` hold one.
fn ack(mut bytes: &[u8], seq: u32) -> Option<Result<(), Errno>> {
    let u32_at = |b: &[u8], i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes);
    while bytes.len() >= NLMSG_HDRLEN {
        let len = u32_at(bytes, 0)? as usize;
        let kind = bytes.get(4..6).and_then(|s| s.try_into().ok()).map(u16::from_ne_bytes)?;
        let msg_seq = u32_at(bytes, 8)?;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq {
            let code = u32_at(bytes, NLMSG_HDRLEN)? as i32;
            return Some(if code == 0 { Ok(()) } else { Err(Errno::from_raw(-code)) });
        }
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_request_has_the_kernels_layout() {
        let a = Address {
            index: 2,
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            broadcast: Some(Ipv4Addr::new(10, 0, 2, 255)),
            lifetime: 86400,
        };
        let m =
            message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, 9, &address_body(&a, true));
        assert_eq!(m.len(), 16 + 8 + 8 + 8 + 8 + 20);
        assert_eq!(&m[0..4], &(m.len() as u32).to_ne_bytes());
        assert_eq!(&m[4..6], &20u16.to_ne_bytes());
        assert_eq!(&m[6..8], &0x505u16.to_ne_bytes());
        assert_eq!(&m[8..12], &9u32.to_ne_bytes());
        assert_eq!(&m[16..20], &[2, 24, 0, 0]);
        assert_eq!(&m[20..24], &2u32.to_ne_bytes());
        assert_eq!(&m[24..32], &[&8u16.to_ne_bytes()[..], &2u16.to_ne_bytes(), &[10, 0, 2, 15]].concat()[..]);
        assert_eq!(&m[44..48], &[10, 0, 2, 255]);
        assert_eq!(&m[48..52], &[&20u16.to_ne_bytes()[..], &6u16.to_ne_bytes()].concat()[..]);
        assert_eq!(&m[52..56], &86400u32.to_ne_bytes());
        assert_eq!(address_body(&a, false).len(), 8 + 8 + 8);
    }

    #[test]
    fn a_route_request_marks_off_prefix_routers_onlink() {
        let r = DefaultRoute {
            index: 3,
            router: Ipv4Addr::new(10, 128, 0, 1),
            source: Ipv4Addr::new(10, 128, 0, 5),
            onlink: true,
            metric: 1027,
        };
        let b = route_body(&r, true);
        assert_eq!(&b[..8], &[2, 0, 0, 0, 254, 16, 0, 1]);
        assert_eq!(&b[8..12], &4u32.to_ne_bytes());
        assert_eq!(&b[16..20], &[10, 128, 0, 1]);
        assert_eq!(&b[32..36], &1027u32.to_ne_bytes());
        assert_eq!(&b[40..44], &[10, 128, 0, 5]);
        let del = route_body(&DefaultRoute { onlink: false, ..r }, false);
        assert_eq!((del[6], &del[8..12], del.len()), (255, &[0u8; 4][..], 12 + 24));
    }

    #[test]
    fn acks_are_found_by_sequence_number() {
        let error = |seq: u32, code: i32| {
            let mut body = code.to_ne_bytes().to_vec();
            body.extend_from_slice(&[0; 16]);
            message(NLMSG_ERROR, 0, seq, &body)
        };
        assert_eq!(ack(&error(5, 0), 5), Some(Ok(())));
        assert_eq!(ack(&error(5, -17), 5), Some(Err(Errno::EEXIST)));
        assert_eq!(ack(&error(4, 0), 5), None);
        let two = [error(4, -1), error(5, -3)].concat();
        assert_eq!(ack(&two, 5), Some(Err(Errno::ESRCH)));
        assert_eq!(ack(&two[..20], 5), None);
        let mut bad = error(5, 0);
        bad[0] = 200;
        assert_eq!(ack(&bad, 5), None);
        assert_eq!(ack(&[], 5), None);
    }
}
