//! A disk's GPT as berth-init reads it (stage 1 finding the root, stage 2 growing STATE): the
//! primary copy, or the backup on the last sector when the primary is unusable (a torn write),
//! as bootmgr and the kernel do.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use berth_slot::gpt::{Gpt, Header};
use berth_slot::layout::SECTOR_SIZE;

fn read_at(file: &File, node: &Path, lba: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, lba * SECTOR_SIZE)
        .map_err(|e| format!("reading {} at LBA {lba}: {e}", node.display()))?;
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
