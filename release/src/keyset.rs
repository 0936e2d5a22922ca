//! Key sets: the split of trust between root keys and signing keys (TUF's root and targets
//! roles, docs/design.md §4).
//!
//! The **root keys** are the trust anchor an image or host names in `update.toml`'s `keys`
//! (`threshold` of them must sign). They sign only a short document, the key set
//! (`keys/<N>.json` in the repository, [`crate::repo::keyset_path`]): the **signing keys**
//! that sign channel indexes and how many of them must, the root keys themselves, a version
//! and an expiry. The root keys can therefore stay offline; they are needed to add, replace or
//! revoke a signing key, to rotate the root keys, and once before a key set expires.
//!
//! A host starts from the root keys of its configuration and walks the key sets in version
//! order (`keys/1.json`, `keys/2.json`, …, [`follow`]). It accepts version N only if the
//! threshold of the root keys it trusts now signed it, and, when N names other root keys (a
//! root rotation), the threshold of those new root keys too. It then trusts N's root keys and
//! N's signing keys; a key left out of N is revoked. A version that the keys it trusts did not
//! sign is skipped (a host whose image names newer root keys starts further along the chain).
//! An index must be signed by the newest accepted key set's signing keys; a repository without
//! any key set is signed by the root keys directly (one tier, as before key sets existed).
//!
//! ```json
//! {
//!   "schema": 1,
//!   "version": 2,
//!   "issued": "2026-12-07T00:00:00Z",
//!   "expires": "2027-12-07T00:00:00Z",
//!   "root": { "keys": ["<hex>", "<hex>", "<hex>"], "threshold": 2 },
//!   "signing": { "keys": ["<hex>"], "threshold": 1 }
//! }
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signature::{MAX_SIGNATURE_BYTES, SignatureError, TrustedKeys};
use crate::time::Timestamp;

/// The key set format this crate reads and writes.
pub const SCHEMA: u32 = 1;
/// Larger key set files are refused before they are verified.
pub const MAX_KEYSET_BYTES: usize = 64 << 10;
/// Key sets an agent reads in one check, at most (each is one small request).
pub const MAX_STEPS: u64 = 64;
/// Default lifetime of a key set: the root keys sign a new one at least this often.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(365 * 86_400);

/// A key set document, `keys/<version>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    /// Format version: [`SCHEMA`].
    pub schema: u32,
    /// 1 for the first key set, one more for each after it; the file's name.
    pub version: u64,
    /// When it was signed.
    pub issued: Timestamp,
    /// After this, hosts accept no index until the root keys sign a newer key set.
    pub expires: Timestamp,
    /// The root keys from this version on: they sign the next key set.
    pub root: Role,
    /// The keys that sign channel indexes.
    pub signing: Role,
}

/// Keys and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// ed25519 public keys, hex.
    pub keys: Vec<String>,
    /// Distinct keys whose signatures are required.
    pub threshold: u32,
}

impl Role {
    /// The keys as a verifier.
    pub fn trusted(&self) -> Result<TrustedKeys, SignatureError> {
        TrustedKeys::new(&self.keys, self.threshold)
    }
}

/// Why a key set is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    /// More than [`MAX_KEYSET_BYTES`] or a signature file larger than allowed.
    #[error("key set {version}: {bytes} bytes, more than {MAX_KEYSET_BYTES}")]
    TooLarge {
        /// The file's version.
        version: u64,
        /// Its size.
        bytes: usize,
    },
    /// Not JSON of the schema, or a rule broken.
    #[error("key set {version} is not valid: {why}")]
    Invalid {
        /// The file's version.
        version: u64,
        /// What is wrong.
        why: String,
    },
    /// Not signed by the threshold of the root keys trusted now.
    #[error("key set {version} is not signed by the root keys trusted now: {source}")]
    Unsigned {
        /// The file's version.
        version: u64,
        /// The signature check's verdict.
        source: SignatureError,
    },
    /// It changes the root keys, but the new root keys did not sign it.
    #[error("key set {version} rotates the root keys but is not signed by its new root keys: {source}")]
    RotationUnsigned {
        /// The file's version.
        version: u64,
        /// The signature check's verdict.
        source: SignatureError,
    },
    /// Not newer than the one trusted.
    #[error("key set {got} is not newer than key set {have}, accepted before")]
    Replayed {
        /// The document's version.
        got: u64,
        /// The version trusted.
        have: u64,
    },
    /// The newest key set is past its expiry.
    #[error("key set {version} expired at {expires} (now {now}): the root keys must sign a new one (berth keys sign)")]
    Expired {
        /// Its version.
        version: u64,
        /// Its expiry.
        expires: Timestamp,
        /// The agent's clock.
        now: Timestamp,
    },
}

