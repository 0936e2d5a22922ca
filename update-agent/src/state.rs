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

/// What the agent is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing to do, or waiting for the next check.
    #[default]
    Idle,
    /// Fetching and verifying the index.
    Checking,
    /// Streaming an image into the passive slot.
    Downloading,
    /// An update waits in the passive slot for the reboot.
    Staged,
    /// Rebooting into the staged slot.
    Rebooting,
    /// The last update failed its trial boots; the machine is back on the old slot.
    RolledBack,
}

/// An update written into a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// `a` or `b`.
    pub slot: String,
    /// The version in it.
    pub version: String,
    /// When it was staged.
    pub at: Timestamp,
}

/// A version that did not boot to health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The version.
    pub version: String,
    /// The slot it was tried in.
    pub slot: String,
    /// When the rollback was noticed.
    pub at: Timestamp,
    /// `berth-update rollback` left it (held back by the operator), rather than its trial boots
    /// failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// A download in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The version.
    pub version: String,
    /// Compressed bytes received.
    pub received: u64,
    /// Compressed bytes in all.
    pub size: u64,
    /// Image bytes written to the slot.
    pub written: u64,
    /// Image bytes in all.
    pub image_size: u64,
}

/// Figures of the last staging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staging {
    /// The version.
    pub version: String,
    /// Image bytes written.
    pub image_bytes: u64,
    /// Compressed bytes downloaded.
    pub downloaded_bytes: u64,
    /// Download, decompress and write, seconds.
    pub write_seconds: f64,
    /// Image MiB per second of that.
    pub write_mib_per_s: f64,
    /// Decoder threads (one per CPU, at most four).
    #[serde(default)]
    pub decoders: usize,
    /// CPU seconds of receiving, checking and cutting the compressed stream into frames (the
    /// stages overlap: the three CPU times may add up to more than `write_seconds`).
    #[serde(default)]
    pub receive_cpu_seconds: f64,
    /// CPU seconds of decompressing, all decoders together.
    #[serde(default)]
    pub decompress_cpu_seconds: f64,
    /// CPU seconds of writing to the partition and syncing it.
    #[serde(default)]
    pub write_cpu_seconds: f64,
    /// Read back and hash, seconds.
    pub verify_seconds: f64,
}

/// The remembered state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// What the agent is doing.
    pub state: Phase,
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
    /// Set while the agent waits at a fault-injection point (`BERTH_UPDATE_PAUSE`).
    pub paused: Option<String>,
    /// Figures of the last staging.
    pub last_staging: Option<Staging>,
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

    /// Back to rest: idle, or rolled-back while a rollback is the latest news.
    pub fn rest(&mut self) {
        self.download = None;
        self.state = if self.staged.is_some() {
            Phase::Staged
        } else if self.rollback_news {
            Phase::RolledBack
        } else {
            Phase::Idle
        };
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
        let mut s = State { last_sequence: Some(4), state: Phase::Staged, ..State::default() };
        s.slots.insert("a".into(), "1.0.0".into());
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()), s);
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"state\": \"staged\""), "{text}");
        std::fs::write(dir.path().join("state.json"), b"{ torn").unwrap();
        assert_eq!(State::load(dir.path()), State::default());
        assert!(dir.path().join("state.json.corrupt").exists());
    }
}
