//! First-boot provisioning (docs/design.md §3): one TOML document handed to the machine through
//! QEMU's fw_cfg as `opt/org.berth/config` (`-fw_cfg name=opt/org.berth/config,file=…`; the
//! `qemu_fw_cfg` module in the initramfs shows it under `/sys/firmware/qemu_fw_cfg`) or, when
//! fw_cfg has none (VirtualBox, Vagrant, bare metal), as `berth/provision.toml` on the ESP
//! ([`esp`], read from the unmounted partition, never written). Stage 2 applies it once, after
//! `/var` and the `/etc` overlay are up and before the hostname is set and any unit starts;
//! everything it writes lands on STATE, so it survives updates. On a cloud the third source is
//! the metadata service, read by `berth-metadata.service` and applied later, at PID 1's
//! `berthctl provision-metadata`, once per instance ([`metadata`]).
//!
//! The document (unknown keys are errors; every key is optional):
//!
//! ```toml
//! hostname = "node-1"                # written to /etc/hostname
//!
//! [[users]]
//! name = "alice"
//! uid = 1001                         # default: the next free id from 1000
//! groups = ["sudo"]                  # supplementary groups; each must exist
//! shell = "/bin/bash"                # default: /bin/bash if the image has it, else /bin/sh
//! ssh_authorized_keys = ["ssh-ed25519 AAAA… alice@laptop"]
//! password_hash = "$y$j9T$…"         # crypt(3) hash; default `*` (no password, keys still work)
//!
//! [[files]]
//! path = "/etc/containerd/certs.d/registry/hosts.toml"  # under /etc or /var only
//! content = "…"                      # or content_base64 = "…"
//! mode = "0644"                      # default 0644
//! owner = "root"                     # user and group names, default root
//! group = "root"
//!
//! [[units]]
//! name = "hello.service"
//! content = "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
//! enable = true                      # the .wants/.requires/Alias links of its [Install] section
//!
//! [update]                           # written as /etc/berth/update.toml, which overrides the
//! channel = "https://…/channels/stable.json"   # image's /usr/lib/berth/update.toml
//! strategy = "off"
//! ```
//!
//! A user that exists already (such as the image's `core`) only gets the keys and groups it
//! lacks. A new user gets a personal group (gid = uid when free), a locked `/etc/shadow` entry
//! unless `password_hash` is given, and a home `/home/<name>` (0700; `/home` is a link to
//! `/var/home` on the read-only root) with `~/.ssh/authorized_keys`.
//!
//! The whole document is parsed and checked against the machine before anything is written, so
//! a malformed one changes nothing: the boot goes on with the image's defaults and the console
//! says which line is wrong. Then every file is staged beside its target and, only when all are,
//! renamed into place ([`apply`]). Files are written through [`crate::sys::fsat`]: nothing is
//! followed that a user could have planted, and inside a user's home PID 1 acts with the user's
//! fsuid. After a successful run the marker `/var/lib/berth/provisioned` (the document's
//! SHA-256) keeps later boots from applying it again; a document that failed is recorded in
//! `/var/lib/berth/provision-failed` (SHA-256 and reason) and not tried again while that names
//! it (`berthctl provision-status`; docs/provisioning.md).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use berth_accounts::{Entry, Group, Gshadow, Passwd, Shadow};
use berth_units::UnitName;
use berth_units::load::Loader;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::sys::fsat::{self, Created, Dir, FsError, Walk};

