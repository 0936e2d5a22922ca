//! Users and groups of a new image reach hosts whose `/etc` already has its own copy of the
//! account files. `/etc` is an overlay: once anything writes `/etc/passwd` (first-boot
//! provisioning, `useradd`, `passwd`), the whole file is copied up to STATE and hides every later
//! image's version. At each boot, before the overlay is mounted, the image's entries missing
//! from the upper copies are added to them, as systemd-sysusers adds what a package declares:
//!
//! - An image user (group) whose name is absent from the upper `passwd` (`group`) is appended,
//!   unless its uid (gid) already belongs to another local entry: that one is logged and left out
//!   (sharing an id would give the local account the image's files).
//! - A `shadow` (`gshadow`) line of the image is appended when the name has none in the upper
//!   copy and the account is the image's (same name and id in the merged `passwd`/`group`).
//! - Local lines are never changed, reordered or removed, and a name present in both keeps its
//!   local entry (its password, shell, group members).
//! - An image line is read as `berth_accounts` reads its file, and one that is not an entry of
//!   it (a field too many or too few, an id that is not a number) is logged and left out rather
//!   than copied into the local file. Comments and NIS `+`/`-` lines of the image are skipped.
//!
//! The local copies are not parsed as entries: they must be kept byte for byte, including what
//! `berth_accounts` refuses (NIS `+`/`-` lines, comments, a line a tool left half-written), and
//! every line of them that names an account claims its name and id ([`claims`]).
//!
//! Each file is rewritten atomically (a new file, fsync, rename) with the upper copy's owner and
//! mode, `shadow` and `gshadow` before `passwd` and `group` (a cut in between leaves a shadow
//! line without its account, which the next boot completes).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use berth_accounts::{Entry, Group, Gshadow, Passwd, Shadow};
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// An account database: `passwd` or `group`, with its shadow file.
#[derive(Debug, Clone, Copy)]
pub struct Db {
    pub file: &'static str,
    pub shadow: &'static str,
    /// The image's lines of `file` and of `shadow` as entries.
    read_file: fn(&str) -> Parsed,
    read_shadow: fn(&str) -> Parsed,
}

pub const PASSWD: Db = Db {
    file: "passwd",
    shadow: "shadow",
    read_file: |text| image_entries::<Passwd>("passwd", text, |e| Some(e.uid)),
    read_shadow: |text| image_entries::<Shadow>("shadow", text, |_| None),
};
pub const GROUP: Db = Db {
    file: "group",
    shadow: "gshadow",
    read_file: |text| image_entries::<Group>("group", text, |e| Some(e.gid)),
    read_shadow: |text| image_entries::<Gshadow>("gshadow", text, |_| None),
};

/// The result of merging one database's text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// The new file, when something was added.
    pub file: Option<String>,
    /// The new shadow file, when something was added.
    pub shadow: Option<String>,
    /// Names added to the file.
    pub added: Vec<String>,
    /// Why image entries were left out.
    pub skipped: Vec<String>,
}

/// An image file's entries, each as its name, id (none for a shadow file) and line as
/// `berth_accounts` formats it, and why each line that is not an entry was left out.
#[derive(Debug, Default)]
struct Parsed {
    entries: Vec<(String, Option<u32>, String)>,
    refused: Vec<String>,
}

/// Lines that name no account, which both readings skip silently: blanks, comments and NIS
/// `+`/`-` lines (`berth_accounts` would refuse them as entries).
fn not_an_account(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with(['#', '+', '-'])
}

/// The image's `file` (named in the reasons) parsed line by line.
fn image_entries<T: Entry>(file: &str, text: &str, id: fn(&T) -> Option<u32>) -> Parsed {
    let mut parsed = Parsed::default();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !not_an_account(l)) {
        match line.parse::<T>() {
            Ok(e) => parsed.entries.push((e.name().to_owned(), id(&e), e.to_string())),
            Err(source) => {
                let kind = T::KIND;
                let e = berth_accounts::Error {
                    file: format!("image /etc/{file}"),
                    line: n + 1,
                    kind,
                    text: line.into(),
                    source,
                };
                parsed.refused.push(format!("{e}; not added"));
            }
        }
    }
    parsed
}

