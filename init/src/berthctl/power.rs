//! `reboot`, `poweroff`, `halt` and `shutdown`, as people and Vagrant type them: links to
//! berth-init (like `berthctl`) that ask PID 1 over the control socket. The ordered shutdown is
//! PID 1's ([`crate::stage2`]); `shutdown +M`/`hh:mm` is kept there too, so the command returns
//! at once and `shutdown -c` (or another `shutdown`) changes it. Options of systemd's and
//! sysvinit's tools that make no sense here (`-f`, `-n`, `--no-wall`) are accepted and ignored
//! with a note saying why; any other option is a usage error.

use crate::control::{Power, Request};

/// The names this module answers to (the links the builder makes in `/usr/sbin`).
pub const NAMES: [&str; 4] = ["reboot", "poweroff", "halt", "shutdown"];

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    Help,
    /// Shut down now.
    Now(Power),
    /// `shutdown` with a time (never "now": that is [`Action::Now`]).
    Later {
        power: Power,
        when: When,
        message: Option<String>,
    },
    /// `shutdown -c`.
    Cancel {
        message: Option<String>,
    },
}

/// `shutdown`'s TIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// `+M`: in M minutes.
    In { minutes: u64 },
    /// `hh:mm`: the next time the machine's local clock shows it (today, else tomorrow).
    At { hour: u32, minute: u32 },
}

/// A parsed command line: the action and the notes on options accepted but ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    pub action: Action,
    pub ignored: Vec<String>,
}

fn usage(name: &str) -> String {
    let common = "\
  -f, --force           accepted and ignored: berth-init always stops the units in order
  -n, --no-sync         accepted and ignored: the filesystems are always synced and unmounted
  -d, --no-wtmp, --no-wall
                        accepted and ignored: berth-init keeps no wtmp and sends no wall message
      --help            this text
";
    match name {
        "shutdown" => format!(
            "\
shutdown: shut the machine down in order, now or at a given time (asks berth-init, PID 1)

usage: shutdown [OPTIONS] [TIME] [MESSAGE...]

  -P, --poweroff        switch the machine off afterwards (the default)
  -r, --reboot          restart the machine afterwards
  -H, --halt            halt the CPUs afterwards, leaving the machine on
  -h                    the same as --poweroff, unless --halt is given
  -c                    cancel the scheduled shutdown (MESSAGE... is logged with it)
{common}
TIME is `now` (or `+0`), `+M` (in M minutes) or `hh:mm` (24-hour clock, the machine's
local time; tomorrow if it has passed today). Without TIME: +1, as on Debian. berth-init
keeps the time: the command returns at once, another shutdown replaces it, and the
console log says when it is due. MESSAGE is logged with it (there is no wall).
Must be run as root. `berthctl reboot` and `berthctl poweroff` do the same as
`shutdown -r now` and `shutdown -P now`.
"
        ),
        _ => {
            let (what, default) = match name {
                "reboot" => ("stop everything in order, unmount, and restart the machine", "--reboot"),
                "halt" => ("stop everything in order, unmount, and halt the CPUs (the machine stays on)", "--halt"),
                _ => ("stop everything in order, unmount, and switch the machine off", "--poweroff"),
            };
            format!(
                "\
{name}: {what} (asks berth-init, PID 1)

usage: {name} [OPTIONS]

      --reboot          restart instead{r}
  -p, --poweroff        switch off instead{p}
      --halt            halt instead{h}
{common}
Must be run as root. The same as `shutdown {flag} now`.
",
                r = if default == "--reboot" { " (the default)" } else { "" },
                p = if default == "--poweroff" { " (the default)" } else { "" },
                h = if default == "--halt" { " (the default)" } else { "" },
                flag = match default {
                    "--reboot" => "-r",
                    "--halt" => "-H",
                    _ => "-P",
                },
            )
        }
    }
}

/// The note printed for an option accepted but ignored.
fn ignored_because(option: &str) -> Option<&'static str> {
    Some(match option {
        "-f" | "--force" => "berth-init always stops the units in order (it is quick)",
        "-n" | "--no-sync" => "the filesystems are always synced and unmounted",
        "-d" | "--no-wtmp" => "berth-init keeps no wtmp",
        "--no-wall" => "berth-init sends no wall message",
        _ => return None,
    })
}

