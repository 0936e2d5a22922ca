//! `sgdisk` as the judge of `berth_slot::gpt`: a GPT written by sgdisk is parsed, its slot
//! attributes rewritten through the module (backup first, then primary), and sgdisk must find
//! the disk clean and show the new attribute value and the same unique GUIDs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use berth_slot::gpt::Gpt;
use berth_slot::layout::ROOT_TYPE_GUID;
use berth_slot::{Slot, SlotAttrs, Slots};

const SECTOR: u64 = 512;

fn sgdisk(disk: &Path, args: &[&str]) -> String {
    let out = Command::new("sgdisk").args(args).arg(disk).output().expect("running sgdisk (install gdisk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sgdisk {args:?} failed:\n{text}");
    text
}

fn read(file: &File, lba: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, lba * SECTOR).unwrap();
    buf
}

/// A 64 MiB disk partitioned by sgdisk like a Berth disk.
fn sgdisk_disk(dir: &Path) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let root = ROOT_TYPE_GUID;
    sgdisk(
        &disk,
        &[
            "-o",
            "-n",
            "1:2048:+16M",
            "-t",
            "1:C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            "-c",
            "1:EFI-SYSTEM",
            "-n",
            "2:0:+16M",
            "-t",
            &format!("2:{root}"),
            "-c",
            "2:ROOT-A",
            "-A",
            "2:set:50",
            "-n",
            "3:0:+16M",
            "-t",
            &format!("3:{root}"),
            "-c",
            "3:ROOT-B",
            "-n",
            "4:0:0",
            "-c",
            "4:STATE",
        ],
    );
    disk
}

fn field<'a>(info: &'a str, name: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no {name:?} in sgdisk output:\n{info}"))
}

#[test]
fn rewrite_attributes_judged_by_sgdisk() {
    let dir = tempfile_dir();
    let disk = sgdisk_disk(dir.path());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let total = file.metadata().unwrap().len() / SECTOR;

    let header = read(&file, 1, 512);
    let h = berth_slot::gpt::Header::parse(&header).unwrap();
    let entries = read(&file, h.entries_lba, h.entries_bytes());
    let mut gpt = Gpt::parse(&header, &entries).unwrap();
    gpt.check_backup(&read(&file, total - 1, 512)).unwrap();
    assert_eq!(gpt.backup_header_lba(), total - 1);

    // The unique GUIDs as sgdisk prints them (upper case, mixed-endian decoded).
    for n in [1, 2, 3, 4] {
        let info = sgdisk(&disk, &["-i", &n.to_string()]);
        let e = gpt.partition(n).unwrap();
        assert_eq!(field(&info, "Partition unique GUID:"), e.unique_guid.to_string().to_uppercase());
        assert_eq!(field(&info, "First sector:"), e.first_lba.to_string());
        assert_eq!(field(&info, "Last sector:"), e.last_lba.to_string());
        assert!(info.contains(&format!("Partition name: '{}'", e.name)), "{info}");
    }
    let slots = gpt.slots().unwrap();
    assert_eq!(slots.raw(Slot::A), 1 << 50);
    assert_eq!(slots.raw(Slot::B), 0);

    // Stage B as the agent would, then let selection spend a try.
    let staged = slots
        .with(Slot::A, SlotAttrs { priority: 1, tries: 0, successful: true })
        .with(Slot::B, SlotAttrs { priority: 2, tries: 3, successful: false });
    let decision = staged.select().unwrap();
    assert!(decision.must_write);
    let after: Slots = decision.slots_after;
    let out = gpt.with_slots(after).unwrap().encode();
    file.write_all_at(&out.entries, out.backup_entries_lba * SECTOR).unwrap();
    file.write_all_at(&out.backup_header, out.backup_header_lba * SECTOR).unwrap();
    file.write_all_at(&out.entries, out.primary_entries_lba * SECTOR).unwrap();
    file.write_all_at(&out.primary_header, out.primary_header_lba * SECTOR).unwrap();
    file.sync_all().unwrap();

    let verify = sgdisk(&disk, &["-v"]);
    assert!(verify.contains("No problems found"), "{verify}");
    let raw_b = after.raw(Slot::B);
    assert_eq!(raw_b, (2 << 48) | (2 << 52));
    let info = sgdisk(&disk, &["-i", "3"]);
    assert_eq!(field(&info, "Attribute flags:"), format!("{raw_b:016X}"), "{info}");
    let info = sgdisk(&disk, &["-i", "2"]);
    assert_eq!(field(&info, "Attribute flags:"), format!("{:016X}", after.raw(Slot::A)), "{info}");

    // The module reads its own output back, from either copy.
    let again = Gpt::parse(&read(&file, 1, 512), &read(&file, 2, 16384)).unwrap();
    assert_eq!(again.slots().unwrap(), after);
    let backup = berth_slot::gpt::Header::parse(&read(&file, total - 1, 512)).unwrap();
    let from_backup = Gpt::with_header(backup.clone(), &read(&file, backup.entries_lba, 16384)).unwrap();
    assert_eq!(from_backup.slots().unwrap(), after);

    // sgdisk's own rewrite of an attribute is read correctly too.
    sgdisk(&disk, &["-A", "3:set:56"]);
    let h = read(&file, 1, 512);
    let reread = Gpt::parse(&h, &read(&file, 2, 16384)).unwrap();
    assert_eq!(reread.slots().unwrap().get(Slot::B), SlotAttrs { priority: 2, tries: 2, successful: true });
}

#[test]
fn corrupt_primary_is_detected() {
    let dir = tempfile_dir();
    let disk = sgdisk_disk(dir.path());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let mut entries = read(&file, 2, 16384);
    entries[128 + 48] ^= 1;
    file.write_all_at(&entries, 2 * SECTOR).unwrap();
    let err = Gpt::parse(&read(&file, 1, 512), &read(&file, 2, 16384)).unwrap_err();
    assert!(matches!(err, berth_slot::gpt::GptError::EntriesCrc { .. }), "{err}");
}

