//! The input's check: Azure takes a *fixed* VHD only, the raw disk followed by one 512-byte
//! footer, its size a whole number of MiB (Azure refuses others when the image is created,
//! long after the upload). Checked before anything is sent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Error;

/// The footer's size, and a page blob's page.
pub const FOOTER_LEN: u64 = 512;

/// What the upload needs of a fixed VHD's footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// The disk's size (the file's without the footer).
    pub disk_size: u64,
    /// The disk's unique id, as a UUID.
    pub unique_id: String,
    /// The footer's 512 bytes.
    pub bytes: Vec<u8>,
}

/// Reads and checks the footer of `path`: cookie `conectix`, disk type 2 (fixed), current size =
/// file size − 512, a whole number of MiB, and the checksum.
pub fn check(path: &Path) -> Result<Footer, Error> {
    let bad = |why: String| Error::Invalid(format!("{}: not a fixed VHD for Azure: {why}", path.display()));
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < FOOTER_LEN + (1 << 20) {
        return Err(bad(format!("{len} bytes, less than 1 MiB and a 512-byte footer")));
    }
    let mut f = vec![0; FOOTER_LEN as usize];
    file.read_exact_at(&mut f, len - FOOTER_LEN).map_err(|e| Error::io(path, e))?;
    if &f[0..8] != b"conectix" {
        return Err(bad("its last 512 bytes are not a VHD footer (no \"conectix\" cookie)".to_string()));
    }
    let be32 = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let disk_type = be32(60);
    if disk_type != 2 {
        let kind = match disk_type {
            3 => "dynamic",
            4 => "differencing",
            _ => "unknown",
        };
        return Err(bad(format!(
            "disk type {disk_type} ({kind}), Azure needs 2 (fixed): qemu-img convert -O vpc -o subformat=fixed,force_size"
        )));
    }
    let sum: u32 = f.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| u32::from(b)).sum();
    if !sum != be32(64) {
        return Err(bad(format!("footer checksum {:#010x}, its bytes sum to {:#010x}", be32(64), !sum)));
    }
    let current = be64(48);
    if current != len - FOOTER_LEN {
        return Err(bad(format!("the footer says {current} bytes, the file holds {} before it", len - FOOTER_LEN)));
    }
    if current % (1 << 20) != 0 {
        return Err(bad(format!("a virtual size of {current} bytes; Azure needs a whole number of MiB")));
    }
    let id = &f[68..84];
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let unique_id = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
    Ok(Footer { disk_size: current, unique_id, bytes: f })
}

/// A fixed VHD footer for a disk of `size` bytes (for tests and tools): the fields Berth's
/// builder writes, with the checksum.
pub fn footer(size: u64, unique_id: [u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; FOOTER_LEN as usize];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    f[28..32].copy_from_slice(b"brth");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    f[56..60].copy_from_slice(&[0xff, 0xff, 16, 255]);
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(&unique_id);
    let sum: u32 = f.iter().map(|&b| u32::from(b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, size: u64, footer: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(footer, size).unwrap();
        p
    }

    #[test]
    fn fixed_vhds_pass_and_others_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.vhd", 2 << 20, &footer(2 << 20, [7; 16]));
        let f = check(&good).unwrap();
        assert_eq!(f.disk_size, 2 << 20);
        assert_eq!(f.unique_id, "07070707-0707-0707-0707-070707070707");
        let raw = write(dir.path(), "raw.img", 2 << 20, &[0; 512]);
        let e = check(&raw).unwrap_err().to_string();
        assert!(e.contains("raw.img") && e.contains("conectix"), "{e}");
        let mut dynamic = footer(2 << 20, [1; 16]);
        dynamic[63] = 3;
        let e = check(&write(dir.path(), "d.vhd", 2 << 20, &dynamic)).unwrap_err().to_string();
        assert!(e.contains("d.vhd") && e.contains("dynamic"), "{e}");
        let mut corrupt = footer(2 << 20, [1; 16]);
        corrupt[100] = 1;
        let e = check(&write(dir.path(), "c.vhd", 2 << 20, &corrupt)).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let odd = (2 << 20) + 512;
        let e = check(&write(dir.path(), "odd.vhd", odd, &footer(odd, [1; 16]))).unwrap_err().to_string();
        assert!(e.contains("whole number of MiB"), "{e}");
        let e = check(&write(dir.path(), "short.vhd", 2 << 20, &footer(3 << 20, [1; 16]))).unwrap_err().to_string();
        assert!(e.contains("the footer says"), "{e}");
    }
}
