//! Mounting: the API filesystems both stages need, STATE with `/var` and the `/etc` overlay, and
//! taking everything down again at shutdown.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys::log;

/// Mounts an API filesystem; one that is there already (EBUSY) is fine.
pub fn mount_api(what: &str, at: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    let _ = std::fs::create_dir_all(at);
    match mount(Some(what), at, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mounting {fstype} on {at}: {e}")),
    }
}

/// `mount --move from to`.
pub fn mount_move(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<(), Errno> {
    mount(Some(from.as_ref()), to.as_ref(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
}

/// Detaches `at` (lazy unmount), ignoring errors.
pub fn detach(at: &str) {
    let _ = umount2(at, MntFlags::MNT_DETACH);
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// Stage 2's API filesystems (those stage 1 moved over stay), cgroup2, and `/` made shared so
/// that containers' mount propagation works. Problems are logged; none stops the boot.
pub fn api_filesystems() {
    // /proc first: /proc/self/mountinfo tells what is mounted already.
    if !Path::new("/proc/self").exists()
        && let Err(e) = mount_api("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None)
    {
        log::line(&e);
    }
    let mounted = mount_points();
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        // gid 5 is Debian's `tty` group.
        ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=620,ptmxmode=666")),
        ("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755,size=20%")),
        ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC, Some("nsdelegate,memory_recursiveprot")),
        ("mqueue", "/dev/mqueue", "mqueue", NOSUID_NODEV_NOEXEC, None),
    ];
    for (what, at, fstype, flags, data) in table {
        if mounted.iter().any(|m| m == at) {
            continue;
        }
        if let Err(e) = mount_api(what, at, fstype, flags, data) {
            log::line(&e);
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SHARED, None::<&str>) {
        log::line(&format!("making / shared: {e}"));
    }
    enable_cgroup_controllers();
}

/// Hands every controller the kernel has down to the root's children (services get their own
/// groups under it).
fn enable_cgroup_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else { return };
    let want: Vec<String> = available.split_whitespace().map(|c| format!("+{c}")).collect();
    if want.is_empty() {
        return;
    }
    if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), want.join(" ")) {
        log::line(&format!("enabling cgroup controllers {}: {e}", want.join(" ")));
    }
}

/// A mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo(5) text, in mount order.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = unescape(left.split(' ').nth(4)?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next().unwrap_or(""));
            Some(Mount { mount_point, fstype, source })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            // Three octal digits fit in a byte for the escapes the kernel writes (\040, \011, ...).
            out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

fn mount_points() -> Vec<String> {
    mounts().into_iter().map(|m| m.mount_point).collect()
}

/// Is `at` one of the mounts the kernel and userspace keep until the very end?
fn kept_at_shutdown(at: &str) -> bool {
    at == "/" || at == "/run" || ["/proc", "/sys", "/dev"].iter().any(|p| at == *p || at.starts_with(&format!("{p}/")))
}

/// Unmounts everything but the API filesystems, newest first; what cannot be unmounted is
/// remounted read-only. Returns the mount points left writable.
pub fn unmount_all() -> Vec<String> {
    let mut left = Vec::new();
    for m in mounts().iter().rev() {
        if kept_at_shutdown(&m.mount_point) {
            continue;
        }
        match umount2(m.mount_point.as_str(), MntFlags::empty()) {
            Ok(()) => log::line(&format!("unmounted {} ({})", m.mount_point, m.fstype)),
            Err(e) => {
                let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                match mount(None::<&str>, m.mount_point.as_str(), None::<&str>, flags, None::<&str>) {
                    Ok(()) => log::line(&format!("{} busy ({e}); remounted read-only", m.mount_point)),
                    Err(e2) => {
                        log::line(&format!("{}: cannot unmount ({e}) or remount read-only ({e2})", m.mount_point));
                        left.push(m.mount_point.clone());
                    }
                }
            }
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 ro\n\
                    30 22 0:25 / /run/berth/private/state rw - ext4 /dev/vda4 rw\n\
                    31 22 0:26 / /my\\040dir rw - overlay overlay rw,lowerdir=/etc\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Mount { mount_point: "/".into(), fstype: "ext4".into(), source: "/dev/vda2".into() });
        assert_eq!(m[2].mount_point, "/my dir");
        assert_eq!(unescape("/a\\04é\\134b\\"), "/a\\04é\\b\\");
        assert!(
            kept_at_shutdown("/sys/fs/cgroup")
                && kept_at_shutdown("/run")
                && !kept_at_shutdown("/run/berth/private/state")
        );
        assert!(!kept_at_shutdown("/var") && !kept_at_shutdown("/devices"));
    }
}
