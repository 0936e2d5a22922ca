//! `logs`: a unit's lines from PID 1's journal, once or followed.

use std::io::{BufRead, Write};

use berth_release::time::TimestampUs;

use crate::control::{LogLine, Request};

use super::ask;

pub(super) fn logs(unit: &str, lines: usize, follow: bool, json: bool) -> i32 {
    let (reply, mut rest) = match ask(&Request::Logs { unit: unit.to_string(), lines, follow }) {
        Ok(r) => r,
        Err(e) => {
            crate::sys::log::err(&format!("berthctl: logs {unit}: {e}\n"));
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
                    crate::sys::log::err(&format!("berthctl: logs {unit}: bad line from berth-init: {e}\n"));
                    return 1;
                }
            },
            Err(e) => {
                crate::sys::log::err(&format!("berthctl: logs {unit}: {e}\n"));
                return 1;
            }
        }
    }
}

/// One log line as text: `2026-11-22T09:01:02.123456Z unit[pid]: text`.
pub(super) fn log_text(line: &LogLine) -> String {
    let who = match line.pid {
        Some(pid) => format!("{}[{pid}]", line.unit),
        None => line.unit.clone(),
    };
    format!("{} {who}: {}\n", TimestampUs(line.time_us), line.text)
}