/// Why provisioning refused or could not apply a document. Each message is one line (it is
/// also the reason [`FAILED`] records) naming the entry, user, file or unit concerned.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The fw_cfg item could not be read (`op`: opening, reading).
    #[error("{op} {}: {source}", path.display())]
    Read { op: &'static str, path: PathBuf, source: std::io::Error },
    /// The ESP or its `berth/provision.toml` could not be found or read ([`esp`]).
    #[error("ESP {}: {why}", esp::ESP_PATH)]
    Esp { why: String },
    #[error("{} is larger than {} KiB", .0.location(), MAX_DOCUMENT >> 10)]
    TooLarge(Source),
    #[error("config {} is not UTF-8 ({why})", from.location())]
    NotUtf8 { from: Source, why: std::str::Utf8Error },
    /// TOML syntax, an unknown key or a value that does not fit ([`ValueError`]), where it is:
    /// `key` is the dotted key on that line (`files.mode`), when there is one.
    #[error("provisioning config {}:{line}:{column}: {message}", from.location())]
    Syntax { from: Source, line: usize, column: usize, key: Option<String>, message: String },
    /// A check across entries: `entry` names the entry (`users[1]`, `files[0] (/etc/x)`).
    #[error("provisioning config {}: {entry}: {why}", from.location())]
    Invalid { from: Source, entry: String, why: String },
    #[error("reading {file}: {source}")]
    AccountsRead { file: &'static str, source: std::io::Error },
    /// A line of an account file of the image (`/etc/passwd`, …) is not an entry of that file.
    #[error(transparent)]
    Accounts(#[from] berth_accounts::Error),
    /// A user of the document cannot be set up as asked.
    #[error("user {user}: {why}")]
    User { user: String, why: String },
    /// A file operation for a user (its home, `~/.ssh`) failed or was refused.
    #[error("user {user}: {source}")]
    Home { user: String, source: FsError },
    /// A file's `owner` or `group` (`what`) does not exist.
    #[error("files[{index}] ({}): no {what} `{name}`", path.display())]
    NoOwner { index: usize, path: PathBuf, what: &'static str, name: String },
    #[error("unit {unit}: no unit file in the image and no `content` to write")]
    NoUnit { unit: String },
    /// A unit's `[Install]` section does not parse (the message names the unit and line).
    #[error("{why}")]
    Install { unit: String, why: String },
    /// Enabling `unit` failed, or it has nothing to enable it by.
    #[error("enabling {unit}: {why}")]
    Enable { unit: String, why: String },
    #[error("update: {0}")]
    Update(toml::ser::Error),
    #[error("reading {}: {source}", path.display())]
    Skel { path: PathBuf, source: std::io::Error },
    #[error("/{}: no file name", path.display())]
    NoFileName { path: PathBuf },
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Renaming a staged file into place failed after `done` of `total` were.
    #[error("{source} ({done} of the document's {total} files were replaced before it)")]
    Commit { done: usize, total: usize, source: FsError },
    #[error("{source} (every file of the document was written; its units were not all enabled)")]
    NotAllEnabled { source: Box<ProvisionError> },
}

/// A single value that does not fit its key; the TOML error that carries it gives the value's
/// line and column ([`ProvisionError::Syntax`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is not a valid hostname (letters, digits, `-`, `.`)")]
    Hostname(String),
    #[error("`{0}` is not a valid user or group name")]
    Name(String),
    #[error("`{}` must be one non-empty line", .0.escape_default())]
    OneLine(String),
    #[error("`{}` is not an absolute path without `:`", .0.escape_default())]
    AbsolutePath(String),
    #[error("`{0}` must be an absolute path of a file under /etc or /var (the rest of the root is read-only)")]
    WritablePath(String),
    #[error("base64: {}", base64_why(.0))]
    Base64(base64::DecodeError),
    #[error("`{0}` is not an octal file mode such as \"0644\"")]
    Mode(String),
    #[error("`{name}` is not a unit name{}", why.as_ref().map_or(String::new(), |w| format!(": {w}")))]
    UnitName { name: String, why: Option<String> },
    /// `update.{key}` (the table is free-form otherwise).
    #[error("update.{key} {why}")]
    Update { key: String, why: &'static str },
    #[error("update.threshold {threshold} is more than the {keys} keys given")]
    Threshold { threshold: i64, keys: usize },
}

fn base64_why(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(_, b) if !b.is_ascii_graphic() => format!("byte {b:#04x} is not base64"),
        base64::DecodeError::InvalidByte(_, b'=') => "misplaced `=` padding in base64 text".into(),
        base64::DecodeError::InvalidByte(_, b) => format!("`{}` is not a base64 character", *b as char),
        base64::DecodeError::InvalidLength(_) => "base64 text must be a multiple of 4 characters long".into(),
        base64::DecodeError::InvalidLastSymbol(_, b) => {
            format!("`{}` ends the base64 text with stray bits", *b as char)
        }
        base64::DecodeError::InvalidPadding => {
            "base64 text must be padded with `=` to a multiple of 4 characters".into()
        }
    }
}

/// The fw_cfg item's name.
pub const FW_CFG_NAME: &str = "opt/org.berth/config";

/// Where a document came from. fw_cfg wins: the ESP is read only when fw_cfg has no document.
/// The cloud's metadata service is read later, by `berth-metadata.service`, and handed to PID 1
/// with `berthctl provision-metadata` ([`metadata`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// QEMU's fw_cfg item [`FW_CFG_NAME`].
    FwCfg,
    /// [`esp::ESP_PATH`] on the ESP.
    Esp,
    /// The user data of the cloud's metadata service, with its hostname and SSH keys.
    Metadata,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::FwCfg, Source::Esp, Source::Metadata];

    /// The source as the log, the markers and `berthctl provision-status` name it.
    pub fn name(self) -> &'static str {
        match self {
            Source::FwCfg => "fw_cfg opt/org.berth/config",
            Source::Esp => "ESP berth/provision.toml",
            Source::Metadata => "cloud metadata user data",
        }
    }

    /// The document as errors locate it (`…:line:column`).
    pub fn location(self) -> &'static str {
        match self {
            Source::FwCfg => FW_CFG_NAME,
            Source::Esp => "ESP berth/provision.toml",
            Source::Metadata => "cloud metadata user data",
        }
    }

    fn from_name(name: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A document as read from its source, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub source: Source,
    pub bytes: Vec<u8>,
}

pub(crate) mod esp;
pub mod metadata;
/// Where the `qemu_fw_cfg` module shows the item.
const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config/raw";
/// Written (relative to the root) once a document was applied: its SHA-256, its source and, for
/// the cloud metadata, the instance id and the platform, a line each ([`Marker`]).
pub const MARKER: &str = "var/lib/berth/provisioned";
/// Written (relative to the root) when a document failed: its SHA-256 on the first line, why on
/// the second, its source on the third (and the instance id for the cloud metadata). Later boots do not try that document again while this names it.
pub const FAILED: &str = "var/lib/berth/provision-failed";
/// A bigger `authorized_keys` in a user's home is refused rather than read into PID 1.
const MAX_AUTHORIZED_KEYS: u64 = 1 << 20;
/// A provisioning document is small; a bigger item is a mistake, not something to read into PID 1.
const MAX_DOCUMENT: u64 = 1 << 20;
/// Regular users' ids, as Debian's adduser picks them.
const FIRST_ID: u32 = 1000;
const LAST_ID: u32 = 59999;

/// A parsed, checked provisioning document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hostname: Option<Hostname>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub files: Vec<File>,
    #[serde(default)]
    pub units: Vec<Unit>,
    pub update: Option<Update>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: Name,
    pub uid: Option<u32>,
    #[serde(default)]
    pub groups: Vec<Name>,
    pub shell: Option<AbsolutePath>,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<OneLine>,
    pub password_hash: Option<OneLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: WritablePath,
    pub content: Option<String>,
    pub content_base64: Option<Base64>,
    #[serde(default)]
    pub mode: Mode,
    pub owner: Option<Name>,
    pub group: Option<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub name: UnitFileName,
    /// Written as `/etc/systemd/system/<name>`; without it the unit must exist in the image.
    pub content: Option<String>,
    #[serde(default)]
    pub enable: bool,
}

/// A hostname as `/etc/hostname` takes it (RFC 1123 labels, at most 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Hostname(pub String);

/// A user or group name: what [`berth_accounts::valid_name`] accepts, less `$` (a machine
/// account's mark), `.`, `..` and names of digits only (which tools would read as an id).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);

/// A string that fits one field of `/etc/passwd` or one line of `authorized_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OneLine(pub String);

/// An absolute path that fits a passwd field ([`berth_accounts::valid_field`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AbsolutePath(pub String);

/// An absolute path under `/etc` or `/var` (the root itself is read-only), without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WritablePath(pub PathBuf);

/// Base64 (standard alphabet, padded; whitespace ignored), decoded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Base64(pub Vec<u8>);

/// A file mode written in octal as a string, `"0644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Mode(pub u32);

/// A unit name such as `hello.service`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UnitFileName(pub String);

/// The `[update]` table, free-form for the update agent; the keys docs/design.md §4 names are checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct Update(pub toml::Table);

impl Default for Mode {
    fn default() -> Mode {
        Mode(0o644)
    }
}

impl TryFrom<String> for Hostname {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Hostname, ValueError> {
        let ok = s.len() <= 64
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok { Ok(Hostname(s)) } else { Err(ValueError::Hostname(s)) }
    }
}

