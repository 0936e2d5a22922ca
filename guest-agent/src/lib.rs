//! `berth-guest-agent`: the hypervisor's way into a running Berth guest, like qemu-guest-agent.
//!
//! The guest side reads requests from a virtio-serial port named [`PORT_NAME`] (which only the
//! hypervisor host can reach) and answers each with one reply. The wire format is one JSON object
//! per line in both directions ([`Request`] and [`Reply`] inside an [`Envelope`]); this module
//! is that contract, used by the agent and by the host side (the QEMU test harness).
//! Minimal images carry no shell, so the agent reads and writes files itself besides running
//! commands. Binary files travel base64-encoded ([`Request::WriteBase64`]), in chunks that keep
//! every request line under [`MAX_REQUEST_BYTES`].

use serde::{Deserialize, Serialize};

/// The virtio-serial port name the agent listens on (`-device virtserialport,name=…`).
pub const PORT_NAME: &str = "org.berth.agent.0";

/// Where images install the agent.
pub const INSTALL_PATH: &str = "/usr/libexec/berth/guest-agent";

/// The longest request line the agent accepts, newline included. A longer one is skipped
/// without being held in memory and answered with [`Reply::Error`].
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The most file bytes a host puts in one [`Request::WriteBase64`]: 4 MiB encode to 5⅓ MiB,
/// which leaves room for the path and the envelope under [`MAX_REQUEST_BYTES`].
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// How long [`Request::Exec`] lets a command run when the request names no limit: then the
/// command (its whole process group) is killed and the reply is an error, so one hung command
/// cannot hold the agent.
pub const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 600;

/// The most bytes the agent holds of a command's stdout, of its stderr, or of a file it reads:
/// past it the command is killed, or the read refused, with an error that says so.
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

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
    /// Run `argv` (no shell; `PATH` is searched) and wait for it, at most `timeout_seconds`
    /// [default: [`DEFAULT_EXEC_TIMEOUT_SECS`]]; stdout and stderr are each capped at
    /// [`MAX_OUTPUT_BYTES`].
    Exec {
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
    },
    /// A file's contents (lossy UTF-8), at most [`MAX_OUTPUT_BYTES`].
    Read { path: String },
    /// Create or replace a file (written in place, then synced).
    Write { path: String, data: String },
    /// Create or replace a file with the base64 (RFC 4648, padded) `data`, or with `append`
    /// add to its end: a big file is sent as several requests of at most [`WRITE_CHUNK_BYTES`].
    WriteBase64 {
        path: String,
        data: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        append: bool,
    },
    /// Start `argv` (no shell; `PATH` is searched) and answer at once with its pid
    /// ([`Reply::Spawned`]), its stdout and stderr going to the file `output` (created or
    /// truncated). The agent does not stay its parent: PID 1 inherits and reaps it.
    Spawn { argv: Vec<String>, output: String },
}

impl Request {
    /// The requests that write `bytes` to `path` in chunks of at most [`WRITE_CHUNK_BYTES`]:
    /// the first creates or truncates the file, the others append (an empty `bytes` gives one
    /// request that leaves an empty file).
    pub fn write_base64(path: &str, bytes: &[u8]) -> Vec<Request> {
        use base64::Engine;
        let mut chunks: Vec<&[u8]> = bytes.chunks(WRITE_CHUNK_BYTES).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        (chunks.iter().enumerate())
            .map(|(i, c)| Request::WriteBase64 {
                path: path.to_string(),
                data: base64::engine::general_purpose::STANDARD.encode(c),
                append: i > 0,
            })
            .collect()
    }
}

impl Request {
    /// The request in a few words, for logs: the operation with its argv or path (never the
    /// data written).
    pub fn summary(&self) -> String {
        match self {
            Request::Ping => "ping".into(),
            Request::Exec { argv, timeout_seconds: None } => format!("exec {argv:?}"),
            Request::Exec { argv, timeout_seconds: Some(t) } => format!("exec {argv:?} (time limit {t} s)"),
            Request::Read { path } => format!("read {path}"),
            Request::Write { path, data } => format!("write {path} ({} bytes)", data.len()),
            Request::WriteBase64 { path, data, append } => {
                let verb = if *append { "append to" } else { "write" };
                format!("{verb} {path} ({} bytes of base64)", data.len())
            }
            Request::Spawn { argv, output } => format!("spawn {argv:?} > {output}"),
        }
    }
}

