//! The control socket between `berthctl` and PID 1: one JSON request per connection, one JSON
//! reply, over a root-only Unix socket at [`SOCKET`].

use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "/run/berth/control.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Reboot,
    Poweroff,
    IsSystemRunning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into() }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into() }
    }
}
