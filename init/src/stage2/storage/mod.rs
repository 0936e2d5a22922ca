//! STATE and what lives on it: found (and grown or created) by [`partition`], mounted at
//! [`STATE_MOUNT`], `/var` bound from it and `/etc` an overlay whose upper layer is on it.
//! Without a usable STATE the boot goes on with both on tmpfs, loudly: nothing written survives.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::sys::log;

pub(super) mod partition;

/// Why STATE (or the directories on it) cannot be used; each message is one line naming the
/// device, partition or path, as the console shows it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A call on a device, file or mount failed: `what` says which and where.
    #[error("{what}: {source}")]
    Failed { what: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// The disk, its GPT or STATE's filesystem is not what a Berth disk has; left as it is.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(why: String) -> StorageError {
    StorageError::Invalid(why)
}

/// Context for an error from a call: `.at(|| format!("opening {}", path.display()))`.
trait At<T> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T, StorageError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> At<T> for Result<T, E> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T, StorageError> {
        self.map_err(|e| StorageError::Failed { what: what(), source: e.into() })
    }
}

/// PID 1's runtime directory, world-traversable (0755): every uid uses its public endpoints
/// (`resolv.conf`, the sd_notify and syslog sockets, each with its own mode). What only root may
/// reach has its own mode (`control.sock`, 0600 and SO_PEERCRED) or lives in [`PRIVATE_DIR`].
pub const RUN_DIR: &str = "/run/berth";
/// Root-only (0700): a second path to STATE's files must not bypass what `/var` and `/etc` show.
pub const PRIVATE_DIR: &str = "/run/berth/private";
/// Where STATE is mounted.
pub const STATE_MOUNT: &str = "/run/berth/private/state";

/// Creates (or corrects) [`RUN_DIR`] 0755, [`PRIVATE_DIR`] 0700 and [`STATE_MOUNT`], all root's.
pub fn make_run_dirs(run: &Path, private: &Path, state: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    for (dir, mode) in [(run, 0o755), (private, 0o700), (state, 0o755)] {
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(invalid(format!("creating {}: {e}", dir.display()))),
        }
        let meta = std::fs::symlink_metadata(dir).at(|| format!("{}", dir.display()))?;
        if !meta.is_dir() {
            return Err(invalid(format!("{} is not a directory", dir.display())));
        }
        // The umask may have taken bits away; a directory from an earlier stage may differ.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .at(|| format!("chmod {mode:o} {}", dir.display()))?;
    }
    Ok(())
}

/// How `/var` and `/etc` ended up.
pub enum Storage {
    /// On STATE, the partition at `device`.
    Persistent { device: PathBuf },
    /// On tmpfs, because of `why`.
    Volatile { why: String },
}

pub fn setup() -> Storage {
    if let Err(e) = make_run_dirs(Path::new(RUN_DIR), Path::new(PRIVATE_DIR), Path::new(STATE_MOUNT)) {
        log::line(&e.to_string());
    }
    let storage = match mount_state() {
        Ok(device) => Storage::Persistent { device },
        Err(e) => {
            let why = e.to_string();
            for line in volatile_warning(&why).lines() {
                log::line(line);
            }
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if let Err(e) = mount(Some("tmpfs"), STATE_MOUNT, Some("tmpfs"), flags, Some("mode=0755")) {
                log::line(&format!("mounting tmpfs on {STATE_MOUNT}: {e}"));
            }
            Storage::Volatile { why }
        }
    };
    let state = Path::new(STATE_MOUNT);
    if let Err(e) = bind_var(state) {
        log::line(&e.to_string());
    }
    if let Err(e) = overlay_etc(state) {
        log::line(&e.to_string());
    }
    storage
}

/// What the console (at the start of stage 2) and the journal (unit `berth-init`, once the
/// service manager runs) say when STATE cannot be used: several lines, hard to miss.
pub fn volatile_warning(why: &str) -> String {
    format!(
        "!!! STATE UNUSABLE: {why}\n\
         !!! /var and /etc are on tmpfs: NOTHING written to them survives a reboot\n\
         !!! STATE itself was left as it is; see docs/state.md for what to do"
    )
}

/// The root partition (what `/` is mounted from), as a device node.
pub fn root_partition() -> Result<PathBuf, StorageError> {
    let st = nix::sys::stat::stat("/").at(|| "stat /".to_string())?;
    let (major, minor) = (nix::sys::stat::major(st.st_dev), nix::sys::stat::minor(st.st_dev));
    let link = format!("/sys/dev/block/{major}:{minor}");
    let target = std::fs::read_link(&link).at(|| link.clone())?;
    let name = target.file_name().ok_or_else(|| invalid(format!("{link} -> {}: no device name", target.display())))?;
    Ok(Path::new("/dev").join(name))
}

