//! File operations relative to open directories, for PID 1 writing where someone else can write
//! too (users' homes, service directories, the world-writable parts of `/var`). A path is walked
//! one component at a time with `O_NOFOLLOW|O_DIRECTORY` from a directory PID 1 trusts; a
//! symlink on the way is refused unless only root can have made it; owner and mode are set on
//! the open descriptor, never by path; a file is replaced by writing a temporary file with a
//! random name (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the same directory and renaming it over the
//! old one. systemd's `chase()` and its `openat`-based directory setup are the model.
//!
//! Errors are one line naming the path.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

/// Symlinks followed in one walk before it gives up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// The kernel's message for `e` ("No such file or directory (os error 2)").
fn os(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn is_kind(st: &FileStat, kind: nix::libc::mode_t) -> bool {
    st.st_mode & nix::libc::S_IFMT == kind
}

/// One path component: not empty, no `/`, not `.` or `..`.
fn check_name(name: &OsStr) -> Result<(), String> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(format!("`{}` is not a file name", name.to_string_lossy()));
    }
    Ok(())
}

/// An open directory and the path it was reached by (for messages).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is at a name in a directory, for [`Dir::walk`].
enum Child {
    Dir(Dir),
    Missing,
    Symlink,
}

impl Dir {
    /// Opens `path`, a directory only root can change (`/`, `/var/lib`): symlinks in `path`
    /// itself are followed. Everything below it is reached through [`Dir::walk`] or
    /// [`Dir::open_dir`].
    pub fn open(path: &Path) -> Result<Dir, String> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty())
            .map_err(|e| format!("opening {}: {}", path.display(), os(e)))?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child_path(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    pub fn try_clone(&self) -> Result<Dir, String> {
        let fd = self.fd.try_clone().map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(Dir { fd, path: self.path.clone() })
    }

    /// The directory's own status.
    pub fn stat(&self) -> Result<FileStat, String> {
        fstat(&self.fd).map_err(|e| format!("{}: {}", self.path.display(), os(e)))
    }

    /// The status of `name` itself (a symlink is not followed); `None` when there is none.
    pub fn entry(&self, name: &OsStr) -> Result<Option<FileStat>, String> {
        check_name(name)?;
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(format!("{}: {}", self.child_path(name).display(), os(e))),
        }
    }

    fn child(&self, name: &OsStr) -> Result<Child, String> {
        check_name(name)?;
        let path = self.child_path(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Child::Dir(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(Child::Missing),
            // O_NOFOLLOW on a symlink gives ELOOP; a symlink to a non-directory may say ENOTDIR.
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => match self.entry(name)? {
                Some(st) if is_kind(&st, nix::libc::S_IFLNK) => Ok(Child::Symlink),
                Some(_) if e == Errno::ENOTDIR => Err(format!("{} is not a directory", path.display())),
                Some(_) | None => Err(format!("opening {}: {}", path.display(), os(e))),
            },
            Err(e) => Err(format!("opening {}: {}", path.display(), os(e))),
        }
    }

    /// Opens the directory `name` (one component) without following a symlink; `None` when
    /// there is nothing by that name.
    pub fn open_dir(&self, name: &OsStr) -> Result<Option<Dir>, String> {
        match self.child(name)? {
            Child::Dir(d) => Ok(Some(d)),
            Child::Missing => Ok(None),
            Child::Symlink => Err(symlink_refused(&self.child_path(name))),
        }
    }

    /// Creates the directory `name` with exactly `mode` (set on the new directory's descriptor,
    /// whatever the umask) and opens it; `None` when something by that name exists already.
    /// It belongs to whoever runs (root, or the fsuid of [`act_as`]).
    pub fn make_dir(&self, name: &OsStr, mode: u32) -> Result<Option<Dir>, String> {
        check_name(name)?;
        let path = self.child_path(name);
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(None),
            Err(e) => return Err(format!("creating {}: {}", path.display(), os(e))),
        }
        let dir = self.open_dir(name)?.ok_or_else(|| format!("{} vanished after it was created", path.display()))?;
        dir.set_mode(mode)?;
        Ok(Some(dir))
    }

    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), String> {
        fchown(&self.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| format!("chown {}: {}", self.path.display(), os(e)))
    }

    pub fn set_mode(&self, mode: u32) -> Result<(), String> {
        fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| format!("chmod {}: {}", self.path.display(), os(e)))
    }

    /// Reads the regular file `name` (a symlink is refused, a FIFO or device is not opened for
    /// long: `O_NONBLOCK`, then checked); `None` when there is none. At most `max` bytes.
    pub fn read_file(&self, name: &OsStr, max: u64) -> Result<Option<(Vec<u8>, FileStat)>, String> {
        check_name(name)?;
        let path = self.child_path(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(symlink_refused(&path)),
            Err(e) => return Err(format!("opening {}: {}", path.display(), os(e))),
        };
        let st = fstat(&fd).map_err(|e| format!("{}: {}", path.display(), os(e)))?;
        if !is_kind(&st, nix::libc::S_IFREG) {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if bytes.len() as u64 > max {
            return Err(format!("{} is larger than {max} bytes", path.display()));
        }
        Ok(Some((bytes, st)))
    }

    /// Writes `data` into a new temporary file beside `name` (random name, `O_EXCL`, so
    /// nothing planted there is opened), sets `owner` (uid, gid) and then `mode` on its
    /// descriptor (chown clears set-id bits) and syncs it. [`Staged::commit`] renames it over
    /// `name`; dropping the [`Staged`] removes it.
    pub fn stage(&self, name: &OsStr, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<Staged, String> {
        check_name(name)?;
        let path = self.child_path(name);
        let failed = |what: String| format!("writing {}: {what}", path.display());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut tries = 0;
        let (fd, tmp) = loop {
            let tmp = temp_name(name);
            match openat(&self.fd, tmp.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => break (fd, tmp),
                Err(Errno::EEXIST) if tries < 8 => tries += 1,
                Err(e) => return Err(failed(format!("creating a temporary file: {}", os(e)))),
            }
        };
        let dir = self.fd.try_clone().map_err(|e| failed(e.to_string()))?;
        // From here on, dropping `staged` removes the temporary file.
        let staged = Staged { dir, tmp, name: name.to_owned(), path: path.clone(), committed: false };
        let mut file = std::fs::File::from(fd);
        file.write_all(data).map_err(|e| failed(e.to_string()))?;
        if let Some((uid, gid)) = owner {
            fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| failed(format!("chown: {}", os(e))))?;
        }
        fchmod(&file, Mode::from_bits_truncate(mode)).map_err(|e| failed(format!("chmod: {}", os(e))))?;
        file.sync_all().map_err(|e| failed(e.to_string()))?;
        Ok(staged)
    }

    /// [`Dir::stage`] and [`Staged::commit`] at once.
    pub fn write_file(&self, name: &OsStr, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), String> {
        self.stage(name, data, mode, owner)?.commit()
    }

    /// Walks `rel` (relative, plain components) from this directory, one component at a time
    /// without following symlinks, except as `how` allows. Returns the last directory.
    pub fn walk(&self, rel: &Path, how: &Walk) -> Result<Walked, String> {
        let mut todo = VecDeque::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => todo.push_back(n.to_owned()),
                Component::CurDir => {}
                _ => return Err(format!("{}: not a plain relative path", rel.display())),
            }
        }
        // The directories walked through, this one first: `..` in a link's target goes back up.
        let mut stack = vec![self.try_clone()?];
        let mut resolved: Vec<OsString> = Vec::new();
        let mut created = Vec::new();
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                    resolved.pop();
                }
                continue;
            }
            if name == "." {
                continue;
            }
            let Some(cur) = stack.last() else { return Err("walk: lost its starting directory".into()) };
            let path = cur.child_path(&name);
            let next = match cur.child(&name)? {
                Child::Dir(d) => {
                    let st = d.stat()?;
                    if !how.owners.is_empty() && !how.owners.contains(&st.st_uid) {
                        return Err(format!(
                            "{} belongs to uid {}, not to {}; not used",
                            path.display(),
                            st.st_uid,
                            owners_text(how.owners)
                        ));
                    }
                    d
                }
                Child::Missing => {
                    let Some(mode) = how.create else { return Err(format!("{} does not exist", path.display())) };
                    let d =
                        cur.make_dir(&name, mode)?.ok_or_else(|| format!("{} appeared meanwhile", path.display()))?;
                    created.push(Created::new(cur, &name)?);
                    d
                }
                Child::Symlink => {
                    if !how.root_links || !cur.only_root_made(&name)? {
                        return Err(symlink_refused(&path));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(format!("{}: too many levels of symbolic links", path.display()));
                    }
                    let target = readlinkat(&cur.fd, name.as_os_str())
                        .map_err(|e| format!("reading the link {}: {}", path.display(), os(e)))?;
                    let target = PathBuf::from(target);
                    let mut parts: Vec<OsString> = Vec::new();
                    for c in target.components() {
                        match c {
                            // Absolute: from the directory the walk started in, as a chroot would.
                            Component::RootDir => {
                                stack.truncate(1);
                                resolved.clear();
                            }
                            Component::Prefix(_) => {}
                            Component::CurDir => {}
                            Component::ParentDir => parts.push("..".into()),
                            Component::Normal(n) => parts.push(n.to_owned()),
                        }
                    }
                    for p in parts.into_iter().rev() {
                        todo.push_front(p);
                    }
                    continue;
                }
            };
            resolved.push(name);
            stack.push(next);
        }
        let dir = stack.pop().ok_or("walk: lost its starting directory")?;
        Ok(Walked { dir, created, resolved: resolved.iter().collect() })
    }

    /// Whether the symlink `name` can only have been made by root: it is root's, in a
    /// directory that is root's and that nobody else may write to.
    fn only_root_made(&self, name: &OsStr) -> Result<bool, String> {
        let here = self.stat()?;
        let link = self.entry(name)?;
        Ok(here.st_uid == 0 && here.st_mode & 0o022 == 0 && link.is_some_and(|l| l.st_uid == 0))
    }
}