impl TryFrom<String> for Name {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Name, ValueError> {
        // Stricter than the line format needs: these names are also path components (homes).
        let ok = berth_accounts::valid_name(&s)
            && !s.contains('$')
            && s != "."
            && s != ".."
            && !s.bytes().all(|b| b.is_ascii_digit());
        if ok { Ok(Name(s)) } else { Err(ValueError::Name(s)) }
    }
}

impl TryFrom<String> for OneLine {
    type Error = ValueError;
    fn try_from(s: String) -> Result<OneLine, ValueError> {
        if s.trim().is_empty() || s.contains(['\n', '\r']) {
            return Err(ValueError::OneLine(s));
        }
        Ok(OneLine(s))
    }
}

impl TryFrom<String> for AbsolutePath {
    type Error = ValueError;
    fn try_from(s: String) -> Result<AbsolutePath, ValueError> {
        if !s.starts_with('/') || !berth_accounts::valid_field(&s) {
            return Err(ValueError::AbsolutePath(s));
        }
        Ok(AbsolutePath(s))
    }
}

impl TryFrom<String> for WritablePath {
    type Error = ValueError;
    fn try_from(s: String) -> Result<WritablePath, ValueError> {
        let path = PathBuf::from(&s);
        let mut parts = path.components();
        let ok = parts.next() == Some(Component::RootDir)
            && matches!(parts.next(), Some(Component::Normal(top)) if top == "etc" || top == "var")
            && parts.clone().next().is_some()
            && parts.all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(ValueError::WritablePath(s));
        }
        Ok(WritablePath(path))
    }
}

impl TryFrom<String> for Base64 {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Base64, ValueError> {
        decode_base64(&s).map(Base64).map_err(ValueError::Base64)
    }
}

impl TryFrom<String> for Mode {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Mode, ValueError> {
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(ValueError::Mode(s)),
        }
    }
}

impl TryFrom<String> for UnitFileName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<UnitFileName, ValueError> {
        match UnitName::parse(&s) {
            Ok(_) if s.contains('/') => Err(ValueError::UnitName { name: s, why: None }),
            Ok(_) => Ok(UnitFileName(s)),
            Err(e) => Err(ValueError::UnitName { name: s, why: Some(e.to_string()) }),
        }
    }
}

impl TryFrom<toml::Table> for Update {
    type Error = ValueError;
    fn try_from(t: toml::Table) -> Result<Update, ValueError> {
        use toml::Value;
        let mut keys = None;
        for (key, value) in &t {
            let why = match (key.as_str(), value) {
                ("version", _) => Some("is the image's own and cannot be configured"),
                ("channel", Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => None,
                ("channel", _) => Some("must be an http(s) URL of a channel's index"),
                ("keys", Value::Array(a)) => {
                    let hex = |v: &Value| {
                        v.as_str().is_some_and(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
                    };
                    keys = Some(a.len());
                    (!a.iter().all(hex)).then_some("must be ed25519 public keys, 64 hex digits each")
                }
                ("keys", _) => Some("must be a list of ed25519 public keys"),
                ("threshold", Value::Integer(n)) if *n >= 1 => None,
                ("threshold", _) => Some("must be a number of signatures, at least 1"),
                ("strategy", Value::String(s)) if ["immediate", "window", "fleetlock", "off"].contains(&s.as_str()) => {
                    None
                }
                ("strategy", _) => Some("must be one of \"immediate\", \"window\", \"fleetlock\", \"off\""),
                _ => None,
            };
            if let Some(why) = why {
                return Err(ValueError::Update { key: key.clone(), why });
            }
        }
        if let (Some(n), Some(Value::Integer(threshold))) = (keys, t.get("threshold"))
            && *threshold as u64 > n as u64
        {
            return Err(ValueError::Threshold { threshold: *threshold, keys: n });
        }
        Ok(Update(t))
    }
}

impl File {
    pub fn bytes(&self) -> &[u8] {
        match (&self.content, &self.content_base64) {
            (Some(text), _) => text.as_bytes(),
            (None, Some(b)) => &b.0,
            (None, None) => &[],
        }
    }
}

/// Parses and checks a document from fw_cfg (the tests' and the fuzz target's shorthand).
#[cfg(test)]
pub fn parse(text: &str) -> Result<Config, ProvisionError> {
    parse_from(Source::FwCfg, text)
}

/// Parses and checks a document; errors name its source (`from`), line and column.
pub fn parse_from(from: Source, text: &str) -> Result<Config, ProvisionError> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let (line, column) = e.span().map_or((1, 1), |_| line_col(text, at));
        let key = e.span().and_then(|_| key_at(text, at));
        ProvisionError::Syntax { from, line, column, key, message: e.message().trim().replace('\n', " ") }
    })?;
    let bad = |entry: String, why: String| ProvisionError::Invalid { from, entry, why };
    let mut names = BTreeSet::new();
    for (i, u) in config.users.iter().enumerate() {
        if !names.insert(&u.name.0) {
            return Err(bad(format!("users[{i}]"), format!("user `{}` is listed twice", u.name.0)));
        }
        if u.name.0 == "root" {
            return Err(bad(
                format!("users[{i}]"),
                "`root` cannot be provisioned: its home /root is on the read-only root; give the keys to a user in \
                 the `sudo` group instead"
                    .into(),
            ));
        }
        if u.uid == Some(0) {
            return Err(bad(format!("users[{i}]"), "uid 0 is root's".into()));
        }
        if u.password_hash.as_ref().is_some_and(|h| !berth_accounts::valid_field(&h.0)) {
            return Err(bad(format!("users[{i}]"), "password_hash must not contain `:`".into()));
        }
    }
    let mut paths = BTreeSet::new();
    for (i, f) in config.files.iter().enumerate() {
        if f.content.is_some() == f.content_base64.is_some() {
            return Err(bad(
                format!("files[{i}] ({})", f.path.0.display()),
                "give one of `content` and `content_base64`".into(),
            ));
        }
        if !paths.insert(&f.path.0) {
            return Err(bad(format!("files[{i}]"), format!("{} is listed twice", f.path.0.display())));
        }
    }
    let mut units = BTreeSet::new();
    for (i, u) in config.units.iter().enumerate() {
        if !units.insert(&u.name.0) {
            return Err(bad(format!("units[{i}]"), format!("{} is listed twice", u.name.0)));
        }
        if let Some(text) = &u.content
            && let Err(e) = berth_units::Install::parse(&u.name.0, text)
        {
            return Err(bad(format!("units[{i}]"), e.to_string()));
        }
    }
    Ok(config)
}

