//! The channel index, `channels/<channel>.json` (docs/design.md §4): for the channel, a sequence
//! number that only grows and an expiry; for each release, its version, artifacts (path, size,
//! SHA-256), kernel command line and rollout.
//!
//! [`Index::parse`] is the only way in from untrusted bytes: any input gives an index that
//! passed every check below or an [`IndexError`] naming the field, never a panic.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hex::{decode_hex, encode_hex};
use crate::time::Timestamp;

/// The index format this crate reads and writes.
pub const SCHEMA: u32 = 1;
/// Larger indexes are refused before parsing (an agent never downloads more).
pub const MAX_INDEX_BYTES: usize = 1 << 20;

/// A channel's release index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Format version: [`SCHEMA`].
    pub schema: u32,
    /// The channel's name (`stable`); must match the file name it was fetched as.
    pub channel: String,
    /// Incremented by every publish; an agent refuses an index whose sequence is lower than one
    /// it accepted before (a replayed or frozen repository).
    pub sequence: u64,
    /// When it was published.
    pub issued: Timestamp,
    /// After this an agent refuses it, so a stale mirror cannot hold hosts back for ever.
    pub expires: Timestamp,
    /// Every release the channel offers, oldest first.
    pub releases: Vec<Release>,
}

/// One release of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Semantic version; agents install only versions above the running one.
    pub version: String,
    /// Kernel command line (bootmgr appends `root=PARTUUID=… berth.slot=…`).
    pub cmdline: String,
    /// The root filesystem image, compressed.
    pub root: RootArtifact,
    /// The kernel (EFI stub).
    pub vmlinuz: Artifact,
    /// The initramfs.
    pub initrd: Artifact,
    /// When hosts may take it.
    pub rollout: Rollout,
    /// Pulled back by the channel: no agent installs it any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pulled: bool,
}

/// A file of the repository: its path from the repository's root, its size and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the repository root (`releases/2.0.0/vmlinuz`).
    pub path: String,
    /// Bytes; an agent reads no more than this.
    pub size: u64,
    /// Of the file's bytes.
    pub sha256: Digest,
}

/// The root image: the compressed file as an [`Artifact`], and the image it expands to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootArtifact {
    /// The compressed file.
    #[serde(flatten)]
    pub file: Artifact,
    /// How the file is compressed.
    pub compression: Compression,
    /// Bytes of the filesystem image, a multiple of 512; at most the slot's size.
    pub image_size: u64,
    /// Of the filesystem image (what the slot holds after the write).
    pub image_sha256: Digest,
    /// The frame list (`root.img.zst.frames`, [`FrameList`]): each frame's compressed size and
    /// SHA-256, so that an agent authenticates every frame before it decodes it. Agents refuse a
    /// release without one; older indexes parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<Artifact>,
}

/// The frame list of a zstd root: one line per frame, in stream order, `<compressed bytes>
/// <SHA-256 of those bytes>\n`. Its own size and SHA-256 are in the signed index, so each frame
/// is authenticated before any decoder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FrameList(pub Vec<(u64, Digest)>);

/// The most compressed bytes a frame of [`ZSTD_FRAME_BYTES`] may take (zstd's bound for
/// incompressible data is a little above the input).
pub const MAX_COMPRESSED_FRAME: u64 = ZSTD_FRAME_BYTES + ZSTD_FRAME_BYTES / 128 + 4096;

