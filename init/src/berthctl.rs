//! `berthctl`: asks PID 1 (over [`control::SOCKET`]) to reboot, power off, or say how it is.
//! The same binary as berth-init, started under the name `berthctl`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::control::{self, Reply, Request};

const USAGE: &str = "\
berthctl: control Berth's init (berth-init, PID 1)

usage: berthctl COMMAND

commands:
  reboot              stop everything in order, unmount, and restart the machine
  poweroff            the same, then switch the machine off
  is-system-running   print the system state (running, starting, stopping); exit 0 when running

options:
  -h, --help          this text
  -V, --version       berthctl's version
";

/// Runs `berthctl` with `args` (without the program name); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let request = match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            crate::log::out(USAGE);
            return 0;
        }
        Some("-V" | "--version") => {
            crate::log::out(&format!("berthctl {}\n", crate::VERSION));
            return 0;
        }
        Some("reboot") => Request::Reboot,
        Some("poweroff") => Request::Poweroff,
        Some("is-system-running") => Request::IsSystemRunning,
        Some(other) => {
            crate::log::err(&format!("berthctl: unknown command `{other}`\n\n{USAGE}"));
            return 2;
        }
        None => {
            crate::log::err(USAGE);
            return 2;
        }
    };
    if args.len() > 1 {
        crate::log::err(&format!("berthctl: `{}` takes no arguments (got `{}`)\n", args[0], args[1..].join(" ")));
        return 2;
    }
    match send(&request) {
        Ok(reply) if reply.ok => {
            crate::log::out(&format!("{}\n", reply.message));
            0
        }
        Ok(reply) => {
            crate::log::err(&format!("berthctl: {}\n", reply.message));
            1
        }
        Err(e) => {
            crate::log::err(&format!("berthctl: {e}\n"));
            1
        }
    }
}

fn send(request: &Request) -> Result<Reply, String> {
    let sock = control::SOCKET;
    let stream = UnixStream::connect(sock).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("cannot reach berth-init at {sock}: {e} (is berth-init PID 1 here?)")
        }
        std::io::ErrorKind::PermissionDenied => format!("{sock}: {e} (berthctl needs root)"),
        _ => format!("connecting to {sock}: {e}"),
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| format!("writing to {sock}: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|e| format!("reading from {sock}: {e}"))?;
    serde_json::from_str(answer.trim_end()).map_err(|e| format!("bad reply from berth-init on {sock}: {e}"))
}
