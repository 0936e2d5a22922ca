//! `berthctl`: Berth's systemctl. It asks PID 1 (over [`control::SOCKET`]) to list, start,
//! stop and show units, to stream their logs, to reboot or power off; it enables and disables
//! units itself on the filesystem (the `.wants/` links under `/etc/systemd/system`, as
//! systemctl does, with [`berth_units::install`]), then asks PID 1 to reload; and it checks unit
//! files offline (`verify`). The same binary as berth-init, started under the name `berthctl`.
//!
//! One file per verb family: [`args`] (the command line), [`status`] (list, status), [`logs`],
//! [`enable`] (enable, disable, is-enabled), [`verify`]; [`power`] is `reboot`, `poweroff`,
//! `halt` and `shutdown`, the same binary under those names. From the server side it uses only
//! the wire protocol, [`control`].

mod args;
mod enable;
mod logs;
pub mod power;
mod status;
mod verify;

use std::path::Path;

use crate::control::{self, Reply, Request};
use args::{Command, USAGE, Verb, parse};

/// Runs `berthctl` with `args` (without the program name); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let command = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            crate::sys::log::err(&format!("berthctl: {e}\n(berthctl --help lists the commands)\n"));
            return 2;
        }
    };
    match command {
        Command::Help => {
            crate::sys::log::out(USAGE);
            0
        }
        Command::Version => {
            crate::sys::log::out(&format!("berthctl {}\n", crate::VERSION));
            0
        }
        Command::Verify(args) => verify::verify(&args),
        Command::List { all, json } => status::list(all, json),
        Command::Status { units, json } => status::status(&units, json),
        Command::SystemStatus { json } => status::system(json),
        Command::Job { verb, units } => jobs(verb, &units),
        Command::Install { enable, units, now, root } => enable::install(enable, &units, now, root.as_deref()),
        Command::IsEnabled { units, root } => enable::is_enabled(&units, root.as_deref()),
        Command::Logs { unit, lines, follow, json } => logs::logs(&unit, lines, follow, json),
        Command::Reboot => simple(&Request::Reboot),
        Command::Poweroff => simple(&Request::Poweroff),
        Command::Halt => simple(&Request::Halt),
        Command::IsSystemRunning => is_system_running(),
        Command::ProvisionStatus => {
            let (text, code) = crate::stage2::provision::status(Path::new("/"));
            crate::sys::log::out(&text);
            code
        }
        Command::ProvisionMetadata => simple(&Request::ProvisionMetadata),
    }
}

/// Sends one request; a connection problem is an error, and so is `ok: false`.
fn ask(request: &Request) -> Result<(Reply, std::io::BufReader<std::os::unix::net::UnixStream>), String> {
    let (reply, rest) = control::round_trip(request)?;
    if reply.ok { Ok((reply, rest)) } else { Err(reply.message) }
}

/// reboot, poweroff, halt, provision-metadata: print the reply (an error on stderr, exit 1).
fn simple(request: &Request) -> i32 {
    match ask(request) {
        Ok((reply, _)) => {
            crate::sys::log::out(&format!("{}\n", reply.message));
            0
        }
        Err(e) => {
            crate::sys::log::err(&format!("berthctl: {e}\n"));
            1
        }
    }
}

/// Prints the state; exit 0 only when it is `running`.
fn is_system_running() -> i32 {
    match control::round_trip(&Request::IsSystemRunning) {
        Ok((reply, _)) => {
            crate::sys::log::out(&format!("{}\n", reply.message));
            if reply.ok && reply.message == "running" { 0 } else { 1 }
        }
        Err(e) => {
            crate::sys::log::err(&format!("berthctl: {e}\n"));
            1
        }
    }
}

/// start, stop, restart: one request per unit, in order; exit 1 if any failed.
fn jobs(verb: Verb, units: &[String]) -> i32 {
    let mut code = 0;
    for unit in units {
        if let Err(e) = ask(&verb.request(unit)) {
            crate::sys::log::err(&format!("berthctl: {} {unit}: {e}\n", verb.word()));
            code = 1;
        }
    }
    code
}

#[cfg(test)]
mod tests;