/// Splits `-rf` into `-r -f`; long options and `--` stay as they are.
fn split_short(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut options = true;
    for a in args {
        if options && a == "--" {
            options = false;
        } else if options && a.len() > 2 && a.starts_with('-') && !a.starts_with("--") && !a.starts_with("-0") {
            out.extend(a.chars().skip(1).map(|c| format!("-{c}")));
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Parses the command line of `name` (one of [`NAMES`]; `args` without the program name).
pub(super) fn parse(name: &str, args: &[String]) -> Result<Parsed, String> {
    let shutdown = name == "shutdown";
    let mut power = match name {
        "reboot" => Power::Reboot,
        "halt" => Power::Halt,
        _ => Power::Poweroff,
    };
    let mut cancel = false;
    let mut ignored = Vec::new();
    let mut positional = Vec::new();
    let mut options = true;
    for arg in split_short(args) {
        if !options || !arg.starts_with('-') || arg == "-" {
            positional.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => options = false,
            "--help" => return Ok(Parsed { action: Action::Help, ignored }),
            "--reboot" => power = Power::Reboot,
            "--poweroff" => power = Power::Poweroff,
            "--halt" => power = Power::Halt,
            "-p" if !shutdown => power = Power::Poweroff,
            "-r" if shutdown => power = Power::Reboot,
            "-P" if shutdown => power = Power::Poweroff,
            "-H" if shutdown => power = Power::Halt,
            // systemd's: -h powers off, unless --halt came first.
            "-h" if shutdown => {
                if power != Power::Halt {
                    power = Power::Poweroff
                }
            }
            "-c" if shutdown => cancel = true,
            other => match ignored_because(other) {
                Some(why) => ignored.push(format!("{other} ignored: {why}")),
                None => return Err(format!("unknown option `{other}`")),
            },
        }
    }
    if !shutdown {
        if let Some(extra) = positional.first() {
            return Err(format!("takes no arguments (got `{extra}`)"));
        }
        return Ok(Parsed { action: Action::Now(power), ignored });
    }
    let message = |words: &[String]| (!words.is_empty()).then(|| words.join(" "));
    if cancel {
        return Ok(Parsed { action: Action::Cancel { message: message(&positional) }, ignored });
    }
    let (when, rest) = match positional.split_first() {
        Some((time, rest)) => (parse_time(time)?, rest),
        // Debian's (systemd's) default.
        None => (Some(When::In { minutes: 1 }), &[][..]),
    };
    let action = match when {
        None => Action::Now(power),
        Some(when) => Action::Later { power, when, message: message(rest) },
    };
    Ok(Parsed { action, ignored })
}

/// `now`/`+0` (None), `+M`, `hh:mm`.
fn parse_time(text: &str) -> Result<Option<When>, String> {
    let bad = || format!("`{text}` is not a time: give now, +MINUTES or hh:mm");
    if text == "now" {
        return Ok(None);
    }
    if let Some(m) = text.strip_prefix('+') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let minutes: u64 = m.parse().map_err(|_| bad())?;
        return Ok((minutes > 0).then_some(When::In { minutes }));
    }
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let digits = |s: &str, max: u32| -> Option<u32> {
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().filter(|v| *v <= max)
    };
    match (digits(h, 23), digits(m, 59)) {
        (Some(hour), Some(minute)) if m.len() == 2 => Ok(Some(When::At { hour, minute })),
        _ => Err(bad()),
    }
}

/// Seconds from a local clock showing `now` (hour, minute, second) until it next shows
/// `hour:minute:00`: later today, or tomorrow if that has passed (0 if it is that second).
pub(super) fn seconds_until(hour: u32, minute: u32, now: (u32, u32, u32)) -> u64 {
    let target = i64::from(hour) * 3600 + i64::from(minute) * 60;
    let current = i64::from(now.0) * 3600 + i64::from(now.1) * 60 + i64::from(now.2);
    (target - current).rem_euclid(86_400) as u64
}

/// The local clock's hour, minute and second now (the C library reads `/etc/localtime`; without
/// it, UTC).
fn local_clock() -> Result<(u32, u32, u32), String> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .map_err(|e| format!("reading the clock: {e}"))?
        .tv_sec();
    // SAFETY: `tm` is plain old data; all zeroes is a valid value that localtime_r overwrites.
    let mut tm: nix::libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the reentrant variant.
    if unsafe { nix::libc::localtime_r(&now, &mut tm) }.is_null() {
        return Err("the local time is unknown (localtime_r failed)".into());
    }
    let part = |v: nix::libc::c_int| u32::try_from(v).unwrap_or(0);
    Ok((part(tm.tm_hour), part(tm.tm_min), part(tm.tm_sec)))
}

/// The request for a parsed action (`None` for help).
fn request(action: &Action) -> Result<Option<Request>, String> {
    Ok(Some(match action {
        Action::Help => return Ok(None),
        Action::Now(power) => power.now(),
        Action::Later { power, when, message } => {
            let after_secs = match *when {
                When::In { minutes } => minutes.saturating_mul(60),
                When::At { hour, minute } => seconds_until(hour, minute, local_clock()?),
            };
            if after_secs == 0 {
                power.now()
            } else {
                Request::ScheduleShutdown { power: *power, after_secs, message: message.clone() }
            }
        }
        Action::Cancel { message } => Request::CancelShutdown { message: message.clone() },
    }))
}

/// Runs `name` (one of [`NAMES`]) with `args` (without the program name); the exit code: 0
/// done, 1 refused or failed, 2 a usage error.
pub fn main(name: &str, args: &[String]) -> i32 {
    use crate::sys::log;
    let parsed = match parse(name, args) {
        Ok(p) => p,
        Err(e) => {
            log::err(&format!("{name}: {e}\n({name} --help shows the usage)\n"));
            return 2;
        }
    };
    if parsed.action == Action::Help {
        log::out(&usage(name));
        return 0;
    }
    for note in &parsed.ignored {
        log::err(&format!("{name}: {note}\n"));
    }
    if !nix::unistd::geteuid().is_root() {
        log::err(&format!("{name}: must be root (try: sudo {name})\n"));
        return 1;
    }
    let reply = request(&parsed.action).and_then(|r| match r {
        Some(r) => super::ask(&r).map(|(reply, _)| Some(reply)),
        None => Ok(None),
    });
    match reply {
        // Schedules and cancellations say what they did; a shutdown now is quiet, as elsewhere.
        Ok(Some(reply)) if matches!(parsed.action, Action::Later { .. } | Action::Cancel { .. }) => {
            log::out(&format!("{}\n", reply.message));
            0
        }
        Ok(_) => 0,
        Err(e) => {
            log::err(&format!("{name}: {e}\n"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, args: &[&str]) -> Result<Parsed, String> {
        parse(name, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn action(name: &str, args: &[&str]) -> Action {
        p(name, args).unwrap_or_else(|e| panic!("{name} {args:?}: {e}")).action
    }

    #[test]
    fn reboot_poweroff_halt() {
        assert_eq!(action("reboot", &[]), Action::Now(Power::Reboot));
        assert_eq!(action("poweroff", &[]), Action::Now(Power::Poweroff));
        assert_eq!(action("halt", &[]), Action::Now(Power::Halt));
        assert_eq!(action("halt", &["-p"]), Action::Now(Power::Poweroff));
        assert_eq!(action("halt", &["--poweroff"]), Action::Now(Power::Poweroff));
        assert_eq!(action("poweroff", &["--reboot"]), Action::Now(Power::Reboot));
        assert_eq!(action("reboot", &["--halt"]), Action::Now(Power::Halt));
        assert_eq!(action("reboot", &["--help"]), Action::Help);
        let forced = p("reboot", &["-f", "--no-wall", "-n"]).unwrap();
        assert_eq!(forced.action, Action::Now(Power::Reboot));
        assert_eq!(forced.ignored.len(), 3);
        assert!(forced.ignored[0].starts_with("-f ignored: "), "{:?}", forced.ignored);
        // Clusters, as getopt takes them.
        let both = p("poweroff", &["-fn"]).unwrap();
        assert_eq!((both.action, both.ignored.len()), (Action::Now(Power::Poweroff), 2));
        assert_eq!(p("reboot", &["-x"]).unwrap_err(), "unknown option `-x`");
        assert_eq!(p("reboot", &["--wtmp-only"]).unwrap_err(), "unknown option `--wtmp-only`");
        // `reboot -h` is not help (reboot has no -h), nor `reboot -r`.
        assert!(p("reboot", &["-h"]).is_err() && p("reboot", &["-r"]).is_err());
        assert_eq!(p("reboot", &["now"]).unwrap_err(), "takes no arguments (got `now`)");
    }

    #[test]
    fn shutdown_as_people_and_vagrant_type_it() {
        // Vagrant's halt (Linux guests) and what people type over SSH.
        assert_eq!(action("shutdown", &["-h", "now"]), Action::Now(Power::Poweroff));
        assert_eq!(action("shutdown", &["-r", "now"]), Action::Now(Power::Reboot));
        assert_eq!(action("shutdown", &["-P", "now"]), Action::Now(Power::Poweroff));
        assert_eq!(action("shutdown", &["-H", "now"]), Action::Now(Power::Halt));
        assert_eq!(action("shutdown", &["now"]), Action::Now(Power::Poweroff));
        assert_eq!(action("shutdown", &["-r", "+0"]), Action::Now(Power::Reboot));
        // systemd's rule: -h is poweroff unless --halt/-H came before it; otherwise the last wins.
        assert_eq!(action("shutdown", &["-H", "-h", "now"]), Action::Now(Power::Halt));
        assert_eq!(action("shutdown", &["-h", "-H", "now"]), Action::Now(Power::Halt));
        assert_eq!(action("shutdown", &["-r", "-P", "now"]), Action::Now(Power::Poweroff));
        assert_eq!(action("shutdown", &["-rf", "now"]), Action::Now(Power::Reboot));
        // Without a time: +1, as on Debian.
        assert_eq!(
            action("shutdown", &[]),
            Action::Later { power: Power::Poweroff, when: When::In { minutes: 1 }, message: None }
        );
        assert_eq!(
            action("shutdown", &["-r", "+5", "kernel", "update"]),
            Action::Later {
                power: Power::Reboot,
                when: When::In { minutes: 5 },
                message: Some("kernel update".into())
            }
        );
        assert_eq!(
            action("shutdown", &["-H", "23:05"]),
            Action::Later { power: Power::Halt, when: When::At { hour: 23, minute: 5 }, message: None }
        );
        assert_eq!(
            action("shutdown", &["7:00"]),
            Action::Later { power: Power::Poweroff, when: When::At { hour: 7, minute: 0 }, message: None }
        );
        assert_eq!(action("shutdown", &["-c"]), Action::Cancel { message: None });
        assert_eq!(action("shutdown", &["-c", "not", "today"]), Action::Cancel { message: Some("not today".into()) });
        assert_eq!(action("shutdown", &["--help"]), Action::Help);
        let quiet = p("shutdown", &["--no-wall", "-f", "now"]).unwrap();
        assert_eq!((quiet.action, quiet.ignored.len()), (Action::Now(Power::Poweroff), 2));
    }

    #[test]
    fn shutdown_refuses_what_it_does_not_know() {
        for bad in ["24:00", "12:60", "12:5", "1200", "+", "+-1", "+1m", "tomorrow", ":30", "12:"] {
            let e = p("shutdown", &[bad]).unwrap_err();
            assert_eq!(e, format!("`{bad}` is not a time: give now, +MINUTES or hh:mm"));
        }
        assert_eq!(p("shutdown", &["-k", "now"]).unwrap_err(), "unknown option `-k`");
        assert_eq!(p("shutdown", &["-p", "now"]).unwrap_err(), "unknown option `-p`");
        assert_eq!(p("shutdown", &["--bogus"]).unwrap_err(), "unknown option `--bogus`");
    }

    #[test]
    fn scheduling_by_the_clock() {
        // Later today.
        assert_eq!(seconds_until(11, 30, (11, 0, 0)), 1800);
        assert_eq!(seconds_until(23, 59, (0, 0, 30)), 23 * 3600 + 59 * 60 - 30);
        // Passed today: tomorrow.
        assert_eq!(seconds_until(7, 0, (8, 0, 0)), 23 * 3600);
        assert_eq!(seconds_until(11, 30, (11, 30, 1)), 86_399);
        // That very second: now.
        assert_eq!(seconds_until(11, 30, (11, 30, 0)), 0);
        // A leap second's 60 still counts.
        assert_eq!(seconds_until(0, 0, (23, 59, 60)), 0);
    }

    #[test]
    fn requests_sent() {
        let later = Action::Later { power: Power::Reboot, when: When::In { minutes: 5 }, message: Some("m".into()) };
        assert_eq!(
            request(&later).unwrap(),
            Some(Request::ScheduleShutdown { power: Power::Reboot, after_secs: 300, message: Some("m".into()) })
        );
        assert_eq!(request(&Action::Now(Power::Halt)).unwrap(), Some(Request::Halt));
        assert_eq!(request(&Action::Now(Power::Reboot)).unwrap(), Some(Request::Reboot));
        assert_eq!(
            request(&Action::Cancel { message: None }).unwrap(),
            Some(Request::CancelShutdown { message: None })
        );
        assert_eq!(request(&Action::Help).unwrap(), None);
        let at = Action::Later { power: Power::Poweroff, when: When::At { hour: 0, minute: 0 }, message: None };
        match request(&at).unwrap() {
            Some(Request::ScheduleShutdown { after_secs, .. }) => assert!(after_secs <= 86_400, "{after_secs}"),
            Some(Request::Poweroff) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_for_each_name() {
        for name in NAMES {
            let text = usage(name);
            assert!(text.starts_with(&format!("{name}: ")), "{text}");
            assert!(text.contains(&format!("usage: {name} [OPTIONS]")), "{text}");
            assert!(text.contains("Must be run as root"), "{text}");
        }
        assert!(usage("reboot").contains("restart instead (the default)"));
        assert!(usage("halt").contains("halt instead (the default)"));
        assert!(usage("shutdown").contains("Without TIME: +1"));
    }
}
