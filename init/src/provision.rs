//! First-boot provisioning (DESIGN.md §3): one TOML document handed to the machine through
//! QEMU's fw_cfg as `opt/org.berth/config` (`-fw_cfg name=opt/org.berth/config,file=…`; the
//! `qemu_fw_cfg` module in the initramfs shows it under `/sys/firmware/qemu_fw_cfg`). Stage 2
//! applies it once, after `/var` and the `/etc` overlay are up and before the hostname is set
//! and any unit starts; everything it writes lands on STATE, so it survives updates.
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
//! says which line is wrong. Every file is replaced by rename. After a successful run the marker
//! `/var/lib/berth/provisioned` (the document's SHA-256) keeps later boots from applying it again.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_units::UnitName;
use berth_units::load::Loader;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The fw_cfg item's name.
pub const FW_CFG_NAME: &str = "opt/org.berth/config";
/// Where the `qemu_fw_cfg` module shows the item.
const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/config/raw";
/// Written (relative to the root) once a document was applied.
pub const MARKER: &str = "var/lib/berth/provisioned";
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

/// A user or group name (what `useradd` accepts without `--badname`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub String);

/// A string that fits one field of `/etc/passwd` or one line of `authorized_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OneLine(pub String);

/// An absolute path without `:` (a passwd field).
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

/// The `[update]` table, free-form for the update agent; the keys DESIGN.md §4 names are checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct Update(pub toml::Table);

impl Default for Mode {
    fn default() -> Mode {
        Mode(0o644)
    }
}

impl TryFrom<String> for Hostname {
    type Error = String;
    fn try_from(s: String) -> Result<Hostname, String> {
        let ok = s.len() <= 64
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok { Ok(Hostname(s)) } else { Err(format!("`{s}` is not a valid hostname (letters, digits, `-`, `.`)")) }
    }
}

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Name, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && !s.bytes().all(|b| b.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if ok { Ok(Name(s)) } else { Err(format!("`{s}` is not a valid user or group name")) }
    }
}

impl TryFrom<String> for OneLine {
    type Error = String;
    fn try_from(s: String) -> Result<OneLine, String> {
        if s.trim().is_empty() || s.contains(['\n', '\r']) {
            return Err(format!("`{}` must be one non-empty line", s.escape_default()));
        }
        Ok(OneLine(s))
    }
}

impl TryFrom<String> for AbsolutePath {
    type Error = String;
    fn try_from(s: String) -> Result<AbsolutePath, String> {
        if !s.starts_with('/') || s.contains([':', '\n']) {
            return Err(format!("`{}` is not an absolute path without `:`", s.escape_default()));
        }
        Ok(AbsolutePath(s))
    }
}

impl TryFrom<String> for WritablePath {
    type Error = String;
    fn try_from(s: String) -> Result<WritablePath, String> {
        let path = PathBuf::from(&s);
        let mut parts = path.components();
        let ok = parts.next() == Some(Component::RootDir)
            && matches!(parts.next(), Some(Component::Normal(top)) if top == "etc" || top == "var")
            && parts.clone().next().is_some()
            && parts.all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(format!(
                "`{s}` must be an absolute path of a file under /etc or /var (the rest of the root is read-only)"
            ));
        }
        Ok(WritablePath(path))
    }
}

impl TryFrom<String> for Base64 {
    type Error = String;
    fn try_from(s: String) -> Result<Base64, String> {
        decode_base64(&s).map(Base64)
    }
}

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Mode, String> {
        let digits = s.strip_prefix("0o").unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(format!("`{s}` is not an octal file mode such as \"0644\"")),
        }
    }
}

impl TryFrom<String> for UnitFileName {
    type Error = String;
    fn try_from(s: String) -> Result<UnitFileName, String> {
        match UnitName::parse(&s) {
            Ok(_) if s.contains('/') => Err(format!("`{s}` is not a unit name")),
            Ok(_) => Ok(UnitFileName(s)),
            Err(e) => Err(format!("`{s}` is not a unit name: {e}")),
        }
    }
}

