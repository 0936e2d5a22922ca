//! The disk formats the builder writes itself (GPT, FAT32 ESP, cpio initramfs), judged by
//! independent host tools (docs/design.md §6–§7): `sgdisk -v`/`-i` for the partition tables,
//! `fsck.fat -n` and mtools for the ESP, `zstd` and GNU `cpio` for the initramfs. The `gpt`
//! crate reads the tables back too. The judges are required: a missing one fails the test and
//! names the Debian package that provides it, so a machine without them cannot pass silently.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_builder::cpio::{Compression, CpioOptions, write_archive};
use berth_builder::disk::{DiskError, DiskLayout, DiskPlan, DiskSize, create_image, read_slots};
use berth_builder::esp::{EspContents, EspError, EspOptions, write_esp, write_esp_image};
use berth_fstree::{Metadata, Node, NodeKind, Tree};
use berth_slot::layout::DEFAULT_ESP_SIZE;
use berth_slot::{Slot, SlotAttrs};
use sha2::{Digest, Sha256};

mod common;
use common::{noise, run, text, tool};

const MIB: u64 = 1 << 20;
/// 2023-11-14 22:13:20 UTC, standing in for SOURCE_DATE_EPOCH.
const EPOCH: i64 = 1_700_000_000;
const ESP_SIZE: u64 = 64 * MIB;
const ROOT_SIZE: u64 = 16 * MIB;
const DISK_SIZE: u64 = 150 * MIB;

// ---------------------------------------------------------------------------------------------
// Judges

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

// ---------------------------------------------------------------------------------------------
// Inputs

fn layout(seed: &[u8]) -> DiskLayout {
    DiskLayout { esp_size: ESP_SIZE, root_size: ROOT_SIZE, size: DiskSize::Total(DISK_SIZE), seed: seed.to_vec() }
}

/// The ESP files: path → content. Directories without files are listed in `esp_dirs`.
fn esp_files() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        ("EFI/BOOT/BOOTX64.EFI", noise(1, 150_000)),
        ("berth/a/vmlinuz", noise(2, 3 * MIB as usize + 123)),
        ("berth/a/initrd.img", noise(3, 1_000_001)),
        ("berth/a/cmdline", b"console=ttyS0 quiet\n".to_vec()),
        ("berth/a/A long, Mixed-Case name.txt", b"long file names survive\n".to_vec()),
        ("berth/a/empty", Vec::new()),
    ])
}

const ESP_DIRS: [&str; 2] = ["berth/b", "loader/entries"];

fn esp_contents() -> EspContents {
    let mut c = EspContents::new();
    for (path, data) in esp_files() {
        c.add_file(path, data).unwrap();
    }
    for dir in ESP_DIRS {
        c.add_dir(dir).unwrap();
    }
    c
}

fn esp_options(seed: &[u8]) -> EspOptions {
    EspOptions::from_seed(seed, "EFI-SYSTEM", EPOCH)
}

/// Writes a disk image (tables and ESP) into `dir`; returns its path and plan.
fn build_disk(dir: &Path, seed: &[u8], plan: Option<DiskPlan>) -> (PathBuf, DiskPlan) {
    let plan = plan.unwrap_or_else(|| layout(seed).plan().unwrap());
    let path = dir.join("disk.img");
    let file = create_image(&path, &plan).unwrap();
    let esp = plan.esp();
    let summary = write_esp(&file, esp.offset, esp.size, &esp_contents(), &esp_options(seed)).unwrap();
    assert!(summary.total_clusters >= 65525, "{summary:?}");
    (path, plan)
}

fn copy_range(from: &Path, offset: u64, len: u64, to: &Path) {
    let mut src = File::open(from).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = File::create(to).unwrap();
    let copied = std::io::copy(&mut src.take(len), &mut dst).unwrap();
    assert_eq!(copied, len);
}

// ---------------------------------------------------------------------------------------------
// GPT