/// The dotted key of the line at `offset` (`files.mode` for `mode = …` under `[[files]]`), when
/// that line assigns one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with(['[', '#']) {
        return None;
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_string());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.chars().count() - before.rfind('\n').map_or(0, |i| before[..=i].chars().count()) + 1;
    (line, column)
}

/// What [`apply`] did, one line per change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub actions: Vec<String>,
}

/// Reads the document (fw_cfg's, else the ESP's) and applies it once (see the module docs).
/// Returns the lines to log; never fails the boot.
pub fn run() -> Vec<String> {
    let root = Path::new("/");
    if root.join(MARKER).exists() {
        return vec!["provisioning: already applied on first boot".into()];
    }
    let document = read_document(Path::new(FW_CFG_RAW), || esp::device().map_err(|why| ProvisionError::Esp { why }));
    let lines = run_in(root, document);
    nix::unistd::sync();
    lines
}

/// The document to apply: the fw_cfg item at `fw_cfg` if the machine offers one, else
/// `berth/provision.toml` on the ESP (`esp_device` finds the partition; it is not looked for
/// when fw_cfg has a document). An error reading fw_cfg is not "none": the ESP is not read then.
fn read_document(
    fw_cfg: &Path,
    esp_device: impl FnOnce() -> Result<PathBuf, ProvisionError>,
) -> Result<Option<Document>, ProvisionError> {
    if let Some(bytes) = read_fw_cfg(fw_cfg)? {
        return Ok(Some(Document { source: Source::FwCfg, bytes }));
    }
    let device = esp_device()?;
    Ok(esp::read(&device)?.map(|bytes| Document { source: Source::Esp, bytes }))
}

/// The fw_cfg item's bytes, `None` when the machine offers none.
fn read_fw_cfg(raw: &Path) -> Result<Option<Vec<u8>>, ProvisionError> {
    let read = |op, source| ProvisionError::Read { op, path: raw.to_owned(), source };
    let file = match fs::File::open(raw) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read("opening", e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1).read_to_end(&mut bytes).map_err(|e| read("reading", e))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(ProvisionError::TooLarge(Source::FwCfg));
    }
    Ok(Some(bytes))
}

/// [`run`] on `root` with the document already read (`Ok(None)`: there is none).
pub fn run_in(root: &Path, document: Result<Option<Document>, ProvisionError>) -> Vec<String> {
    if root.join(MARKER).exists() {
        return vec!["provisioning: already applied on first boot".into()];
    }
    let Document { source, bytes } = match document {
        Ok(Some(d)) => d,
        Ok(None) => {
            return vec![format!(
                "provisioning: no config in fw_cfg ({FW_CFG_NAME}) or on the ESP ({})",
                esp::ESP_PATH
            )];
        }
        Err(e) => return vec![format!("provisioning: {e}; booting with the image's defaults")],
    };
    let name = source.name();
    let digest = sha256_hex(&bytes);
    if let Some(f) = failed(root).filter(|f| f.digest == digest) {
        return vec![format!(
            "provisioning: {name} (sha256 {digest}) failed on an earlier boot: {}; not tried again \
             (to retry it: rm /{FAILED}, then reboot)",
            f.reason
        )];
    }
    let outcome = std::str::from_utf8(&bytes)
        .map_err(|e| Failure::before(ProvisionError::NotUtf8 { from: source, why: e }))
        .and_then(|text| parse_from(source, text).map_err(Failure::before))
        .and_then(|config| apply(&config, root));
    let record = Record { digest, source, instance_id: None, platform: None };
    match outcome {
        Ok(report) => {
            let mut lines: Vec<String> = report.actions.iter().map(|a| format!("provisioning: {a}")).collect();
            lines.extend(record.applied(root));
            lines
        }
        Err(f) => record.failed(root, &f, "nothing applied, booting with the image's defaults"),
    }
}

/// What a document was, as the records on STATE keep it ([`MARKER`], [`FAILED`]).
pub(crate) struct Record {
    pub digest: String,
    pub source: Source,
    /// The cloud instance it was offered to ([`Source::Metadata`]).
    pub instance_id: Option<String>,
    pub platform: Option<String>,
}

impl Record {
    /// `aws, instance i-0abc` for the cloud metadata, nothing for the other sources.
    fn whose(&self) -> String {
        match (&self.platform, &self.instance_id) {
            (Some(p), Some(id)) => format!(" ({p}, instance {id})"),
            (Some(p), None) => format!(" ({p}, no instance id)"),
            (None, Some(id)) => format!(" (instance {id})"),
            (None, None) => String::new(),
        }
    }

    /// Marks the document applied (and forgets an earlier failure); returns the lines to log.
    fn applied(&self, root: &Path) -> Vec<String> {
        let (digest, name) = (&self.digest, self.source.name());
        let mut text = format!("{digest}\n{name}\n");
        if self.source == Source::Metadata {
            let line = |v: &Option<String>| v.as_deref().unwrap_or("").replace(['\n', '\r'], " ");
            text.push_str(&format!("{}\n{}\n", line(&self.instance_id), line(&self.platform)));
        }
        let mut lines = Vec::new();
        match write_state_file(root, MARKER, text.as_bytes()) {
            Ok(()) => lines
                .push(format!("provisioning: applied {name}{} (sha256 {digest}); marked in /{MARKER}", self.whose())),
            Err(e) => lines.push(format!("provisioning: applied, but {e}: it is applied again on the next boot")),
        }
        if root.join(FAILED).symlink_metadata().is_ok()
            && let Err(e) = fs::remove_file(root.join(FAILED))
        {
            lines.push(format!("provisioning: removing /{FAILED}: {e}"));
        }
        lines
    }

