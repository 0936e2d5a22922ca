//! What the builder does instead of maintainer scripts.
//!
//! No maintainer script runs: they assume a running Debian system (a shell, dpkg, debconf,
//! root) and would make the build neither reproducible nor rootless. For a container host only a
//! few of their effects matter; this module performs those on the tree, after every package is
//! unpacked, deterministically (all times come from the caller's `mtime`, `SOURCE_DATE_EPOCH`).
//! The builder calls, in this order: [`base_files`], [`users`], [`ca_bundle`],
//! [`alternatives`] (with [`parse_alternatives`] over each package's `postinst`),
//! [`os_release`], [`dpkg_status`].
//!
//! | dpkg / maintainer script would have… | Berth does |
//! |---|---|
//! | base-passwd `preinst`: copy `passwd.master`, `group.master` to `/etc/passwd`, `/etc/group`; passwd `postinst` (`shadowconfig on`): `/etc/shadow`, `/etc/gshadow` | [`users`]: the four files from the master files plus the image's users and groups; every password locked (`*`) |
//! | ca-certificates `postinst`: write `/etc/ca-certificates.conf` (all certificates, via debconf) and run `update-ca-certificates` | [`ca_bundle`]: `/etc/ssl/certs/ca-certificates.crt` from `/etc/ca-certificates.conf` if present, else every `*.crt` under `/usr/share/ca-certificates` (sorted), then `/usr/local/share/ca-certificates`; the `NAME.pem` links. OpenSSL hash links (`openssl rehash`) and `/etc/ca-certificates/update.d` hooks (Java keystore…) are **skipped** |
//! | base-files `postinst`: `/etc/profile`, `/root/.profile`, `/root/.bashrc`, `/etc/motd` from `/usr/share/base-files`; `/var/run -> /run`, `/var/lock -> /run/lock`; `/mnt`, `/srv`, `/opt`, `/media`, `/etc/opt`, `/var/opt`, `/var/mail`, `/run/lock`, `/usr/local/*`; `/var/log/{wtmp,btmp,lastlog}` | [`base_files`]: the same, for a first installation |
//! | `update-alternatives --install` in `postinst`s (`awk`, `iptables`, `which`, `pager`…) | [`parse_alternatives`] reads the literal `--install`/`--slave` commands; [`alternatives`] makes the links of the highest priority choice (auto mode). Commands built from shell variables are reported, not guessed. No `/var/lib/dpkg/alternatives` database |
//! | base-files: `/usr/lib/os-release` (Debian's) | [`os_release`]: Berth's `/usr/lib/os-release` and `/etc/os-release -> ../usr/lib/os-release` |
//! | dpkg: `/var/lib/dpkg/status` | [`dpkg_status`]: the control paragraphs, `Status: install ok installed`, so scanners and `dpkg -l` see what is installed (no `Conffiles` checksums, no `info/*.list`) |
//! | libc-bin trigger: `ldconfig` writes `/etc/ld.so.cache` | **Not done.** glibc searches its built-in multiarch paths (`/usr/lib/x86_64-linux-gnu`…) without a cache; only libraries in extra `ld.so.conf.d` directories are not found |
//! | linux-image `postinst`: `depmod` (`modules.dep`…), initramfs, bootloader | **Not here**: the builder's kernel step owns `modules.dep` (the init needs it) and the initramfs; the bootloader is Berth's |
//! | `setcap` / `dpkg-statoverride` in `postinst`s (e.g. iputils-ping `cap_net_raw`) | **Not done**; file capabilities that a package ships in its tar headers are kept. Ping works through `net.ipv4.ping_group_range` (the init's sysctl) |
//! | `adduser` / `systemd-sysusers` in `postinst`s (`_apt`, `messagebus`…) | **Not done automatically**: the image lists the users it needs ([`Accounts`]) |
//! | tzdata `postinst`: `/etc/localtime`, `/etc/timezone` from debconf | **Not needed**: without `/etc/localtime` glibc uses UTC |
//! | `/etc/machine-id`, `/etc/hostname`, `/etc/hosts`, `/etc/fstab` (installer, systemd) | **Left absent**: the init owns machine identity, hostname and mounts at boot |
//! | debconf questions, man-db, mime, fontconfig… triggers | **Not needed** on a container host |

use std::collections::BTreeMap;

use berth_fstree::{Metadata, Node, NodeKind, Tree, TreeError};

use super::Control;
use super::path::{self, as_path, join, resolve_parent};

/// Why a step could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{path}: {source}")]
    Tree {
        path: String,
        #[source]
        source: TreeError,
    },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> SetupError {
    SetupError::Invalid { what: what.into(), why: why.into() }
}

// ---------------------------------------------------------------------------------------------
// Tree helpers: paths here are absolute strings; directories are looked up through symlinks.

/// The content of the regular file at `path` (symlinks followed), if there is one.
fn read_file(tree: &mut Tree, path: &str) -> Option<Vec<u8>> {
    let (id, _) = path::follow(tree, path.trim_start_matches('/').as_bytes())?;
    match &tree.node(id).kind {
        NodeKind::File(d) => d.read_all().ok(),
        _ => None,
    }
}

/// Whether `path` leads to something (symlinks followed).
fn exists(tree: &mut Tree, path: &str) -> bool {
    path::follow(tree, path.trim_start_matches('/').as_bytes()).is_some()
}