fn mount_state() -> Result<PathBuf, StorageError> {
    let root = root_partition()?;
    let prepared = partition::prepare(&root)?;
    for line in prepared.log_lines() {
        log::line(&line);
    }
    let device = prepared.device.clone();
    let clean = match cleanly_unmounted(&device) {
        Ok(true) => "cleanly unmounted last time",
        Ok(false) => "not cleanly unmounted last time: the journal is replayed",
        Err(e) => return Err(e),
    };
    mount(Some(&device), STATE_MOUNT, Some("ext4"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
        .at(|| format!("mounting {} (ext4) on {STATE_MOUNT}", device.display()))?;
    log::line(&format!("STATE {} mounted on {STATE_MOUNT} ({clean})", device.display()));
    report_usage(&device);
    match partition::grow_filesystem(&device, Path::new(STATE_MOUNT)) {
        Ok(Some(g)) => log::line(&format!(
            "STATE {}: filesystem grown online from {} to {} MiB in {} ms",
            device.display(),
            g.old_bytes >> 20,
            g.new_bytes >> 20,
            g.took.as_millis()
        )),
        Ok(None) => {}
        Err(e) => log::line(&format!("growing STATE's filesystem: {e} (it keeps its size)")),
    }
    Ok(device)
}

/// A STATE above 90% full is said at every boot (M7): root's reserve is the last of it.
fn report_usage(device: &Path) {
    let Ok(st) = nix::sys::statvfs::statvfs(STATE_MOUNT) else { return };
    let (total, free, frag) = (st.blocks(), st.blocks_free(), st.fragment_size());
    if total == 0 {
        return;
    }
    let used = total.saturating_sub(free) * 100 / total;
    if used >= 90 {
        log::line(&format!(
            "STATE {}: WARNING: {used}% full ({} MiB free, {} MiB of it only for root): free space on /var",
            device.display(),
            (free * frag) >> 20,
            ((free - st.blocks_available().min(free)) * frag) >> 20
        ));
    }
}

fn bind_var(state: &Path) -> Result<(), StorageError> {
    let var = state.join("var");
    std::fs::create_dir_all(&var).at(|| format!("creating {}", var.display()))?;
    // The image's /var (package directories such as /var/tmp, /var/lib/dpkg, /var/log) is
    // hidden by the bind: its directories and symlinks are created on STATE where missing, so
    // a first boot (or an update that adds one) finds them. Files are the packages' business.
    let created = seed_directories(Path::new("/var"), &var, 0);
    if created > 0 {
        log::line(&format!("/var: {created} directories and links from the image created on STATE"));
    }
    mount(Some(&var), "/var", None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .at(|| format!("binding {} on /var", var.display()))
}

/// Copies the directory and symlink skeleton of `from` into `to` (mode and owner kept; what
/// exists is left alone). Returns how many entries were created. It descends only into real
/// directories of `to`: a symlink found there (one a user may have planted on STATE where the
/// image has a directory) is neither followed nor replaced.
fn seed_directories(from: &Path, to: &Path, depth: usize) -> usize {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(entries) = std::fs::read_dir(from) else { return 0 };
    let mut created = 0;
    for e in entries.flatten() {
        let (source, target) = (e.path(), to.join(e.file_name()));
        let Ok(meta) = std::fs::symlink_metadata(&source) else { continue };
        let exists = std::fs::symlink_metadata(&target).is_ok();
        if meta.file_type().is_symlink() {
            if !exists && let Ok(link) = std::fs::read_link(&source) {
                created += usize::from(std::os::unix::fs::symlink(link, &target).is_ok());
            }
        } else if meta.is_dir() {
            if !exists && std::fs::create_dir(&target).is_ok() {
                created += 1;
                let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
                let _ = std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()));
            }
            let real_dir = std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_dir());
            if depth < 8 && real_dir {
                created += seed_directories(&source, &target, depth + 1);
            }
        }
    }
    created
}