    /// Records the document as failed; returns the lines to log. `otherwise` says what the
    /// machine goes on with when nothing was applied.
    fn failed(&self, root: &Path, f: &Failure, otherwise: &str) -> Vec<String> {
        let what = if f.partly_applied { "applied only in part (the lines above say what changed)" } else { otherwise };
        let digest = &self.digest;
        let mut lines = vec![format!("provisioning: {}; {what}", f.reason)];
        let mut record =
            format!("{digest}\n{}\n{}\n", f.reason.to_string().replace(['\n', '\r'], " "), self.source.name());
        if let Some(id) = &self.instance_id {
            record.push_str(&format!("{}\n", id.replace(['\n', '\r'], " ")));
        }
        match write_state_file(root, FAILED, record.as_bytes()) {
            Ok(()) => lines.push(format!(
                "provisioning: recorded as failed in /{FAILED} (sha256 {digest}): not tried again on later boots; \
                 `berthctl provision-status` shows why"
            )),
            Err(e) => lines
                .push(format!("provisioning: {e}: the failure is not recorded, it is tried again on the next boot")),
        }
        lines
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A root-owned file of provisioning's own under `/var/lib/berth` (`rel` is [`MARKER`] or
/// [`FAILED`]), replaced atomically.
fn write_state_file(root: &Path, rel: &str, data: &[u8]) -> Result<(), FsError> {
    let rel = Path::new(rel);
    let (Some(dir), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(FsError::EmptyName);
    };
    let walked = Dir::open(root)?.walk(dir, &Walk { create: Some(0o755), root_links: true, owners: &[0] })?;
    walked.dir.write_file(name, data, 0o644, Some((0, 0)))
}

/// A document that failed, as [`FAILED`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub digest: String,
    pub reason: String,
    /// Where it came from (`None` in a record older than the ESP source).
    pub source: Option<Source>,
    /// The cloud instance it was offered to (the cloud metadata only).
    pub instance_id: Option<String>,
}

/// What [`FAILED`] says, when it exists: the digest, the reason, the source's name and the
/// instance id, a line each.
pub fn failed(root: &Path) -> Option<Failed> {
    let text = fs::read_to_string(root.join(FAILED)).ok()?;
    let mut lines = text.lines().map(str::trim);
    let digest = lines.next().unwrap_or("").to_string();
    let reason = lines.next().unwrap_or("").to_string();
    let source = lines.next().and_then(Source::from_name);
    let instance_id = lines.next().filter(|l| !l.is_empty()).map(str::to_string);
    Some(Failed { digest, reason, source, instance_id })
}

/// A document that was applied, as [`MARKER`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub digest: String,
    /// `None` in a marker older than the ESP source (which was fw_cfg's: [`recorded_name`]).
    pub source: Option<Source>,
    /// The cloud instance it was applied on (the cloud metadata only).
    pub instance_id: Option<String>,
    /// The platform whose metadata it was (the cloud metadata only).
    pub platform: Option<String>,
}

/// What [`MARKER`] says, when it exists.
pub fn marker(root: &Path) -> Option<Marker> {
    let text = fs::read_to_string(root.join(MARKER)).ok()?;
    let mut lines = text.lines().map(str::trim);
    let digest = lines.next().unwrap_or("").to_string();
    let source = lines.next().and_then(Source::from_name);
    let mut word = || lines.next().filter(|l| !l.is_empty()).map(str::to_string);
    let instance_id = word();
    let platform = word();
    Some(Marker { digest, source, instance_id, platform })
}

/// The name of a document's source in `berthctl provision-status`: a record older than the
/// ESP source does not say, and was from fw_cfg (the one source there was).
fn recorded_name(source: Option<Source>) -> &'static str {
    source.unwrap_or(Source::FwCfg).name()
}

/// `berthctl provision-status`: what provisioning did on this machine, from the files it
/// leaves on STATE, and the exit code (1 when a document failed).
pub fn status(root: &Path) -> (String, i32) {
    let mut out = String::new();
    if let Some(m) = marker(root) {
        let name = recorded_name(m.source);
        if m.source == Some(Source::Metadata) {
            let platform = m.platform.as_deref().unwrap_or("cloud");
            let instance = m.instance_id.as_deref().map_or("no instance id".to_string(), |id| format!("instance {id}"));
            out.push_str(&format!(
                "applied: {name} ({platform} metadata service, {instance}) with sha256 {} (/{MARKER}); later boots \
                 ignore fw_cfg and the ESP, and the metadata of the same instance\n",
                m.digest
            ));
        } else {
            out.push_str(&format!(
                "applied: {name} with sha256 {} (/{MARKER}); later boots ignore fw_cfg and the ESP\n",
                m.digest
            ));
        }
    }
    let code = match failed(root) {
        Some(f) => {
            let instance = f.instance_id.as_ref().map_or(String::new(), |id| format!(" (instance {id})"));
            out.push_str(&format!(
                "failed: {}{instance} with sha256 {}: {}\n\
                 not tried again while /{FAILED} names it; to retry it: rm /{FAILED}, then reboot \
                 (a changed document is tried on the next boot)\n",
                recorded_name(f.source),
                f.digest,
                f.reason
            ));
            1
        }
        None => 0,
    };
    if out.is_empty() {
        out.push_str(
            "none applied: no document was offered through fw_cfg, on the ESP or by a cloud metadata service, or \
             none could be read\n",
        );
    }
    (out, code)
}

/// Why [`apply`] failed, and whether it had changed the machine by then.
#[derive(Debug)]
pub struct Failure {
    pub reason: ProvisionError,
    /// Some files were replaced before the error (a rename or enabling a unit failed): the
    /// checks and the staging before them leave nothing behind.
    pub partly_applied: bool,
}

impl Failure {
    fn before(reason: ProvisionError) -> Failure {
        Failure { reason, partly_applied: false }
    }
}