impl KeySetError {
    /// A document the keys trusted now did not sign: not part of this host's chain; a walk
    /// skips it rather than stop.
    pub fn is_unsigned(&self) -> bool {
        matches!(self, KeySetError::Unsigned { .. } | KeySetError::RotationUnsigned { .. })
    }
}

impl KeySet {
    /// Parses and checks a key set (after its signatures were verified).
    pub fn parse(bytes: &[u8], file_version: u64) -> Result<KeySet, KeySetError> {
        let invalid = |why: String| KeySetError::Invalid { version: file_version, why };
        if bytes.len() > MAX_KEYSET_BYTES {
            return Err(KeySetError::TooLarge { version: file_version, bytes: bytes.len() });
        }
        let ks: KeySet = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        ks.check().map_err(invalid)?;
        if ks.version != file_version {
            return Err(invalid(format!("it says version {}, its file name {file_version}", ks.version)));
        }
        Ok(ks)
    }

    /// Every rule a key set holds.
    pub fn check(&self) -> Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!("schema {} is not a format this agent reads ({SCHEMA})", self.schema));
        }
        if self.version == 0 {
            return Err("version: key sets count from 1".into());
        }
        if self.expires <= self.issued {
            return Err(format!("expires: {} is not after issued ({})", self.expires, self.issued));
        }
        self.root.trusted().map_err(|e| format!("root: {e}"))?;
        self.signing.trusted().map_err(|e| format!("signing: {e}"))?;
        Ok(())
    }

    /// The file's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// What a host trusts: root keys (its configuration's, or those of the newest key set it
/// accepted) and that key set.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The keys that sign the next key set.
    pub root: TrustedKeys,
    /// The newest key set accepted; `None`: only the configured root keys.
    pub keyset: Option<KeySet>,
}

impl Trust {
    /// Trust in the configured root keys alone.
    pub fn anchor(root: TrustedKeys) -> Trust {
        Trust { root, keyset: None }
    }

    /// From a key set accepted before (its root keys are trusted now).
    pub fn from_keyset(ks: KeySet) -> Result<Trust, KeySetError> {
        let root = ks.root.trusted().map_err(|e| KeySetError::Invalid { version: ks.version, why: e.to_string() })?;
        Ok(Trust { root, keyset: Some(ks) })
    }

    /// The version of the key set trusted; 0 without one.
    pub fn version(&self) -> u64 {
        self.keyset.as_ref().map_or(0, |k| k.version)
    }

    /// The keys a channel's index must be signed by at `now`: the key set's signing keys, or
    /// without a key set the root keys themselves. An expired key set gives none.
    pub fn index_keys(&self, now: Timestamp) -> Result<TrustedKeys, KeySetError> {
        let Some(ks) = &self.keyset else { return Ok(self.root.clone()) };
        if now >= ks.expires {
            return Err(KeySetError::Expired { version: ks.version, expires: ks.expires, now });
        }
        ks.signing.trusted().map_err(|e| KeySetError::Invalid { version: ks.version, why: e.to_string() })
    }

    /// Accepts `keys/<version>.json` (`bytes`) with its signature file `sig` as the next
    /// step from this trust: signed by the root keys trusted now (and by its own root keys if
    /// they differ), newer than the key set trusted.
    pub fn accept(&self, version: u64, bytes: &[u8], sig: &[u8]) -> Result<Trust, KeySetError> {
        if bytes.len() > MAX_KEYSET_BYTES || sig.len() > MAX_SIGNATURE_BYTES {
            return Err(KeySetError::TooLarge { version, bytes: bytes.len().max(sig.len()) });
        }
        // Signatures over the exact bytes before anything of them is parsed.
        self.root.verify(bytes, sig).map_err(|source| KeySetError::Unsigned { version, source })?;
        let ks = KeySet::parse(bytes, version)?;
        if ks.version <= self.version() {
            return Err(KeySetError::Replayed { got: ks.version, have: self.version() });
        }
        let next = Trust::from_keyset(ks)?;
        if !next.root.same_as(&self.root) {
            next.root.verify(bytes, sig).map_err(|source| KeySetError::RotationUnsigned { version, source })?;
        }
        Ok(next)
    }
}

