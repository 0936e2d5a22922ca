//! The NTP packet (RFC 5905 §7.3) as an SNTP client (RFC 4330) sends and checks it, and the
//! offset and delay of one exchange.
//!
//! A request carries a random transmit timestamp and nothing else (RFC 9109's data
//! minimisation): the server copies it into the reply's origin field, so a reply whose origin
//! differs answers some other request (or is forged by someone who did not see ours) and is
//! refused. The client's real send time stays local.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An NTP packet without extension fields or MAC.
pub const PACKET_LEN: usize = 48;
/// Seconds from 1900-01-01 (NTP era 0) to 1970-01-01.
const UNIX_TO_NTP: u64 = 2_208_988_800;
/// A reply whose root distance (root delay / 2 + root dispersion) is larger is refused
/// (RFC 5905's MAXDIST).
pub const MAX_ROOT_DISTANCE: Duration = Duration::from_millis(1500);

/// A 64-bit NTP timestamp: seconds since 1900 modulo 2^32 (the era is not sent) and a 32-bit
/// fraction. Differences are taken modulo 2^64 ([`NtpTime::minus`]), which is right whenever
/// the two clocks are within 68 years of each other, whatever the era.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// `t` as an NTP timestamp.
    pub fn from_system(t: SystemTime) -> NtpTime {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (UNIX_TO_NTP.wrapping_add(d.as_secs()), d.subsec_nanos()),
            // Before 1970: still era 0, counted down from 1970.
            Err(e) => {
                let d = e.duration();
                let back = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                let nanos = if d.subsec_nanos() > 0 { 1_000_000_000 - d.subsec_nanos() } else { 0 };
                (UNIX_TO_NTP.wrapping_sub(back), nanos)
            }
        };
        let frac = (u64::from(nanos) << 32) / 1_000_000_000;
        NtpTime(((secs & 0xffff_ffff) << 32) | frac)
    }

    /// `self - earlier` in nanoseconds, as a signed difference modulo 2^64 (±68 years).
    pub fn minus(self, earlier: NtpTime) -> i64 {
        let fixed = self.0.wrapping_sub(earlier.0) as i64;
        ((i128::from(fixed) * 1_000_000_000) >> 32) as i64
    }
}

/// `LI` (leap indicator) 3: the server's clock is not synchronised.
pub const LEAP_UNSYNCHRONIZED: u8 = 3;
/// Mode 3: client.
pub const MODE_CLIENT: u8 = 3;
/// Mode 4: server.
pub const MODE_SERVER: u8 = 4;

/// The fields of an NTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Packet {
    /// Leap indicator (0–3).
    pub leap: u8,
    /// Version (3 or 4 in practice).
    pub version: u8,
    /// Association mode.
    pub mode: u8,
    /// 0: kiss-o'-death, 1: primary, 2–15: secondary, 16: unsynchronised.
    pub stratum: u8,
    /// log2 seconds.
    pub poll: i8,
    /// log2 seconds.
    pub precision: i8,
    /// 16.16 seconds.
    pub root_delay: u32,
    /// 16.16 seconds.
    pub root_dispersion: u32,
    /// The reference ID; with stratum 0, the kiss code in ASCII.
    pub reference_id: [u8; 4],
    /// When the server's clock was last set.
    pub reference: NtpTime,
    /// The client's transmit timestamp, echoed.
    pub origin: NtpTime,
    /// When the request arrived at the server.
    pub receive: NtpTime,
    /// When the reply left the server.
    pub transmit: NtpTime,
}

impl Packet {
    /// A client request (version 4) whose only content is `nonce` as its transmit timestamp.
    pub fn request(nonce: NtpTime) -> Packet {
        Packet { version: 4, mode: MODE_CLIENT, transmit: nonce, ..Packet::default() }
    }

