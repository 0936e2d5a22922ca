//! The middle process behind `Request::Spawn`: the real binary started as the agent starts it.

use std::process::Command;
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_berth-guest-agent");

#[test]
fn detach_prints_the_pid_returns_at_once_and_sends_output_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let started = Instant::now();
    let o = Command::new(AGENT)
        .args(["--detach", out.to_str().unwrap(), "sh", "-c", "echo hello; echo oops >&2; sleep 1; echo done"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(started.elapsed() < Duration::from_millis(900), "the middle process waited for the command");
    let pid: u32 = String::from_utf8(o.stdout).unwrap().trim().parse().unwrap();
    // The pid is the command's own (it sleeps for a second yet).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"sh\0-c\0echo hello"), "{:?}", String::from_utf8_lossy(&cmdline));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.ends_with("done\n") {
            assert_eq!(text, "hello\noops\ndone\n");
            break;
        }
        assert!(Instant::now() < deadline, "output so far: {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn detach_reports_what_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = Command::new(AGENT).args(["--detach", out.to_str().unwrap(), "/nonexistent/x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("running /nonexistent/x"), "{o:?}");
    let o = Command::new(AGENT).args(["--detach", "/nonexistent/dir/out", "true"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("creating /nonexistent/dir/out"), "{o:?}");
}
