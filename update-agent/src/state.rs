//! What the agent remembers across runs and reboots, on STATE (`/var/lib/berth/update/
//! state.json`): the highest index sequence accepted (replay protection), what each slot
//! holds, what is staged, which versions rolled back, the last check and error, and the
//! progress of a download. Written whole to a temporary file and renamed, so a power cut
//! leaves the old or the new file, never a mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_release::Timestamp;
use serde::{Deserialize, Serialize};

/// Where the state lives (on STATE, through the /var bind).
pub const STATE_DIR: &str = "/var/lib/berth/update";
const STATE_FILE: &str = "state.json";
/// Held while checking or staging, so the daemon and a command never stage at once.
pub const LOCK_FILE: &str = "/run/berth-update.lock";

/// Opens and locks `path` (exclusive flock): waiting for it with `wait`, else `None` at once
/// when another process holds it.
pub fn lock_file(path: &str, wait: bool) -> anyhow::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use nix::fcntl::{Flock, FlockArg};
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    let how = if wait { FlockArg::LockExclusive } else { FlockArg::LockExclusiveNonblock };
    match Flock::lock(f, how) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(anyhow::anyhow!("locking {path}: {e}")),
    }
}

/// Holds the agent's lock (waiting for it) while alive: for the daemon and mark-good, whose only
/// rival is a command that gives up at once.
pub fn wait_for_lock() -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    lock_file(LOCK_FILE, true)?.context("the lock was not taken")
}

pub use berth_update::report::{FleetLockRefusal, Phase, Progress, RolledBack, Staged, Staging};

/// A phase change the state machine does not make: from `from`, the agent cannot go to `to`
/// (zincati's update agent asserts its transitions the same way; here the caller gets an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent's state is {from}: it does not go to {to} from there")]
pub struct PhaseError {
    /// The phase the agent was in.
    pub from: Phase,
    /// The phase asked for.
    pub to: Phase,
}

/// Phases at rest: nothing is in progress.
const AT_REST: &[Phase] = &[Phase::Idle, Phase::Staged, Phase::RolledBack];

/// The remembered state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// What the agent is doing: changed only by the transitions below.
    #[serde(rename = "state")]
    phase: Phase,
    /// The highest index sequence accepted (also kept in `floor.json`, see [`crate::trust`]).
    pub last_sequence: Option<u64>,
    /// SHA-256 of the index accepted with `last_sequence`: an equal sequence is accepted again
    /// only with these bytes.
    pub last_index_sha256: Option<berth_release::index::Digest>,
    /// The last check that reached a verdict (success or refusal).
    pub last_check: Option<Timestamp>,
    /// The last error, cleared by a successful check.
    pub last_error: Option<String>,
    /// Newest version the channel offers this host.
    pub available: Option<String>,
    /// Version held by each slot (`a`, `b`), as far as the agent knows.
    pub slots: BTreeMap<String, String>,
    /// The update waiting for its trial boot.
    pub staged: Option<Staged>,
    /// Versions that rolled back: not installed again unless newer ones appear or forced.
    pub rolled_back: Vec<RolledBack>,
    /// The last rollback is the latest news (no update staged since): the state at rest is
    /// `rolled-back` rather than `idle`.
    pub rollback_news: bool,
    /// The download in progress.
    pub download: Option<Progress>,
    /// Set while the agent waits at a fault-injection point (builds with the `failpoints`
    /// feature only).
    pub paused: Option<String>,
    /// Figures of the last staging.
    pub last_staging: Option<Staging>,
    /// The FleetLock server's last refusal of the reboot lock; cleared when it is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleetlock: Option<FleetLockRefusal>,
}

impl State {
    /// The replay floor as this file records it.
    pub fn floor(&self) -> Option<berth_release::Floor> {
        self.last_sequence.map(|sequence| berth_release::Floor { sequence, index_sha256: self.last_index_sha256 })
    }

