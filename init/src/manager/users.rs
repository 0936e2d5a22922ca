//! `User=`/`Group=` lookups in /etc/passwd and /etc/group. berth-init is static (no NSS), and
//! a Berth root has only files-based accounts, so reading the files is the whole lookup. The
//! line format is `berth_accounts`'; a line that is not an entry is skipped, as glibc does.

use std::path::{Path, PathBuf};

use berth_accounts::{Group, Passwd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Supplementary groups (from /etc/group), the primary one excluded.
    pub groups: Vec<u32>,
}

/// A `User=`, `Group=` or `SupplementaryGroups=` that names no account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("user {0:?} not found in /etc/passwd")]
    NoUser(String),
    #[error("group {0:?} not found in /etc/group")]
    NoGroup(String),
}

/// Resolves `User=` (a name or a number) and `Group=` under `root` (`/` on the machine).
pub fn resolve(
    root: &Path,
    user: Option<&str>,
    group: Option<&str>,
    extra: &[String],
) -> Result<Account, AccountError> {
    let passwd: Vec<Passwd> = read(root, "etc/passwd");
    let groups: Vec<Group> = read(root, "etc/group");
    let mut account = match user {
        None => Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        },
        Some(u) => find_user(&passwd, u).ok_or_else(|| AccountError::NoUser(u.to_string()))?,
    };
    if let Some(g) = group {
        account.gid = find_group(&groups, g).ok_or_else(|| AccountError::NoGroup(g.to_string()))?;
    }
    if user.is_some() {
        account.groups = member_of(&groups, &account.name, account.gid);
    }
    for g in extra {
        let gid = find_group(&groups, g).ok_or_else(|| AccountError::NoGroup(g.clone()))?;
        if gid != account.gid && !account.groups.contains(&gid) {
            account.groups.push(gid);
        }
    }
    Ok(account)
}

/// The entries of an account file; a missing file has none.
fn read<T: berth_accounts::Entry>(root: &Path, rel: &str) -> Vec<T> {
    let text = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
    text.lines().filter_map(|l| l.parse().ok()).collect()
}

fn find_user(passwd: &[Passwd], user: &str) -> Option<Account> {
    let p = passwd.iter().find(|p| p.name == user || p.uid.to_string() == user)?;
    Some(Account {
        name: p.name.clone(),
        uid: p.uid,
        gid: p.gid,
        home: PathBuf::from(&p.home),
        shell: p.shell.clone(),
        groups: Vec::new(),
    })
}

fn find_group(groups: &[Group], group: &str) -> Option<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Some(n);
    }
    groups.iter().find(|g| g.name == group).map(|g| g.gid)
}

fn member_of(groups: &[Group], user: &str, primary: u32) -> Vec<u32> {
    groups.iter().filter(|g| g.gid != primary && g.members.iter().any(|m| m == user)).map(|g| g.gid).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_groups_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\ncore:x:1000:1000::/home/core:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nsudo:x:27:core\ncore:x:1000:\ndocker:x:999:\n")
            .unwrap();
        let a = resolve(dir.path(), Some("core"), None, &["docker".into()]).unwrap();
        assert_eq!((a.uid, a.gid, a.groups.clone()), (1000, 1000, vec![27, 999]));
        assert_eq!(a.home, PathBuf::from("/home/core"));
        let b = resolve(dir.path(), Some("1000"), Some("sudo"), &[]).unwrap();
        assert_eq!((b.name.as_str(), b.gid), ("core", 27));
        assert_eq!(resolve(dir.path(), None, None, &[]).unwrap().uid, 0);
        let e = resolve(dir.path(), Some("nobody"), None, &[]).unwrap_err();
        assert_eq!(e.to_string(), "user \"nobody\" not found in /etc/passwd");
        assert_eq!(resolve(dir.path(), None, None, &["nogroup".into()]), Err(AccountError::NoGroup("nogroup".into())));
    }
}
