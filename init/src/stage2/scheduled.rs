//! A shutdown asked for later (`shutdown +5`, `shutdown 23:00`): PID 1 keeps one, on the
//! monotonic clock (a clock step by timesync moves neither it nor the wait), with the wall time
//! it meant for the log lines. A new request replaces it; `shutdown -c` cancels it; the main
//! loop asks [`Schedule::due`] once per round (at most a second late).

use std::time::{Duration, Instant};

use super::ShutdownKind;

/// The furthest ahead a shutdown may be scheduled: a year (`shutdown +M` takes any M).
pub const MAX_DELAY_SECS: u64 = 366 * 86_400;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    kind: ShutdownKind,
    at: Instant,
    /// CLOCK_REALTIME in µs when it was asked, plus the delay.
    wall_us: u64,
}

/// The scheduled shutdown, if any.
#[derive(Debug, Default)]
pub struct Schedule {
    pending: Option<Pending>,
}

/// What [`Schedule::set`] did: the line for the console and the reply for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub log: String,
    pub reply: String,
}

impl Schedule {
    /// Keeps `kind` for `after_secs` (> 0) after `now` (`now_us` on the wall clock), in place of
    /// any scheduled before. `message` (the command's words) goes into the log line.
    pub fn set(
        &mut self,
        kind: ShutdownKind,
        after_secs: u64,
        message: Option<&str>,
        now: Instant,
        now_us: u64,
    ) -> Result<Set, String> {
        let too_far = || format!("{} min is too far ahead (at most {} days)", after_secs / 60, MAX_DELAY_SECS / 86_400);
        if after_secs > MAX_DELAY_SECS {
            return Err(too_far());
        }
        let at = now.checked_add(Duration::from_secs(after_secs)).ok_or_else(too_far)?;
        let wall_us = now_us.saturating_add(after_secs.saturating_mul(1_000_000));
        let when = wall_time(wall_us);
        let replaced = match self.pending.replace(Pending { kind, at, wall_us }) {
            Some(old) => format!(" (replacing the {} scheduled for {})", old.kind.word(), wall_time(old.wall_us)),
            None => String::new(),
        };
        Ok(Set {
            log: format!(
                "shutdown: {} scheduled for {when}, in {}{replaced}{}",
                kind.word(),
                duration(after_secs),
                said(message)
            ),
            reply: format!("{} scheduled for {when}, use 'shutdown -c' to cancel.", capitalized(kind.word())),
        })
    }

    /// `shutdown -c`: the log line (None when nothing was scheduled) and the reply.
    pub fn cancel(&mut self, message: Option<&str>) -> (Option<String>, String) {
        match self.pending.take() {
            Some(p) => {
                let what = format!("the {} scheduled for {} cancelled", p.kind.word(), wall_time(p.wall_us));
                (Some(format!("shutdown: {what}{}", said(message))), format!("{}.", capitalized(&what)))
            }
            None => (None, "No shutdown was scheduled.".into()),
        }
    }

    /// The kind to shut down with once its time has come (then it is no longer scheduled),
    /// with the log line.
    pub fn due(&mut self, now: Instant) -> Option<(ShutdownKind, String)> {
        let p = self.pending.take_if(|p| now >= p.at)?;
        Some((p.kind, format!("shutdown: the {} scheduled for {} is due", p.kind.word(), wall_time(p.wall_us))))
    }
}

/// `2026-12-07 11:25:00 UTC` (CLOCK_REALTIME µs).
pub fn wall_time(us: u64) -> String {
    let stamp = berth_release::time::TimestampUs(us).to_string();
    format!("{} UTC", stamp.get(..19).unwrap_or(&stamp).replace('T', " "))
}

/// `5 min`, `1 min 30 s`, `45 s`.
fn duration(secs: u64) -> String {
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// `: "MESSAGE"` for a log line, when the request gave one.
pub fn said(message: Option<&str>) -> String {
    match message.map(str::trim) {
        Some(m) if !m.is_empty() => format!(": {m:?}"),
        _ => String::new(),
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |first| first.to_uppercase().chain(c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 11:00:00 UTC.
    const NOON_ISH_US: u64 = 1_796_641_200_000_000;

    #[test]
    fn due_after_its_delay_and_only_once() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let set = s.set(ShutdownKind::Poweroff, 300, Some("kernel update"), t0, NOON_ISH_US).unwrap();
        assert_eq!(set.log, "shutdown: poweroff scheduled for 2026-12-07 11:05:00 UTC, in 5 min: \"kernel update\"");
        assert_eq!(set.reply, "Poweroff scheduled for 2026-12-07 11:05:00 UTC, use 'shutdown -c' to cancel.");
        assert_eq!(s.due(t0), None);
        assert_eq!(s.due(t0 + Duration::from_secs(299)), None);
        let (kind, line) = s.due(t0 + Duration::from_secs(300)).unwrap();
        assert_eq!(kind, ShutdownKind::Poweroff);
        assert_eq!(line, "shutdown: the poweroff scheduled for 2026-12-07 11:05:00 UTC is due");
        assert_eq!(s.due(t0 + Duration::from_secs(400)), None, "due once");
    }

    #[test]
    fn a_second_request_replaces_the_first_and_cancel_ends_it() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.set(ShutdownKind::Poweroff, 600, None, t0, NOON_ISH_US).unwrap();
        let set = s.set(ShutdownKind::Reboot, 90, None, t0, NOON_ISH_US).unwrap();
        assert_eq!(
            set.log,
            "shutdown: reboot scheduled for 2026-12-07 11:01:30 UTC, in 1 min 30 s (replacing the poweroff \
             scheduled for 2026-12-07 11:10:00 UTC)"
        );
        assert_eq!(s.due(t0 + Duration::from_secs(90)).map(|d| d.0), Some(ShutdownKind::Reboot));
        assert_eq!(s.due(t0 + Duration::from_secs(600)), None, "the replaced one is gone");

        s.set(ShutdownKind::Halt, 45, None, t0, NOON_ISH_US).unwrap();
        let (line, reply) = s.cancel(Some("not today"));
        assert_eq!(
            line.as_deref(),
            Some("shutdown: the halt scheduled for 2026-12-07 11:00:45 UTC cancelled: \"not today\"")
        );
        assert_eq!(reply, "The halt scheduled for 2026-12-07 11:00:45 UTC cancelled.");
        assert_eq!(s.due(t0 + Duration::from_secs(3600)), None);
        assert_eq!(s.cancel(None), (None, "No shutdown was scheduled.".to_string()));
    }

    #[test]
    fn too_far_ahead_is_refused_and_keeps_what_was_scheduled() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.set(ShutdownKind::Reboot, 60, None, t0, NOON_ISH_US).unwrap();
        let e = s.set(ShutdownKind::Poweroff, u64::MAX / 2, None, t0, NOON_ISH_US).unwrap_err();
        assert!(e.ends_with("is too far ahead (at most 366 days)"), "{e}");
        assert_eq!(s.due(t0 + Duration::from_secs(60)).map(|d| d.0), Some(ShutdownKind::Reboot));
    }
}
