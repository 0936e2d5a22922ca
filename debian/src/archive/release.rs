//! Keyrings, the signed `InRelease` file, and the Release fields we rely on.
//!
//! This module owns trust: an `InRelease` is accepted only when one of its cleartext signatures
//! verifies against a key (primary, or a signing subkey bound to it) of the keyring its source
//! names. Everything after that is read from the verified, dash-unescaped signed text only, never
//! from the raw file (text outside the signed block cannot reach the parser: rPGP rejects it).
//! The Release's `SHA256` list then anchors every index, and the indexes anchor every `.deb`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

use berth_error_line::one_line;

use super::deb822;
use super::error::ArchiveError;
use super::sources::KeySource;

/// The public keys a source's `InRelease` may be signed with.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    describe: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({}, {} keys)", self.describe, self.keys.len())
    }
}

impl Keyring {
    /// Loads every key from the given keyring files / inline blocks. Binary keyrings (several
    /// concatenated transferable public keys, like Debian's) and ASCII-armored ones both work.
    /// Keys rPGP cannot parse (obsolete algorithms) are skipped; a keyring with no usable key
    /// at all is an error.
    pub fn load(sources: &[KeySource]) -> Result<Keyring, ArchiveError> {
        let describe = sources.iter().map(KeySource::describe).collect::<Vec<_>>().join(", ");
        if sources.is_empty() {
            return Err(ArchiveError::Keyring {
                keyring: "(none)".into(),
                msg: "source has no Signed-By and etc/apt/trusted.gpg.d holds no keyring".into(),
            });
        }
        let mut keys = Vec::new();
        for source in sources {
            let keyring_err = |msg: String| ArchiveError::Keyring { keyring: source.describe(), msg };
            let bytes = match source {
                KeySource::File(path) => std::fs::read(path).map_err(|e| ArchiveError::io(path, e))?,
                KeySource::Inline { armored, .. } => armored.clone().into_bytes(),
            };
            let (iter, _) = SignedPublicKey::from_reader_many(std::io::Cursor::new(bytes))
                .map_err(|e| keyring_err(format!("not an OpenPGP keyring: {}", one_line(&e))))?;
            let before = keys.len();
            keys.extend(iter.flatten());
            if keys.len() == before {
                return Err(keyring_err("holds no usable OpenPGP public key".into()));
            }
        }
        Ok(Keyring { keys, describe })
    }

    /// Parses an in-memory keyring (binary or armored); for tests and callers with keys in hand.
    pub fn from_bytes(bytes: &[u8], describe: &str) -> Result<Keyring, ArchiveError> {
        let keyring_err = |msg: String| ArchiveError::Keyring { keyring: describe.to_string(), msg };
        let (iter, _) = SignedPublicKey::from_reader_many(std::io::Cursor::new(bytes.to_vec()))
            .map_err(|e| keyring_err(format!("not an OpenPGP keyring: {}", one_line(&e))))?;
        let keys: Vec<_> = iter.flatten().collect();
        if keys.is_empty() {
            return Err(keyring_err("holds no usable OpenPGP public key".into()));
        }
        Ok(Keyring { keys, describe: describe.to_string() })
    }

