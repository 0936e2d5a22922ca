//! Fault injection for tests, compiled only with the `failpoints` cargo feature (the production
//! binary holds none of this: no file name, no point names). The QEMU power-cut test builds
//! berth-update with the feature and has the agent stop at a point, then cuts the power there.
//!
//! Points are armed in [`FAILPOINTS_FILE`] (on /run: a reboot or power cut disarms them), one
//! `POINT=ACTION` a line. Actions: `pause` records the point in the state (`paused` in the
//! status) and waits there until the process is killed; `error` fails the step there.

use std::path::Path;
use std::time::Duration;

use crate::agent::Agent;

/// Where points are armed.
pub const FAILPOINTS_FILE: &str = "/run/berth-update.failpoints";

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Record the point and wait until killed.
    Pause,
    /// Fail the step.
    Error,
}

/// The action `file`'s text arms at `point`, if any (lines that are not `POINT=ACTION` with a
/// known action are ignored).
pub fn armed(text: &str, point: &str) -> Option<Action> {
    text.lines().find_map(|l| {
        let (p, action) = l.split_once('=')?;
        match (p.trim() == point, action.trim()) {
            (true, "pause") => Some(Action::Pause),
            (true, "error") => Some(Action::Error),
            _ => None,
        }
    })
}

/// The action [`FAILPOINTS_FILE`] (or `file`) arms at `point`.
pub fn armed_in(file: &Path, point: &str) -> Option<Action> {
    armed(&std::fs::read_to_string(file).ok()?, point)
}

impl Agent {
    /// Failpoint `point`: does what [`FAILPOINTS_FILE`] arms there.
    pub fn fail_point(&mut self, point: &str) -> anyhow::Result<()> {
        match armed_in(Path::new(FAILPOINTS_FILE), point) {
            None => Ok(()),
            Some(Action::Error) => anyhow::bail!("failpoint {point:?}: an injected error ({FAILPOINTS_FILE})"),
            Some(Action::Pause) => {
                self.state.paused = Some(point.into());
                self.save();
                println!("failpoint {point:?}: pausing ({FAILPOINTS_FILE})");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_armed_by_its_own_line_only() {
        let text = "# the power-cut test\nverified=pause\nother = error\nbroken\nverified2=pause\n";
        assert_eq!(armed(text, "verified"), Some(Action::Pause));
        assert_eq!(armed(text, "other"), Some(Action::Error));
        assert_eq!(armed(text, "verified2"), Some(Action::Pause));
        assert_eq!(armed(text, "staged"), None);
        assert_eq!(armed("verified=explode", "verified"), None);
        assert_eq!(armed_in(Path::new("/nonexistent/failpoints"), "verified"), None);
    }
}