impl FrameList {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().map(|(n, d)| format!("{n} {d}\n")).collect::<String>().into_bytes()
    }

    /// Parses a frame list of the compressed file `file_size` bytes long that expands to
    /// `image_size` bytes (the index's), checking that the frames add up to the file.
    pub fn parse(bytes: &[u8], file_size: u64, image_size: u64) -> Result<FrameList, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the frame list is not text".to_string())?;
        let mut frames = Vec::new();
        let mut total = 0u64;
        // Every frame but skippable ones expands to at least a byte; a list longer than this is
        // not of this image.
        let most = image_size / 512 + 1;
        for (i, line) in text.lines().enumerate() {
            let bad = || format!("the frame list, line {}: {line:?} is not `<bytes> <sha256>`", i + 1);
            let (n, d) = line.split_once(' ').ok_or_else(bad)?;
            let n: u64 = n.parse().map_err(|_| bad())?;
            let d = crate::hex::decode_hex::<32>(d).map(Digest).ok_or_else(bad)?;
            if n == 0 || n > MAX_COMPRESSED_FRAME {
                return Err(format!(
                    "the frame list, line {}: a frame of {n} bytes (1 to {MAX_COMPRESSED_FRAME})",
                    i + 1
                ));
            }
            total = total.saturating_add(n);
            frames.push((n, d));
            if frames.len() as u64 > most {
                return Err(format!("the frame list has more than {most} frames"));
            }
        }
        if total != file_size {
            return Err(format!("the frame list adds up to {total} bytes, the file is {file_size}"));
        }
        Ok(FrameList(frames))
    }
}

/// Compression of the root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard (RFC 8878): independent frames, one after another, each declaring the size it
    /// expands to, at most [`ZSTD_FRAME_BYTES`]. An agent splits the stream at frame ends and
    /// decompresses frames on all its CPUs, each straight to its place in the slot.
    Zstd,
}

/// The most image bytes one frame of a zstd root may expand to. Small frames cost ratio (4 MiB
/// frames make a Berth root about 3% bigger than one frame) and large ones memory: an agent
/// holds a few frames, compressed and expanded, per CPU.
pub const ZSTD_FRAME_BYTES: u64 = 4 << 20;

/// When hosts may take a release: host positions (see [`crate::rollout`]) are let in evenly
/// from `start` over `duration_seconds`; 0 means every host at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The first host may take it from here.
    pub start: Timestamp,
    /// Every host may take it from `start` plus this.
    pub duration_seconds: u64,
}

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        decode_hex::<32>(&s).map(Digest).ok_or_else(|| serde::de::Error::custom("a SHA-256 is 64 hex digits"))
    }
}

/// Why bytes are not a valid index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// More than [`MAX_INDEX_BYTES`].
    #[error("the index is {0} bytes, more than the {MAX_INDEX_BYTES} allowed")]
    TooLarge(usize),
    /// Not JSON of the schema.
    #[error("the index is not valid: {0}")]
    Syntax(String),
    /// A field breaks a rule.
    #[error("the index is not valid: {field}: {why}")]
    Invalid {
        /// Where (`releases[1].version`).
        field: String,
        /// What is wrong.
        why: String,
    },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> IndexError {
    IndexError::Invalid { field: field.into(), why: why.into() }
}

