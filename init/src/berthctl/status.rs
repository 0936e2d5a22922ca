//! `list` and `status`: what PID 1 reports about units, as systemctl shows it.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_release::time::TimestampUs;

use crate::control::{self, LogLine, Request, UnitStatus};

use super::ask;
use super::logs::log_text;

const STATUS_LOG_LINES: usize = 10;

/// The time now, in µs since the epoch (what the journal stamps lines with).
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub(super) fn list(all: bool, json: bool) -> i32 {
    let reply = match ask(&Request::List { all }) {
        Ok((reply, _)) => reply,
        Err(e) => {
            crate::sys::log::err(&format!("berthctl: list: {e}\n"));
            return 1;
        }
    };
    if json {
        crate::sys::log::out(&format!("{}\n", serde_json::to_string_pretty(&reply.units).unwrap_or_default()));
    } else {
        crate::sys::log::out(&list_table(&reply.units, all));
    }
    0
}

/// systemctl's table: a `●` marks failed units and units that did not load.
pub(super) fn list_table(units: &[UnitStatus], all: bool) -> String {
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

/// `status` without a unit: the machine's hostname, state (PID 1's answer) and platform (what
/// stage 2 recorded). Exit 0 when berth-init answered, 1 when it could not be reached.
pub(super) fn system(json: bool) -> i32 {
    let host = nix::unistd::gethostname().map_or_else(|_| "?".to_string(), |h| h.to_string_lossy().into_owned());
    let (state, code) = match control::round_trip(&Request::IsSystemRunning) {
        Ok((reply, _)) => (Ok(reply.message), 0),
        Err(e) => (Err(e), 1),
    };
    let run_file = std::path::Path::new(crate::stage2::platform::PLATFORM_RUN_FILE);
    let platform = match berth_metadata::platform::read_run_file(run_file) {
        Ok(Some(p)) => Ok(p.name().to_string()),
        Ok(None) => Err(format!("{} is missing: berth-init did not record it this boot", run_file.display())),
        Err(e) => Err(e),
    };
    if json {
        let value = serde_json::json!({
            "hostname": host,
            "state": state.as_ref().ok(),
            "platform": platform.as_ref().ok(),
        });
        crate::sys::log::out(&format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()));
    } else {
        crate::sys::log::out(&system_text(&host, &state, &platform));
    }
    code
}

/// `status`'s text for the machine: the hostname, then the state and the platform, each its
/// value or why it is not known.
pub(super) fn system_text(host: &str, state: &Result<String, String>, platform: &Result<String, String>) -> String {
    let value = |r: &Result<String, String>| match r {
        Ok(v) => v.clone(),
        Err(why) => format!("unknown ({why})"),
    };
    format!("● {host}\n{:>11}: {}\n{:>11}: {}\n", "State", value(state), "Platform", value(platform))
}

/// `status UNIT...`: exit 0 when all are active, 3 when one is not, 4 when one is unknown.
pub(super) fn status(units: &[String], json: bool) -> i32 {
    let mut code = 0;
    let mut first = true;
    for unit in units {
        let reply = match control::round_trip(&Request::Status { unit: unit.clone() }) {
            Ok((reply, _)) if reply.ok => reply,
            Ok((reply, _)) => {
                crate::sys::log::err(&format!("berthctl: status {unit}: {}\n", reply.message));
                code = code.max(4);
                continue;
            }
            // Not an answer about the unit: berth-init is not there.
            Err(e) => {
                crate::sys::log::err(&format!("berthctl: status {unit}: {e}\n"));
                return 1;
            }
        };
        let Some(s) = reply.units.into_iter().next() else {
            crate::sys::log::err(&format!("berthctl: status {unit}: berth-init sent no status\n"));
            code = code.max(4);
            continue;
        };
        code = code.max(match (s.load.as_str(), s.active.as_str()) {
            ("not-found", _) => 4,
            (_, "active" | "reloading") => 0,
            _ => 3,
        });
        if json {
            crate::sys::log::out(&format!("{}\n", serde_json::to_string_pretty(&s).unwrap_or_default()));
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
        text.push_str(&status_text(&s, &lines, now_us()));
        crate::sys::log::out(&text);
    }
    code
}

/// systemctl status's text for `s` at time `now_us`, then `lines`.
pub(super) fn status_text(s: &UnitStatus, lines: &[LogLine], now_us: u64) -> String {
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
pub(super) fn calendar_time(time_us: u64) -> String {
    let stamp = TimestampUs(time_us).to_string();
    format!("{} UTC", stamp.get(..19).unwrap_or(&stamp).replace('T', " "))
}

/// `3min 4s`, `2h 5min`, `1 day 3h`, like systemctl.
pub(super) fn ago(us: u64) -> String {
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
pub(super) fn human_bytes(bytes: u64) -> String {
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
