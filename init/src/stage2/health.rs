//! The boot deadline (docs/design.md §2 "A boot that never reaches healthy"): `boot-complete.target`
//! must be reached, every unit it requires active, within `health-timeout` of update.toml
//! (berth-release's `UpdateConfig`, default 10 minutes) after stage 2 began.
//!
//! On a slot on trial (its GPT successful bit clear: bootmgr has already taken one of its
//! tries) a failure or a missed deadline reboots through the ordered shutdown; the next boot
//! costs another try, and once they are gone bootmgr falls back to the other slot. On a slot
//! marked successful (or when the trial state cannot be read) it is only logged: a good
//! machine must not reboot in a loop. `berth-mark-good.service` (After= and Requires=
//! boot-complete.target) marks the slot good once the target is reached.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_release::config::UpdateConfig;
use berth_release::time::human_duration;
use berth_slot::Slot;

use crate::manager::{BOOT_COMPLETE, BootHealth, Manager};
use crate::sys::log;

/// Whether the booted slot is on trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trial {
    /// Its successful bit is clear: a failure reboots.
    Testing { slot: Slot, tries: u8 },
    /// Marked successful: a failure is only logged.
    Good(Slot),
    /// Not known, and why: treated as good.
    Unknown(String),
}

impl Trial {
    /// Reads the booted slot's attributes from the GPT of the disk `/` is on.
    pub fn read(slot: &str) -> Trial {
        let Some(s) = Slot::parse(slot) else {
            return Trial::Unknown(format!("booted slot {slot:?} unknown (no berth.slot= on the kernel command line)"));
        };
        let attrs = super::storage::root_partition().and_then(|root| super::storage::partition::slot_attrs(&root, s));
        match attrs {
            Ok(a) if a.successful => Trial::Good(s),
            Ok(a) => Trial::Testing { slot: s, tries: a.tries },
            Err(e) => Trial::Unknown(format!("slot {} attributes unreadable: {e}", s.name())),
        }
    }
}

/// What the deadline does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Not decided yet.
    Wait,
    /// Reached in time: nothing more to watch.
    Done,
    /// Say so (the text follows `health: `); nothing else.
    Log(String),
    /// Say so and reboot.
    Reboot(String),
}

/// The decision: `health` is where boot-complete.target stands, `elapsed` the time since
/// stage 2 began, `timeout` the deadline (`None`: none, or already reported), `waiting` the
/// jobs still queued (for the message).
pub fn decide(
    trial: &Trial,
    health: &BootHealth,
    elapsed: Duration,
    timeout: Option<Duration>,
    waiting: &[String],
) -> Action {
    let problem = match health {
        BootHealth::Reached => return Action::Done,
        BootHealth::Failed(why) => format!("{BOOT_COMPLETE} failed: {why}"),
        BootHealth::Pending => match timeout {
            Some(t) if elapsed >= t => {
                let mut m = format!("{BOOT_COMPLETE} not reached within {}", human_duration(t));
                if !waiting.is_empty() {
                    const SHOWN: usize = 8;
                    let mut names = waiting.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
                    if waiting.len() > SHOWN {
                        names.push_str(&format!(" and {} more", waiting.len() - SHOWN));
                    }
                    m.push_str(&format!(" (still waiting for {names})"));
                }
                m
            }
            _ => return Action::Wait,
        },
    };
    match trial {
        Trial::Testing { slot, .. } => Action::Reboot(format!(
            "{problem}; slot {} is on trial, rebooting so that the boot manager can fall back",
            slot.name()
        )),
        Trial::Good(slot) => {
            Action::Log(format!("{problem}; slot {} is marked successful, not rebooting", slot.name()))
        }
        Trial::Unknown(why) => Action::Log(format!("{problem}; {why}, not rebooting")),
    }
}

/// The deadline as stage 2's main loop keeps it.
pub struct Deadline {
    trial: Trial,
    timeout: Option<Duration>,
    started: Instant,
    finished: bool,
}

impl Deadline {
    /// Reads update.toml (after the /etc overlay is mounted) and the booted slot's state;
    /// logs one line with both.
    pub fn start(slot: &str, started: Instant) -> Deadline {
        let default = UpdateConfig::default().health_timeout;
        let timeout = match UpdateConfig::load(Path::new("/")) {
            Ok(c) => c.health_timeout,
            Err(e) => {
                log::line(&format!("health: {e}; using the default health-timeout {}", human_duration(default)));
                default
            }
        };
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let trial = Trial::read(slot);
        let deadline = match timeout {
            Some(t) => format!("{BOOT_COMPLETE} must be reached within {}", human_duration(t)),
            None => format!("no deadline for {BOOT_COMPLETE} (health-timeout 0)"),
        };
        let state = match &trial {
            Trial::Testing { slot, tries } => {
                format!("slot {} is on trial ({tries} tries left after this boot)", slot.name())
            }
            Trial::Good(slot) => format!("slot {} is marked successful (a failure is only logged)", slot.name()),
            Trial::Unknown(why) => format!("{why} (a failure is only logged)"),
        };
        log::line(&format!("health: {state}; {deadline}"));
        Deadline { trial, timeout, started, finished: false }
    }

