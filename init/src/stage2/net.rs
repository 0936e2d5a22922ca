//! The loopback interface (the kernel gives `lo` 127.0.0.1/8 and ::1 when it goes up).

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use std::os::fd::AsRawFd;

nix::ioctl_readwrite_bad!(get_flags, nix::libc::SIOCGIFFLAGS, nix::libc::ifreq);
nix::ioctl_write_ptr_bad!(set_flags, nix::libc::SIOCSIFFLAGS, nix::libc::ifreq);

/// Brings `lo` up.
pub fn loopback_up() -> Result<(), String> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket for interface ioctls: {e}"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming `lo`; the kernel fills in ifru_flags.
    unsafe { get_flags(sock.as_raw_fd(), &mut req) }.map_err(|e| format!("reading lo's flags: {e}"))?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS wrote.
    unsafe { req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short };
    // SAFETY: as above; the kernel reads ifru_flags.
    unsafe { set_flags(sock.as_raw_fd(), &req) }.map_err(|e| format!("bringing lo up: {e}"))?;
    Ok(())
}
