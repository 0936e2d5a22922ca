//! `berth/<slot>/` on the EFI system partition: the kernel, initramfs and command line bootmgr
//! starts for a slot, written on the unmounted FAT32 partition. Only the passive slot's
//! directory is ever written, and only while that slot's attributes make it unbootable.
//!
//! A power cut must not cost the running slot or bootmgr (docs/design.md §2 has one ESP for both
//! slots and bootmgr), so (docs/updates.md, "The ESP"):
//! - the new files are written under temporary names and synced; then for each file the old one
//!   is renamed aside, the new one renamed in and the old one removed, synced after each: a cut
//!   leaves each file old, new or missing, never a mix;
//! - every write goes through [`Guarded`], which refuses any write into the clusters (and the
//!   FAT entries) of `EFI/BOOT/BOOTX64.EFI`, of the running slot's files and of the directories
//!   above them, so a fault in this code or in fatfs cannot reach them;
//! - the boot sectors are never written: fatfs's "volume dirty" flag there is advisory, and the
//!   boot sector is the one sector whose loss loses the whole volume.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, anyhow};
use berth_release::repo::{INITRD_FILE, VMLINUZ_FILE};
use berth_slot::Slot;

/// The command line's file name in `berth/<slot>/`.
pub const CMDLINE_FILE: &str = "cmdline";

/// What one slot's directory holds.
pub struct KernelFiles<'a> {
    /// The kernel.
    pub vmlinuz: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
    /// The command line (bootmgr appends root= and berth.slot=).
    pub cmdline: &'a str,
}

/// Bytes per buffered block of [`Guard`]: the disk's sector.
const BLOCK: u64 = 512;

/// Which blocks of a batch (index, count) reach the device before a test's cut.
type Keep = fn(usize, usize) -> bool;

/// Where a test cuts the power: at the flush of batch `batch` (0-based), after writing only the
/// blocks of that batch (in ascending order, numbered from 0) for which `keep` holds.
#[derive(Clone, Copy)]
pub(crate) struct Cut {
    batch: usize,
    keep: Keep,
}

/// The shared state of a [`Guarded`] device (fatfs owns the device; the writer keeps a handle).
struct Guard {
    file: File,
    /// Bytes that are never written: a write into them fails.
    protected: Vec<Range<u64>>,
    /// Bytes whose writes are dropped (the boot sectors).
    dropped: Vec<Range<u64>>,
    /// Reads of the data area are recorded here while set (to learn what to protect).
    recording: Option<Vec<Range<u64>>>,
    data_start: u64,
    /// Written blocks not yet on the device. fatfs writes an entry field by field and a chain
    /// entry by entry; held here until the step's sync, they reach the device as whole blocks
    /// at once, so a cut leaves each block as of a step's end or the one before.
    pending: std::collections::BTreeMap<u64, Box<[u8; BLOCK as usize]>>,
    /// Batches flushed (syncs).
    batches: usize,
    /// Tests: the power cut.
    cut: Option<Cut>,
    /// Set once the cut happened: every write and flush fails from then on.
    dead: bool,
}

impl Guard {
    /// The block at `n`: pending, or read from the device.
    fn block(&mut self, n: u64) -> io::Result<&mut [u8; BLOCK as usize]> {
        match self.pending.entry(n) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(v) => {
                let mut b = Box::new([0u8; BLOCK as usize]);
                let got = self.file.read_at(&mut b[..], n * BLOCK)?;
                if got < BLOCK as usize {
                    // A volume ends on a whole sector; a short read past it is no block to write.
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "write past the end of the volume"));
                }
                Ok(v.insert(b))
            }
        }
    }

    /// Writes the pending blocks (runs of adjacent blocks at once) and syncs the device.
    fn flush(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(io::Error::other("cut (test)"));
        }
        let blocks: Vec<(u64, Box<[u8; BLOCK as usize]>)> = std::mem::take(&mut self.pending).into_iter().collect();
        let cut = self.cut.filter(|c| c.batch == self.batches);
        let total = blocks.len();
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0;
        for (i, (n, b)) in blocks.into_iter().enumerate() {
            if cut.is_some_and(|c| !(c.keep)(i, total)) {
                continue;
            }
            if !run.is_empty() && run_start + (run.len() as u64) / BLOCK != n {
                self.file.write_all_at(&run, run_start * BLOCK)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = n;
            }
            run.extend_from_slice(&b[..]);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, run_start * BLOCK)?;
        }
        self.file.sync_all()?;
        self.batches += 1;
        if cut.is_some() {
            self.dead = true;
            return Err(io::Error::other("cut (test)"));
        }
        Ok(())
    }
}