/// Whether `path` leads to a directory (symlinks followed).
fn is_dir(tree: &mut Tree, path: &str) -> bool {
    path::follow(tree, path.trim_start_matches('/').as_bytes()).is_some_and(|(id, _)| tree.node(id).kind.is_dir())
}

/// The entry at `path` itself (a final symlink not followed): its canonical path and id, the id
/// `None` if nothing is there. `None` altogether if a directory on the way does not exist.
fn entry(tree: &mut Tree, path: &str) -> Option<(Vec<u8>, Option<berth_fstree::NodeId>)> {
    let (parent, name) = resolve_parent(tree, path.trim_start_matches('/').as_bytes(), None, &mut Vec::new()).ok()?;
    let name = name?;
    Some((join(&parent.path, name), tree.child(parent.dir, name)))
}

/// Whether there is an entry at `path` (a final symlink not followed).
fn present(tree: &mut Tree, path: &str) -> bool {
    entry(tree, path).is_some_and(|(_, id)| id.is_some())
}

/// Puts `node` at `path`, replacing a non-directory there; missing parents are created 0755.
fn put(tree: &mut Tree, path: &str, node: Node, mtime: i64) -> Result<(), SetupError> {
    let tree_err = |source| SetupError::Tree { path: path.to_owned(), source };
    let dirs = Metadata::root(0o755, mtime);
    let (parent, name) = resolve_parent(tree, path.trim_start_matches('/').as_bytes(), Some(&dirs), &mut Vec::new())
        .map_err(|why| invalid(path, why))?;
    let name = name.ok_or_else(|| invalid(path, "is the root"))?;
    let at = join(&parent.path, name);
    if let Some(old) = tree.child(parent.dir, name) {
        if tree.node(old).kind.is_dir() {
            return Err(invalid(path, "is a directory"));
        }
        tree.unlink(as_path(&at)).map_err(tree_err)?;
    }
    tree.insert(as_path(&at), node).map_err(tree_err)?;
    Ok(())
}

fn put_file(tree: &mut Tree, path: &str, data: Vec<u8>, meta: Metadata) -> Result<(), SetupError> {
    let mtime = meta.mtime;
    put(tree, path, Node::new(NodeKind::File(data.into()), meta), mtime)
}

fn put_symlink(tree: &mut Tree, path: &str, target: &str, mtime: i64) -> Result<(), SetupError> {
    let node = Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, mtime));
    put(tree, path, node, mtime)
}

// ---------------------------------------------------------------------------------------------
// Users and groups.

/// A user the image adds to the base-passwd ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Primary group id; if no group has it, a group named like the user is made with it.
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Supplementary groups, by name; each must exist.
    pub groups: Vec<String>,
}

/// A group the image adds to the base-passwd ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

/// The users and groups an image adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    pub groups: Vec<Group>,
    pub users: Vec<User>,
}

/// What [`users`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersReport {
    /// Whether base-passwd's master files were found (otherwise only `root` is built in).
    pub base_passwd: bool,
    /// All user names, in file order.
    pub users: Vec<String>,
    /// All group names, in file order.
    pub groups: Vec<String>,
    /// Group of `/etc/shadow` and `/etc/gshadow` (42 `shadow` if that group exists, else 0).
    pub shadow_gid: u32,
}

struct PwEnt {
    name: String,
    password: String,
    uid: u32,
    gid: u32,
    gecos: String,
    home: String,
    shell: String,
}

struct GrEnt {
    name: String,
    password: String,
    gid: u32,
    members: Vec<String>,
}

const PASSWD_MASTER: &str = "/usr/share/base-passwd/passwd.master";
const GROUP_MASTER: &str = "/usr/share/base-passwd/group.master";