/// The outcome of a walk along the key sets.
#[derive(Debug, Clone)]
pub struct Followed {
    /// What the host trusts now.
    pub trust: Trust,
    /// The newest key set accepted in this walk, its bytes and signature file (to keep).
    pub newest: Option<(Vec<u8>, Vec<u8>)>,
    /// Versions skipped: not signed by the keys trusted when they were read.
    pub skipped: Vec<KeySetError>,
}

/// Walks from `start` along the key sets `fetch` returns (`Ok(None)`: no such version; the walk
/// ends there), at most [`MAX_STEPS`] of them. A version the trusted root keys did not sign is
/// skipped; any other refusal ends the walk with an error (the root keys signed something
/// invalid: nothing of this walk is kept).
pub fn follow<E: From<KeySetError>>(
    start: Trust,
    mut fetch: impl FnMut(u64) -> Result<Option<(Vec<u8>, Vec<u8>)>, E>,
) -> Result<Followed, E> {
    let mut out = Followed { trust: start, newest: None, skipped: Vec::new() };
    let first = out.trust.version() + 1;
    for version in first..first.saturating_add(MAX_STEPS) {
        let Some((bytes, sig)) = fetch(version)? else { break };
        match out.trust.accept(version, &bytes, &sig) {
            Ok(next) => {
                out.trust = next;
                out.newest = Some((bytes, sig));
            }
            Err(e) if e.is_unsigned() => out.skipped.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{Signatures, public_key_hex, secret_key_from_seed};
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        secret_key_from_seed([n; 32])
    }

    fn role(keys: &[&SigningKey], threshold: u32) -> Role {
        Role { keys: keys.iter().map(|k| public_key_hex(k)).collect(), threshold }
    }

    fn doc(version: u64, root: Role, signing: Role, by: &[&SigningKey]) -> (Vec<u8>, Vec<u8>) {
        let ks = KeySet { schema: SCHEMA, version, issued: Timestamp(100), expires: Timestamp(10_000), root, signing };
        let bytes = ks.to_bytes();
        let keys: Vec<SigningKey> = by.iter().map(|k| (*k).clone()).collect();
        let sig = Signatures::sign_all(&bytes, &keys).to_bytes();
        (bytes, sig)
    }

    #[test]
    fn a_walk_follows_rotations_and_skips_what_it_cannot_verify() {
        let (r1, r2, s1, s2) = (key(1), key(2), key(11), key(12));
        let docs = [
            doc(1, role(&[&r1], 1), role(&[&s1], 1), &[&r1]),
            // Root rotation: signed by the old and the new root.
            doc(2, role(&[&r2], 1), role(&[&s2], 1), &[&r1, &r2]),
        ];
        let fetch = |v: u64| -> Result<_, KeySetError> { Ok(docs.get(v as usize - 1).cloned()) };
        let f = follow(Trust::anchor(role(&[&r1], 1).trusted().unwrap()), fetch).unwrap();
        assert_eq!(f.trust.version(), 2);
        assert!(f.trust.root.same_as(&role(&[&r2], 1).trusted().unwrap()));
        assert!(f.trust.index_keys(Timestamp(500)).unwrap().same_as(&role(&[&s2], 1).trusted().unwrap()));
        assert!(matches!(f.trust.index_keys(Timestamp(10_000)), Err(KeySetError::Expired { .. })));
        // An image that already names r2 starts further along: version 1 is not its chain.
        let f = follow(Trust::anchor(role(&[&r2], 1).trusted().unwrap()), fetch).unwrap();
        assert_eq!((f.trust.version(), f.skipped.len()), (2, 1));
        // A root rotation signed by the old root alone is not followed.
        let bad = [doc(1, role(&[&r2], 1), role(&[&s2], 1), &[&r1])];
        let f = follow(Trust::anchor(role(&[&r1], 1).trusted().unwrap()), |v: u64| -> Result<_, KeySetError> {
            Ok(bad.get(v as usize - 1).cloned())
        })
        .unwrap();
        assert_eq!(f.trust.version(), 0);
        assert!(matches!(f.skipped[0], KeySetError::RotationUnsigned { .. }), "{:?}", f.skipped);
        // A key set whose name and content disagree is an error, not a step.
        let (b, s) = doc(3, role(&[&r1], 1), role(&[&s1], 1), &[&r1]);
        let e = Trust::anchor(role(&[&r1], 1).trusted().unwrap()).accept(1, &b, &s).unwrap_err();
        assert!(e.to_string().contains("says version 3"), "{e}");
    }
}