/// Applies `config` to the tree at `root` (`/` on the machine), all or nothing as far as a
/// filesystem allows: everything is checked first (users' groups and homes, files' owners,
/// units to enable); then every file is written to a temporary file beside its target (and
/// every missing directory made), so that any error removes them again and leaves the tree as
/// it was; only then are they renamed into place, and the units enabled.
pub fn apply(config: &Config, root: &Path) -> Result<Report, Failure> {
    let mut accounts = Accounts::read(root).map_err(Failure::before)?;
    let users = accounts.plan(root, &config.users).map_err(Failure::before)?;
    let mut files = Vec::new();
    for (i, f) in config.files.iter().enumerate() {
        let owner = f.owner.as_ref().map_or("root", |n| &n.0);
        let group = f.group.as_ref().map_or("root", |n| &n.0);
        let path = &f.path.0;
        let missing = |what, name: &str| {
            Failure::before(ProvisionError::NoOwner { index: i, path: path.to_owned(), what, name: name.to_owned() })
        };
        let uid = accounts.uid(owner).ok_or_else(|| missing("user", owner))?;
        let gid = accounts.gid(group).ok_or_else(|| missing("group", group))?;
        files.push((f, uid, gid));
    }
    // Units the image must already have (those given with content are written first), and
    // units to enable must say where in their [Install] section.
    let loader = Loader::new(root, berth_units::HostInfo::detect(root));
    for u in &config.units {
        let install = match &u.content {
            Some(text) => berth_units::Install::parse(&u.name.0, text)
                .map_err(|e| Failure::before(ProvisionError::Install { unit: u.name.0.clone(), why: e.to_string() }))?,
            None => {
                let unit = loader.load(&u.name.0);
                if unit.fragment.is_none() {
                    return Err(Failure::before(ProvisionError::NoUnit { unit: u.name.0.clone() }));
                }
                unit.install
            }
        };
        if u.enable
            && install.wanted_by.is_empty()
            && install.required_by.is_empty()
            && install.alias.is_empty()
            && install.also.is_empty()
        {
            let why = format!("{} is static: it has no [Install] section to enable it by", u.name.0);
            return Err(Failure::before(ProvisionError::Enable { unit: u.name.0.clone(), why }));
        }
    }

    // Staged: nothing is visible yet, and dropping `tx` removes it all again.
    let mut tx = Transaction::default();
    let mut report = Report::default();
    let staged = (|| -> Result<(), ProvisionError> {
        let top = Dir::open(root)?;
        if let Some(h) = &config.hostname {
            tx.file(&top, Path::new("etc/hostname"), format!("{}\n", h.0).as_bytes(), 0o644, (0, 0))?;
            report.actions.push(format!("hostname {}", h.0));
        }
        accounts.stage(root, &top, &mut tx)?;
        let skel = read_skel(root)?;
        for u in &users {
            report.actions.push(u.stage_home(&top, &skel, &mut tx)?);
        }
        for (f, uid, gid) in files {
            let rel = f.path.0.strip_prefix("/").unwrap_or(&f.path.0);
            tx.file(&top, rel, f.bytes(), f.mode.0, (uid, gid))?;
            report.actions.push(format!(
                "wrote {} ({:04o}, {uid}:{gid}, {} bytes)",
                f.path.0.display(),
                f.mode.0,
                f.bytes().len()
            ));
        }
        let unit_dir = Path::new(berth_units::load::ADMIN_UNIT_DIR.trim_start_matches('/'));
        for u in &config.units {
            if let Some(text) = &u.content {
                tx.file(&top, &unit_dir.join(&u.name.0), text.as_bytes(), 0o644, (0, 0))?;
                report.actions.push(format!("wrote unit {}", u.name.0));
            }
        }
        if let Some(update) = &config.update {
            let text = toml::to_string(&update.0).map_err(ProvisionError::Update)?;
            let body = format!(
                "# Written by first-boot provisioning ([update]); overrides /usr/lib/berth/update.toml.\n{text}"
            );
            tx.file(&top, Path::new("etc/berth/update.toml"), body.as_bytes(), 0o644, (0, 0))?;
            report.actions.push("wrote /etc/berth/update.toml".into());
        }
        Ok(())
    })();
    if let Err(e) = staged {
        return Err(Failure::before(e));
    }
    tx.commit().map_err(|reason| Failure { reason, partly_applied: true })?;

    let wanted: Vec<&str> = config.units.iter().filter(|u| u.enable).map(|u| u.name.0.as_str()).collect();
    if !wanted.is_empty() {
        let actions = enable(root, &wanted).map_err(|e| Failure {
            reason: ProvisionError::NotAllEnabled { source: Box::new(e) },
            partly_applied: true,
        })?;
        report.actions.extend(actions);
    }
    Ok(report)
}

/// The files of a document, staged, and the directories made for them: [`Transaction::commit`]
/// renames the files into place; dropping it uncommitted removes both again.
#[derive(Default)]
struct Transaction {
    staged: Vec<fsat::Staged>,
    created: Vec<fsat::Created>,
}

impl Transaction {
    /// Stages `data` for `rel`, a path inside the root. Its directory is walked from the root:
    /// missing directories are made (0755, root's), a symlink is followed only where only root
    /// can have made it, and every directory on the way must be root's or the file's owner's.
    fn file(
        &mut self,
        top: &Dir,
        rel: &Path,
        data: &[u8],
        mode: u32,
        (uid, gid): (u32, u32),
    ) -> Result<(), ProvisionError> {
        let (Some(dir), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(ProvisionError::NoFileName { path: rel.to_owned() });
        };
        let owners = [0, uid];
        let walked = top.walk(dir, &Walk { create: Some(0o755), root_links: true, owners: &owners })?;
        self.created.extend(walked.created);
        self.staged.push(walked.dir.stage(name, data, mode, Some((uid, gid)))?);
        Ok(())
    }

    fn commit(mut self) -> Result<(), ProvisionError> {
        let staged = std::mem::take(&mut self.staged);
        let total = staged.len();
        for (done, s) in staged.into_iter().enumerate() {
            s.commit().map_err(|source| ProvisionError::Commit { done, total, source })?;
        }
        // Kept: they hold what was committed.
        self.created.clear();
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // The temporary files first (each removes its own), then the directories, innermost first.
        self.staged.clear();
        while let Some(dir) = self.created.pop() {
            dir.remove();
        }
    }
}

/// Enables units with the engine `berthctl enable` and the image builder use (following
/// `Also=`); returns what it did.
fn enable(root: &Path, names: &[&str]) -> Result<Vec<String>, ProvisionError> {
    use berth_units::install::{self, Change};
    let mut actions = Vec::new();
    for name in names {
        let failed = |why: String| ProvisionError::Enable { unit: name.to_string(), why };
        // A fresh loader for each unit: the links of the one before are part of what it reads.
        let loader = Loader::new(root, berth_units::HostInfo::detect(root));
        let changes = install::plan_enable(&loader, name)
            .and_then(|changes| install::apply(root, &changes).map(|()| changes))
            .map_err(|e| failed(e.to_string()))?;
        if let Some(c @ Change::Static { .. }) = changes.first() {
            return Err(failed(c.to_string()));
        }
        if changes.is_empty() {
            actions.push(format!("unit {name} was enabled already"));
        }
        actions.extend(changes.iter().map(|c| format!("{name}: {c}")));
    }
    Ok(actions)
}

/// `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` as entries (their line format
/// is `berth_accounts`'), with what provisioning adds.
struct Accounts {
    passwd: Vec<Passwd>,
    group: Vec<Group>,
    /// `None`: the file does not exist (`/etc/shadow` is then created, `/etc/gshadow` is not).
    shadow: Option<Vec<Shadow>>,
    gshadow: Option<Vec<Gshadow>>,
    changed: bool,
}

/// A user as planned: what its home needs.
struct PlannedUser {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    /// `home` without its leading `/`, checked to be under `home/` or `var/`.
    home_rel: PathBuf,
    keys: Vec<String>,
    /// What the plan changed in the account files, for the report.
    summary: String,
}

