//! `/dev/disk/by-partuuid/<uuid>` and `/dev/disk/by-label/<label>`: what tools and fstab-style
//! configuration expect udev to make. A GPT partition's unique GUID comes from the disk's own
//! partition table (the kernel's uevent carries only `PARTN`), a filesystem's label from its
//! superblock (ext2/3/4 and FAT, a few bytes at the start). Each link is `../../<devname>`,
//! made under a temporary name and renamed into place; a link is removed only while it still
//! points at the device that made it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A link name as udev encodes it: bytes outside `[A-Za-z0-9#+-.:=@_]` (and a `\`) as `\xNN`.
/// `None` for a name that cannot be a link (empty, `.`, `..`).
pub fn encode_name(raw: &str) -> Option<String> {
    if raw.is_empty() || raw == "." || raw == ".." {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    for &b in raw.as_bytes() {
        if b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Some(out)
}

/// The filesystem label in the first 2 KiB of a device: ext2/3/4 (`s_volume_name`) or FAT
/// (the boot sector's volume label; `NO NAME` is none). `None` for anything else.
pub fn fs_label(head: &[u8]) -> Option<String> {
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at +0x38, the 16-byte name at +0x78.
    if head.len() >= 1024 + 0x88 && head[1024 + 0x38..1024 + 0x3a] == [0x53, 0xef] {
        return text(&head[1024 + 0x78..1024 + 0x88]);
    }
    // FAT: 0x55AA at 510; FAT32 (16-bit FAT size 0) has its extended BPB at 0x40, FAT12/16
    // at 0x24; the signature 0x29 there says the label and the type string are present.
    if head.len() >= 512 && head[510..512] == [0x55, 0xaa] {
        let fat32 = head[0x16] == 0 && head[0x17] == 0;
        let (sig, label, kind) = if fat32 { (0x42, 0x47, 0x52) } else { (0x26, 0x2b, 0x36) };
        if head[sig] == 0x29 && head[kind..kind + 3] == *b"FAT" {
            let l = text(&head[label..label + 11])?;
            return (l != "NO NAME").then_some(l);
        }
    }
    None
}

/// NUL- or space-padded text; `None` when empty or not UTF-8.
fn text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = std::str::from_utf8(&raw[..end]).ok()?.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_owned())
}

/// Reads the first 2 KiB of `/dev/<devname>` (short for a small device).
pub fn read_head(node: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(node)?;
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// The unique GUID (lower case) of partition `partn` of the disk `/dev/<disk>` whose sysfs
/// directory is `sys_disk`, from its GPT (primary, else backup). `Ok(None)`: no such entry.
pub fn partuuid(disk_node: &Path, sys_disk: &Path, partn: u32) -> Result<Option<String>, String> {
    let read = |f: &str| std::fs::read_to_string(sys_disk.join(f)).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let lbs = read("queue/logical_block_size").unwrap_or(512);
    if lbs != 512 {
        return Err(format!("{lbs}-byte sectors"));
    }
    let sectors = read("size").unwrap_or(0);
    let file = File::open(disk_node).map_err(|e| format!("{}: {e}", disk_node.display()))?;
    let (gpt, _) = berth_slot::device::read(&file, disk_node, sectors)?;
    Ok(gpt.partition(partn).map(|e| e.unique_guid.to_string()))
}

/// The links of one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// The GPT partition's unique GUID.
    pub partuuid: Option<String>,
    /// The filesystem's label.
    pub label: Option<String>,
}

impl Names {
    /// `(directory under /dev/disk, link name)` for each name, encoded.
    pub fn links(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(u) = self.partuuid.as_deref().map(str::to_ascii_lowercase).as_deref().and_then(encode_name) {
            v.push(("by-partuuid", u));
        }
        if let Some(l) = self.label.as_deref().and_then(encode_name) {
            v.push(("by-label", l));
        }
        v
    }
}

/// The links made, by device, so that a removed device's links go with it.
#[derive(Debug)]
pub struct Links {
    root: PathBuf,
    made: BTreeMap<String, Vec<PathBuf>>,
}

impl Links {
    /// Links under `root` (`/dev/disk`).
    pub fn new(root: &Path) -> Links {
        Links { root: root.to_path_buf(), made: BTreeMap::new() }
    }

    /// Makes the links of `devname` (replacing what it had); returns a line for each link made
    /// and each error.
    pub fn add(&mut self, devname: &str, names: &Names) -> Vec<String> {
        let mut log = self.remove(devname);
        let target = format!("../../{devname}");
        let mut made = Vec::new();
        for (dir, name) in names.links() {
            let dir = self.root.join(dir);
            match make_link(&dir, &name, &target) {
                Ok(path) => {
                    log.push(format!("link {} -> {target}", path.display()));
                    made.push(path);
                }
                Err(e) => log.push(format!("link {}/{name} for {devname}: {e}", dir.display())),
            }
        }
        if !made.is_empty() {
            self.made.insert(devname.to_owned(), made);
        }
        log
    }

    /// Removes the links `devname` made that still point at it.
    pub fn remove(&mut self, devname: &str) -> Vec<String> {
        let mut log = Vec::new();
        let target = PathBuf::from(format!("../../{devname}"));
        for path in self.made.remove(devname).unwrap_or_default() {
            // Another device with the same label may have taken the name since.
            if std::fs::read_link(&path).is_ok_and(|t| t == target) {
                match std::fs::remove_file(&path) {
                    Ok(()) => log.push(format!("link {} removed", path.display())),
                    Err(e) => log.push(format!("removing {}: {e}", path.display())),
                }
            }
        }
        log
    }
}