/// Writes `/etc/passwd`, `/etc/group` (0644), `/etc/shadow` and `/etc/gshadow` (0640
/// root:shadow if a `shadow` group exists, else 0600 root:root).
///
/// The entries are base-passwd's master files in their order (or, without base-passwd, just
/// `root`), then the caller's groups (and users' personal groups) sorted by gid, then the
/// caller's users sorted by uid. Names and ids must be unique. Every password is locked (`*`);
/// the password-change day is `mtime`'s day, so the files depend on nothing else.
pub fn users(tree: &mut Tree, accounts: &Accounts, mtime: i64) -> Result<UsersReport, SetupError> {
    let (mut pw, mut gr, base_passwd) = match (read_file(tree, PASSWD_MASTER), read_file(tree, GROUP_MASTER)) {
        (Some(p), Some(g)) => (parse_passwd(PASSWD_MASTER, &p)?, parse_group(GROUP_MASTER, &g)?, true),
        _ => {
            let root = PwEnt {
                name: "root".into(),
                password: "*".into(),
                uid: 0,
                gid: 0,
                gecos: "root".into(),
                home: "/root".into(),
                shell: "/bin/sh".into(),
            };
            let group = GrEnt { name: "root".into(), password: "*".into(), gid: 0, members: Vec::new() };
            (vec![root], vec![group], false)
        }
    };

    let mut new_groups: Vec<GrEnt> = Vec::new();
    let group_taken = |gr: &[GrEnt], new: &[GrEnt], name: &str, gid: u32| -> Option<String> {
        gr.iter().chain(new).find(|g| g.name == name || g.gid == gid).map(|g| format!("{}:{}", g.name, g.gid))
    };
    for g in &accounts.groups {
        check_name("group", &g.name)?;
        if let Some(other) = group_taken(&gr, &new_groups, &g.name, g.gid) {
            return Err(invalid(format!("group {}:{}", g.name, g.gid), format!("clashes with group {other}")));
        }
        new_groups.push(GrEnt { name: g.name.clone(), password: "*".into(), gid: g.gid, members: Vec::new() });
    }
    let mut users_sorted: Vec<&User> = accounts.users.iter().collect();
    users_sorted.sort_by(|a, b| (a.uid, &a.name).cmp(&(b.uid, &b.name)));
    let mut new_users = Vec::new();
    for u in &users_sorted {
        check_name("user", &u.name)?;
        for field in [&u.gecos, &u.home, &u.shell] {
            if field.contains([':', '\n']) {
                return Err(invalid(format!("user {}", u.name), format!("`{field}` contains `:` or a newline")));
            }
        }
        if let Some(other) = pw.iter().chain(&new_users).find(|p: &&PwEnt| p.name == u.name || p.uid == u.uid) {
            return Err(invalid(
                format!("user {}:{}", u.name, u.uid),
                format!("clashes with user {}:{}", other.name, other.uid),
            ));
        }
        if !gr.iter().chain(&new_groups).any(|g| g.gid == u.gid) {
            if let Some(other) = group_taken(&gr, &new_groups, &u.name, u.gid) {
                return Err(invalid(
                    format!("personal group {}:{}", u.name, u.gid),
                    format!("clashes with group {other}"),
                ));
            }
            new_groups.push(GrEnt { name: u.name.clone(), password: "*".into(), gid: u.gid, members: Vec::new() });
        }
        new_users.push(PwEnt {
            name: u.name.clone(),
            password: "*".into(),
            uid: u.uid,
            gid: u.gid,
            gecos: u.gecos.clone(),
            home: u.home.clone(),
            shell: u.shell.clone(),
        });
    }
    new_groups.sort_by(|a, b| (a.gid, &a.name).cmp(&(b.gid, &b.name)));
    gr.extend(new_groups);
    for u in &users_sorted {
        for name in &u.groups {
            let g = gr
                .iter_mut()
                .find(|g| &g.name == name)
                .ok_or_else(|| invalid(format!("user {}", u.name), format!("no group named `{name}`")))?;
            if !g.members.contains(&u.name) {
                g.members.push(u.name.clone());
            }
        }
    }
    pw.extend(new_users);

    let day = mtime.max(0) / 86_400;
    let mut passwd = String::new();
    let mut shadow = String::new();
    for p in &pw {
        passwd += &format!("{}:x:{}:{}:{}:{}:{}\n", p.name, p.uid, p.gid, p.gecos, p.home, p.shell);
        shadow += &format!("{}:{}:{day}:0:99999:7:::\n", p.name, p.password);
    }
    let mut group = String::new();
    let mut gshadow = String::new();
    for g in &gr {
        let members = g.members.join(",");
        group += &format!("{}:x:{}:{members}\n", g.name, g.gid);
        gshadow += &format!("{}:{}::{members}\n", g.name, g.password);
    }
    let shadow_gid = gr.iter().find(|g| g.name == "shadow").map(|g| g.gid);
    let secret = match shadow_gid {
        Some(gid) => Metadata { gid, ..Metadata::root(0o640, mtime) },
        None => Metadata::root(0o600, mtime),
    };
    put_file(tree, "/etc/passwd", passwd.into_bytes(), Metadata::root(0o644, mtime))?;
    put_file(tree, "/etc/group", group.into_bytes(), Metadata::root(0o644, mtime))?;
    put_file(tree, "/etc/shadow", shadow.into_bytes(), secret.clone())?;
    put_file(tree, "/etc/gshadow", gshadow.into_bytes(), secret)?;
    Ok(UsersReport {
        base_passwd,
        users: pw.into_iter().map(|p| p.name).collect(),
        groups: gr.into_iter().map(|g| g.name).collect(),
        shadow_gid: shadow_gid.unwrap_or(0),
    })
}

/// A user or group name: what `useradd` accepts without `--badname`, roughly.
fn check_name(what: &str, name: &str) -> Result<(), SetupError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b) || b == b'$');
    if ok { Ok(()) } else { Err(invalid(format!("{what} `{name}`"), "is not a valid name")) }
}

fn parse_passwd(file: &str, bytes: &[u8]) -> Result<Vec<PwEnt>, SetupError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(file, "not UTF-8"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(':').collect();
        let bad = || invalid(format!("{file} line {}", n + 1), format!("`{line}` is not a passwd entry"));
        let [name, password, uid, gid, gecos, home, shell] = f[..] else { return Err(bad()) };
        out.push(PwEnt {
            name: name.into(),
            password: password.into(),
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
            gecos: gecos.into(),
            home: home.into(),
            shell: shell.into(),
        });
    }
    Ok(out)
}

fn parse_group(file: &str, bytes: &[u8]) -> Result<Vec<GrEnt>, SetupError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(file, "not UTF-8"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(':').collect();
        let bad = || invalid(format!("{file} line {}", n + 1), format!("`{line}` is not a group entry"));
        let [name, password, gid, members] = f[..] else { return Err(bad()) };
        out.push(GrEnt {
            name: name.into(),
            password: password.into(),
            gid: gid.parse().map_err(|_| bad())?,
            members: members.split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect(),
        });
    }
    Ok(out)
}