/// A scratch directory removed on drop (no extra dev-dependency).
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tempfile_dir() -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "berth-slot-gpt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// Reads the primary GPT of `file` and checks its backup copy.
fn read_gpt(file: &File) -> Gpt {
    let header = read(file, 1, 512);
    let h = berth_slot::gpt::Header::parse(&header).unwrap();
    let mut gpt = Gpt::parse(&header, &read(file, h.entries_lba, h.entries_bytes())).unwrap();
    gpt.check_backup(&read(file, h.alternate_lba, 512)).unwrap();
    gpt
}

/// Writes one copy of an encoded GPT: the entry array, then the header.
fn write_copy(file: &File, entries: &[u8], entries_lba: u64, header: &[u8], header_lba: u64) {
    file.write_all_at(entries, entries_lba * SECTOR).unwrap();
    file.write_all_at(header, header_lba * SECTOR).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn grow_state_on_an_enlarged_disk_judged_by_sgdisk() {
    let dir = tempfile_dir();
    let disk = sgdisk_disk(dir.path());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let before = read_gpt(&file);
    let state = before.partition(4).unwrap();
    // sgdisk's "4:0:0" ends STATE at the last usable LBA, unaligned: nothing to grow.
    assert_eq!(state.last_lba, (64 << 20) / SECTOR - 34);
    assert_eq!(before.grow_partition((64 << 20) / SECTOR, 4, 2048), Ok(None));

    // The user enlarges the disk image by 32 MiB.
    file.set_len(96 << 20).unwrap();
    let lbas = (96 << 20) / SECTOR;
    let grown = before.grow_partition(lbas, 4, 2048).unwrap().expect("something to grow");
    assert!(grown.backup_moved);
    assert_eq!(grown.old_last_lba, state.last_lba);
    // The last usable LBA is lbas - 34; rounded down to whole MiB.
    assert_eq!(grown.new_last_lba, (lbas - 33) / 2048 * 2048 - 1);
    let out = grown.gpt.encode();
    assert_eq!(out.backup_header_lba, lbas - 1);

    // Backup copy first. A power cut here leaves the old primary and its old backup intact:
    // sgdisk sees the old STATE and only the enlargement it saw before we started.
    write_copy(&file, &out.entries, out.backup_entries_lba, &out.backup_header, out.backup_header_lba);
    let verify = sgdisk(&disk, &["-v"]);
    assert!(verify.contains("Identified 1 problems") && verify.contains("secondary header"), "{verify}");
    assert_eq!(field(&sgdisk(&disk, &["-i", "4"]), "Last sector:"), state.last_lba.to_string());
    assert!(read_gpt(&file).encode() == before.encode(), "the old GPT changed");

    // Then the primary.
    write_copy(&file, &out.entries, out.primary_entries_lba, &out.primary_header, out.primary_header_lba);
    let verify = sgdisk(&disk, &["-v"]);
    assert!(verify.contains("No problems found"), "{verify}");
    let info = sgdisk(&disk, &["-i", "4"]);
    assert_eq!(field(&info, "First sector:"), state.first_lba.to_string());
    assert_eq!(field(&info, "Last sector:"), grown.new_last_lba.to_string());
    assert_eq!(field(&info, "Partition unique GUID:"), state.unique_guid.to_string().to_uppercase());
    assert!(info.contains("Partition name: 'STATE'"), "{info}");
    let p = sgdisk(&disk, &["-p"]);
    assert!(p.contains(&format!("last usable sector is {}", lbas - 34)), "{p}");

    // What is on disk is what was computed, and a second boot has nothing to do.
    let after = read_gpt(&file);
    assert!(after.encode() == out, "the GPT read back differs from the one written");
    assert_eq!(after.grow_partition(lbas, 4, 2048), Ok(None));
}

#[test]
fn torn_primary_after_grow_leaves_the_new_backup() {
    let dir = tempfile_dir();
    let disk = sgdisk_disk(dir.path());
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    file.set_len(96 << 20).unwrap();
    let lbas = (96 << 20) / SECTOR;
    let grown = read_gpt(&file).grow_partition(lbas, 4, 2048).unwrap().unwrap();
    let out = grown.gpt.encode();
    write_copy(&file, &out.entries, out.backup_entries_lba, &out.backup_header, out.backup_header_lba);
    // The cut falls between the primary's entries and its header.
    file.write_all_at(&out.entries, out.primary_entries_lba * SECTOR).unwrap();
    let err = Gpt::parse(&read(&file, 1, 512), &read(&file, 2, 16384)).unwrap_err();
    assert!(matches!(err, berth_slot::gpt::GptError::EntriesCrc { .. }), "{err}");
    // The backup at the disk's last LBA (where the kernel and bootmgr look) is whole and new.
    let backup = berth_slot::gpt::Header::parse(&read(&file, lbas - 1, 512)).unwrap();
    let from_backup = Gpt::with_header(backup.clone(), &read(&file, backup.entries_lba, 16384)).unwrap();
    assert!(from_backup.encode() == out, "the backup copy differs from the GPT written");
    let verify = sgdisk(&disk, &["-v"]);
    eprintln!("{verify}");
    // Rewriting both copies from the backup repairs the disk.
    let again = from_backup.encode();
    write_copy(&file, &again.entries, again.backup_entries_lba, &again.backup_header, again.backup_header_lba);
    write_copy(&file, &again.entries, again.primary_entries_lba, &again.primary_header, again.primary_header_lba);
    assert!(sgdisk(&disk, &["-v"]).contains("No problems found"));
}