impl TryFrom<toml::Table> for Update {
    type Error = String;
    fn try_from(t: toml::Table) -> Result<Update, String> {
        use toml::Value;
        let mut keys = None;
        for (key, value) in &t {
            let why = match (key.as_str(), value) {
                ("version", _) => Some("is the image's own and cannot be configured".to_string()),
                ("channel", Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => None,
                ("channel", _) => Some("must be an http(s) URL of a channel's index".into()),
                ("keys", Value::Array(a)) => {
                    let hex = |v: &Value| {
                        v.as_str().is_some_and(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
                    };
                    keys = Some(a.len());
                    (!a.iter().all(hex)).then(|| "must be ed25519 public keys, 64 hex digits each".into())
                }
                ("keys", _) => Some("must be a list of ed25519 public keys".into()),
                ("threshold", Value::Integer(n)) if *n >= 1 => None,
                ("threshold", _) => Some("must be a number of signatures, at least 1".into()),
                ("strategy", Value::String(s)) if ["immediate", "window", "fleetlock", "off"].contains(&s.as_str()) => {
                    None
                }
                ("strategy", _) => Some("must be one of \"immediate\", \"window\", \"fleetlock\", \"off\"".into()),
                _ => None,
            };
            if let Some(why) = why {
                return Err(format!("update.{key} {why}"));
            }
        }
        if let (Some(n), Some(Value::Integer(threshold))) = (keys, t.get("threshold"))
            && *threshold as u64 > n as u64
        {
            return Err(format!("update.threshold {threshold} is more than the {n} keys given"));
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

/// Parses and checks a document; errors name the fw_cfg item, line and column.
pub fn parse(text: &str) -> Result<Config, String> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        format!("provisioning config {FW_CFG_NAME}:{line}:{column}: {}", e.message().trim().replace('\n', " "))
    })?;
    let bad = |what: String| format!("provisioning config {FW_CFG_NAME}: {what}");
    let mut names = BTreeSet::new();
    for (i, u) in config.users.iter().enumerate() {
        if !names.insert(&u.name.0) {
            return Err(bad(format!("users[{i}]: user `{}` is listed twice", u.name.0)));
        }
        if u.uid == Some(0) {
            return Err(bad(format!("users[{i}]: uid 0 is root's")));
        }
        if u.password_hash.as_ref().is_some_and(|h| h.0.contains(':')) {
            return Err(bad(format!("users[{i}]: password_hash must not contain `:`")));
        }
    }
    let mut paths = BTreeSet::new();
    for (i, f) in config.files.iter().enumerate() {
        if f.content.is_some() == f.content_base64.is_some() {
            return Err(bad(format!(
                "files[{i}] ({}): give one of `content` and `content_base64`",
                f.path.0.display()
            )));
        }
        if !paths.insert(&f.path.0) {
            return Err(bad(format!("files[{i}]: {} is listed twice", f.path.0.display())));
        }
    }
    let mut units = BTreeSet::new();
    for (i, u) in config.units.iter().enumerate() {
        if !units.insert(&u.name.0) {
            return Err(bad(format!("units[{i}]: {} is listed twice", u.name.0)));
        }
        if let Some(text) = &u.content
            && let Err(e) = berth_units::Install::parse(&u.name.0, text)
        {
            return Err(bad(format!("units[{i}]: {e}")));
        }
    }
    Ok(config)
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

/// Reads the fw_cfg item and applies it once (see the module docs). Returns the lines to log;
/// never fails the boot.
pub fn run() -> Vec<String> {
    let root = Path::new("/");
    if root.join(MARKER).exists() {
        return vec!["provisioning: already applied on first boot".into()];
    }
    let document = read_fw_cfg(Path::new(FW_CFG_RAW));
    let lines = run_in(root, document);
    nix::unistd::sync();
    lines
}

/// The fw_cfg item's bytes, `None` when the machine offers none.
fn read_fw_cfg(raw: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match fs::File::open(raw) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", raw.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT + 1).read_to_end(&mut bytes).map_err(|e| format!("reading {}: {e}", raw.display()))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(format!("{FW_CFG_NAME} is larger than {} KiB", MAX_DOCUMENT >> 10));
    }
    Ok(Some(bytes))
}

/// [`run`] on `root` with the document already read (`Ok(None)`: there is none).
pub fn run_in(root: &Path, document: Result<Option<Vec<u8>>, String>) -> Vec<String> {
    if root.join(MARKER).exists() {
        return vec!["provisioning: already applied on first boot".into()];
    }
    let bytes = match document {
        Ok(Some(b)) => b,
        Ok(None) => return vec!["provisioning: no config in fw_cfg".into()],
        Err(e) => return vec![format!("provisioning: {e}; booting with the image's defaults")],
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "provisioning: config {FW_CFG_NAME} is not UTF-8 ({e}); nothing applied, booting with the image's defaults"
            )];
        }
    };
    let config = match parse(text) {
        Ok(c) => c,
        Err(e) => return vec![format!("provisioning: {e}; nothing applied, booting with the image's defaults")],
    };
    let mut lines = Vec::new();
    match apply(&config, root) {
        Ok(report) => lines.extend(report.actions.iter().map(|a| format!("provisioning: {a}"))),
        Err(e) => {
            lines.push(format!("provisioning: {e}; not marked as applied: it is tried again on the next boot"));
            return lines;
        }
    }
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let marker = root.join(MARKER);
    let written = marker
        .parent()
        .map_or(Ok(()), |d| mkdir_all(root, d))
        .and_then(|()| write_file(&marker, format!("{digest}\n").as_bytes(), 0o644, 0, 0));
    match written {
        Ok(()) => lines.push(format!("provisioning: applied {FW_CFG_NAME} (sha256 {digest}); marked in /{MARKER}")),
        Err(e) => lines.push(format!("provisioning: applied, but {e}: it is applied again on the next boot")),
    }
    lines
}

