//! base-files' `postinst configure` for a first installation.

use berth_fstree::{Metadata, Node, NodeKind, Tree};

use super::users::group_id;
use super::{SetupError, copy_default, entry, invalid, is_dir, present, put, put_file, put_symlink, read_file};
use crate::deb::path::as_path;

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
