//! Finding the root partition by its GPT unique GUID (`root=PARTUUID=`): every whole disk in
//! `/sys/block` has its primary GPT read through `/dev/<disk>` and parsed with `berth_slot::gpt`;
//! the matching entry's number is mapped to the sysfs partition whose `partition` file holds it.

use std::fs::File;
use std::path::{Path, PathBuf};

use berth_slot::gpt::Guid;

/// A block device seen while scanning.
#[derive(Debug, Clone)]
pub struct Disk {
    pub name: String,
    pub bytes: u64,
    /// Why its GPT could not be read, if it could not.
    pub problem: Option<String>,
}

/// Scans once: the device node of the partition with unique GUID `want`, and the disks seen.
pub fn find(want: &Guid) -> (Option<PathBuf>, Vec<Disk>) {
    let mut disks = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else { return (None, disks) };
    let mut names: Vec<String> =
        dir.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let sys = Path::new("/sys/block").join(&name);
        let sectors = read_u64(&sys.join("size")).unwrap_or(0);
        let mut disk = Disk { name: name.clone(), bytes: sectors * 512, problem: None };
        if sectors == 0 {
            disk.problem = Some("empty".into());
            disks.push(disk);
            continue;
        }
        match partition_number(&name, &sys, want) {
            Ok(Some(n)) => match partition_node(&sys, n) {
                Some(node) => {
                    disks.push(disk);
                    return (Some(node), disks);
                }
                None => disk.problem = Some(format!("partition {n} matches but has no device yet")),
            },
            Ok(None) => {}
            Err(e) => disk.problem = Some(e),
        }
        disks.push(disk);
    }
    (None, disks)
}

/// The number of the GPT entry of `/dev/<name>` with unique GUID `want` (from the backup GPT
/// when the primary is unusable).
fn partition_number(name: &str, sys: &Path, want: &Guid) -> Result<Option<u32>, String> {
    let lbs = read_u64(&sys.join("queue/logical_block_size")).filter(|&s| s >= 512).unwrap_or(512);
    if lbs != 512 {
        return Err(format!("{lbs}-byte sectors"));
    }
    let sectors = read_u64(&sys.join("size")).unwrap_or(0);
    let node = Path::new("/dev").join(name);
    let file = File::open(&node).map_err(|e| format!("{}: {e}", node.display()))?;
    let (gpt, _) = berth_slot::device::read(&file, &node, sectors)?;
    Ok(gpt.partitions().find(|e| e.unique_guid == *want).map(|e| e.number))
}

/// `/dev/<part>` for the sysfs child of `sys` whose `partition` file holds `n`.
fn partition_node(sys: &Path, n: u32) -> Option<PathBuf> {
    for entry in std::fs::read_dir(sys).ok()?.filter_map(|e| e.ok()) {
        if read_u64(&entry.path().join("partition")) == Some(u64::from(n)) {
            let node = Path::new("/dev").join(entry.file_name());
            if node.exists() {
                return Some(node);
            }
        }
    }
    None
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
