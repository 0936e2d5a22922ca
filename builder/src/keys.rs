//! `berth keys sign`: the key sets of a release repository (`keys/<N>.json`,
//! berth_release::keyset), signed by the root keys.
//!
//! Each run writes the next version: the signing keys that sign channel indexes (adding,
//! replacing or revoking one is a new version without them), the root keys (a rotation must be
//! signed by the threshold of the old and of the new root keys), and a new expiry. Before
//! anything is written the new key set is checked with the agent's own rule
//! (`Trust::accept`) against the newest one in the repository, so a key set hosts would not
//! follow is never published. The signature file is renamed into place before the key set,
//! so a reader never finds a key set without its signatures; a failure leaves the repository
//! as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use berth_release::keyset::{KeySet, Role, SCHEMA, Trust};
use berth_release::repo::{KEYSET_DIR, keyset_path, keyset_signature_path, keyset_version};
use berth_release::signature::{Signatures, SigningKey, parse_secret_key_file, public_key_hex};
use berth_release::{Timestamp, TrustedKeys};

use crate::publish::{check_secret_key_mode, lock_repo, read_key_file, write_atomic};

/// What `berth keys sign` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct KeysOptions {
    /// The repository's root directory (created if missing).
    pub repo: PathBuf,
    /// Secret root key files that sign the new key set (the current root keys' threshold, and
    /// on a rotation the new root keys' threshold too).
    pub root_keys: Vec<PathBuf>,
    /// The root keys of the new key set, hex or `.pub` files; empty: the current ones (for the
    /// first key set, the public halves of `root_keys`).
    pub root: Vec<String>,
    /// Root signatures the next key set needs; `None`: the current threshold (1 at first).
    pub root_threshold: Option<u32>,
    /// The signing keys of the new key set, hex or `.pub` files; empty: the current ones.
    pub signing: Vec<String>,
    /// Signing keys to leave out of the current ones (revocation), hex or `.pub` files.
    pub revoke: Vec<String>,
    /// Signatures an index needs; `None`: the current threshold (1 at first).
    pub threshold: Option<u32>,
    /// How long hosts accept indexes signed under it.
    pub expires: Duration,
    /// `issued`; `None`: the clock.
    pub now: Option<Timestamp>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct KeysReport {
    /// The new key set.
    pub keyset: KeySet,
    /// `keys/<N>.json` and its `.sig`.
    pub path: PathBuf,
    pub signature: PathBuf,
    /// The version before (0: none).
    pub previous: u64,
    /// Root and signing keys that are in the previous key set and not in this one.
    pub revoked: Vec<String>,
    /// Whether the root keys changed.
    pub rotated_root: bool,
}

/// The newest key set of `repo`: its version, the document and its bytes; `None` without one.
pub fn newest_keyset(repo: &Path) -> anyhow::Result<Option<KeySet>> {
    let dir = repo.join(KEYSET_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut newest = None;
    for e in entries {
        let name = e.with_context(|| format!("reading {}", dir.display()))?.file_name();
        if let Some(v) = keyset_version(&name.to_string_lossy()) {
            newest = newest.max(Some(v));
        }
    }
    let Some(v) = newest else { return Ok(None) };
    let path = repo.join(keyset_path(v));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let ks = KeySet::parse(&bytes, v).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Some(ks))
}

