//! DHCPv4 messages: the BOOTP header (RFC 2131 §2), the magic cookie and the options
//! (RFC 2132) a client sends or uses. Pure: bytes in, [`Message`] out and back.
//!
//! Decoding never panics: a truncated header, a wrong cookie, an option running past the end or
//! an option of a type we use with the wrong length is a [`DecodeError`]. Options split over
//! several instances of the same code are concatenated (RFC 3396); option overload (52, options
//! in `sname`/`file`) is ignored, as the servers we target never need it. Host and domain names
//! that are not plain DNS names are dropped rather than trusted, because they end up in
//! `resolv.conf`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// `op`: client to server.
pub const BOOTREQUEST: u8 = 1;
/// `op`: server to client.
pub const BOOTREPLY: u8 = 2;
/// `htype` for Ethernet (ARPHRD_ETHER).
pub const HTYPE_ETHERNET: u8 = 1;
/// `flags`: "reply by broadcast", for a client that cannot receive unicast before it has an
/// address.
pub const FLAG_BROADCAST: u16 = 0x8000;

const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// op … file: everything before the cookie.
const HEADER_LEN: usize = 236;
/// BOOTP relays and some servers drop requests shorter than BOOTP's 300 bytes (RFC 1542 §2.1).
const MIN_LEN: usize = 300;

mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// Option 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// One DHCP message. `sname` and `file` are neither kept nor sent (zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub options: Options,
}

/// The options Berth's client sends or reads; others are skipped when decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub message_type: Option<MessageType>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Seconds; `u32::MAX` is infinite.
    pub lease_time: Option<u32>,
    /// T1, seconds.
    pub renewal_time: Option<u32>,
    /// T2, seconds.
    pub rebinding_time: Option<u32>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15; some servers put several space-separated domains here.
    pub domain_name: Option<String>,
    pub host_name: Option<String>,
    pub parameter_request_list: Vec<u8>,
    pub client_id: Option<Vec<u8>>,
    pub max_message_size: Option<u16>,
    /// Option 56, the server's reason for a NAK (for logs; control characters replaced).
    pub message: Option<String>,
}

/// Why bytes are not a DHCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Truncated {
        len: usize,
    },
    BadCookie,
    /// The option's length runs past the end of the message.
    OptionOverrun {
        code: u8,
    },
    /// An option we use has a length its type does not allow.
    BadLength {
        code: u8,
        len: usize,
    },
    UnknownMessageType(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { len } => write!(f, "{len} bytes is too short for a DHCP message"),
            DecodeError::BadCookie => write!(f, "no DHCP magic cookie"),
            DecodeError::OptionOverrun { code } => write!(f, "option {code} runs past the end of the message"),
            DecodeError::BadLength { code, len } => write!(f, "option {code} has a bad length {len}"),
            DecodeError::UnknownMessageType(t) => write!(f, "unknown DHCP message type {t}"),
        }
    }
}

/// A bounds-checked reader over the fixed header.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.at.checked_add(N).ok_or(DecodeError::Truncated { len: self.bytes.len() })?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError::Truncated { len: self.bytes.len() })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn addr(&mut self) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(self.take::<4>()?))
    }
}

/// Parses a DHCP message (the UDP payload).
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_LEN + COOKIE.len() {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    let mut r = Reader { bytes, at: 0 };
    let op = r.u8()?;
    let htype = r.u8()?;
    let hlen = r.u8()?;
    let hops = r.u8()?;
    let xid = r.u32()?;
    let secs = r.u16()?;
    let flags = r.u16()?;
    let ciaddr = r.addr()?;
    let yiaddr = r.addr()?;
    let siaddr = r.addr()?;
    let giaddr = r.addr()?;
    let chaddr = r.take::<16>()?;
    let _sname = r.take::<64>()?;
    let _file = r.take::<128>()?;
    if r.take::<4>()? != COOKIE {
        return Err(DecodeError::BadCookie);
    }
    let raw = raw_options(bytes.get(r.at..).unwrap_or_default())?;
    let options = interpret(&raw)?;
    Ok(Message { op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, options })
}