/// Applies `config` to the tree at `root` (`/` on the machine). Everything is checked first
/// (users' groups, files' owners, units to enable), so an error leaves the tree untouched.
pub fn apply(config: &Config, root: &Path) -> Result<Report, String> {
    let mut report = Report::default();
    let mut accounts = Accounts::read(root)?;
    let users = accounts.plan(root, &config.users)?;
    let mut files = Vec::new();
    for (i, f) in config.files.iter().enumerate() {
        let owner = f.owner.as_ref().map_or("root", |n| &n.0);
        let group = f.group.as_ref().map_or("root", |n| &n.0);
        let uid =
            accounts.uid(owner).ok_or_else(|| format!("files[{i}] ({}): no user `{owner}`", f.path.0.display()))?;
        let gid =
            accounts.gid(group).ok_or_else(|| format!("files[{i}] ({}): no group `{group}`", f.path.0.display()))?;
        files.push((f, uid, gid));
    }
    // Units the image must already have (those given with content are written first).
    let loader = Loader::new(root, berth_units::HostInfo::detect(root));
    for u in config.units.iter().filter(|u| u.content.is_none()) {
        if loader.load(&u.name.0).fragment.is_none() {
            return Err(format!("unit {}: no unit file in the image and no `content` to write", u.name.0));
        }
    }

    if let Some(h) = &config.hostname {
        write_file(&root.join("etc/hostname"), format!("{}\n", h.0).as_bytes(), 0o644, 0, 0)?;
        report.actions.push(format!("hostname {}", h.0));
    }
    accounts.write(root)?;
    for u in &users {
        report.actions.push(u.create_home(root)?);
    }
    for (f, uid, gid) in files {
        let path = root.join(f.path.0.strip_prefix("/").unwrap_or(&f.path.0));
        if let Some(dir) = path.parent() {
            mkdir_all(root, dir)?;
        }
        write_file(&path, f.bytes(), f.mode.0, uid, gid)?;
        report.actions.push(format!(
            "wrote {} ({:04o}, {uid}:{gid}, {} bytes)",
            f.path.0.display(),
            f.mode.0,
            f.bytes().len()
        ));
    }
    let unit_dir = root.join(berth_units::load::ADMIN_UNIT_DIR.trim_start_matches('/'));
    for u in &config.units {
        if let Some(text) = &u.content {
            mkdir_all(root, &unit_dir)?;
            write_file(&unit_dir.join(&u.name.0), text.as_bytes(), 0o644, 0, 0)?;
            report.actions.push(format!("wrote unit {}", u.name.0));
        }
    }
    let wanted: Vec<&str> = config.units.iter().filter(|u| u.enable).map(|u| u.name.0.as_str()).collect();
    if !wanted.is_empty() {
        report.actions.extend(enable(root, &wanted)?);
    }
    if let Some(update) = &config.update {
        let text = toml::to_string(&update.0).map_err(|e| format!("update: {e}"))?;
        let path = root.join("etc/berth/update.toml");
        if let Some(dir) = path.parent() {
            mkdir_all(root, dir)?;
        }
        let body = format!(
            "# Written by first-boot provisioning ({FW_CFG_NAME}); overrides /usr/lib/berth/update.toml.\n{text}"
        );
        write_file(&path, body.as_bytes(), 0o644, 0, 0)?;
        report.actions.push("wrote /etc/berth/update.toml".into());
    }
    Ok(report)
}

