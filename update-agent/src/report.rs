//! What the agent records and reports: its [`Phase`], the update [`Staged`] in a slot, the
//! versions that [`RolledBack`], a download's [`Progress`], the last [`Staging`]'s figures, the
//! FleetLock server's last refusal ([`FleetLockRefusal`]), and the whole [`Status`] that
//! `berth-update status --json` prints. Slots are [`berth_slot::Slot`], written as `"a"`/`"b"`
//! (the state files of earlier agents read the same).

use berth_release::Timestamp;
use berth_slot::Slot;
use serde::{Deserialize, Serialize};

/// A [`Slot`] as JSON: its name, `"a"` or `"b"` (as the state file has always held it).
pub mod slot_name {
    use super::Slot;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes `slot` as its name.
    pub fn serialize<S: Serializer>(slot: &Slot, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(slot.name())
    }

    /// Reads a slot name (`a`, `b`, `A`, `B`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Slot, D::Error> {
        let name = String::deserialize(d)?;
        Slot::parse(&name).ok_or_else(|| D::Error::custom(format!("{name:?} is not a slot (a or b)")))
    }
}

/// What the agent is doing. It changes only through the state's guarded transitions (the
/// agent's `state.rs`), which refuse a change from a phase it cannot follow.
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

impl Phase {
    /// The name the state file and the status use (`rolled-back`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Checking => "checking",
            Phase::Downloading => "downloading",
            Phase::Staged => "staged",
            Phase::Rebooting => "rebooting",
            Phase::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An update written into a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The slot it waits in.
    #[serde(with = "slot_name")]
    pub slot: Slot,
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
    #[serde(with = "slot_name")]
    pub slot: Slot,
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

/// The FleetLock server's last refusal of this host's reboot lock (cleared once it is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLockRefusal {
    /// The protocol's error kind (`failed_lock`), `http_<status>` without one, or `transport`
    /// when the server was not reached.
    pub kind: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// The whole error, for people.
    pub message: String,
}

/// One slot as `status` shows it: live attributes from the GPT (`None` when it could not be
/// read) and the version the agent knows it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot.
    #[serde(with = "slot_name")]
    pub slot: Slot,
    /// Its partition label (`ROOT-A`).
    pub label: String,
    /// Its partition's device node.
    pub device: String,
    /// The version it holds, as far as the agent knows.
    pub version: Option<String>,
    /// GPT priority.
    pub priority: Option<u8>,
    /// GPT tries left.
    pub tries: Option<u8>,
    /// GPT successful flag.
    pub successful: Option<bool>,
}

impl SlotStatus {
    /// `(priority, tries, successful)`, when the GPT was read.
    pub fn attrs(&self) -> Option<(u8, u8, bool)> {
        Some((self.priority?, self.tries?, self.successful?))
    }
}

/// Everything `berth-update status --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// What the agent is doing.
    pub state: Phase,
    /// The booted slot.
    pub running: SlotStatus,
    /// The passive slot.
    pub other: SlotStatus,
    /// The channel's index URL.
    pub channel: Option<String>,
    /// The reboot strategy's name.
    pub strategy: String,
    /// The last check that reached a verdict.
    pub last_check: Option<Timestamp>,
    /// The last error, cleared by a successful check.
    pub last_error: Option<String>,
    /// Newest version the channel offers this host.
    pub available: Option<String>,
    /// The update waiting for its trial boot.
    pub staged: Option<Staged>,
    /// Versions that rolled back (or were left by `berth-update rollback`).
    pub rolled_back: Vec<RolledBack>,
    /// What the holder of the agent's lock is doing, when another process holds it.
    pub busy: Option<String>,
    /// The highest index sequence accepted.
    pub sequence: Option<u64>,
    /// The download in progress.
    pub download: Option<Progress>,
    /// The fault-injection point the agent waits at (builds with the `failpoints` feature).
    pub paused: Option<String>,
    /// Figures of the last staging.
    pub last_staging: Option<Staging>,
    /// Why the GPT could not be read.
    pub gpt_error: Option<String>,
    /// The FleetLock server's last refusal of the reboot lock.
    #[serde(default)]
    pub fleetlock: Option<FleetLockRefusal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State files written before slots were typed hold `"slot": "b"`: they read the same, and
    /// are written the same; a name that is no slot is refused.
    #[test]
    fn slots_are_written_as_their_names_and_old_records_still_read() {
        let old = r#"{"slot": "b", "version": "1.1.0", "at": "2026-01-02T03:04:05Z"}"#;
        let staged: Staged = serde_json::from_str(old).unwrap();
        assert_eq!(staged.slot, Slot::B);
        let back = serde_json::to_value(&staged).unwrap();
        assert_eq!(back["slot"], "b");
        let old = r#"{"version": "1.1.0", "slot": "a", "at": "2026-01-02T03:04:05Z", "manual": true}"#;
        let r: RolledBack = serde_json::from_str(old).unwrap();
        assert_eq!((r.slot, r.manual), (Slot::A, true));
        let e = serde_json::from_str::<Staged>(r#"{"slot": "c", "version": "1", "at": "2026-01-02T03:04:05Z"}"#);
        assert!(e.unwrap_err().to_string().contains("\"c\" is not a slot"));
    }

    #[test]
    fn phases_are_named_as_the_state_file_has_them() {
        for p in [Phase::Idle, Phase::Checking, Phase::Downloading, Phase::Staged, Phase::Rebooting, Phase::RolledBack]
        {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
        }
    }
}
