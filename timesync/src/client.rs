//! Asking servers: name resolution with a deadline, one exchange over UDP, several samples per
//! address (all addresses at once, a thread each), and the choice of the sample with the
//! lowest delay (the least room for asymmetry, RFC 5905 §10's reasoning in its simplest form).

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::ntp::{self, NtpTime, Refused};

/// The NTP port.
pub const NTP_PORT: u16 = 123;
/// Addresses used per server name (a pool name resolves to several).
pub const ADDRESSES_PER_NAME: usize = 2;

/// How a synchronisation asks.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Exchanges per address.
    pub samples: u32,
    /// Between two exchanges with one address (iburst's 2 s keeps public servers friendly).
    pub spacing: Duration,
    /// How long one exchange waits for its reply.
    pub timeout: Duration,
    /// How long a name may take to resolve.
    pub resolve_timeout: Duration,
}

impl Plan {
    /// The daemon's plan: `samples` exchanges 2 s apart, 2 s for a reply, 10 s for a name.
    pub fn new(samples: u32) -> Plan {
        Plan {
            samples,
            spacing: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an exchange or a server gave nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The name did not resolve.
    #[error("{name}: cannot resolve: {why}")]
    Resolve {
        /// The server as configured.
        name: String,
        /// Why.
        why: String,
    },
    /// A socket error.
    #[error("{addr}: {why}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// No reply (or only refused ones) in time.
    #[error("{addr}: no reply within {timeout:?}")]
    Timeout {
        /// The address.
        addr: SocketAddr,
        /// The wait.
        timeout: Duration,
    },
    /// The reply was refused.
    #[error("{addr}: {why}")]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: Refused,
    },
}

/// One good exchange with one server address.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The server as configured.
    pub name: String,
    /// The address asked.
    pub addr: SocketAddr,
    /// The exchange.
    pub exchange: ntp::Exchange,
}

/// Splits `host`, `host:port`, `a.b.c.d:port`, `[v6]:port` or a bare IPv6 address.
pub fn host_and_port(server: &str) -> (String, u16) {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    if server.parse::<std::net::IpAddr>().is_ok() {
        return (server.to_string(), NTP_PORT);
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_string(), p),
            Err(_) => (server.to_string(), NTP_PORT),
        },
        _ => (server.to_string(), NTP_PORT),
    }
}

