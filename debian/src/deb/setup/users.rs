//! Users and groups: base-passwd's `preinst` and passwd's `shadowconfig on`, done on the tree.
//! The files' line format is [`berth_accounts`]'s.

use berth_accounts::{Gshadow, Passwd, Shadow};
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
            let root = Passwd {
                name: "root".into(),
                password: "*".into(),
                uid: 0,
                gid: 0,
                gecos: "root".into(),
                home: "/root".into(),
                shell: "/bin/sh".into(),
            };
            let group =
                berth_accounts::Group { name: "root".into(), password: "*".into(), gid: 0, members: Vec::new() };
            (vec![root], vec![group], false)
        }
    };

    let mut new_groups: Vec<berth_accounts::Group> = Vec::new();
    let group_taken = |gr: &[berth_accounts::Group], new: &[berth_accounts::Group], name: &str, gid: u32| {
        gr.iter().chain(new).find(|g| g.name == name || g.gid == gid).map(|g| format!("{}:{}", g.name, g.gid))
    };
    for g in &accounts.groups {
        check_name("group", &g.name)?;
        if let Some(other) = group_taken(&gr, &new_groups, &g.name, g.gid) {
            return Err(invalid(format!("group {}:{}", g.name, g.gid), format!("clashes with group {other}")));
        }
        new_groups.push(locked_group(&g.name, g.gid));
    }
    let mut users_sorted: Vec<&User> = accounts.users.iter().collect();
    users_sorted.sort_by(|a, b| (a.uid, &a.name).cmp(&(b.uid, &b.name)));
    let mut new_users = Vec::new();
    for u in &users_sorted {
        check_name("user", &u.name)?;
        for field in [&u.gecos, &u.home, &u.shell] {
            if !berth_accounts::valid_field(field) {
                return Err(invalid(format!("user {}", u.name), format!("`{field}` contains `:` or a newline")));
            }
        }
        if let Some(other) = pw.iter().chain(&new_users).find(|p: &&Passwd| p.name == u.name || p.uid == u.uid) {
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
            new_groups.push(locked_group(&u.name, u.gid));
        }
        new_users.push(Passwd {
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

    // The password itself goes to shadow; passwd and group say `x`.
    let day = mtime.max(0) / 86_400;
    let shadow: Vec<Shadow> = pw.iter().map(|p| Shadow::new(&p.name, &p.password, day)).collect();
    let gshadow: Vec<Gshadow> = gr
        .iter()
        .map(|g| Gshadow {
            name: g.name.clone(),
            password: g.password.clone(),
            admins: Vec::new(),
            members: g.members.clone(),
        })
        .collect();
    let passwd: Vec<Passwd> = pw.iter().map(|p| Passwd { password: "x".into(), ..p.clone() }).collect();
    let group: Vec<berth_accounts::Group> =
        gr.iter().map(|g| berth_accounts::Group { password: "x".into(), ..g.clone() }).collect();
    let shadow_gid = gr.iter().find(|g| g.name == "shadow").map(|g| g.gid);
    let secret = match shadow_gid {
        Some(gid) => Metadata { gid, ..Metadata::root(0o640, mtime) },
        None => Metadata::root(0o600, mtime),
    };
    let file = |text: String| text.into_bytes();
    put_file(tree, "/etc/passwd", file(berth_accounts::format(&passwd)), Metadata::root(0o644, mtime))?;
    put_file(tree, "/etc/group", file(berth_accounts::format(&group)), Metadata::root(0o644, mtime))?;
    put_file(tree, "/etc/shadow", file(berth_accounts::format(&shadow)), secret.clone())?;
    put_file(tree, "/etc/gshadow", file(berth_accounts::format(&gshadow)), secret)?;
    Ok(UsersReport {
        base_passwd,
        users: pw.into_iter().map(|p| p.name).collect(),
        groups: gr.into_iter().map(|g| g.name).collect(),
        shadow_gid: shadow_gid.unwrap_or(0),
    })
}

/// A group with a locked password and no members yet.
fn locked_group(name: &str, gid: u32) -> berth_accounts::Group {
    berth_accounts::Group { name: name.into(), password: "*".into(), gid, members: Vec::new() }
}

/// A user or group name: what `useradd` accepts without `--badname`, roughly.
fn check_name(what: &str, name: &str) -> Result<(), SetupError> {
    if berth_accounts::valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!("{what} `{name}`"), "is not a valid name"))
    }
}

fn parse_passwd(file: &str, bytes: &[u8]) -> Result<Vec<Passwd>, SetupError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(file, "not UTF-8"))?;
    Ok(berth_accounts::parse(file, text)?)
}

fn parse_group(file: &str, bytes: &[u8]) -> Result<Vec<berth_accounts::Group>, SetupError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(file, "not UTF-8"))?;
    Ok(berth_accounts::parse(file, text)?)
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