    /// The 48 bytes on the wire.
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (self.leap & 3) << 6 | (self.version & 7) << 3 | (self.mode & 7);
        b[1] = self.stratum;
        b[2] = self.poll as u8;
        b[3] = self.precision as u8;
        b[4..8].copy_from_slice(&self.root_delay.to_be_bytes());
        b[8..12].copy_from_slice(&self.root_dispersion.to_be_bytes());
        b[12..16].copy_from_slice(&self.reference_id);
        b[16..24].copy_from_slice(&self.reference.0.to_be_bytes());
        b[24..32].copy_from_slice(&self.origin.0.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive.0.to_be_bytes());
        b[40..48].copy_from_slice(&self.transmit.0.to_be_bytes());
        b
    }

    /// Reads a packet; extension fields or a MAC after the 48 bytes are ignored.
    pub fn decode(b: &[u8]) -> Result<Packet, Refused> {
        let Some(b) = b.get(..PACKET_LEN) else { return Err(Refused::Short(b.len())) };
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Ok(Packet {
            leap: b[0] >> 6,
            version: (b[0] >> 3) & 7,
            mode: b[0] & 7,
            stratum: b[1],
            poll: b[2] as i8,
            precision: b[3] as i8,
            root_delay: u32_at(4),
            root_dispersion: u32_at(8),
            reference_id: [b[12], b[13], b[14], b[15]],
            reference: NtpTime(u64_at(16)),
            origin: NtpTime(u64_at(24)),
            receive: NtpTime(u64_at(32)),
            transmit: NtpTime(u64_at(40)),
        })
    }

    /// Root delay / 2 + root dispersion.
    pub fn root_distance(&self) -> Duration {
        let secs = |v: u32| Duration::from_nanos((u64::from(v) * 1_000_000_000) >> 16);
        secs(self.root_delay) / 2 + secs(self.root_dispersion)
    }
}

/// Why a reply is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Fewer than 48 bytes.
    #[error("a {0}-byte reply (an NTP packet has 48)")]
    Short(usize),
    /// Not a server's reply.
    #[error("mode {0} is not a server's reply (4)")]
    Mode(u8),
    /// A version this client does not speak.
    #[error("NTP version {0}")]
    Version(u8),
    /// The origin timestamp is not the request's transmit timestamp.
    #[error("the reply's origin timestamp does not echo the request (a stale or forged reply)")]
    OriginMismatch,
    /// Stratum 0: the server asks the client to go away or slow down (RFC 5905 §7.4).
    #[error("kiss-o'-death {0:?} (the server refuses to serve this client now)")]
    KissOfDeath(String),
    /// The server says its own clock is not synchronised (leap 3 or stratum 16+).
    #[error("the server's clock is not synchronised (leap {leap}, stratum {stratum})")]
    Unsynchronized {
        /// Leap indicator.
        leap: u8,
        /// Stratum.
        stratum: u8,
    },
    /// Receive or transmit timestamp zero.
    #[error("the reply lacks its receive or transmit timestamp")]
    NoTimestamps,
    /// Root distance above [`MAX_ROOT_DISTANCE`].
    #[error("root distance {0:?} is above {MAX_ROOT_DISTANCE:?}")]
    TooFar(Duration),
    /// The server claims to have sent its reply before it got the request.
    #[error("negative round-trip delay ({0} ns)")]
    NegativeDelay(i64),
}

impl Refused {
    /// A refusal that ends the exchange with this server (a kiss-o'-death), rather than one a
    /// later reply may still make up for.
    pub fn is_final(&self) -> bool {
        matches!(self, Refused::KissOfDeath(_))
    }
}

/// One good exchange: how far the local clock is off, and the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// What to add to the local clock, in nanoseconds.
    pub offset_ns: i64,
    /// The round trip minus the server's processing time, in nanoseconds.
    pub delay_ns: i64,
    /// The server's stratum.
    pub stratum: u8,
}