/// A group's id from `/etc/group`, else base-passwd's `group.master`.
fn group_id(tree: &mut Tree, name: &str) -> Option<u32> {
    for file in ["/etc/group", GROUP_MASTER] {
        if let Some(bytes) = read_file(tree, file)
            && let Ok(groups) = parse_group(file, &bytes)
            && let Some(g) = groups.iter().find(|g| g.name == name)
        {
            return Some(g.gid);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// CA certificates.

/// Where [`ca_bundle`] took the list of certificates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// `/etc/ca-certificates.conf`.
    Conf,
    /// Every `*.crt` under `/usr/share/ca-certificates` (what ca-certificates' `postinst` would
    /// have written into a new `ca-certificates.conf`).
    AllShipped,
    /// Neither the file nor the directory exists: ca-certificates is not installed and nothing
    /// was written.
    NotInstalled,
}

/// What [`ca_bundle`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaReport {
    pub source: CaSource,
    /// Certificates in the bundle, in its order (paths in the tree).
    pub certificates: Vec<String>,
    /// Listed in `ca-certificates.conf` but absent (skipped, as update-ca-certificates does).
    pub missing: Vec<String>,
    /// Always false: OpenSSL subject-hash links are not made (see the module table).
    pub hash_links: bool,
}

const CA_DIR: &str = "/usr/share/ca-certificates";
const CA_LOCAL_DIR: &str = "/usr/local/share/ca-certificates";
const CA_CONF: &str = "/etc/ca-certificates.conf";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What `update-ca-certificates` does, minus hooks and hash links: concatenates the selected
/// certificates (each ending in a newline) into `/etc/ssl/certs/ca-certificates.crt` (0644) and
/// links `/etc/ssl/certs/NAME.pem` to each. Selected are the lines of `/etc/ca-certificates.conf`
/// not starting with `#` or `!` (paths under `/usr/share/ca-certificates`), or, without that
/// file, every `*.crt` there in byte order; then every `*.crt` under
/// `/usr/local/share/ca-certificates`, sorted.
pub fn ca_bundle(tree: &mut Tree, mtime: i64) -> Result<CaReport, SetupError> {
    let mut selected: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    let source = if let Some(conf) = read_file(tree, CA_CONF) {
        for line in String::from_utf8_lossy(&conf).lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let path = format!("{CA_DIR}/{line}");
            if read_file(tree, &path).is_some() { selected.push(path) } else { missing.push(path) }
        }
        CaSource::Conf
    } else if is_dir(tree, CA_DIR) {
        selected = crt_files(tree, CA_DIR);
        CaSource::AllShipped
    } else {
        return Ok(CaReport { source: CaSource::NotInstalled, certificates: Vec::new(), missing, hash_links: false });
    };
    selected.extend(crt_files(tree, CA_LOCAL_DIR));

    let mut bundle = Vec::new();
    for cert in &selected {
        let mut pem = read_file(tree, cert).unwrap_or_default();
        // update-ca-certificates adds a missing final newline (Debian #635570).
        if !pem.is_empty() && !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend_from_slice(&pem);
        let base = cert.rsplit('/').next().unwrap_or(cert);
        let base = base.strip_suffix(".crt").unwrap_or(base);
        let pem_name: String = base
            .chars()
            .map(|c| match c {
                ' ' | ',' => '_',
                '(' | ')' => '=',
                c => c,
            })
            .collect();
        put_symlink(tree, &format!("/etc/ssl/certs/{pem_name}.pem"), cert, mtime)?;
    }
    put_file(tree, CA_BUNDLE, bundle, Metadata::root(0o644, mtime))?;
    Ok(CaReport { source, certificates: selected, missing, hash_links: false })
}

/// Absolute paths of the regular files (symlinks followed) named `*.crt` below `dir`, sorted.
fn crt_files(tree: &mut Tree, dir: &str) -> Vec<String> {
    let Some((id, _)) = path::follow(tree, dir.trim_start_matches('/').as_bytes()) else { return Vec::new() };
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_owned(), id)];
    while let Some((prefix, dir_id)) = stack.pop() {
        let children: Vec<(String, berth_fstree::NodeId)> =
            tree.entries(dir_id).map(|(n, c)| (format!("{prefix}/{}", String::from_utf8_lossy(n)), c)).collect();
        for (p, c) in children {
            if tree.node(c).kind.is_dir() {
                stack.push((p, c));
            } else if p.ends_with(".crt") && read_file(tree, &p).is_some() {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------------
// os-release.

/// Berth's identity for `os-release` (os-release(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `NAME`, for example `Berth`.
    pub name: String,
    /// `VERSION_ID`: lower-case letters, digits, `.`, `_`, `-`.
    pub version_id: String,
    /// `PRETTY_NAME`; `None` gives `NAME VERSION_ID`.
    pub pretty_name: Option<String>,
    /// `BUILD_ID`: identifies this image build (no whitespace).
    pub build_id: String,
}

/// Writes `/usr/lib/os-release` (0644) and `/etc/os-release -> ../usr/lib/os-release`, replacing
/// Debian's from base-files: `NAME`, `ID=berth`, `ID_LIKE=debian`, `VERSION_ID`, `PRETTY_NAME`,
/// `BUILD_ID`.
pub fn os_release(tree: &mut Tree, os: &OsRelease, mtime: i64) -> Result<(), SetupError> {
    if os.version_id.is_empty()
        || !os.version_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(invalid(format!("VERSION_ID `{}`", os.version_id), "must be non-empty [a-z0-9._-]"));
    }
    if os.build_id.is_empty() || os.build_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("BUILD_ID `{}`", os.build_id), "must be non-empty, without whitespace"));
    }
    let pretty = os.pretty_name.clone().unwrap_or_else(|| format!("{} {}", os.name, os.version_id));
    for (key, v) in [("NAME", &os.name), ("PRETTY_NAME", &pretty)] {
        if v.is_empty() || v.chars().any(char::is_control) {
            return Err(invalid(format!("{key} `{v}`"), "must be non-empty, without control characters"));
        }
    }
    let text = format!(
        "NAME={}\nID=berth\nID_LIKE=debian\nVERSION_ID={}\nPRETTY_NAME={}\nBUILD_ID={}\n",
        quote(&os.name),
        quote(&os.version_id),
        quote(&pretty),
        quote(&os.build_id),
    );
    put_file(tree, "/usr/lib/os-release", text.into_bytes(), Metadata::root(0o644, mtime))?;
    put_symlink(tree, "/etc/os-release", "../usr/lib/os-release", mtime)
}

