//! What a host trusts, kept on STATE beside `state.json` in files of their own, so that a
//! corrupt or lost `state.json` loses neither:
//!
//! - `floor.json`: the replay floor (the highest index sequence accepted and the SHA-256 of
//!   that index). The floor used is the higher of this file's and `state.json`'s (M4).
//! - `keyset.json`: the newest key set accepted (berth_release::keyset), its signatures, and the
//!   configured root keys the walk started from. It is used only while the configuration names
//!   the same root keys; when an operator configures other root keys, the walk starts again
//!   from those (and reaches the same newest key set if they are on its chain).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use berth_release::keyset::{KeySet, Trust};
use berth_release::{Floor, TrustedKeys};
use serde::{Deserialize, Serialize};

use crate::http::FetchError;

const FLOOR_FILE: &str = "floor.json";
const KEYSET_FILE: &str = "keyset.json";

/// The replay floor of `floor.json`; `None` when there is none or it cannot be read (said so).
pub fn load_floor(dir: &Path) -> Option<Floor> {
    let path = dir.join(FLOOR_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("{}: {e}; the floor in state.json is used alone", path.display());
            None
        }
    }
}

/// Writes `floor.json` (temporary file, synced, renamed, directory synced) unless it holds `f`.
pub fn save_floor(dir: &Path, f: Floor) -> anyhow::Result<()> {
    if load_floor(dir) == Some(f) {
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(&f).context("encoding the replay floor")?;
    write_atomic(dir, FLOOR_FILE, &bytes)
}

/// `keyset.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    /// The configured root keys (sorted hex) and threshold the walk started from.
    anchor_keys: Vec<String>,
    anchor_threshold: usize,
    /// The key set's exact bytes, as fetched (JSON, so UTF-8).
    document: String,
    /// Its signature file, as fetched.
    signatures: String,
}

/// What the host trusts: the stored key set if it was reached from the configured root keys
/// `anchor`, else `anchor` alone.
pub fn load_trust(dir: &Path, anchor: &TrustedKeys) -> Trust {
    let path = dir.join(KEYSET_FILE);
    let Ok(bytes) = std::fs::read(&path) else { return Trust::anchor(anchor.clone()) };
    let stored: Stored = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: {e}; walking the key sets from the configured root keys", path.display());
            return Trust::anchor(anchor.clone());
        }
    };
    if stored.anchor_keys != anchor.keys_hex() || stored.anchor_threshold != anchor.threshold() {
        println!(
            "{}: reached from other root keys than the configured ones; walking the key sets from the configured keys",
            path.display()
        );
        return Trust::anchor(anchor.clone());
    }
    let ks: Result<KeySet, String> = serde_json::from_str::<KeySet>(&stored.document)
        .map_err(|e| e.to_string())
        .and_then(|ks| ks.check().map(|()| ks));
    match ks.map_err(|e| e.to_string()).and_then(|ks| Trust::from_keyset(ks).map_err(|e| e.to_string())) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}; walking the key sets from the configured root keys", path.display());
            Trust::anchor(anchor.clone())
        }
    }
}

/// Keeps the key set `document` (with `signatures`) reached from `anchor`.
pub fn save_keyset(dir: &Path, anchor: &TrustedKeys, document: &[u8], signatures: &[u8]) -> anyhow::Result<()> {
    let stored = Stored {
        anchor_keys: anchor.keys_hex(),
        anchor_threshold: anchor.threshold(),
        document: String::from_utf8_lossy(document).into_owned(),
        signatures: String::from_utf8_lossy(signatures).into_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&stored).context("encoding the key set")?;
    write_atomic(dir, KEYSET_FILE, &bytes)
}

/// Whether a fetch failed because the file does not exist (the end of the key set chain).
pub fn not_found(e: &FetchError) -> bool {
    matches!(e, FetchError::Final { why, .. } if why.contains("answered 404"))
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.write_all(b"\n")).and_then(|()| f.sync_all()).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}", tmp.display())
    })?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m4_the_floor_survives_a_corrupt_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = Floor { sequence: 9, index_sha256: Some(berth_release::index::Digest([1; 32])) };
        save_floor(dir.path(), f).unwrap();
        let mut st = crate::state::State::default();
        st.last_sequence = Some(9);
        st.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("state.json"), b"{ torn").unwrap();
        let st = crate::state::State::load(dir.path());
        assert_eq!(st.last_sequence, None, "state.json starts afresh");
        // The floor used by a check is the higher of both.
        assert_eq!(Floor::max(st.floor(), load_floor(dir.path())), Some(f));
        // A corrupt floor file leaves state.json's.
        std::fs::write(dir.path().join(FLOOR_FILE), b"[").unwrap();
        assert_eq!(load_floor(dir.path()), None);
    }

    #[test]
    fn h6_a_stored_key_set_is_used_only_from_the_same_configured_root() {
        use berth_release::keyset::{Role, SCHEMA};
        use berth_release::signature::{Signatures, public_key_hex, secret_key_from_seed};
        let dir = tempfile::tempdir().unwrap();
        let (r, s, other) =
            (secret_key_from_seed([1; 32]), secret_key_from_seed([2; 32]), secret_key_from_seed([3; 32]));
        let anchor = TrustedKeys::new(&[public_key_hex(&r)], 1).unwrap();
        assert_eq!(load_trust(dir.path(), &anchor).version(), 0);
        let ks = KeySet {
            schema: SCHEMA,
            version: 4,
            issued: berth_release::Timestamp(0),
            expires: berth_release::Timestamp(10),
            root: Role { keys: vec![public_key_hex(&r)], threshold: 1 },
            signing: Role { keys: vec![public_key_hex(&s)], threshold: 1 },
        };
        let bytes = ks.to_bytes();
        let sig = Signatures::sign_all(&bytes, std::slice::from_ref(&r)).to_bytes();
        save_keyset(dir.path(), &anchor, &bytes, &sig).unwrap();
        assert_eq!(load_trust(dir.path(), &anchor).version(), 4);
        let other = TrustedKeys::new(&[public_key_hex(&other)], 1).unwrap();
        assert_eq!(load_trust(dir.path(), &other).version(), 0);
    }
}