/// The ESP's device as fatfs sees it, with [`Guard`]'s rules.
struct Guarded {
    guard: Rc<RefCell<Guard>>,
    pos: u64,
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Read for Guarded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut g = self.guard.borrow_mut();
        // Up to the end of this block, from the pending copy when there is one.
        let n = self.pos / BLOCK;
        let within = (self.pos % BLOCK) as usize;
        let len = buf.len().min(BLOCK as usize - within);
        let got = match g.pending.get(&n) {
            Some(b) => {
                buf[..len].copy_from_slice(&b[within..within + len]);
                len
            }
            None => g.file.read_at(&mut buf[..len], self.pos)?,
        };
        if g.data_start <= self.pos
            && let Some(r) = g.recording.as_mut()
        {
            r.push(self.pos..self.pos + got as u64);
        }
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Guarded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.guard.borrow_mut();
        if g.dead {
            return Err(io::Error::other("cut (test)"));
        }
        let range = self.pos..self.pos + buf.len() as u64;
        if g.dropped.iter().any(|d| d.start <= range.start && range.end <= d.end) {
            self.pos = range.end;
            return Ok(buf.len());
        }
        if let Some(p) = g.protected.iter().find(|p| overlaps(p, &range)).cloned() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to write bytes {}..{}: they belong to bootmgr or the running slot ({}..{})",
                    range.start, range.end, p.start, p.end
                ),
            ));
        }
        let mut at = range.start;
        let mut rest = buf;
        while !rest.is_empty() {
            let within = (at % BLOCK) as usize;
            let len = rest.len().min(BLOCK as usize - within);
            g.block(at / BLOCK)?[within..within + len].copy_from_slice(&rest[..len]);
            rest = &rest[len..];
            at += len as u64;
        }
        self.pos = range.end;
        Ok(buf.len())
    }

    /// Nothing: the writer syncs at the end of each step ([`sync`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Guarded {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let next = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            // The size from lseek: a block device's metadata says 0.
            SeekFrom::End(d) => (&self.guard.borrow().file).seek(SeekFrom::End(0))?.checked_add_signed(d),
        };
        self.pos = next.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

/// The FAT32 geometry the guard needs, from the boot sector.
struct Geometry {
    sector: u64,
    cluster: u64,
    fat_start: u64,
    fat_bytes: u64,
    fats: u64,
    data_start: u64,
}

fn geometry(file: &File, node: &Path) -> anyhow::Result<Geometry> {
    let mut bs = [0u8; 512];
    file.read_exact_at(&mut bs, 0).with_context(|| format!("{}: reading the boot sector", node.display()))?;
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
    let sector = u16_at(0x0B);
    let cluster = sector * u64::from(bs[0x0D]);
    let reserved = u16_at(0x0E);
    let fats = u64::from(bs[0x10]);
    let fat_sectors = u64::from(u32::from_le_bytes([bs[0x24], bs[0x25], bs[0x26], bs[0x27]]));
    if ![512, 1024, 2048, 4096].contains(&sector) || cluster == 0 || fats == 0 || fat_sectors == 0 || u16_at(0x16) != 0
    {
        anyhow::bail!("{}: not a FAT32 volume", node.display());
    }
    let fat_start = reserved * sector;
    let fat_bytes = fat_sectors * sector;
    Ok(Geometry { sector, cluster, fat_start, fat_bytes, fats, data_start: fat_start + fats * fat_bytes })
}

