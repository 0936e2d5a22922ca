//! `berth export` for the clouds (docs/platforms.md), judged by tools Berth did not write, on a
//! small disk laid out as `berth build` lays it out but 5 KiB short of a whole MiB, so that every
//! cloud artifact grows it (Azure's by less than a GPT copy: the old and the new backup overlap):
//!
//! - aws: `<name>.aws.raw` is a whole GiB; `sgdisk -v` finds no problem; outside the ESP it is
//!   the metal export grown by `truncate` and fixed by GPT fdisk (`sgdisk -e`, which moves the
//!   backup GPT to the end); its ESP passes `fsck.fat -n` and says `aws` (mtools);
//! - gce: `gzip -t`; GNU tar lists exactly one member, `disk.raw`, a whole GiB, stored sparse (its
//!   header's typeflag is `S` with the oldgnu magic, and `tar -R` finds the archive's end right
//!   after the few data blocks); `tar -xSf` gives a sparse file that is the aws disk but for the
//!   ESP, which says `gce`; `sgdisk -v` on it;
//! - azure: `qemu-img info -f vpc` gives the exact virtual size, a whole MiB; the file is that +
//!   512 bytes; `qemu-img compare -f vpc -F raw` finds the VHD equal to its raw part, which is the
//!   metal export padded and fixed by `sgdisk -e` outside the ESP, and whose ESP says `azure`;
//! - the same disk exported twice (once from a copy without holes) gives the same bytes;
//! - a file that is not a Berth disk: a one-line error and nothing in the output directory.

use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_builder::disk::{DiskLayout, DiskPlan, DiskSize, create_image, write_gpt};
use berth_builder::esp::{EspContents, EspOptions, write_esp};
use berth_builder::platform::PLATFORM_FILE;
use berth_slot::Slot;

mod common;
use common::{EPOCH, ok, pattern, run, text, tool};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The filler's runs (common::pattern): every third 64 KiB zeros, so the copies have holes.
const ZERO_EVERY: usize = 65536;
/// The small disk's size: 81 MiB of partitions and GPT, then 5 KiB short of the next MiB.
const DISK_SIZE: u64 = 82 * MIB - 5 * 1024;

/// The small disk: GPT, an ESP with bootmgr and slot A's kernel files (stamped with
/// [`EPOCH`]), ROOT-A filled with a pattern; 8 MiB of STATE.
fn small_disk(dir: &Path, name: &str) -> (PathBuf, DiskPlan) {
    std::fs::create_dir_all(dir).unwrap();
    let disk = dir.join(format!("{name}.img"));
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", pattern(70_000, 1, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/vmlinuz", pattern(300_000, 2, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/initrd.img", pattern(200_000, 3, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0\n".to_vec()).unwrap();
    esp.add_file(PLATFORM_FILE, b"metal\n".to_vec()).unwrap();
    esp.add_dir(Slot::B.esp_dir()).unwrap();
    let mut layout = DiskLayout::new(DiskSize::Both { total: DISK_SIZE, state: 8 * MIB }, b"cloud export test");
    layout.esp_size = 40 * MIB;
    layout.root_size = 16 * MIB;
    let plan = layout.plan().unwrap();
    let f = create_image(&disk, &plan).unwrap();
    write_gpt(&f, &plan).unwrap();
    let p = plan.esp();
    write_esp(&f, p.offset, p.size, &esp, &EspOptions::from_seed(b"t", "EFI-SYSTEM", EPOCH)).unwrap();
    let r = plan.root(Slot::A);
    f.write_all_at(&pattern(r.size as usize, 4, ZERO_EVERY), r.offset).unwrap();
    assert_eq!(f.metadata().unwrap().len(), DISK_SIZE);
    (disk, plan)
}

