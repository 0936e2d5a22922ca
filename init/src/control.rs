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
    List { all: bool },
    Status { unit: String },
    Start { unit: String },
    Stop { unit: String },
    Restart { unit: String },
    Reload,
    Logs { unit: String, lines: usize, follow: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub units: Vec<UnitStatus>,
    #[serde(default)]
    pub lines: Vec<LogLine>,
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into(), units: Vec::new(), lines: Vec::new() }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into(), units: Vec::new(), lines: Vec::new() }
    }
}

// TEMPORARY (replaced by the journal branch's control.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub name: String,
    pub description: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub main_pid: Option<i32>,
    pub memory_bytes: Option<u64>,
    pub tasks: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub active_since_us: Option<u64>,
    pub status_text: Option<String>,
    pub cgroup: Option<String>,
    pub fragment: Option<String>,
    pub enabled: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub unit: String,
    pub time_us: u64,
    pub pid: Option<i32>,
    pub text: String,
}
