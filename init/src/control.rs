//! The control socket between `berthctl` and PID 1: a root-only Unix socket at [`SOCKET`]. The
//! client sends one JSON [`Request`] line per connection and reads one JSON [`Reply`] line.
//! `Logs { follow: true }` is the one exception: after the reply the server keeps the
//! connection and sends each new [`LogLine`] of the unit as its own JSON line until the client
//! goes away.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "/run/berth/control.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The ordered shutdown now, then restart (`berthctl reboot`, `reboot`, `shutdown -r now`).
    Reboot,
    /// The same, then switch the machine off.
    Poweroff,
    /// The same, then halt the CPUs without switching the machine off (`halt`, `shutdown -H now`).
    Halt,
    /// `shutdown` with a time: `power` once `after_secs` have passed (PID 1 keeps the deadline,
    /// on the monotonic clock); replaces one scheduled before. `message` is logged with it.
    ScheduleShutdown {
        power: Power,
        after_secs: u64,
        #[serde(default)]
        message: Option<String>,
    },
    /// `shutdown -c`: cancel the scheduled shutdown, if any.
    CancelShutdown {
        #[serde(default)]
        message: Option<String>,
    },
    IsSystemRunning,
    /// `all: false`: the loaded services and targets that are active, activating or failed;
    /// `all: true`: every loaded unit.
    List {
        all: bool,
    },
    Status {
        unit: String,
    },
    Start {
        unit: String,
    },
    Stop {
        unit: String,
    },
    Restart {
        unit: String,
    },
    /// Run a unit's `ExecReload=`.
    ReloadUnit {
        unit: String,
    },
    /// Re-read the unit files from disk (berthctl sends it after enable/disable).
    Reload,
    /// The last `lines` lines of `unit`; with `follow`, then every new one (see the module docs).
    Logs {
        unit: String,
        lines: usize,
        follow: bool,
    },
    /// Apply the cloud metadata `berth-metadata fetch` recorded as the first-boot provisioning
    /// document, once per instance (`berthctl provision-metadata`, run by
    /// `berth-metadata.service`). The reply's message is a one-line summary; `ok: false` when
    /// it failed.
    ProvisionMetadata,
}

/// What a shutdown ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Power {
    Reboot,
    Poweroff,
    Halt,
}

impl Power {
    /// The request that does it now.
    pub fn now(self) -> Request {
        match self {
            Power::Reboot => Request::Reboot,
            Power::Poweroff => Request::Poweroff,
            Power::Halt => Request::Halt,
        }
    }

    /// `reboot`, `poweroff`, `halt`.
    pub fn word(self) -> &'static str {
        match self {
            Power::Reboot => "reboot",
            Power::Poweroff => "poweroff",
            Power::Halt => "halt",
        }
    }
}

