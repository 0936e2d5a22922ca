//! Detached signatures over an index's exact bytes (`channels/<channel>.json.sig`), the keys
//! that make them, and threshold verification against the keys an image trusts.
//!
//! The signature file is JSON: `{"signatures": [{"key": "<hex>", "signature": "<hex>"}]}`,
//! ed25519 keys and signatures in hex. A key file holds the 32-byte ed25519 secret seed as 64
//! hex digits and a newline (mode 0600); its public key is the 64 hex digits an image trusts.

/// A secret key (ed25519); the builder handles keys only through this crate.
pub use ed25519_dalek::SigningKey;
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hex::{decode_hex, encode_hex};

/// Larger signature files are refused before parsing.
pub const MAX_SIGNATURE_BYTES: usize = 64 << 10;

/// The signature file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// One per signing key.
    pub signatures: Vec<SignatureEntry>,
}

/// One signature and the public key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The ed25519 public key, hex.
    pub key: String,
    /// The ed25519 signature over the index's bytes, hex.
    pub signature: String,
}

/// Why signatures do not establish an index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature file is not JSON of the schema.
    #[error("the signature file is not valid: {0}")]
    Malformed(String),
    /// No signature at all.
    #[error("the index carries no signatures")]
    Missing,
    /// A trusted key's signature does not verify over these bytes.
    #[error("bad signature: the signature by trusted key {key} does not match the index")]
    Bad {
        /// The key, hex.
        key: String,
    },
    /// Only keys the image does not trust signed.
    #[error("signed by unknown key {keys}: this image trusts none of them")]
    UnknownKey {
        /// The keys, hex, comma-separated.
        keys: String,
    },
    /// Too few trusted keys signed.
    #[error("only {valid} valid signature(s) by trusted keys; {required} required")]
    Threshold {
        /// Distinct trusted keys whose signatures verify.
        valid: usize,
        /// The image's threshold.
        required: usize,
    },
    /// The trusted key set itself is unusable.
    #[error("trusted keys: {0}")]
    Keys(String),
    /// A secret key file is unusable.
    #[error("secret key: {0}")]
    SecretKey(String),
}

/// The keys an image trusts, and how many of them must sign.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
    threshold: usize,
}

