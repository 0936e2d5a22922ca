//! Image definitions: `images/<name>.toml`, what an image is made of.
//!
//! This module owns the format (documented for users in `images/README.md`) and its checks.
//! Unknown keys are errors that name the file, line and column, so a misspelled key never
//! silently drops part of an image.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::size::ByteSize;

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {field}: {why}")]
    Invalid { path: PathBuf, field: String, why: String },
}

/// A whole image definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Definition {
    /// Image name; the disk is written as `<name>.img`.
    pub name: String,
    /// Image version (semantic version); the update agent compares these.
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub kernel: Kernel,
    /// Debian packages of the root, resolved with their dependencies.
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub units: Units,
    /// Directory (relative to the definition) copied over the root last.
    pub overlay: Option<PathBuf>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub partitions: Partitions,
    pub update: Option<Update>,
    /// Test and development aids, all off by default: none belongs in a production image.
    #[serde(default)]
    pub debug: DebugOptions,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kernel {
    /// Debian kernel package, e.g. `linux-image-cloud-amd64`.
    pub package: String,
    /// Kernel command line; bootmgr appends `root=PARTUUID=… berth.slot=…`.
    pub cmdline: String,
    /// Modules the root carries (names or globs under `kernel/`), with their dependencies.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Modules the initramfs carries beyond the storage drivers it always has.
    #[serde(default)]
    pub initramfs_modules: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Units {
    /// Units enabled as their `[Install]` section says (e.g. `containerd.service`).
    #[serde(default)]
    pub enable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Primary group id [default: a group of the user's name with gid = uid].
    pub gid: Option<u32>,
    /// Supplementary groups by name.
    #[serde(default)]
    pub groups: Vec<String>,
    /// [default: /home/<name>]
    pub home: Option<String>,
    /// [default: /bin/sh]
    pub shell: Option<String>,
}

/// Partition sizes (docs/design.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Partitions {
    #[serde(default = "Partitions::default_esp")]
    pub esp: ByteSize,
    /// Size of each of ROOT-A and ROOT-B.
    #[serde(default = "Partitions::default_root")]
    pub root: ByteSize,
    /// STATE as built; it grows to fill the disk on first boot.
    #[serde(default = "Partitions::default_state")]
    pub state: ByteSize,
}

impl Partitions {
    fn default_esp() -> ByteSize {
        ByteSize(berth_slot::layout::DEFAULT_ESP_SIZE)
    }
    fn default_root() -> ByteSize {
        ByteSize(berth_slot::layout::DEFAULT_ROOT_SIZE)
    }
    fn default_state() -> ByteSize {
        ByteSize(128 << 20)
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions { esp: Self::default_esp(), root: Self::default_root(), state: Self::default_state() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    /// URL of the channel's release index (`…/channels/<channel>.json`).
    pub channel: String,
    /// Trusted ed25519 public keys, 64 hex digits each.
    pub keys: Vec<String>,
    /// Signatures required on the index [default: 1].
    #[serde(default = "Update::default_threshold")]
    pub threshold: u32,
}

impl Update {
    fn default_threshold() -> u32 {
        1
    }
}

/// `[debug]`: what only test and development images carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebugOptions {
    /// Install `berth-guest-agent`, which gives whoever reaches the hypervisor's virtio-serial
    /// port unauthenticated root command execution and file access (the QEMU tests drive guests
    /// with it) [default: false].
    #[serde(default)]
    pub guest_agent: bool,
}

/// A definition with the paths it names resolved against its own directory.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub definition: Definition,
    /// The overlay directory, checked to exist.
    pub overlay: Option<PathBuf>,
    /// The exact bytes read: builds derive identifiers from them.
    pub source: Vec<u8>,
}

fn line_col(text: &str, span: Range<usize>) -> (usize, usize) {
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl Definition {
    /// Parses a definition; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Definition, DefinitionError> {
        let def: Definition = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s));
            DefinitionError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        def.validate(path)?;
        Ok(def)
    }

    /// Reads, parses and checks `path`, including that the overlay directory exists.
    pub fn load(path: &Path) -> Result<Loaded, DefinitionError> {
        let io = |source| DefinitionError::Io { path: path.to_path_buf(), source };
        let source = std::fs::read(path).map_err(io)?;
        let text = std::str::from_utf8(&source).map_err(|e| DefinitionError::Syntax {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("not UTF-8: {e}"),
        })?;
        let definition = Definition::parse(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let overlay = match &definition.overlay {
            None => None,
            Some(o) => {
                let dir = base.join(o);
                if !dir.is_dir() {
                    return Err(DefinitionError::Invalid {
                        path: path.to_path_buf(),
                        field: "overlay".into(),
                        why: format!("{} is not a directory", dir.display()),
                    });
                }
                Some(dir)
            }
        };
        Ok(Loaded { path: path.to_path_buf(), definition, overlay, source })
    }

    fn validate(&self, path: &Path) -> Result<(), DefinitionError> {
        let bad =
            |field: &str, why: String| DefinitionError::Invalid { path: path.to_path_buf(), field: field.into(), why };
        let name_ok = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !s.starts_with('.')
        };
        if !name_ok(&self.name) {
            return Err(bad("name", format!("{:?} must be letters, digits, '-', '_' or '.'", self.name)));
        }
        if !is_semver(&self.version) {
            return Err(bad("version", format!("{:?} is not a semantic version like 1.2.3", self.version)));
        }
        if self.kernel.cmdline.contains("root=") || self.kernel.cmdline.contains("berth.slot=") {
            return Err(bad("kernel.cmdline", "must not set root= or berth.slot=: bootmgr adds them".into()));
        }
        for (i, p) in self.packages.iter().enumerate() {
            if p.trim().is_empty() || p.contains(char::is_whitespace) {
                return Err(bad(&format!("packages[{i}]"), format!("{p:?} is not a package name")));
            }
        }
        for (i, u) in self.units.enable.iter().enumerate() {
            if !u.contains('.') || u.contains('/') {
                return Err(bad(&format!("units.enable[{i}]"), format!("{u:?} is not a unit name like foo.service")));
            }
        }
        let mib = berth_slot::layout::PARTITION_ALIGNMENT;
        for (field, size) in [
            ("partitions.esp", self.partitions.esp),
            ("partitions.root", self.partitions.root),
            ("partitions.state", self.partitions.state),
        ] {
            if size.0 == 0 || !size.0.is_multiple_of(mib) {
                return Err(bad(field, format!("{size} must be a non-zero multiple of 1 MiB")));
            }
        }
        if let Some(u) = &self.update {
            if !(u.channel.starts_with("http://") || u.channel.starts_with("https://")) {
                return Err(bad("update.channel", format!("{:?} is not an http(s) URL", u.channel)));
            }
            for (i, k) in u.keys.iter().enumerate() {
                if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(&format!("update.keys[{i}]"), "an ed25519 public key is 64 hex digits".into()));
                }
            }
            if u.threshold == 0 || u.threshold as usize > u.keys.len() {
                return Err(bad(
                    "update.threshold",
                    format!("{} must be between 1 and the number of keys ({})", u.threshold, u.keys.len()),
                ));
            }
        }
        let mut names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad("users", format!("user {:?} is defined twice", w[0])));
        }
        Ok(())
    }
}