/// Enables units with `berthctl enable`'s code (following `Also=`); returns what it did.
fn enable(root: &Path, names: &[&str]) -> Result<Vec<String>, String> {
    let mut actions = Vec::new();
    for name in names {
        let changes = crate::berthctl::enable_links(root, name).map_err(|e| format!("enabling {name}: {e}"))?;
        if let Some(c @ crate::berthctl::Change::Static { .. }) = changes.first() {
            return Err(format!("enabling {name}: {c}"));
        }
        if changes.is_empty() {
            actions.push(format!("unit {name} was enabled already"));
        }
        actions.extend(changes.iter().map(|c| format!("{name}: {c}")));
    }
    Ok(actions)
}

/// `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow` as colon-separated fields,
/// with what provisioning adds.
struct Accounts {
    passwd: Vec<Vec<String>>,
    group: Vec<Vec<String>>,
    /// `None`: the file does not exist (`/etc/shadow` is then created, `/etc/gshadow` is not).
    shadow: Option<Vec<Vec<String>>>,
    gshadow: Option<Vec<Vec<String>>>,
    changed: bool,
}

/// A user as planned: what its home needs.
struct PlannedUser {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    keys: Vec<String>,
    created: bool,
    /// What the plan changed in the account files, for the report.
    summary: String,
}