/// A shell double-quoted string, as os-release(5) asks.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

// ---------------------------------------------------------------------------------------------
// base-files.

/// What [`base_files`] did, one line per action, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseFilesReport {
    /// False if base-files is not installed (`/usr/share/base-files` absent): nothing was done.
    pub installed: bool,
    pub actions: Vec<String>,
}

/// base-files' `postinst configure` for a first installation (bookworm's), on the tree: default
/// dotfiles and profile, the FHS directories it creates, `/var/run -> /run` and
/// `/var/lock -> /run/lock`, `/usr/local`, and the login accounting files. Group ids (`mail`,
/// `utmp`, `staff`) come from `/etc/group` or base-passwd's master file.
pub fn base_files(tree: &mut Tree, mtime: i64) -> Result<BaseFilesReport, SetupError> {
    const DEFAULTS: &str = "/usr/share/base-files";
    let mut report = BaseFilesReport::default();
    if !is_dir(tree, DEFAULTS) {
        return Ok(report);
    }
    report.installed = true;
    let mut act = |s: String| report.actions.push(s);

    for (from, to) in [
        ("dot.profile", "/root/.profile"),
        ("dot.bashrc", "/root/.bashrc"),
        ("profile", "/etc/profile"),
        ("motd", "/etc/motd"),
    ] {
        copy_default(tree, &format!("{DEFAULTS}/{from}"), to, mtime, &mut act)?;
    }
    let mail = group_id(tree, "mail");
    for (dir, mode, gid) in [
        ("/mnt", 0o755, Some(0)),
        ("/srv", 0o755, Some(0)),
        ("/opt", 0o755, Some(0)),
        ("/etc/opt", 0o755, Some(0)),
        ("/var/opt", 0o755, Some(0)),
        ("/media", 0o755, Some(0)),
        ("/var/mail", 0o2775, mail),
        ("/run/lock", 0o1777, Some(0)),
    ] {
        ensure_dir(tree, dir, mode, gid, mtime, &mut act)?;
    }
    if !present(tree, "/var/spool/mail") {
        put_symlink(tree, "/var/spool/mail", "../mail", mtime)?;
        act("/var/spool/mail -> ../mail".into());
    }
    for (dir, target) in [("/var/run", "/run"), ("/var/lock", "/run/lock")] {
        migrate_directory(tree, dir, target, mtime, &mut act)?;
    }

    let staff =
        if read_file(tree, "/etc/staff-group-for-usr-local").is_some() { group_id(tree, "staff") } else { None };
    let (local_mode, local_gid) = match staff {
        Some(gid) => (0o2775, Some(gid)),
        None => (0o755, Some(0)),
    };
    for sub in ["", "/share", "/share/man", "/bin", "/games", "/lib", "/include", "/sbin", "/src", "/etc"] {
        ensure_dir(tree, &format!("/usr/local{sub}"), local_mode, local_gid, mtime, &mut act)?;
    }
    if !present(tree, "/usr/local/man") {
        put_symlink(tree, "/usr/local/man", "share/man", mtime)?;
        act("/usr/local/man -> share/man".into());
    }

    let utmp = group_id(tree, "utmp");
    for (file, mode) in [("/var/log/wtmp", 0o664), ("/var/log/btmp", 0o660), ("/var/log/lastlog", 0o664)] {
        let id = entry(tree, file).and_then(|(_, id)| id);
        let meta = Metadata { gid: utmp.unwrap_or(0), ..Metadata::root(mode, mtime) };
        match id {
            Some(id) if matches!(tree.node(id).kind, NodeKind::File(_)) => {
                let m = &mut tree.node_mut(id).meta;
                (m.mode, m.uid, m.gid) = (meta.mode, 0, meta.gid);
            }
            _ => put_file(tree, file, Vec::new(), meta)?,
        }
        act(format!("{file} {mode:o} root:{}", utmp.map_or("root (no utmp group)".into(), |g| g.to_string())));
    }

    if is_dir(tree, "/etc/dpkg/origins")
        && !present(tree, "/etc/dpkg/origins/default")
        && present(tree, "/etc/dpkg/origins/debian")
    {
        put_symlink(tree, "/etc/dpkg/origins/default", "debian", mtime)?;
        act("/etc/dpkg/origins/default -> debian".into());
    }
    if is_dir(tree, "/usr/share/info")
        && read_file(tree, "/usr/info/dir").is_none()
        && read_file(tree, "/usr/share/info/dir").is_none()
    {
        copy_default(tree, &format!("{DEFAULTS}/info.dir"), "/usr/share/info/dir", mtime, &mut act)?;
    }
    Ok(report)
}

