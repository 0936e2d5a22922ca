//! `berth-netd`: DHCPv4 on every Ethernet interface of the host, as a `Type=notify` service
//! (`berth-netd.service`, installed in every image by the builder). It sends `READY=1` once the
//! first lease is applied, so `network-online.target` (which requires it and is ordered after
//! it) is reached then; the unit's `TimeoutStartSec=` bounds the wait. `STATUS=` says what each
//! interface's client is doing (`berthctl status berth-netd.service`).
//!
//! `berth-netd --has-interfaces` (the unit's `ExecCondition=`) exits 1 when the machine has no
//! Ethernet interface: the unit is then skipped, not left waiting for a lease that cannot come.
//!
//! `berth-netd --once IFACE [--renew]` runs the same client in the foreground until the
//! interface is bound, applies the lease, prints it and exits leaving it in place; with
//! `--renew` it then renews once at once (a unicast REQUEST from the new address: proof that
//! the address works). The QEMU `network` test drives it through the guest agent.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_net::{Network, link, log, resolv};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `--once` waits for a lease (DISCOVERs at 0, 4, 12, 28, 60 s …).
const ONCE_TIMEOUT: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        None => daemon(),
        Some("--once") => once(args.get(1..).unwrap_or_default()),
        Some("--has-interfaces") => {
            let names = link::ethernet_interfaces(Path::new("/sys/class/net"));
            if names.is_empty() {
                log::line("no Ethernet interface to configure");
                1
            } else {
                0
            }
        }
        Some("--version" | "-V") => {
            log::out(&format!("berth-netd {VERSION}\n"));
            0
        }
        Some("--help" | "-h") => {
            log::out(&usage());
            0
        }
        Some(_) => {
            log::err(&usage());
            2
        }
    };
    std::process::exit(code);
}

fn usage() -> String {
    format!(
        "berth-netd {VERSION}: DHCPv4 on every Ethernet interface\n\
         usage: berth-netd                        run as the berth-netd.service daemon\n\
         \x20      berth-netd --once IFACE [--renew] get (and renew) a lease on IFACE, print it, exit\n\
         \x20      berth-netd --has-interfaces      exit 0 if there is an Ethernet interface to configure\n"
    )
}

/// The service: DHCP until stopped (SIGTERM's default action; the addresses stay, as leases
/// with their lifetimes, and a restarted netd takes them over by asking for them again).
fn daemon() -> i32 {
    let mut net = Network::start(Instant::now());
    if net.interfaces().is_empty() {
        log::line("no interface could be set up; exiting");
        return 1;
    }
    let notify = Notify::from_env();
    let mut ready = false;
    let mut status = String::new();
    loop {
        net.poll_once(Duration::from_secs(60));
        let now = net.status();
        if !ready && net.online() {
            ready = true;
            log::line("network online");
            notify.send(&format!("READY=1\nSTATUS={now}\n"));
        } else if now != status {
            notify.send(&format!("STATUS={now}\n"));
        }
        status = now;
    }
}

/// `$NOTIFY_SOCKET` (sd_notify): where the service manager takes `READY=1` and `STATUS=`.
struct Notify {
    socket: Option<(UnixDatagram, PathBuf)>,
}

impl Notify {
    fn from_env() -> Notify {
        let path = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let socket = path.and_then(|p| match UnixDatagram::unbound() {
            Ok(s) => Some((s, p)),
            Err(e) => {
                log::line(&format!("sd_notify socket: {e}"));
                None
            }
        });
        Notify { socket }
    }

    fn send(&self, message: &str) {
        if let Some((socket, path)) = &self.socket
            && let Err(e) = socket.send_to(message.as_bytes(), path)
        {
            log::line(&format!("sd_notify to {}: {e}", path.display()));
        }
    }
}

/// `berth-netd --once IFACE [--renew]`; see the module docs. Returns the exit code.
fn once(args: &[String]) -> i32 {
    let (name, renew) = match args {
        [name] => (name, false),
        [name, flag] if flag == "--renew" => (name, true),
        _ => {
            log::err("usage: berth-netd --once IFACE [--renew]\n");
            return 2;
        }
    };
    let started = Instant::now();
    let mut net = Network::on_interfaces(std::slice::from_ref(name), started, PathBuf::from(resolv::PATH));
    if net.interfaces().is_empty() {
        return 1;
    }
    if !net.run_until(started + ONCE_TIMEOUT, Network::online) {
        log::err(&format!("{name}: no DHCP lease within {} s\n", ONCE_TIMEOUT.as_secs()));
        return 1;
    }
    let Some(lease) = net.leases().first().map(|(_, l)| (*l).clone()) else { return 1 };
    let ms = |since: Instant| since.elapsed().as_millis();
    log::out(&format!(
        "{name}: DHCP lease {}/{} {}; bound in {} ms\n",
        lease.address,
        lease.prefix_len,
        berth_net::describe(&lease),
        ms(started)
    ));
    if renew {
        let asked = Instant::now();
        net.renew(asked);
        let renewed = |n: &Network| n.leases().first().is_some_and(|(_, l)| l.acquired != lease.acquired);
        if !net.run_until(asked + Duration::from_secs(60), renewed) {
            log::err(&format!("{name}: the lease was not renewed within 60 s\n"));
            return 1;
        }
        log::out(&format!("{name}: renewed by unicast from {} in {} ms\n", lease.address, ms(asked)));
    }
    0
}
