//! `berthctl`: Berth's systemctl. It asks PID 1 (over [`control::SOCKET`]) to list, start,
//! stop and show units, to stream their logs, to reboot or power off; it enables and disables
//! units itself on the filesystem (the `.wants/` links under `/etc/systemd/system`, as
//! systemctl does), then asks PID 1 to reload; and it checks unit files offline (`verify`).
//! The same binary as berth-init, started under the name `berthctl`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::control::{self, LogLine, Reply, Request, UnitStatus};
use berth_units::error::location;
use berth_units::load::{ADMIN_UNIT_DIR, InstallLink, SYSTEM_UNIT_DIRS, install_links};
use berth_units::{ErrorKind, HostInfo, LoadState, Loader, Unit, UnitName, UnitType, syntax};

const USAGE: &str = "\
berthctl: control Berth's init (berth-init, PID 1), like systemctl

usage: berthctl COMMAND [OPTIONS] [UNIT...]

units:
  list [--all]            the services and targets that are active, starting or failed
                          (--all: every loaded unit): UNIT LOAD ACTIVE SUB DESCRIPTION
  status UNIT...          state, main process, memory, restarts and the last 10 log lines;
                          exit 0 when active, 3 when not, 4 when there is no such unit
                          (1 when berth-init cannot be reached)
  start UNIT...           start units (and what they require); wait until they are up
  stop UNIT...            stop units (and what requires them)
  restart UNIT...         stop, then start
  reload UNIT...          run the units' ExecReload= (for example sshd re-reads its config)
  enable UNIT... [--now]  link units into the targets their [Install] section names
                          (WantedBy= → /etc/systemd/system/TARGET.wants/UNIT), so that they
                          start at boot; --now also starts them. Units without [Install]
                          are static: other units pull them in, there is nothing to enable
  disable UNIT... [--now] remove those links; --now also stops the units
  logs UNIT [-n N] [-f]   the last N (default 50) lines the unit wrote to stdout/stderr and
                          what berth-init said about it; -f keeps printing new lines.
                          Also kept in /var/log/berth/UNIT.log (rotated at 1 MiB)

machine:
  reboot                  stop everything in order, unmount, and restart the machine
  poweroff                the same, then switch the machine off
  is-system-running       print the system state (starting, running, degraded when a unit
                          failed, stopping); exit 0 when running
  provision-status        whether the first-boot provisioning document was applied, or why
                          it failed (exit 1; a failed document is not tried again until
                          /var/lib/berth/provision-failed is removed)

