//! A DHCP client's sockets on one interface: an AF_PACKET socket for broadcasts and for
//! everything received, and a UDP socket on port 68 for unicasts.
//!
//! Before the interface has an address the IP layer gets both directions wrong:
//! - sending, a UDP broadcast from an interface without an address takes the source address
//!   of *another* interface (`inet_select_addr` falls back to any address in the namespace:
//!   `docker0`'s, or a second NIC's), where DHCP needs 0.0.0.0; so broadcasts are sent on the
//!   packet socket to ff:ff:ff:ff:ff:ff with IP and UDP headers built here;
//! - receiving, with `rp_filter` on (1 or 2, for `all` or the interface: container network
//!   plugins and hardening guides set it) a broadcast from the server fails the reverse-path
//!   check on an interface with no address and no route back (`__fib_validate_source`), and
//!   servers or relays that ignore the BROADCAST flag unicast the OFFER and ACK to the offered
//!   address at our MAC, which is not a local address yet; so replies are read from the packet
//!   socket (SOCK_DGRAM, IPv4, with a classic BPF filter for unfragmented UDP to port 68), as
//!   dhclient, udhcpc and systemd-networkd do.
//!
//! Unicasts (RENEWING, when the address is in place) go through the UDP socket bound to
//! `0.0.0.0:68` on the interface (SO_BINDTODEVICE), routed and ARPed by the kernel from the
//! leased address. That socket also keeps port 68 open, so that a unicast reply does not draw
//! an ICMP port unreachable; what it receives is drained and dropped (the packet socket has a
//! copy). UDP checksums of received packets are not verified: on veth and virtio links with
//! checksum offload the packet socket sees frames whose checksum is not filled in yet; the DHCP
//! parser checks the payload's structure instead.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, bind, recv, setsockopt, socket, sockopt,
};

use super::client::Destination;
use super::message::{CLIENT_PORT, SERVER_PORT};

/// The sockets of one interface's client.
pub struct Sockets {
    packet: OwnedFd,
    udp: UdpSocket,
}

/// One packet read by [`Sockets::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A UDP payload to port 68, at this range of the buffer.
    Payload(std::ops::Range<usize>),
    /// Read and dropped: not a well-formed UDP packet to port 68.
    Skipped,
}

/// Classic BPF over the IPv4 header (SOCK_DGRAM packet sockets start there): accept UDP to port
/// 68 that is not a fragment, drop everything else in the kernel.
fn filter() -> [libc::sock_filter; 9] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_B_ABS: u16 = 0x30;
    const LD_H_ABS: u16 = 0x28;
    const LD_H_IND: u16 = 0x48;
    const LDX_B_MSH: u16 = 0xb1;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    [
        op(LD_B_ABS, 0, 0, 9),                     // A = protocol
        op(JEQ_K, 0, 6, libc::IPPROTO_UDP as u32), // UDP, else drop
        op(LD_H_ABS, 0, 0, 6),                     // A = flags and fragment offset
        op(JSET_K, 4, 0, 0x3fff),                  // MF or an offset: a fragment, drop
        op(LDX_B_MSH, 0, 0, 0),                    // X = header length
        op(LD_H_IND, 0, 0, 2),                     // A = UDP destination port
        op(JEQ_K, 0, 1, u32::from(CLIENT_PORT)),   // port 68, else drop
        op(RET_K, 0, 0, 0x0004_0000),              // accept the whole packet
        op(RET_K, 0, 0, 0),                        // drop
    ]
}

impl Sockets {
    /// Opens both sockets on interface `name` (index `index`).
    pub fn open(name: &str, index: u32) -> Result<Sockets, String> {
        let ifindex = i32::try_from(index).map_err(|_| format!("{name}: interface index {index}"))?;
        Ok(Sockets { packet: packet_socket(name, ifindex)?, udp: udp_socket(name)? })
    }

    /// Sockets from descriptors made elsewhere (tests: any datagram socket as the packet socket).
    #[cfg(test)]
    pub fn from_parts(packet: OwnedFd, udp: UdpSocket) -> Sockets {
        Sockets { packet, udp }
    }