/// Offset and delay of an exchange from its four timestamps (RFC 5905 §8): t1 request sent
/// (client clock), t2 request received, t3 reply sent (server clock), t4 reply received.
pub fn offset_and_delay(t1: NtpTime, t2: NtpTime, t3: NtpTime, t4: NtpTime) -> (i64, i64) {
    let (a, b) = (i128::from(t2.minus(t1)), i128::from(t3.minus(t4)));
    let offset = (a + b) / 2;
    let delay = i128::from(t4.minus(t1)) - i128::from(t3.minus(t2));
    (offset as i64, delay as i64)
}

/// Checks `reply` against the request's `nonce` and computes the exchange; `t1` and `t4` are
/// the local clock when the request left and the reply arrived.
pub fn check_reply(reply: &[u8], nonce: NtpTime, t1: NtpTime, t4: NtpTime) -> Result<Exchange, Refused> {
    let p = Packet::decode(reply)?;
    if p.mode != MODE_SERVER {
        return Err(Refused::Mode(p.mode));
    }
    if !(1..=4).contains(&p.version) {
        return Err(Refused::Version(p.version));
    }
    // Before anything else the server says: only a reply to this request counts (a forged
    // kiss-o'-death must not silence a server either).
    if p.origin != nonce {
        return Err(Refused::OriginMismatch);
    }
    // An unsynchronised server answers with leap 3 (and stratum 0, as chrony does): not a kiss.
    if p.leap == LEAP_UNSYNCHRONIZED || p.stratum > 15 {
        return Err(Refused::Unsynchronized { leap: p.leap, stratum: p.stratum });
    }
    if p.stratum == 0 {
        let code: String = p.reference_id.iter().map(|&c| if c.is_ascii_graphic() { c as char } else { '?' }).collect();
        return Err(Refused::KissOfDeath(code));
    }
    if p.receive.0 == 0 || p.transmit.0 == 0 {
        return Err(Refused::NoTimestamps);
    }
    if p.root_distance() > MAX_ROOT_DISTANCE {
        return Err(Refused::TooFar(p.root_distance()));
    }
    let (offset_ns, delay_ns) = offset_and_delay(t1, p.receive, p.transmit, t4);
    if delay_ns < 0 {
        return Err(Refused::NegativeDelay(delay_ns));
    }
    Ok(Exchange { offset_ns, delay_ns, stratum: p.stratum })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn at(unix_secs: u64, millis: u64) -> NtpTime {
        NtpTime::from_system(UNIX_EPOCH + Duration::from_secs(unix_secs) + Duration::from_millis(millis))
    }

    fn reply_to(nonce: NtpTime, t2: NtpTime, t3: NtpTime) -> Packet {
        Packet {
            leap: 0,
            version: 4,
            mode: MODE_SERVER,
            stratum: 2,
            precision: -20,
            root_delay: 0x0000_0800,
            root_dispersion: 0x0000_0400,
            reference_id: [127, 0, 0, 1],
            reference: t2,
            origin: nonce,
            receive: t2,
            transmit: t3,
            ..Packet::default()
        }
    }

    #[test]
    fn packets_round_trip_and_requests_carry_only_the_nonce() {
        let p = reply_to(NtpTime(0x1234_5678_9abc_def0), at(1_796_583_600, 250), at(1_796_583_600, 251));
        let b = p.encode();
        assert_eq!(Packet::decode(&b), Ok(p));
        // With extension fields after the header: the header is read.
        let mut long = b.to_vec();
        long.extend_from_slice(&[0; 20]);
        assert_eq!(Packet::decode(&long), Ok(p));
        assert_eq!(Packet::decode(&b[..47]), Err(Refused::Short(47)));

        let r = Packet::request(NtpTime(0x0102_0304_0506_0708)).encode();
        assert_eq!(r[0], 0x23, "LI 0, version 4, mode 3");
        assert!(r[1..40].iter().all(|&x| x == 0), "{r:?}");
        assert_eq!(&r[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn ntp_time_of_known_instants() {
        // 1970-01-01 is NTP second 2208988800; half a second is 2^31.
        assert_eq!(at(0, 500).0, (2_208_988_800u64 << 32) | (1 << 31));
        // Era 1 begins 2036-02-07T06:28:16Z: the seconds wrap to 0, differences do not.
        let wrap = 2_085_978_496u64;
        assert_eq!(at(wrap, 0).0 >> 32, 0);
        assert_eq!(at(wrap, 0).minus(at(wrap - 1, 0)), SEC);
        assert_eq!(at(0, 0).minus(at(1, 0)), -SEC);
        // A clock stuck in 1970 against a server in 2026: still one signed difference.
        assert_eq!(at(1_796_583_600, 0).minus(at(0, 0)), 1_796_583_600 * SEC);
    }

    #[test]
    fn offset_and_delay_math() {
        // The client is 10 s behind; 40 ms each way, 2 ms in the server.
        let t1 = at(1000, 0);
        let t2 = at(1010, 40);
        let t3 = at(1010, 42);
        let t4 = at(1000, 82);
        let (offset, delay) = offset_and_delay(t1, t2, t3, t4);
        assert!((offset - 10 * SEC).abs() < 1000, "{offset}");
        assert!((delay - 80_000_000).abs() < 1000, "{delay}");
        // Ahead by 2 s.
        let (offset, _) = offset_and_delay(at(1002, 0), at(1000, 10), at(1000, 10), at(1002, 20));
        assert!((offset + 2 * SEC).abs() < 1000, "{offset}");
    }

    #[test]
    fn a_good_reply_gives_its_exchange() {
        let nonce = NtpTime(0xdead_beef_0bad_f00d);
        let (t1, t4) = (at(1000, 0), at(1000, 82));
        let p = reply_to(nonce, at(1010, 40), at(1010, 42));
        let x = check_reply(&p.encode(), nonce, t1, t4).unwrap();
        assert_eq!(x.stratum, 2);
        assert!((x.offset_ns - 10 * SEC).abs() < 1000);
    }

    #[test]
    fn refusals() {
        let nonce = NtpTime(0xdead_beef_0bad_f00d);
        let (t1, t4) = (at(1000, 0), at(1000, 82));
        let good = reply_to(nonce, at(1010, 40), at(1010, 42));
        let check = |p: Packet| check_reply(&p.encode(), nonce, t1, t4);

        assert_eq!(check(Packet { origin: NtpTime(nonce.0 ^ 1), ..good }), Err(Refused::OriginMismatch));
        // A kiss-o'-death with someone else's origin is only a mismatch: it silences nobody.
        let kod = Packet { stratum: 0, reference_id: *b"RATE", ..good };
        assert_eq!(check(kod), Err(Refused::KissOfDeath("RATE".into())));
        assert!(check(kod).unwrap_err().is_final());
        assert_eq!(check(Packet { origin: NtpTime(1), ..kod }), Err(Refused::OriginMismatch));
        assert_eq!(check(Packet { leap: 3, ..good }), Err(Refused::Unsynchronized { leap: 3, stratum: 2 }));
        assert_eq!(check(Packet { stratum: 16, ..good }), Err(Refused::Unsynchronized { leap: 0, stratum: 16 }));
        assert_eq!(check(Packet { mode: MODE_CLIENT, ..good }), Err(Refused::Mode(3)));
        assert_eq!(check(Packet { version: 0, ..good }), Err(Refused::Version(0)));
        assert_eq!(check(Packet { transmit: NtpTime(0), ..good }), Err(Refused::NoTimestamps));
        assert!(matches!(check(Packet { root_dispersion: 2 << 16, ..good }), Err(Refused::TooFar(_))));
        // Sent before it was received, by more than the round trip.
        let back = Packet { receive: at(1010, 40), transmit: at(1010, 200), ..good };
        assert!(matches!(check(back), Err(Refused::NegativeDelay(_))));
        assert!(!Refused::OriginMismatch.is_final());
    }
}
