//! `User=`/`Group=` lookups in /etc/passwd and /etc/group. berth-init is static (no NSS), and
//! a Berth root has only files-based accounts, so reading the files is the whole lookup.

use std::path::{Path, PathBuf};

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

/// Resolves `User=` (a name or a number) and `Group=` under `root` (`/` on the machine).
pub fn resolve(root: &Path, user: Option<&str>, group: Option<&str>, extra: &[String]) -> Result<Account, String> {
    let passwd = read(root, "etc/passwd");
    let groups = read(root, "etc/group");
    let mut account = match user {
        None => Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: PathBuf::from("/root"),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        },
        Some(u) => find_user(&passwd, u).ok_or_else(|| format!("user {u:?} not found in /etc/passwd"))?,
    };
    if let Some(g) = group {
        account.gid = find_group(&groups, g).ok_or_else(|| format!("group {g:?} not found in /etc/group"))?;
    }
    if user.is_some() {
        account.groups = member_of(&groups, &account.name, account.gid);
    }
    for g in extra {
        let gid = find_group(&groups, g).ok_or_else(|| format!("group {g:?} not found in /etc/group"))?;
        if gid != account.gid && !account.groups.contains(&gid) {
            account.groups.push(gid);
        }
    }
    Ok(account)
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_default()
}

fn find_user(passwd: &str, user: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || (f[0] != user && f[2] != user) {
            return None;
        }
        Some(Account {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(f[5]),
            shell: f[6].to_string(),
            groups: Vec::new(),
        })
    })
}

fn find_group(groups: &str, group: &str) -> Option<u32> {
    if let Ok(n) = group.parse::<u32>() {
        return Some(n);
    }
    groups.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == group).then(|| f[2].parse().ok()).flatten()
    })
}

fn member_of(groups: &str, user: &str, primary: u32) -> Vec<u32> {
    groups
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == user) {
                return None;
            }
            f[2].parse().ok().filter(|g| *g != primary)
        })
        .collect()
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
        assert!(e.contains("\"nobody\" not found in /etc/passwd"), "{e}");
    }
}