    /// Number of primary keys loaded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key was loaded (never true for a keyring made by [`Keyring::load`]).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies an `InRelease` and returns its signed text (LF line endings, dash-unescaped).
    ///
    /// `url` only names the file in errors. Accepts when any signature verifies against a
    /// usable key of the keyring; otherwise the error says whether a keyring key's signature
    /// failed (the text or signature was altered) or no signature came from the keyring.
    pub fn verify_inrelease(&self, data: &[u8], url: &str) -> Result<String, ArchiveError> {
        let format_err = |msg: String| ArchiveError::SignatureFormat { url: url.to_string(), msg };
        let text = std::str::from_utf8(data).map_err(|_| format_err("not UTF-8 text".into()))?;
        let (msg, _) = CleartextSignedMessage::from_string(text).map_err(|e| format_err(one_line(&e)))?;
        if msg.signatures().is_empty() {
            return Err(format_err("no signature".into()));
        }
        let signed = msg.signed_text();
        let now = unix_now();
        let mut bad_key = None;
        for sig in msg.signatures() {
            if sig.typ() != Some(SignatureType::Text) && sig.typ() != Some(SignatureType::Binary) {
                continue;
            }
            for key in &self.keys {
                if is_revoked(key) {
                    continue;
                }
                if issued_by(sig, &key.primary_key) {
                    if sig.verify(&key.primary_key, signed.as_bytes()).is_ok() {
                        return Ok(signed.replace("\r\n", "\n"));
                    }
                    bad_key.get_or_insert_with(|| format!("{:X}", key.primary_key.fingerprint()));
                }
                for sub in &key.public_subkeys {
                    if !issued_by(sig, &sub.key) || !subkey_usable(key, sub, now) {
                        continue;
                    }
                    if sig.verify(sub, signed.as_bytes()).is_ok() {
                        return Ok(signed.replace("\r\n", "\n"));
                    }
                    bad_key.get_or_insert_with(|| format!("{:X}", sub.key.fingerprint()));
                }
            }
        }
        match bad_key {
            Some(key) => Err(ArchiveError::BadSignature { url: url.to_string(), key, keyring: self.describe.clone() }),
            None => Err(ArchiveError::UnknownSigner {
                url: url.to_string(),
                keyring: self.describe.clone(),
                signers: msg.signatures().iter().map(describe_issuer).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

fn issued_by(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fp = key.fingerprint();
    let id = key.legacy_key_id();
    sig.issuer_fingerprint().into_iter().any(|f| *f == fp) || sig.issuer_key_id().into_iter().any(|k| *k == id)
}

fn describe_issuer(sig: &Signature) -> String {
    if let Some(fp) = sig.issuer_fingerprint().first() {
        return format!("{fp:X}");
    }
    match sig.issuer_key_id().first() {
        Some(id) => hex(id.as_ref()).to_uppercase(),
        None => "an unnamed key".into(),
    }
}

/// A primary key with a verifying key-revocation signature is never used.
fn is_revoked(key: &SignedPublicKey) -> bool {
    key.details.revocation_signatures.iter().any(|s| s.verify_key(&key.primary_key).is_ok())
}

/// A subkey may sign when a binding signature from its primary verifies (with the subkey's
/// back-signature when it is flagged for signing, as RFC 9580 requires), no revocation from the
/// primary verifies, and its newest binding does not set an expiry in the past.
fn subkey_usable(key: &SignedPublicKey, sub: &SignedPublicSubKey, now: u64) -> bool {
    let mut newest: Option<&Signature> = None;
    for sig in &sub.signatures {
        if sig.verify_subkey_binding(&key.primary_key, &sub.key).is_err() {
            continue;
        }
        match sig.typ() {
            Some(SignatureType::SubkeyRevocation) => return false,
            Some(SignatureType::SubkeyBinding) => {
                if !sig.key_flags().sign() {
                    continue;
                }
                let Some(back) = sig.embedded_signature() else { continue };
                if back.verify_primary_key_binding(&sub.key, &key.primary_key).is_err() {
                    continue;
                }
                let created = |s: &Signature| s.created().map(|t| t.as_secs()).unwrap_or(0);
                if newest.is_none_or(|n| created(sig) >= created(n)) {
                    newest = Some(sig);
                }
            }
            _ => {}
        }
    }
    let Some(binding) = newest else { return false };
    match binding.key_expiration_time() {
        Some(d) if d.as_secs() > 0 => u64::from(sub.key.created_at().as_secs()) + u64::from(d.as_secs()) > now,
        _ => true,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// One entry of the Release's `SHA256` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
}

/// The fields of a verified Release that the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Suite:` (e.g. `stable`).
    pub suite: Option<String>,
    /// `Codename:` (e.g. `bookworm`).
    pub codename: Option<String>,
    /// `Date:` as written.
    pub date: Option<String>,
    /// `Valid-Until:` as written.
    pub valid_until: Option<String>,
    /// `Valid-Until:` in seconds since the epoch.
    pub valid_until_unix: Option<i64>,
    /// `Acquire-By-Hash: yes`: indexes can be fetched as `by-hash/SHA256/<hash>`, which
    /// cannot change under us while a mirror syncs.
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: `Architecture: all` packages are listed in
    /// every `binary-<arch>/Packages`, so `binary-all` need not be read.
    pub all_in_arch_indexes: bool,
    /// `Architectures:`. apt reads `binary-all` indexes only when `all` is listed here (and
    /// the field above does not say they are redundant); so do we.
    pub architectures: Vec<String>,
    /// The `SHA256` list: path relative to `dists/<suite>/` → size and hash.
    pub files: BTreeMap<String, FileEntry>,
}

impl Release {
    /// Parses the verified Release text. `url` names the file in errors.
    pub fn parse(text: &str, url: &str) -> Result<Release, ArchiveError> {
        let err = |msg: String| ArchiveError::Release { url: url.to_string(), msg };
        let stanzas = deb822::parse(text).map_err(|(line, msg)| err(format!("line {line}: {msg}")))?;
        let [stanza] = &stanzas[..] else {
            return Err(err(format!("expected one paragraph, found {}", stanzas.len())));
        };
        let field = |name: &str| stanza.get(name).map(str::to_string);
        let sha = stanza.field("SHA256").ok_or_else(|| err("no SHA256 file list".into()))?;
        let mut files = BTreeMap::new();
        for (i, line) in sha.value.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let lineno = sha.line + i;
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [hash, size, path] = parts[..] else {
                return Err(err(format!("line {lineno}: expected `sha256 size path`, found `{line}`")));
            };
            let sha256 = parse_sha256(hash).ok_or_else(|| err(format!("line {lineno}: bad SHA-256 `{hash}`")))?;
            let size = size.parse().map_err(|_| err(format!("line {lineno}: bad size `{size}`")))?;
            files.insert(path.to_string(), FileEntry { size, sha256 });
        }
        let valid_until = field("Valid-Until");
        let valid_until_unix = match &valid_until {
            Some(v) => Some(parse_date(v).ok_or_else(|| err(format!("bad Valid-Until `{v}`")))?),
            None => None,
        };
        Ok(Release {
            suite: field("Suite"),
            codename: field("Codename"),
            date: field("Date"),
            valid_until,
            valid_until_unix,
            acquire_by_hash: stanza.get("Acquire-By-Hash").is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            all_in_arch_indexes: stanza
                .get("No-Support-for-Architecture-all")
                .is_some_and(|v| v.split_whitespace().any(|w| w == "Packages")),
            architectures: stanza.get("Architectures").unwrap_or("").split_whitespace().map(str::to_string).collect(),
            files,
        })
    }

    /// Rejects a Release that is not for `suite` (a signed Release of another suite served in
    /// its place is a downgrade attack) or whose `Valid-Until` has passed at `now` (Unix secs).
    pub fn check(&self, suite: &str, now: i64, url: &str) -> Result<(), ArchiveError> {
        if self.suite.as_deref() != Some(suite) && self.codename.as_deref() != Some(suite) {
            return Err(ArchiveError::Release {
                url: url.to_string(),
                msg: format!(
                    "is for suite `{}` (codename `{}`), not `{suite}`",
                    self.suite.as_deref().unwrap_or("?"),
                    self.codename.as_deref().unwrap_or("?")
                ),
            });
        }
        if let (Some(until), Some(text)) = (self.valid_until_unix, &self.valid_until)
            && until < now
        {
            return Err(ArchiveError::Expired { url: url.to_string(), valid_until: text.clone() });
        }
        Ok(())
    }
}

/// Parses an RFC 2822 date as Release files write it (`Sat, 10 Aug 2024 09:37:51 UTC`), into
/// seconds since the epoch. Zones: `UTC`, `GMT`, `Z`, or `+hhmm`/`-hhmm`.
pub fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = match text.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => text,
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [day, month, year, time, zone] = parts[..] else { return None };
    let day: i64 = day.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms[..] else { return None };
    // Four-digit years (RFC 2822) and no negative fields: the arithmetic below cannot overflow.
    if !(1..=31).contains(&day) || !(0..=9999).contains(&year) || !(0..=23).contains(&h) {
        return None;
    }
    if !(0..=59).contains(&m) || !(0..=60).contains(&s) {
        return None;
    }
    let offset = match zone {
        "UTC" | "GMT" | "Z" | "UT" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let n: i64 = z[1..].parse().ok()?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        // `date -u -d '2024-08-10 09:37:51' +%s`
        assert_eq!(parse_date("Sat, 10 Aug 2024 09:37:51 UTC"), Some(1_723_282_671));
        assert_eq!(parse_date("10 Aug 2024 09:37:51 +0200"), Some(1_723_282_671 - 7200));
        assert_eq!(parse_date("Tue, 29 Feb 2000 12:00:00 -0130"), Some(951_825_600 + 5400));
        assert_eq!(parse_date("Sat, 10 Foo 2024 09:37:51 UTC"), None);
        assert_eq!(parse_date("Sat, 10 Aug 2024 09:37 UTC"), None);
        assert_eq!(parse_date("Sat, 10 Aug 2024 09:37:51 PST"), None);
    }

    /// Found by the fuzz target (archive/fuzz.rs): a year of ±2^63 or a negative hour in
    /// `Valid-Until` overflowed the day arithmetic (a panic with overflow checks, a wrong
    /// expiry in release builds).
    #[test]
    fn dates_out_of_range_are_refused() {
        assert_eq!(parse_date("Sat, 16 Nov 9223372036854775807 10:05:53 UTC"), None);
        assert_eq!(parse_date("16 Feb -9223372036854775808 10:05:53 UTC"), None);
        assert_eq!(parse_date("16 Nov 2024 -9223372036854775808:05:53 UTC"), None);
        assert_eq!(parse_date("16 Nov 2024 10:-1:53 UTC"), None);
        assert_eq!(parse_date("16 Nov 10000 10:05:53 UTC"), None);
        assert_eq!(parse_date("1 Jan 9999 00:00:00 UTC"), Some(253_370_764_800));
        assert_eq!(parse_date("1 Jan 0 00:00:00 UTC"), Some(-62_167_219_200));
    }

    #[test]
    fn dates_agree_with_gnu_date() {
        for d in ["Sat, 10 Aug 2024 09:37:51 UTC", "Mon, 31 Dec 2095 23:59:59 UTC", "Wed, 01 Mar 2023 00:00:00 +0530"] {
            let out = std::process::Command::new("date").args(["-u", "-d", d, "+%s"]).output().unwrap();
            let want: i64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
            assert_eq!(parse_date(d), Some(want), "{d}");
        }
    }

    const RELEASE: &str = "\
Origin: Test
Suite: stable
Codename: trial
Date: Sat, 10 Aug 2024 09:37:51 UTC
Valid-Until: Sat, 17 Aug 2024 09:37:51 UTC
Acquire-By-Hash: yes
No-Support-for-Architecture-all: Packages
Architectures: all amd64
MD5Sum:
 0123 12 main/binary-amd64/Packages
SHA256:
 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/binary-amd64/Packages
 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824    123 main/binary-amd64/Packages.xz
";

    #[test]
    fn release_fields() {
        let r = Release::parse(RELEASE, "u").unwrap();
        assert_eq!(r.suite.as_deref(), Some("stable"));
        assert_eq!(r.codename.as_deref(), Some("trial"));
        assert!(r.acquire_by_hash && r.all_in_arch_indexes);
        assert_eq!(r.architectures, ["all", "amd64"]);
        assert_eq!(r.files.len(), 2);
        let xz = r.files["main/binary-amd64/Packages.xz"];
        assert_eq!(xz.size, 123);
        assert_eq!(hex(&xz.sha256), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(r.valid_until_unix, Some(1_723_282_671 + 7 * 86400));

        r.check("stable", 1_723_282_671, "u").unwrap();
        r.check("trial", 1_723_282_671, "u").unwrap();
        let e = r.check("oldstable", 0, "u").unwrap_err().to_string();
        assert_eq!(e, "u: is for suite `stable` (codename `trial`), not `oldstable`");
        let e = r.check("stable", 1_800_000_000, "u").unwrap_err().to_string();
        assert_eq!(e, "u: Release expired: Valid-Until Sat, 17 Aug 2024 09:37:51 UTC is in the past");
    }

    #[test]
    fn release_errors() {
        let e = Release::parse("Suite: s\n", "u").unwrap_err().to_string();
        assert_eq!(e, "u: no SHA256 file list");
        let e = Release::parse("Suite: s\nSHA256:\n abc 1 x\n", "u").unwrap_err().to_string();
        assert_eq!(e, "u: line 3: bad SHA-256 `abc`");
    }

    #[test]
    fn sha256_hex_round_trip() {
        let h = "00ff10a0e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b";
        assert_eq!(hex(&parse_sha256(h).unwrap()), h);
        assert!(parse_sha256(&h[1..]).is_none());
        assert!(parse_sha256(&h.replace('0', "g")).is_none());
    }
}
