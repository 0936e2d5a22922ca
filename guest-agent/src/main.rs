//! The guest side: serve requests from the virtio-serial port until killed.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_guest_agent::{Envelope, ExecResult, MAX_REQUEST_BYTES, Reply, Request, decode_base64, leading_id};

const USAGE: &str = "usage: berth-guest-agent DEVICE\n\
    Serves requests from the hypervisor on the virtio-serial port DEVICE (the port named \
    org.berth.agent.0; berth-init starts the agent when that port exists).\n";

/// The hidden first argument of the agent re-run as a short-lived middle process for
/// [`Request::Spawn`]: `berth-guest-agent --detach OUTPUT PROGRAM [ARG...]`.
const DETACH: &str = "--detach";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            print!("{USAGE}");
            return;
        }
        [flag, output, argv @ ..] if flag == DETACH && !argv.is_empty() => {
            std::process::exit(detach(output, argv));
        }
        [device] => device.clone(),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(&device) {
        eprintln!("berth-guest-agent: {e}");
        std::process::exit(1);
    }
}

fn serve(device: &str) -> Result<(), String> {
    let port = OpenOptions::new().read(true).write(true).open(device).map_err(|e| format!("opening {device}: {e}"))?;
    let mut out = port.try_clone().map_err(|e| format!("{device}: {e}"))?;
    let mut input = BufReader::new(port);
    let mut line = Vec::new();
    loop {
        line.clear();
        let reply = match read_line(&mut input, &mut line, MAX_REQUEST_BYTES) {
            // No host connected: the port reads as end-of-file until one is.
            Ok(Line::Eof) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(Line::Complete) => {
                let Ok(req) = serde_json::from_slice::<Envelope<Request>>(line.trim_ascii_end()) else {
                    // Noise from an earlier connection; the host matches replies by id.
                    continue;
                };
                Envelope { id: req.id, body: handle(req.body) }
            }
            Ok(Line::TooLong) => {
                let Some(id) = leading_id(&line) else { continue };
                let message = format!("request longer than {MAX_REQUEST_BYTES} bytes; skipped");
                Envelope { id, body: Reply::Error { message } }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("berth-guest-agent: reading {device}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let mut text = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
        text.push('\n');
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            eprintln!("berth-guest-agent: writing to {device}: {e}");
        }
    }
}

#[derive(Debug, PartialEq)]
enum Line {
    /// Nothing to read (no host connected).
    Eof,
    /// A line (with its newline, or cut short by end-of-file) is in the buffer.
    Complete,
    /// The line had more than `max` bytes: the buffer holds its first `max`, the rest was
    /// read and dropped.
    TooLong,
}

/// Reads one line into `line`, holding at most `max` bytes of it in memory.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    let n = input.by_ref().take(max as u64).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if line.last() == Some(&b'\n') || n < max {
        return Ok(Line::Complete);
    }
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(Line::TooLong);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                input.consume(i + 1);
                return Ok(Line::TooLong);
            }
            None => {
                let all = buf.len();
                input.consume(all);
            }
        }
    }
}

fn handle(req: Request) -> Reply {
    match req {
        Request::Ping => Reply::Pong,
        Request::Exec { argv } => exec(&argv),
        Request::Read { path } => match std::fs::read(&path) {
            Ok(b) => Reply::Data { data: String::from_utf8_lossy(&b).into_owned() },
            Err(e) => Reply::Error { message: format!("reading {path}: {e}") },
        },
        Request::Write { path, data } => match write(&path, data.as_bytes(), false) {
            Ok(()) => Reply::Written,
            Err(e) => Reply::Error { message: format!("writing {path}: {e}") },
        },
        Request::WriteBase64 { path, data, append } => match decode_base64(&data) {
            Ok(bytes) => match write(&path, &bytes, append) {
                Ok(()) => Reply::Written,
                Err(e) => Reply::Error { message: format!("writing {path}: {e}") },
            },
            Err(e) => Reply::Error { message: format!("writing {path}: {e}") },
        },
        Request::Spawn { argv, output } => spawn(&argv, &output),
    }
}

