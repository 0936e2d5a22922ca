//! Finding the root partition by its GPT unique GUID (`root=PARTUUID=`): every whole disk in
//! `/sys/block` has its primary GPT read through `/dev/<disk>` and parsed with `berth_slot::gpt`;
//! the matching entry's number is mapped to the sysfs partition whose `partition` file holds it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use berth_slot::gpt::{Gpt, Guid, Header};

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

/// The number of the GPT entry of `/dev/<name>` with unique GUID `want`.
fn partition_number(name: &str, sys: &Path, want: &Guid) -> Result<Option<u32>, String> {
    let lbs = read_u64(&sys.join("queue/logical_block_size")).filter(|&s| s >= 512).unwrap_or(512);
    let node = Path::new("/dev").join(name);
    let file = File::open(&node).map_err(|e| format!("{}: {e}", node.display()))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| format!("reading {}: {e}", node.display()))?;
        Ok(buf)
    };
    let sector = read(lbs, lbs as usize)?;
    let header = Header::parse(&sector).map_err(|e| format!("no GPT: {e}"))?;
    let bytes = header.entries_bytes();
    if bytes > 4 << 20 {
        return Err(format!("GPT entry array of {bytes} bytes"));
    }
    let entries = read(header.entries_lba.saturating_mul(lbs), bytes)?;
    let gpt = Gpt::parse(&sector, &entries).map_err(|e| format!("bad GPT: {e}"))?;
    Ok((1..=header.entry_count).find(|&n| gpt.partition(n).is_some_and(|e| e.unique_guid == *want)))
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