/// `sgdisk -v` must find nothing to complain about.
fn assert_sgdisk_clean(disk: &Path) {
    let out = run(Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(disk));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "sgdisk -v failed ({}):\n{stdout}\n{}", out.status, text(&out.stderr));
    assert!(stdout.contains("No problems found"), "sgdisk -v:\n{stdout}");
    for bad in ["Problem", "Warning", "Caution", "corrupt", "mismatch"] {
        assert!(!stdout.contains(bad), "sgdisk -v reports {bad:?}:\n{stdout}");
    }
}

/// The fields `sgdisk -i N` prints, by their label.
fn sgdisk_info(disk: &Path, number: u32) -> BTreeMap<String, String> {
    let out = run(Command::new(tool("sgdisk", "gdisk")).arg(format!("-i{number}")).arg(disk));
    assert!(out.status.success(), "sgdisk -i{number}: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Checks every entry of `disk` against `plan` with the gpt crate and with `sgdisk -i`.
fn assert_tables_match(disk: &Path, plan: &DiskPlan) {
    let gpt = gpt::GptConfig::new().only_valid_headers(true).open(disk).expect("both GPT headers valid");
    assert_eq!(*gpt.guid(), plan.disk_guid());
    let primary = gpt.primary_header().unwrap();
    let backup = gpt.backup_header().unwrap();
    assert_eq!(primary.backup_lba, plan.disk_size() / 512 - 1);
    assert_eq!(backup.current_lba, plan.disk_size() / 512 - 1);
    assert_eq!(primary.num_parts, 128);

    let read = gpt.partitions();
    assert_eq!(read.len(), 4, "{read:#?}");
    for want in plan.partitions() {
        let got = &read[&want.number];
        assert_eq!(got.name, want.label);
        assert_eq!(got.part_type_guid.guid, want.type_guid, "{}", want.label);
        assert_eq!(got.part_guid, want.guid, "{}", want.label);
        assert_eq!(got.first_lba, want.offset / 512, "{}", want.label);
        assert_eq!(got.last_lba, (want.offset + want.size) / 512 - 1, "{}", want.label);
        assert_eq!(got.flags, want.attributes, "{}", want.label);
        assert_eq!(want.offset % MIB, 0);
        assert_eq!(want.size % MIB, 0);

        let info = sgdisk_info(disk, want.number);
        assert_eq!(info["Partition name"], format!("'{}'", want.label));
        assert!(info["Partition GUID code"].starts_with(&want.type_guid.to_string().to_uppercase()), "{info:?}");
        assert_eq!(info["Partition unique GUID"], want.guid.to_string().to_uppercase());
        assert_eq!(info["Attribute flags"], format!("{:016X}", want.attributes));
        assert!(info["First sector"].starts_with(&format!("{} ", want.offset / 512)), "{info:?}");
    }

    // Protective MBR: one 0xEE partition from LBA 1 over the rest of the disk.
    let mut mbr = [0u8; 512];
    File::open(disk).unwrap().read_exact(&mut mbr).unwrap();
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    assert_eq!(mbr[446 + 4], 0xEE);
    assert_eq!(u32::from_le_bytes(mbr[454..458].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(mbr[458..462].try_into().unwrap()), (plan.disk_size() / 512 - 1) as u32);
}

#[test]
fn gpt_passes_sgdisk_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, plan) = build_disk(dir.path(), b"berth test image", None);
    assert_eq!(fs::metadata(&disk).unwrap().len(), DISK_SIZE);
    // Sparse: far less than the 150 MiB are allocated (the ESP files are ~4.3 MiB).
    let allocated = fs::metadata(&disk).unwrap().blocks() * 512;
    assert!(allocated < 16 * MIB, "disk image is not sparse: {allocated} bytes allocated");

    assert_sgdisk_clean(&disk);
    assert_tables_match(&disk, &plan);
    assert_eq!(read_slots(&disk).unwrap(), (SlotAttrs::FRESH_ACTIVE, SlotAttrs::EMPTY));
    // The fresh-image state in raw bits: A = priority 1, successful; B = 0.
    assert_eq!(plan.root(Slot::A).attributes, 1 << 48 | 1 << 56);
    assert_eq!(plan.root(Slot::B).attributes, 0);
    // STATE takes the rest of the disk, up to the last MiB boundary before the backup GPT.
    assert_eq!(plan.state().offset + plan.state().size, DISK_SIZE - MIB);
}

#[test]
fn sgdisk_notices_a_damaged_table() {
    // The judge is not blind: one flipped byte in the primary entry array breaks its CRC.
    let dir = tempfile::tempdir().unwrap();
    let plan = layout(b"damaged").plan().unwrap();
    let path = dir.path().join("damaged.img");
    let file = create_image(&path, &plan).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"X", 2 * 512 + 56).unwrap(); // inside entry 1's name
    let out = run(Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(&path));
    assert!(!text(&out.stdout).contains("No problems found"), "{}", text(&out.stdout));
}

