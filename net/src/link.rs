//! Network interfaces: which ones are Ethernet NICs to configure (sysfs), and their flags,
//! index, hardware address and MTU (netdevice ioctls, which act in the caller's network
//! namespace, unlike a sysfs mounted elsewhere).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

nix::ioctl_readwrite_bad!(get_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_flags, libc::SIOCSIFFLAGS, libc::ifreq);
nix::ioctl_readwrite_bad!(get_hwaddr, libc::SIOCGIFHWADDR, libc::ifreq);
nix::ioctl_readwrite_bad!(get_mtu, libc::SIOCGIFMTU, libc::ifreq);

/// `/sys/class/net/<if>/type` of Ethernet (ARPHRD_ETHER).
const ARPHRD_ETHER: &str = "1";

/// Brings `lo` up (the kernel gives it 127.0.0.1/8 and ::1 when it goes up).
pub fn loopback_up() -> Result<(), String> {
    set_up("lo")
}

/// The Ethernet interfaces of real (physical or virtual-machine) devices under `class_net`
/// (`/sys/class/net`), in ifindex order: type 1 with a `device` link. Bridges, veths, bonds,
/// VLANs, tunnels and the like have no `device`: they belong to the container runtimes.
/// Wireless NICs are Ethernet too but need association first, which Berth does not do.
pub fn ethernet_interfaces(class_net: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(class_net) else { return Vec::new() };
    let mut found: Vec<(u32, String)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let path = class_net.join(&name);
            let kind = std::fs::read_to_string(path.join("type")).ok()?;
            let wanted = kind.trim() == ARPHRD_ETHER
                && path.join("device").exists()
                && !path.join("wireless").exists()
                && !path.join("phy80211").exists();
            let index = std::fs::read_to_string(path.join("ifindex")).ok().and_then(|i| i.trim().parse().ok());
            wanted.then(|| (index.unwrap_or(u32::MAX), name))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, name)| name).collect()
}

fn ioctl_socket() -> Result<OwnedFd, String> {
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket for interface ioctls: {e}"))
}

/// An ifreq naming `name` (which must fit IFNAMSIZ with its NUL).
fn request(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(format!("{name:?} is not an interface name"));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn flags(sock: &OwnedFd, name: &str) -> Result<libc::ifreq, String> {
    let mut req = request(name)?;
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills in ifru_flags.
    unsafe { get_flags(sock.as_raw_fd(), &mut req) }.map_err(|e| format!("reading {name}'s flags: {e}"))?;
    Ok(req)
}

/// Sets IFF_UP on `name`.
pub fn set_up(name: &str) -> Result<(), String> {
    let sock = ioctl_socket()?;
    let mut req = flags(&sock, name)?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS wrote.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel reads ifru_flags.
    unsafe { set_flags(sock.as_raw_fd(), &req) }.map_err(|e| format!("bringing {name} up: {e}"))?;
    Ok(())
}

/// IFF_RUNNING: up with carrier (operstate up, or unknown for drivers that do not report it).
/// Packets sent before that are dropped by the not yet activated queue, silently.
pub fn is_running(name: &str) -> Result<bool, String> {
    let req = flags(&ioctl_socket()?, name)?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS wrote.
    let f = unsafe { req.ifr_ifru.ifru_flags };
    Ok(f & libc::IFF_RUNNING as libc::c_short != 0)
}

pub fn index(name: &str) -> Result<u32, String> {
    nix::net::if_::if_nametoindex(name).map_err(|e| format!("{name}'s interface index: {e}"))
}

/// The Ethernet address of `name`.
pub fn mac(name: &str) -> Result<[u8; 6], String> {
    let mut req = request(name)?;
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills in ifru_hwaddr.
    unsafe { get_hwaddr(ioctl_socket()?.as_raw_fd(), &mut req) }
        .map_err(|e| format!("reading {name}'s hardware address: {e}"))?;
    // SAFETY: the union's hwaddr member is the one SIOCGIFHWADDR wrote.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(format!("{name} is not Ethernet (hardware type {})", hw.sa_family));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data) {
        *d = s as u8;
    }
    Ok(mac)
}

pub fn mtu(name: &str) -> Result<u32, String> {
    let mut req = request(name)?;
    // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills in ifru_mtu.
    unsafe { get_mtu(ioctl_socket()?.as_raw_fd(), &mut req) }.map_err(|e| format!("reading {name}'s MTU: {e}"))?;
    // SAFETY: the union's mtu member is the one SIOCGIFMTU wrote.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| format!("{name} has MTU {mtu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(root: &Path, name: &str, kind: &str, index: u32, extra: &[&str]) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
        for e in extra {
            std::fs::create_dir_all(d.join(e)).unwrap();
        }
    }

    #[test]
    fn only_ethernet_devices_in_index_order() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        iface(r, "lo", "772", 1, &[]);
        iface(r, "eth10", "1", 12, &["device"]);
        iface(r, "eth2", "1", 4, &["device"]);
        iface(r, "ens3", "1", 3, &["device"]);
        iface(r, "docker0", "1", 5, &[]);
        iface(r, "veth1a2b", "1", 6, &[]);
        iface(r, "wlan0", "1", 7, &["device", "wireless"]);
        iface(r, "ib0", "32", 8, &["device"]);
        assert_eq!(ethernet_interfaces(r), ["ens3", "eth2", "eth10"]);
        assert!(ethernet_interfaces(&r.join("missing")).is_empty());
    }

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        assert!(request("").is_err());
        assert!(request("sixteen-chars-xx").is_err());
        assert!(request("a\0b").is_err());
        assert!(request("fifteen-chars-x").is_ok());
        assert!(index("no-such-if0").is_err());
    }
}
