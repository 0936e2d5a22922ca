//! Writing a small file whole, as root, where only root writes: a temporary file beside it
//! (`O_EXCL`, `O_NOFOLLOW`), its mode set on the descriptor, synced, renamed over the target, the
//! directory synced. The directory itself is opened without following a link, so a link planted
//! in its place is refused rather than written through.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, geteuid, unlinkat};

/// What the file's directory must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Private to its owner: made 0700 when absent, and set to 0700 when it is more open.
    Private,
    /// Made 0755 when absent, otherwise left as it is (the ready marker's `/var/lib/berth`).
    #[cfg_attr(not(feature = "providers"), allow(dead_code))]
    Shared,
}

/// Writes `bytes` to `path` with `mode` (temporary file, fsync, rename).
pub(crate) fn write(path: &Path, bytes: &[u8], mode: u32, dir: Dir) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("not a file path"));
    };
    let dir_fd = open_dir(parent, dir)?;
    let tmp = format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id());
    // A temporary file left by a run that was killed (same pid after a reboot) goes first.
    let _ = unlinkat(&dir_fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let fd = openat(
        &dir_fd,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )?;
    let written = (|| {
        let mut file = File::from(fd);
        // The umask may have narrowed the mode; set exactly what was asked.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        renameat(&dir_fd, tmp.as_str(), &dir_fd, name)?;
        Ok::<(), io::Error>(())
    })();
    if let Err(e) = written {
        let _ = unlinkat(&dir_fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    File::from(dir_fd).sync_all()
}

/// Makes `dir` (0700) when absent and checks it as [`write`] does: not a link, this user's,
/// closed to others.
#[cfg_attr(not(feature = "providers"), allow(dead_code))]
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    open_dir(dir, Dir::Private).map(drop)
}

/// Opens `dir` (made when absent) without following a link at its last component; it must be a
/// directory of this process's user.
fn open_dir(dir: &Path, how: Dir) -> io::Result<OwnedFd> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let (above, name) = match (dir.parent(), dir.file_name()) {
        (Some(above), Some(name)) => (if above.as_os_str().is_empty() { Path::new(".") } else { above }, name),
        // `/` or `..`: nothing to create, and nothing a user could have planted.
        _ => return Ok(open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?),
    };
    std::fs::create_dir_all(above)?;
    let above = open(above, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let create = if how == Dir::Private { 0o700 } else { 0o755 };
    match mkdirat(&above, name, Mode::from_bits_truncate(create)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = match openat(
        &above,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_a_directory(name)),
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if meta.uid() != geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} belongs to uid {}, not to this process's user",
            name.to_string_lossy(),
            meta.uid()
        )));
    }
    if how == Dir::Private && meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(OwnedFd::from(file))
}

fn not_a_directory(name: &OsStr) -> io::Error {
    io::Error::other(format!("{} is a symbolic link or not a directory; not followed", name.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_in_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/instance.toml");
        write(&path, b"one", 0o600, Dir::Private).unwrap();
        write(&path, b"two", 0o600, Dir::Private).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o7777, 0o700);
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["instance.toml"], "no temporary file is left");

        // A directory more open than 0700 is closed; a shared one is left alone.
        let dir = tmp.path().join("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        write(&dir.join("f"), b"x", 0o600, Dir::Private).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        write(&shared.join("f"), b"x", 0o644, Dir::Shared).unwrap();
        assert_eq!(std::fs::metadata(&shared).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn a_link_in_the_directory_s_place_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("metadata")).unwrap();
        let e = write(&tmp.path().join("metadata/instance.toml"), b"x", 0o600, Dir::Private).unwrap_err();
        assert!(e.to_string().contains("metadata is a symbolic link or not a directory; not followed"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing was written through the link");

        // A link at the file's own name is replaced, not written through.
        let dir = tmp.path().join("real");
        std::fs::create_dir(&dir).unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("f")).unwrap();
        write(&dir.join("f"), b"new", 0o600, Dir::Private).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"new");
    }
}
