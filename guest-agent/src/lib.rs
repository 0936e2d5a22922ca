//! `berth-guest-agent`: the hypervisor's way into a running Berth guest, like qemu-guest-agent.
//!
//! The guest side reads requests from a virtio-serial port named [`PORT_NAME`] (which only the
//! hypervisor host can reach) and answers each with one reply. The wire format is one JSON object
//! per line in both directions ([`Request`] and [`Reply`] inside an [`Envelope`]); this module
//! is that contract, used by the agent and by the host side (the QEMU test harness).
//! Minimal images carry no shell, so the agent reads and writes files itself besides running
//! commands.

use serde::{Deserialize, Serialize};

/// The virtio-serial port name the agent listens on (`-device virtserialport,name=…`).
pub const PORT_NAME: &str = "org.berth.agent.0";

/// Where images install the agent.
pub const INSTALL_PATH: &str = "/usr/libexec/berth/guest-agent";

/// A request or a reply with the id that pairs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Is the agent there?
    Ping,
    /// Run `argv` (no shell; `PATH` is searched) and wait for it.
    Exec { argv: Vec<String> },
    /// A file's contents (lossy UTF-8).
    Read { path: String },
    /// Create or replace a file (written in place, then synced).
    Write { path: String, data: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    Pong,
    Exited(ExecResult),
    Data {
        data: String,
    },
    Written,
    /// What failed, with the OS error (for example `… (os error 30)` for EROFS).
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, if the process exited.
    pub status: Option<i32>,
    /// Terminating signal, if it was killed.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_one_flat_object() {
        let r = Envelope { id: 7, body: Request::Exec { argv: vec!["berthctl".into(), "reboot".into()] } };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"id":7,"op":"exec","argv":["berthctl","reboot"]}"#);
        assert_eq!(serde_json::from_str::<Envelope<Request>>(&line).unwrap(), r);
        let e = Envelope { id: 7, body: Reply::Error { message: "x".into() } };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"id":7,"reply":"error","message":"x"}"#);
    }
}