/// The names and ids a local (upper) file claims: the first and the third `:`-separated field
/// of every line but blanks, comments and NIS lines, whether or not the rest of the line is a
/// well-formed entry. A thin splitter rather than `berth_accounts`, which refuses a malformed
/// line: here such a line must still keep its name and id from being given to an image entry.
fn claims(text: &str) -> Vec<(&str, Option<u32>)> {
    text.lines()
        .filter(|l| !not_an_account(l))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let id = f.nth(1).and_then(|id| id.parse().ok());
            Some((name, id))
        })
        .collect()
}

fn append(local: &str, lines: &[&str]) -> String {
    let mut out = local.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Merges the image's `image`/`image_shadow` into the local copies (`None`: the upper layer has
/// no copy of that file, so the image's shows through and nothing is merged into it).
pub fn merge(db: Db, image: &str, image_shadow: &str, local: Option<&str>, local_shadow: Option<&str>) -> Merged {
    let mut m = Merged::default();
    let image_file = (db.read_file)(image);
    let merged_ids: HashMap<String, Option<u32>> = match local {
        Some(local) => {
            m.skipped.extend(image_file.refused.iter().cloned());
            let have = claims(local);
            let names: HashSet<&str> = have.iter().map(|(n, _)| *n).collect();
            let mut ids: HashMap<u32, &str> = have.iter().filter_map(|(n, id)| Some(((*id)?, *n))).collect();
            let mut add = Vec::new();
            for (name, id, line) in &image_file.entries {
                if names.contains(name.as_str()) {
                    continue;
                }
                if let Some(id) = id
                    && let Some(owner) = ids.get(id)
                {
                    m.skipped.push(format!(
                        "{}: image entry {name} not added: {} {id} is local {owner}'s",
                        db.file,
                        if db.file == "passwd" { "uid" } else { "gid" }
                    ));
                    continue;
                }
                if let Some(id) = id {
                    ids.insert(*id, name);
                }
                add.push(line.as_str());
                m.added.push(name.clone());
            }
            if !add.is_empty() {
                m.file = Some(append(local, &add));
            }
            let all = claims(m.file.as_deref().unwrap_or(local));
            all.iter().map(|(n, id)| (n.to_string(), *id)).collect()
        }
        // The image's own file shows through: every image account is there.
        None => image_file.entries.iter().map(|(n, id, _)| (n.clone(), *id)).collect(),
    };
    if let Some(local_shadow) = local_shadow {
        let have: HashSet<&str> = claims(local_shadow).iter().map(|(n, _)| *n).collect();
        let image_ids: HashMap<&str, Option<u32>> =
            image_file.entries.iter().map(|(n, id, _)| (n.as_str(), *id)).collect();
        let shadow = (db.read_shadow)(image_shadow);
        m.skipped.extend(shadow.refused);
        let add: Vec<&str> = shadow
            .entries
            .iter()
            .filter(|(name, _, _)| !have.contains(name.as_str()))
            .filter(|(name, _, _)| {
                // The account is the image's: same name and id in the merged file.
                image_ids.get(name.as_str()).is_some_and(|id| merged_ids.get(name).is_some_and(|m| m == id))
            })
            .map(|(_, _, line)| line.as_str())
            .collect();
        if !add.is_empty() {
            m.shadow = Some(append(local_shadow, &add));
        }
    }
    m
}

/// A regular file in `dir` read without following a symlink: its text and its fd (for the
/// owner and mode). `Ok(None)` when there is no such regular file.
fn read_upper(dir: &OwnedFd, name: &str) -> Result<Option<(String, OwnedFd)>, String> {
    let fd = match openat(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("opening {name}: {e}")),
    };
    let st = fstat(&fd).map_err(|e| format!("{name}: {e}"))?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        // A whiteout (the file was deleted on purpose) or something stranger: not ours to touch.
        return Ok(None);
    }
    let mut text = String::new();
    std::fs::File::from(fd.try_clone().map_err(|e| format!("{name}: {e}"))?)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading {name}: {e}"))?;
    Ok(Some((text, fd)))
}

