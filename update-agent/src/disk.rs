//! The boot disk as the agent sees it: which disk and slot the running system came from, the
//! GPT slot attributes (read with the backup as fallback, written backup first then primary,
//! as DESIGN.md §2 asks), and the partitions' device nodes.

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
    /// The slot the running system booted (`berth.slot=` on the kernel command line).
    pub booted: Slot,
    /// Kernel name of the disk (`vda`), for partition names.
    name: String,
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
    /// Finds the disk holding `/` and the booted slot.
    pub fn find() -> anyhow::Result<BootDisk> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        let booted = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("berth.slot="))
            .and_then(Slot::parse)
            .context("no berth.slot= on the kernel command line: not booted by Berth's boot manager")?;
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
        Ok(BootDisk { node: Path::new("/dev").join(&disk), booted, name: disk })
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

/// The GPT (the backup copy when the primary is unusable), through berth-slot's reader.
fn read_gpt(file: &File, node: &Path) -> anyhow::Result<Gpt> {
    let lbas = device_size(file, node)? / SECTOR_SIZE;
    let (gpt, _) = berth_slot::device::read(file, node, lbas).map_err(|e| anyhow::anyhow!(e))?;
    Ok(gpt)
}