#[test]
fn every_disk_sizing_passes_sgdisk() {
    let dir = tempfile::tempdir().unwrap();
    for size in [DiskSize::State(8 * MIB), DiskSize::Both { total: 200 * MIB, state: 8 * MIB }] {
        let plan = DiskLayout { size, ..layout(b"sizes") }.plan().unwrap();
        let path = dir.path().join("sized.img");
        create_image(&path, &plan).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), plan.disk_size());
        assert_sgdisk_clean(&path);
        assert_tables_match(&path, &plan);
        assert_eq!(plan.state().size, 8 * MIB, "{size:?}");
    }
}

#[test]
fn slot_attributes_are_written_with_other_bits_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = layout(b"attrs").plan().unwrap();
    // Bits the slot contract does not own: UEFI "required" (0), systemd read-only (60) and
    // no-auto (63) on the roots, the legacy-BIOS bootable bit (2) on the ESP.
    plan.set_attributes(1, 1 << 2).unwrap();
    plan.set_attributes(2, 1 << 60 | 1).unwrap();
    plan.set_attributes(3, 1 << 63 | 1 << 60).unwrap();
    let a = SlotAttrs { priority: 2, tries: 3, successful: false };
    let b = SlotAttrs { priority: 15, tries: 15, successful: true };
    plan.set_slot_attrs(Slot::A, a);
    plan.set_slot_attrs(Slot::B, b);
    assert_eq!(plan.root(Slot::A).attributes, a.apply_to(1 << 60 | 1));
    assert_eq!(plan.root(Slot::B).attributes, b.apply_to(1 << 63 | 1 << 60));

    let (disk, plan) = build_disk(dir.path(), b"attrs", Some(plan));
    assert_sgdisk_clean(&disk);
    assert_tables_match(&disk, &plan);
    assert_eq!(read_slots(&disk).unwrap(), (a, b));
}

// ---------------------------------------------------------------------------------------------
// ESP

/// Reads the raw boot sector fields that identify the volume.
fn boot_sector(image: &Path) -> [u8; 512] {
    let mut bs = [0u8; 512];
    File::open(image).unwrap().read_exact(&mut bs).unwrap();
    bs
}

