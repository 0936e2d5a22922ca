//! Fuzz targets (berth-fuzzkit) for what arrives from the link: DHCP messages (decode, and
//! encode back), the client state machine fed replies and time, and the IPv4/UDP framing
//! around them. Seeds: `net/fuzz/corpus/dhcp/` (OFFER, ACK, NAK, a split option list without
//! END, a DISCOVER) and `net/fuzz/corpus/ipv4-udp/` (the same in IPv4 frames, with options,
//! padding, a fragment). PID 1 runs this code: no input may panic it (overflow checks on).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Bytes, Corpus, run};

use super::client::{Action, Client, Config};
use super::io::{ipv4_udp, udp_payload};
use super::message::{self, BOOTREQUEST, CLIENT_PORT, Message};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// What `decode` keeps of a message that `encode` writes the same way: options we do not send
/// when empty are absent.
fn normalized(mut m: Message) -> Message {
    m.options.client_id = m.options.client_id.filter(|c| !c.is_empty());
    m.options.message = m.options.message.filter(|c| !c.is_empty());
    m
}

#[test]
fn fuzz_dhcp_messages() {
    let corpus = Corpus::load(&[corpus("dhcp")]);
    run("net/dhcp-message", 50_000, corpus.inputs(), |input| {
        if let Ok(m) = message::decode(&input) {
            let again = message::decode(&m.encode());
            prop_assert_eq!(again, Ok(normalized(m)));
        }
        Ok(())
    });
}

#[test]
fn fuzz_ipv4_udp_frames() {
    let corpus = Corpus::load(&[corpus("ipv4-udp")]);
    run("net/udp-payload", 50_000, (corpus.inputs(), prop_oneof![Just(CLIENT_PORT), any::<u16>()]), |(ip, port)| {
        if let Some(r) = udp_payload(&ip, port) {
            prop_assert!(r.start <= r.end && r.end <= ip.len(), "{r:?} of {} bytes", ip.len());
            let payload = &ip[r];
            let _ = message::decode(payload);
            // Our own framing of that payload is found again.
            let framed = ipv4_udp(Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::BROADCAST, 67, port, payload);
            let framed = framed.expect("a payload that came in an IPv4 packet fits one");
            prop_assert_eq!(udp_payload(&framed, port).map(|r| &framed[r]), Some(payload));
        }
        Ok(())
    });
}

/// One thing that happens to a client.
#[derive(Debug, Clone)]
enum Event {
    /// A packet; `patched`: with the transaction id of the client's last request and our MAC
    /// written in, so that it is not ignored as someone else's.
    Packet {
        bytes: Bytes,
        patched: bool,
    },
    /// Time passes (up to 2^31 s, a stalled or jumping clock included).
    Wait(u32),
    /// Time passes to the client's own deadline, and its timer fires.
    Deadline,
    Timeout,
    Renew,
}

fn event(corpus: &Corpus) -> impl Strategy<Value = Event> + use<> {
    prop_oneof![
        3 => (corpus.inputs(), prop::bool::weighted(0.9)).prop_map(|(bytes, patched)| Event::Packet { bytes, patched }),
        // Replies as servers send them, to get the client through its states.
        4 => prop::sample::select(corpus.seeds().to_vec()).prop_map(|b| Event::Packet { bytes: Bytes(b), patched: true }),
        2 => prop_oneof![0u32..10, 0u32..100_000, any::<u32>().prop_map(|s| s >> 1)].prop_map(Event::Wait),
        3 => Just(Event::Deadline),
        1 => Just(Event::Timeout),
        1 => Just(Event::Renew),
    ]
}

/// Checks the packets the client sends; the transaction id of the last one.
fn sent_xid(actions: Vec<Action>) -> Result<Option<u32>, TestCaseError> {
    let mut xid = None;
    for a in actions {
        if let Action::Send { packet, .. } = a {
            let m = message::decode(&packet)
                .map_err(|e| TestCaseError::fail(format!("our own packet does not decode: {e}")))?;
            prop_assert_eq!((m.op, &m.chaddr[..6]), (BOOTREQUEST, &MAC[..]));
            xid = Some(m.xid);
        }
    }
    Ok(xid)
}

#[test]
fn fuzz_dhcp_client() {
    let corpus = Corpus::load(&[corpus("dhcp")]);
    let events = proptest::collection::vec(event(&corpus), 1..24);
    run("net/dhcp-client", 10_000, (events, any::<u64>()), |(events, seed)| {
        let start = Instant::now();
        let mut now = start;
        let config = Config { mac: MAC, host_name: Some("berth".into()), max_message_size: 1472, seed };
        let mut client = Client::new(config, now);
        let mut xid = 0u32;
        for e in events {
            let actions = match e {
                Event::Packet { bytes, patched } => {
                    let mut b = bytes.0;
                    if patched && b.len() >= 34 {
                        b[4..8].copy_from_slice(&xid.to_be_bytes());
                        b[28..34].copy_from_slice(&MAC);
                    }
                    client.on_packet(&b, now)
                }
                Event::Wait(s) => {
                    now += Duration::from_secs(u64::from(s));
                    client.on_timeout(now)
                }
                Event::Deadline => {
                    if let Some(d) = client.deadline() {
                        now = now.max(d);
                    }
                    client.on_timeout(now)
                }
                Event::Timeout => client.on_timeout(now),
                Event::Renew => client.renew(now),
            };
            xid = sent_xid(actions)?.unwrap_or(xid);
            if let Some(lease) = client.lease() {
                prop_assert!(lease.prefix_len <= 32);
                let _ = (lease.netmask(), lease.broadcast(), lease.renew_at(), lease.rebind_at(), lease.expires_at());
            }
        }
        Ok(())
    });
}