impl TrustedKeys {
    /// From hex public keys; `threshold` between 1 and the number of distinct keys.
    pub fn new(hex_keys: &[String], threshold: u32) -> Result<TrustedKeys, SignatureError> {
        let mut keys: Vec<VerifyingKey> = Vec::new();
        for (i, k) in hex_keys.iter().enumerate() {
            let key = parse_public_key(k).map_err(|e| SignatureError::Keys(format!("keys[{i}]: {e}")))?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        let threshold = threshold as usize;
        if threshold == 0 || threshold > keys.len() {
            return Err(SignatureError::Keys(format!(
                "threshold {threshold} must be between 1 and the {} distinct key(s)",
                keys.len()
            )));
        }
        Ok(TrustedKeys { keys, threshold })
    }

    /// Signatures required.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The distinct keys, hex, sorted.
    pub fn keys_hex(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keys.iter().map(|k| encode_hex(k.as_bytes())).collect();
        v.sort();
        v
    }

    /// Whether `other` is the same key set with the same threshold (order does not matter).
    pub fn same_as(&self, other: &TrustedKeys) -> bool {
        self.threshold == other.threshold && self.keys_hex() == other.keys_hex()
    }

    /// Whether `key` (hex) is one of these keys.
    pub fn contains(&self, key: &str) -> bool {
        parse_public_key(key).is_ok_and(|k| self.keys.contains(&k))
    }

    /// Checks that at least `threshold` distinct trusted keys signed `message`; returns how
    /// many did.
    pub fn verify(&self, message: &[u8], signature_file: &[u8]) -> Result<usize, SignatureError> {
        if signature_file.len() > MAX_SIGNATURE_BYTES {
            return Err(SignatureError::Malformed(format!(
                "{} bytes, more than {MAX_SIGNATURE_BYTES}",
                signature_file.len()
            )));
        }
        let file: Signatures =
            serde_json::from_slice(signature_file).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if file.signatures.is_empty() {
            return Err(SignatureError::Missing);
        }
        let mut valid: Vec<&VerifyingKey> = Vec::new();
        let mut bad = None;
        let mut unknown = Vec::new();
        for (i, entry) in file.signatures.iter().enumerate() {
            let key = parse_public_key(&entry.key)
                .map_err(|e| SignatureError::Malformed(format!("signatures[{i}].key: {e}")))?;
            let sig = decode_hex::<64>(&entry.signature)
                .map(|b| Signature::from_bytes(&b))
                .ok_or_else(|| SignatureError::Malformed(format!("signatures[{i}].signature: not 128 hex digits")))?;
            let Some(trusted) = self.keys.iter().find(|k| **k == key) else {
                unknown.push(encode_hex(key.as_bytes()));
                continue;
            };
            if trusted.verify_strict(message, &sig).is_ok() {
                if !valid.contains(&trusted) {
                    valid.push(trusted);
                }
            } else {
                bad.get_or_insert_with(|| encode_hex(key.as_bytes()));
            }
        }
        if valid.len() >= self.threshold {
            return Ok(valid.len());
        }
        if let Some(key) = bad {
            return Err(SignatureError::Bad { key });
        }
        if valid.is_empty() && !unknown.is_empty() {
            return Err(SignatureError::UnknownKey { keys: unknown.join(", ") });
        }
        Err(SignatureError::Threshold { valid: valid.len(), required: self.threshold })
    }
}

fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let bytes = decode_hex::<32>(hex.trim()).ok_or("an ed25519 public key is 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_string())
}

/// A secret key from 32 bytes of randomness.
pub fn secret_key_from_seed(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

/// The text of a secret key file.
pub fn secret_key_file(key: &SigningKey) -> String {
    format!("{}\n", encode_hex(&key.to_bytes()))
}

/// Reads a secret key file's text.
pub fn parse_secret_key_file(text: &str) -> Result<SigningKey, SignatureError> {
    decode_hex::<32>(text.trim())
        .map(|b| SigningKey::from_bytes(&b))
        .ok_or_else(|| SignatureError::SecretKey("a key file holds 64 hex digits (made by `berth keygen`)".into()))
}

/// The public key of `key`, hex: what an image's `[update] keys` lists.
pub fn public_key_hex(key: &SigningKey) -> String {
    encode_hex(key.verifying_key().as_bytes())
}

/// A signature by `key` over `message`.
pub fn sign(message: &[u8], key: &SigningKey) -> SignatureEntry {
    SignatureEntry { key: public_key_hex(key), signature: encode_hex(&key.sign(message).to_bytes()) }
}

impl Signatures {
    /// Signatures by each of `keys` over `message`.
    pub fn sign_all(message: &[u8], keys: &[SigningKey]) -> Signatures {
        Signatures { signatures: keys.iter().map(|k| sign(message, k)).collect() }
    }

    /// The file's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        secret_key_from_seed([n; 32])
    }

    fn trusted(keys: &[&SigningKey], threshold: u32) -> TrustedKeys {
        TrustedKeys::new(&keys.iter().map(|k| public_key_hex(k)).collect::<Vec<_>>(), threshold).unwrap()
    }

    #[test]
    fn thresholds() {
        let (a, b, c) = (key(1), key(2), key(3));
        let msg = b"index bytes";
        let both = Signatures::sign_all(msg, &[a.clone(), b.clone()]).to_bytes();
        assert_eq!(trusted(&[&a, &b], 2).verify(msg, &both), Ok(2));
        let one = Signatures::sign_all(msg, std::slice::from_ref(&a)).to_bytes();
        assert_eq!(trusted(&[&a, &b], 2).verify(msg, &one), Err(SignatureError::Threshold { valid: 1, required: 2 }));
        // The same key twice counts once.
        let twice = Signatures::sign_all(msg, &[a.clone(), a.clone()]).to_bytes();
        assert_eq!(trusted(&[&a, &b], 2).verify(msg, &twice), Err(SignatureError::Threshold { valid: 1, required: 2 }));
        let by_c = Signatures::sign_all(msg, std::slice::from_ref(&c)).to_bytes();
        assert!(matches!(trusted(&[&a], 1).verify(msg, &by_c), Err(SignatureError::UnknownKey { .. })));
        assert!(matches!(trusted(&[&a], 1).verify(b"other bytes", &one), Err(SignatureError::Bad { .. })));
        let none = Signatures::default().to_bytes();
        assert_eq!(trusted(&[&a], 1).verify(msg, &none), Err(SignatureError::Missing));
        assert!(matches!(trusted(&[&a], 1).verify(msg, b"{"), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn key_files_round_trip() {
        let k = key(7);
        let back = parse_secret_key_file(&secret_key_file(&k)).unwrap();
        assert_eq!(public_key_hex(&back), public_key_hex(&k));
        assert!(parse_secret_key_file("nope").is_err());
        assert!(TrustedKeys::new(&[public_key_hex(&k)], 2).is_err());
        assert!(TrustedKeys::new(&["zz".into()], 1).is_err());
    }
}
