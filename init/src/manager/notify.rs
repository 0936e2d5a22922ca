//! The sd_notify socket (`$NOTIFY_SOCKET`): one datagram socket for every unit, with
//! `SO_PASSCRED` so the kernel tells us which process sent each message (a sender cannot lie
//! about its PID). Messages are newline-separated `KEY=VALUE` assignments.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg, setsockopt, socket,
    sockopt,
};

pub const SOCKET: &str = "/run/berth/notify";

pub struct NotifySocket {
    fd: OwnedFd,
}

/// One message: who sent it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub pid: i32,
    pub fields: Vec<(String, String)>,
}

impl Message {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl NotifySocket {
    pub fn bind() -> Result<NotifySocket, String> {
        let _ = std::fs::remove_file(SOCKET);
        let fd =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
                .map_err(|e| format!("notify socket: {e}"))?;
        let addr = UnixAddr::new(SOCKET).map_err(|e| format!("{SOCKET}: {e}"))?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| format!("binding {SOCKET}: {e}"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| format!("SO_PASSCRED on {SOCKET}: {e}"))?;
        // Services run as other users too (sshd drops privileges, but its listener is root).
        let _ = std::fs::set_permissions(SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o777));
        Ok(NotifySocket { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every message waiting (non-blocking).
    pub fn receive(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let (pid, len) = match msg {
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
            if pid <= 0 {
                continue;
            }
            let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
            out.push(Message { pid, fields: parse(&text) });
        }
    }
}

/// `KEY=VALUE` lines; others are ignored as sd_notify(3) says.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_last_wins() {
        let m = Message { pid: 7, fields: parse("READY=1\nSTATUS=one\nnonsense\nSTATUS=two\nMAINPID=42\n") };
        assert_eq!(m.get("READY"), Some("1"));
        assert_eq!(m.get("STATUS"), Some("two"));
        assert_eq!(m.get("MAINPID"), Some("42"));
        assert_eq!(m.get("WATCHDOG"), None);
    }
}
