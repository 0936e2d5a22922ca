//! `berth/<slot>/` on the EFI system partition: the kernel, initramfs and command line bootmgr
//! starts for a slot, written in place on the unmounted FAT32 partition. Only the passive
//! slot's directory is ever touched, and only while that slot's attributes make it unbootable.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, anyhow};
use berth_release::repo::{INITRD_FILE, VMLINUZ_FILE};
use berth_slot::Slot;

/// The command line's file name in `berth/<slot>/`.
pub const CMDLINE_FILE: &str = "cmdline";

/// What one slot's directory holds.
pub struct KernelFiles<'a> {
    /// The kernel.
    pub vmlinuz: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
    /// The command line (bootmgr appends root= and berth.slot=).
    pub cmdline: &'a str,
}

fn open_fs(node: &Path) -> anyhow::Result<fatfs::FileSystem<File>> {
    let dev =
        File::options().read(true).write(true).open(node).with_context(|| format!("opening {}", node.display()))?;
    fatfs::FileSystem::new(dev, fatfs::FsOptions::new().update_accessed_date(false))
        .with_context(|| format!("{}: not a FAT filesystem", node.display()))
}

/// Writes `files` into `berth/<slot>/` of the ESP at `node`: each to a temporary name, then
/// renamed over the old one, then the volume flushed and synced.
pub fn write_slot(node: &Path, slot: Slot, files: &KernelFiles) -> anyhow::Result<()> {
    let fs = open_fs(node)?;
    {
        let root = fs.root_dir();
        let berth = match root.open_dir("berth") {
            Ok(d) => d,
            Err(_) => root.create_dir("berth").with_context(|| format!("{}: creating berth/", node.display()))?,
        };
        let name = slot.name();
        let dir = match berth.open_dir(name) {
            Ok(d) => d,
            Err(_) => berth.create_dir(name).with_context(|| format!("{}: creating berth/{name}/", node.display()))?,
        };
        for (file, bytes) in
            [(VMLINUZ_FILE, files.vmlinuz), (INITRD_FILE, files.initrd), (CMDLINE_FILE, files.cmdline.as_bytes())]
        {
            let at = format!("{}:{}/{file}", node.display(), slot.esp_dir());
            let tmp = format!("{file}.new");
            let _ = dir.remove(&tmp);
            let mut f = dir.create_file(&tmp).with_context(|| format!("creating {at}.new"))?;
            f.truncate().with_context(|| format!("truncating {at}.new"))?;
            f.write_all(bytes).with_context(|| format!("writing {at}.new"))?;
            f.flush().with_context(|| format!("flushing {at}.new"))?;
            drop(f);
            let _ = dir.remove(file);
            dir.rename(&tmp, &dir, file).with_context(|| format!("renaming {at}.new to {file}"))?;
        }
    }
    fs.unmount().map_err(|e| anyhow!("{}: unmounting the FAT volume: {e}", node.display()))?;
    File::open(node).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", node.display()))?;
    Ok(())
}

/// Reads `berth/<slot>/<file>` from the ESP at `node`.
#[cfg(test)]
pub fn read_file(node: &Path, slot: Slot, file: &str) -> anyhow::Result<Vec<u8>> {
    let fs = open_fs(node)?;
    let path = format!("{}/{file}", slot.esp_dir());
    let mut f = fs.root_dir().open_file(&path).with_context(|| format!("{}: opening {path}", node.display()))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut out).with_context(|| format!("{}: reading {path}", node.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written into a FAT32 volume made by fatfs, read back, and judged by fsck.fat.
    #[test]
    fn kernel_files_replace_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        // The volume and berth/b/ made by dosfstools and mtools, as an image has them.
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (dosfstools, mtools)"));
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(std::process::Command::new("mkfs.fat").args(["-F", "32", "-C"]).arg(&img).arg("65536"));
        run(std::process::Command::new("mmd").arg("-i").arg(&img).args(["::berth", "::berth/b"]));
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        write_slot(&img, Slot::B, &KernelFiles { vmlinuz: &big, initrd: b"old initrd", cmdline: "console=ttyS0" })
            .unwrap();
        write_slot(&img, Slot::B, &KernelFiles { vmlinuz: b"new kernel", initrd: &big, cmdline: "quiet" }).unwrap();
        assert_eq!(read_file(&img, Slot::B, VMLINUZ_FILE).unwrap(), b"new kernel");
        assert_eq!(read_file(&img, Slot::B, INITRD_FILE).unwrap(), big);
        assert_eq!(read_file(&img, Slot::B, CMDLINE_FILE).unwrap(), b"quiet");
        assert!(read_file(&img, Slot::A, CMDLINE_FILE).is_err());
        let fsck = std::process::Command::new("fsck.fat").arg("-n").arg(&img).output();
        let out = fsck.expect("fsck.fat (dosfstools)");
        assert!(
            out.status.success(),
            "fsck.fat -n: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