/// Replaces `name` in `dir` with `text`, keeping `like`'s owner and mode.
fn replace(dir: &OwnedFd, name: &str, text: &str, like: &OwnedFd) -> Result<(), String> {
    let st = fstat(like).map_err(|e| format!("{name}: {e}"))?;
    let tmp = format!(".{name}.berth-merge");
    // Left by a cut during an earlier boot: nothing else writes here before the overlay is up.
    let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| format!("creating {tmp}: {e}"))?;
    let result = (|| {
        fchown(fd.as_fd(), Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))
            .map_err(|e| format!("chown {tmp}: {e}"))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777)).map_err(|e| format!("chmod {tmp}: {e}"))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("writing {tmp}: {e}"))?;
        renameat(dir, tmp.as_str(), dir, name).map_err(|e| format!("renaming {tmp} to {name}: {e}"))?;
        nix::unistd::fsync(dir).map_err(|e| format!("fsync of the directory of {name}: {e}"))
    })();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Merges the image's account files (`image_etc`, the overlay's lower layer) into the copies in
/// `upper` (the overlay's upper directory, not mounted yet). Returns the lines to log.
pub fn merge_into_upper(image_etc: &Path, upper: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let dir = match nix::fcntl::open(upper, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(d) => d,
        Err(nix::errno::Errno::ENOENT) => return log,
        Err(e) => return vec![format!("accounts: opening {}: {e}; image accounts not merged", upper.display())],
    };
    let mut writes: Vec<(&str, String, OwnedFd)> = Vec::new();
    let mut late: Vec<(&str, String, OwnedFd)> = Vec::new();
    for db in [PASSWD, GROUP] {
        let read_image = |name: &str| std::fs::read_to_string(image_etc.join(name)).unwrap_or_default();
        let (image, image_shadow) = (read_image(db.file), read_image(db.shadow));
        let upper_file = read_upper(&dir, db.file);
        let upper_shadow = read_upper(&dir, db.shadow);
        let (local, local_shadow) = match (upper_file, upper_shadow) {
            (Ok(f), Ok(s)) => (f, s),
            (Err(e), _) | (_, Err(e)) => {
                log.push(format!("accounts: {}: {e}; image accounts not merged", upper.display()));
                continue;
            }
        };
        let m = merge(
            db,
            &image,
            &image_shadow,
            local.as_ref().map(|(t, _)| t.as_str()),
            local_shadow.as_ref().map(|(t, _)| t.as_str()),
        );
        log.extend(m.skipped.iter().map(|s| format!("accounts: {s}")));
        if !m.added.is_empty() {
            log.push(format!("accounts: {} from the image added to /etc/{}", m.added.join(", "), db.file));
        }
        if let (Some(text), Some((_, fd))) = (m.shadow, local_shadow) {
            writes.push((db.shadow, text, fd));
        }
        if let (Some(text), Some((_, fd))) = (m.file, local) {
            late.push((db.file, text, fd));
        }
    }
    writes.extend(late);
    for (name, text, like) in writes {
        if let Err(e) = replace(&dir, name, &text, &like) {
            log.push(format!("accounts: {}: {e}", upper.display()));
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const IMAGE_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\ncore:x:1000:1000::/home/core:/bin/bash\n\
                                _chrony:x:101:102:Chrony daemon:/var/lib/chrony:/usr/sbin/nologin\n";
    const IMAGE_SHADOW: &str = "root:*:19000:0:99999:7:::\ncore:!:19000::::::\n_chrony:!:19000::::::\n";
    const LOCAL_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\ncore:x:1000:1000::/home/core:/bin/zsh\n\
                                alice:x:1001:1001::/home/alice:/bin/bash\n";
    const LOCAL_SHADOW: &str = "root:*:19000:0:99999:7:::\ncore:$6$local$hash:19500::::::\nalice:!:19500::::::\n";

    #[test]
    fn h7_image_accounts_missing_from_the_upper_copy_are_added_and_local_ones_kept() {
        let m = merge(PASSWD, IMAGE_PASSWD, IMAGE_SHADOW, Some(LOCAL_PASSWD), Some(LOCAL_SHADOW));
        assert_eq!(m.added, ["_chrony"]);
        assert_eq!(
            m.file.as_deref(),
            Some(&*format!("{LOCAL_PASSWD}_chrony:x:101:102:Chrony daemon:/var/lib/chrony:/usr/sbin/nologin\n"))
        );
        // core keeps its local shell and password; only _chrony's shadow line arrives.
        assert_eq!(m.shadow.as_deref(), Some(&*format!("{LOCAL_SHADOW}_chrony:!:19000::::::\n")));

        // Merging again adds nothing.
        let again = merge(PASSWD, IMAGE_PASSWD, IMAGE_SHADOW, m.file.as_deref(), m.shadow.as_deref());
        assert_eq!(again, Merged::default());
    }

    #[test]
    fn h7_an_image_account_whose_id_is_local_is_not_added() {
        let image = "root:x:0:0::/root:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\n";
        let m = merge(PASSWD, image, "bob:!:1::::::\n", Some(LOCAL_PASSWD), Some(LOCAL_SHADOW));
        assert_eq!((m.file, m.shadow), (None, None));
        assert_eq!(m.skipped, ["passwd: image entry bob not added: uid 1001 is local alice's"]);
    }

    #[test]
    fn h7_groups_and_gshadow_merge_the_same_way_and_a_cut_between_files_is_completed() {
        let image = "root:x:0:\nsudo:x:27:core\n_chrony:x:102:\n";
        let image_gshadow = "root:*::\nsudo:*::core\n_chrony:!::\n";
        // A previous boot wrote group but was cut before gshadow (or the other order).
        let local = "root:x:0:\nsudo:x:27:alice\n_chrony:x:102:\n";
        let m = merge(GROUP, image, image_gshadow, Some(local), Some("root:*::\nsudo:*::alice\n"));
        assert_eq!(m.file, None, "sudo keeps its local members");
        assert_eq!(m.shadow.as_deref(), Some("root:*::\nsudo:*::alice\n_chrony:!::\n"));
        // Without an upper copy of the file the image's shows through; its shadow still merges.
        let m = merge(GROUP, image, image_gshadow, None, Some("root:*::\n"));
        assert_eq!(m.shadow.as_deref(), Some("root:*::\nsudo:*::core\n_chrony:!::\n"));
        // A file without a trailing newline stays a valid file.
        let m = merge(GROUP, image, image_gshadow, Some("root:x:0:"), None);
        assert_eq!(m.file.as_deref(), Some("root:x:0:\nsudo:x:27:core\n_chrony:x:102:\n"));
    }

    /// Local lines berth_accounts would refuse stay byte for byte, and still claim their name
    /// and id; an image line that is not an entry (the old splitter copied it) is left out and
    /// said why.
    #[test]
    fn h7_local_lines_are_kept_verbatim_and_image_lines_that_are_not_entries_are_not_added() {
        let local = "# local accounts\nroot:x:0:0:root:/root:/bin/bash\n+@admins::::::\n-mallory::::::\n\
                     carol:x:1002\n+\n";
        let image = "root:x:0:0:root:/root:/bin/bash\n# a comment\n+::::::\ncarol:x:1003:1003::/home/carol:/bin/sh\n\
                     dave:x:1002:1002::/home/dave:/bin/sh\nodd:x:1500:staff::/home/odd:/bin/sh\nshort:x:1600\n\
                     _chrony:x:101:102:Chrony daemon:/var/lib/chrony:/usr/sbin/nologin\n";
        let image_shadow = "_chrony:!:19000::::::\nodd:!:19000::::::\nbad:!:x::::::\n";
        let m = merge(PASSWD, image, image_shadow, Some(local), Some("root:*:19000:0:99999:7:::\n"));
        assert_eq!(m.added, ["_chrony"]);
        assert_eq!(
            m.file.as_deref(),
            Some(&*format!("{local}_chrony:x:101:102:Chrony daemon:/var/lib/chrony:/usr/sbin/nologin\n"))
        );
        assert_eq!(m.shadow.as_deref(), Some("root:*:19000:0:99999:7:::\n_chrony:!:19000::::::\n"));
        assert_eq!(
            m.skipped,
            [
                "image /etc/passwd line 6: `odd:x:1500:staff::/home/odd:/bin/sh` is not a passwd entry: its gid \
                 `staff` is not a number; not added",
                "image /etc/passwd line 7: `short:x:1600` is not a passwd entry: 3 fields, not 7; not added",
                "passwd: image entry dave not added: uid 1002 is local carol's",
                "image /etc/shadow line 3: `bad:!:x::::::` is not a shadow entry: its last change day `x` is not a \
                 number; not added",
            ]
        );
        // An id compares as a number: a local `01002` is uid 1002.
        let m = merge(PASSWD, image, "", Some("carol:x:01002:1002::/home/carol:/bin/sh\n"), None);
        assert!(m.skipped.iter().any(|s| s.ends_with("uid 1002 is local carol's")), "{:?}", m.skipped);
    }

    #[test]
    fn h7_merge_into_upper_rewrites_copied_up_files_keeping_owner_and_mode() {
        let t = tempfile::tempdir().unwrap();
        let (image, upper) = (t.path().join("image"), t.path().join("upper"));
        std::fs::create_dir_all(&image).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(image.join("passwd"), IMAGE_PASSWD).unwrap();
        std::fs::write(image.join("shadow"), IMAGE_SHADOW).unwrap();
        std::fs::write(image.join("group"), "root:x:0:\n_chrony:x:102:\n").unwrap();
        std::fs::write(upper.join("passwd"), LOCAL_PASSWD).unwrap();
        std::fs::write(upper.join("shadow"), LOCAL_SHADOW).unwrap();
        std::fs::set_permissions(upper.join("shadow"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(upper.join("shadow"), Some(0), Some(42)).unwrap();
        // A planted symlink in place of group is neither followed nor replaced.
        std::fs::write(t.path().join("victim"), "root:x:0:\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("victim"), upper.join("group")).unwrap();

        let log = merge_into_upper(&image, &upper);
        assert!(log.iter().any(|l| l.contains("_chrony from the image added to /etc/passwd")), "{log:?}");
        assert!(std::fs::read_to_string(upper.join("passwd")).unwrap().ends_with("/usr/sbin/nologin\n"));
        let shadow = upper.join("shadow");
        assert!(std::fs::read_to_string(&shadow).unwrap().ends_with("_chrony:!:19000::::::\n"));
        let meta = std::fs::metadata(&shadow).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o640, 0, 42));
        assert_eq!(std::fs::read_to_string(t.path().join("victim")).unwrap(), "root:x:0:\n");
        assert!(std::fs::symlink_metadata(upper.join("group")).unwrap().file_type().is_symlink());
        let names: Vec<_> = std::fs::read_dir(&upper).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "a temporary file was left: {names:?}");
        assert!(log.iter().any(|l| l.contains("opening group")), "{log:?}");
        // A second boot adds nothing.
        assert!(!merge_into_upper(&image, &upper).iter().any(|l| l.contains("added")));
    }
}
