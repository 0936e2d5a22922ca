//! The guest side: serve requests from the virtio-serial port until killed.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_guest_agent::{
    DEFAULT_EXEC_TIMEOUT_SECS, Envelope, ExecResult, MAX_OUTPUT_BYTES, MAX_REQUEST_BYTES, Reply, Request,
    decode_base64, leading_id,
};

const USAGE: &str = "usage: berth-guest-agent [DEVICE]\n\
    \x20      berth-guest-agent --find-port\n\
    Serves requests from the hypervisor on the virtio-serial port DEVICE (by default the port named \
    org.berth.agent.0, looked up in sysfs). --find-port prints that port and exits 1 when there is none \
    (berth-guest-agent.service's ExecCondition=, in test images only).\n";

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
        [flag] if flag == "--find-port" => match berth_guest_agent::find_port() {
            Some(port) => {
                println!("{}", port.display());
                return;
            }
            None => {
                eprintln!("berth-guest-agent: no virtio-serial port named {}", berth_guest_agent::PORT_NAME);
                std::process::exit(1);
            }
        },
        [] => match berth_guest_agent::find_port() {
            Some(port) => port.display().to_string(),
            None => {
                eprintln!("berth-guest-agent: no virtio-serial port named {}", berth_guest_agent::PORT_NAME);
                std::process::exit(1);
            }
        },
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

/// What the agent allows a request: the exec time limit when the request gives none, and the
/// most bytes held of a command's output or of a file read.
#[derive(Debug, Clone, Copy)]
struct Limits {
    exec_timeout: Duration,
    max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { exec_timeout: Duration::from_secs(DEFAULT_EXEC_TIMEOUT_SECS), max_output: MAX_OUTPUT_BYTES }
    }
}

fn serve(device: &str) -> Result<(), String> {
    let port = OpenOptions::new().read(true).write(true).open(device).map_err(|e| format!("opening {device}: {e}"))?;
    let out = port.try_clone().map_err(|e| format!("{device}: {e}"))?;
    eprintln!(
        "berth-guest-agent: serving {device} (exec time limit {DEFAULT_EXEC_TIMEOUT_SECS} s, output and reads up to {} MiB)",
        MAX_OUTPUT_BYTES >> 20
    );
    serve_on(BufReader::new(port), out, &mut std::io::stderr(), device, Limits::default(), false)
}

/// Answers the requests read from `input` on `out`, logging each (and its outcome) to `log`
/// (stderr: init hands the agent the console). With `stop_at_eof` it returns at end of input;
/// otherwise end of input means no host is connected, and it waits for one.
fn serve_on(
    mut input: impl BufRead,
    mut out: impl Write,
    log: &mut impl Write,
    device: &str,
    limits: Limits,
    stop_at_eof: bool,
) -> Result<(), String> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let reply = match read_line(&mut input, &mut line, MAX_REQUEST_BYTES) {
            // No host connected: the port reads as end-of-file until one is.
            Ok(Line::Eof) if stop_at_eof => return Ok(()),
            Ok(Line::Eof) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(Line::Complete) => {
                let Ok(req) = serde_json::from_slice::<Envelope<Request>>(line.trim_ascii_end()) else {
                    // Noise from an earlier connection; the host matches replies by id.
                    continue;
                };
                let _ = writeln!(log, "berth-guest-agent: #{} {}", req.id, req.body.summary());
                let started = Instant::now();
                let body = handle_with(req.body, limits);
                let _ = writeln!(
                    log,
                    "berth-guest-agent: #{} {} ({:.1} s)",
                    req.id,
                    outcome(&body),
                    started.elapsed().as_secs_f64()
                );
                Envelope { id: req.id, body }
            }
            Ok(Line::TooLong) => {
                let Some(id) = leading_id(&line) else { continue };
                let message = format!("request longer than {MAX_REQUEST_BYTES} bytes; skipped");
                let _ = writeln!(log, "berth-guest-agent: #{id} {message}");
                Envelope { id, body: Reply::Error { message } }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = writeln!(log, "berth-guest-agent: reading {device}: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let mut text = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
        text.push('\n');
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            let _ = writeln!(log, "berth-guest-agent: writing to {device}: {e}");
        }
    }
}