#[test]
fn esp_passes_fsck_fat_and_mtools_reads_files_back() {
    let dir = tempfile::tempdir().unwrap();
    let seed = b"esp test";
    let (disk, plan) = build_disk(dir.path(), seed, None);
    let esp = plan.esp();

    // fsck.fat has no offset option: judge an extracted copy of the partition.
    let image = dir.path().join("esp.img");
    copy_range(&disk, esp.offset, esp.size, &image);
    assert_fsck_fat_clean(&image);

    let bs = boot_sector(&image);
    assert_eq!(&bs[82..90], b"FAT32   ", "file system type in the boot sector");
    let opts = esp_options(seed);
    assert_eq!(u32::from_le_bytes(bs[67..71].try_into().unwrap()), opts.volume_id);
    assert_eq!(&bs[71..82], b"EFI-SYSTEM ");
    assert_eq!(u32::from_le_bytes(bs[28..32].try_into().unwrap()) as u64, esp.offset / 512, "hidden sectors");

    // mtools reads the files in place, through the partition offset of the whole disk.
    let mcopy = tool("mcopy", "mtools");
    let target = format!("{}@@{}", disk.display(), esp.offset);
    for (path, data) in esp_files() {
        let out_path = dir.path().join("out");
        let out = run(Command::new(&mcopy)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-n", "-o", "-i", &target])
            .arg(format!("::/{path}"))
            .arg(&out_path));
        assert!(out.status.success(), "mcopy {path}: {}", text(&out.stderr));
        assert_eq!(fs::read(&out_path).unwrap(), data, "content of {path} read back by mcopy");
        fs::remove_file(&out_path).unwrap();
    }
    // Every directory is there, the empty ones included (mdir fails on a missing one).
    for d in ["EFI", "EFI/BOOT", "berth", "berth/a", "berth/b", "loader", "loader/entries"] {
        let out = run(Command::new(tool("mdir", "mtools"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-b", "-i", &target])
            .arg(format!("::/{d}")));
        assert!(out.status.success(), "mdir {d}: {}", text(&out.stderr));
    }

    // Every entry carries the fixed time (fatfs reads the raw entries back; mtools would
    // print them in the local time zone).
    let file = File::options().read(true).write(true).open(&image).unwrap();
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new()).unwrap();
    let mut stack = vec![(String::new(), fs.root_dir())];
    let mut seen = 0;
    while let Some((prefix, dir)) = stack.pop() {
        for entry in dir.iter() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            let m = entry.modified();
            let c = entry.created();
            assert_eq!((m.date.year, m.date.month, m.date.day), (2023, 11, 14), "{path}");
            assert_eq!((m.time.hour, m.time.min, m.time.sec), (22, 13, 20), "{path}");
            assert_eq!(c, m, "{path}: created");
            assert_eq!(entry.accessed(), m.date, "{path}: accessed");
            seen += 1;
            if entry.is_dir() {
                stack.push((format!("{path}/"), entry.to_dir()));
            }
        }
    }
    assert_eq!(seen, esp_contents().len());
}

/// Runs `fsck.fat -n` on a FAT image and fails on any complaint.
fn assert_fsck_fat_clean(image: &Path) {
    let out = run(Command::new(tool("fsck.fat", "dosfstools")).args(["-n", "-v"]).arg(image));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "fsck.fat -n failed ({}):\n{report}", out.status);
    for bad in ["Dirty bit", "differ", "Free cluster summary wrong", "Reclaimed", "Orphan", "not cleanly"] {
        assert!(!report.contains(bad), "fsck.fat -n reports {bad:?}:\n{report}");
    }
}

#[test]
fn default_size_esp_passes_fsck_fat() {
    // The 256 MiB default needs 2 KiB clusters to stay FAT32.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("esp.img");
    let summary = write_esp_image(&image, DEFAULT_ESP_SIZE, &esp_contents(), &esp_options(b"default")).unwrap();
    assert_eq!(summary.cluster_size, 2048);
    assert_fsck_fat_clean(&image);
    assert_eq!(&boot_sector(&image)[82..90], b"FAT32   ");
}

#[test]
fn esp_too_small_for_fat32_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_esp_image(&dir.path().join("esp.img"), 16 * MIB, &esp_contents(), &esp_options(b"x"))
        .expect_err("a 16 MiB FAT32 volume cannot exist");
    assert!(matches!(err, EspError::TooSmall { size, .. } if size == 16 * MIB), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("16777216") && msg.contains("FAT32"), "{msg}");
}