offline:
  verify [--root DIR] FILE...
                          check unit files (with their drop-ins FILE.d/*.conf): print every
                          error and every directive berth-init will ignore; exit 1 on errors.
                          With --root DIR, also check the units they require and the programs
                          they run against the image tree DIR
  enable/disable --root DIR UNIT...
                          change the links inside the image tree DIR, without berth-init

options:
  --json                  list, status, logs: print JSON instead of text
  -n, --lines N           logs: how many lines
  -f, --follow            logs: keep printing new lines until interrupted
  -h, --help              this text
  -V, --version           berthctl's version

A UNIT without a type suffix is a service: `berthctl restart ssh` is ssh.service.
";

/// A command line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    Version,
    /// The arguments after `verify` (it parses its own).
    Verify(Vec<String>),
    List {
        all: bool,
        json: bool,
    },
    Status {
        units: Vec<String>,
        json: bool,
    },
    Job {
        verb: Verb,
        units: Vec<String>,
    },
    Install {
        enable: bool,
        units: Vec<String>,
        now: bool,
        root: Option<PathBuf>,
    },
    Logs {
        unit: String,
        lines: usize,
        follow: bool,
        json: bool,
    },
    Reboot,
    Poweroff,
    IsSystemRunning,
    ProvisionStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
        }
    }

    fn request(self, unit: &str) -> Request {
        let unit = unit.to_string();
        match self {
            Verb::Start => Request::Start { unit },
            Verb::Stop => Request::Stop { unit },
            Verb::Restart => Request::Restart { unit },
            Verb::Reload => Request::ReloadUnit { unit },
        }
    }
}

const DEFAULT_LOG_LINES: usize = 50;
const STATUS_LOG_LINES: usize = 10;

/// Runs `berthctl` with `args` (without the program name); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let command = match parse(args) {
        Ok(c) => c,
        Err(e) => {
            crate::log::err(&format!("berthctl: {e}\n(berthctl --help lists the commands)\n"));
            return 2;
        }
    };
    match command {
        Command::Help => {
            crate::log::out(USAGE);
            0
        }
        Command::Version => {
            crate::log::out(&format!("berthctl {}\n", crate::VERSION));
            0
        }
        Command::Verify(args) => verify(&args),
        Command::List { all, json } => list(all, json),
        Command::Status { units, json } => status(&units, json),
        Command::Job { verb, units } => jobs(verb, &units),
        Command::Install { enable, units, now, root } => install(enable, &units, now, root.as_deref()),
        Command::Logs { unit, lines, follow, json } => logs(&unit, lines, follow, json),
        Command::Reboot => simple(&Request::Reboot),
        Command::Poweroff => simple(&Request::Poweroff),
        Command::IsSystemRunning => is_system_running(),
        Command::ProvisionStatus => {
            let (text, code) = crate::stage2::provision::status(Path::new("/"));
            crate::log::out(&text);
            code
        }
    }
}

/// Parses the command line (without the program name).
fn parse(args: &[String]) -> Result<Command, String> {
    let Some(name) = args.first().map(String::as_str) else {
        return Err("name a command".into());
    };
    let rest = &args[1..];
    let command = match name {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" => return Ok(Command::Version),
        "verify" => return Ok(Command::Verify(rest.to_vec())),
        other => other,
    };
    let opts = Options::parse(command, rest)?;
    if opts.help {
        return Ok(Command::Help);
    }
    let allowed: &[&str] = match command {
        "list" => &["--all", "--json"],
        "status" => &["--json"],
        "logs" => &["--json", "--lines", "--follow"],
        "enable" | "disable" => &["--now", "--root"],
        "start" | "stop" | "restart" | "reload" | "reboot" | "poweroff" | "is-system-running" | "provision-status" => {
            &[]
        }
        other => return Err(format!("unknown command `{other}`")),
    };
    if let Some(bad) = opts.given.iter().find(|o| !allowed.contains(o)) {
        return Err(format!("{command}: option {bad} does not apply here"));
    }
    let units = || -> Result<Vec<String>, String> {
        if opts.positional.is_empty() {
            return Err(format!("{command}: name at least one unit"));
        }
        opts.positional.iter().map(|u| unit_name(u).map_err(|e| format!("{command}: {e}"))).collect()
    };
    let no_args = || -> Result<(), String> {
        match opts.positional.first() {
            Some(extra) => Err(format!("{command} takes no arguments (got `{extra}`)")),
            None => Ok(()),
        }
    };
    Ok(match command {
        "list" => {
            no_args()?;
            Command::List { all: opts.all, json: opts.json }
        }
        "status" => Command::Status { units: units()?, json: opts.json },
        "start" => Command::Job { verb: Verb::Start, units: units()? },
        "stop" => Command::Job { verb: Verb::Stop, units: units()? },
        "restart" => Command::Job { verb: Verb::Restart, units: units()? },
        "reload" => Command::Job { verb: Verb::Reload, units: units()? },
        "enable" | "disable" => {
            if opts.now && opts.root.is_some() {
                return Err(format!("{command}: --now and --root exclude each other (no berth-init runs in DIR)"));
            }
            Command::Install { enable: command == "enable", units: units()?, now: opts.now, root: opts.root }
        }
        "logs" => {
            let mut list = units()?;
            if list.len() > 1 {
                return Err(format!("logs: one unit at a time (got {})", list.join(" ")));
            }
            let unit = list.remove(0);
            Command::Logs { unit, lines: opts.lines.unwrap_or(DEFAULT_LOG_LINES), follow: opts.follow, json: opts.json }
        }
        "reboot" => no_args().map(|()| Command::Reboot)?,
        "poweroff" => no_args().map(|()| Command::Poweroff)?,
        "provision-status" => no_args().map(|()| Command::ProvisionStatus)?,
        _ => no_args().map(|()| Command::IsSystemRunning)?,
    })
}

/// The options any command may be given; [`parse`] then checks which apply.
#[derive(Default)]
struct Options {
    /// The long names of the options given, to reject the ones that do not apply.
    given: Vec<&'static str>,
    positional: Vec<String>,
    all: bool,
    json: bool,
    now: bool,
    follow: bool,
    help: bool,
    lines: Option<usize>,
    root: Option<PathBuf>,
}

impl Options {
    fn parse(command: &str, args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut iter = args.iter();
        let mut options = true;
        while let Some(arg) = iter.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if arg.starts_with("--") => (k, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| iter.next().cloned())
                    .ok_or_else(|| format!("{command}: {name} needs a value"))
            };
            let flag = match key {
                "--" if options => {
                    options = false;
                    continue;
                }
                "-h" | "--help" if options => {
                    o.help = true;
                    "--help"
                }
                "-a" | "--all" if options => {
                    o.all = true;
                    "--all"
                }
                "--json" if options => {
                    o.json = true;
                    "--json"
                }
                "--now" if options => {
                    o.now = true;
                    "--now"
                }
                "-f" | "--follow" if options => {
                    o.follow = true;
                    "--follow"
                }
                "-n" | "--lines" if options => {
                    let v = value(key)?;
                    o.lines = Some(v.parse().map_err(|_| format!("{command}: {key} {v}: not a number of lines"))?);
                    "--lines"
                }
                k if options && k.starts_with("-n") && k.len() > 2 && !k.starts_with("--") => {
                    let v = &k[2..];
                    o.lines = Some(v.parse().map_err(|_| format!("{command}: -n{v}: not a number of lines"))?);
                    "--lines"
                }
                "--root" if options => {
                    let dir = PathBuf::from(value(key)?);
                    if !dir.is_dir() {
                        return Err(format!("{command}: --root {}: not a directory", dir.display()));
                    }
                    o.root = Some(dir);
                    "--root"
                }
                k if options && k.starts_with('-') && k.len() > 1 => {
                    return Err(format!("{command}: unknown option `{arg}`"));
                }
                _ => {
                    o.positional.push(arg.clone());
                    continue;
                }
            };
            o.given.push(flag);
        }
        Ok(o)
    }
}

/// The unit a command-line name means: without a type suffix, a service (as systemctl).
fn unit_name(arg: &str) -> Result<String, String> {
    let has_type = arg.rsplit_once('.').is_some_and(|(_, suffix)| UnitType::from_suffix(suffix).is_some());
    let name = if has_type { arg.to_string() } else { format!("{arg}.service") };
    UnitName::parse(&name).map_err(|e| format!("`{arg}` is not a unit name: {e}"))?;
    Ok(name)
}

/// Sends one request; a connection problem is an error, and so is `ok: false`.
fn ask(request: &Request) -> Result<(Reply, std::io::BufReader<std::os::unix::net::UnixStream>), String> {
    let (reply, rest) = control::round_trip(request)?;
    if reply.ok { Ok((reply, rest)) } else { Err(reply.message) }
}

/// reboot, poweroff: print the reply.
fn simple(request: &Request) -> i32 {
    match ask(request) {
        Ok((reply, _)) => {
            crate::log::out(&format!("{}\n", reply.message));
            0
        }
        Err(e) => {
            crate::log::err(&format!("berthctl: {e}\n"));
            1
        }
    }
}

/// Prints the state; exit 0 only when it is `running`.
fn is_system_running() -> i32 {
    match control::round_trip(&Request::IsSystemRunning) {
        Ok((reply, _)) => {
            crate::log::out(&format!("{}\n", reply.message));
            if reply.ok && reply.message == "running" { 0 } else { 1 }
        }
        Err(e) => {
            crate::log::err(&format!("berthctl: {e}\n"));
            1
        }
    }
}

fn list(all: bool, json: bool) -> i32 {
    let reply = match ask(&Request::List { all }) {
        Ok((reply, _)) => reply,
        Err(e) => {
            crate::log::err(&format!("berthctl: list: {e}\n"));
            return 1;
        }
    };
    if json {
        crate::log::out(&format!("{}\n", serde_json::to_string_pretty(&reply.units).unwrap_or_default()));
    } else {
        crate::log::out(&list_table(&reply.units, all));
    }
    0
}

/// systemctl's table: a `●` marks failed units and units that did not load.
fn list_table(units: &[UnitStatus], all: bool) -> String {
    let width = |head: &str, f: &dyn Fn(&UnitStatus) -> usize| units.iter().map(f).max().unwrap_or(0).max(head.len());
    let w_name = width("UNIT", &|u| u.name.len());
    let w_load = width("LOAD", &|u| u.load.len());
    let w_active = width("ACTIVE", &|u| u.active.len());
    let w_sub = width("SUB", &|u| u.sub.len());
    let mut out =
        format!("  {:w_name$} {:w_load$} {:w_active$} {:w_sub$} DESCRIPTION\n", "UNIT", "LOAD", "ACTIVE", "SUB");
    for u in units {
        let mark = if u.active == "failed" || u.load != "loaded" { "●" } else { " " };
        let line = format!(
            "{mark} {:w_name$} {:w_load$} {:w_active$} {:w_sub$} {}",
            u.name, u.load, u.active, u.sub, u.description
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(&format!("\n{} loaded units listed.", units.len()));
    if !all {
        out.push_str(" Pass --all to see inactive units, too.");
    }
    out.push('\n');
    out
}

/// `status UNIT...`: exit 0 when all are active, 3 when one is not, 4 when one is unknown.
fn status(units: &[String], json: bool) -> i32 {
    let mut code = 0;
    let mut first = true;
    for unit in units {
        let reply = match control::round_trip(&Request::Status { unit: unit.clone() }) {
            Ok((reply, _)) if reply.ok => reply,
            Ok((reply, _)) => {
                crate::log::err(&format!("berthctl: status {unit}: {}\n", reply.message));
                code = code.max(4);
                continue;
            }
            // Not an answer about the unit: berth-init is not there.
            Err(e) => {
                crate::log::err(&format!("berthctl: status {unit}: {e}\n"));
                return 1;
            }
        };
        let Some(s) = reply.units.into_iter().next() else {
            crate::log::err(&format!("berthctl: status {unit}: berth-init sent no status\n"));
            code = code.max(4);
            continue;
        };
        code = code.max(match (s.load.as_str(), s.active.as_str()) {
            ("not-found", _) => 4,
            (_, "active" | "reloading") => 0,
            _ => 3,
        });
        if json {
            crate::log::out(&format!("{}\n", serde_json::to_string_pretty(&s).unwrap_or_default()));
            continue;
        }
        let lines = if reply.lines.is_empty() {
            let request = Request::Logs { unit: unit.clone(), lines: STATUS_LOG_LINES, follow: false };
            ask(&request).map(|(r, _)| r.lines).unwrap_or_default()
        } else {
            reply.lines
        };
        let mut text = if first { String::new() } else { "\n".to_string() };
        first = false;
        text.push_str(&status_text(&s, &lines, crate::journal::now_us()));
        crate::log::out(&text);
    }
    code
}

/// systemctl status's text for `s` at time `now_us`, then `lines`.
fn status_text(s: &UnitStatus, lines: &[LogLine], now_us: u64) -> String {
    let mut out = String::new();
    let mark = if s.active == "failed" { "×" } else { "●" };
    if s.description.is_empty() {
        out.push_str(&format!("{mark} {}\n", s.name));
    } else {
        out.push_str(&format!("{mark} {} - {}\n", s.name, s.description));
    }
    let mut field = |key: &str, value: &str| out.push_str(&format!("{key:>11}: {value}\n"));
    let details: Vec<&str> = s.fragment.iter().chain(&s.enabled).map(String::as_str).collect();
    if details.is_empty() {
        field("Loaded", &s.load);
    } else {
        field("Loaded", &format!("{} ({})", s.load, details.join("; ")));
    }
    let mut active = format!("{} ({})", s.active, s.sub);
    if let Some(since) = s.active_since_us {
        active.push_str(&format!(" since {}; {} ago", calendar_time(since), ago(now_us.saturating_sub(since))));
    }
    field("Active", &active);
    if let Some(e) = &s.error {
        field("Error", e);
    }
    if let Some(pid) = s.main_pid {
        field("Main PID", &pid.to_string());
    }
    if let Some(text) = &s.status_text {
        field("Status", &format!("\"{text}\""));
    }
    if let Some(tasks) = s.tasks {
        field("Tasks", &tasks.to_string());
    }
    if let Some(bytes) = s.memory_bytes {
        field("Memory", &human_bytes(bytes));
    }
    if s.restarts > 0 || s.last_exit.is_some() {
        let mut restarts = s.restarts.to_string();
        if let Some(exit) = &s.last_exit {
            restarts.push_str(&format!(" (last exit: {exit})"));
        }
        field("Restarts", &restarts);
    }
    if let Some(cgroup) = &s.cgroup {
        field("CGroup", cgroup);
    }
    if !lines.is_empty() {
        out.push('\n');
        for line in lines {
            out.push_str(&log_text(line));
        }
    }
    out
}

/// `2026-11-22 09:01:02 UTC`.
fn calendar_time(time_us: u64) -> String {
    let stamp = crate::journal::rfc3339(time_us);
    format!("{} UTC", stamp.get(..19).unwrap_or(&stamp).replace('T', " "))
}

/// `3min 4s`, `2h 5min`, `1 day 3h`, like systemctl.
fn ago(us: u64) -> String {
    let s = us / 1_000_000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) if s == 0 => format!("{}ms", us / 1000),
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}min {s}s"),
        (0, _, _) => format!("{h}h {m}min"),
        (1, _, _) => format!("1 day {h}h"),
        _ => format!("{d} days {h}h"),
    }
}

/// `25.0M`: base 1024, as systemctl shows memory.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// One log line as text: `2026-11-22T09:01:02.123456Z unit[pid]: text`.
fn log_text(line: &LogLine) -> String {
    let who = match line.pid {
        Some(pid) => format!("{}[{pid}]", line.unit),
        None => line.unit.clone(),
    };
    format!("{} {who}: {}\n", crate::journal::rfc3339(line.time_us), line.text)
}

/// start, stop, restart: one request per unit, in order; exit 1 if any failed.
fn jobs(verb: Verb, units: &[String]) -> i32 {
    let mut code = 0;
    for unit in units {
        if let Err(e) = ask(&verb.request(unit)) {
            crate::log::err(&format!("berthctl: {} {unit}: {e}\n", verb.word()));
            code = 1;
        }
    }
    code
}

fn logs(unit: &str, lines: usize, follow: bool, json: bool) -> i32 {
    let (reply, mut rest) = match ask(&Request::Logs { unit: unit.to_string(), lines, follow }) {
        Ok(r) => r,
        Err(e) => {
            crate::log::err(&format!("berthctl: logs {unit}: {e}\n"));
            return 1;
        }
    };
    let show = |line: &LogLine| -> bool {
        let text = if json { format!("{}\n", serde_json::to_string(line).unwrap_or_default()) } else { log_text(line) };
        // Stop when stdout is gone (`berthctl logs -f | head`).
        std::io::stdout().write_all(text.as_bytes()).and_then(|()| std::io::stdout().flush()).is_ok()
    };
    for line in &reply.lines {
        if !show(line) {
            return 0;
        }
    }
    if !follow {
        return 0;
    }
    let mut text = String::new();
    loop {
        text.clear();
        match rest.read_line(&mut text) {
            Ok(0) => return 0,
            Ok(_) => match serde_json::from_str::<LogLine>(text.trim_end()) {
                Ok(line) if show(&line) => {}
                Ok(_) => return 0,
                Err(e) => {
                    crate::log::err(&format!("berthctl: logs {unit}: bad line from berth-init: {e}\n"));
                    return 1;
                }
            },
            Err(e) => {
                crate::log::err(&format!("berthctl: logs {unit}: {e}\n"));
                return 1;
            }
        }
    }
}

/// enable/disable: the links first (on the filesystem, as systemctl), then `Reload`, then with
/// `--now` start/stop.
fn install(enable: bool, units: &[String], now: bool, root: Option<&Path>) -> i32 {
    let verb = if enable { "enable" } else { "disable" };
    let dir = root.unwrap_or(Path::new("/"));
    let mut code = 0;
    let mut changed = false;
    for unit in units {
        let result = if enable { enable_links(dir, unit) } else { disable_links(dir, unit) };
        match result {
            Ok(changes) => {
                for change in changes {
                    changed |= !matches!(change, Change::Static { .. });
                    crate::log::out(&format!("{change}\n"));
                }
            }
            Err(e) => {
                crate::log::err(&format!("berthctl: {verb} {unit}: {e}\n"));
                code = 1;
            }
        }
    }
    if root.is_some() {
        return code;
    }
    if changed && let Err(e) = ask(&Request::Reload) {
        crate::log::err(&format!("berthctl: {verb}: the links are changed, but berth-init did not reload: {e}\n"));
        code = 1;
    }
    if now && code == 0 {
        code = jobs(if enable { Verb::Start } else { Verb::Stop }, units);
    }
    code
}

/// What enabling or disabling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created {
        link: PathBuf,
        target: PathBuf,
    },
    Removed {
        link: PathBuf,
    },
    /// The unit has no `[Install]` section.
    Static {
        unit: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created { link, target } => write!(f, "Created symlink {} → {}.", link.display(), target.display()),
            Change::Removed { link } => write!(f, "Removed {}.", link.display()),
            Change::Static { unit } => write!(
                f,
                "{unit} is static: it has no [Install] section, so there is nothing to enable or disable \
                 (it starts when another unit needs it)."
            ),
        }
    }
}

/// Whether `unit` is `enabled` (one of its install links exists under `root`), `disabled`
/// or `static` (no `[Install]`): for [`UnitStatus::enabled`].
// PID 1 fills in `enabled` with this (the service manager's status handler).
pub fn enablement(root: &Path, unit: &Unit) -> &'static str {
    if is_static(unit) {
        return "static";
    }
    let links = install_links(unit).unwrap_or_default();
    if links.iter().any(|l| in_root(root, &l.link).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())) {
        "enabled"
    } else {
        "disabled"
    }
}

fn is_static(unit: &Unit) -> bool {
    let i = &unit.install;
    i.wanted_by.is_empty() && i.required_by.is_empty() && i.alias.is_empty() && i.also.is_empty()
}

/// `path` (absolute, as seen inside `root`) on this machine.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn loader(root: &Path) -> Loader {
    Loader::new(root, HostInfo::detect(root))
}

fn not_found(root: &Path) -> String {
    let place = if root == Path::new("/") { String::new() } else { format!(" in {}", root.display()) };
    format!("unit not found (searched {}{place})", SYSTEM_UNIT_DIRS.join(", "))
}

/// Creates the links of `name`'s `[Install]` section (and of its `Also=` units) under `root`.
pub fn enable_links(root: &Path, name: &str) -> Result<Vec<Change>, String> {
    let loader = loader(root);
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    enable_one(&loader, name, &mut changes, &mut seen)?;
    Ok(changes)
}

fn enable_one(
    loader: &Loader,
    name: &str,
    changes: &mut Vec<Change>,
    seen: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let unit = loader.load(name);
    let root = loader.root();
    match unit.state {
        LoadState::Loaded | LoadState::Unsupported => {}
        LoadState::NotFound => return Err(not_found(root)),
        LoadState::Masked => {
            let file = unit.fragment.as_deref().unwrap_or(Path::new(&unit.name)).display().to_string();
            return Err(format!("the unit is masked ({file} is empty or a link to /dev/null)"));
        }
        LoadState::Error => {
            let first = unit.errors.first().map(|e| format!("{}: {}", location(&e.file, e.line), e.kind));
            return Err(format!("the unit has errors: {}", first.unwrap_or_default()));
        }
    }
    if is_static(&unit) {
        changes.push(Change::Static { unit: unit.name });
        return Ok(());
    }
    for link in install_links(&unit)? {
        if let Some(change) = make_link(root, &link)? {
            changes.push(change);
        }
    }
    for also in &unit.install.also {
        enable_one(loader, also, changes, seen).map_err(|e| format!("Also={also}: {e}"))?;
    }
    Ok(())
}

/// Creates `link` inside `root`, atomically (a link under a temporary name, renamed into
/// place); `None` if it is there already. An existing link elsewhere is replaced; a file is not.
fn make_link(root: &Path, link: &InstallLink) -> Result<Option<Change>, String> {
    let path = in_root(root, &link.link);
    let shown = link.link.display();
    match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(&path).is_ok_and(|t| t == link.target) {
                return Ok(None);
            }
        }
        Ok(_) => return Err(format!("{shown} exists and is not a symlink; not replacing it")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(format!("{shown}: not a path for a link"));
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let temp = dir.join(format!(".{}.berthctl-{}", file.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(&link.target, &temp)
        .map_err(|e| format!("creating a link in {}: {e}", dir.display()))?;
    if let Err(e) = std::fs::rename(&temp, &path) {
        let _ = std::fs::remove_file(&temp);
        return Err(format!("creating {shown}: {e}"));
    }
    Ok(Some(Change::Created { link: link.link.clone(), target: link.target.clone() }))
}

/// Removes the links that enabling `name` (and its `Also=` units) made under `root`: its
/// entries in every `.wants/` and `.requires/` directory of [`ADMIN_UNIT_DIR`], and its
/// `Alias=` links.
pub fn disable_links(root: &Path, name: &str) -> Result<Vec<Change>, String> {
    let loader = loader(root);
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    disable_one(&loader, name, &mut changes, &mut seen)?;
    Ok(changes)
}

fn disable_one(
    loader: &Loader,
    name: &str,
    changes: &mut Vec<Change>,
    seen: &mut BTreeSet<String>,
) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let unit = loader.load(name);
    let root = loader.root();
    let before = changes.len();
    // The names its links may have: the one asked for, the unit's own and aliases, and for a
    // template its default instance.
    let mut names: BTreeSet<String> = unit.names().map(str::to_string).collect();
    names.insert(name.to_string());
    if let (Ok(n), Some(instance)) = (UnitName::parse(&unit.name), &unit.install.default_instance)
        && n.is_template()
        && let Ok(i) = n.instantiate(instance)
    {
        names.insert(i.full);
    }
    let admin = in_root(root, Path::new(ADMIN_UNIT_DIR));
    let mut links: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&admin) {
        let mut dirs: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|d| d.ends_with(".wants") || d.ends_with(".requires"))
            .collect();
        dirs.sort();
        for dir in dirs {
            links.extend(names.iter().map(|n| Path::new(ADMIN_UNIT_DIR).join(&dir).join(n)));
        }
    }
    links.extend(unit.install.alias.iter().map(|a| Path::new(ADMIN_UNIT_DIR).join(a)));
    for link in links {
        let path = in_root(root, &link);
        let is_link = path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        // A link to /dev/null is a mask, which disabling leaves alone.
        if !is_link || std::fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null")) {
            continue;
        }
        std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", link.display()))?;
        changes.push(Change::Removed { link });
    }
    if unit.state == LoadState::NotFound && changes.len() == before {
        return Err(not_found(root));
    }
    if is_static(&unit) && unit.state != LoadState::NotFound && changes.len() == before {
        changes.push(Change::Static { unit: unit.name.clone() });
    }
    for also in &unit.install.also {
        disable_one(loader, also, changes, seen).map_err(|e| format!("Also={also}: {e}"))?;
    }
    Ok(())
}

/// `berthctl verify [--root DIR] FILE...`: like `systemd-analyze verify`, works on any machine.
/// Errors and warnings go to stderr as `FILE:LINE: error: …` / `FILE:LINE: warning: …`.
fn verify(args: &[String]) -> i32 {
    let mut root: Option<PathBuf> = None;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut options = true;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--" if options => options = false,
            "--root" if options => match iter.next() {
                Some(dir) => root = Some(PathBuf::from(dir)),
                None => {
                    crate::log::err("berthctl verify: --root needs a directory\n");
                    return 2;
                }
            },
            a if options && a.starts_with("--root=") => root = Some(PathBuf::from(&a["--root=".len()..])),
            a if options && a.starts_with('-') && a.len() > 1 => {
                crate::log::err(&format!("berthctl verify: unknown option `{a}`\n\n{USAGE}"));
                return 2;
            }
            a => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() {
        crate::log::err(&format!("berthctl verify: name at least one unit file\n\n{USAGE}"));
        return 2;
    }
    if let Some(r) = &root
        && !r.is_dir()
    {
        crate::log::err(&format!("berthctl verify: --root {}: not a directory\n", r.display()));
        return 2;
    }
    let root_dir = root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let loader = Loader::new(&root_dir, HostInfo::detect(&root_dir));
    let mut states: BTreeMap<String, LoadState> = BTreeMap::new();
    let mut errors = 0;
    for file in &files {
        let unit = loader.load_file(file);
        let mut report = Report::default();
        if unit.state == LoadState::Masked {
            report.warning(file, 0, &format!("{} is masked (an empty file or a link to /dev/null)", unit.name));
        }
        for e in &unit.errors {
            report.error(&e.file, e.line, &e.kind.to_string());
        }
        for w in &unit.ignored {
            report.warning(&w.file, w.line, &w.message());
        }
        if root.is_some() {
            check_against_root(&loader, &unit, &mut states, &mut report);
        }
        errors += report.errors;
        crate::log::err(&report.sorted(&unit));
    }
    if errors > 0 { 1 } else { 0 }
}

/// The messages about one unit.
#[derive(Default)]
struct Report {
    entries: Vec<(PathBuf, usize, String)>,
    errors: usize,
}

impl Report {
    fn error(&mut self, file: &Path, line: usize, message: &str) {
        self.errors += 1;
        self.entries.push((file.to_path_buf(), line, format!("{}: error: {message}\n", location(file, line))));
    }

    fn warning(&mut self, file: &Path, line: usize, message: &str) {
        self.entries.push((file.to_path_buf(), line, format!("{}: warning: {message}\n", location(file, line))));
    }

    /// The messages in reading order: the unit file, then each drop-in, by line.
    fn sorted(mut self, unit: &Unit) -> String {
        let files: Vec<&PathBuf> = unit.fragment.iter().chain(&unit.dropins).collect();
        let rank = |f: &PathBuf| files.iter().position(|x| *x == f).unwrap_or(files.len());
        self.entries.sort_by_key(|(file, line, _)| (rank(file), *line));
        self.entries.into_iter().map(|(_, _, text)| text).collect()
    }
}

/// With `--root`: the units `unit` requires or wants, its install targets, and its programs
/// must exist in the image.
fn check_against_root(loader: &Loader, unit: &Unit, states: &mut BTreeMap<String, LoadState>, report: &mut Report) {
    let root = loader.root().display().to_string();
    let mut state_of = |name: &str| *states.entry(name.to_string()).or_insert_with(|| loader.load(name).state);
    let deps = [("Requires", &unit.deps.requires, true), ("Wants", &unit.deps.wants, false)];
    for (key, names, required) in deps {
        for name in names {
            let (file, line) = locate(unit, "Unit", key, name);
            let reason = match state_of(name) {
                LoadState::Loaded => continue,
                LoadState::NotFound => format!("no such unit in {root}"),
                LoadState::Masked => format!("masked in {root}"),
                LoadState::Error => format!("the unit in {root} has errors"),
                LoadState::Unsupported => {
                    report.warning(&file, line, &format!("{key}={name}: berth-init does not run this unit type"));
                    continue;
                }
            };
            let err = ErrorKind::Dependency { key: key.to_string(), name: name.clone(), reason };
            if required {
                report.error(&file, line, &err.to_string());
            } else {
                report.warning(&file, line, &format!("{err}; ignored"));
            }
        }
    }
    for (key, names) in [("WantedBy", &unit.install.wanted_by), ("RequiredBy", &unit.install.required_by)] {
        for name in names {
            if state_of(name) != LoadState::Loaded {
                let (file, line) = locate(unit, "Install", key, name);
                report.warning(&file, line, &format!("[Install] {key}={name}: no such unit in {root}"));
            }
        }
    }
    let Some(service) = &unit.service else { return };
    let lists = [
        ("ExecCondition", &service.exec_condition),
        ("ExecStartPre", &service.exec_start_pre),
        ("ExecStart", &service.exec_start),
        ("ExecStartPost", &service.exec_start_post),
        ("ExecReload", &service.exec_reload),
        ("ExecStop", &service.exec_stop),
        ("ExecStopPost", &service.exec_stop_post),
    ];
    for (key, commands) in lists {
        for command in commands {
            if loader.find_program(&command.path).is_some() {
                continue;
            }
            let file = locate_line(unit, "Service", key, command.line);
            let kind = ErrorKind::Value {
                section: "Service".into(),
                key: key.into(),
                reason: format!("{} is not an executable file in {root}", command.path),
            };
            if command.flags.ignore_failure {
                report.warning(&file, command.line, &format!("{kind}; ignored (`-` prefix)"));
            } else {
                report.error(&file, command.line, &kind.to_string());
            }
        }
    }
}

/// The files a unit was read from (the unit file, then its drop-ins), with their text.
fn sources(unit: &Unit) -> Vec<(PathBuf, String)> {
    unit.fragment
        .iter()
        .chain(&unit.dropins)
        .filter_map(|p| std::fs::read_to_string(p).ok().map(|t| (p.clone(), t)))
        .collect()
}

/// The last line that sets `key` in `section` with `word` in its value (where a dependency
/// came from); the unit file with line 0 when none does (a default dependency).
fn locate(unit: &Unit, section: &str, key: &str, word: &str) -> (PathBuf, usize) {
    let mut found = (unit.fragment.clone().unwrap_or_else(|| PathBuf::from(&unit.name)), 0);
    for (path, text) in sources(unit) {
        for a in syntax::parse(&text).assignments {
            if a.section == section && a.key == key && a.value.split_whitespace().any(|w| w == word) {
                found = (path.clone(), a.line);
            }
        }
    }
    found
}

/// The file (unit file or drop-in) in which `key` is set on line `line`.
fn locate_line(unit: &Unit, section: &str, key: &str, line: usize) -> PathBuf {
    let fallback = unit.fragment.clone().unwrap_or_else(|| PathBuf::from(&unit.name));
    sources(unit)
        .into_iter()
        .rev()
        .find(|(_, text)| {
            syntax::parse(text).assignments.iter().any(|a| a.section == section && a.key == key && a.line == line)
        })
        .map(|(p, _)| p)
        .unwrap_or(fallback)
}

#[cfg(test)]
mod tests;
