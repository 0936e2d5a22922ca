//! The footer of a fixed VHD (Microsoft's "Virtual Hard Disk Image Format Specification"),
//! Azure's disk format: a fixed VHD is the raw disk followed by this one 512-byte footer.
//!
//! Every field is fixed or derived from the disk, so the same disk gives the same footer: the
//! timestamp is the build's epoch (seconds since 2000-01-01 00:00:00 UTC), the unique id is
//! derived from the disk's content. All integers are big-endian.
//!
//! The creator application is `qem2`, the marker QEMU writes (`qemu-img convert -o
//! force_size`, the conversion Flatcar and Fedora CoreOS ship to Azure) to say that the
//! footer's size is the disk's size. Readers trust either the footer's size (Hyper-V, Azure)
//! or the CHS geometry, which rounds the size down (Virtual PC; QEMU's `vpc` driver for every
//! creator but `qem2`, `win `, `d2v `, `CTXS` and `tap`): with any other creator QEMU would see
//! a disk shorter than its backup GPT. The geometry itself is the specification's algorithm
//! (what Hyper-V writes), so readers that want CHS get the spec's answer.

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

/// The specification's CHS geometry of a disk of `size` bytes: (cylinders, heads, sectors per
/// track), covering at most 65535 × 16 × 255 sectors and rounding down.
pub fn geometry(size: u64) -> (u16, u8, u8) {
    let total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let cth = total / 17;
        let heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            let cth = total / 31;
            if cth >= 16 * 1024 { (63, 16, total / 63) } else { (31, 16, cth) }
        } else {
            (17, heads, cth)
        }
    };
    // Every value is in range by construction: heads ≤ 16, cylinders ≤ 65535.
    ((cth / heads) as u16, heads as u8, spt as u8)
}

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
        f[28..32].copy_from_slice(b"qem2"); // creator application: see the module docs
        f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes()); // creator version, as qem2's
        f[36..40].copy_from_slice(b"Wi2k"); // creator host OS (the spec knows Wi2k and Mac)
        f[40..48].copy_from_slice(&self.size.to_be_bytes()); // original size
        f[48..56].copy_from_slice(&self.size.to_be_bytes()); // current size
        let (c, h, s) = geometry(self.size);
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
    fn geometry_follows_the_specification() {
        // 100 MiB: 17 sectors, 12 heads (qemu-img grows this disk to 1004 cylinders to cover it;
        // the spec rounds down to 1003).
        assert_eq!(geometry(100 << 20), (1003, 12, 17));
        // Small disks keep at least 4 heads.
        assert_eq!(geometry(1 << 20), (30, 4, 17));
        // 1 GiB: past 17 × 16 × 1024 sectors, 63 per track.
        assert_eq!(geometry(1 << 30), (2080, 16, 63));
        // 100 GiB: past 65535 × 16 × 63 sectors, 255 per track.
        assert_eq!(geometry(100 << 30), (51400, 16, 255));
        // Past the geometry's reach: its maximum.
        assert_eq!(geometry(MAX_SIZE), (65535, 16, 255));
        for size in [1u64 << 20, 82 << 20, 100 << 20, 1 << 30, 31 << 30, 127 << 30, 500 << 30] {
            let (c, h, s) = geometry(size);
            let covered = u64::from(c) * u64::from(h) * u64::from(s) * 512;
            assert!(covered <= size, "{size}: {c}/{h}/{s}");
            assert!(h <= 16 && (s == 17 || s == 31 || s == 63 || s == 255), "{size}: {c}/{h}/{s}");
        }
    }

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
