//! The sd_notify socket (`$NOTIFY_SOCKET`): one datagram socket for every unit, with
//! `SO_PASSCRED` so the kernel tells us which process sent each message (a sender cannot lie
//! about its PID). Messages are newline-separated `KEY=VALUE` assignments.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

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
        // Services run as other users too.
        Ok(NotifySocket { fd: bind_datagram(SOCKET, 0o777)? })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Every message waiting (non-blocking).
    pub fn receive(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some((pid, len)) = receive_one(&self.fd, &mut buf) {
            if pid > 0 {
                out.push(Message { pid, fields: parse(&String::from_utf8_lossy(&buf[..len])) });
            }
        }
        out
    }
}

/// A non-blocking Unix datagram socket at `path` with `SO_PASSCRED`, so that the kernel tells
/// who sent each message.
pub fn bind_datagram(path: &str, mode: u32) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(path);
    let fd = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
        .map_err(|e| format!("socket for {path}: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("{path}: {e}"))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| format!("binding {path}: {e}"))?;
    setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| format!("SO_PASSCRED on {path}: {e}"))?;
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode));
    Ok(fd)
}

/// One datagram into `buf`: `None` when nothing is waiting, else the sender's pid (0 when the
/// kernel gave none) and the length (a longer message is cut at the buffer's size).
pub fn receive_one(fd: &OwnedFd, buf: &mut [u8]) -> Option<(i32, usize)> {
    let cap = buf.len();
    loop {
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let mut iov = [IoSliceMut::new(buf)];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
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
                return Some((pid, m.bytes.min(cap)));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // EAGAIN: nothing waiting; any other error: nothing more to read now.
            Err(_) => return None,
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
