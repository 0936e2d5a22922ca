//! What a host trusts, kept on STATE beside `state.json` in files of their own, so that a
//! corrupt or lost `state.json` loses neither:
//!
//! - `floor.json`: the replay floor (the highest index sequence accepted and the SHA-256 of
//!   that index). The floor used is the higher of this file's and `state.json`'s (M4).
//! - `keyset.json`: the newest key set accepted (berth_release::keyset), its signatures, and the
//!   configured root keys the walk started from. It is used only while the configuration names
//!   the same root keys; when an operator configures other root keys, the walk starts again
//!   from those (and reaches the same newest key set if they are on its chain).
//!
//! The walk fetches `keys/1.json`, `keys/2.json`, … until one is missing ([`fetch_keyset`]):
//! 404, or 403 as an object store answers for a missing object when the reader may not list
//! the bucket (S3 without `s3:ListBucket`, so every public bucket).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use berth_release::keyset::{KeySet, MAX_KEYSET_BYTES, Trust};
use berth_release::repo::{artifact_url, keyset_path, signature_url};
use berth_release::signature::MAX_SIGNATURE_BYTES;
use berth_release::{Floor, TrustedKeys};
use serde::{Deserialize, Serialize};

use crate::http::{FetchError, Http};

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

/// Whether a fetch failed because the file does not exist (the end of the key set chain): 404,
/// or 403, which S3 answers for a missing object when the reader lacks `s3:ListBucket` (its
/// GetObject reference). Failing closed: a key set hidden by a 403 only means the next index
/// is "signed by an unknown key". A 5xx is retried, then an error.
pub fn not_found(e: &FetchError) -> bool {
    matches!(e, FetchError::Final { why, .. } if why.ends_with("answered 404") || why.ends_with("answered 403"))
}

/// Key set `version` of the repository at `base` and its signatures, or `None` when it does
/// not exist ([`not_found`]): one step of the walk (berth_release::keyset::follow).
pub fn fetch_keyset(http: &Http, base: &str, version: u64) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let url = artifact_url(base, &keyset_path(version));
    let bytes = match http.get_small(&url, MAX_KEYSET_BYTES as u64) {
        Ok(b) => b,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let sig = http.get_small(&signature_url(&url), MAX_SIGNATURE_BYTES as u64)?;
    Ok(Some((bytes, sig)))
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

    /// The walk from the configured root over a repository on an object store: key set 1
    /// exists, key set 2 answers 403 AccessDenied (S3's answer for a missing object to a reader
    /// without ListBucket): the walk ends at 1, as it does on 404. A 500 still fails the check.
    #[test]
    fn the_key_set_walk_ends_on_403_as_on_404_and_fails_on_500() {
        use berth_release::keyset::{self, Role, SCHEMA};
        use berth_release::signature::{Signatures, public_key_hex, secret_key_from_seed};
        use berth_testkit::{Response, Server};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU16, Ordering};
        let (root, signing) = (secret_key_from_seed([1; 32]), secret_key_from_seed([2; 32]));
        let anchor = TrustedKeys::new(&[public_key_hex(&root)], 1).unwrap();
        let ks = KeySet {
            schema: SCHEMA,
            version: 1,
            issued: berth_release::Timestamp(0),
            expires: berth_release::Timestamp(i64::from(u32::MAX)),
            root: Role { keys: vec![public_key_hex(&root)], threshold: 1 },
            signing: Role { keys: vec![public_key_hex(&signing)], threshold: 1 },
        };
        let doc = ks.to_bytes();
        let sig = Signatures::sign_all(&doc, std::slice::from_ref(&root)).to_bytes();
        let missing = Arc::new(AtomicU16::new(403));
        let answer = missing.clone();
        let server = Server::start(move |r| match r.path() {
            "/repo/keys/1.json" => Response::ok(doc.clone()).into(),
            "/repo/keys/1.json.sig" => Response::ok(sig.clone()).into(),
            _ => match answer.load(Ordering::SeqCst) {
                403 => Response::status(403)
                    .header("content-type", "application/xml")
                    .body("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
                    .into(),
                s => Response::status(s).into(),
            },
        })
        .unwrap();
        let http = Http::with_retries(2, std::time::Duration::from_millis(1));
        let base = format!("{}/repo", server.url());
        let walk = || keyset::follow(Trust::anchor(anchor.clone()), |v| fetch_keyset(&http, &base, v));
        for status in [403, 404] {
            missing.store(status, Ordering::SeqCst);
            let followed = walk().unwrap_or_else(|e| panic!("{status}: {e:#}"));
            assert_eq!(followed.trust.version(), 1, "{status}");
            let keys = followed.trust.index_keys(berth_release::Timestamp(1)).unwrap();
            assert_eq!(keys.keys_hex(), [public_key_hex(&signing)], "{status}");
            let paths: Vec<String> = server.take_requests().iter().map(|r| r.path().to_string()).collect();
            assert_eq!(paths, ["/repo/keys/1.json", "/repo/keys/1.json.sig", "/repo/keys/2.json"], "{status}");
        }
        // A server error is no answer: retried, then the walk fails (nothing is trusted on it).
        missing.store(500, Ordering::SeqCst);
        let e = format!("{:#}", walk().err().unwrap());
        assert!(e.contains("keys/2.json") && e.contains("answered 500"), "{e}");
        assert_eq!(server.take_requests().iter().filter(|r| r.path() == "/repo/keys/2.json").count(), 2, "retried");
        // A repository without key sets behind a 403: the root keys alone sign its index.
        missing.store(403, Ordering::SeqCst);
        assert!(fetch_keyset(&http, &format!("{}/other", server.url()), 1).unwrap().is_none());
    }
}
