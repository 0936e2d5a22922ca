//! `/dev/log`: daemons that log through syslog(3) (sshd, cron, sudo) instead of stdout. Each
//! datagram's sender is known from `SO_PASSCRED`, so its lines land in the log of the unit whose
//! cgroup the sender is in (or `syslog` for processes outside any unit).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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
        let fd = super::notify::bind_datagram(SOCKET, 0o666)?;
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
        while let Some((pid, len)) = super::notify::receive_one(&self.fd, &mut buf) {
            out.push(Entry { pid, text: message(&String::from_utf8_lossy(&buf[..len])) });
        }
        out
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

#[cfg(test)]
mod fuzz;
