//! STATE and what lives on it: found (and grown or created) by [`crate::state`], mounted at
//! [`STATE_MOUNT`], `/var` bound from it and `/etc` an overlay whose upper layer is on it.
//! Without a usable STATE the boot goes on with both on tmpfs, loudly: nothing written survives.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::log;

/// Where STATE is mounted (root-only: `/run/berth` is 0700).
pub const STATE_MOUNT: &str = "/run/berth/state";

/// How `/var` and `/etc` ended up.
pub enum Storage {
    /// On STATE, the partition at `device`.
    Persistent { device: PathBuf },
    /// On tmpfs, because of `why`.
    Volatile { why: String },
}

pub fn setup() -> Storage {
    if let Err(e) = std::fs::create_dir_all(STATE_MOUNT) {
        log::line(&format!("creating {STATE_MOUNT}: {e}"));
    }
    let _ = std::fs::set_permissions("/run/berth", std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let storage = match mount_state() {
        Ok(device) => Storage::Persistent { device },
        Err(why) => {
            log::line(&format!("STATE unusable: {why}; /var and /etc changes will NOT survive a reboot"));
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if let Err(e) = mount(Some("tmpfs"), STATE_MOUNT, Some("tmpfs"), flags, Some("mode=0755")) {
                log::line(&format!("mounting tmpfs on {STATE_MOUNT}: {e}"));
            }
            Storage::Volatile { why }
        }
    };
    let state = Path::new(STATE_MOUNT);
    if let Err(e) = bind_var(state) {
        log::line(&e);
    }
    if let Err(e) = overlay_etc(state) {
        log::line(&e);
    }
    storage
}

/// The root partition (what `/` is mounted from), as a device node.
pub fn root_partition() -> Result<PathBuf, String> {
    let st = nix::sys::stat::stat("/").map_err(|e| format!("stat /: {e}"))?;
    let (major, minor) = (nix::sys::stat::major(st.st_dev), nix::sys::stat::minor(st.st_dev));
    let link = format!("/sys/dev/block/{major}:{minor}");
    let target = std::fs::read_link(&link).map_err(|e| format!("{link}: {e}"))?;
    let name = target.file_name().ok_or_else(|| format!("{link} -> {}: no device name", target.display()))?;
    Ok(Path::new("/dev").join(name))
}

fn mount_state() -> Result<PathBuf, String> {
    let root = root_partition()?;
    let prepared = crate::state::prepare(&root)?;
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
        .map_err(|e| format!("mounting {} (ext4) on {STATE_MOUNT}: {e}", device.display()))?;
    log::line(&format!("STATE {} mounted on {STATE_MOUNT} ({clean})", device.display()));
    match crate::state::grow_filesystem(&device, Path::new(STATE_MOUNT)) {
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

fn bind_var(state: &Path) -> Result<(), String> {
    let var = state.join("var");
    std::fs::create_dir_all(&var).map_err(|e| format!("creating {}: {e}", var.display()))?;
    // The image's /var (package directories such as /var/tmp, /var/lib/dpkg, /var/log) is
    // hidden by the bind: its directories and symlinks are created on STATE where missing, so
    // a first boot (or an update that adds one) finds them. Files are the packages' business.
    let created = seed_directories(Path::new("/var"), &var, 0);
    if created > 0 {
        log::line(&format!("/var: {created} directories and links from the image created on STATE"));
    }
    mount(Some(&var), "/var", None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("binding {} on /var: {e}", var.display()))
}

/// Copies the directory and symlink skeleton of `from` into `to` (mode and owner kept; what
/// exists is left alone). Returns how many entries were created.
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
            if depth < 8 {
                created += seed_directories(&source, &target, depth + 1);
            }
        }
    }
    created
}

fn overlay_etc(state: &Path) -> Result<(), String> {
    let upper = state.join("etc/upper");
    let work = state.join("etc/work");
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let data = format!("lowerdir=/etc,upperdir={},workdir={}", upper.display(), work.display());
    mount(Some("overlay"), "/etc", Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
        .map_err(|e| format!("mounting the /etc overlay ({data}): {e}"))
}

/// From STATE's ext4 superblock: false when its journal still needs recovery (the last mount
/// did not end with an unmount).
fn cleanly_unmounted(device: &Path) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(device).map_err(|e| format!("opening {}: {e}", device.display()))?;
    let mut sb = [0u8; 1024];
    file.read_exact_at(&mut sb, 1024).map_err(|e| format!("reading {}'s superblock: {e}", device.display()))?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return Err(format!("{} holds no ext4 filesystem", device.display()));
    }
    const INCOMPAT_RECOVER: u32 = 0x4;
    let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]);
    Ok(incompat & INCOMPAT_RECOVER == 0)
}
