//! [`Network`] end to end on a veth pair against a small DHCP server in the test: the real
//! sockets, netlink and resolv.conf. The client's end is in a network namespace of the test's
//! thread, with strict `rp_filter` (which would make a UDP-only client miss the OFFER) and a
//! server thread in a namespace of its own holds the other end (in one namespace the server's
//! address would be local to the client too). Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and
//! iproute2's `ip`; without them it says so and passes.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt};

use super::Network;
use super::dhcp::message::{self, Message, MessageType, Options};

const CLIENT_IF: &str = "bdc0";
const SERVER_IF: &str = "bds0";
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const OFFERED: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);
const DNS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 53);

fn ip(args: &str) -> String {
    let out = Command::new("ip").args(args.split(' ')).output().expect("running ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the server saw: message type, `ciaddr`, and whether it came by unicast.
type Seen = (MessageType, Ipv4Addr, bool);

/// The test's hold on the server thread.
#[derive(Default)]
struct Control {
    seen: Mutex<Vec<Seen>>,
    silent: AtomicBool,
    nak: AtomicBool,
    stop: AtomicBool,
}

impl Control {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Waits (2 s at most) until the server has seen `n` requests, and takes them.
    fn wait_for(&self, n: usize) -> Vec<Seen> {
        let until = Instant::now() + Duration::from_secs(2);
        while self.seen.lock().unwrap().len() < n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.take()
    }
}

fn server_socket(addr: Ipv4Addr) -> UdpSocket {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_NONBLOCK, None).unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    setsockopt(&fd, sockopt::Broadcast, &true).unwrap();
    setsockopt(&fd, sockopt::BindToDevice, &SERVER_IF.into()).unwrap();
    let [a, b, c, d] = addr.octets();
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 67)).unwrap();
    UdpSocket::from(fd)
}

/// The server thread: a namespace of its own (its thread id goes to `tid`), then, once the
/// test has moved the server's end in (`moved`), a DHCP server on it until told to stop. One
/// socket takes broadcasts, one bound to the server's address unicasts (the kernel gives each
/// packet to the most specific socket), so the test knows how each request came.
fn server(control: Arc<Control>, tid: Sender<Option<i32>>, moved: Receiver<()>, serving: Sender<()>) {
    // SAFETY: unshare affects only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let _ = tid.send(None);
        return;
    }
    // SAFETY: gettid has no preconditions.
    tid.send(Some(unsafe { libc::gettid() })).unwrap();
    if moved.recv().is_err() {
        return;
    }
    ip(&format!("addr add {SERVER}/24 dev {SERVER_IF}"));
    ip(&format!("link set {SERVER_IF} up"));
    let sockets = [(server_socket(Ipv4Addr::UNSPECIFIED), false), (server_socket(SERVER), true)];
    serving.send(()).unwrap();
    let mut buf = [0u8; 1500];
    while !control.stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd> = sockets.iter().map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
        let _ = poll(&mut fds, PollTimeout::from(20u16));
        drop(fds);
        for (sock, unicast) in &sockets {
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                let Ok(request) = message::decode(&buf[..n]) else { continue };
                let Some(kind) = request.options.message_type else { continue };
                control.seen.lock().unwrap().push((kind, request.ciaddr, *unicast));
                if control.silent.load(Ordering::SeqCst) {
                    continue;
                }
                let answer = match kind {
                    MessageType::Discover => MessageType::Offer,
                    MessageType::Request if control.nak.load(Ordering::SeqCst) => MessageType::Nak,
                    MessageType::Request => MessageType::Ack,
                    _ => continue,
                };
                // Renewals are answered by unicast, the rest by broadcast (the flag is set).
                let to = if request.ciaddr.is_unspecified() { Ipv4Addr::BROADCAST } else { request.ciaddr };
                sock.send_to(&reply(&request, answer).encode(), SocketAddrV4::new(to, 68)).unwrap();
            }
        }
    }
}

fn reply(request: &Message, kind: MessageType) -> Message {
    let mut m = request.clone();
    m.op = message::BOOTREPLY;
    m.yiaddr = if kind == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { OFFERED };
    m.options = if kind == MessageType::Nak {
        Options {
            message_type: Some(kind),
            server_id: Some(SERVER),
            message: Some("go away".into()),
            ..Options::default()
        }
    } else {
        Options {
            message_type: Some(kind),
            server_id: Some(SERVER),
            lease_time: Some(3600),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![SERVER],
            dns_servers: vec![DNS],
            domain_name: Some("test.example".into()),
            ..Options::default()
        }
    };
    m
}

/// Runs the client with the clock `offset` ahead until `done` (10 s at most).
fn pump(net: &mut Network, control: &Control, offset: Duration, done: impl Fn(&Network) -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done(net) {
        assert!(Instant::now() < give_up, "no progress within 10 s; the server saw {:?}", control.seen.lock().unwrap());
        net.on_tick(Instant::now() + offset);
        let mut fds: Vec<PollFd> = net.fds().into_iter().map(|fd| PollFd::new(fd, PollFlags::POLLIN)).collect();
        let _ = poll(&mut fds, PollTimeout::from(20u16));
        drop(fds);
        net.on_readable(Instant::now() + offset);
    }
}

