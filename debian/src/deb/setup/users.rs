//! Users and groups: base-passwd's `preinst` and passwd's `shadowconfig on`, done on the tree.

use berth_fstree::{Metadata, Tree};

use super::{SetupError, invalid, put_file, read_file};

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
pub(super) fn group_id(tree: &mut Tree, name: &str) -> Option<u32> {
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