/// Starts `argv` through a middle process (this binary with [`DETACH`]) that exits at once, so
/// the command is PID 1's to reap and the agent, which only waits while serving a request,
/// leaves no zombie behind.
fn spawn(argv: &[String], output: &str) -> Reply {
    let what = format!("spawning {}", argv.join(" "));
    if argv.is_empty() {
        return Reply::Error { message: "spawn: empty argv".into() };
    }
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return Reply::Error { message: format!("{what}: finding the agent's own binary: {e}") },
    };
    let out = Command::new(&me).arg(DETACH).arg(output).args(argv).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim().parse() {
            Ok(pid) => Reply::Spawned { pid },
            Err(_) => Reply::Error { message: format!("{what}: no pid from {}: {:?}", me.display(), o) },
        },
        Ok(o) => Reply::Error { message: format!("{what}: {}", String::from_utf8_lossy(&o.stderr).trim()) },
        Err(e) => Reply::Error { message: format!("{what}: running {}: {e}", me.display()) },
    }
}

/// The middle process of [`spawn`]: starts the command with its output in `output`, prints
/// its pid and exits without waiting. Returns the exit code.
fn detach(output: &str, argv: &[String]) -> i32 {
    let file = match File::create(output) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("creating {output}: {e}");
            return 1;
        }
    };
    let err = match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{output}: {e}");
            return 1;
        }
    };
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        // Its own process group: nothing aimed at the agent's group reaches it.
        .process_group(0)
        .spawn();
    match child {
        Ok(c) => {
            println!("{}", c.id());
            0
        }
        Err(e) => {
            eprintln!("running {}: {e}", argv[0]);
            1
        }
    }
}

fn exec(argv: &[String]) -> Reply {
    let Some((program, args)) = argv.split_first() else {
        return Reply::Error { message: "exec: empty argv".into() };
    };
    let out = Command::new(program).args(args).env("PATH", PATH).stdin(Stdio::null()).output();
    match out {
        Ok(o) => Reply::Exited(ExecResult {
            status: o.status.code(),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }),
        Err(e) => Reply::Error { message: format!("running {program}: {e}") },
    }
}

fn write(path: &str, data: &[u8], append: bool) -> std::io::Result<()> {
    let mut f = if append { OpenOptions::new().append(true).open(path)? } else { File::create(path)? };
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_cut_at_the_limit_and_the_rest_skipped() {
        let long = format!("{{\"id\":9,\"op\":\"write\",\"data\":\"{}\"}}\n", "x".repeat(100));
        let input = format!("{{\"id\":1}}\n{long}{{\"id\":2}}\nno newline");
        // A tiny buffer: the skipping loop sees the long line in pieces.
        let mut r = BufReader::with_capacity(8, input.as_bytes());
        let mut line = Vec::new();
        let mut read = |want: Line, text: &str| {
            line.clear();
            assert_eq!(read_line(&mut r, &mut line, 64).unwrap(), want);
            assert_eq!(String::from_utf8_lossy(&line), text);
        };
        read(Line::Complete, "{\"id\":1}\n");
        read(Line::TooLong, &long[..64]);
        read(Line::Complete, "{\"id\":2}\n");
        read(Line::Complete, "no newline");
        read(Line::Eof, "");
        assert_eq!(leading_id(long.as_bytes()), Some(9));
    }

    #[test]
    fn base64_writes_create_then_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f").to_str().unwrap().to_string();
        let bytes: Vec<u8> = (0..=255).collect();
        for req in Request::write_base64(&path, &bytes) {
            assert_eq!(handle(req), Reply::Written);
        }
        for req in Request::write_base64(&path, b"\0tail") {
            let Request::WriteBase64 { path, data, .. } = req else { unreachable!() };
            assert_eq!(handle(Request::WriteBase64 { path, data, append: true }), Reply::Written);
        }
        assert_eq!(std::fs::read(&path).unwrap(), [&bytes[..], b"\0tail"].concat());
        let bad = handle(Request::WriteBase64 { path: path.clone(), data: "%%".into(), append: false });
        assert!(matches!(&bad, Reply::Error { message } if message.contains("bad base64")), "{bad:?}");
        let missing = format!("{}/nope/f", dir.path().display());
        let r = handle(Request::WriteBase64 { path: missing, data: "aGk=".into(), append: true });
        assert!(matches!(&r, Reply::Error { message } if message.contains("os error 2")), "{r:?}");
    }
}