    /// What to poll for incoming packets.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.packet.as_fd()
    }

    pub fn send(&self, packet: &[u8], to: Destination) -> Result<(), String> {
        let (addr, what) = match to {
            Destination::Broadcast => (Ipv4Addr::BROADCAST, "broadcast".to_string()),
            Destination::Unicast(a) => (a, a.to_string()),
        };
        self.udp
            .send_to(packet, SocketAddrV4::new(addr, SERVER_PORT))
            .map(drop)
            .map_err(|e| format!("sending to {what}: {e}"))
    }

    /// Reads one packet: `Ok(None)` when there is none left. A UDP packet to port 68 that
    /// passes the filter but is not well-formed is [`Received::Skipped`], not read past: every
    /// packet read counts against the caller's batch, so a flood of malformed ones cannot keep
    /// PID 1 in this loop (issue 15, L4).
    pub fn receive(&self, buf: &mut [u8]) -> Result<Option<Received>, String> {
        loop {
            let n = match recv(self.packet.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("receiving: {e}")),
            };
            return Ok(Some(match udp_payload(buf.get(..n).unwrap_or_default(), CLIENT_PORT) {
                Some(range) => Received::Payload(range),
                None => Received::Skipped,
            }));
        }
    }

    /// Empties the UDP socket's queue (its copies of broadcasts the packet socket saw too).
    pub fn drain_udp(&self) {
        let mut scratch = [0u8; 1];
        for _ in 0..64 {
            if self.udp.recv_from(&mut scratch).is_err() {
                return;
            }
        }
    }
}

fn packet_socket(name: &str, ifindex: i32) -> Result<OwnedFd, String> {
    // Protocol 0: no packet is queued until bind() names IPv4, after the filter is in place.
    let fd = socket(AddressFamily::Packet, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(|e| format!("{name}: packet socket: {e}"))?;
    let program = filter();
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `program`, both alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map_err(|e| format!("{name}: attaching the DHCP packet filter: {e}"))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    Errno::result(rc).map_err(|e| format!("{name}: binding the packet socket: {e}"))?;
    Ok(fd)
}

fn udp_socket(name: &str) -> Result<UdpSocket, String> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(|e| format!("{name}: UDP socket: {e}"))?;
    let opt = |what: &str, r: nix::Result<()>| r.map_err(|e| format!("{name}: UDP socket {what}: {e}"));
    // Another client on another interface binds port 68 too; SO_BINDTODEVICE keeps them apart.
    opt("SO_REUSEADDR", setsockopt(&fd, sockopt::ReuseAddr, &true))?;
    opt("SO_BROADCAST", setsockopt(&fd, sockopt::Broadcast, &true))?;
    opt("SO_BINDTODEVICE", setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(name)))?;
    // It only sends; what it receives is dropped, so the smallest buffer will do.
    opt("SO_RCVBUF", setsockopt(&fd, sockopt::RcvBuf, &1))?;
    opt("bind to port 68", bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, CLIENT_PORT)))?;
    Ok(UdpSocket::from(fd))
}

/// An IPv4 packet (no options, TTL 64) carrying a UDP datagram, both checksums filled in;
/// `None` if it would exceed 65535 bytes.
#[cfg(test)]
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Option<Vec<u8>> {
    const UDP: u8 = libc::IPPROTO_UDP as u8;
    let udp_len = u16::try_from(8 + payload.len()).ok()?;
    let [t0, t1] = 20u16.checked_add(udp_len)?.to_be_bytes();
    let [s0, s1, s2, s3] = src.octets();
    let [d0, d1, d2, d3] = dst.octets();
    let mut ip = [0x45, 0, t0, t1, 0, 0, 0, 0, 64, UDP, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3];
    [ip[10], ip[11]] = checksum(&[&ip]).to_be_bytes();
    let [sp0, sp1] = sport.to_be_bytes();
    let [dp0, dp1] = dport.to_be_bytes();
    let [l0, l1] = udp_len.to_be_bytes();
    let mut udp = [sp0, sp1, dp0, dp1, l0, l1, 0, 0];
    let pseudo = [s0, s1, s2, s3, d0, d1, d2, d3, 0, UDP, l0, l1];
    // 0 means "no checksum" in UDP over IPv4, so a computed 0 is sent as its complement twin.
    [udp[6], udp[7]] = match checksum(&[&pseudo, &udp, payload]) {
        0 => 0xffff_u16,
        sum => sum,
    }
    .to_be_bytes();
    Some([&ip[..], &udp, payload].concat())
}