fn owners_text(owners: &[u32]) -> String {
    let ids: Vec<String> =
        owners.iter().map(|&u| if u == 0 { "root".to_string() } else { format!("uid {u}") }).collect();
    ids.join(" or ")
}

fn symlink_refused(path: &Path) -> String {
    format!("{} is a symbolic link; not followed", path.display())
}

/// `.NAME.XXXXXXXXXXXXXXXX.berth-tmp` with 64 random bits (or, should the kernel give none,
/// the pid, time and a counter: `O_EXCL` makes either safe, the randomness only keeps a
/// planted name from making every try fail).
fn temp_name(name: &OsStr) -> OsString {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = crate::random::bytes16().map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let n = random.unwrap_or_else(|| {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()) << 32 ^ COUNTER.fetch_add(1, Ordering::Relaxed)
    });
    // NAME_MAX is 255 bytes: a long name is cut (the temporary name only has to be unique).
    let bytes = name.as_bytes();
    let short = &bytes[..bytes.len().min(200)];
    let mut tmp = OsString::from(".");
    tmp.push(OsStr::from_bytes(short));
    tmp.push(format!(".{n:016x}.berth-tmp"));
    tmp
}

/// How [`Dir::walk`] treats what it meets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk<'a> {
    /// Missing directories are created with this mode (owned by whoever runs); `None`: a missing
    /// directory is an error.
    pub create: Option<u32>,
    /// Follow a symlink that only root can have made ([`Dir::walk`]'s start is `/` for an
    /// absolute target); any other symlink is refused.
    pub root_links: bool,
    /// Existing directories on the way must belong to one of these uids (any when empty).
    pub owners: &'a [u32],
}