/// Decodes a [`Request::WriteBase64`] payload.
pub fn decode_base64(data: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("bad base64: {e}"))
}

/// The `id` at the start of a request line (`{"id":N,…`, as [`Envelope`] serializes), for
/// answering a line too long to parse.
pub fn leading_id(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"id":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
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
    /// [`Request::Spawn`] started this process.
    Spawned {
        pid: u32,
    },
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

/// `/dev/vportNpM` of the port named [`PORT_NAME`]. Berth has no udev, so there are no
/// `/dev/virtio-ports/` links: the names are in sysfs.
pub fn find_port() -> Option<std::path::PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.filter_map(|e| e.ok()).find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| std::path::Path::new("/dev").join(e.file_name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_one_flat_object() {
        let argv = vec!["berthctl".into(), "reboot".into()];
        let r = Envelope { id: 7, body: Request::Exec { argv: argv.clone(), timeout_seconds: None } };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"id":7,"op":"exec","argv":["berthctl","reboot"]}"#);
        assert_eq!(serde_json::from_str::<Envelope<Request>>(&line).unwrap(), r);
        let r = Envelope { id: 8, body: Request::Exec { argv, timeout_seconds: Some(5) } };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"id":8,"op":"exec","argv":["berthctl","reboot"],"timeout_seconds":5}"#);
        assert_eq!(serde_json::from_str::<Envelope<Request>>(&line).unwrap(), r);
        let e = Envelope { id: 7, body: Reply::Error { message: "x".into() } };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"id":7,"reply":"error","message":"x"}"#);
    }

    #[test]
    fn binary_writes_are_chunked_base64_that_round_trips() {
        let bytes: Vec<u8> = (0..WRITE_CHUNK_BYTES * 2 + 3).map(|i| (i * 7 % 256) as u8).collect();
        let reqs = Request::write_base64("/var/tmp/x", &bytes);
        assert_eq!(reqs.len(), 3);
        let mut back = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let line = serde_json::to_string(&Envelope { id: u64::MAX, body: r.clone() }).unwrap();
            assert!(line.len() < MAX_REQUEST_BYTES, "chunk {i}: {} bytes", line.len());
            assert_eq!(leading_id(line.as_bytes()), Some(u64::MAX));
            let Envelope { body: Request::WriteBase64 { path, data, append }, .. } =
                serde_json::from_str(&line).unwrap()
            else {
                panic!("{line:.80}")
            };
            assert_eq!((path.as_str(), append), ("/var/tmp/x", i > 0));
            back.extend(decode_base64(&data).unwrap());
        }
        assert_eq!(back, bytes);
        assert_eq!(
            Request::write_base64("/e", &[]),
            vec![Request::WriteBase64 { path: "/e".into(), data: String::new(), append: false }]
        );
        // `append` is left out when false, and optional when read.
        let first = serde_json::to_string(&Request::write_base64("/p", b"hi")[0]).unwrap();
        assert_eq!(first, r#"{"op":"write-base64","path":"/p","data":"aGk="}"#);
        assert!(decode_base64("not base64!").unwrap_err().contains("bad base64"));
    }

    #[test]
    fn spawn_and_its_reply() {
        let r =
            Envelope { id: 1, body: Request::Spawn { argv: vec!["sleep".into(), "9".into()], output: "/o".into() } };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"id":1,"op":"spawn","argv":["sleep","9"],"output":"/o"}"#);
        let e = Envelope { id: 1, body: Reply::Spawned { pid: 42 } };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"id":1,"reply":"spawned","pid":42}"#);
        assert_eq!(leading_id(br#"{"op":"ping"}"#), None);
    }
}