impl Accounts {
    fn read(root: &Path) -> Result<Accounts, String> {
        let table = |file: &str, fields: usize, required: bool| -> Result<Option<Vec<Vec<String>>>, String> {
            let path = root.join(file.trim_start_matches('/'));
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
                Err(e) => return Err(format!("reading {file}: {e}")),
            };
            let mut rows = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let row: Vec<String> = line.split(':').map(str::to_owned).collect();
                if row.len() != fields {
                    return Err(format!("{file} line {}: `{line}` does not have {fields} fields", n + 1));
                }
                rows.push(row);
            }
            Ok(Some(rows))
        };
        let accounts = Accounts {
            passwd: table("/etc/passwd", 7, true)?.unwrap_or_default(),
            group: table("/etc/group", 4, true)?.unwrap_or_default(),
            shadow: table("/etc/shadow", 9, false)?,
            gshadow: table("/etc/gshadow", 4, false)?,
            changed: false,
        };
        for (file, rows, id) in [("/etc/passwd", &accounts.passwd, 2), ("/etc/group", &accounts.group, 2)] {
            if let Some(row) = rows.iter().find(|r| r[id].parse::<u32>().is_err()) {
                return Err(format!("{file}: `{}` has no numeric id", row.join(":")));
            }
        }
        Ok(accounts)
    }

    fn uid(&self, name: &str) -> Option<u32> {
        self.passwd.iter().find(|r| r[0] == name).and_then(|r| r[2].parse().ok())
    }

    fn gid(&self, name: &str) -> Option<u32> {
        self.group.iter().find(|r| r[0] == name).and_then(|r| r[2].parse().ok())
    }

    fn uid_taken(&self, id: u32) -> Option<&str> {
        self.passwd.iter().find(|r| r[2].parse() == Ok(id)).map(|r| r[0].as_str())
    }

    fn gid_taken(&self, id: u32) -> Option<&str> {
        self.group.iter().find(|r| r[2].parse() == Ok(id)).map(|r| r[0].as_str())
    }

    /// Adds the new users and groups memberships to the tables (in memory) and says what each
    /// user's home needs.
    fn plan(&mut self, root: &Path, users: &[User]) -> Result<Vec<PlannedUser>, String> {
        let day = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400)
            .to_string();
        let default_shell =
            if root.join("bin/bash").exists() || root.join("usr/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
        let mut planned = Vec::new();
        for u in users {
            let name = u.name.0.clone();
            for g in &u.groups {
                if !self.group.iter().any(|r| r[0] == g.0) {
                    return Err(format!("user {name}: no group `{}`", g.0));
                }
            }
            let mut notes = Vec::new();
            let existing = self.passwd.iter().find(|r| r[0] == name).cloned();
            let (uid, gid, home, created) = match existing {
                Some(row) => {
                    if u.uid.is_some() || u.shell.is_some() || u.password_hash.is_some() {
                        notes.push("uid, shell and password_hash left as they are".to_string());
                    }
                    let uid = row[2].parse().unwrap_or(0);
                    let gid = row[3].parse().unwrap_or(0);
                    (uid, gid, row[5].clone(), false)
                }
                None => {
                    let uid = match u.uid {
                        Some(id) => {
                            if let Some(other) = self.uid_taken(id) {
                                return Err(format!("user {name}: uid {id} belongs to `{other}`"));
                            }
                            id
                        }
                        None => (FIRST_ID..=LAST_ID)
                            .find(|&id| self.uid_taken(id).is_none() && self.gid_taken(id).is_none())
                            .ok_or_else(|| format!("user {name}: no free uid from {FIRST_ID} to {LAST_ID}"))?,
                    };
                    let gid = match self.gid(&name) {
                        Some(gid) => gid,
                        None => {
                            let gid = if self.gid_taken(uid).is_none() {
                                uid
                            } else {
                                (FIRST_ID..=LAST_ID)
                                    .find(|&id| self.gid_taken(id).is_none())
                                    .ok_or_else(|| format!("user {name}: no free gid for its group"))?
                            };
                            self.group.push(vec![name.clone(), "x".into(), gid.to_string(), String::new()]);
                            if let Some(gs) = &mut self.gshadow {
                                gs.push(vec![name.clone(), "*".into(), String::new(), String::new()]);
                            }
                            gid
                        }
                    };
                    let home = format!("/home/{name}");
                    let shell = u.shell.as_ref().map_or(default_shell, |s| &s.0);
                    self.passwd.push(
                        [&name, "x", &uid.to_string(), &gid.to_string(), "", &home, shell].map(str::to_owned).to_vec(),
                    );
                    let hash = u.password_hash.as_ref().map_or("*", |h| &h.0);
                    let shadow = self.shadow.get_or_insert_with(Vec::new);
                    shadow.retain(|r| r[0] != name);
                    shadow.push([&name, hash, &day, "0", "99999", "7", "", "", ""].map(str::to_owned).to_vec());
                    notes.push(format!("created with uid {uid}, gid {gid}, home {home}, shell {shell}"));
                    (uid, gid, home, true)
                }
            };
            let mut added = Vec::new();
            for g in &u.groups {
                for table in std::iter::once(&mut self.group).chain(self.gshadow.as_mut()) {
                    if let Some(row) = table.iter_mut().find(|r| r[0] == g.0) {
                        let mut members: Vec<String> =
                            row[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect();
                        if !members.contains(&name) {
                            members.push(name.clone());
                            row[3] = members.join(",");
                            if !added.contains(&g.0) {
                                added.push(g.0.clone());
                            }
                        }
                    }
                }
            }
            if !added.is_empty() {
                notes.push(format!("added to {}", added.join(", ")));
            }
            self.changed |= created || !added.is_empty();
            planned.push(PlannedUser {
                name,
                uid,
                gid,
                home,
                keys: u.ssh_authorized_keys.iter().map(|k| k.0.clone()).collect(),
                created,
                summary: notes.join("; "),
            });
        }
        Ok(planned)
    }

    /// Writes the tables back (each file by rename, keeping its mode and owner).
    fn write(&self, root: &Path) -> Result<(), String> {
        if !self.changed {
            return Ok(());
        }
        let secret = self.gid("shadow").map_or((0o600, 0), |g| (0o640, g));
        let tables = [
            ("etc/passwd", Some(&self.passwd), (0o644, 0)),
            ("etc/group", Some(&self.group), (0o644, 0)),
            ("etc/shadow", self.shadow.as_ref(), secret),
            ("etc/gshadow", self.gshadow.as_ref(), secret),
        ];
        for (file, rows, (mode, gid)) in tables {
            let Some(rows) = rows else { continue };
            let path = root.join(file);
            let (mode, uid, gid) = match path.metadata() {
                Ok(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
                Err(_) => (mode, 0, gid),
            };
            let text: String = rows.iter().map(|r| r.join(":") + "\n").collect();
            write_file(&path, text.as_bytes(), mode, uid, gid)?;
        }
        Ok(())
    }
}

impl PlannedUser {
    /// The home directory (made from `/etc/skel` when new) with `~/.ssh/authorized_keys`.
    fn create_home(&self, root: &Path) -> Result<String, String> {
        let home = root.join(self.home.trim_start_matches('/'));
        let (uid, gid) = (self.uid, self.gid);
        let mut summary = self.summary.clone();
        if home.symlink_metadata().is_err() {
            if let Some(parent) = home.parent() {
                mkdir_all(root, parent)?;
            }
            make_dir(&home, 0o700, uid, gid)?;
            copy_skel(root, &home, uid, gid)?;
        } else if self.created {
            chown(&home, uid, gid)?;
        }
        if !self.keys.is_empty() {
            let ssh = home.join(".ssh");
            if ssh.symlink_metadata().is_err() {
                make_dir(&ssh, 0o700, uid, gid)?;
            }
            let file = ssh.join("authorized_keys");
            let mut text = match fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(format!("reading {}: {e}", file.display())),
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
                write_file(&file, text.as_bytes(), 0o600, uid, gid)?;
            }
            if !summary.is_empty() {
                summary.push_str("; ");
            }
            summary.push_str(&format!("{} SSH key(s) added to {}/.ssh/authorized_keys", new.len(), self.home));
        }
        if summary.is_empty() {
            summary = "nothing to change".into();
        }
        Ok(format!("user {}: {summary}", self.name))
    }
}

