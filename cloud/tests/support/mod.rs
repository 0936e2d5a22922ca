//! What the upload tests share: the local emulators, started on 127.0.0.1 (a free port each) and
//! stopped when dropped, and the strict in-tree fakes for what no emulator covers.
//!
//! The fakes include this file as `crate::support` for what they share (their state locked,
//! forms decoded); every test crate that includes a fake includes this file too.
//!
//! Emulators come from `scripts/setup-emulators` (target/emulators, or `$BERTH_EMULATORS`).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where `scripts/setup-emulators` installed the emulators.
pub fn emulators_dir() -> PathBuf {
    match std::env::var_os("BERTH_EMULATORS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/emulators"),
    }
}

/// The emulator program `rel` (`venv/bin/moto_server`), or a panic saying how to install it.
pub fn emulator_program(rel: &str) -> PathBuf {
    let p = emulators_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/setup-emulators (scripts/test does)", p.display());
    p
}

/// A free port on 127.0.0.1 (bound, then freed for the emulator to take).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// moto's server (EC2 and the EBS direct APIs), with `env` (`NAME=VALUE`, such as
/// `MOTO_ENABLE_RECORDING=True`) in its environment.
pub fn moto(env: &[&str]) -> Emulator {
    let program = emulator_program("venv/bin/moto_server");
    let program = program.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = env.iter().copied().chain([program, "-H", "127.0.0.1", "-p", "{port}"]).collect();
    Emulator::start("moto", std::path::Path::new("/usr/bin/env"), &args)
}

/// Azurite's blob service, in memory.
pub fn azurite() -> Emulator {
    let program = emulator_program("node/node_modules/.bin/azurite-blob");
    let args = [
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "{port}",
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
    ];
    Emulator::start("azurite", &program, &args)
}

/// gcp-storage-emulator, in memory, with the bucket `bucket` made.
pub fn gcs_emulator(bucket: &str) -> Emulator {
    let program = emulator_program("venv/bin/gcp-storage-emulator");
    let emu = Emulator::start(
        "gcp-storage-emulator",
        &program,
        &["start", "--host", "127.0.0.1", "--port", "{port}", "--in-memory"],
    );
    let body = format!(r#"{{"name":"{bucket}"}}"#);
    let (status, _) =
        berth_cloud::api::client().post_json(&format!("{}/storage/v1/b?project=p", emu.url), &[], &body).unwrap();
    assert_eq!(status, 200, "bucket {bucket} created: {}", emu.log_text());
    emu
}

/// A running emulator process; killed when dropped. Its output goes to a log file under the
/// test's temporary directory, printed if it never starts.
pub struct Emulator {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts `program args…` (`{port}` in an argument is replaced by the chosen port) in a
    /// fresh temporary directory and waits until 127.0.0.1:PORT accepts connections.
    pub fn start(name: &str, program: &std::path::Path, args: &[&str]) -> Emulator {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("emulator log");
        let err = out.try_clone().expect("emulator log");
        let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port.to_string())).collect();
        let child = Command::new(program)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        let mut emulator = Emulator { child, url: format!("http://127.0.0.1:{port}"), port, log, _dir: dir };
        emulator.wait_ready(name, Duration::from_secs(60));
        emulator
    }

    fn wait_ready(&mut self, name: &str, within: Duration) {
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{name} exited ({status}) before listening:\n{}", self.log_text());
            }
            if start.elapsed() > within {
                panic!("{name} did not listen on 127.0.0.1:{} within {within:?}:\n{}", self.port, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the emulator printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake's state, also after a handler panicked while holding it (the test reports that panic,
/// not a poisoned lock).
pub fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// `s` with its `%XX` escapes decoded and `+` as a space (form and query encoding); a `%` not
/// followed by two hex digits stays as it is, bytes that are not UTF-8 are replaced.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value&…` pairs of a form body or a query, decoded.
pub fn form<C: FromIterator<(String, String)>>(s: &str) -> C {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}