/// code → data, instances of one code concatenated (RFC 3396). Stops at END or at the end of
/// the bytes (some servers omit END).
fn raw_options(mut rest: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, DecodeError> {
    let mut out: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    while let Some((&c, tail)) = rest.split_first() {
        match c {
            code::END => break,
            code::PAD => rest = tail,
            _ => {
                let (&len, tail) = tail.split_first().ok_or(DecodeError::OptionOverrun { code: c })?;
                let data = tail.get(..len as usize).ok_or(DecodeError::OptionOverrun { code: c })?;
                out.entry(c).or_default().extend_from_slice(data);
                rest = tail.get(len as usize..).unwrap_or_default();
            }
        }
    }
    Ok(out)
}

fn interpret(raw: &BTreeMap<u8, Vec<u8>>) -> Result<Options, DecodeError> {
    let mut o = Options::default();
    for (&c, data) in raw {
        let bad = || DecodeError::BadLength { code: c, len: data.len() };
        match c {
            code::MESSAGE_TYPE => {
                let &[t] = data.as_slice() else { return Err(bad()) };
                o.message_type = Some(MessageType::from_u8(t).ok_or(DecodeError::UnknownMessageType(t))?);
            }
            code::REQUESTED_IP => o.requested_ip = Some(addr(data).ok_or_else(bad)?),
            code::SERVER_ID => o.server_id = Some(addr(data).ok_or_else(bad)?),
            code::SUBNET_MASK => o.subnet_mask = Some(addr(data).ok_or_else(bad)?),
            code::LEASE_TIME => o.lease_time = Some(be_u32(data).ok_or_else(bad)?),
            code::RENEWAL_TIME => o.renewal_time = Some(be_u32(data).ok_or_else(bad)?),
            code::REBINDING_TIME => o.rebinding_time = Some(be_u32(data).ok_or_else(bad)?),
            code::ROUTER => o.routers = addrs(data).ok_or_else(bad)?,
            code::DNS => o.dns_servers = addrs(data).ok_or_else(bad)?,
            code::MAX_MESSAGE_SIZE => {
                let &[a, b] = data.as_slice() else { return Err(bad()) };
                o.max_message_size = Some(u16::from_be_bytes([a, b]));
            }
            code::DOMAIN_NAME => o.domain_name = dns_names(data),
            code::HOST_NAME => o.host_name = dns_names(data).filter(|n| !n.contains(' ')),
            code::PARAMETER_REQUEST_LIST => o.parameter_request_list = data.clone(),
            code::CLIENT_ID => o.client_id = Some(data.clone()),
            code::MESSAGE => {
                o.message =
                    Some(String::from_utf8_lossy(data).chars().map(|c| if c.is_control() { '?' } else { c }).collect())
            }
            _ => {}
        }
    }
    Ok(o)
}

fn addr(data: &[u8]) -> Option<Ipv4Addr> {
    let &[a, b, c, d] = data else { return None };
    Some(Ipv4Addr::new(a, b, c, d))
}

fn be_u32(data: &[u8]) -> Option<u32> {
    let &[a, b, c, d] = data else { return None };
    Some(u32::from_be_bytes([a, b, c, d]))
}

/// A list of addresses: a non-empty multiple of 4 bytes.
fn addrs(data: &[u8]) -> Option<Vec<Ipv4Addr>> {
    if data.is_empty() || !data.len().is_multiple_of(4) {
        return None;
    }
    Some(data.chunks_exact(4).filter_map(addr).collect())
}

/// Space-separated DNS names (letters, digits, `-`, `_`, `.`), trailing NULs allowed (some
/// servers count the C terminator); anything else is not to be trusted into config files.
fn dns_names(data: &[u8]) -> Option<String> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(data.get(..end)?).ok()?;
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let names: Vec<&str> = text.split(' ').filter(|n| !n.is_empty()).collect();
    if names.is_empty() || names.iter().any(|n| n.len() > 253 || !n.bytes().all(ok)) {
        return None;
    }
    Some(names.join(" "))
}