/// Copies the regular files at the top of `/etc/skel` (Debian's `.bashrc`, `.profile`, …).
fn copy_skel(root: &Path, home: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let Ok(entries) = fs::read_dir(root.join("etc/skel")) else { return Ok(()) };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let data = fs::read(e.path()).map_err(|err| format!("reading {}: {err}", e.path().display()))?;
        write_file(&home.join(e.file_name()), &data, meta.mode() & 0o777, uid, gid)?;
    }
    Ok(())
}

/// `mkdir -p` for `dir` inside `root`, following symlinks on the way inside the root (so
/// `/home` → `var/home` creates `/var/home`). New directories are 0755 root.
fn mkdir_all(root: &Path, dir: &Path) -> Result<(), String> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut at = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else { continue };
        at.push(part);
        let mut target = at.clone();
        // Follow links inside the root (a bounded number of times).
        for _ in 0..8 {
            match fs::read_link(&target) {
                Ok(to) if to.is_absolute() => target = root.join(to.strip_prefix("/").unwrap_or(&to)),
                Ok(to) => target = target.parent().unwrap_or(root).join(to),
                Err(_) => break,
            }
        }
        if target != at {
            if !target.is_dir() {
                mkdir_all(root, &target)?;
            }
            at = target;
            continue;
        }
        if !at.is_dir() {
            make_dir(&at, 0o755, 0, 0)?;
        }
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), String> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(format!("creating {}: {e}", path.display())),
    }
    chown(path, uid, gid)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}

/// Writes `data` to a temporary file beside `path` and renames it over `path`: a crash leaves
/// the old file or the new one, never half of it. Ownership is set before the mode (chown
/// clears set-id bits).
fn write_file(path: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.berth-tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Standard base64 with `=` padding; ASCII whitespace (line breaks) is skipped.
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(4) {
        return Err("base64 text must be a multiple of 4 characters long".into());
    }
    let mut out = Vec::with_capacity(digits.len() / 4 * 3);
    for (i, chunk) in digits.chunks(4).enumerate() {
        let last = i + 1 == digits.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("misplaced `=` padding in base64 text".into());
        }
        let mut n: u32 = 0;
        for &b in &chunk[..4 - pad] {
            let v = match b {
                b'A'..=b'Z' => b - b'A',
                b'a'..=b'z' => b - b'a' + 26,
                b'0'..=b'9' => b - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return Err(format!("`{}` is not a base64 character", b as char)),
            };
            n = n << 6 | u32::from(v);
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