    /// Records `f` as the replay floor.
    pub fn set_floor(&mut self, f: berth_release::Floor) {
        self.last_sequence = Some(f.sequence);
        self.last_index_sha256 = f.index_sha256;
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state; a missing file is a fresh state, an unreadable one is set aside (and
    /// said so) rather than stopping updates for ever.
    pub fn load(dir: &Path) -> State {
        let path = State::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = dir.join("state.json.corrupt");
                    eprintln!("{}: {e}; moved to {} and starting afresh", path.display(), aside.display());
                    let _ = std::fs::rename(&path, &aside);
                    State::default()
                }
            },
            Err(_) => State::default(),
        }
    }

    /// Writes the state: a temporary file, synced, renamed over the old one, directory synced.
    /// On any failure (a full STATE) the temporary file is removed and the old state stays.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = State::path(dir);
        let tmp = dir.join(".state.json.tmp");
        let mut bytes = serde_json::to_vec_pretty(self).context("encoding the state")?;
        bytes.push(b'\n');
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(&bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing the directory {}", dir.display()))?;
        Ok(())
    }

    /// Whether `version` rolled back before (or was left by `berth-update rollback`).
    pub fn rolled_back(&self, version: &str) -> bool {
        self.rolled_back.iter().any(|r| r.version == version)
    }

    /// Forgets `available` when it is not above `running` (the update that was available is
    /// the one running now: it stays "available" only until the next check otherwise).
    pub fn drop_stale_available(&mut self, running: &str) {
        if self.available.as_deref().is_some_and(|a| !berth_release::index::compare_versions(a, running).is_gt()) {
            self.available = None;
        }
    }

    /// Records an error (and prints it for the journal).
    pub fn error(&mut self, e: &anyhow::Error) {
        let msg = crate::one_line(e);
        println!("error: {msg}");
        self.last_error = Some(msg);
    }

    /// What the agent is doing.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn go(&mut self, from: &[Phase], to: Phase) -> Result<(), PhaseError> {
        if !from.contains(&self.phase) {
            return Err(PhaseError { from: self.phase, to });
        }
        self.phase = to;
        Ok(())
    }

    /// At rest (idle, staged, rolled-back) to checking the channel.
    pub fn begin_check(&mut self) -> Result<(), PhaseError> {
        self.go(AT_REST, Phase::Checking)
    }

    /// Checking to downloading `progress`'s version (its slot was just cleared: nothing is
    /// staged, and the last rollback is no longer the news).
    pub fn begin_download(&mut self, progress: Progress) -> Result<(), PhaseError> {
        self.go(&[Phase::Checking], Phase::Downloading)?;
        self.staged = None;
        self.rollback_news = false;
        self.download = Some(progress);
        Ok(())
    }

    /// Downloading to staged: `staged` waits in its slot.
    pub fn finish_staging(&mut self, staged: Staged) -> Result<(), PhaseError> {
        self.go(&[Phase::Downloading], Phase::Staged)?;
        self.slots.insert(staged.slot.name().into(), staged.version.clone());
        self.staged = Some(staged);
        self.download = None;
        Ok(())
    }

    /// Staged to rebooting into the staged slot.
    pub fn begin_reboot(&mut self) -> Result<(), PhaseError> {
        self.go(&[Phase::Staged], Phase::Rebooting)
    }

    /// At rest to rolled-back: the update in `record.slot` did not boot to health (noticed
    /// only between runs, never mid-download or mid-reboot).
    pub fn record_rollback(&mut self, record: RolledBack, message: String) -> Result<(), PhaseError> {
        self.go(AT_REST, Phase::RolledBack)?;
        self.slots.remove(record.slot.name());
        if !self.rolled_back(&record.version) {
            self.rolled_back.push(record);
        }
        self.staged = None;
        self.rollback_news = true;
        self.last_error = Some(message);
        Ok(())
    }

    /// From any phase back to rest (the end of a run, or giving up on one): staged while an
    /// update waits, rolled-back while a rollback is the latest news, else idle.
    pub fn rest(&mut self) {
        self.download = None;
        self.phase = if self.staged.is_some() {
            Phase::Staged
        } else if self.rollback_news {
            Phase::RolledBack
        } else {
            Phase::Idle
        };
    }

    /// For the holder of the agent's lock: a phase in progress was left by a run that ended
    /// without coming to rest (a crash, a power cut), since only the lock's holder makes one.
    /// Back to rest, and no fault-injection point waits any more.
    pub fn settle_stale(&mut self) {
        self.paused = None;
        if !AT_REST.contains(&self.phase) {
            self.rest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command asks for the lock without waiting: while the daemon holds it (a long
    /// download), the answer is "busy" at once, not a hang.
    #[test]
    fn m3_the_lock_is_not_waited_for_by_commands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let path = path.to_str().unwrap();
        let daemon = lock_file(path, true).unwrap().unwrap();
        let started = std::time::Instant::now();
        assert!(lock_file(path, false).unwrap().is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        drop(daemon);
        assert!(lock_file(path, false).unwrap().is_some());
    }

    #[test]
    fn save_and_load_round_trip_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()), State::default());
        let mut s = State { last_sequence: Some(4), phase: Phase::Staged, ..State::default() };
        s.slots.insert("a".into(), "1.0.0".into());
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()), s);
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"state\": \"staged\""), "{text}");
        std::fs::write(dir.path().join("state.json"), b"{ torn").unwrap();
        assert_eq!(State::load(dir.path()), State::default());
        assert!(dir.path().join("state.json.corrupt").exists());
    }

    fn progress() -> Progress {
        Progress { version: "2.0.0".into(), received: 0, size: 10, written: 0, image_size: 20 }
    }

    /// The happy path, check to staged to rebooting, with each step taken only from the phase
    /// before it; any phase comes back to rest.
    #[test]
    fn phases_change_only_from_the_phase_before_them() {
        let mut s = State::default();
        let staged = Staged { slot: berth_slot::Slot::B, version: "2.0.0".into(), at: Timestamp(0) };
        assert_eq!(s.begin_download(progress()), Err(PhaseError { from: Phase::Idle, to: Phase::Downloading }));
        assert_eq!(s.finish_staging(staged.clone()), Err(PhaseError { from: Phase::Idle, to: Phase::Staged }));
        assert_eq!(s.begin_reboot(), Err(PhaseError { from: Phase::Idle, to: Phase::Rebooting }));
        s.begin_check().unwrap();
        assert_eq!(s.begin_check(), Err(PhaseError { from: Phase::Checking, to: Phase::Checking }));
        s.begin_download(progress()).unwrap();
        assert_eq!(s.phase(), Phase::Downloading);
        let r = RolledBack { version: "1.5.0".into(), slot: berth_slot::Slot::B, at: Timestamp(0), manual: false };
        let e = s.record_rollback(r.clone(), "x".into()).unwrap_err();
        assert_eq!(e.to_string(), "the agent's state is downloading: it does not go to rolled-back from there");
        s.finish_staging(staged.clone()).unwrap();
        assert_eq!((s.phase(), s.download.as_ref(), s.staged.as_ref()), (Phase::Staged, None, Some(&staged)));
        assert_eq!(s.slots.get("b").map(String::as_str), Some("2.0.0"));
        s.begin_reboot().unwrap();
        assert_eq!(s.begin_check(), Err(PhaseError { from: Phase::Rebooting, to: Phase::Checking }));
        // A reboot that did not happen: back to staged.
        s.rest();
        assert_eq!(s.phase(), Phase::Staged);
        s.record_rollback(r, "rolled back".into()).unwrap();
        assert_eq!((s.phase(), s.staged.as_ref(), s.slots.get("b")), (Phase::RolledBack, None, None));
        assert!(s.rolled_back("1.5.0"));
    }

    /// The lock's holder finds a phase in progress that nobody is in: left by a power cut.
    #[test]
    fn a_phase_left_in_progress_by_a_cut_is_settled_by_the_locks_holder() {
        let mut s = State::default();
        s.begin_check().unwrap();
        s.begin_download(progress()).unwrap();
        s.paused = Some("verified".into());
        s.settle_stale();
        assert_eq!((s.phase(), s.download.as_ref(), s.paused.as_ref()), (Phase::Idle, None, None));
        s.rollback_news = true;
        s.settle_stale();
        assert_eq!(s.phase(), Phase::Idle, "at rest already: left alone");
    }

    /// A state file written before slots were typed reads the same (and writes the same).
    #[test]
    fn a_state_file_of_an_earlier_agent_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{
  "state": "staged",
  "last_sequence": 7,
  "slots": {"a": "1.0.0", "b": "1.1.0"},
  "staged": {"slot": "b", "version": "1.1.0", "at": "2026-11-30T10:00:00Z"},
  "rolled_back": [{"version": "1.0.5", "slot": "b", "at": "2026-11-29T10:00:00Z", "manual": true}],
  "rollback_news": false,
  "paused": null
}
"#;
        std::fs::write(dir.path().join("state.json"), old).unwrap();
        let s = State::load(dir.path());
        assert_eq!(s.phase(), Phase::Staged);
        assert_eq!(s.staged.as_ref().map(|s| s.slot), Some(berth_slot::Slot::B));
        assert_eq!(s.rolled_back[0].slot, berth_slot::Slot::B);
        assert!(s.rolled_back[0].manual);
        s.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"slot\": \"b\"") && text.contains("\"state\": \"staged\""), "{text}");
        assert_eq!(State::load(dir.path()), s);
    }
}