impl Message {
    /// A BOOTREQUEST from an Ethernet client with hardware address `mac`, every address zero.
    pub fn request(xid: u32, mac: [u8; 6]) -> Message {
        let mut chaddr = [0u8; 16];
        for (d, s) in chaddr.iter_mut().zip(mac) {
            *d = s;
        }
        Message {
            op: BOOTREQUEST,
            htype: HTYPE_ETHERNET,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: Options::default(),
        }
    }

    /// The wire form, padded to BOOTP's 300 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_LEN);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.resize(HEADER_LEN, 0); // sname, file
        b.extend_from_slice(&COOKIE);
        let o = &self.options;
        if let Some(t) = o.message_type {
            put(&mut b, code::MESSAGE_TYPE, &[t as u8]);
        }
        if let Some(id) = &o.client_id {
            put(&mut b, code::CLIENT_ID, id);
        }
        for (c, a) in [(code::REQUESTED_IP, o.requested_ip), (code::SERVER_ID, o.server_id)] {
            if let Some(a) = a {
                put(&mut b, c, &a.octets());
            }
        }
        if let Some(m) = o.subnet_mask {
            put(&mut b, code::SUBNET_MASK, &m.octets());
        }
        for (c, list) in [(code::ROUTER, &o.routers), (code::DNS, &o.dns_servers)] {
            if !list.is_empty() {
                put(&mut b, c, &list.iter().flat_map(|a| a.octets()).collect::<Vec<u8>>());
            }
        }
        for (c, t) in [
            (code::LEASE_TIME, o.lease_time),
            (code::RENEWAL_TIME, o.renewal_time),
            (code::REBINDING_TIME, o.rebinding_time),
        ] {
            if let Some(t) = t {
                put(&mut b, c, &t.to_be_bytes());
            }
        }
        if let Some(size) = o.max_message_size {
            put(&mut b, code::MAX_MESSAGE_SIZE, &size.to_be_bytes());
        }
        for (c, s) in
            [(code::HOST_NAME, &o.host_name), (code::DOMAIN_NAME, &o.domain_name), (code::MESSAGE, &o.message)]
        {
            if let Some(s) = s {
                put(&mut b, c, s.as_bytes());
            }
        }
        if !o.parameter_request_list.is_empty() {
            put(&mut b, code::PARAMETER_REQUEST_LIST, &o.parameter_request_list);
        }
        b.push(code::END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, code::PAD);
        }
        b
    }
}