/// The Internet checksum (RFC 1071) of the concatenated parts, each of even length but the last.
#[cfg(test)]
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = match *pair {
                [a, b] => u16::from_be_bytes([a, b]),
                [a] => u16::from_be_bytes([a, 0]),
                _ => 0,
            };
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where the UDP payload to `port` is in an IPv4 packet: an unfragmented IPv4 header, UDP, the
/// lengths consistent with each other and with the bytes received.
pub fn udp_payload(ip: &[u8], port: u16) -> Option<std::ops::Range<usize>> {
    let be16 = |i: usize| ip.get(i..i + 2).and_then(|b| b.try_into().ok()).map(u16::from_be_bytes);
    let first = *ip.first()?;
    let header = usize::from(first & 0x0f) * 4;
    let total = usize::from(be16(2)?);
    if first >> 4 != 4 || header < 20 || total > ip.len() || total < header + 8 {
        return None;
    }
    if *ip.get(9)? != libc::IPPROTO_UDP as u8 || be16(6)? & 0x3fff != 0 || be16(header + 2)? != port {
        return None;
    }
    let udp_len = usize::from(be16(header + 4)?);
    if udp_len < 8 || header + udp_len > total {
        return None;
    }
    Some(header + 8..header + udp_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 + UDP around `payload`, with `ip_extra` option bytes in the IP header.
    fn packet(dport: u16, payload: &[u8], ip_extra: usize) -> Vec<u8> {
        let header = 20 + ip_extra;
        let total = header + 8 + payload.len();
        let mut p = vec![0x40 | (header / 4) as u8, 0];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 2, 255, 255, 255, 255]);
        p.resize(header, 1);
        p.extend_from_slice(&67u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0xde, 0xad]); // a checksum nobody checks
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn finds_the_payload_of_udp_to_port_68() {
        let p = packet(68, b"dhcp", 0);
        assert_eq!(udp_payload(&p, 68).map(|r| &p[r]), Some(&b"dhcp"[..]));
        let p = packet(68, b"with options", 8);
        assert_eq!(udp_payload(&p, 68).map(|r| &p[r]), Some(&b"with options"[..]));
        // Ethernet padding after the IP packet is not payload.
        let mut p = packet(68, b"x", 0);
        p.extend_from_slice(&[0; 20]);
        assert_eq!(udp_payload(&p, 68).map(|r| &p[r]), Some(&b"x"[..]));
    }

    #[test]
    fn rejects_other_ports_protocols_fragments_and_bad_lengths() {
        assert_eq!(udp_payload(&packet(67, b"x", 0), 68), None);
        let mut tcp = packet(68, b"x", 0);
        tcp[9] = 6;
        assert_eq!(udp_payload(&tcp, 68), None);
        let mut frag = packet(68, b"x", 0);
        frag[6] = 0x20; // more fragments
        assert_eq!(udp_payload(&frag, 68), None);
        let mut v6 = packet(68, b"x", 0);
        v6[0] = 0x65;
        assert_eq!(udp_payload(&v6, 68), None);
        let p = packet(68, b"payload", 0);
        assert_eq!(udp_payload(&p[..p.len() - 1], 68), None, "truncated");
        let mut long_udp = packet(68, b"x", 0);
        long_udp[25] = 200;
        assert_eq!(udp_payload(&long_udp, 68), None);
        let mut short_ihl = packet(68, b"x", 0);
        short_ihl[0] = 0x44;
        assert_eq!(udp_payload(&short_ihl, 68), None);
        for n in 0..28 {
            assert_eq!(udp_payload(&p[..n], 68), None);
        }
    }

    #[test]
    fn built_packets_have_valid_checksums_and_parse_back() {
        let payload = b"a DHCP message of odd length";
        let p = ipv4_udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, payload).unwrap();
        assert_eq!(p.len(), 20 + 8 + payload.len());
        assert_eq!(checksum(&[&p[..20]]), 0, "IP header checksum");
        let mut pseudo = vec![0, 0, 0, 0, 255, 255, 255, 255, 0, 17];
        pseudo.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "UDP checksum");
        assert_eq!(&p[12..20], &[0, 0, 0, 0, 255, 255, 255, 255]);
        assert_eq!(udp_payload(&p, 67).map(|r| &p[r]), Some(&payload[..]));
        // RFC 1071's example words.
        assert_eq!(checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
        assert!(ipv4_udp(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, &vec![0; 65536]).is_none());
    }

    #[test]
    fn the_filter_jumps_land_inside_the_program() {
        let f = filter();
        for (i, ins) in f.iter().enumerate() {
            if ins.code & 0x07 == 0x05 {
                assert!(i + 1 + usize::from(ins.jt) < f.len() && i + 1 + usize::from(ins.jf) < f.len(), "{i}");
            }
        }
        assert_eq!(f.last().map(|i| (i.code, i.k)), Some((0x06, 0)));
    }
}
