//! The footer of a fixed VHD (Microsoft's "Virtual Hard Disk Image Format Specification"),
//! Azure's disk format: a fixed VHD is the raw disk followed by this one 512-byte footer.
//!
//! Every field is fixed or derived from the disk, so the same disk gives the same footer: the
//! timestamp is the build's epoch (seconds since 2000-01-01 00:00:00 UTC), the unique id is
//! derived from the disk's content. All integers are big-endian.
//!
//! Readers find the disk's size either in the footer (Hyper-V, Azure) or in the CHS geometry,
//! which rounds it down (Virtual PC; QEMU's `vpc` driver for most creators). The geometry is
//! therefore the maximum, 65535/16/255, which readers take to mean "no geometry, use the
//! footer's size" (QEMU's `vpc` driver does; it is what `qemu-img convert -o force_size`, the
//! conversion Flatcar and Fedora CoreOS ship to Azure, writes): otherwise QEMU would see a disk
//! shorter than its backup GPT. The creator is Berth's own, `brth`.

/// Size of the footer, which is also the sector size of the format.
pub const FOOTER_LEN: usize = 512;
/// The largest disk the format describes: 2040 GiB (Hyper-V's and Azure's limit for VHD).
pub const MAX_SIZE: u64 = 2040 << 30;
/// The VHD epoch, 2000-01-01 00:00:00 UTC, in Unix seconds.
const VHD_EPOCH: i64 = 946_684_800;

/// The fields that vary between disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The disk's size in bytes (both the original and the current size).
    pub size: u64,
    /// Unix seconds; stored as seconds since 2000 (clamped to the field's range).
    pub timestamp: i64,
    /// The disk's unique id.
    pub unique_id: [u8; 16],
}

/// The CHS geometry every footer carries: the format's maximum (cylinders, heads, sectors per
/// track), "no geometry" to readers, which then use the footer's exact size.
pub const NO_GEOMETRY: (u16, u8, u8) = (65535, 16, 255);

impl Footer {
    /// The 512 footer bytes.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        f[0..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: the "reserved" bit, always set
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // file format version 1.0
        f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed disk)
        let stamp = (self.timestamp - VHD_EPOCH).clamp(0, i64::from(u32::MAX)) as u32;
        f[24..28].copy_from_slice(&stamp.to_be_bytes());
        f[28..32].copy_from_slice(b"brth"); // creator application
        f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version 1.0
        f[36..40].copy_from_slice(b"Wi2k"); // creator host OS (the spec knows Wi2k and Mac)
        f[40..48].copy_from_slice(&self.size.to_be_bytes()); // original size
        f[48..56].copy_from_slice(&self.size.to_be_bytes()); // current size
        let (c, h, s) = NO_GEOMETRY;
        f[56..58].copy_from_slice(&c.to_be_bytes());
        f[58] = h;
        f[59] = s;
        f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
        f[68..84].copy_from_slice(&self.unique_id);
        // f[84]: saved state 0; the rest reserved zeros.
        let checksum = checksum(&f);
        f[64..68].copy_from_slice(&checksum.to_be_bytes());
        f
    }
}

/// The one's complement of the sum of the footer's bytes, its checksum field taken as zeros.
pub fn checksum(footer: &[u8; FOOTER_LEN]) -> u32 {
    let sum = footer.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| u32::from(b)).sum::<u32>();
    !sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields_and_checksum() {
        let f = Footer { size: 82 << 20, timestamp: 1_700_000_000, unique_id: [7; 16] }.encode();
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(f[8..12], [0, 0, 0, 2]);
        assert_eq!(f[12..16], [0, 1, 0, 0]);
        assert_eq!(f[16..24], [0xff; 8]);
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 1_700_000_000 - 946_684_800);
        assert_eq!(u64::from_be_bytes(f[40..48].try_into().unwrap()), 82 << 20);
        assert_eq!(f[40..48], f[48..56]);
        assert_eq!(&f[28..32], b"brth");
        assert_eq!(f[56..60], [0xff, 0xff, 16, 255], "no geometry: readers use the footer's size");
        assert_eq!(f[60..64], [0, 0, 0, 2]);
        assert_eq!(f[68..84], [7; 16]);
        assert!(f[84..].iter().all(|&b| b == 0));
        // The stored checksum makes the sum of all bytes, checksum bytes included as stored,
        // come back to the complement: check it the way readers do.
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        assert_eq!(stored, !zeroed.iter().map(|&b| u32::from(b)).sum::<u32>());
        // Before 2000 the timestamp is 0, not a wrapped number.
        let old = Footer { size: 1 << 20, timestamp: 0, unique_id: [0; 16] }.encode();
        assert_eq!(old[24..28], [0; 4]);
    }
}
