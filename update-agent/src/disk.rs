//! The boot disk as the agent sees it: which disk and slot the running system came from, the
//! GPT slot attributes (read with the backup as fallback, written backup first then primary,
//! as docs/design.md §2 asks), and the partitions' device nodes.
//!
//! The booted slot is the one whose partition holds `/` (by device number), and the kernel
//! command line's `berth.slot=` (read by berth_slot::cmdline, as init reads it) must agree: a
//! disagreement stops the agent, since a wrong idea of the booted slot would have it write over
//! the running root. Slot partitions are opened for writing only through
//! [`BootDisk::open_for_writing`], which refuses the device `/` is mounted from.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_slot::gpt::Gpt;
use berth_slot::layout::SECTOR_SIZE;
use berth_slot::{Slot, Slots};

/// The disk the running root came from.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// Whole-disk node (`/dev/vda`).
    pub node: PathBuf,
    /// The slot the running system booted: the one holding `/`, as `berth.slot=` says too.
    pub booted: Slot,
    /// Kernel name of the disk (`vda`), for partition names.
    name: String,
    /// Device number of the filesystem mounted at `/`.
    root_dev: u64,
}

/// The booted slot: the slot whose partition is the device of `/` (`root_dev`), which the
/// command line's `berth.slot=` must name too. `slot_devs` are the slot partitions' device
/// numbers (`None`: no such node).
pub fn booted_slot(cmdline: &str, root_dev: u64, slot_devs: &[(Slot, Option<u64>)]) -> anyhow::Result<Slot> {
    let named = berth_slot::cmdline::booted_slot(cmdline);
    let dev = |d: u64| format!("{}:{}", nix::sys::stat::major(d), nix::sys::stat::minor(d));
    let Some(holding) = slot_devs.iter().find(|(_, d)| *d == Some(root_dev)).map(|(s, _)| *s) else {
        anyhow::bail!(
            "/ is on device {}, which is neither slot partition ({}): not a Berth root",
            dev(root_dev),
            slot_devs
                .iter()
                .map(|(s, d)| format!("{} {}", s.label(), d.map_or("missing".into(), dev)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match named {
        Some(s) if s == holding => Ok(s),
        Some(s) => anyhow::bail!(
            "the kernel command line says berth.slot={} but / is on {} (device {}): refusing to run, since \
             a wrong booted slot would have updates written over the running root",
            s.name(),
            holding.label(),
            dev(root_dev)
        ),
        None => anyhow::bail!(
            "no berth.slot= on the kernel command line: not booted by Berth's boot manager (/ is on {})",
            holding.label()
        ),
    }
}

/// Refuses `file` (opened from `node`) when it is the device `/` is mounted from.
pub fn refuse_root_device(file: &File, node: &Path, root_dev: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = file.metadata().with_context(|| format!("stat {}", node.display()))?;
    let ft = meta.file_type();
    if (ft.is_block_device() || ft.is_char_device()) && meta.rdev() == root_dev {
        anyhow::bail!("{} is the device / is mounted from (the running root): refusing to write to it", node.display());
    }
    Ok(())
}

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);

/// Size in bytes of a block device (or a regular file, for tests).
pub fn device_size(file: &File, node: &Path) -> anyhow::Result<u64> {
    let meta = file.metadata().with_context(|| format!("stat {}", node.display()))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for writes.
    unsafe { blk_getsize64(std::os::fd::AsRawFd::as_raw_fd(file), &mut size) }
        .with_context(|| format!("BLKGETSIZE64 on {}", node.display()))?;
    Ok(size)
}

impl BootDisk {
    /// Finds the disk holding `/` and the booted slot (see [`booted_slot`]).
    pub fn find() -> anyhow::Result<BootDisk> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let st = nix::sys::stat::stat("/").context("stat /")?;
        let (major, minor) = (nix::sys::stat::major(st.st_dev), nix::sys::stat::minor(st.st_dev));
        let link = format!("/sys/dev/block/{major}:{minor}");
        let target = std::fs::read_link(&link).with_context(|| format!("reading {link}"))?;
        // …/block/vda/vda2: the parent directory is the whole disk.
        let disk = target
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .with_context(|| format!("{link} -> {}: no parent disk", target.display()))?
            .to_string();
        let mut disk =
            BootDisk { node: Path::new("/dev").join(&disk), booted: Slot::A, name: disk, root_dev: st.st_dev };
        let slot_devs: Vec<(Slot, Option<u64>)> =
            Slot::ALL.iter().map(|&s| (s, nix::sys::stat::stat(&disk.slot_node(s)).ok().map(|m| m.st_rdev))).collect();
        disk.booted = booted_slot(&cmdline, st.st_dev, &slot_devs)?;
        Ok(disk)
    }

    /// A disk image file standing in for the boot disk (tests): `root_dev` 0, which no device has.
    #[cfg(test)]
    pub fn image(node: PathBuf, booted: Slot) -> BootDisk {
        BootDisk { node, booted, name: "test".into(), root_dev: 0 }
    }

    /// Opens a partition (`node`) for reading and writing, refusing the device of `/`.
    pub fn open_for_writing(&self, node: &Path) -> anyhow::Result<File> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(node)
            .with_context(|| format!("opening {} for writing", node.display()))?;
        refuse_root_device(&file, node, self.root_dev)?;
        Ok(file)
    }

    /// The node of partition `number` (`/dev/vda3`, `/dev/nvme0n1p3`).
    pub fn partition_node(&self, number: u32) -> PathBuf {
        let sep = if self.name.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
        Path::new("/dev").join(format!("{}{sep}{number}", self.name))
    }

    /// The node of `slot`'s root partition.
    pub fn slot_node(&self, slot: Slot) -> PathBuf {
        self.partition_node(slot.partition_number())
    }

    /// The slot that is not running.
    pub fn passive(&self) -> Slot {
        self.booted.other()
    }

    /// Reads the GPT.
    pub fn read_gpt(&self) -> anyhow::Result<Gpt> {
        let file = File::open(&self.node).with_context(|| format!("opening {}", self.node.display()))?;
        read_gpt(&file, &self.node)
    }

    /// Reads both slots' attributes.
    pub fn slots(&self) -> anyhow::Result<Slots> {
        let gpt = self.read_gpt()?;
        gpt.slots().map_err(|e| anyhow::anyhow!("{}: {e}", self.node.display()))
    }

    /// Writes `slots` to both GPT copies (backup first, then primary), synced, if they differ
    /// from what is on disk. Returns whether anything was written.
    pub fn write_slots(&self, slots: Slots) -> anyhow::Result<bool> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&self.node)
            .with_context(|| format!("opening {} for writing", self.node.display()))?;
        let gpt = read_gpt(&file, &self.node)?;
        let now = gpt.slots().map_err(|e| anyhow::anyhow!("{}: {e}", self.node.display()))?;
        if now == slots {
            return Ok(false);
        }
        let next = gpt.with_slots(slots).map_err(|e| anyhow::anyhow!("{}: {e}", self.node.display()))?;
        for copy in next.encode().copies() {
            for (lba, bytes) in copy {
                file.write_all_at(&bytes, lba * SECTOR_SIZE)
                    .with_context(|| format!("writing {} at LBA {lba}", self.node.display()))?;
            }
            // Each copy reaches the disk before the other is touched: a cut leaves one whole.
            file.sync_all().with_context(|| format!("syncing {}", self.node.display()))?;
        }
        Ok(true)
    }
}

