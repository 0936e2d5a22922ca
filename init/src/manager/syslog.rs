//! `/dev/log`: daemons that log through syslog(3) (sshd, cron, sudo) instead of stdout. Each
//! datagram's sender is known from `SO_PASSCRED`, so its lines land in the log of the unit whose
//! cgroup the sender is in (or `syslog` for processes outside any unit).

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg, setsockopt, socket,
    sockopt,
};

pub const SOCKET: &str = "/run/berth/syslog";
pub const DEV_LOG: &str = "/dev/log";

pub struct Syslog {
    fd: OwnedFd,
}

/// One received message: sender, identifier and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pid: i32,
    pub text: String,
}

impl Syslog {
    pub fn bind() -> Result<Syslog, String> {
        let _ = std::fs::remove_file(SOCKET);
        let fd =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
                .map_err(|e| format!("syslog socket: {e}"))?;
        let addr = UnixAddr::new(SOCKET).map_err(|e| format!("{SOCKET}: {e}"))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| format!("binding {SOCKET}: {e}"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| format!("SO_PASSCRED on {SOCKET}: {e}"))?;
        let _ = std::fs::set_permissions(SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let _ = std::fs::remove_file(DEV_LOG);
        std::os::unix::fs::symlink(SOCKET, DEV_LOG).map_err(|e| format!("{DEV_LOG} -> {SOCKET}: {e}"))?;
        Ok(Syslog { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every message waiting (non-blocking).
    pub fn receive(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (pid, len) = match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
            {
                Ok(m) => {
                    let pid = m
                        .cmsgs()
                        .ok()
                        .into_iter()
                        .flatten()
                        .find_map(|c| match c {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                            _ => None,
                        })
                        .unwrap_or(0);
                    (pid, m.bytes)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return out,
            };
            let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
            out.push(Entry { pid, text: message(&text) });
        }
    }
}

/// `<PRI>Mmm dd hh:mm:ss ident[pid]: text` → `ident[pid]: text` (the priority and the
/// sender's clock are dropped: the journal stamps lines itself).
pub fn message(raw: &str) -> String {
    let mut s = raw.trim_end_matches(['\n', '\0']);
    if let Some(rest) = s.strip_prefix('<')
        && let Some(end) = rest.find('>')
        && rest[..end].bytes().all(|b| b.is_ascii_digit())
    {
        s = &rest[end + 1..];
    }
    // RFC 3164 timestamp: "Nov 22 09:34:02 ".
    let b = s.as_bytes();
    if b.len() > 16 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':' && b[15] == b' ' {
        s = &s[16..];
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn priority_and_timestamp_dropped() {
        assert_eq!(
            message("<38>Nov 22 09:34:02 sshd[100]: Accepted publickey for core\n"),
            "sshd[100]: Accepted publickey for core"
        );
        assert_eq!(message("<13>plain text"), "plain text");
        assert_eq!(message("no header"), "no header");
        assert_eq!(message("<x>odd"), "<x>odd");
    }
}