/// A secret root key file; one others can read is refused (as `berth publish` refuses a loose
/// signing key).
fn load_root_key(p: &Path) -> anyhow::Result<SigningKey> {
    let (text, mode) = read_key_file(p)?;
    let key = parse_secret_key_file(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    check_secret_key_mode(p, mode)?;
    Ok(key)
}

/// A public key given as hex or as a `.pub` file (`berth keygen`'s).
pub fn public_key_arg(s: &str) -> anyhow::Result<String> {
    let text = if Path::new(s).is_file() {
        std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?
    } else {
        s.to_string()
    };
    let hex = text.trim().to_ascii_lowercase();
    TrustedKeys::new(std::slice::from_ref(&hex), 1)
        .map_err(|e| anyhow!("{s:?}: not a public key (64 hex digits, or a .pub file from berth keygen): {e}"))?;
    Ok(hex)
}

fn publics(args: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for a in args {
        let k = public_key_arg(a)?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    Ok(out)
}

/// Signs and writes the next key set (see the module documentation).
pub fn sign_keyset(o: &KeysOptions) -> anyhow::Result<KeysReport> {
    let now = o.now.unwrap_or_else(Timestamp::now);
    if o.root_keys.is_empty() {
        bail!("no root key: pass --root-key FILE (a secret key made by `berth keygen --root`)");
    }
    if o.expires < Duration::from_secs(1) {
        bail!("--expires must be at least 1s");
    }
    let secrets: Vec<SigningKey> = o.root_keys.iter().map(|p| load_root_key(p)).collect::<anyhow::Result<_>>()?;
    let current = newest_keyset(&o.repo)?;
    let previous = current.as_ref().map_or(0, |k| k.version);

    let root_keys = match (publics(&o.root)?, &current) {
        (r, _) if !r.is_empty() => r,
        (_, Some(c)) => c.root.keys.clone(),
        (_, None) => {
            let mut v: Vec<String> = secrets.iter().map(public_key_hex).collect();
            v.dedup();
            v
        }
    };
    let root_threshold = o.root_threshold.or(current.as_ref().map(|c| c.root.threshold)).unwrap_or(1);
    let revoke = publics(&o.revoke)?;
    let mut signing = match (publics(&o.signing)?, &current) {
        (s, _) if !s.is_empty() => s,
        (_, Some(c)) => c.signing.keys.clone(),
        (_, None) => {
            bail!("the first key set needs its signing keys: pass --signing-key PUB (berth keygen makes them)")
        }
    };
    for r in &revoke {
        if !signing.contains(r) && !current.as_ref().is_some_and(|c| c.signing.keys.contains(r)) {
            bail!("--revoke {r}: not a signing key of the current key set");
        }
    }
    signing.retain(|k| !revoke.contains(k));
    if signing.is_empty() {
        bail!("no signing key left: give the new one with --signing-key");
    }
    let threshold = o.threshold.or(current.as_ref().map(|c| c.signing.threshold)).unwrap_or(1);
    let version = previous.checked_add(1).context("the key set's version cannot grow any more")?;
    let keyset = KeySet {
        schema: SCHEMA,
        version,
        issued: now,
        expires: now.plus(o.expires),
        root: Role { keys: root_keys.clone(), threshold: root_threshold },
        signing: Role { keys: signing.clone(), threshold },
    };
    keyset.check().map_err(|e| anyhow!("the new key set would not be valid: {e}"))?;
    let bytes = keyset.to_bytes();
    let sig = Signatures::sign_all(&bytes, &secrets).to_bytes();

    // The rule hosts apply, applied here first: signed by the current root keys' threshold
    // (for the first key set, its own root keys'), and by the new ones' on a rotation.
    let from = match &current {
        Some(c) => Trust::from_keyset(c.clone()).map_err(|e| anyhow!("{e}"))?,
        None => Trust::anchor(keyset.root.trusted().map_err(|e| anyhow!("--root: {e}"))?),
    };
    let rotated_root = !keyset.root.trusted().map_err(|e| anyhow!("{e}"))?.same_as(&from.root);
    from.accept(version, &bytes, &sig).map_err(|e| {
        anyhow!("{e} (sign with --root-key files of the current root keys, and of the new ones when they change)")
    })?;

    let revoked: Vec<String> = current
        .as_ref()
        .map(|c| {
            c.root
                .keys
                .iter()
                .chain(&c.signing.keys)
                .filter(|k| !root_keys.contains(k) && !signing.contains(k))
                .cloned()
                .collect()
        })
        .unwrap_or_default();

    std::fs::create_dir_all(o.repo.join(KEYSET_DIR))
        .with_context(|| format!("creating {}", o.repo.join(KEYSET_DIR).display()))?;
    let _lock = lock_repo(&o.repo)?;
    // Another run may have written this version meanwhile (before the lock).
    if newest_keyset(&o.repo)?.map_or(0, |k| k.version) != previous {
        bail!("{}: another berth keys sign wrote a key set meanwhile; run again", o.repo.display());
    }
    let path = o.repo.join(keyset_path(version));
    let signature = o.repo.join(keyset_signature_path(version));
    write_atomic(&signature, &sig)?;
    if let Err(e) = write_atomic(&path, &bytes) {
        let _ = std::fs::remove_file(&signature);
        return Err(e);
    }
    Ok(KeysReport { keyset, path, signature, previous, revoked, rotated_root })
}
