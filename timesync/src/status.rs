//! The contract between berth-timesync and whoever needs a real clock (the update agent):
//! `/run/berth/timesync/synchronized`, written (temporary file, rename) each time the clock was
//! set from a server, or once when `servers = []` says the clock is trusted as it is. On /run,
//! so every boot starts without it. And the clock floor: `/usr/lib/clock-epoch`, whose mtime
//! the builder sets to the image's build time (`SOURCE_DATE_EPOCH`, systemd's convention), so
//! a clock before it is known to be wrong.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_release::Timestamp;
use serde::{Deserialize, Serialize};

/// The directory of the status file, relative to the root.
pub const STATUS_DIR: &str = "run/berth/timesync";
/// The status file's name.
pub const STATUS_FILE: &str = "synchronized";
/// The file whose mtime is the clock floor, relative to the root.
pub const CLOCK_EPOCH: &str = "usr/lib/clock-epoch";

/// What the status file holds (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synchronized {
    /// When the clock was set (after setting it).
    pub time: Timestamp,
    /// The server the time came from (`name (address)`), or `none` with `servers = []`.
    pub server: String,
    /// How far the clock was off (what was added to it), in seconds.
    pub offset_seconds: f64,
    /// The round trip to the server, in seconds.
    pub delay_seconds: f64,
    /// The server's stratum (0 with `servers = []`).
    pub stratum: u8,
    /// `step` (clock_settime), `slew` (adjtime), `none` (not set: `servers = []`, or a dry run).
    pub adjustment: String,
}

/// Why the clock is not to be believed yet.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// berth-timesync has not set the clock since this boot.
    #[error("berth-timesync has not set the clock since boot ({} does not exist)", .0.display())]
    NotSynchronized(PathBuf),
    /// The status file cannot be read.
    #[error("{}: {why}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The clock reads a time before the image was built.
    #[error("the clock reads {now}, before this image was built ({floor})")]
    BeforeFloor {
        /// The clock.
        now: Timestamp,
        /// The image's build time.
        floor: Timestamp,
    },
}

/// The status file under `root`.
pub fn status_path(root: &Path) -> PathBuf {
    root.join(STATUS_DIR).join(STATUS_FILE)
}

/// The image's build time (the mtime of [`CLOCK_EPOCH`] under `root`), if the image has it.
pub fn clock_floor(root: &Path) -> Option<Timestamp> {
    let m = std::fs::metadata(root.join(CLOCK_EPOCH)).ok()?.modified().ok()?;
    Some(Timestamp::from(m))
}

/// Whether the clock may be believed at `now`: berth-timesync has set it this boot and it is
/// not before the image's build time. Returns what the status file says.
pub fn clock_synchronized_at(root: &Path, now: SystemTime) -> Result<Synchronized, ClockError> {
    let path = status_path(root);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ClockError::NotSynchronized(path)),
        Err(e) => return Err(ClockError::Unreadable { path, why: e.to_string() }),
    };
    let s: Synchronized =
        serde_json::from_str(&text).map_err(|e| ClockError::Unreadable { path: path.clone(), why: e.to_string() })?;
    let now = Timestamp::from(now);
    if let Some(floor) = clock_floor(root)
        && now < floor
    {
        return Err(ClockError::BeforeFloor { now, floor });
    }
    Ok(s)
}

/// [`clock_synchronized_at`] for this machine, now.
pub fn clock_synchronized() -> Result<Synchronized, ClockError> {
    clock_synchronized_at(Path::new("/"), SystemTime::now())
}

/// Writes the status file under `root` (temporary file, fsync, rename).
pub fn write(root: &Path, s: &Synchronized) -> std::io::Result<()> {
    let dir = root.join(STATUS_DIR);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{STATUS_FILE}.tmp"));
    let mut text = serde_json::to_string_pretty(s).map_err(std::io::Error::other)?;
    text.push('\n');
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(STATUS_FILE))
}

/// Seconds since the epoch as a [`SystemTime`] (for floors and tests).
pub fn system_time(t: Timestamp) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(t.0 as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_secs(t.0.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Synchronized {
        Synchronized {
            time: Timestamp(1_796_583_600),
            server: "127.0.0.1:123".into(),
            offset_seconds: 0.25,
            delay_seconds: 0.001,
            stratum: 8,
            adjustment: "slew".into(),
        }
    }

    #[test]
    fn the_status_file_and_the_floor() {
        let root = tempfile::tempdir().unwrap();
        let now = system_time(Timestamp(1_796_583_700));
        let e = clock_synchronized_at(root.path(), now).unwrap_err();
        assert!(matches!(e, ClockError::NotSynchronized(_)), "{e}");
        assert!(e.to_string().contains("run/berth/timesync/synchronized does not exist"), "{e}");

        write(root.path(), &sample()).unwrap();
        assert_eq!(clock_synchronized_at(root.path(), now).unwrap(), sample());

        // The image was built after what the clock says: not believed.
        let epoch = root.path().join(CLOCK_EPOCH);
        std::fs::create_dir_all(epoch.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&epoch).unwrap();
        f.set_modified(system_time(Timestamp(1_796_583_800))).unwrap();
        assert_eq!(clock_floor(root.path()), Some(Timestamp(1_796_583_800)));
        let e = clock_synchronized_at(root.path(), now).unwrap_err();
        assert!(e.to_string().contains("before this image was built (2026-12-06T19:03:20Z)"), "{e}");
        assert!(clock_synchronized_at(root.path(), system_time(Timestamp(1_796_583_800))).is_ok());

        std::fs::write(status_path(root.path()), "{").unwrap();
        let e = clock_synchronized_at(root.path(), system_time(Timestamp(1_796_583_900))).unwrap_err();
        assert!(matches!(e, ClockError::Unreadable { .. }), "{e}");
    }
}
