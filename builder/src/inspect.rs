//! `berth inspect`: what a Berth disk holds, read back from its partition table.

use std::path::Path;

use berth_slot::layout::{ESP_TYPE_GUID, ROOT_TYPE_GUID, STATE_TYPE_GUID};
use berth_slot::{Slot, SlotAttrs, Slots};
use serde::Serialize;

use crate::disk::DiskError;
use crate::units::ByteSize;

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
}

/// Reads the GPT of `path` (both headers must be valid).
pub fn inspect(path: &Path) -> Result<DiskInfo, DiskError> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(path)
        .map_err(|source| DiskError::ReadGpt { path: path.to_path_buf(), source })?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut raw = [0u64; 2];
    let mut partitions = Vec::new();
    for (&number, p) in disk.partitions() {
        let type_guid = p.part_type_guid.guid.to_string().to_uppercase();
        let kind = match type_guid.as_str() {
            ESP_TYPE_GUID => "esp",
            ROOT_TYPE_GUID => "root",
            STATE_TYPE_GUID => "state",
            other => other,
        }
        .to_string();
        let slot = Slot::ALL.into_iter().find(|s| s.partition_number() == number && kind == "root");
        if let Some(s) = slot {
            raw[s as usize] = p.flags;
        }
        partitions.push(PartitionInfo {
            number,
            label: p.name.clone(),
            kind,
            type_guid,
            guid: p.part_guid.to_string().to_uppercase(),
            offset: p.first_lba * 512,
            size: (p.last_lba + 1 - p.first_lba) * 512,
            attributes: p.flags,
            slot: slot.map(|_| {
                let a = SlotAttrs::from_raw(p.flags);
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
        disk_guid: disk.guid().to_string().to_uppercase(),
        partitions,
        next_boot,
        next_boot_problem,
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
        match (&self.next_boot, &self.next_boot_problem) {
            (Some(n), _) => write!(f, "next boot: {n}"),
            (None, Some(p)) => write!(f, "next boot: none: {p}"),
            (None, None) => write!(f, "next boot: none"),
        }
    }
}