/// `cp -p` of a default file if the destination does not exist.
fn copy_default(
    tree: &mut Tree,
    from: &str,
    to: &str,
    mtime: i64,
    act: &mut impl FnMut(String),
) -> Result<(), SetupError> {
    // `cp` into a missing directory fails; base-files ships every directory it copies into.
    match entry(tree, to) {
        Some((_, None)) => {}
        _ => return Ok(()),
    }
    let Some((id, _)) = path::follow(tree, from.trim_start_matches('/').as_bytes()) else { return Ok(()) };
    let node = tree.node(id).clone();
    if !matches!(node.kind, NodeKind::File(_)) {
        return Ok(());
    }
    put(tree, to, node, mtime)?;
    act(format!("{to} from {from}"));
    Ok(())
}

/// openssh-server's `postinst configure` for a first installation (bookworm's): `/etc/ssh/sshd_config`
/// from `/usr/share/openssh/sshd_config` (which Debian installs through ucf). Host keys are not
/// made here: an image must not ship one machine's keys to every machine (Berth images generate
/// them on first boot). Returns the actions taken (none without openssh-server).
pub fn openssh_server(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, SetupError> {
    let mut actions = Vec::new();
    if is_dir(tree, "/etc/ssh") {
        copy_default(tree, "/usr/share/openssh/sshd_config", "/etc/ssh/sshd_config", mtime, &mut |a| actions.push(a))?;
    }
    Ok(actions)
}

/// The PAM stacks `pam-auth-update --package` writes on a first installation of
/// libpam-runtime (bookworm's algorithm): `/etc/pam.d/common-{auth,account,password,session,
/// session-noninteractive}` from the templates in `/usr/share/pam/` and the profiles in
/// `/usr/share/pam-configs/` that say `Default: yes`, by priority (then name, descending); the
/// first module of each block uses its `-Initial` lines, and `end` in a jump becomes the
/// number of lines left in the block. Existing files are kept. Returns the files written.
pub fn pam_auth_update(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, SetupError> {
    const CONFIGS: &str = "/usr/share/pam-configs";
    let mut written = Vec::new();
    let Some((dir, _)) = path::follow(tree, CONFIGS.trim_start_matches('/').as_bytes()) else {
        return Ok(written);
    };
    let names: Vec<String> =
        tree.entries(dir).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>();
    let mut profiles: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for name in names {
        let Some(text) = read_file(tree, &format!("{CONFIGS}/{name}")) else { continue };
        let profile = parse_pam_profile(&String::from_utf8_lossy(&text));
        if profile.get("Default").map(String::as_str) == Some("yes") && !profile.contains_key("disabled") {
            profiles.push((name, profile));
        }
    }
    let priority =
        |p: &BTreeMap<String, String>| p.get("Priority").and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
    profiles.sort_by(|(an, a), (bn, b)| priority(b).cmp(&priority(a)).then(bn.cmp(an)));
    // A profile that conflicts with one already chosen (higher priority) is left out.
    let mut enabled: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for (name, p) in profiles {
        let conflicts = |p: &BTreeMap<String, String>, other: &str| {
            p.get("Conflicts").is_some_and(|c| c.split(", ").any(|x| x.trim() == other))
        };
        if enabled.iter().any(|(n, e)| conflicts(e, &name) || conflicts(&p, n)) {
            continue;
        }
        enabled.push((name, p));
    }
    for kind in ["auth", "account", "password", "session", "session-noninteractive"] {
        let target = format!("/etc/pam.d/common-{kind}");
        if present(tree, &target) {
            continue;
        }
        let Some(template) = read_file(tree, &format!("/usr/share/pam/common-{kind}")) else { continue };
        let Some(text) = pam_stack(&String::from_utf8_lossy(&template), kind, &enabled) else { continue };
        put_file(tree, &target, text.into_bytes(), Metadata::root(0o644, mtime))?;
        written.push(target);
    }
    Ok(written)
}

/// pam-auth-update's profile format: `Field: value` lines, continuation lines indented.
fn parse_pam_profile(text: &str) -> BTreeMap<String, String> {
    let mut profile: BTreeMap<String, String> = BTreeMap::new();
    let mut field = String::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace)
            && let Some((k, v)) = line.split_once(':')
            && !k.is_empty()
            && !k.contains(char::is_whitespace)
        {
            field = k.strip_suffix("-Final").unwrap_or(k).to_string();
            profile.insert(field.clone(), v.trim().to_string());
            continue;
        }
        let t = line.trim();
        if t.is_empty() || field.is_empty() {
            continue;
        }
        let value = profile.entry(field.clone()).or_default();
        if !value.is_empty() {
            value.push('\n');
        }
        value.push_str(t);
        if t.contains("pam_tally") {
            profile.insert("disabled".into(), String::new());
        }
    }
    if !profile.contains_key("Session-Interactive-Only") {
        for suffix in ["-Type", "", "-Initial"] {
            if let Some(v) = profile.get(&format!("Session{suffix}")).cloned() {
                profile.insert(format!("Session-noninteractive{suffix}"), v);
            }
        }
    }
    profile
}