/// One option; data longer than 255 bytes goes in several instances (RFC 3396). Empty data is
/// not sent (a zero-length option means nothing for the options we use).
fn put(b: &mut Vec<u8>, c: u8, data: &[u8]) {
    for chunk in data.chunks(255) {
        b.push(c);
        b.push(chunk.len() as u8);
        b.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn offer() -> Message {
        let mut m = Message::request(0xdead_beef, MAC);
        m.op = BOOTREPLY;
        m.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
        m.siaddr = Ipv4Addr::new(10, 0, 2, 2);
        m.options = Options {
            message_type: Some(MessageType::Offer),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            lease_time: Some(86400),
            renewal_time: Some(43200),
            rebinding_time: Some(75600),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            domain_name: Some("example.com".into()),
            host_name: Some("guest".into()),
            ..Options::default()
        };
        m
    }

    #[test]
    fn encodes_the_header_at_rfc_2131_offsets() {
        let mut m = Message::request(0x0102_0304, MAC);
        m.secs = 7;
        m.flags = FLAG_BROADCAST;
        m.ciaddr = Ipv4Addr::new(10, 0, 2, 15);
        m.options.message_type = Some(MessageType::Request);
        m.options.requested_ip = Some(Ipv4Addr::new(10, 0, 2, 16));
        m.options.parameter_request_list = vec![1, 3, 6];
        let b = m.encode();
        assert_eq!(b.len(), MIN_LEN);
        assert_eq!(&b[..4], &[1, 1, 6, 0]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..10], &[0, 7]);
        assert_eq!(&b[10..12], &[0x80, 0]);
        assert_eq!(&b[12..16], &[10, 0, 2, 15]);
        assert_eq!(&b[28..34], &MAC);
        assert_eq!(&b[236..240], &COOKIE);
        assert_eq!(&b[240..243], &[53, 1, 3]);
        assert_eq!(&b[243..249], &[50, 4, 10, 0, 2, 16]);
        assert_eq!(&b[249..254], &[55, 3, 1, 3, 6]);
        assert_eq!(b[254], 255);
        assert!(b[255..].iter().all(|&x| x == 0));
    }

    #[test]
    fn round_trips_a_full_offer() {
        let m = offer();
        assert_eq!(decode(&m.encode()), Ok(m));
    }

    #[test]
    fn long_options_are_split_and_concatenated() {
        let mut m = offer();
        m.options.client_id = Some((0..=255u8).chain(0..100).collect());
        let b = m.encode();
        assert_eq!(decode(&b).unwrap().options.client_id, m.options.client_id);
    }

    #[test]
    fn skips_pads_and_unknown_options_and_tolerates_a_missing_end() {
        let mut b = offer().encode();
        b.truncate(240);
        b.extend_from_slice(&[0, 0, 200, 3, 1, 2, 3, 53, 1, 5, 0, 54, 4, 192, 168, 1, 1]);
        let m = decode(&b).unwrap();
        assert_eq!(m.options.message_type, Some(MessageType::Ack));
        assert_eq!(m.options.server_id, Some(Ipv4Addr::new(192, 168, 1, 1)));
    }

    #[test]
    fn rejects_what_is_not_a_dhcp_message() {
        let good = offer().encode();
        assert_eq!(decode(&good[..239]), Err(DecodeError::Truncated { len: 239 }));
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(decode(&b), Err(DecodeError::BadCookie));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[6, 8, 1, 2, 3, 4]);
        assert_eq!(decode(&b), Err(DecodeError::OptionOverrun { code: 6 }));
        let mut b = good[..240].to_vec();
        b.push(3);
        assert_eq!(decode(&b), Err(DecodeError::OptionOverrun { code: 3 }));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[54, 3, 1, 2, 3]);
        assert_eq!(decode(&b), Err(DecodeError::BadLength { code: 54, len: 3 }));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[3, 6, 1, 2, 3, 4, 5, 6]);
        assert_eq!(decode(&b), Err(DecodeError::BadLength { code: 3, len: 6 }));
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 9]);
        assert_eq!(decode(&b), Err(DecodeError::UnknownMessageType(9)));
    }

    #[test]
    fn names_that_could_inject_config_are_dropped() {
        let with = |c: u8, data: &[u8]| {
            let mut b = offer().encode()[..240].to_vec();
            b.push(c);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
            decode(&b).unwrap().options
        };
        assert_eq!(with(15, b"corp.example\0").domain_name.as_deref(), Some("corp.example"));
        assert_eq!(with(15, b"a.example b.example").domain_name.as_deref(), Some("a.example b.example"));
        assert_eq!(with(15, b"evil\nnameserver 6.6.6.6").domain_name, None);
        assert_eq!(with(15, b"").domain_name, None);
        assert_eq!(with(12, b"two words").host_name, None);
        assert_eq!(with(56, b"no\naddress").message.as_deref(), Some("no?address"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_options_after_a_valid_header_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut b = offer().encode()[..240].to_vec();
            b.extend_from_slice(&tail);
            let _ = decode(&b);
        }

        #[test]
        fn encoded_messages_decode_to_themselves(
            xid in any::<u32>(),
            secs in any::<u16>(),
            yiaddr in any::<[u8; 4]>(),
            lease in proptest::option::of(any::<u32>()),
            routers in proptest::collection::vec(any::<[u8; 4]>(), 0..80),
            dns in proptest::collection::vec(any::<[u8; 4]>(), 0..5),
            prl in proptest::collection::vec(1u8..=254, 0..300),
        ) {
            let mut m = offer();
            m.xid = xid;
            m.secs = secs;
            m.yiaddr = Ipv4Addr::from(yiaddr);
            m.options.lease_time = lease;
            m.options.routers = routers.into_iter().map(Ipv4Addr::from).collect();
            m.options.dns_servers = dns.into_iter().map(Ipv4Addr::from).collect();
            m.options.parameter_request_list = prl;
            prop_assert_eq!(decode(&m.encode()), Ok(m));
        }
    }
}