#[test]
fn leases_renewals_expiry_and_naks_on_a_veth_pair() {
    // Threads of their own: the namespace changes must not outlive the test.
    let control = Arc::new(Control::default());
    let (tid_tx, tid_rx) = channel();
    let (moved_tx, moved_rx) = channel();
    let (serving_tx, serving_rx) = channel();
    let c = control.clone();
    let server = std::thread::spawn(move || server(c, tid_tx, moved_rx, serving_tx));
    let c = control.clone();
    let client = std::thread::spawn(move || client(&c, tid_rx, moved_tx, serving_rx));
    let result = client.join();
    control.stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    result.unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn client(control: &Control, tid: Receiver<Option<i32>>, moved: Sender<()>, serving: Receiver<()>) {
    // SAFETY: unshare affects only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("skipped: no new network namespace ({})", std::io::Error::last_os_error());
        return;
    }
    let Some(server_tid) = tid.recv().unwrap() else {
        eprintln!("skipped: no second network namespace");
        return;
    };
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: no `ip` command");
        return;
    }
    // Strict reverse-path filtering (this thread's namespace: /proc/sys/net is per namespace).
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "1").unwrap();
    }
    ip(&format!("link add {CLIENT_IF} type veth peer name {SERVER_IF}"));
    ip(&format!("link set {SERVER_IF} netns {server_tid}"));
    moved.send(()).unwrap();
    serving.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("run/berth/resolv.conf");
    let started = Instant::now();
    let mut net = Network::on_interfaces(&[CLIENT_IF.to_string()], started, resolv.clone());
    assert_eq!(net.fds().len(), 1);
    assert!(!net.online());

    // DISCOVER, OFFER, REQUEST, ACK: address, route and DNS in place.
    pump(&mut net, control, Duration::ZERO, Network::online);
    eprintln!("bound in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    let index = ip(&format!("-o link show {CLIENT_IF}"));
    let index: u32 = index.split(':').next().unwrap().parse().unwrap();
    assert_eq!(
        control.take(),
        [(MessageType::Discover, Ipv4Addr::UNSPECIFIED, false), (MessageType::Request, Ipv4Addr::UNSPECIFIED, false)]
    );
    let addr = ip(&format!("-4 -o addr show dev {CLIENT_IF}"));
    assert!(addr.contains(&format!("inet {OFFERED}/24 brd 192.168.77.255 scope global dynamic {CLIENT_IF}")), "{addr}");
    assert!(addr.contains("valid_lft 3599sec") || addr.contains("valid_lft 3600sec"), "{addr}");
    let route = ip("-4 route show default");
    assert_eq!(
        route.trim(),
        format!("default via {SERVER} dev {CLIENT_IF} proto dhcp src {OFFERED} metric {}", 1024 + index)
    );
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        format!("# Written by berth-netd from DHCP on {CLIENT_IF}.\nnameserver {DNS}\nsearch test.example\n")
    );
    let first = net.leases()[0].1.clone();
    assert_eq!((first.address, first.prefix_len, first.server), (OFFERED, 24, SERVER));
    assert!(net.next_deadline().is_some_and(|d| d > started + Duration::from_secs(1700)));

    // Renewal: unicast from our address, answered by unicast.
    net.renew(Instant::now());
    pump(&mut net, control, Duration::ZERO, |n| n.leases().first().is_some_and(|(_, l)| l.acquired != first.acquired));
    assert_eq!(control.take(), [(MessageType::Request, OFFERED, true)]);
    assert!(ip("-4 route show default").contains(&format!("via {SERVER}")));

    // An hour later, with the server gone quiet, the lease expires: address and route go.
    control.silent.store(true, Ordering::SeqCst);
    let later = Duration::from_secs(3601);
    net.on_tick(Instant::now() + later);
    assert!(!net.online());
    assert_eq!(ip(&format!("-4 -o addr show dev {CLIENT_IF}")), "");
    assert_eq!(ip("-4 route show default"), "");
    assert_eq!(std::fs::read_to_string(&resolv).unwrap(), "# Written by berth-netd: no DHCP lease.\n");
    assert_eq!(control.wait_for(1), [(MessageType::Discover, Ipv4Addr::UNSPECIFIED, false)]);

    // The server is back; a NAK to the next renewal takes the lease away too.
    control.silent.store(false, Ordering::SeqCst);
    let later = later + Duration::from_secs(5);
    pump(&mut net, control, later, Network::online);
    control.take();
    control.nak.store(true, Ordering::SeqCst);
    net.renew(Instant::now() + later);
    pump(&mut net, control, later, |n| !n.online());
    assert_eq!(control.take().first(), Some(&(MessageType::Request, OFFERED, true)));
    assert_eq!(ip(&format!("-4 -o addr show dev {CLIENT_IF}")), "");
    assert_eq!(ip("-4 route show default"), "");
}