impl Accounts {
    /// Every file whole: a line that is not an entry of its file (another number of fields, an
    /// id or day count that is not a number) refuses the document, naming the file and line.
    fn read(root: &Path) -> Result<Accounts, ProvisionError> {
        fn table<T: Entry>(root: &Path, file: &'static str, required: bool) -> Result<Option<Vec<T>>, ProvisionError> {
            let path = root.join(file.trim_start_matches('/'));
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
                Err(source) => return Err(ProvisionError::AccountsRead { file, source }),
            };
            Ok(Some(berth_accounts::parse(file, &text)?))
        }
        Ok(Accounts {
            passwd: table(root, "/etc/passwd", true)?.unwrap_or_default(),
            group: table(root, "/etc/group", true)?.unwrap_or_default(),
            shadow: table(root, "/etc/shadow", false)?,
            gshadow: table(root, "/etc/gshadow", false)?,
            changed: false,
        })
    }

    fn uid(&self, name: &str) -> Option<u32> {
        self.passwd.iter().find(|e| e.name == name).map(|e| e.uid)
    }

    fn gid(&self, name: &str) -> Option<u32> {
        self.group.iter().find(|e| e.name == name).map(|e| e.gid)
    }

    fn uid_taken(&self, id: u32) -> Option<&str> {
        self.passwd.iter().find(|e| e.uid == id).map(|e| e.name.as_str())
    }

    fn gid_taken(&self, id: u32) -> Option<&str> {
        self.group.iter().find(|e| e.gid == id).map(|e| e.name.as_str())
    }

    /// Adds the new users and groups memberships to the tables (in memory) and says what each
    /// user's home needs.
    fn plan(&mut self, root: &Path, users: &[User]) -> Result<Vec<PlannedUser>, ProvisionError> {
        let day = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0));
        let default_shell =
            if root.join("bin/bash").exists() || root.join("usr/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        let mut planned = Vec::new();
        for u in users {
            let name = u.name.0.clone();
            let refused = |why: String| ProvisionError::User { user: u.name.0.clone(), why };
            for g in &u.groups {
                if !self.group.iter().any(|e| e.name == g.0) {
                    return Err(refused(format!("no group `{}`", g.0)));
                }
            }
            let mut notes = Vec::new();
            let existing = self.passwd.iter().find(|e| e.name == name).cloned();
            let (uid, gid, home, created) = match existing {
                Some(entry) => {
                    if u.uid.is_some() || u.shell.is_some() || u.password_hash.is_some() {
                        notes.push("uid, shell and password_hash left as they are".to_string());
                    }
                    if entry.uid == 0 {
                        return Err(refused("it has uid 0 (root's), which provisioning does not touch".into()));
                    }
                    (entry.uid, entry.gid, entry.home, false)
                }
                None => {
                    let uid = match u.uid {
                        Some(id) => {
                            if let Some(other) = self.uid_taken(id) {
                                return Err(refused(format!("uid {id} belongs to `{other}`")));
                            }
                            id
                        }
                        None => (FIRST_ID..=LAST_ID)
                            .find(|&id| self.uid_taken(id).is_none() && self.gid_taken(id).is_none())
                            .ok_or_else(|| refused(format!("no free uid from {FIRST_ID} to {LAST_ID}")))?,
                    };
                    let gid = match self.gid(&name) {
                        Some(gid) => gid,
                        None => {
                            let gid = if self.gid_taken(uid).is_none() {
                                uid
                            } else {
                                (FIRST_ID..=LAST_ID)
                                    .find(|&id| self.gid_taken(id).is_none())
                                    .ok_or_else(|| refused("no free gid for its group".into()))?
                            };
                            self.group.push(Group {
                                name: name.clone(),
                                password: "x".into(),
                                gid,
                                members: Vec::new(),
                            });
                            if let Some(gs) = &mut self.gshadow {
                                gs.push(Gshadow {
                                    name: name.clone(),
                                    password: "*".into(),
                                    admins: Vec::new(),
                                    members: Vec::new(),
                                });
                            }
                            gid
                        }
                    };
                    let home = format!("/home/{name}");
                    let shell = u.shell.as_ref().map_or(default_shell, |s| &s.0);
                    self.passwd.push(Passwd {
                        name: name.clone(),
                        password: "x".into(),
                        uid,
                        gid,
                        gecos: String::new(),
                        home: home.clone(),
                        shell: shell.to_owned(),
                    });
                    // Locked (`*`) unless a hash is given.
                    let hash = u.password_hash.as_ref().map_or("*", |h| &h.0);
                    let shadow = self.shadow.get_or_insert_with(Vec::new);
                    shadow.retain(|e| e.name != name);
                    shadow.push(Shadow::new(&name, hash, day));
                    notes.push(format!("created with uid {uid}, gid {gid}, home {home}, shell {shell}"));
                    (uid, gid, home, true)
                }
            };
            let mut added = Vec::new();
            for g in &u.groups {
                let in_group = self.group.iter_mut().find(|e| e.name == g.0).map(|e| &mut e.members);
                let in_gshadow = self.gshadow.iter_mut().flatten().find(|e| e.name == g.0).map(|e| &mut e.members);
                for members in in_group.into_iter().chain(in_gshadow) {
                    if !members.contains(&name) {
                        members.push(name.clone());
                        if !added.contains(&g.0) {
                            added.push(g.0.clone());
                        }
                    }
                }
            }
            if !added.is_empty() {
                notes.push(format!("added to {}", added.join(", ")));
            }
            self.changed |= created || !added.is_empty();
            let home_rel = home_on_state(&home).ok_or_else(|| {
                refused(format!(
                    "its home {home} is not under /home or /var (the rest of the root is read-only); provisioning \
                     writes homes only on STATE"
                ))
            })?;
            planned.push(PlannedUser {
                name,
                uid,
                gid,
                home,
                home_rel,
                keys: u.ssh_authorized_keys.iter().map(|k| k.0.clone()).collect(),
                summary: notes.join("; "),
            });
        }
        Ok(planned)
    }

    /// Stages the tables (each file replaced by rename, keeping its mode and owner).
    fn stage(&self, root: &Path, top: &Dir, tx: &mut Transaction) -> Result<(), ProvisionError> {
        if !self.changed {
            return Ok(());
        }
        let secret = self.gid("shadow").map_or((0o600, 0), |g| (0o640, g));
        let tables = [
            ("etc/passwd", Some(berth_accounts::format(&self.passwd)), (0o644, 0)),
            ("etc/group", Some(berth_accounts::format(&self.group)), (0o644, 0)),
            ("etc/shadow", self.shadow.as_deref().map(berth_accounts::format), secret),
            ("etc/gshadow", self.gshadow.as_deref().map(berth_accounts::format), secret),
        ];
        for (file, text, (mode, gid)) in tables {
            let Some(text) = text else { continue };
            let (mode, uid, gid) = match root.join(file).symlink_metadata() {
                Ok(m) if m.is_file() => (m.mode() & 0o7777, m.uid(), m.gid()),
                _ => (mode, 0, gid),
            };
            tx.file(top, Path::new(file), text.as_bytes(), mode, (uid, gid))?;
        }
        Ok(())
    }
}

