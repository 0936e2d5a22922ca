//! Run as root (as the rest of berth-init's tests): they chown to other users and act as them.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

const USER: u32 = 1001;

fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A root-owned secret the tests try to reach.
fn victim(root: &Path) -> PathBuf {
    let v = root.join("victim");
    fs::write(&v, "ROOT SECRET\n").unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
    v
}

fn assert_untouched(v: &Path) {
    let m = v.symlink_metadata().unwrap();
    assert_eq!(fs::read_to_string(v).unwrap(), "ROOT SECRET\n");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600));
}

/// A user's directory with a user's symlink in it.
fn user_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(USER), Some(USER)).unwrap();
    d
}

fn user_link(target: &Path, link: &Path) {
    symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(USER), Some(USER)).unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".berth-tmp"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_staged_file_never_opens_a_planted_name_and_replaces_a_link_instead_of_following_it() {
    let dir = scratch();
    let r = dir.path();
    let v = victim(r);
    let home = user_dir(r, "home");
    // The names the old code used, and the target itself, point at the victim.
    user_link(&v, &home.join(".keys.berth-tmp"));
    user_link(&v, &home.join("keys"));
    let d = Dir::open(&home).unwrap();
    d.write_file(OsStr::new("keys"), b"new\n", 0o640, Some((USER, USER))).unwrap();
    assert_untouched(&v);
    let m = home.join("keys").symlink_metadata().unwrap();
    assert!(m.is_file());
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (USER, USER, 0o640));
    assert_eq!(fs::read_to_string(home.join("keys")).unwrap(), "new\n");
    assert_eq!(fs::read_link(home.join(".keys.berth-tmp")).unwrap(), v);
    // Only the planted name is left over.
    assert_eq!(leftovers(&home), [".keys.berth-tmp"]);

    // Dropped uncommitted: nothing stays.
    let staged = d.stage(OsStr::new("other"), b"x", 0o644, None).unwrap();
    assert_eq!(leftovers(&home).len(), 2);
    drop(staged);
    assert_eq!(leftovers(&home), [".keys.berth-tmp"]);
    assert!(!home.join("other").exists());
}