/// `berth export` with these platforms, SOURCE_DATE_EPOCH unset (the epoch comes from the ESP).
fn export(disk: &Path, platforms: &str, out: &Path) -> Output {
    Command::new(BERTH)
        .arg("export")
        .arg(disk)
        .args(["--platform", platforms, "--out"])
        .arg(out)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("BERTH_PROGRESS")
        .output()
        .unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Bytes allocated to a file (a sparse file's holes take none).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The data regions of a file by `SEEK_DATA`/`SEEK_HOLE` (holes read as zeros): the whole file
/// where the filesystem cannot say.
fn data_regions(f: &std::fs::File, size: u64) -> Vec<Range<u64>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(data) = seek(f, SeekFrom::Data(pos)) else { break };
        let hole = seek(f, SeekFrom::Hole(data)).unwrap_or(size).min(size);
        out.push(data..hole);
        pos = hole.max(data + 1);
    }
    if out.is_empty() && seek(f, SeekFrom::Data(0)) != Err(rustix::io::Errno::NXIO) {
        out.push(0..size);
    }
    out
}

/// Asserts `a` and `b` are the same length and the same bytes outside `skip`. Only where either
/// file has data is read (the whole-GiB disks are mostly holes, which read as zeros in both).
fn same_outside(a: &Path, b: &Path, skip: &[Range<u64>], what: &str) {
    let size = len(a);
    assert_eq!(size, len(b), "{what}: lengths");
    let (fa, fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let mut ranges = data_regions(&fa, size);
    ranges.extend(data_regions(&fb, size));
    ranges.sort_by_key(|r| r.start);
    let chunk = 8 * MIB;
    let (mut x, mut y) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut done = 0; // everything before this was compared
    for r in ranges {
        let mut at = r.start.max(done);
        while at < r.end {
            let n = (r.end - at).min(chunk) as usize;
            fa.read_exact_at(&mut x[..n], at).unwrap();
            fb.read_exact_at(&mut y[..n], at).unwrap();
            if x[..n] != y[..n] {
                let i = (0..n).find(|&i| x[i] != y[i] && !skip.iter().any(|r| r.contains(&(at + i as u64))));
                assert!(i.is_none(), "{what}: first difference outside {skip:?} at byte {}", at + i.unwrap() as u64);
            }
            at += n as u64;
        }
        done = done.max(r.end);
    }
}

fn same_bytes(a: &Path, b: &Path, what: &str) {
    same_outside(a, b, &[], what);
}

/// `sgdisk -v` (GPT fdisk) finds nothing wrong with the disk's GPT or its protective MBR.
fn sgdisk_clean(disk: &Path) {
    let out = ok(Command::new(tool("sgdisk", "gdisk")).arg("-v").arg(disk));
    assert!(out.contains("No problems found"), "sgdisk -v {}: {out}", disk.display());
    for word in ["Warning", "Problem", "Caution", "mismatch"] {
        assert!(!out.contains(word), "sgdisk -v {}: {out}", disk.display());
    }
}

/// A copy of `src` grown to `size` and fixed up by `sgdisk -e` (moves the backup GPT to the end):
/// the disk as GPT fdisk would make it.
fn grown_by_sgdisk(src: &Path, size: u64, to: &Path) -> PathBuf {
    ok(Command::new("cp").arg("--sparse=always").arg(src).arg(to));
    ok(Command::new("truncate").arg("-s").arg(size.to_string()).arg(to));
    ok(Command::new(tool("sgdisk", "gdisk")).arg("-e").arg(to));
    to.to_path_buf()
}

/// The ESP of a raw disk as a file of its own: `fsck.fat -n` finds it clean, and its platform
/// word (read by mtools) is returned.
fn esp_word(disk: &Path, plan: &DiskPlan, scratch: &Path) -> String {
    let p = plan.esp();
    let mut buf = vec![0u8; p.size as usize];
    std::fs::File::open(disk).unwrap().read_exact_at(&mut buf, p.offset).unwrap();
    std::fs::write(scratch, buf).unwrap();
    let fsck = run(Command::new(tool("fsck.fat", "dosfstools")).arg("-n").arg(scratch));
    assert!(fsck.status.success(), "fsck.fat -n: {}{}", text(&fsck.stdout), text(&fsck.stderr));
    ok(Command::new(tool("mtype", "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(scratch)
        .arg(format!("::{PLATFORM_FILE}")))
}

#[test]
fn aws_gce_and_azure_artifacts() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (disk, plan) = small_disk(&d.join("in"), "host");
    let out_dir = d.join("out");
    let out = export(&disk, "metal,aws,gce,azure", &out_dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = started.elapsed();
    assert_eq!(entries(&out_dir), ["host.aws.raw", "host.azure.vhd", "host.gce.tar.gz", "host.img"]);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    for (line, platform) in lines.iter().zip(["metal", "aws", "gce", "azure"]) {
        assert!(line.starts_with(&format!("{platform}: ")), "{line}");
    }
    let metal = out_dir.join("host.img");
    let esp = plan.esp();
    let esp_range = esp.offset..esp.offset + esp.size;
    // Outside the ESP and the protective MBR's ending CHS address: the builder writes 0xFFFFFF
    // ("not representable", as the gpt crate does), GPT fdisk computes one. The MBR's LBA count
    // (bytes 458..462) is compared: it must cover the grown disk.
    // And the old backup GPT's sectors, which GPT fdisk leaves behind and berth erases.
    let old_backup = DISK_SIZE - 33 * 512..DISK_SIZE;
    let skip = [451..454, esp_range.clone(), old_backup.clone()];
    // Before the new backup copy (the last 33 sectors), the old one's sectors are zeros.
    let erased = |disk: &Path, size: u64| {
        let to = old_backup.end.min(size - 33 * 512);
        let mut buf = vec![1u8; (to - old_backup.start) as usize];
        std::fs::File::open(disk).unwrap().read_exact_at(&mut buf, old_backup.start).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "{}: the old backup GPT is still there", disk.display());
    };

    // aws: a whole GiB, clean GPT, GPT fdisk's own growing of the metal disk but for the ESP.
    let aws = out_dir.join("host.aws.raw");
    assert_eq!(len(&aws), GIB);
    assert!(allocated(&aws) < 64 * MIB, "the aws disk is sparse ({} bytes allocated)", allocated(&aws));
    sgdisk_clean(&aws);
    let expected_aws = grown_by_sgdisk(&metal, GIB, &d.join("expected-aws.raw"));
    sgdisk_clean(&expected_aws);
    same_outside(&aws, &expected_aws, &skip, "aws vs metal grown by sgdisk -e");
    erased(&aws, GIB);
    assert_eq!(esp_word(&aws, &plan, &d.join("aws.esp")), "aws\n");

    // gce: gzip, one sparse member disk.raw of a whole GiB, extracting to the aws disk's bytes.
    let gce = out_dir.join("host.gce.tar.gz");
    ok(Command::new("gzip").arg("-t").arg(&gce));
    let tar = d.join("gce.tar");
    let gunzip = run(Command::new("gzip").arg("-dc").arg(&gce));
    assert!(gunzip.status.success());
    std::fs::write(&tar, &gunzip.stdout).unwrap();
    let h = &gunzip.stdout[..512];
    assert_eq!(&h[..9], b"disk.raw\0");
    assert_eq!(h[156], b'S', "typeflag: GNU sparse");
    assert_eq!(&h[257..265], b"ustar  \0", "the oldgnu magic");
    let listing = ok(Command::new("tar").args(["--utc", "-R", "-tvf"]).arg(&tar));
    let rows: Vec<&str> = listing.lines().collect();
    assert_eq!(rows.len(), 2, "one member, then the end: {listing}");
    assert_eq!(rows[0], format!("block 0: -rw-r--r-- root/root {GIB} 2023-11-14 22:13 disk.raw"), "{listing}");
    let end_block: u64 =
        rows[1].strip_prefix("block ").and_then(|r| r.split(':').next()).and_then(|b| b.parse().ok()).unwrap();
    assert!(rows[1].ends_with("** Block of NULs **"), "{listing}");
    // Stored: the map's blocks and the data, a fraction of the GiB GNU tar lists.
    assert!(end_block * 512 < 64 * MIB, "{listing}");
    let x = d.join("x");
    std::fs::create_dir(&x).unwrap();
    ok(Command::new("tar").arg("-xSf").arg(&tar).arg("-C").arg(&x));
    assert_eq!(entries(&x), ["disk.raw"]);
    let disk_raw = x.join("disk.raw");
    assert_eq!(len(&disk_raw), GIB);
    assert!(allocated(&disk_raw) < 64 * MIB, "tar -xS left holes ({} bytes allocated)", allocated(&disk_raw));
    sgdisk_clean(&disk_raw);
    same_outside(&disk_raw, &aws, std::slice::from_ref(&esp_range), "gce disk.raw vs aws");
    assert_eq!(esp_word(&disk_raw, &plan, &d.join("gce.esp")), "gce\n");

    // azure: a fixed VHD of the disk padded to a whole MiB, as QEMU reads it.
    let vhd = out_dir.join("host.azure.vhd");
    let size = 82 * MIB;
    assert_eq!(len(&vhd), size + 512);
    let info = run(Command::new(tool("qemu-img", "qemu-utils")).args(["info", "-f", "vpc", "--output=json"]).arg(&vhd));
    // QEMU warns on stderr about a footer whose checksum is wrong.
    assert!(info.status.success() && info.stderr.is_empty(), "qemu-img info: {}", text(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["virtual-size"], size, "{info}");
    let vhd_raw = d.join("azure.raw");
    ok(Command::new("cp").arg("--sparse=always").arg(&vhd).arg(&vhd_raw));
    ok(Command::new("truncate").arg("-s").arg(size.to_string()).arg(&vhd_raw));
    let cmp = ok(Command::new(tool("qemu-img", "qemu-utils"))
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(&vhd)
        .arg(&vhd_raw));
    assert!(cmp.contains("Images are identical"), "{cmp}");
    sgdisk_clean(&vhd_raw);
    let expected_azure = grown_by_sgdisk(&metal, size, &d.join("expected-azure.raw"));
    same_outside(&vhd_raw, &expected_azure, &skip, "azure vs metal grown by sgdisk -e");
    erased(&vhd_raw, size);
    assert_eq!(esp_word(&vhd_raw, &plan, &d.join("azure.esp")), "azure\n");
    let footer = &std::fs::read(&vhd).unwrap()[size as usize..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(footer[60..64], [0, 0, 0, 2], "disk type: fixed");
    assert_eq!(u32::from_be_bytes(footer[24..28].try_into().unwrap()), (EPOCH - 946_684_800) as u32);
    // The footer QEMU writes for the same raw disk (`force_size`, the Azure conversion) has the
    // same fields but its timestamp, its creator, its checksum and its random id.
    let qemu_vhd = d.join("qemu.vhd");
    ok(Command::new(tool("qemu-img", "qemu-utils"))
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size"])
        .arg(&vhd_raw)
        .arg(&qemu_vhd));
    assert_eq!(len(&qemu_vhd), size + 512);
    let theirs = &std::fs::read(&qemu_vhd).unwrap()[size as usize..];
    assert_eq!(&footer[28..32], b"brth", "creator");
    for field in [0..24, 40..64, 84..512] {
        assert_eq!(footer[field.clone()], theirs[field.clone()], "footer bytes {field:?}");
    }

    eprintln!(
        "export of metal,aws,gce,azure: {exported:?}; gce tarball {} bytes, aws disk {} bytes allocated; all checks {:?}",
        len(&gce),
        allocated(&aws),
        started.elapsed()
    );
}

#[test]
fn same_disk_same_bytes_however_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (disk, _) = small_disk(&d.join("in"), "host");
    // The same bytes without a single hole: the artifacts may not depend on how the disk is stored.
    std::fs::create_dir(d.join("dense")).unwrap();
    let dense = d.join("dense/host.img");
    std::fs::write(&dense, std::fs::read(&disk).unwrap()).unwrap();
    assert!(allocated(&dense) >= DISK_SIZE && allocated(&disk) < DISK_SIZE);
    for (input, run) in [(&disk, "a"), (&dense, "b")] {
        let out = export(input, "aws,gce,azure", &d.join(run));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for file in ["host.aws.raw", "host.gce.tar.gz", "host.azure.vhd"] {
        same_bytes(&d.join("a").join(file), &d.join("b").join(file), file);
    }
}

#[test]
fn not_a_berth_disk_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, pattern(3 << 20, 9, ZERO_EVERY)).unwrap();
    let out = export(&junk, "aws,gce,azure", &out_dir);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("berth: error: {}: not a Berth disk", junk.display())), "{err}");
    assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));
}