fn overlay_etc(state: &Path) -> Result<(), StorageError> {
    let upper = state.join("etc/upper");
    let work = state.join("etc/work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).at(|| format!("creating {}", d.display()))?;
    }
    // Before the mount hides the image's /etc: its new users and groups into copied-up files.
    for line in crate::stage2::accounts::merge_into_upper(Path::new("/etc"), &upper) {
        log::line(&line);
    }
    let data = format!("lowerdir=/etc,upperdir={},workdir={}", upper.display(), work.display());
    mount(Some("overlay"), "/etc", Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
        .at(|| format!("mounting the /etc overlay ({data})"))
}

/// From STATE's ext4 superblock: false when its journal still needs recovery (the last mount
/// did not end with an unmount).
fn cleanly_unmounted(device: &Path) -> Result<bool, StorageError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(device).at(|| format!("opening {}", device.display()))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024).at(|| format!("reading {}'s superblock", device.display()))?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Err(invalid(format!("{} holds no ext4 filesystem", device.display())));
    }
    const INCOMPAT_RECOVER: u32 = 0x4;
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    Ok(incompat & INCOMPAT_RECOVER == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A directory every uid may traverse, as `/run` is.
    fn open_tempdir() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        t
    }

    #[test]
    fn h5_run_berth_is_world_traversable_and_only_state_private() {
        // The path contracts: the public endpoints sit in RUN_DIR itself, STATE below PRIVATE_DIR.
        for public in [berth_net::resolv::PATH, crate::manager::notify::SOCKET, crate::manager::syslog::SOCKET] {
            assert_eq!(Path::new(public).parent(), Some(Path::new(RUN_DIR)), "{public}");
        }
        assert_eq!(Path::new(STATE_MOUNT).parent(), Some(Path::new(PRIVATE_DIR)));
        assert_eq!(Path::new(PRIVATE_DIR).parent(), Some(Path::new(RUN_DIR)));

        let t = open_tempdir();
        let (run, private) = (t.path().join("berth"), t.path().join("berth/private"));
        let state = private.join("state");
        // As an older init left it.
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        make_run_dirs(&run, &private, &state).unwrap();
        assert_eq!((mode(&run), mode(&private), mode(&state)), (0o755, 0o700, 0o755));
        make_run_dirs(&run, &private, &state).unwrap();

        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: the uid 65534 half is skipped");
            return;
        }
        // What a non-root process does: read resolv.conf, send to the notify and syslog sockets.
        berth_net::resolv::write(&run.join("resolv.conf"), "nameserver 10.0.2.3\n").unwrap();
        let notify = run.join("notify");
        let socket = crate::manager::notify::bind_datagram(notify.to_str().unwrap(), 0o777).unwrap();
        let secret = state.join("secret");
        std::fs::write(&secret, "x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let as_nobody = |argv: &[&str]| {
            std::process::Command::new(argv[0]).args(&argv[1..]).uid(65534).gid(65534).output().unwrap()
        };
        let cat = as_nobody(&["cat", run.join("resolv.conf").to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "nameserver 10.0.2.3\n", "{cat:?}");
        let logger = as_nobody(&["logger", "--socket-errors=on", "-d", "-u", notify.to_str().unwrap(), "READY=1"]);
        assert!(logger.status.success(), "sending as uid 65534: {logger:?}");
        let mut buf = [0u8; 256];
        let got = crate::manager::notify::receive_one(&socket, &mut buf);
        assert!(got.is_some_and(|(_, n)| String::from_utf8_lossy(&buf[..n]).contains("READY=1")), "{got:?}");
        let denied = as_nobody(&["cat", secret.to_str().unwrap()]);
        assert!(!denied.status.success(), "uid 65534 read a file on STATE through the private directory");
    }

    #[test]
    fn l12_seed_directories_does_not_recurse_through_a_symlink_it_did_not_create() {
        let t = tempfile::tempdir().unwrap();
        let (image, state, victim) = (t.path().join("image"), t.path().join("state"), t.path().join("victim"));
        std::fs::create_dir_all(image.join("lib/dpkg/info")).unwrap();
        std::fs::create_dir_all(image.join("cache/apt")).unwrap();
        std::os::unix::fs::symlink("../run/lock", image.join("lock")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        // Planted on STATE where the image has a directory.
        std::os::unix::fs::symlink(&victim, state.join("lib")).unwrap();

        let created = seed_directories(&image, &state, 0);
        assert_eq!(created, 3, "cache, cache/apt and the lock link");
        assert!(std::fs::read_dir(&victim).unwrap().next().is_none(), "created through the planted symlink");
        assert!(std::fs::symlink_metadata(state.join("lib")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_link(state.join("lock")).unwrap(), Path::new("../run/lock"));
        assert!(state.join("cache/apt").is_dir());
    }
}
