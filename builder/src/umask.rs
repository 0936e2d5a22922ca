//! The mode of the files berth writes for the user (images, manifests, `berth fs` outputs):
//! `0666 & !umask`, what any program creating a file gets, rather than the 0600 of the
//! temporary files they are written as; another user or a CI step can then boot or publish them.

use std::fs::{File, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The process's umask, read from `/proc/self/status` (setting it to read it back would race
/// with other threads creating files); 022 where the kernel does not say.
pub fn current() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(line.trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

/// `0666 & !umask`.
pub fn file_mode() -> u32 {
    0o666 & !current()
}

/// Gives the open file [`file_mode`].
pub fn apply(file: &File) -> std::io::Result<()> {
    file.set_permissions(Permissions::from_mode(file_mode()))
}

/// Gives the file at `path` [`file_mode`], refusing to follow a symlink there.
pub fn apply_at(path: &Path) -> std::io::Result<()> {
    let file = File::options().read(true).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)?;
    apply(&file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_umask_is_read_back() {
        let m = super::current();
        assert!(m <= 0o777, "{m:o}");
        assert_eq!(super::file_mode() & 0o111, 0);
    }
}