impl Geometry {
    /// The whole clusters `r` touches, and their entries in every FAT.
    fn protect(&self, r: &Range<u64>, out: &mut Vec<Range<u64>>) {
        let first = (r.start - self.data_start) / self.cluster;
        let last = (r.end.max(r.start + 1) - 1 - self.data_start) / self.cluster;
        out.push(self.data_start + first * self.cluster..self.data_start + (last + 1) * self.cluster);
        for c in first + 2..=last + 2 {
            for f in 0..self.fats {
                let at = self.fat_start + f * self.fat_bytes + c * 4;
                out.push(at..at + 4);
            }
        }
    }
}

type Fs = fatfs::FileSystem<Guarded>;

fn open_guarded(node: &Path, cut: Option<Cut>) -> anyhow::Result<(Fs, Rc<RefCell<Guard>>, Geometry)> {
    let dev =
        File::options().read(true).write(true).open(node).with_context(|| format!("opening {}", node.display()))?;
    let geo = geometry(&dev, node)?;
    forget_free_count(&dev, &geo, node)?;
    // The boot sector and its backup (sector 6 on fatfs- and mkfs.fat-made volumes).
    let dropped = vec![0..geo.sector, 6 * geo.sector..7 * geo.sector];
    let guard = Rc::new(RefCell::new(Guard {
        file: dev,
        protected: Vec::new(),
        dropped,
        recording: None,
        data_start: geo.data_start,
        pending: std::collections::BTreeMap::new(),
        batches: 0,
        cut,
        dead: false,
    }));
    let fs = fatfs::FileSystem::new(
        Guarded { guard: guard.clone(), pos: 0 },
        fatfs::FsOptions::new().update_accessed_date(false),
    )
    .with_context(|| format!("{}: not a FAT filesystem", node.display()))?;
    Ok((fs, guard, geo))
}

/// Marks FSInfo's free cluster count and next free cluster "unknown" (as FAT32 allows), synced,
/// before anything is allocated: a count that a cut leaves stale is an error to `fsck.fat`, an
/// unknown one is not (fatfs keeps it unknown; readers count for themselves).
fn forget_free_count(dev: &File, geo: &Geometry, node: &Path) -> anyhow::Result<()> {
    let mut bs = [0u8; 512];
    dev.read_exact_at(&mut bs, 0).with_context(|| format!("{}: reading the boot sector", node.display()))?;
    let at = u64::from(u16::from_le_bytes([bs[0x30], bs[0x31]])) * geo.sector;
    let mut fsinfo = [0u8; 512];
    if at == 0
        || dev.read_exact_at(&mut fsinfo, at).is_err()
        || &fsinfo[..4] != b"RRaA"
        || &fsinfo[0x1E4..0x1E8] != b"rrAa"
    {
        return Ok(());
    }
    if fsinfo[0x1E8..0x1F0] == [0xFF; 8] {
        return Ok(());
    }
    dev.write_all_at(&[0xFF; 8], at + 0x1E8)
        .and_then(|()| dev.sync_data())
        .with_context(|| format!("{}: writing FSInfo", node.display()))
}

/// Records the data clusters of what must not change while `slot` is written: the directories
/// on the way to bootmgr and to the running slot's files, those files and bootmgr.
fn protect(fs: &Fs, guard: &Rc<RefCell<Guard>>, geo: &Geometry, slot: Slot, node: &Path) -> anyhow::Result<()> {
    guard.borrow_mut().recording = Some(Vec::new());
    let root = fs.root_dir();
    let mut seen = 0usize;
    let read_dir = |d: &fatfs::Dir<'_, Guarded>| d.iter().for_each(drop);
    read_dir(&root);
    let mut paths = vec!["EFI".to_string(), "EFI/BOOT".into(), "EFI/BOOT/BOOTX64.EFI".into()];
    let active = slot.other().esp_dir();
    paths.push(active.into());
    for f in [VMLINUZ_FILE, INITRD_FILE, CMDLINE_FILE] {
        paths.push(format!("{active}/{f}"));
    }
    // berth/ itself only once berth/<slot>/ is there (else it gets that entry now).
    if root.open_dir(slot.esp_dir()).is_ok() {
        paths.push("berth".into());
    }
    for p in &paths {
        if let Ok(d) = root.open_dir(p) {
            read_dir(&d);
            seen += 1;
        } else if let Ok(mut f) = root.open_file(p) {
            std::io::copy(&mut f, &mut std::io::sink()).with_context(|| format!("{}: reading {p}", node.display()))?;
            seen += 1;
        }
    }
    let mut g = guard.borrow_mut();
    let reads = g.recording.take().unwrap_or_default();
    let mut protected = Vec::new();
    for r in reads.iter().filter(|r| r.start < r.end) {
        geo.protect(r, &mut protected);
    }
    g.protected = protected;
    if seen == 0 {
        return Err(anyhow!("{}: neither bootmgr nor slot {} found on the ESP", node.display(), slot.other().name()));
    }
    Ok(())
}

