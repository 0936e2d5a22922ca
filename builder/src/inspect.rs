//! `berth inspect`: what a Berth disk holds, read back from its partition table.
//!
//! The GPT is read as the running system reads it (`berth_slot::device`): the primary copy, or
//! the backup when the primary is unusable, so that inspect agrees with bootmgr, berth-init and
//! berth-update about a disk; what is wrong with either copy is reported, not fatal.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use berth_slot::gpt::Header;
use berth_slot::layout::{ESP_TYPE_GUID, ROOT_TYPE_GUID, SECTOR_SIZE, STATE_TYPE_GUID};
use berth_slot::{Slot, SlotAttrs, Slots};
use serde::Serialize;

use crate::size::ByteSize;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither GPT copy is usable; `short` says when the file is shorter than its GPT says.
    #[error("{why}{}", short.as_ref().map(|s| format!("; {s}")).unwrap_or_default())]
    NoGpt { why: String, short: Option<String> },
}

/// One partition as found on the disk.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    /// `esp`, `root`, `state` or the raw type GUID.
    pub kind: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub attributes: u64,
    /// For ROOT-A and ROOT-B: the boot state in the attribute bits.
    pub slot: Option<SlotInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    pub path: String,
    pub size: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    /// The slot bootmgr would start next, and why; `None` if the disk has no bootable slot.
    pub next_boot: Option<String>,
    pub next_boot_problem: Option<String>,
    /// What is wrong with the GPT although it could be read: a copy unusable, the file shorter
    /// than the GPT says.
    pub gpt_problems: Vec<String>,
}

/// "file is N bytes, the GPT says M" when the primary header (however damaged the rest)
/// places the backup past the end of the file.
fn short_file(file: &File, size: u64) -> Option<String> {
    let mut sector = vec![0u8; SECTOR_SIZE as usize];
    file.read_exact_at(&mut sector, SECTOR_SIZE).ok()?;
    let h = Header::parse(&sector).ok()?;
    let needed = h.alternate_lba.checked_add(1)?.checked_mul(SECTOR_SIZE)?;
    (needed > size).then(|| format!("file is {size} bytes, the GPT says {needed} (truncated?)"))
}

/// Reads the GPT of `path` (a file or a block device): the primary, else the backup.
pub fn inspect(path: &Path) -> Result<DiskInfo, InspectError> {
    let open = |source| InspectError::Open { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(open)?;
    if file.metadata().map_err(open)?.is_dir() {
        return Err(open(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
    }
    // A block device's size is where its end is, not its metadata's length.
    let size = file.seek(SeekFrom::End(0)).map_err(open)?;
    let short = short_file(&file, size);
    let (gpt, damaged) = berth_slot::device::read(&file, path, size / SECTOR_SIZE)
        .map_err(|why| InspectError::NoGpt { why, short: short.clone() })?;
    let mut gpt_problems: Vec<String> = short.into_iter().collect();
    if let Some(d) = damaged {
        // The reader names the unusable copy; the other one is what is shown.
        let used = if d.starts_with("primary") { "backup" } else { "primary" };
        gpt_problems.push(format!("{d}, {used} used"));
    }
    let mut raw = [0u64; 2];
    let mut partitions = Vec::new();
    for p in gpt.partitions() {
        let type_guid = p.type_guid.to_string().to_uppercase();
        let kind = match type_guid.as_str() {
            ESP_TYPE_GUID => "esp",
            ROOT_TYPE_GUID => "root",
            STATE_TYPE_GUID => "state",
            other => other,
        }
        .to_string();
        let slot = Slot::ALL.into_iter().find(|s| s.partition_number() == p.number && kind == "root");
        if let Some(s) = slot {
            raw[s as usize] = p.attributes;
        }
        partitions.push(PartitionInfo {
            number: p.number,
            label: p.name.clone(),
            kind,
            type_guid,
            guid: p.unique_guid.to_string().to_uppercase(),
            offset: p.first_lba.saturating_mul(SECTOR_SIZE),
            size: p.last_lba.saturating_add(1).saturating_sub(p.first_lba).saturating_mul(SECTOR_SIZE),
            attributes: p.attributes,
            slot: slot.map(|_| {
                let a = SlotAttrs::from_raw(p.attributes);
                SlotInfo { priority: a.priority, tries: a.tries, successful: a.successful }
            }),
        });
    }
    let (next_boot, next_boot_problem) = match Slots::from_raw(raw[0], raw[1]).select() {
        Ok(d) => (Some(format!("{} ({:?})", d.slot.label(), d.kind)), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(DiskInfo {
        path: path.display().to_string(),
        size,
        disk_guid: gpt.header().disk_guid.to_string().to_uppercase(),
        partitions,
        next_boot,
        next_boot_problem,
        gpt_problems,
    })
}

impl std::fmt::Display for DiskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {}, GPT disk {}", self.path, ByteSize(self.size), self.disk_guid)?;
        writeln!(
            f,
            "{:>2}  {:<11} {:<6} {:>10} {:>10}  {:<36}  boot state",
            "#", "label", "kind", "start", "size", "partition GUID"
        )?;
        for p in &self.partitions {
            let state = match &p.slot {
                Some(s) => SlotAttrs { priority: s.priority, tries: s.tries, successful: s.successful }.to_string(),
                None => String::new(),
            };
            writeln!(
                f,
                "{:>2}  {:<11} {:<6} {:>10} {:>10}  {:<36}  {}",
                p.number,
                p.label,
                p.kind,
                ByteSize(p.offset).to_string(),
                ByteSize(p.size).to_string(),
                p.guid,
                state
            )?;
        }
        for p in &self.gpt_problems {
            writeln!(f, "warning: {p}")?;
        }
        match (&self.next_boot, &self.next_boot_problem) {
            (Some(n), _) => write!(f, "next boot: {n}"),
            (None, Some(p)) => write!(f, "next boot: none: {p}"),
            (None, None) => write!(f, "next boot: none"),
        }
    }
}