    /// Checks the boot; returns the reason when the machine must reboot (once).
    pub fn check(&mut self, manager: &Manager) -> Option<String> {
        if self.finished {
            return None;
        }
        let health = manager.boot_health();
        let elapsed = self.started.elapsed();
        let late = matches!(health, BootHealth::Pending) && self.timeout.is_some_and(|t| elapsed >= t);
        let waiting = if late { manager.pending_jobs() } else { Vec::new() };
        match decide(&self.trial, &health, elapsed, self.timeout, &waiting) {
            Action::Wait => None,
            Action::Done => {
                self.finished = true;
                None
            }
            Action::Log(m) => {
                log::line(&format!("health: {m}"));
                // A missed deadline is said once; a failure after it is said too.
                match health {
                    BootHealth::Pending => self.timeout = None,
                    _ => self.finished = true,
                }
                None
            }
            Action::Reboot(m) => {
                log::line(&format!("health: {m}"));
                self.finished = true;
                Some(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN10: Duration = Duration::from_secs(600);

    fn trial() -> Trial {
        Trial::Testing { slot: Slot::B, tries: 2 }
    }

    #[test]
    fn reached_in_time_is_done_whatever_the_slot() {
        for t in [trial(), Trial::Good(Slot::A), Trial::Unknown("x".into())] {
            assert_eq!(decide(&t, &BootHealth::Reached, Duration::from_secs(5), Some(MIN10), &[]), Action::Done);
            // Reached late (a good slot's deadline was already reported): still done.
            assert_eq!(decide(&t, &BootHealth::Reached, MIN10 * 2, None, &[]), Action::Done);
        }
    }

    #[test]
    fn pending_before_the_deadline_waits() {
        let w = ["containerd.service".to_string()];
        assert_eq!(
            decide(&trial(), &BootHealth::Pending, MIN10 - Duration::from_secs(1), Some(MIN10), &w),
            Action::Wait
        );
        assert_eq!(decide(&trial(), &BootHealth::Pending, MIN10 * 10, None, &w), Action::Wait);
    }

    #[test]
    fn failure_on_trial_reboots() {
        let failed = BootHealth::Failed("berth-test-health.service failed (exit status 1)".into());
        assert_eq!(
            decide(&trial(), &failed, Duration::from_secs(30), Some(MIN10), &[]),
            Action::Reboot(
                "boot-complete.target failed: berth-test-health.service failed (exit status 1); slot b is on \
                 trial, rebooting so that the boot manager can fall back"
                    .into()
            )
        );
    }

    #[test]
    fn deadline_on_trial_reboots_and_names_what_it_waits_for() {
        let w: Vec<String> = (0..10).map(|i| format!("u{i}.service")).collect();
        assert_eq!(
            decide(&trial(), &BootHealth::Pending, MIN10, Some(MIN10), &w[..1]),
            Action::Reboot(
                "boot-complete.target not reached within 10min (still waiting for u0.service); slot b is on \
                 trial, rebooting so that the boot manager can fall back"
                    .into()
            )
        );
        let Action::Reboot(m) = decide(&trial(), &BootHealth::Pending, MIN10 * 2, Some(MIN10), &w) else {
            panic!("no reboot")
        };
        assert!(m.contains("u7.service and 2 more)"), "{m}");
    }

    #[test]
    fn on_a_good_or_unknown_slot_it_is_only_logged() {
        let failed = BootHealth::Failed("x.service failed".into());
        assert_eq!(
            decide(&Trial::Good(Slot::A), &failed, Duration::ZERO, Some(MIN10), &[]),
            Action::Log(
                "boot-complete.target failed: x.service failed; slot a is marked successful, not rebooting".into()
            )
        );
        assert_eq!(
            decide(&Trial::Good(Slot::A), &BootHealth::Pending, MIN10, Some(MIN10), &[]),
            Action::Log(
                "boot-complete.target not reached within 10min; slot a is marked successful, not rebooting".into()
            )
        );
        let unknown = Trial::Unknown("booted slot \"?\" unknown".into());
        assert!(
            matches!(decide(&unknown, &failed, Duration::ZERO, None, &[]), Action::Log(m) if m.ends_with("unknown, not rebooting"))
        );
    }
}