impl Index {
    /// Parses and checks an index.
    pub fn parse(bytes: &[u8]) -> Result<Index, IndexError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge(bytes.len()));
        }
        let index: Index = serde_json::from_slice(bytes).map_err(|e| IndexError::Syntax(e.to_string()))?;
        index.check()?;
        Ok(index)
    }

    /// The index as it is published: pretty JSON, with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Checks every rule a parsed index must hold.
    pub fn check(&self) -> Result<(), IndexError> {
        if self.schema != SCHEMA {
            return Err(invalid("schema", format!("{} is not a format this agent reads ({SCHEMA})", self.schema)));
        }
        check_name("channel", &self.channel)?;
        if self.expires <= self.issued {
            return Err(invalid("expires", format!("{} is not after issued ({})", self.expires, self.issued)));
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.releases.iter().enumerate() {
            let at = |f: &str| format!("releases[{i}].{f}");
            let v = semver::Version::parse(&r.version)
                .map_err(|e| invalid(at("version"), format!("{:?} is not a semantic version: {e}", r.version)))?;
            if !seen.insert(v) {
                return Err(invalid(at("version"), format!("{} is listed twice", r.version)));
            }
            if r.cmdline.len() > 4096 || r.cmdline.chars().any(|c| c.is_control()) {
                return Err(invalid(at("cmdline"), "at most 4096 printable characters"));
            }
            check_cmdline(&r.cmdline).map_err(|why| invalid(at("cmdline"), why))?;
            if r.rollout.duration_seconds > MAX_ROLLOUT_SECONDS {
                return Err(invalid(
                    at("rollout.duration_seconds"),
                    format!("{} is more than a year ({MAX_ROLLOUT_SECONDS})", r.rollout.duration_seconds),
                ));
            }
            let latest_start = self.expires.plus(std::time::Duration::from_secs(MAX_ROLLOUT_SECONDS));
            if r.rollout.start.0 < 0 || r.rollout.start > latest_start {
                return Err(invalid(
                    at("rollout.start"),
                    format!("{} is not between 1970 and a year after the index expires", r.rollout.start),
                ));
            }
            let frames = r.root.frames.iter().map(|f| ("root.frames", f));
            for (name, a) in
                [("root", &r.root.file), ("vmlinuz", &r.vmlinuz), ("initrd", &r.initrd)].into_iter().chain(frames)
            {
                check_path(&at(&format!("{name}.path")), &a.path)?;
                if a.size == 0 {
                    return Err(invalid(at(&format!("{name}.size")), "an artifact is never empty"));
                }
            }
            if r.root.image_size == 0 || !r.root.image_size.is_multiple_of(512) {
                return Err(invalid(at("root.image_size"), "a non-zero multiple of 512 bytes"));
            }
        }
        Ok(())
    }

    /// The release of `version`, if listed.
    pub fn release(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }
}

impl Release {
    /// The version, parsed (checked by [`Index::parse`]).
    pub fn semver(&self) -> semver::Version {
        semver::Version::parse(&self.version).unwrap_or_else(|_| semver::Version::new(0, 0, 0))
    }
}

/// Compares two version strings as semantic versions; a string that is not one sorts first.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
        (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The longest rollout: a year.
pub const MAX_ROLLOUT_SECONDS: u64 = 365 * 86_400;

/// Kernel parameters a release's command line may not set: bootmgr appends `root=` and
/// `berth.slot=` itself, and the first one of a parameter must not differ from the last one
/// (init and the agent read the slot from there); `init=` and `rd.*` would replace or steer
/// stage 1; `--` would hand everything after it to init as arguments.
pub const RESERVED_PARAMETERS: [&str; 3] = ["root", "berth.slot", "init"];

/// Refuses a command line that sets a reserved parameter (see [`RESERVED_PARAMETERS`]), an
/// `rd.*` parameter, or `--`.
pub fn check_cmdline(cmdline: &str) -> Result<(), String> {
    for word in cmdline.split_ascii_whitespace() {
        // The kernel strips quotes around a parameter (`"root=x"` is root=x).
        let word = word.trim_matches('"');
        if word == "--" {
            return Err("\"--\" is not allowed (it would end the kernel's parameters)".into());
        }
        let name = word.split_once('=').map_or(word, |(n, _)| n);
        // The kernel treats `-` and `_` in parameter names alike.
        let name = name.replace('-', "_");
        if RESERVED_PARAMETERS.iter().any(|r| name == r.replace('-', "_")) || name.starts_with("rd.") {
            return Err(format!(
                "{word:?} is not allowed: root=, berth.slot=, init=, rd.* and -- are set by bootmgr or stage 1"
            ));
        }
    }
    Ok(())
}

/// Channel names: what a file name can hold safely.
pub fn check_name(field: &str, s: &str) -> Result<(), IndexError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !s.starts_with('.');
    if ok { Ok(()) } else { Err(invalid(field, format!("{s:?} is not a name (letters, digits, - _ ., at most 64)"))) }
}

/// Artifact paths: relative, no `..`, no empty or dot components, plain characters.
fn check_path(field: &str, p: &str) -> Result<(), IndexError> {
    let plain = p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./+~".contains(&b));
    let parts_ok = p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if p.is_empty() || p.len() > 512 || !plain || !parts_ok {
        return Err(invalid(field, format!("{p:?} is not a relative path inside the repository")));
    }
    Ok(())
}
