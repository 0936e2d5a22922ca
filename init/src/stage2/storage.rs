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
    mount(Some(&var), "/var", None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("binding {} on /var: {e}", var.display()))
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
