//! What the upload tests share: the local emulators, started on 127.0.0.1 (a free port each) and
//! stopped when dropped, and the strict in-tree fakes for what no emulator covers.
//!
//! Emulators come from `scripts/setup-emulators` (target/emulators, or `$BERTH_EMULATORS`).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