/// One `common-*` file from its template; `None` when the template lacks the markers.
fn pam_stack(template: &str, kind: &str, enabled: &[(String, BTreeMap<String, String>)]) -> Option<String> {
    let field = {
        let mut c = kind.chars();
        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
    };
    let keyword = kind.trim_end_matches("-noninteractive");
    let lines_of = |block: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut position = 0;
        for (_, p) in enabled {
            if p.get(&format!("{field}-Type")).map(String::as_str) != Some(block) {
                continue;
            }
            let initial = p.get(&format!("{field}-Initial")).filter(|_| position == 0);
            position += 1;
            if let Some(text) = initial.or_else(|| p.get(&field)) {
                out.extend(text.lines().map(str::to_string));
            }
        }
        out
    };
    let mut out = String::new();
    let mut state = 0;
    for line in template.lines() {
        match state {
            1 if line.starts_with("# here's the fallback if no module succeeds") => state = 2,
            3 if line.starts_with("# end of pam-auth-update config") => state = 4,
            1 | 3 => continue,
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
        let block = match state {
            0 if line.starts_with("# here are the per-package modules (the \"Primary\" block)") => "Primary",
            2 if line.starts_with("# and here are more per-package modules (the \"Additional\" block)") => "Additional",
            _ => continue,
        };
        let lines = lines_of(block);
        let mut count = lines.len() as i64 - i64::from(block == "Additional");
        if block == "Primary" && lines.is_empty() {
            out.push_str(&format!("{keyword}\t[default=1]\t\t\tpam_permit.so\n"));
        }
        for l in lines {
            out.push_str(keyword);
            out.push('\t');
            out.push_str(&pam_line(&l, count));
            count -= 1;
        }
        state += 1;
    }
    (state == 4).then_some(out)
}

/// `control module options` with `end` in the control replaced by `count`; pam-auth-update
/// rejoins the options with single spaces (and a space even when there are none).
fn pam_line(line: &str, count: i64) -> String {
    let (control, rest) = if line.starts_with('[') {
        match line.find(']') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => (line, ""),
        }
    } else {
        line.split_at(line.find(char::is_whitespace).unwrap_or(line.len()))
    };
    let rest_trimmed = rest.trim_start();
    let gap = &rest[..rest.len() - rest_trimmed.len()];
    let mut words = rest_trimmed.split_whitespace();
    let module = words.next().unwrap_or("");
    let options: Vec<&str> = words.collect();
    let modline = format!("{control}{gap}{module}").replace("end", &count.to_string());
    format!("{modline} {}\n", options.join(" "))
}

/// `mkdir` with owner root:`gid` and `mode` if nothing is at `dir` (symlinks followed).
fn ensure_dir(
    tree: &mut Tree,
    dir: &str,
    mode: u16,
    gid: Option<u32>,
    mtime: i64,
    act: &mut impl FnMut(String),
) -> Result<(), SetupError> {
    if is_dir(tree, dir) {
        return Ok(());
    }
    let meta = Metadata { gid: gid.unwrap_or(0), ..Metadata::root(mode, mtime) };
    put(tree, dir, Node::new(NodeKind::Dir(Default::default()), meta), mtime)?;
    act(format!("{dir}/ {mode:o} root:{}", gid.map_or("root (group unknown)".into(), |g| g.to_string())));
    Ok(())
}

/// Replaces the (empty) directory `dir` with a symlink to `target`, unless it is a symlink.
fn migrate_directory(
    tree: &mut Tree,
    dir: &str,
    target: &str,
    mtime: i64,
    act: &mut impl FnMut(String),
) -> Result<(), SetupError> {
    if let Some((canonical, Some(id))) = entry(tree, dir) {
        match &tree.node(id).kind {
            NodeKind::Symlink(_) => return Ok(()),
            NodeKind::Dir(m) if !m.is_empty() => {
                return Err(invalid(dir, format!("cannot become a symlink to {target}: packages put files in it")));
            }
            NodeKind::Dir(_) => {
                tree.unlink(as_path(&canonical)).map_err(|source| SetupError::Tree { path: dir.into(), source })?;
            }
            _ => return Err(invalid(dir, "is not a directory")),
        }
    }
    put_symlink(tree, dir, target, mtime)?;
    act(format!("{dir} -> {target}"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Alternatives.

/// One `update-alternatives --install LINK NAME PATH PRIORITY [--slave LINK NAME PATH]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    pub slaves: Vec<SlaveLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveLink {
    pub link: String,
    pub name: String,
    pub path: String,
}

/// The literal `update-alternatives --install` commands of a maintainer script, and the text of
/// those that could not be read (arguments from shell variables or command substitution). Lines
/// continued with `\` are joined; other commands are ignored.
pub fn parse_alternatives(script: &[u8]) -> (Vec<Alternative>, Vec<String>) {
    let text = String::from_utf8_lossy(script).replace("\\\n", " ");
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut tokens = line.split_whitespace();
        if !tokens.any(|t| t == "update-alternatives") {
            continue;
        }
        let args: Vec<&str> = tokens
            .take_while(|t| !matches!(*t, ";" | "||" | "&&" | "|" | "#") && !t.starts_with('>') && !t.starts_with("2>"))
            .map(|t| t.trim_end_matches(';'))
            .collect();
        if !args.contains(&"--install") {
            continue;
        }
        match parse_install(&args) {
            Some(alt) => found.push(alt),
            None => unreadable.push(line.to_owned()),
        }
    }
    (found, unreadable)
}

fn parse_install(args: &[&str]) -> Option<Alternative> {
    if args.iter().any(|a| a.contains(['$', '`', '"', '\'', '*'])) {
        return None;
    }
    let mut alt = None;
    let mut slaves = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--install" => {
                let [link, name, path, prio] = args.get(i + 1..i + 5)? else { return None };
                alt = Some(((*link).to_owned(), (*name).to_owned(), (*path).to_owned(), prio.parse().ok()?));
                i += 5;
            }
            "--slave" => {
                let [link, name, path] = args.get(i + 1..i + 4)? else { return None };
                slaves.push(SlaveLink { link: (*link).into(), name: (*name).into(), path: (*path).into() });
                i += 4;
            }
            "--altdir" | "--admindir" | "--log" => i += 2,
            a if a.starts_with("--") => i += 1, // --quiet, --force, --verbose
            _ => return None,
        }
    }
    let (link, name, path, priority) = alt?;
    let absolute = |p: &str| p.starts_with('/');
    if !absolute(&link) || !absolute(&path) || slaves.iter().any(|s| !absolute(&s.link) || !absolute(&s.path)) {
        return None;
    }
    Some(Alternative { link, name, path, priority, slaves })
}