#[test]
fn a_walk_follows_only_links_root_made_where_only_root_writes() {
    let dir = scratch();
    let r = dir.path();
    fs::create_dir_all(r.join("var/home")).unwrap();
    symlink("var/home", r.join("home")).unwrap();
    let top = Dir::open(r).unwrap();
    let follow = Walk { create: None, root_links: true, owners: &[0] };
    let w = top.walk(Path::new("home"), &follow).unwrap();
    assert_eq!(w.resolved, Path::new("var/home"));
    // An absolute target stays inside the start, as in a chroot; `..` does not leave it.
    symlink("/var/../../var/home", r.join("abs")).unwrap();
    assert_eq!(top.walk(Path::new("abs"), &follow).unwrap().resolved, Path::new("var/home"));

    // Not without root_links, and never a user's link.
    let e = top.walk(Path::new("home"), &Walk { root_links: false, ..follow }).unwrap_err().to_string();
    assert!(e.ends_with("/home is a symbolic link; not followed"), "{e}");
    let u = user_dir(r, "var/u");
    user_link(&r.join("var/home"), &u.join("link"));
    let any = Walk { create: None, root_links: true, owners: &[] };
    let e = top.walk(Path::new("var/u/link"), &any).unwrap_err().to_string();
    assert!(e.contains("var/u/link is a symbolic link; not followed"), "{e}");
    // Nor root's own link in a directory others may write to (a sticky /var/tmp).
    fs::create_dir(r.join("var/tmp")).unwrap();
    fs::set_permissions(r.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("../home", r.join("var/tmp/link")).unwrap();
    let e = top.walk(Path::new("var/tmp/link"), &any).unwrap_err().to_string();
    assert!(e.contains("var/tmp/link is a symbolic link"), "{e}");

    // Directories on the way must belong to the owners given.
    let e = top.walk(Path::new("var/u"), &follow).unwrap_err().to_string();
    assert!(e.contains("var/u belongs to uid 1001, not to root; not used"), "{e}");
    assert!(top.walk(Path::new("var/u"), &Walk { owners: &[0, USER], ..follow }).is_ok());

    // Creating: the missing ones, 0755, reported outermost first.
    let create = Walk { create: Some(0o755), root_links: true, owners: &[0] };
    let w = top.walk(Path::new("home/a/b"), &create).unwrap();
    assert_eq!(w.created.len(), 2);
    assert_eq!(r.join("var/home/a/b").metadata().unwrap().mode() & 0o7777, 0o755);
    for c in w.created.into_iter().rev() {
        c.remove();
    }
    assert!(!r.join("var/home/a").exists());
    let e = top.walk(Path::new("var/nothing/here"), &follow).unwrap_err().to_string();
    assert!(e.ends_with("var/nothing does not exist"), "{e}");
}

#[test]
fn reading_refuses_links_and_what_is_not_a_regular_file() {
    let dir = scratch();
    let r = dir.path();
    let v = victim(r);
    let home = user_dir(r, "home");
    user_link(&v, &home.join("link"));
    nix::unistd::mkfifo(&home.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    fs::write(home.join("big"), vec![b'x'; 11]).unwrap();
    fs::write(home.join("ok"), "fine").unwrap();
    let d = Dir::open(&home).unwrap();
    assert!(
        d.read_file(OsStr::new("link"), 100)
            .unwrap_err()
            .to_string()
            .ends_with("link is a symbolic link; not followed")
    );
    assert!(d.read_file(OsStr::new("fifo"), 100).unwrap_err().to_string().ends_with("fifo is not a regular file"));
    assert!(d.read_file(OsStr::new("big"), 10).unwrap_err().to_string().ends_with("big is larger than 10 bytes"));
    assert!(matches!(d.read_file(OsStr::new("big"), 10), Err(FsError::TooLarge { max: 10, .. })));
    assert!(matches!(d.read_file(OsStr::new("link"), 10), Err(FsError::Symlink { .. })));
    assert_eq!(d.read_file(OsStr::new("ok"), 100).unwrap().unwrap().0, b"fine");
    assert!(d.read_file(OsStr::new("none"), 100).unwrap().is_none());
    let e = d.open_dir(OsStr::new("link")).unwrap_err().to_string();
    assert!(e.ends_with("link is a symbolic link; not followed"), "{e}");
}

#[test]
fn acting_as_a_user_gives_only_the_users_access() {
    let dir = scratch();
    let r = dir.path();
    let v = victim(r);
    let home = user_dir(r, "home");
    let top = Dir::open(r).unwrap();
    let d = Dir::open(&home).unwrap();
    {
        let _as = act_as(USER, USER).unwrap();
        // Root's file is out of reach, root's directory is not writable.
        let e = top.read_file(OsStr::new("victim"), 100).unwrap_err().to_string();
        assert!(e.contains("Permission denied"), "{e}");
        assert!(top.stage(OsStr::new("x"), b"x", 0o644, None).unwrap_err().to_string().contains("Permission denied"));
        // The user's own directory is; what is made there is the user's.
        d.write_file(OsStr::new("mine"), b"x", 0o600, Some((USER, USER))).unwrap();
        // And giving it to root is refused.
        assert!(d.stage(OsStr::new("y"), b"y", 0o600, Some((0, 0))).unwrap_err().to_string().contains("chown"));
    }
    let m = home.join("mine").metadata().unwrap();
    assert_eq!((m.uid(), m.gid()), (USER, USER));
    // Root's access is back.
    assert_eq!(top.read_file(OsStr::new("victim"), 100).unwrap().unwrap().0, b"ROOT SECRET\n");
    assert_untouched(&v);
    assert_eq!(leftovers(&home), Vec::<String>::new());
}

#[test]
fn service_directories_are_walked_without_following_and_only_the_leaf_is_the_users() {
    let dir = scratch();
    let base = dir.path().join("var/lib");
    fs::create_dir_all(&base).unwrap();
    fs::create_dir(dir.path().join("etc")).unwrap();
    service_directory(&base, Path::new("app/sub/leaf"), 0o750, (USER, USER)).unwrap();
    let meta = |p: &str| {
        let m = base.join(p).symlink_metadata().unwrap();
        (m.uid(), m.mode() & 0o7777)
    };
    // Made on the way: root's, 0755 (as systemd's); the leaf: the user's, with its mode.
    assert_eq!(meta("app"), (0, 0o755));
    assert_eq!(meta("app/sub"), (0, 0o755));
    assert_eq!(meta("app/sub/leaf"), (USER, 0o750));
    // Again: the same.
    service_directory(&base, Path::new("app/sub/leaf"), 0o700, (USER, USER)).unwrap();
    assert_eq!(meta("app/sub/leaf"), (USER, 0o700));
    // A symlink anywhere is refused, and its target keeps its owner and mode.
    fs::remove_dir(base.join("app/sub/leaf")).unwrap();
    user_link(&dir.path().join("etc"), &base.join("app/sub/leaf"));
    let e = service_directory(&base, Path::new("app/sub/leaf"), 0o700, (USER, USER)).unwrap_err().to_string();
    assert!(e.ends_with("app/sub/leaf is a symbolic link; not followed"), "{e}");
    let etc = dir.path().join("etc").metadata().unwrap();
    assert_eq!((etc.uid(), etc.mode() & 0o7777), (0, 0o755));
    // A directory on the way that belongs to someone else is not used.
    std::os::unix::fs::chown(base.join("app"), Some(4242), None).unwrap();
    let e = service_directory(&base, Path::new("app/sub/x"), 0o700, (USER, USER)).unwrap_err().to_string();
    assert!(e.contains("app belongs to uid 4242, not to root or uid 1001"), "{e}");
    assert!(service_directory(&base, Path::new("../etc"), 0o700, (USER, USER)).is_err());
}

#[test]
fn a_removed_tree_takes_links_inside_with_it_but_not_their_targets() {
    let dir = scratch();
    let r = dir.path();
    let v = victim(r);
    fs::create_dir(r.join("etc")).unwrap();
    fs::write(r.join("etc/keep"), "keep").unwrap();
    let run = r.join("run");
    fs::create_dir_all(run.join("app/sub/deeper")).unwrap();
    fs::write(run.join("app/sub/deeper/file"), "x").unwrap();
    user_link(&v, &run.join("app/sub/to-victim"));
    user_link(&r.join("etc"), &run.join("app/sub/to-etc"));
    remove_tree(&run, Path::new("app/sub")).unwrap();
    assert!(!run.join("app/sub").exists() && run.join("app").is_dir());
    assert_untouched(&v);
    assert_eq!(fs::read_to_string(r.join("etc/keep")).unwrap(), "keep");
    // A link on the way is refused; a missing directory is fine.
    user_link(&r.join("etc"), &run.join("app/sub"));
    let e = remove_tree(&run, Path::new("app/sub/keep")).unwrap_err().to_string();
    assert!(e.ends_with("app/sub is a symbolic link; not followed"), "{e}");
    assert!(r.join("etc/keep").exists());
    remove_tree(&run, Path::new("none/at/all")).unwrap();
}