/// Where [`Dir::walk`] arrived.
#[derive(Debug)]
pub struct Walked {
    pub dir: Dir,
    /// The directories it created, outermost first.
    pub created: Vec<Created>,
    /// The path it took, relative to its start, with symlinks resolved.
    pub resolved: PathBuf,
}

/// A directory [`Dir::walk`] (or a caller) created, to be removed again when what needed it is
/// abandoned.
#[derive(Debug)]
pub struct Created {
    parent: OwnedFd,
    name: OsString,
}

impl Created {
    /// `name` in `parent`, which the caller just created.
    pub fn new(parent: &Dir, name: &OsStr) -> Result<Created, String> {
        Ok(Created { parent: parent.try_clone()?.fd, name: name.to_owned() })
    }

    /// Removes the directory if it is (still) empty.
    pub fn remove(self) {
        let _ = unlinkat(&self.parent, self.name.as_os_str(), UnlinkatFlags::RemoveDir);
    }
}

/// A temporary file, written and synced, waiting to be renamed over its target.
#[derive(Debug)]
pub struct Staged {
    dir: OwnedFd,
    tmp: OsString,
    name: OsString,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the temporary file over the target (whatever the target is: a symlink there is
    /// replaced, not followed) and syncs the directory.
    pub fn commit(mut self) -> Result<(), String> {
        renameat(&self.dir, self.tmp.as_os_str(), &self.dir, self.name.as_os_str())
            .map_err(|e| format!("renaming into {}: {}", self.path.display(), os(e)))?;
        self.committed = true;
        fsync(&self.dir).map_err(|e| format!("syncing the directory of {}: {}", self.path.display(), os(e)))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(&self.dir, self.tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Filesystem access as another user until dropped ([`act_as`]).
#[derive(Debug)]
pub struct FsIdentity {
    uid: Uid,
    gid: Gid,
}

/// Makes this thread's filesystem accesses those of `uid`/`gid` (setfsuid/setfsgid): while the
/// fsuid is not 0 the kernel also drops the file capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN,
/// CAP_FOWNER), so inside a user's home PID 1 can open, create and read only what the user
/// could. Dropping the returned guard restores root's.
pub fn act_as(uid: u32, gid: u32) -> Result<FsIdentity, String> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    // The group first: changing it needs the privileges the fsuid change drops.
    let old_gid = nix::unistd::setfsgid(g);
    if nix::unistd::setfsgid(g) != g {
        nix::unistd::setfsgid(old_gid);
        return Err(format!("setfsgid({gid}) was refused"));
    }
    let old_uid = nix::unistd::setfsuid(u);
    if nix::unistd::setfsuid(u) != u {
        nix::unistd::setfsuid(old_uid);
        nix::unistd::setfsgid(old_gid);
        return Err(format!("setfsuid({uid}) was refused"));
    }
    Ok(FsIdentity { uid: old_uid, gid: old_gid })
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        nix::unistd::setfsuid(self.uid);
        nix::unistd::setfsgid(self.gid);
    }
}

/// Creates (or reuses) the directory `name` (plain components) below the trusted `base` for a
/// service (`RuntimeDirectory=` and friends): every component is opened with `O_NOFOLLOW`, and
/// a symlink anywhere is refused. Directories created on the way are root's, 0755 (as
/// systemd's); an existing one on the way must be root's or `owner`'s. Only the last
/// component gets `mode` and `owner`, set on its descriptor.
pub fn service_directory(base: &Path, name: &Path, mode: u32, owner: (u32, u32)) -> Result<(), String> {
    let start = Dir::open(base)?;
    let parts = plain_parts(name)?;
    let (leaf, above) = parts.split_last().ok_or("empty directory name")?;
    let walked = start.walk(
        &above.iter().collect::<PathBuf>(),
        &Walk { create: Some(0o755), root_links: false, owners: &[0, owner.0] },
    )?;
    let dir = match walked.dir.open_dir(leaf)? {
        Some(d) => d,
        None => match walked.dir.make_dir(leaf, mode)? {
            Some(d) => d,
            // Made by someone else in between: open what is there now, without following.
            None => walked
                .dir
                .open_dir(leaf)?
                .ok_or_else(|| format!("{} vanished", walked.dir.child_path(leaf).display()))?,
        },
    };
    // chown first: it clears set-id bits the mode may ask for.
    dir.set_owner(owner.0, owner.1)?;
    dir.set_mode(mode)
}

/// Removes the directory `name` (plain components) below the trusted `base` and everything in
/// it, as `RuntimeDirectory=` wants when its service stops. Nothing is followed: a symlink on
/// the way is an error, a symlink inside is removed itself. A missing directory is no error.
pub fn remove_tree(base: &Path, name: &Path) -> Result<(), String> {
    let mut dir = Dir::open(base)?;
    let parts: Vec<&OsStr> = plain_parts(name)?;
    let (leaf, above) = parts.split_last().ok_or("empty directory name")?;
    for part in above {
        dir = match dir.child(part)? {
            Child::Dir(d) => d,
            Child::Missing => return Ok(()),
            Child::Symlink => return Err(symlink_refused(&dir.child_path(part))),
        };
    }
    match dir.child(leaf)? {
        Child::Dir(d) => empty(&d, 0)?,
        Child::Missing => return Ok(()),
        Child::Symlink => return Err(symlink_refused(&dir.child_path(leaf))),
    }
    unlinkat(&dir.fd, *leaf, UnlinkatFlags::RemoveDir)
        .map_err(|e| format!("removing {}: {}", dir.child_path(leaf).display(), os(e)))
}

/// Removes everything in `dir` without following a symlink.
fn empty(dir: &Dir, depth: usize) -> Result<(), String> {
    if depth > 64 {
        return Err(format!("{}: nested too deep", dir.path.display()));
    }
    // A descriptor of its own (the directory's offset is not shared with `dir`).
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut list = nix::dir::Dir::openat(&dir.fd, ".", flags, Mode::empty())
        .map_err(|e| format!("reading {}: {}", dir.path.display(), os(e)))?;
    let names: Vec<OsString> = list
        .iter()
        .filter_map(Result::ok)
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    drop(list);
    for name in names {
        let Some(st) = dir.entry(&name)? else { continue };
        if is_kind(&st, nix::libc::S_IFDIR) {
            // Opened with O_NOFOLLOW: swapped for a link meanwhile, it is refused.
            if let Some(sub) = dir.open_dir(&name)? {
                empty(&sub, depth + 1)?;
            }
            unlinkat(&dir.fd, name.as_os_str(), UnlinkatFlags::RemoveDir)
        } else {
            unlinkat(&dir.fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
        }
        .map_err(|e| format!("removing {}: {}", dir.child_path(&name).display(), os(e)))?;
    }
    Ok(())
}

/// The components of a relative path of plain names (no `/`, `.` or `..`).
fn plain_parts(name: &Path) -> Result<Vec<&OsStr>, String> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            _ => return Err(format!("`{}` is not a relative path of plain names", name.display())),
        }
    }
    if parts.is_empty() {
        return Err("empty directory name".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
