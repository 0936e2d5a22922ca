//! The partition layout of a Berth disk (DESIGN.md §2).

/// GPT partition type GUID of the EFI system partition.
pub const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT partition type GUID of a root slot (the systemd "Linux root (x86-64)" type).
pub const ROOT_TYPE_GUID: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT partition type GUID of STATE (Linux filesystem data).
pub const STATE_TYPE_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// GPT partition label of the EFI system partition.
pub const ESP_LABEL: &str = "EFI-SYSTEM";
/// GPT partition label of the writable STATE partition.
pub const STATE_LABEL: &str = "STATE";

/// 1-based GPT partition number of the EFI system partition.
pub const ESP_PARTITION: u32 = 1;
/// 1-based GPT partition number of STATE.
pub const STATE_PARTITION: u32 = 4;

const MIB: u64 = 1024 * 1024;
/// Default size of the EFI system partition in bytes; images may override it.
pub const DEFAULT_ESP_SIZE: u64 = 256 * MIB;
/// Default size of each root slot in bytes; images may override it.
pub const DEFAULT_ROOT_SIZE: u64 = 1024 * MIB;
/// Every partition starts and ends on this boundary.
pub const PARTITION_ALIGNMENT: u64 = MIB;
/// Logical sector size of a Berth disk.
pub const SECTOR_SIZE: u64 = 512;

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// `ROOT-A`, partition 2: the slot a fresh image boots.
    A,
    /// `ROOT-B`, partition 3: empty in a fresh image.
    B,
}

impl Slot {
    /// Both slots, A first (the order ties are broken in).
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The partition label: `ROOT-A` or `ROOT-B`.
    pub const fn label(self) -> &'static str {
        match self {
            Slot::A => "ROOT-A",
            Slot::B => "ROOT-B",
        }
    }

    /// 1-based GPT partition number.
    pub const fn partition_number(self) -> u32 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }

    /// Lower-case name used on the kernel command line (`berth.slot=`) and on the ESP (`berth/<slot>/`).
    pub const fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot of the pair.
    pub const fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Parses `a`/`b` (any case) or a partition label.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" | "ROOT-A" => Some(Slot::A),
            "b" | "B" | "ROOT-B" => Some(Slot::B),
            _ => None,
        }
    }

    /// Directory on the ESP holding this slot's `vmlinuz`, `initrd.img` and `cmdline`.
    pub const fn esp_dir(self) -> &'static str {
        match self {
            Slot::A => "berth/a",
            Slot::B => "berth/b",
        }
    }
}