/// `MAJOR.MINOR.PATCH` with optional `-pre` and `+build` parts.
fn is_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
version = "1.2.3"
packages = ["containerd"]

[kernel]
package = "linux-image-cloud-amd64"
cmdline = "console=ttyS0"

[partitions]
root = "512M"
"#;

    #[test]
    fn parses_and_defaults() {
        let d = Definition::parse(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(d.partitions.root.0, 512 << 20);
        assert_eq!(d.partitions.esp.0, 256 << 20);
        assert!(d.update.is_none());
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = GOOD.replace("packages =", "pakages =");
        let e = Definition::parse(&text, Path::new("images/t.toml")).unwrap_err().to_string();
        assert!(e.starts_with("images/t.toml:4:1: unknown field `pakages`"), "{e}");
    }

    #[test]
    fn h4_debug_guest_agent_is_off_unless_asked_and_its_keys_are_checked() {
        assert!(!Definition::parse(GOOD, Path::new("t.toml")).unwrap().debug.guest_agent);
        let on = format!("{GOOD}\n[debug]\nguest-agent = true\n");
        assert!(Definition::parse(&on, Path::new("t.toml")).unwrap().debug.guest_agent);
        let typo = format!("{GOOD}\n[debug]\nguest_agent = true\n");
        let e = Definition::parse(&typo, Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:14:1: unknown field `guest_agent`"), "{e}");
    }

    #[test]
    fn an_integer_size_is_bytes_and_a_negative_one_says_what_a_size_is() {
        let d = Definition::parse(&GOOD.replace("\"512M\"", "536870912"), Path::new("t.toml")).unwrap();
        assert_eq!(d.partitions.root.0, 512 << 20);
        let e = Definition::parse(&GOOD.replace("\"512M\"", "-5"), Path::new("t.toml")).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:11:8: -5 is not a size: ")
                && e.contains("a string such as \"1G\" or a positive number"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for (from, to, want) in [
            ("1.2.3", "1.2", "version"),
            ("console=ttyS0", "root=/dev/sda", "kernel.cmdline"),
            ("\"512M\"", "\"1000K\"", "partitions.root"),
        ] {
            let e = Definition::parse(&GOOD.replace(from, to), Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
