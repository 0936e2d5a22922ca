//! The partition layout of a Berth disk (docs/design.md §2).

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

// ---------------------------------------------------------------------------------------------
// The "unformatted STATE" marker

/// Byte offset in STATE of the "unformatted STATE" marker: its first sector, which ext4 leaves
/// unused (the superblock starts at 1024).
pub const STATE_MARKER_OFFSET: u64 = 0;
/// Length of the marker: one sector.
pub const STATE_MARKER_LEN: usize = SECTOR_SIZE as usize;
/// The marker's first bytes.
const STATE_MARKER_MAGIC: &[u8; 32] = b"Berth STATE: never formatted\n\0\0\0";

/// What the marker in STATE's first sector says. It is the only thing that lets berth-init
/// format STATE (besides a legacy STATE of zeros): the builder writes [`StateMarker::Fresh`]
/// into every image, berth-init replaces it with [`StateMarker::Formatting`] before it starts
/// writing a filesystem, and the filesystem's own first sector replaces that once it is whole.
/// Damage cannot forge it: it holds a magic string and the GUID of the disk it belongs to.
///
/// Layout: magic (32 bytes), disk GUID as the GPT stores it (16 bytes), phase (1 byte: 1 fresh,
/// 2 formatting), zeros to the end of the sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMarker {
    /// Written by the builder: STATE never held anything; the rest of its first MiB is zeros.
    Fresh,
    /// Written by berth-init just before formatting: a format started and may not have ended.
    Formatting,
}

impl StateMarker {
    /// The marker sector for the disk whose GPT disk GUID is `disk_guid`.
    pub fn encode(self, disk_guid: &crate::gpt::Guid) -> [u8; STATE_MARKER_LEN] {
        let mut s = [0u8; STATE_MARKER_LEN];
        s[..32].copy_from_slice(STATE_MARKER_MAGIC);
        s[32..48].copy_from_slice(&disk_guid.0);
        s[48] = match self {
            StateMarker::Fresh => 1,
            StateMarker::Formatting => 2,
        };
        s
    }

    /// The marker in `sector` (STATE's first sector), if it is one for the disk `disk_guid`
    /// exactly as [`StateMarker::encode`] writes it.
    pub fn parse(sector: &[u8], disk_guid: &crate::gpt::Guid) -> Option<StateMarker> {
        let s = sector.get(..STATE_MARKER_LEN)?;
        if &s[..32] != STATE_MARKER_MAGIC || s[32..48] != disk_guid.0 || s[49..].iter().any(|&b| b != 0) {
            return None;
        }
        match s[48] {
            1 => Some(StateMarker::Fresh),
            2 => Some(StateMarker::Formatting),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::Guid;

    #[test]
    fn state_marker_round_trips_and_names_its_disk() {
        let disk = Guid::parse("01234567-89AB-CDEF-0123-456789ABCDEF").unwrap();
        let other = Guid::parse("01234567-89AB-CDEF-0123-456789ABCDEE").unwrap();
        for m in [StateMarker::Fresh, StateMarker::Formatting] {
            let s = m.encode(&disk);
            assert_eq!(StateMarker::parse(&s, &disk), Some(m));
            assert_eq!(StateMarker::parse(&s, &other), None, "another disk's marker");
            for i in [0, 31, 40, 48, 49, 511] {
                let mut bad = s;
                bad[i] ^= 0x40;
                assert_eq!(StateMarker::parse(&bad, &disk), None, "byte {i} changed");
            }
            assert_eq!(StateMarker::parse(&s[..511], &disk), None);
        }
        assert_eq!(StateMarker::parse(&[0u8; 512], &disk), None);
        assert_eq!(&StateMarker::Fresh.encode(&disk)[..29], b"Berth STATE: never formatted\n");
    }
}
