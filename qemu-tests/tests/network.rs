//! berth-netd's DHCP client against QEMU's user network (slirp, `restrict=on`, as the harness
//! always runs it) on the `minimal` image: the guest gets 10.0.2.15/24 from 10.0.2.2 on
//! `eth0` (virtio-net, loaded by stage 1, named by the kernel: there is no udev), renews by
//! unicast from that address, and the address, its prefix route and `/run/berth/resolv.conf`
//! are in place afterwards. With `restrict=on` slirp sends neither a router nor a DNS server
//! (libslirp's `bootp.c`), so there is no default route and the resolv.conf says so; the
//! route and DNS paths are covered by berth-net's own veth test.
//!
//! `berth-netd.service` runs the client: the test waits for its lease and "network online"
//! lines (the unit's output is echoed on the console until boot-complete), checks that PID 1
//! holds no packet socket (DHCP is out of PID 1), then also drives a forced renewal with
//! `berth-netd --once eth0 --renew` through the guest agent.

mod common;

use std::time::{Duration, Instant};

use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, put_cmdline};

#[test]
fn dhcp_lease_and_renewal_from_qemu_user_network() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let mut m = Machine::start_with(
        &Boot { disk: &image.disk, format: "raw", memory_mib: 768 },
        &Options { network: true, serial_ports: vec![PORT_NAME.into()], overlay: true, ..Options::default() },
    )
    .unwrap();
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.wait_for("]: network online", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let online = common::line_with(&console, "]: network online");
    assert!(online.contains("berth-netd"), "{online}");
    let lease = common::line_with(&console, "eth0: DHCP lease 10.0.2.15/24 from 10.0.2.2");
    assert!(lease.contains("berth-netd"), "the lease is not berth-netd's: {lease}");
    eprintln!("berth-netd: {lease}");
    let mut a = Agent::connect(m.serial_port(PORT_NAME).expect("agent port"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", m.console()));

    // An Ethernet device the kernel named eth0, driven by virtio_net.
    assert_eq!(a.read("/sys/class/net/eth0/type").unwrap(), "1\n");
    let uevent = a.read("/sys/class/net/eth0/device/uevent").unwrap();
    assert!(uevent.contains("DRIVER=virtio_net"), "{uevent}");

    // The unit is active, and says what its client holds (sd_notify STATUS=).
    let r = a.exec(&["/usr/bin/berthctl", "status", "berth-netd.service"], Duration::from_secs(30)).unwrap();
    eprintln!("berthctl status berth-netd.service:\n{}", r.stdout);
    assert_eq!(r.status, Some(0), "{r:?}");
    assert!(r.stdout.contains("active"), "{}", r.stdout);
    assert!(r.stdout.contains("eth0: bound 10.0.2.15/24 (netmask 255.255.255.0) from 10.0.2.2"), "{}", r.stdout);

    // PID 1 holds no packet socket: none of its descriptors' inodes (fdinfo's `ino:`; the
    // minimal image has no ls) is one of /proc/net/packet's, while berth-netd's is there.
    let packet = a.read("/proc/net/packet").unwrap();
    let packet_inodes: Vec<&str> = packet.lines().skip(1).filter_map(|l| l.split_whitespace().last()).collect();
    assert!(!packet_inodes.is_empty(), "no packet socket at all (is berth-netd running?):\n{packet}");
    let mut pid1_inodes = Vec::new();
    for fd in 0..256 {
        let Ok(info) = a.read(&format!("/proc/1/fdinfo/{fd}")) else { continue };
        let ino = info.lines().find_map(|l| l.strip_prefix("ino:")).map(|i| i.trim().to_string());
        pid1_inodes.push((fd, ino.unwrap_or_else(|| panic!("no ino: in /proc/1/fdinfo/{fd}:\n{info}"))));
    }
    eprintln!("PID 1's descriptors (fd, inode): {pid1_inodes:?}; packet sockets: {packet_inodes:?}");
    assert!(pid1_inodes.len() >= 3, "{pid1_inodes:?}");
    for (fd, ino) in &pid1_inodes {
        assert!(!packet_inodes.contains(&ino.as_str()), "PID 1's fd {fd} is a packet socket:\n{packet}");
    }

    let started = Instant::now();
    let r = a.exec(&["/usr/bin/berth-netd", "--once", "eth0", "--renew"], Duration::from_secs(240)).unwrap();
    let took = started.elapsed();
    eprintln!("--once: {:?}\nstdout:\n{}stderr:\n{}", r.status, r.stdout, r.stderr);
    assert_eq!(r.status, Some(0), "{r:?}\nconsole:\n{}", m.console());
    let lease = "eth0: DHCP lease 10.0.2.15/24 from 10.0.2.2, no router, no DNS, 86400 s; bound in ";
    let bound_ms: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(lease))
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no {lease:?} line in {:?}", r.stdout));
    assert!(r.stdout.contains("eth0: renewed by unicast from 10.0.2.15 in "), "{}", r.stdout);
    eprintln!("time to lease in the guest: {bound_ms} ms (the whole exec, renewal included: {took:.1?})");

    // The address is the kernel's, with its prefix route and no default route.
    let fib = a.read("/proc/net/fib_trie").unwrap();
    let lines: Vec<&str> = fib.lines().map(str::trim).collect();
    assert!(lines.windows(2).any(|w| w == ["|-- 10.0.2.15", "/32 host LOCAL"]), "10.0.2.15 is not local:\n{fib}");
    let routes = a.read("/proc/net/route").unwrap();
    let fields: Vec<Vec<&str>> = routes.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert!(
        fields.iter().any(|f| f.get(..3) == Some(&["eth0", "0002000A", "00000000"]) && f.get(7) == Some(&"00FFFFFF")),
        "no 10.0.2.0/24 route on eth0:\n{routes}"
    );
    assert!(!fields.iter().any(|f| f.get(1) == Some(&"00000000")), "a default route without a router:\n{routes}");
    assert_eq!(
        a.read("/run/berth/resolv.conf").unwrap(),
        "# Written by berth-netd from DHCP on eth0.\n# The DHCP servers named no DNS server.\n"
    );
}