/// `home` (absolute, from `/etc/passwd` or made by the plan) without its leading `/`, when it
/// lies under `/home` or `/var`: the only places on STATE a home can be.
fn home_on_state(home: &str) -> Option<PathBuf> {
    let rel = Path::new(home).strip_prefix("/").ok()?;
    let mut parts = rel.components();
    let top = parts.next()?;
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && parts.next().is_some() && (top.as_os_str() == "home" || top.as_os_str() == "var"))
        .then(|| rel.to_path_buf())
}

/// The regular files at the top of `/etc/skel` (Debian's `.bashrc`, `.profile`, …): name,
/// bytes, mode.
fn read_skel(root: &Path) -> Result<Vec<(OsString, Vec<u8>, u32)>, ProvisionError> {
    let Ok(entries) = fs::read_dir(root.join("etc/skel")) else { return Ok(Vec::new()) };
    let mut skel = Vec::new();
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let data = fs::read(e.path()).map_err(|source| ProvisionError::Skel { path: e.path(), source })?;
        skel.push((e.file_name(), data, meta.mode() & 0o777));
    }
    skel.sort();
    Ok(skel)
}

impl PlannedUser {
    /// Stages the home (made from `/etc/skel` when new) with `~/.ssh/authorized_keys`. The
    /// home's own directory is opened without following a symlink and must be the user's;
    /// inside it PID 1 acts with the user's fsuid and fsgid and follows no symlink, so that
    /// nothing the user planted there reaches a file the user could not write.
    fn stage_home(
        &self,
        top: &Dir,
        skel: &[(OsString, Vec<u8>, u32)],
        tx: &mut Transaction,
    ) -> Result<String, ProvisionError> {
        let who = format!("user {}", self.name);
        let at = |source: FsError| ProvisionError::Home { user: self.name.clone(), source };
        let refused = |why: String| ProvisionError::User { user: self.name.clone(), why };
        let (uid, gid) = (self.uid, self.gid);
        let (Some(above), Some(name)) = (self.home_rel.parent(), self.home_rel.file_name()) else {
            return Err(refused(format!("home {} has no name", self.home)));
        };
        // `/home` is root's link to `var/home`: followed, as links only root can have made are.
        let walked = top.walk(above, &Walk { create: Some(0o755), root_links: true, owners: &[0] }).map_err(at)?;
        tx.created.extend(walked.created);
        if !walked.resolved.starts_with("var") {
            return Err(refused(format!(
                "its home {} is /{}, which is not on STATE (/var); not provisioned",
                self.home,
                walked.resolved.join(name).display()
            )));
        }
        let parent = walked.dir;
        let (home, new) = match parent.open_dir(name).map_err(at)? {
            Some(h) => {
                let owner = h.stat().map_err(at)?.st_uid;
                if owner != uid {
                    return Err(refused(format!(
                        "{} belongs to uid {owner}, not to {} (uid {uid}); not changed",
                        h.path().display(),
                        self.name
                    )));
                }
                (h, false)
            }
            None => {
                let h = parent.make_dir(name, 0o700).map_err(at)?;
                let h = h.ok_or_else(|| at(FsError::Appeared { path: parent.path().join(name) }))?;
                tx.created.push(Created::new(&parent, name).map_err(at)?);
                h.set_owner(uid, gid).map_err(at)?;
                (h, true)
            }
        };

        let _as_user = fsat::act_as(uid, gid).map_err(at)?;
        if new {
            for (file, data, mode) in skel {
                tx.staged.push(home.stage(file, data, *mode, Some((uid, gid))).map_err(at)?);
            }
        }
        let mut summary = self.summary.clone();
        if !self.keys.is_empty() {
            let ssh_name = OsStr::new(".ssh");
            let ssh = match home.open_dir(ssh_name).map_err(at)? {
                Some(d) => {
                    let owner = d.stat().map_err(at)?.st_uid;
                    if owner != uid {
                        return Err(refused(format!("{} belongs to uid {owner}; not used", d.path().display())));
                    }
                    d
                }
                None => {
                    let d = home.make_dir(ssh_name, 0o700).map_err(at)?;
                    let d = d.ok_or_else(|| at(FsError::Appeared { path: home.path().join(ssh_name) }))?;
                    tx.created.push(Created::new(&home, ssh_name).map_err(at)?);
                    d
                }
            };
            let keys_name = OsStr::new("authorized_keys");
            let path = ssh.path().join(keys_name);
            let mut text = match ssh.read_file(keys_name, MAX_AUTHORIZED_KEYS).map_err(at)? {
                None => String::new(),
                // A hard link to another file would have it rewritten as the user's.
                Some((_, st)) if st.st_uid != uid || st.st_nlink != 1 => {
                    return Err(refused(format!(
                        "{} belongs to uid {} and has {} links; only a file of the user's own with one link is \
                         rewritten",
                        path.display(),
                        st.st_uid,
                        st.st_nlink
                    )));
                }
                Some((bytes, _)) => {
                    String::from_utf8(bytes).map_err(|_| refused(format!("{} is not UTF-8 text", path.display())))?
                }
            };
            let have: BTreeSet<String> = text.lines().map(|l| l.trim().to_owned()).collect();
            let new: Vec<&String> = self.keys.iter().filter(|k| !have.contains(k.trim())).collect();
            if !new.is_empty() {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                for k in &new {
                    text.push_str(k.trim());
                    text.push('\n');
                }
                tx.staged.push(ssh.stage(keys_name, text.as_bytes(), 0o600, Some((uid, gid))).map_err(at)?);
            }
            if !summary.is_empty() {
                summary.push_str("; ");
            }
            summary.push_str(&format!("{} SSH key(s) added to {}/.ssh/authorized_keys", new.len(), self.home));
        }
        if summary.is_empty() {
            summary = "nothing to change".into();
        }
        Ok(format!("{who}: {summary}"))
    }
}

/// Standard base64 with `=` padding; ASCII whitespace (line breaks) is skipped.
fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(digits)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
