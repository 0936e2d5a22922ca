//! The command line: the usage text, [`Command`] and its parser.

use std::path::PathBuf;

use crate::control::Request;
use berth_units::{UnitName, UnitType};

pub(super) const USAGE: &str = "\
berthctl: control Berth's init (berth-init, PID 1), like systemctl

usage: berthctl COMMAND [OPTIONS] [UNIT...]

units:
  list [--all]            the services and targets that are active, starting or failed
                          (--all: every loaded unit): UNIT LOAD ACTIVE SUB DESCRIPTION
  status [UNIT...]        state, main process, memory, restarts and the last 10 log lines;
                          exit 0 when active, 3 when not, 4 when there is no such unit
                          (1 when berth-init cannot be reached). Without a unit: the machine,
                          its hostname, state and platform (aws, qemu, metal, …)
  start UNIT...           start units (and what they require); wait until they are up
  stop UNIT...            stop units (and what requires them)
  restart UNIT...         stop, then start
  reload UNIT...          run the units' ExecReload= (for example sshd re-reads its config)
  enable UNIT... [--now]  link units into the targets their [Install] section names
                          (WantedBy= → /etc/systemd/system/TARGET.wants/UNIT), so that they
                          start at boot; --now also starts them. Units without [Install]
                          are static: other units pull them in, there is nothing to enable
  disable UNIT... [--now] remove those links; --now also stops the units
  is-enabled UNIT...      print enabled, disabled, static (no [Install]), masked or alias
                          for each unit; exit 0 when all are enabled, static or aliases
  logs UNIT [-n N] [-f]   the last N (default 50) lines the unit wrote to stdout/stderr and
                          what berth-init said about it; -f keeps printing new lines.
                          Also kept in /var/log/berth/UNIT.log (rotated at 1 MiB)

machine:
  reboot                  stop everything in order, unmount, and restart the machine
  poweroff                the same, then switch the machine off
  halt                    the same, then halt the CPUs (the machine stays on)
                          (`reboot`, `poweroff`, `halt` and `shutdown [-r|-P|-H|-c] [now|+M|hh:mm]`
                          are commands of their own too, as on Debian; each has --help)
  is-system-running       print the system state (starting, running, degraded when a unit
                          failed, stopping); exit 0 when running
  provision-status        whether the first-boot provisioning document was applied (from
                          which source; the cloud instance id), or why it failed (exit 1; a
                          failed document is not tried again until
                          /var/lib/berth/provision-failed is removed)
  provision-metadata      apply the cloud metadata that `berth-metadata fetch` recorded in
                          /run/berth/metadata/instance.toml as the first-boot document, once
                          per instance (berth-metadata.service runs it); exit 1 when it failed

offline:
  verify [--root DIR] FILE...
                          check unit files (with their drop-ins FILE.d/*.conf): print every
                          error and every directive berth-init will ignore; exit 1 on errors.
                          With --root DIR, also check the units they require and the programs
                          they run against the image tree DIR
  enable/disable/is-enabled --root DIR UNIT...
                          change (or read) the links inside the image tree DIR, without
                          berth-init

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
pub(super) enum Command {
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
    /// `status` without a unit: the machine.
    SystemStatus {
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
    IsEnabled {
        units: Vec<String>,
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
    Halt,
    IsSystemRunning,
    ProvisionStatus,
    ProvisionMetadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
}

impl Verb {
    pub(super) fn word(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Reload => "reload",
        }
    }

    pub(super) fn request(self, unit: &str) -> Request {
        let unit = unit.to_string();
        match self {
            Verb::Start => Request::Start { unit },
            Verb::Stop => Request::Stop { unit },
            Verb::Restart => Request::Restart { unit },
            Verb::Reload => Request::ReloadUnit { unit },
        }
    }
}

pub(super) const DEFAULT_LOG_LINES: usize = 50;

/// Parses the command line (without the program name).
pub(super) fn parse(args: &[String]) -> Result<Command, String> {
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
        "is-enabled" => &["--root"],
        "start" | "stop" | "restart" | "reload" | "reboot" | "poweroff" | "halt" | "is-system-running"
        | "provision-status" | "provision-metadata" => &[],
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
        "status" if opts.positional.is_empty() => Command::SystemStatus { json: opts.json },
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
        "is-enabled" => Command::IsEnabled { units: units()?, root: opts.root },
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
        "halt" => no_args().map(|()| Command::Halt)?,
        "provision-status" => no_args().map(|()| Command::ProvisionStatus)?,
        "provision-metadata" => no_args().map(|()| Command::ProvisionMetadata)?,
        _ => no_args().map(|()| Command::IsSystemRunning)?,
    })
}

/// The options any command may be given; [`parse`] then checks which apply.
#[derive(Default)]
pub(super) struct Options {
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
pub(super) fn unit_name(arg: &str) -> Result<String, String> {
    let has_type = arg.rsplit_once('.').is_some_and(|(_, suffix)| UnitType::from_suffix(suffix).is_some());
    let name = if has_type { arg.to_string() } else { format!("{arg}.service") };
    UnitName::parse(&name).map_err(|e| format!("`{arg}` is not a unit name: {e}"))?;
    Ok(name)
}