/// What [`alternatives`] chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlternativesReport {
    /// `(name, chosen path)`, by name.
    pub chosen: Vec<(String, String)>,
    /// Links not made, with the reason (no candidate present, a real file in the way…).
    pub skipped: Vec<String>,
}

/// `update-alternatives` in auto mode: for each name, the candidate with the highest priority
/// whose path exists in the tree (the first listed on a tie) gets `/etc/alternatives/NAME ->
/// PATH` and `LINK -> /etc/alternatives/NAME`, and likewise for its slaves whose paths exist.
/// A link where a regular file is is left alone, as update-alternatives does.
pub fn alternatives(tree: &mut Tree, alts: &[Alternative], mtime: i64) -> Result<AlternativesReport, SetupError> {
    let mut by_name: BTreeMap<&str, Vec<&Alternative>> = BTreeMap::new();
    for a in alts {
        by_name.entry(a.name.as_str()).or_default().push(a);
    }
    let mut report = AlternativesReport::default();
    for (name, candidates) in by_name {
        let mut best: Option<&Alternative> = None;
        for c in candidates {
            if exists(tree, &c.path) && best.is_none_or(|b| c.priority > b.priority) {
                best = Some(c);
            }
        }
        let Some(best) = best else {
            report.skipped.push(format!("{name}: no candidate is installed"));
            continue;
        };
        let mut links = vec![(best.link.as_str(), name, best.path.as_str())];
        for s in &best.slaves {
            if exists(tree, &s.path) {
                links.push((s.link.as_str(), s.name.as_str(), s.path.as_str()));
            } else {
                report.skipped.push(format!("{}: slave {} is not installed", name, s.path));
            }
        }
        for (link, lname, target) in links {
            if let Some((_, Some(id))) = entry(tree, link)
                && !matches!(tree.node(id).kind, NodeKind::Symlink(_))
            {
                report.skipped.push(format!("{link}: not replacing a file with a link to {target}"));
                continue;
            }
            let admin = format!("/etc/alternatives/{lname}");
            put_symlink(tree, &admin, target, mtime)?;
            put_symlink(tree, link, &admin, mtime)?;
        }
        report.chosen.push((name.to_owned(), best.path.clone()));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// dpkg status.

/// Writes `/var/lib/dpkg/status` (0644): each package's control paragraph with
/// `Status: install ok installed` after its `Package` line, sorted by name and architecture
/// (one paragraph per name and architecture). Returns how many paragraphs were written.
pub fn dpkg_status<'a>(
    tree: &mut Tree,
    packages: impl IntoIterator<Item = &'a Control>,
    mtime: i64,
) -> Result<usize, SetupError> {
    let mut sorted: BTreeMap<(String, String), &Control> = BTreeMap::new();
    for c in packages {
        sorted.insert((c.package().to_owned(), c.architecture().to_owned()), c);
    }
    let mut out = String::new();
    for c in sorted.values() {
        let mut status_done = false;
        for line in c.raw.lines().filter(|l| !l.trim().is_empty()) {
            if line.to_ascii_lowercase().starts_with("status:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if !status_done && line.to_ascii_lowercase().starts_with("package:") {
                out.push_str("Status: install ok installed\n");
                status_done = true;
            }
        }
        out.push('\n');
    }
    put_file(tree, "/var/lib/dpkg/status", out.into_bytes(), Metadata::root(0o644, mtime))?;
    Ok(sorted.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_from_scripts() {
        let script = b"#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
            \tupdate-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n\
            \t  --slave /usr/bin/nawk nawk /usr/bin/mawk\n\
            \tupdate-alternatives --quiet --install /usr/bin/pager pager /bin/more 50 || true\n\
            \tupdate-alternatives --install /usr/bin/x x \"$P\" 10\n\
            \tupdate-alternatives --remove awk /usr/bin/mawk\n\
            fi\n";
        let (alts, bad) = parse_alternatives(script);
        assert_eq!(alts.len(), 2);
        assert_eq!(
            (alts[0].link.as_str(), alts[0].name.as_str(), alts[0].path.as_str()),
            ("/usr/bin/awk", "awk", "/usr/bin/mawk")
        );
        assert_eq!(alts[0].priority, 5);
        assert_eq!(
            alts[0].slaves,
            [SlaveLink { link: "/usr/bin/nawk".into(), name: "nawk".into(), path: "/usr/bin/mawk".into() }]
        );
        assert_eq!(alts[1].path, "/bin/more");
        assert_eq!(bad, ["update-alternatives --install /usr/bin/x x \"$P\" 10"]);
    }

    #[test]
    fn os_release_quoting() {
        assert_eq!(quote(r#"a "b" $c"#), r#""a \"b\" \$c""#);
    }
}
