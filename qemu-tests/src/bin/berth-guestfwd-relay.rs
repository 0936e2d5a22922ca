//! `berth-guestfwd-relay PORT`: joins its stdin and stdout to a TCP connection to
//! 127.0.0.1:PORT. QEMU's `guestfwd=…-cmd:` starts one per guest connection, so a guest can open
//! as many connections as it likes to a test's server on the host's loopback (a `guestfwd` to a
//! TCP target carries one connection only). When either side closes, the other is told, so an
//! HTTP client in the guest sees the server's close (or a dropped connection) at once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(port) = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: berth-guestfwd-relay PORT");
        return ExitCode::from(2);
    };
    let stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-guestfwd-relay: connecting to 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(mut upstream) = stream.try_clone() else { return ExitCode::FAILURE };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut down = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    // Exiting closes stdout, which QEMU turns into the guest connection's close.
    ExitCode::SUCCESS
}