/// A reply in a few words, for the log.
fn outcome(reply: &Reply) -> String {
    match reply {
        Reply::Pong => "pong".into(),
        Reply::Exited(r) => match (r.status, r.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended".into(),
        },
        Reply::Data { data } => format!("{} bytes read", data.len()),
        Reply::Written => "written".into(),
        Reply::Spawned { pid } => format!("started as pid {pid}"),
        Reply::Error { message } => format!("error: {message}"),
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

#[cfg(test)]
fn handle(req: Request) -> Reply {
    handle_with(req, Limits::default())
}

fn handle_with(req: Request, limits: Limits) -> Reply {
    match req {
        Request::Ping => Reply::Pong,
        Request::Exec { argv, timeout_seconds } => {
            let timeout = timeout_seconds.map_or(limits.exec_timeout, Duration::from_secs);
            exec(&argv, timeout, limits.max_output)
        }
        Request::Read { path } => match read(&path, limits.max_output) {
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

/// At most `max` bytes of the file (a longer one, or an endless one like /dev/zero, is an error).
fn read(path: &str, max: usize) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?.take(max as u64 + 1).read_to_end(&mut data)?;
    if data.len() > max {
        return Err(std::io::Error::other(format!(
            "longer than {max} bytes, the most the agent reads (read it in parts, e.g. with exec dd)"
        )));
    }
    Ok(data)
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

/// What a reader thread of [`exec`] hands back: which stream, its bytes, whether it ran over.
type Captured = (usize, Vec<u8>, bool);

/// Reads `from` until its end, keeping at most `max` bytes; stops at the first byte past it.
fn capture(mut from: impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    match from.by_ref().take(max as u64 + 1).read_to_end(&mut data) {
        Ok(_) if data.len() > max => {
            data.truncate(max);
            (data, true)
        }
        _ => (data, false),
    }
}

/// Runs `argv` in a process group of its own, capturing stdout and stderr up to `max` bytes
/// each, for at most `timeout`: past either limit the whole group is killed and the reply is
/// an error that says which limit.
fn exec(argv: &[String], timeout: Duration, max: usize) -> Reply {
    let Some((program, args)) = argv.split_first() else {
        return Reply::Error { message: "exec: empty argv".into() };
    };
    let child = Command::new(program)
        .args(args)
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Reply::Error { message: format!("running {program}: {e}") },
    };
    let (tx, rx) = mpsc::channel::<Captured>();
    let streams: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for (i, stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        if let Some(stream) = stream {
            std::thread::spawn(move || {
                let (data, over) = capture(stream, max);
                let _ = tx.send((i, data, over));
            });
        }
    }
    drop(tx);
    let kill_group = |child: &std::process::Child| {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    let deadline = Instant::now() + timeout;
    let mut captured: [Option<Vec<u8>>; 2] = [None, None];
    let mut status = None;
    let mut problem: Option<String> = None;
    // After a kill, how long the pipes may take to close (a process that left the group may
    // hold them): the reply does not wait on it longer.
    let mut give_up: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok((i, data, over)) => {
                if over && problem.is_none() {
                    let name = ["stdout", "stderr"][i];
                    problem = Some(format!(
                        "its {name} passed {max} bytes, the most the agent keeps; the command was killed"
                    ));
                    kill_group(&child);
                    give_up = Some(Instant::now() + Duration::from_secs(2));
                }
                captured[i] = Some(data);
            }
            Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if status.is_none() {
            match child.try_wait() {
                Ok(s) => status = s,
                Err(e) => return Reply::Error { message: format!("waiting for {program}: {e}") },
            }
        }
        let all_read = captured.iter().all(Option::is_some);
        if status.is_some() && all_read {
            break;
        }
        if problem.is_none() && Instant::now() >= deadline {
            problem = Some(format!(
                "still running after {} s, the time limit (timeout_seconds); the command was killed",
                timeout.as_secs_f64()
            ));
            kill_group(&child);
            give_up = Some(Instant::now() + Duration::from_secs(2));
        }
        if give_up.is_some_and(|t| Instant::now() >= t) {
            if status.is_none() {
                status = child.try_wait().ok().flatten();
            }
            break;
        }
    }
    if let Some(p) = problem {
        let stderr = captured[1].as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        let tail: String = stderr.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        let tail =
            if tail.trim().is_empty() { String::new() } else { format!(" (stderr ends: {:?})", tail.trim_end()) };
        return Reply::Error { message: format!("exec {argv:?}: {p}{tail}") };
    }
    let Some(status) = status else {
        return Reply::Error { message: format!("exec {argv:?}: no exit status") };
    };
    let [stdout, stderr] = captured.map(|c| String::from_utf8_lossy(&c.unwrap_or_default()).into_owned());
    Reply::Exited(ExecResult { status: status.code(), signal: status.signal(), stdout, stderr })
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

    /// H4: every request is logged with its operation and argv or path; a hung command is
    /// killed at its time limit (with what it started) and the agent answers the next request;
    /// output and reads past the cap are errors that say so.
    #[test]
    fn h4_requests_are_logged_exec_is_time_limited_and_output_capped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 5000]).unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello").unwrap();
        let sh = |script: String, timeout: Option<u64>| Request::Exec {
            argv: vec!["sh".into(), "-c".into(), script],
            timeout_seconds: timeout,
        };
        let requests = [
            // A command that hangs, with a child of its own that would hold the pipes open.
            sh(format!("sleep 60 & echo $! > {}; wait", pidfile.display()), Some(1)),
            Request::Ping,
            sh("head -c 5000 /dev/zero".into(), None),
            sh("head -c 5000 /dev/zero >&2".into(), None),
            sh("echo fine; echo warn >&2; exit 3".into(), None),
            Request::Read { path: big.display().to_string() },
            Request::Read { path: "/dev/zero".into() },
            Request::Read { path: small.display().to_string() },
            Request::Write { path: dir.path().join("w").display().to_string(), data: "secret".into() },
        ];
        let input: String = requests
            .iter()
            .enumerate()
            .map(|(i, r)| serde_json::to_string(&Envelope { id: i as u64, body: r.clone() }).unwrap() + "\n")
            .collect();
        let limits = Limits { exec_timeout: Duration::from_secs(30), max_output: 4096 };
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let started = Instant::now();
        serve_on(input.as_bytes(), &mut out, &mut log, "test", limits, true).unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        let replies: Vec<Envelope<Reply>> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(replies.len(), requests.len());
        let error = |i: usize| match &replies[i].body {
            Reply::Error { message } => message.clone(),
            other => panic!("request {i}: {other:?}"),
        };
        let e = error(0);
        assert!(e.contains("still running after 1 s, the time limit") && e.contains("killed"), "{e}");
        // The whole process group went: the background sleep too.
        let bg: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z "), "background child alive: {state}");
        assert_eq!(replies[1].body, Reply::Pong);
        assert!(error(2).contains("its stdout passed 4096 bytes, the most the agent keeps"), "{}", error(2));
        assert!(error(3).contains("its stderr passed 4096 bytes"), "{}", error(3));
        let Reply::Exited(r) = &replies[4].body else { panic!("{:?}", replies[4]) };
        assert_eq!((r.status, r.stdout.as_str(), r.stderr.as_str()), (Some(3), "fine\n", "warn\n"));
        assert!(error(5).contains("longer than 4096 bytes, the most the agent reads"), "{}", error(5));
        assert!(error(6).contains("reading /dev/zero: longer than 4096 bytes"), "{}", error(6));
        assert_eq!(replies[7].body, Reply::Data { data: "hello".into() });

        let log = String::from_utf8(log).unwrap();
        for want in [
            "#0 exec [\"sh\", \"-c\", \"sleep 60 &",
            "(time limit 1 s)",
            "#0 error: exec",
            "#1 ping",
            "#4 exited with 3",
            &format!("#5 read {}", big.display()),
            "#6 read /dev/zero",
            "#7 5 bytes read",
            "#8 write ",
        ] {
            assert!(log.contains(want), "no {want:?} in the log:\n{log}");
        }
        assert!(!log.contains("secret"), "the log holds written data:\n{log}");
        assert_eq!(DEFAULT_EXEC_TIMEOUT_SECS, 600);
        assert_eq!(MAX_OUTPUT_BYTES, 64 << 20);
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