/// The slot attributes, behind the two operations the agent's policy needs: the boot disk's GPT
/// in the agent, a value in memory in the policy's unit tests.
pub trait SlotStore {
    /// Both slots' attributes.
    fn slots(&self) -> anyhow::Result<Slots>;
    /// Writes `slots` if they differ from what is stored; whether anything was written.
    fn write_slots(&self, slots: Slots) -> anyhow::Result<bool>;
}

impl SlotStore for BootDisk {
    fn slots(&self) -> anyhow::Result<Slots> {
        BootDisk::slots(self)
    }

    fn write_slots(&self, slots: Slots) -> anyhow::Result<bool> {
        BootDisk::write_slots(self, slots)
    }
}

/// Slot attributes in memory (unit tests of the agent's policy): no disk, no sgdisk.
#[cfg(test)]
#[derive(Debug)]
pub struct MemorySlots(pub std::cell::Cell<Slots>);

#[cfg(test)]
impl SlotStore for MemorySlots {
    fn slots(&self) -> anyhow::Result<Slots> {
        Ok(self.0.get())
    }

    fn write_slots(&self, slots: Slots) -> anyhow::Result<bool> {
        Ok(self.0.replace(slots) != slots)
    }
}

/// The GPT (the backup copy when the primary is unusable), through berth-slot's reader.
fn read_gpt(file: &File, node: &Path) -> anyhow::Result<Gpt> {
    let lbas = device_size(file, node)? / SECTOR_SIZE;
    let (gpt, _) = berth_slot::device::read(file, node, lbas).map_err(|e| anyhow::anyhow!(e))?;
    Ok(gpt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The booted slot is the one holding `/`; a command line that names the other slot (an
    /// index whose cmdline carries its own `berth.slot=`, which bootmgr's comes after) or none
    /// stops the agent instead of having it write the running root.
    #[test]
    fn m2_the_booted_slot_is_the_device_of_root_and_the_cmdline_must_agree() {
        let devs = [(Slot::A, Some(nix::sys::stat::makedev(253, 2))), (Slot::B, Some(nix::sys::stat::makedev(253, 3)))];
        let root_b = nix::sys::stat::makedev(253, 3);
        // bootmgr appends its own berth.slot= last: B.
        assert_eq!(booted_slot("berth.slot=a root=PARTUUID=x berth.slot=b", root_b, &devs).unwrap(), Slot::B);
        let e = booted_slot("root=PARTUUID=x berth.slot=a", root_b, &devs).unwrap_err().to_string();
        assert!(e.contains("says berth.slot=a but / is on ROOT-B (device 253:3)"), "{e}");
        let e = booted_slot("berth.slot=b -- berth.slot=b", nix::sys::stat::makedev(253, 4), &devs).unwrap_err();
        assert!(e.to_string().contains("neither slot partition"), "{e}");
        let e = booted_slot("quiet -- berth.slot=b", root_b, &devs).unwrap_err();
        assert!(e.to_string().contains("no berth.slot="), "{e}");
    }

    /// The device `/` is mounted from is refused by device number, whatever its name (here
    /// /dev/null and a link to it stand in for the root partition).
    #[test]
    fn m2_the_device_of_root_is_never_opened_for_writing() {
        let null = nix::sys::stat::stat("/dev/null").unwrap().st_rdev;
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("vda3");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let mut disk = BootDisk::image(dir.path().join("disk.img"), Slot::B);
        disk.root_dev = null;
        for node in [Path::new("/dev/null"), &link] {
            let e = disk.open_for_writing(node).unwrap_err().to_string();
            assert!(e.contains("is the device / is mounted from"), "{e}");
        }
        let other = dir.path().join("slot");
        std::fs::write(&other, b"").unwrap();
        disk.open_for_writing(&other).unwrap();
    }
}