/// Resolves `server` (at most [`ADDRESSES_PER_NAME`] addresses) within `timeout`. The lookup
/// runs on its own thread: a resolver that does not answer costs the deadline, not more.
pub fn resolve(server: &str, timeout: Duration) -> Result<Vec<SocketAddr>, QueryError> {
    let (host, port) = host_and_port(server);
    let (tx, rx) = mpsc::channel();
    let lookup = host.clone();
    std::thread::spawn(move || {
        let r = (lookup.as_str(), port).to_socket_addrs().map(|a| a.take(ADDRESSES_PER_NAME).collect::<Vec<_>>());
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let err = |why: String| QueryError::Resolve { name: server.to_string(), why };
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(err("no address".into())),
        Ok(Err(why)) => Err(err(why)),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// One exchange with `addr`: a request with a random transmit timestamp, and the first reply
/// that echoes it. Replies that do not are skipped (and said if nothing better comes); a
/// kiss-o'-death ends the exchange.
pub fn query(addr: SocketAddr, timeout: Duration) -> Result<ntp::Exchange, QueryError> {
    let io = |e: std::io::Error| QueryError::Io { addr, why: e.to_string() };
    let local: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(local).map_err(io)?;
    // Connected: the kernel delivers only datagrams from the server's address and port.
    sock.connect(addr).map_err(io)?;
    let nonce = NtpTime(rand::random());
    let request = ntp::Packet::request(nonce).encode();
    let t1 = NtpTime::from_system(SystemTime::now());
    sock.send(&request).map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut last_refusal = None;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(match last_refusal {
                Some(why) => QueryError::Refused { addr, why },
                None => QueryError::Timeout { addr, timeout },
            });
        }
        sock.set_read_timeout(Some(left)).map_err(io)?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        let t4 = NtpTime::from_system(SystemTime::now());
        match ntp::check_reply(&buf[..n.min(buf.len())], nonce, t1, t4) {
            Ok(x) => return Ok(x),
            Err(why) if why.is_final() => return Err(QueryError::Refused { addr, why }),
            Err(why) => last_refusal = Some(why),
        }
    }
}

/// What a synchronisation round found: every good sample, and what went wrong.
#[derive(Debug, Default)]
pub struct Round {
    /// Good samples, any order.
    pub samples: Vec<Sample>,
    /// Errors, one line each.
    pub errors: Vec<QueryError>,
}

impl Round {
    /// The sample with the lowest delay.
    pub fn best(&self) -> Option<&Sample> {
        self.samples.iter().min_by_key(|s| s.exchange.delay_ns)
    }
}

/// Resolves every server and takes `plan.samples` exchanges from each address, the addresses
/// in parallel. A kiss-o'-death stops the exchanges with that address.
pub fn measure(servers: &[String], plan: Plan) -> Round {
    let mut round = Round::default();
    let resolved: Vec<_> = servers
        .iter()
        .map(|s| {
            let s = s.clone();
            std::thread::spawn(move || (s.clone(), resolve(&s, plan.resolve_timeout)))
        })
        .collect();
    let mut targets = Vec::new();
    for h in resolved {
        match h.join() {
            Ok((name, Ok(addrs))) => targets.extend(addrs.into_iter().map(|a| (name.clone(), a))),
            Ok((_, Err(e))) => round.errors.push(e),
            Err(_) => {}
        }
    }
    let askers: Vec<_> = targets
        .into_iter()
        .map(|(name, addr)| {
            std::thread::spawn(move || {
                let mut got = (Vec::new(), Vec::new());
                for i in 0..plan.samples {
                    if i > 0 {
                        std::thread::sleep(plan.spacing);
                    }
                    match query(addr, plan.timeout) {
                        Ok(exchange) => got.0.push(Sample { name: name.clone(), addr, exchange }),
                        Err(e) => {
                            let stop = matches!(&e, QueryError::Refused { why, .. } if why.is_final());
                            got.1.push(e);
                            if stop {
                                break;
                            }
                        }
                    }
                }
                got
            })
        })
        .collect();
    for h in askers {
        if let Ok((samples, errors)) = h.join() {
            round.samples.extend(samples);
            round.errors.extend(errors);
        }
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_spellings() {
        assert_eq!(host_and_port("pool.ntp.org"), ("pool.ntp.org".into(), 123));
        assert_eq!(host_and_port("time.example:4123"), ("time.example".into(), 4123));
        assert_eq!(host_and_port("127.0.0.1:12300"), ("127.0.0.1".into(), 12300));
        assert_eq!(host_and_port("[::1]:12300"), ("::1".into(), 12300));
        assert_eq!(host_and_port("2001:db8::1"), ("2001:db8::1".into(), 123));
    }

    #[test]
    fn the_lowest_delay_wins() {
        let addr: SocketAddr = "127.0.0.1:123".parse().unwrap();
        let s = |delay_ns, offset_ns| Sample {
            name: "x".into(),
            addr,
            exchange: ntp::Exchange { offset_ns, delay_ns, stratum: 2 },
        };
        let round = Round { samples: vec![s(9_000, 1), s(2_000, 2), s(5_000, 3)], errors: vec![] };
        assert_eq!(round.best().unwrap().exchange.offset_ns, 2);
        assert!(Round::default().best().is_none());
    }

    #[test]
    fn a_name_that_does_not_resolve_is_an_error_naming_it() {
        let e = resolve("no-such-host.invalid", Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().starts_with("no-such-host.invalid: cannot resolve"), "{e}");
    }
}