/// Syncs the device.
fn sync(guard: &Rc<RefCell<Guard>>, node: &Path) -> anyhow::Result<()> {
    guard.borrow_mut().flush().with_context(|| format!("writing and syncing {}", node.display()))
}

/// Writes `files` into `berth/<slot>/` of the ESP at `node`: all new files under temporary
/// names, synced; then each old file renamed aside, the new one renamed in, the old one
/// removed, synced after each. Nothing of bootmgr or of the other slot is written (see the
/// module's notes).
pub fn write_slot(node: &Path, slot: Slot, files: &KernelFiles) -> anyhow::Result<()> {
    write_slot_cut(node, slot, files, None).map(drop)
}

/// [`write_slot`], with the power cut as `cut` says (tests); returns the number of syncs.
fn write_slot_cut(node: &Path, slot: Slot, files: &KernelFiles, cut: Option<Cut>) -> anyhow::Result<usize> {
    let (fs, guard, geo) = open_guarded(node, cut)?;
    protect(&fs, &guard, &geo, slot, node)?;
    {
        let root = fs.root_dir();
        let berth = match root.open_dir("berth") {
            Ok(d) => d,
            Err(_) => root.create_dir("berth").with_context(|| format!("{}: creating berth/", node.display()))?,
        };
        let name = slot.name();
        let dir = match berth.open_dir(name) {
            Ok(d) => d,
            Err(_) => berth.create_dir(name).with_context(|| format!("{}: creating berth/{name}/", node.display()))?,
        };
        let list =
            [(VMLINUZ_FILE, files.vmlinuz), (INITRD_FILE, files.initrd), (CMDLINE_FILE, files.cmdline.as_bytes())];
        for (file, bytes) in list {
            let at = format!("{}:{}/{file}", node.display(), slot.esp_dir());
            let tmp = format!("{file}.new");
            // Leftovers of a cut write (never a name bootmgr reads).
            for leftover in [format!("{file}.old"), tmp.clone()] {
                match dir.remove(&leftover) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("{}: removing {leftover}", node.display())),
                }
            }
            let mut f = dir.create_file(&tmp).with_context(|| format!("creating {at}.new"))?;
            f.truncate().with_context(|| format!("truncating {at}.new"))?;
            f.write_all(bytes).with_context(|| format!("writing {at}.new"))?;
            f.flush().with_context(|| format!("flushing {at}.new"))?;
        }
        // All new files are on the disk before any old one goes.
        sync(&guard, node)?;
        // fatfs frees a removed file's clusters before its entry: the old file is renamed
        // aside first, so that no cut leaves a real name on freed clusters.
        for (file, _) in list {
            let at = format!("{}:{}/{file}", node.display(), slot.esp_dir());
            let old = format!("{file}.old");
            match dir.rename(file, &dir, &old) {
                Ok(()) => sync(&guard, node)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("renaming {at} to {file}.old")),
            }
            dir.rename(&format!("{file}.new"), &dir, file).with_context(|| format!("renaming {at}.new to {file}"))?;
            sync(&guard, node)?;
            match dir.remove(&old) {
                Ok(()) => sync(&guard, node)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {at}.old")),
            }
        }
    }
    fs.unmount().map_err(|e| anyhow!("{}: unmounting the FAT volume: {e}", node.display()))?;
    sync(&guard, node)?;
    let batches = guard.borrow().batches;
    Ok(batches)
}

