//! The guest side: serve requests from the virtio-serial port until killed.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_guest_agent::{Envelope, ExecResult, Reply, Request};

const USAGE: &str = "usage: berth-guest-agent DEVICE\n\
    Serves requests from the hypervisor on the virtio-serial port DEVICE (the port named \
    org.berth.agent.0; berth-init starts the agent when that port exists).\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            print!("{USAGE}");
            return;
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
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            // No host connected: the port reads as end-of-file until one is.
            Ok(0) => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => {
                let Ok(req) = serde_json::from_str::<Envelope<Request>>(line.trim_end()) else {
                    // Noise from an earlier connection; the host matches replies by id.
                    continue;
                };
                let reply = Envelope { id: req.id, body: handle(req.body) };
                let mut text = serde_json::to_string(&reply).map_err(|e| e.to_string())?;
                text.push('\n');
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    eprintln!("berth-guest-agent: writing to {device}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("berth-guest-agent: reading {device}: {e}");
                std::thread::sleep(Duration::from_millis(500));
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
        Request::Write { path, data } => match write(&path, data.as_bytes()) {
            Ok(()) => Reply::Written,
            Err(e) => Reply::Error { message: format!("writing {path}: {e}") },
        },
    }
}

fn exec(argv: &[String]) -> Reply {
    let Some((program, args)) = argv.split_first() else {
        return Reply::Error { message: "exec: empty argv".into() };
    };
    let out = Command::new(program)
        .args(args)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output();
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

fn write(path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}
