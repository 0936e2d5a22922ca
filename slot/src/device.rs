//! A disk's GPT read from a device node or image file (feature `std`), as berth-init and the
//! update agent read it: the primary copy, or the backup on the last sector when the primary is
//! unusable (a torn write), as bootmgr and the kernel do.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use crate::gpt::{Gpt, Header};
use crate::layout::SECTOR_SIZE;

fn read_at(file: &File, node: &Path, lba: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    // The LBA can come from the disk (a header's entry array): checked, not wrapped.
    let at = lba.checked_mul(SECTOR_SIZE).ok_or_else(|| format!("{}: LBA {lba} is past any disk", node.display()))?;
    file.read_exact_at(&mut buf, at).map_err(|e| format!("reading {} at LBA {lba}: {e}", node.display()))?;
    Ok(buf)
}

/// The GPT, from the primary copy or, if that is unusable, from the backup on the disk's
/// last sector; with the reason both copies must be rewritten, if they must.
pub fn read(file: &File, node: &Path, lbas: u64) -> Result<(Gpt, Option<String>), String> {
    let primary = (|| {
        let sector = read_at(file, node, 1, SECTOR_SIZE as usize)?;
        let header = Header::parse(&sector).map_err(|e| e.to_string())?;
        let entries = read_at(file, node, header.entries_lba, header.entries_bytes())?;
        Gpt::parse(&sector, &entries).map_err(|e| e.to_string())
    })();
    match primary {
        Ok(mut gpt) => {
            let at = gpt.backup_header_lba();
            if at >= lbas {
                // Past the end: grow_partition says so.
                return Ok((gpt, None));
            }
            let damaged = match gpt.check_backup(&read_at(file, node, at, SECTOR_SIZE as usize)?) {
                Ok(_) => None,
                Err(e) => Some(format!("backup GPT at LBA {at} unusable ({e})")),
            };
            Ok((gpt, damaged))
        }
        Err(p) => {
            let last = lbas.saturating_sub(1);
            let backup = (|| {
                let sector = read_at(file, node, last, SECTOR_SIZE as usize)?;
                let header = Header::parse(&sector).map_err(|e| e.to_string())?;
                if header.my_lba != last || header.alternate_lba != 1 {
                    return Err(format!("claims LBA {}, other copy at {}", header.my_lba, header.alternate_lba));
                }
                let entries = read_at(file, node, header.entries_lba, header.entries_bytes())?;
                Gpt::with_header(header, &entries).map_err(|e| e.to_string())
            })();
            match backup {
                Ok(gpt) => Ok((gpt, Some(format!("primary GPT unusable ({p})")))),
                Err(b) => Err(format!("{}: no usable GPT: primary: {p}; backup at LBA {last}: {b}", node.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sgdisk (gdisk) makes the GPT; a torn primary is read from the backup, with the reason.
    #[test]
    fn backup_copy_when_the_primary_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let file = File::create(&img).unwrap();
        file.set_len(16 << 20).unwrap();
        let out =
            std::process::Command::new("sgdisk").args(["-o", "-n", "1:2048:+4M", "-n", "2:0:0"]).arg(&img).output();
        let out = out.expect("sgdisk (Debian package gdisk)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let file = File::options().read(true).write(true).open(&img).unwrap();
        let lbas = (16 << 20) / SECTOR_SIZE;
        let (gpt, reason) = read(&file, &img, lbas).unwrap();
        assert_eq!(reason, None);
        let want: Vec<_> = gpt.partitions().map(|e| (e.number, e.first_lba, e.last_lba, e.unique_guid)).collect();
        assert_eq!(want.len(), 2);

        file.write_all_at(&[0u8; 8], SECTOR_SIZE).unwrap();
        let (gpt, reason) = read(&file, &img, lbas).unwrap();
        assert!(reason.unwrap().starts_with("primary GPT unusable"));
        let got: Vec<_> = gpt.partitions().map(|e| (e.number, e.first_lba, e.last_lba, e.unique_guid)).collect();
        assert_eq!(got, want);

        file.write_all_at(&[0u8; 8], (lbas - 1) * SECTOR_SIZE).unwrap();
        let e = read(&file, &img, lbas).unwrap_err();
        assert!(e.contains("no usable GPT") && e.contains("disk.img"), "{e}");
    }

    /// Found by the fuzz target (slot/tests/fuzz.rs): a header (CRC valid) whose entry array
    /// is at LBA 2^55 overflowed `lba * 512`, a panic in PID 1's debug builds.
    #[test]
    fn an_entry_array_past_any_disk_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let file = File::options().read(true).write(true).create_new(true).open(&img).unwrap();
        file.set_len(64 * SECTOR_SIZE).unwrap();
        let mut h = [0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&63u64.to_le_bytes());
        h[72..80].copy_from_slice(&(1u64 << 55).to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let crc = crate::gpt::crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&h, SECTOR_SIZE).unwrap();
        let e = read(&file, &img, 64).unwrap_err();
        assert!(e.contains("LBA 36028797018963968 is past any disk"), "{e}");
    }
}
