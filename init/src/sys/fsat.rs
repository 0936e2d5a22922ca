//! File operations relative to open directories, for PID 1 writing where someone else can write
//! too (users' homes, service directories, the world-writable parts of `/var`). A path is walked
//! one component at a time with `O_NOFOLLOW|O_DIRECTORY` from a directory PID 1 trusts; a
//! symlink on the way is refused unless only root can have made it; owner and mode are set on
//! the open descriptor, never by path; a file is replaced by writing a temporary file with a
//! random name (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the same directory and renaming it over the
//! old one. systemd's `chase()` and its `openat`-based directory setup are the model.
//!
//! Errors are [`FsError`]s, one line each naming the path.

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

/// Why an operation here failed, with the path it failed at (callers add whose file it was).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call failed; `op` says what PID 1 was doing (`opening`, `creating`, `chown`, …).
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    /// Looking at what is there (`fstat`, duplicating a descriptor) failed.
    #[error("{}: {source}", path.display())]
    Stat { path: PathBuf, source: std::io::Error },
    /// Writing a staged file failed; `step` names the step when it is not the write itself.
    #[error("writing {}: {}{source}", path.display(), step.map_or(String::new(), |s| format!("{s}: ")))]
    Write { path: PathBuf, step: Option<&'static str>, source: std::io::Error },
    #[error("`{name}` is not a file name")]
    BadName { name: String },
    #[error("`{}` is not a relative path of plain names", path.display())]
    NotPlain { path: PathBuf },
    #[error("empty directory name")]
    EmptyName,
    #[error("{} is a symbolic link; not followed", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: too many levels of symbolic links", path.display())]
    TooManyLinks { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotDirectory { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    /// Made by someone else between two steps (a race with a user).
    #[error("{} appeared meanwhile", path.display())]
    Appeared { path: PathBuf },
    #[error("{} vanished after it was created", path.display())]
    Vanished { path: PathBuf },
    /// A directory on the way belongs to someone the walk does not trust.
    #[error("{} belongs to uid {uid}, not to {}; not used", path.display(), owners_text(owners))]
    Owner { path: PathBuf, uid: u32, owners: Vec<u32> },
    /// Cannot happen: `..` never pops the walk's first directory.
    #[error("walk: lost its starting directory")]
    LostStart,
    #[error("{}: nested too deep", path.display())]
    TooDeep { path: PathBuf },
    /// `setfsuid`/`setfsgid` did not take.
    #[error("{call}({id}) was refused")]
    Identity { call: &'static str, id: u32 },
}

fn io(op: &'static str, path: &Path, e: Errno) -> FsError {
    FsError::Io { op, path: path.to_owned(), source: os(e) }
}

fn stat_err(path: &Path, e: Errno) -> FsError {
    FsError::Stat { path: path.to_owned(), source: os(e) }
}

fn is_kind(st: &FileStat, kind: nix::libc::mode_t) -> bool {
    st.st_mode & nix::libc::S_IFMT == kind
}

/// One path component: not empty, no `/`, not `.` or `..`.
fn check_name(name: &OsStr) -> Result<(), FsError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(FsError::BadName { name: name.to_string_lossy().into_owned() });
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
    pub fn open(path: &Path) -> Result<Dir, FsError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| io("opening", path, e))?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// The path this directory was reached by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child_path(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    pub fn try_clone(&self) -> Result<Dir, FsError> {
        let fd = self.fd.try_clone().map_err(|e| FsError::Stat { path: self.path.clone(), source: e })?;
        Ok(Dir { fd, path: self.path.clone() })
    }

    /// The directory's own status.
    pub fn stat(&self) -> Result<FileStat, FsError> {
        fstat(&self.fd).map_err(|e| stat_err(&self.path, e))
    }

    /// The status of `name` itself (a symlink is not followed); `None` when there is none.
    pub fn entry(&self, name: &OsStr) -> Result<Option<FileStat>, FsError> {
        check_name(name)?;
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(stat_err(&self.child_path(name), e)),
        }
    }

    fn child(&self, name: &OsStr) -> Result<Child, FsError> {
        check_name(name)?;
        let path = self.child_path(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Child::Dir(Dir { fd, path })),
            Err(Errno::ENOENT) => Ok(Child::Missing),
            // O_NOFOLLOW on a symlink gives ELOOP; a symlink to a non-directory may say ENOTDIR.
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => match self.entry(name)? {
                Some(st) if is_kind(&st, nix::libc::S_IFLNK) => Ok(Child::Symlink),
                Some(_) if e == Errno::ENOTDIR => Err(FsError::NotDirectory { path }),
                Some(_) | None => Err(io("opening", &path, e)),
            },
            Err(e) => Err(io("opening", &path, e)),
        }
    }

    /// Opens the directory `name` (one component) without following a symlink; `None` when
    /// there is nothing by that name.
    pub fn open_dir(&self, name: &OsStr) -> Result<Option<Dir>, FsError> {
        match self.child(name)? {
            Child::Dir(d) => Ok(Some(d)),
            Child::Missing => Ok(None),
            Child::Symlink => Err(symlink_refused(&self.child_path(name))),
        }
    }

    /// Creates the directory `name` with exactly `mode` (set on the new directory's descriptor,
    /// whatever the umask) and opens it; `None` when something by that name exists already.
    /// It belongs to whoever runs (root, or the fsuid of [`act_as`]).
    pub fn make_dir(&self, name: &OsStr, mode: u32) -> Result<Option<Dir>, FsError> {
        check_name(name)?;
        let path = self.child_path(name);
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => return Ok(None),
            Err(e) => return Err(io("creating", &path, e)),
        }
        let dir = self.open_dir(name)?.ok_or(FsError::Vanished { path })?;
        dir.set_mode(mode)?;
        Ok(Some(dir))
    }

    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), FsError> {
        fchown(&self.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(|e| io("chown", &self.path, e))
    }

    pub fn set_mode(&self, mode: u32) -> Result<(), FsError> {
        fchmod(&self.fd, Mode::from_bits_truncate(mode)).map_err(|e| io("chmod", &self.path, e))
    }

    /// Reads the regular file `name` (a symlink is refused, a FIFO or device is not opened for
    /// long: `O_NONBLOCK`, then checked); `None` when there is none. At most `max` bytes.
    pub fn read_file(&self, name: &OsStr, max: u64) -> Result<Option<(Vec<u8>, FileStat)>, FsError> {
        check_name(name)?;
        let path = self.child_path(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(symlink_refused(&path)),
            Err(e) => return Err(io("opening", &path, e)),
        };
        let st = fstat(&fd).map_err(|e| stat_err(&path, e))?;
        if !is_kind(&st, nix::libc::S_IFREG) {
            return Err(FsError::NotRegular { path });
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd).take(max + 1).read_to_end(&mut bytes).map_err(|source| FsError::Io {
            op: "reading",
            path: path.clone(),
            source,
        })?;
        if bytes.len() as u64 > max {
            return Err(FsError::TooLarge { path, max });
        }
        Ok(Some((bytes, st)))
    }

    /// Writes `data` into a new temporary file beside `name` (random name, `O_EXCL`, so
    /// nothing planted there is opened), sets `owner` (uid, gid) and then `mode` on its
    /// descriptor (chown clears set-id bits) and syncs it. [`Staged::commit`] renames it over
    /// `name`; dropping the [`Staged`] removes it.
    pub fn stage(&self, name: &OsStr, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<Staged, FsError> {
        check_name(name)?;
        let path = self.child_path(name);
        let failed =
            |step: Option<&'static str>, source: std::io::Error| FsError::Write { path: path.clone(), step, source };
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut tries = 0;
        let (fd, tmp) = loop {
            let tmp = temp_name(name);
            match openat(&self.fd, tmp.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => break (fd, tmp),
                Err(Errno::EEXIST) if tries < 8 => tries += 1,
                Err(e) => return Err(failed(Some("creating a temporary file"), os(e))),
            }
        };
        let dir = self.fd.try_clone().map_err(|e| failed(None, e))?;
        // From here on, dropping `staged` removes the temporary file.
        let staged = Staged { dir, tmp, name: name.to_owned(), path: path.clone(), committed: false };
        let mut file = std::fs::File::from(fd);
        file.write_all(data).map_err(|e| failed(None, e))?;
        if let Some((uid, gid)) = owner {
            fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| failed(Some("chown"), os(e)))?;
        }
        fchmod(&file, Mode::from_bits_truncate(mode)).map_err(|e| failed(Some("chmod"), os(e)))?;
        file.sync_all().map_err(|e| failed(None, e))?;
        Ok(staged)
    }

    /// [`Dir::stage`] and [`Staged::commit`] at once.
    pub fn write_file(&self, name: &OsStr, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<(), FsError> {
        self.stage(name, data, mode, owner)?.commit()
    }

    /// Walks `rel` (relative, plain components) from this directory, one component at a time
    /// without following symlinks, except as `how` allows. Returns the last directory.
    pub fn walk(&self, rel: &Path, how: &Walk) -> Result<Walked, FsError> {
        let mut todo = VecDeque::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => todo.push_back(n.to_owned()),
                Component::CurDir => {}
                _ => return Err(FsError::NotPlain { path: rel.to_owned() }),
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
            let Some(cur) = stack.last() else { return Err(FsError::LostStart) };
            let path = cur.child_path(&name);
            let next = match cur.child(&name)? {
                Child::Dir(d) => {
                    let st = d.stat()?;
                    if !how.owners.is_empty() && !how.owners.contains(&st.st_uid) {
                        return Err(FsError::Owner { path, uid: st.st_uid, owners: how.owners.to_vec() });
                    }
                    d
                }
                Child::Missing => {
                    let Some(mode) = how.create else { return Err(FsError::Missing { path }) };
                    let d = cur.make_dir(&name, mode)?.ok_or(FsError::Appeared { path })?;
                    created.push(Created::new(cur, &name)?);
                    d
                }
                Child::Symlink => {
                    if !how.root_links || !cur.only_root_made(&name)? {
                        return Err(symlink_refused(&path));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(FsError::TooManyLinks { path });
                    }
                    let target = readlinkat(&cur.fd, name.as_os_str()).map_err(|e| io("reading the link", &path, e))?;
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
        let dir = stack.pop().ok_or(FsError::LostStart)?;
        Ok(Walked { dir, created, resolved: resolved.iter().collect() })
    }

    /// Whether the symlink `name` can only have been made by root: it is root's, in a
    /// directory that is root's and that nobody else may write to.
    fn only_root_made(&self, name: &OsStr) -> Result<bool, FsError> {
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

fn symlink_refused(path: &Path) -> FsError {
    FsError::Symlink { path: path.to_owned() }
}

/// `.NAME.XXXXXXXXXXXXXXXX.berth-tmp` with 64 random bits (or, should the kernel give none,
/// the pid, time and a counter: `O_EXCL` makes either safe, the randomness only keeps a
/// planted name from making every try fail).
fn temp_name(name: &OsStr) -> OsString {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random =
        crate::sys::random::bytes16().map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
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
    pub fn new(parent: &Dir, name: &OsStr) -> Result<Created, FsError> {
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
    pub fn commit(mut self) -> Result<(), FsError> {
        renameat(&self.dir, self.tmp.as_os_str(), &self.dir, self.name.as_os_str())
            .map_err(|e| io("renaming into", &self.path, e))?;
        self.committed = true;
        fsync(&self.dir).map_err(|e| io("syncing the directory of", &self.path, e))
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
pub fn act_as(uid: u32, gid: u32) -> Result<FsIdentity, FsError> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    // The group first: changing it needs the privileges the fsuid change drops.
    let old_gid = nix::unistd::setfsgid(g);
    if nix::unistd::setfsgid(g) != g {
        nix::unistd::setfsgid(old_gid);
        return Err(FsError::Identity { call: "setfsgid", id: gid });
    }
    let old_uid = nix::unistd::setfsuid(u);
    if nix::unistd::setfsuid(u) != u {
        nix::unistd::setfsuid(old_uid);
        nix::unistd::setfsgid(old_gid);
        return Err(FsError::Identity { call: "setfsuid", id: uid });
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
pub fn service_directory(base: &Path, name: &Path, mode: u32, owner: (u32, u32)) -> Result<(), FsError> {
    let start = Dir::open(base)?;
    let parts = plain_parts(name)?;
    let (leaf, above) = parts.split_last().ok_or(FsError::EmptyName)?;
    let walked = start.walk(
        &above.iter().collect::<PathBuf>(),
        &Walk { create: Some(0o755), root_links: false, owners: &[0, owner.0] },
    )?;
    let dir = match walked.dir.open_dir(leaf)? {
        Some(d) => d,
        None => match walked.dir.make_dir(leaf, mode)? {
            Some(d) => d,
            // Made by someone else in between: open what is there now, without following.
            None => {
                walked.dir.open_dir(leaf)?.ok_or_else(|| FsError::Vanished { path: walked.dir.child_path(leaf) })?
            }
        },
    };
    // chown first: it clears set-id bits the mode may ask for.
    dir.set_owner(owner.0, owner.1)?;
    dir.set_mode(mode)
}

/// Removes the directory `name` (plain components) below the trusted `base` and everything in
/// it, as `RuntimeDirectory=` wants when its service stops. Nothing is followed: a symlink on
/// the way is an error, a symlink inside is removed itself. A missing directory is no error.
pub fn remove_tree(base: &Path, name: &Path) -> Result<(), FsError> {
    let mut dir = Dir::open(base)?;
    let parts: Vec<&OsStr> = plain_parts(name)?;
    let (leaf, above) = parts.split_last().ok_or(FsError::EmptyName)?;
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
    unlinkat(&dir.fd, *leaf, UnlinkatFlags::RemoveDir).map_err(|e| io("removing", &dir.child_path(leaf), e))
}

/// Removes everything in `dir` without following a symlink.
fn empty(dir: &Dir, depth: usize) -> Result<(), FsError> {
    if depth > 64 {
        return Err(FsError::TooDeep { path: dir.path.clone() });
    }
    // A descriptor of its own (the directory's offset is not shared with `dir`).
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut list =
        nix::dir::Dir::openat(&dir.fd, ".", flags, Mode::empty()).map_err(|e| io("reading", &dir.path, e))?;
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
        .map_err(|e| io("removing", &dir.child_path(&name), e))?;
    }
    Ok(())
}

/// The components of a relative path of plain names (no `/`, `.` or `..`).
fn plain_parts(name: &Path) -> Result<Vec<&OsStr>, FsError> {
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            _ => return Err(FsError::NotPlain { path: name.to_owned() }),
        }
    }
    if parts.is_empty() {
        return Err(FsError::EmptyName);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