impl Request {
    /// How long a client waits for the reply: starting and stopping wait for the job (a
    /// `Type=notify` service may take its whole start timeout), the rest answer at once.
    pub fn reply_timeout(&self) -> Duration {
        match self {
            Request::Start { .. } | Request::Stop { .. } | Request::Restart { .. } | Request::ReloadUnit { .. } => {
                Duration::from_secs(600)
            }
            // Writes users' homes and files and syncs them: seconds on a slow disk.
            Request::ProvisionMetadata => Duration::from_secs(120),
            _ => Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// For `List` (every unit listed) and `Status` (the one unit).
    #[serde(default)]
    pub units: Vec<UnitStatus>,
    /// For `Logs` (and `Status`, if the server adds the unit's last lines).
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

    pub fn with_units(mut self, units: Vec<UnitStatus>) -> Reply {
        self.units = units;
        self
    }

    pub fn with_lines(mut self, lines: Vec<LogLine>) -> Reply {
        self.lines = lines;
        self
    }

    /// The reply as one JSON line (with its `\n`); never fails.
    pub fn to_line(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false,"message":"?"}"#.into());
        text.push('\n');
        text
    }
}

/// What `berthctl list` and `berthctl status` show about a unit (systemctl's words).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub name: String,
    pub description: String,
    /// `loaded`, `not-found`, `error`, `masked`.
    pub load: String,
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`, `reloading`.
    pub active: String,
    /// `running`, `exited`, `dead`, `start-pre`, `start-post`, `auto-restart`, `stop-sigterm`, …
    pub sub: String,
    #[serde(default)]
    pub main_pid: Option<i32>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub tasks: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    /// How the main process last ended: `status=1`, `signal=KILL`.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// When the unit last became active, CLOCK_REALTIME in µs.
    #[serde(default)]
    pub active_since_us: Option<u64>,
    /// The service's last sd_notify `STATUS=`.
    #[serde(default)]
    pub status_text: Option<String>,
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The unit file.
    #[serde(default)]
    pub fragment: Option<String>,
    /// `enabled`, `disabled`, `static`.
    #[serde(default)]
    pub enabled: Option<String>,
    /// Why the unit failed, or why it did not load.
    #[serde(default)]
    pub error: Option<String>,
}

/// One line of a unit's log (its output, or the manager's own line about it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub unit: String,
    /// CLOCK_REALTIME in µs.
    pub time_us: u64,
    #[serde(default)]
    pub pid: Option<i32>,
    pub text: String,
}

/// Sends `request` to PID 1 at [`SOCKET`]; see [`round_trip_at`].
pub fn round_trip(request: &Request) -> Result<(Reply, BufReader<UnixStream>), String> {
    round_trip_at(Path::new(SOCKET), request)
}

/// Sends `request` to the server at `socket` and reads its reply. Also returns the connection,
/// from which a `Logs { follow: true }` client reads the further lines (it has no read
/// timeout any more).
pub fn round_trip_at(socket: &Path, request: &Request) -> Result<(Reply, BufReader<UnixStream>), String> {
    let sock = socket.display();
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach berth-init at {sock}: {e} (is berth-init PID 1 here?)")
        }
        std::io::ErrorKind::PermissionDenied => format!("{sock}: {e} (berthctl needs root)"),
        _ => format!("connecting to {sock}: {e}"),
    })?;
    let _ = stream.set_read_timeout(Some(request.reply_timeout()));
    let mut line = serde_json::to_string(request).map_err(|e| format!("encoding the request: {e}"))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| format!("writing to {sock}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => return Err(format!("berth-init closed {sock} without a reply")),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(format!("no reply from berth-init on {sock} within {:?}", request.reply_timeout()));
        }
        Err(e) => return Err(format!("reading from {sock}: {e}")),
    }
    let reply = serde_json::from_str(answer.trim_end())
        .map_err(|e| format!("bad reply from berth-init on {sock}: {e}: {:?}", answer.trim_end()))?;
    let _ = reader.get_ref().set_read_timeout(None);
    Ok((reply, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn requests_in_json() {
        let start = Request::Start { unit: "x.service".into() };
        assert_eq!(serde_json::to_string(&start).unwrap(), r#"{"command":"start","unit":"x.service"}"#);
        assert_eq!(serde_json::to_string(&Request::IsSystemRunning).unwrap(), r#"{"command":"is-system-running"}"#);
        assert_eq!(serde_json::to_string(&Request::List { all: true }).unwrap(), r#"{"command":"list","all":true}"#);
        let logs = Request::Logs { unit: "a.service".into(), lines: 5, follow: true };
        assert_eq!(
            serde_json::to_string(&logs).unwrap(),
            r#"{"command":"logs","unit":"a.service","lines":5,"follow":true}"#
        );
        let schedule = Request::ScheduleShutdown { power: Power::Poweroff, after_secs: 300, message: None };
        assert_eq!(
            serde_json::to_string(&schedule).unwrap(),
            r#"{"command":"schedule-shutdown","power":"poweroff","after_secs":300,"message":null}"#
        );
        assert_eq!(serde_json::to_string(&Request::Halt).unwrap(), r#"{"command":"halt"}"#);
        assert_eq!(serde_json::to_string(&Request::ProvisionMetadata).unwrap(), r#"{"command":"provision-metadata"}"#);
        // What berthctl reboot and poweroff have always sent (berth-devd may send them too).
        assert_eq!(serde_json::from_str::<Request>(r#"{"command":"poweroff"}"#).unwrap(), Request::Poweroff);
        assert_eq!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).unwrap(), Request::Reboot);
        let all = [
            Request::Reboot,
            Request::Poweroff,
            Request::Halt,
            schedule,
            Request::ScheduleShutdown { power: Power::Halt, after_secs: 60, message: Some("bye".into()) },
            Request::CancelShutdown { message: None },
            Request::IsSystemRunning,
            Request::List { all: false },
            Request::Status { unit: "s.service".into() },
            start,
            Request::Stop { unit: "t.target".into() },
            Request::Restart { unit: "u.service".into() },
            Request::Reload,
            logs,
            Request::ProvisionMetadata,
        ];
        for r in all {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
        }
        assert!(serde_json::from_str::<Request>(r#"{"command":"start"}"#).is_err(), "start needs a unit");
        assert!(serde_json::from_str::<Request>(r#"{"command":"frob"}"#).is_err());
    }

    #[test]
    fn replies_round_trip_and_old_replies_still_parse() {
        let status = UnitStatus {
            name: "containerd.service".into(),
            description: "containerd container runtime".into(),
            load: "loaded".into(),
            active: "active".into(),
            sub: "running".into(),
            main_pid: Some(42),
            memory_bytes: Some(25 << 20),
            tasks: Some(9),
            restarts: 1,
            last_exit: Some("status=1".into()),
            active_since_us: Some(1_700_000_000_000_000),
            status_text: None,
            cgroup: Some("/system.slice/containerd.service".into()),
            fragment: Some("/lib/systemd/system/containerd.service".into()),
            enabled: Some("enabled".into()),
            error: None,
        };
        let line = LogLine { unit: "containerd.service".into(), time_us: 5, pid: Some(42), text: "hello".into() };
        let reply = Reply::ok("fine").with_units(vec![status]).with_lines(vec![line]);
        let text = reply.to_line();
        assert!(text.ends_with("}\n") && !text[..text.len() - 1].contains('\n'));
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        // What the first berth-init sent: no units, no lines.
        let old: Reply = serde_json::from_str(r#"{"ok":false,"message":"stopping"}"#).unwrap();
        assert_eq!(old, Reply::error("stopping"));
        // A server may leave optional fields out.
        let bare: UnitStatus = serde_json::from_str(
            r#"{"name":"a.target","description":"","load":"loaded","active":"active","sub":"active"}"#,
        )
        .unwrap();
        assert_eq!(bare.main_pid, None);
        assert_eq!(bare.restarts, 0);
    }

    #[test]
    fn round_trip_against_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let request: Request = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(request, Request::Logs { unit: "a.service".into(), lines: 1, follow: true });
            let old = LogLine { unit: "a.service".into(), time_us: 1, pid: None, text: "old".into() };
            (&stream).write_all(Reply::ok("").with_lines(vec![old]).to_line().as_bytes()).unwrap();
            let new = LogLine { unit: "a.service".into(), time_us: 2, pid: Some(7), text: "new".into() };
            let mut text = serde_json::to_string(&new).unwrap();
            text.push('\n');
            (&stream).write_all(text.as_bytes()).unwrap();
        });
        let request = Request::Logs { unit: "a.service".into(), lines: 1, follow: true };
        let (reply, mut rest) = round_trip_at(&path, &request).unwrap();
        assert!(reply.ok);
        assert_eq!(reply.lines[0].text, "old");
        let mut line = String::new();
        rest.read_line(&mut line).unwrap();
        let next: LogLine = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!((next.text.as_str(), next.pid), ("new", Some(7)));
        server.join().unwrap();
        line.clear();
        assert_eq!(rest.read_line(&mut line).unwrap(), 0, "the server went away");

        let err = round_trip_at(&dir.path().join("absent.sock"), &Request::Reload).unwrap_err();
        assert!(err.contains("cannot reach berth-init") && err.contains("absent.sock"), "{err}");
    }
}