#[test]
fn esp_contents_that_do_not_fit_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EspContents::new();
    c.add_file("EFI/BOOT/BOOTX64.EFI", vec![0u8; 40 * MIB as usize]).unwrap();
    let err = write_esp_image(&dir.path().join("esp.img"), 34 * MIB, &c, &esp_options(b"x")).unwrap_err();
    assert!(err.to_string().contains("EFI/BOOT/BOOTX64.EFI"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Layout errors

#[test]
fn layout_that_does_not_fit_names_needed_and_available_sizes() {
    let small = DiskLayout { size: DiskSize::Total(98 * MIB), ..layout(b"x") };
    let err = small.plan().unwrap_err();
    let DiskError::DoesNotFit { needed, available } = err else { panic!("{err:?}") };
    assert_eq!(available, 98 * MIB);
    // 1 MiB before the ESP, the ESP, both roots, at least 1 MiB of STATE, the backup GPT.
    assert_eq!(needed, (1 + 64 + 16 + 16 + 1) * MIB + 33 * 512);
    let msg = err.to_string();
    assert!(msg.contains(&needed.to_string()) && msg.contains(&available.to_string()), "{msg}");

    let fixed = DiskLayout { size: DiskSize::Both { total: 150 * MIB, state: 60 * MIB }, ..layout(b"x") };
    let err = fixed.plan().unwrap_err();
    assert!(matches!(err, DiskError::DoesNotFit { needed, available } if needed > available), "{err}");
    assert!(err.to_string().contains(&(150 * MIB).to_string()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// initramfs

struct Expect {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
}

fn meta(mode: u16) -> Metadata {
    Metadata::root(mode, 1_500_000_000)
}

/// A small initramfs tree with every kind of node, unusual modes, owners and a hard link.
fn initramfs_tree() -> Tree {
    let mut t = Tree::new(meta(0o755));
    for d in ["etc", "usr/bin", "usr/lib/modules", "run", "sbin"] {
        t.mkdir_all(d, &meta(0o755)).unwrap();
    }
    t.insert("tmp", Node::new(NodeKind::Dir(Default::default()), meta(0o1777))).unwrap();
    let file = |data: Vec<u8>, m: Metadata| Node::new(NodeKind::File(data.into()), m);
    t.insert("init", file(noise(10, 200_003), meta(0o755))).unwrap();
    t.insert("etc/hostname", file(b"berth\n".to_vec(), meta(0o644))).unwrap();
    t.insert("etc/empty", file(Vec::new(), meta(0o600))).unwrap();
    t.insert("usr/bin/tool", file(noise(11, 4097), meta(0o4755))).unwrap();
    t.hard_link("usr/bin/tool", "usr/bin/tool-link").unwrap();
    t.hard_link("usr/bin/tool", "sbin/tool").unwrap();
    let owned = Metadata { uid: 1000, gid: 100, ..meta(0o2640) };
    t.insert("usr/lib/modules/owned.ko", file(noise(12, 77), owned)).unwrap();
    t.insert("bin", Node::new(NodeKind::Symlink(b"usr/bin".to_vec()), meta(0o777))).unwrap();
    t.insert("sbin/init", Node::new(NodeKind::Symlink(b"../init".to_vec()), meta(0o777))).unwrap();
    t.insert("run/fifo", Node::new(NodeKind::Fifo, meta(0o640))).unwrap();
    t.mkdir_all("dev", &meta(0o755)).unwrap();
    t.insert("dev/null", Node::new(NodeKind::CharDevice { major: 1, minor: 3 }, meta(0o666))).unwrap();
    t.insert("dev/loop0", Node::new(NodeKind::BlockDevice { major: 7, minor: 0 }, meta(0o660))).unwrap();
    t
}

fn expected_entries() -> BTreeMap<&'static str, Expect> {
    let e = |mode, nlink| Expect { mode, uid: 0, gid: 0, nlink };
    BTreeMap::from([
        (".", e(0o040755, 8)), // 2 + etc usr run sbin tmp dev
        ("etc", e(0o040755, 2)),
        ("etc/hostname", e(0o100644, 1)),
        ("etc/empty", e(0o100600, 1)),
        ("usr", e(0o040755, 4)),
        ("usr/bin", e(0o040755, 2)),
        ("usr/bin/tool", e(0o104755, 3)),
        ("usr/bin/tool-link", e(0o104755, 3)),
        ("sbin", e(0o040755, 2)),
        ("sbin/tool", e(0o104755, 3)),
        ("sbin/init", e(0o120777, 1)),
        ("usr/lib", e(0o040755, 3)),
        ("usr/lib/modules", e(0o040755, 2)),
        ("usr/lib/modules/owned.ko", Expect { mode: 0o102640, uid: 1000, gid: 100, nlink: 1 }),
        ("run", e(0o040755, 2)),
        ("run/fifo", e(0o010640, 1)),
        ("tmp", e(0o041777, 2)),
        ("init", e(0o100755, 1)),
        ("bin", e(0o120777, 1)),
        ("dev", e(0o040755, 2)),
        ("dev/null", e(0o020666, 1)),
        ("dev/loop0", e(0o060660, 1)),
        ("dev/console", e(0o020600, 1)),
    ])
}

/// `ls -l`-style mode string, as `cpio -tv` prints it.
fn mode_string(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut s = String::from(kind);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    let mut b: Vec<char> = s.chars().collect();
    let special = |b: &mut Vec<char>, bit: u32, at: usize, set: char, unset: char| {
        if mode & bit != 0 {
            b[at] = if b[at] == 'x' { set } else { unset };
        }
    };
    special(&mut b, 0o4000, 3, 's', 'S');
    special(&mut b, 0o2000, 6, 's', 'S');
    special(&mut b, 0o1000, 9, 't', 'T');
    b.into_iter().collect()
}

fn write_initramfs(path: &Path, compression: Compression) {
    let opts = CpioOptions { mtime: Some(EPOCH as u32), compression };
    let file = File::create(path).unwrap();
    let mut file = write_archive(&initramfs_tree(), &opts, file).unwrap();
    file.flush().unwrap();
}

#[test]
fn initramfs_unpacks_with_zstd_and_gnu_cpio() {
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("initrd.img");
    write_initramfs(&zst, Compression::default());
    let raw = dir.path().join("initrd.cpio");
    write_initramfs(&raw, Compression::None);

    // zstd checks the frame (and its checksum) and decompresses to the plain archive.
    let zstd = tool("zstd", "zstd");
    let out = run(Command::new(&zstd).arg("-t").arg(&zst));
    assert!(out.status.success(), "zstd -t: {}", text(&out.stderr));
    let out = run(Command::new(&zstd).args(["-d", "-c"]).arg(&zst));
    assert!(out.status.success(), "zstd -d: {}", text(&out.stderr));
    assert_eq!(out.stdout, fs::read(&raw).unwrap(), "zstd -d output is the uncompressed archive");

    // Listing: every entry, its type and mode, link count, owner, device numbers, link target.
    let cpio = tool("cpio", "cpio");
    let out = run(Command::new(&cpio)
        .args(["-i", "-t", "-v", "--numeric-uid-gid", "-F"])
        .arg(&raw)
        .env("TZ", "UTC")
        .env("LC_ALL", "C"));
    assert!(out.status.success(), "cpio -itv: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    let mut listed = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (name, target) = match f.iter().position(|&w| w == "->") {
            Some(arrow) => (f[arrow - 1], Some(f[arrow + 1])),
            None => (f[f.len() - 1], None),
        };
        listed.insert(name.to_string(), (f.clone(), target.map(str::to_string)));
    }
    let expected = expected_entries();
    assert_eq!(
        listed.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "cpio -tv listing:\n{listing}"
    );
    for (name, want) in &expected {
        let (f, target) = &listed[*name];
        assert_eq!(f[0], mode_string(want.mode), "{name}: mode\n{listing}");
        assert_eq!(f[1], want.nlink.to_string(), "{name}: nlink\n{listing}");
        assert_eq!((f[2], f[3]), (want.uid.to_string().as_str(), want.gid.to_string().as_str()), "{name}: owner");
        // The date columns: every entry carries SOURCE_DATE_EPOCH (2023-11-14 22:13 UTC).
        assert!(f.windows(3).any(|w| w == ["Nov", "14", "2023"]), "{name}: mtime\n{listing}");
        match *name {
            "sbin/init" => assert_eq!(target.as_deref(), Some("../init")),
            "bin" => assert_eq!(target.as_deref(), Some("usr/bin")),
            "dev/console" => assert_eq!((f[4], f[5]), ("5,", "1"), "{listing}"),
            "dev/null" => assert_eq!((f[4], f[5]), ("1,", "3"), "{listing}"),
            "dev/loop0" => assert_eq!((f[4], f[5]), ("7,", "0"), "{listing}"),
            _ => assert_eq!(target, &None),
        }
    }

    // Extraction of everything but device nodes (mknod needs privilege): contents, modes,
    // hard links, symlinks, FIFOs and times as GNU cpio recreates them.
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let out = run(Command::new(&cpio)
        .args(["-i", "-d", "-m", "--no-absolute-filenames", "--quiet", "-F"])
        .arg(&raw)
        .args(["-f", "dev/null", "dev/console", "dev/loop0"])
        .current_dir(&root)
        .stdin(Stdio::null()));
    assert!(out.status.success(), "cpio -idm: {}", text(&out.stderr));
    let tree = initramfs_tree();
    for (path, id) in tree.walk() {
        let path = String::from_utf8(path).unwrap();
        let on_disk = root.join(&path);
        let node = tree.node(id);
        if matches!(node.kind, NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. }) {
            continue; // not extracted, checked in the listing
        }
        let m = fs::symlink_metadata(&on_disk).unwrap_or_else(|e| panic!("{path}: {e}"));
        match &node.kind {
            NodeKind::File(data) => {
                assert!(m.is_file(), "{path}");
                assert_eq!(fs::read(&on_disk).unwrap(), data.read_all().unwrap(), "{path}: content");
                assert_eq!(m.permissions().mode() & 0o7777, u32::from(node.meta.mode), "{path}: mode");
                assert_eq!(m.mtime(), EPOCH, "{path}: mtime");
            }
            NodeKind::Symlink(target) => {
                assert_eq!(fs::read_link(&on_disk).unwrap().as_os_str().as_encoded_bytes(), target, "{path}");
            }
            NodeKind::Dir(_) => assert!(m.is_dir(), "{path}"),
            NodeKind::Fifo => assert!(m.file_type().is_fifo(), "{path}"),
            _ => {}
        }
    }
    let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/tool"), ino("usr/bin/tool-link"), "hard link kept");
    assert_eq!(ino("usr/bin/tool"), ino("sbin/tool"), "hard link kept");
    assert_eq!(fs::metadata(root.join("usr/bin/tool")).unwrap().nlink(), 3);
}

// ---------------------------------------------------------------------------------------------
// Reproducibility

/// Every output of one build, by name → SHA-256.
fn build_all(dir: &Path, seed: &[u8]) -> BTreeMap<&'static str, String> {
    let (disk, _) = build_disk(dir, seed, None);
    let esp = dir.join("esp.img");
    write_esp_image(&esp, ESP_SIZE, &esp_contents(), &esp_options(seed)).unwrap();
    let initrd = dir.join("initrd.img");
    write_initramfs(&initrd, Compression::default());
    BTreeMap::from([("disk", sha256(&disk)), ("esp", sha256(&esp)), ("initrd", sha256(&initrd))])
}

#[test]
fn outputs_are_reproducible() {
    let (one, two, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = build_all(one.path(), b"same seed");
    let second = build_all(two.path(), b"same seed");
    assert_eq!(first, second, "same inputs must give byte-identical outputs");

    // The seed is what tells images apart: another seed changes the GUIDs and volume id.
    let third = build_all(other.path(), b"another seed");
    assert_ne!(first["disk"], third["disk"]);
    assert_ne!(first["esp"], third["esp"]);
    assert_eq!(first["initrd"], third["initrd"]);
}