/// `dir/name -> target`, atomically: a symlink under a temporary name renamed over the old
/// one. `dir` and its parent are made if missing and must be real directories (a symlink there
/// is refused, not followed).
fn make_link(dir: &Path, name: &str, target: &str) -> std::io::Result<PathBuf> {
    for d in [dir.parent().unwrap_or(dir), dir] {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(std::io::Error::other(format!("{} is not a directory", d.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = std::fs::DirBuilder::new();
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o755);
                b.create(d)?;
            }
            Err(e) => return Err(e),
        }
    }
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.berth-devd-tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_udev_does() {
        assert_eq!(encode_name("STATE").as_deref(), Some("STATE"));
        assert_eq!(encode_name("my disk/1").as_deref(), Some("my\\x20disk\\x2f1"));
        assert_eq!(encode_name("a\\b").as_deref(), Some("a\\x5cb"));
        assert_eq!(encode_name(".."), None);
        assert_eq!(encode_name(""), None);
        let n = Names { partuuid: Some("6F2C1B6A-7A0D-4B6F-9E1A-0C1D2E3F4A5B".into()), label: Some("ROOT A".into()) };
        assert_eq!(
            n.links(),
            [("by-partuuid", "6f2c1b6a-7a0d-4b6f-9e1a-0c1d2e3f4a5b".into()), ("by-label", "ROOT\\x20A".into())]
        );
    }

    #[test]
    fn guid_text_is_lower_case_in_text_order() {
        let g = berth_slot::gpt::Guid::parse("6F2C1B6A-7A0D-4B6F-9E1A-0C1D2E3F4A5B").unwrap();
        assert_eq!(g.to_string(), "6f2c1b6a-7a0d-4b6f-9e1a-0c1d2e3f4a5b");
    }

    #[test]
    fn labels_from_superblocks() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1024 + 0x38..1024 + 0x3a].copy_from_slice(&[0x53, 0xef]);
        ext4[1024 + 0x78..1024 + 0x7d].copy_from_slice(b"STATE");
        assert_eq!(fs_label(&ext4).as_deref(), Some("STATE"));
        ext4[1024 + 0x78..1024 + 0x88].fill(0);
        assert_eq!(fs_label(&ext4), None);

        let mut fat32 = vec![0u8; 512];
        fat32[510..512].copy_from_slice(&[0x55, 0xaa]);
        fat32[0x42] = 0x29;
        fat32[0x47..0x52].copy_from_slice(b"ESP        ");
        fat32[0x52..0x5a].copy_from_slice(b"FAT32   ");
        assert_eq!(fs_label(&fat32).as_deref(), Some("ESP"));
        fat32[0x47..0x52].copy_from_slice(b"NO NAME    ");
        assert_eq!(fs_label(&fat32), None);

        let mut fat16 = vec![0u8; 512];
        fat16[510..512].copy_from_slice(&[0x55, 0xaa]);
        fat16[0x16] = 32;
        fat16[0x26] = 0x29;
        fat16[0x2b..0x36].copy_from_slice(b"CIDATA     ");
        fat16[0x36..0x3e].copy_from_slice(b"FAT16   ");
        assert_eq!(fs_label(&fat16).as_deref(), Some("CIDATA"));
        // An MBR is no FAT boot sector.
        let mut mbr = vec![0u8; 512];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(fs_label(&mbr), None);
    }

    #[test]
    fn links_replace_atomically_and_go_with_their_device() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("disk");
        let mut l = Links::new(&root);
        let names = Names { partuuid: Some("AB-CD".into()), label: Some("STATE".into()) };
        let log = l.add("vda3", &names);
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(std::fs::read_link(root.join("by-partuuid/ab-cd")).unwrap(), Path::new("../../vda3"));
        assert_eq!(std::fs::read_link(root.join("by-label/STATE")).unwrap(), Path::new("../../vda3"));
        // Another device takes the label: the first one's removal leaves it alone.
        l.add("vdb1", &Names { partuuid: None, label: Some("STATE".into()) });
        l.remove("vda3");
        assert!(std::fs::symlink_metadata(root.join("by-partuuid/ab-cd")).is_err());
        assert_eq!(std::fs::read_link(root.join("by-label/STATE")).unwrap(), Path::new("../../vdb1"));
        l.remove("vdb1");
        assert!(std::fs::symlink_metadata(root.join("by-label/STATE")).is_err());
        // No temporary names left behind.
        assert_eq!(std::fs::read_dir(root.join("by-label")).unwrap().count(), 0);
        // A planted symlink in place of a directory is refused, not followed.
        let evil = tempfile::tempdir().unwrap();
        std::fs::remove_dir(root.join("by-label")).unwrap();
        std::os::unix::fs::symlink(evil.path(), root.join("by-label")).unwrap();
        let log = l.add("vdc1", &Names { partuuid: None, label: Some("X".into()) });
        assert!(log[0].contains("is not a directory"), "{log:?}");
        assert_eq!(std::fs::read_dir(evil.path()).unwrap().count(), 0);
    }
}