/// Reads `berth/<slot>/<file>` from the ESP at `node`.
#[cfg(test)]
pub fn read_file(node: &Path, slot: Slot, file: &str) -> anyhow::Result<Vec<u8>> {
    read_path(node, &format!("{}/{file}", slot.esp_dir()))
}

/// Reads `path` from the ESP at `node` (opened read-only: nothing is written).
#[cfg(test)]
fn read_path(node: &Path, path: &str) -> anyhow::Result<Vec<u8>> {
    let dev = File::open(node).with_context(|| format!("opening {}", node.display()))?;
    let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new().update_accessed_date(false))
        .with_context(|| format!("{}: not a FAT filesystem", node.display()))?;
    let mut f = fs.root_dir().open_file(path).with_context(|| format!("{}: opening {path}", node.display()))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut out).with_context(|| format!("{}: reading {path}", node.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Written into a FAT32 volume made by fatfs, read back, and judged by fsck.fat.
    #[test]
    fn kernel_files_replace_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        // The volume and berth/b/ made by dosfstools and mtools, as an image has them.
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (dosfstools, mtools)"));
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(std::process::Command::new("mkfs.fat").args(["-F", "32", "-C"]).arg(&img).arg("65536"));
        run(std::process::Command::new("mmd").arg("-i").arg(&img).args(["::berth", "::berth/b"]));
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        write_slot(&img, Slot::B, &KernelFiles { vmlinuz: &big, initrd: b"old initrd", cmdline: "console=ttyS0" })
            .unwrap();
        write_slot(&img, Slot::B, &KernelFiles { vmlinuz: b"new kernel", initrd: &big, cmdline: "quiet" }).unwrap();
        assert_eq!(read_file(&img, Slot::B, VMLINUZ_FILE).unwrap(), b"new kernel");
        assert_eq!(read_file(&img, Slot::B, INITRD_FILE).unwrap(), big);
        assert_eq!(read_file(&img, Slot::B, CMDLINE_FILE).unwrap(), b"quiet");
        assert!(read_file(&img, Slot::A, CMDLINE_FILE).is_err());
        let fsck = std::process::Command::new("fsck.fat").arg("-n").arg(&img).output();
        let out = fsck.expect("fsck.fat (dosfstools)");
        assert!(
            out.status.success(),
            "fsck.fat -n: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run(cmd: &mut std::process::Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (dosfstools, mtools)"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn fsck(img: &Path) -> Result<(), String> {
        let out = std::process::Command::new("fsck.fat").arg("-n").arg(img).output().expect("fsck.fat (dosfstools)");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `len` bytes of xorshift output: no two seeds share a run of bytes.
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// An ESP as a built image has it (mkfs.fat, mtools): bootmgr, slot A's files, slot B's
    /// files of an earlier update.
    fn esp_image(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
        let img = dir.join("esp.img");
        run(std::process::Command::new("mkfs.fat").args(["-F", "32", "-C"]).arg(&img).arg("40000"));
        run(std::process::Command::new("mmd").arg("-i").arg(&img).args([
            "::EFI",
            "::EFI/BOOT",
            "::berth",
            "::berth/a",
            "::berth/b",
        ]));
        let active = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), pattern(150_000, 1)),
            ("berth/a/vmlinuz".to_string(), pattern(900_000, 2)),
            ("berth/a/initrd.img".to_string(), pattern(400_000, 3)),
            ("berth/a/cmdline".to_string(), b"console=ttyS0\n".to_vec()),
        ];
        for (path, bytes) in &active {
            let local = dir.join("f");
            std::fs::write(&local, bytes).unwrap();
            run(std::process::Command::new("mcopy").arg("-i").arg(&img).arg(&local).arg(format!("::{path}")));
        }
        (img, active)
    }

    /// A power cut anywhere in the ESP write (at each step's sync, with any part of that step's
    /// blocks on the disk): bootmgr and the running slot's files are byte for byte what they
    /// were, the passive slot's files are each the old, the new or missing (never a mix), and
    /// at every step's end fsck.fat -n finds the volume clean.
    #[test]
    fn m12_a_cut_esp_write_never_touches_bootmgr_or_the_running_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (base, active) = esp_image(dir.path());
        let old = (pattern(700_000, 4), pattern(300_000, 5), "quiet".to_string());
        write_slot(&base, Slot::B, &KernelFiles { vmlinuz: &old.0, initrd: &old.1, cmdline: &old.2 }).unwrap();
        fsck(&base).unwrap();
        let new = (pattern(1_000_000, 6), pattern(200_000, 7), "console=ttyS0 new".to_string());
        let files = KernelFiles { vmlinuz: &new.0, initrd: &new.1, cmdline: &new.2 };

        let whole = dir.path().join("whole.img");
        std::fs::copy(&base, &whole).unwrap();
        let batches = write_slot_cut(&whole, Slot::B, &files, None).unwrap();
        assert!(batches >= 10, "{batches} syncs");
        // Which of a step's blocks reached the disk before the cut.
        let keeps: [(&str, Keep); 6] = [
            ("none", |_, _| false),
            ("the first third", |i, n| i < n / 3),
            ("all but the last", |i, n| i + 1 < n),
            ("the last", |i, n| i + 1 == n),
            ("every other", |i, _| i % 2 == 0),
            ("the others", |i, _| i % 2 == 1),
        ];
        let img = dir.path().join("cut.img");
        for batch in 0..batches {
            for (how, keep) in keeps {
                let case = format!("a cut at sync {batch} of {batches} with {how} of its blocks written");
                std::fs::copy(&base, &img).unwrap();
                let r = write_slot_cut(&img, Slot::B, &files, Some(Cut { batch, keep }));
                assert!(r.is_err(), "{case}: {r:?}");
                for (path, bytes) in &active {
                    assert!(read_path(&img, path).unwrap() == *bytes, "{case}: {path} changed");
                }
                for (file, was, will) in [
                    (VMLINUZ_FILE, &old.0[..], &new.0[..]),
                    (INITRD_FILE, &old.1[..], &new.1[..]),
                    (CMDLINE_FILE, old.2.as_bytes(), new.2.as_bytes()),
                ] {
                    if let Ok(got) = read_file(&img, Slot::B, file) {
                        assert!(got == was || got == will, "{case}: berth/b/{file} is a mix");
                    }
                }
                if how == "none" {
                    fsck(&img).unwrap_or_else(|e| panic!("{case} (the previous step's end): fsck.fat -n: {e}"));
                }
            }
        }
        fsck(&whole).unwrap();
        for (file, will) in [(VMLINUZ_FILE, &new.0[..]), (INITRD_FILE, &new.1[..]), (CMDLINE_FILE, new.2.as_bytes())] {
            assert_eq!(read_file(&whole, Slot::B, file).unwrap(), will);
        }
    }

    /// The guard itself: once it knows what is bootmgr's and the running slot's, a write into
    /// their clusters fails (whatever asks for it), and the boot sector is never written.
    #[test]
    fn m12_writes_into_bootmgr_or_the_running_slot_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (img, active) = esp_image(dir.path());
        let (fs, guard, geo) = open_guarded(&img, None).unwrap();
        let before = std::fs::read(&img).unwrap();
        protect(&fs, &guard, &geo, Slot::B, &img).unwrap();
        let mut dev = Guarded { guard: guard.clone(), pos: 0 };
        for (path, bytes) in &active {
            let head = &bytes[..64.min(bytes.len())];
            let at = before.windows(head.len()).position(|w| w == head).unwrap() as u64;
            dev.seek(SeekFrom::Start(at + 10)).unwrap();
            let e = dev.write(b"x").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{path}: {e}");
        }
        dev.seek(SeekFrom::Start(0x41)).unwrap();
        dev.write_all(&[1]).unwrap();
        drop(fs);
        assert!(std::fs::read(&img).unwrap() == before, "the volume changed");
    }
}
