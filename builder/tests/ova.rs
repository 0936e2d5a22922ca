//! The VirtualBox artifacts (src/vmdk.rs, src/ovf.rs, src/export/ova.rs) judged by tools berth
//! did not write: `qemu-img check` and `qemu-img compare` for the streamOptimized VMDK, GNU
//! `tar tvf` for the OVA's member order, `sha256sum` for every manifest line, `xmllint` for the
//! OVF (well-formed, and XPath for EFI, VirtioSCSI and virtio-net). Every artifact is written
//! twice and compared byte for byte. A missing judge fails the test, naming its package.

use std::fs::{self, File};
use std::io::Seek;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_builder::disk::{DiskLayout, DiskSize, create_image};
use berth_builder::esp::{EspContents, EspOptions, write_esp};
use berth_builder::export::ova::{BOX_DISK, OvaParams, vagrant_virtualbox_disk, write_ova};
use berth_builder::vmdk::{self, VmdkError, VmdkOptions};

mod common;
use common::{noise, ok, tool};

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000;

/// Text-like, compressible filler.
fn words(seed: u64, len: usize) -> Vec<u8> {
    let w = ["berth ", "grain ", "stream ", "marker ", "table\n", "vmdk "];
    noise(seed, len / 4 + 1).iter().flat_map(|b| w[*b as usize % w.len()].bytes()).take(len).collect()
}

/// A sparse raw file of `len` bytes with `chunks` written at their offsets.
fn raw_file(path: &Path, len: u64, chunks: &[(u64, Vec<u8>)]) -> File {
    let f = File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    f.set_len(len).unwrap();
    for (at, data) in chunks {
        f.write_all_at(data, *at).unwrap();
    }
    f.sync_all().unwrap();
    f
}

fn qemu_img_judges(raw: &Path, vmdk: &Path) {
    let qemu_img = tool("qemu-img", "qemu-utils");
    let check = ok(Command::new(&qemu_img).args(["check", "-f", "vmdk"]).arg(vmdk));
    assert!(check.contains("No errors were found"), "qemu-img check:\n{check}");
    let info = ok(Command::new(&qemu_img).args(["info", "-f", "vmdk", "--output=json"]).arg(vmdk));
    let len = fs::metadata(raw).unwrap().len();
    assert!(info.contains(&format!("\"virtual-size\": {len}")), "{info}");
    assert!(info.contains("\"create-type\": \"streamOptimized\""), "{info}");
    assert!(info.contains("\"compressed\": true"), "{info}");
    let cmp = ok(Command::new(&qemu_img).args(["compare", "-f", "raw", "-F", "vmdk"]).arg(raw).arg(vmdk));
    assert!(cmp.contains("Images are identical"), "qemu-img compare:\n{cmp}");
    // And converted back, byte for byte.
    let back = vmdk.with_extension("back.raw");
    ok(Command::new(&qemu_img).args(["convert", "-f", "vmdk", "-O", "raw"]).arg(vmdk).arg(&back));
    ok(Command::new("cmp").arg(raw).arg(&back));
    fs::remove_file(back).unwrap();
}

fn write_vmdk(raw: &File, len: u64, path: &Path, threads: usize) -> vmdk::VmdkInfo {
    let mut out = File::create(path).unwrap();
    let mut opts = VmdkOptions::new(path.file_name().unwrap().to_str().unwrap());
    opts.threads = threads;
    let calls = std::cell::Cell::new(0u64);
    let last = std::cell::Cell::new(0u64);
    let info = vmdk::write(raw, len, &mut out, &opts, &|done| {
        assert!(done >= last.get() && done <= len, "progress {done} after {} of {len}", last.get());
        last.set(done);
        calls.set(calls.get() + 1);
    })
    .unwrap();
    assert_eq!(last.get(), len, "progress ends at the disk's length");
    assert!(calls.get() >= 1);
    assert_eq!(info.bytes, fs::metadata(path).unwrap().len());
    info
}

#[test]
fn vmdk_with_holes_zero_grains_and_a_partial_last_grain_reads_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    // 70 MiB + 5 sectors: three grain tables (the last one partial), the last grain half full.
    let len = 70 * MIB + 5 * 512;
    let raw_path = dir.path().join("disk.raw");
    let raw = raw_file(
        &raw_path,
        len,
        &[
            (0, words(1, 1_000_000)),              // compressible, crossing grains
            (3 * MIB + 100, noise(2, 200_000)),    // incompressible, unaligned
            (10 * MIB, vec![0; 4 * MIB as usize]), // allocated zeros: skipped like holes
            (32 * MIB - 700, noise(3, 1400)),      // straddles the first grain table's end
            (40 * MIB, vec![0xff; 65536]),         // one exact grain
            (len - 1024, b"the last bytes of the disk.........".to_vec()),
        ],
    );
    let vmdk_path = dir.path().join("disk.vmdk");
    let info = write_vmdk(&raw, len, &vmdk_path, 2);
    assert_eq!(info.capacity, len);
    // Only the grains with data are stored.
    let stored_grains = info.populated / 65536;
    assert!((22..=26).contains(&stored_grains), "{stored_grains} grains stored: {info:?}");
    qemu_img_judges(&raw_path, &vmdk_path);

    // Same content, same IDs, whatever the number of threads; and the same bytes under the same
    // name (the extent name is in the descriptor).
    assert_eq!(write_vmdk(&raw, len, &dir.path().join("again.vmdk"), 1), info);
    let same_name_dir = dir.path().join("b");
    fs::create_dir(&same_name_dir).unwrap();
    let second = same_name_dir.join("disk.vmdk");
    write_vmdk(&raw, len, &second, 1);
    assert!(fs::read(&vmdk_path).unwrap() == fs::read(&second).unwrap(), "two runs differ");
}

#[test]
fn vmdk_of_an_all_hole_disk_and_of_dense_data() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = dir.path().join("empty.raw");
    let empty = raw_file(&empty_path, 8 * MIB, &[]);
    let vmdk_path = dir.path().join("empty.vmdk");
    let info = write_vmdk(&empty, 8 * MIB, &vmdk_path, 2);
    assert_eq!(info.populated, 0);
    qemu_img_judges(&empty_path, &vmdk_path);

    // Fully written, incompressible: every grain stored, grain records larger than a grain.
    let dense_path = dir.path().join("dense.raw");
    let dense = raw_file(&dense_path, 3 * MIB, &[(0, noise(9, 3 * MIB as usize))]);
    let vmdk_path = dir.path().join("dense.vmdk");
    let info = write_vmdk(&dense, 3 * MIB, &vmdk_path, 2);
    assert_eq!(info.populated, 3 * MIB);
    qemu_img_judges(&dense_path, &vmdk_path);
}

#[test]
fn vmdk_refuses_what_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_file(&dir.path().join("odd.raw"), 1000, &[]);
    let mut out = File::create(dir.path().join("x.vmdk")).unwrap();
    let err = vmdk::write(&raw, 1000, &mut out, &VmdkOptions::new("x.vmdk"), &|_| {}).unwrap_err();
    assert!(matches!(err, VmdkError::Unaligned(1000)), "{err}");
    let err = vmdk::write(&raw, 0, &mut out, &VmdkOptions::new("x.vmdk"), &|_| {}).unwrap_err();
    assert!(matches!(err, VmdkError::Empty), "{err}");
    let err = vmdk::write(&raw, 512, &mut out, &VmdkOptions::new("a\"b"), &|_| {}).unwrap_err();
    assert!(matches!(err, VmdkError::BadName(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// OVA

/// A small Berth disk: the GPT and a populated ESP, some data in ROOT-A, the rest holes.
fn berth_disk(dir: &Path) -> (PathBuf, u64) {
    let layout = DiskLayout {
        esp_size: 64 * MIB,
        root_size: 16 * MIB,
        size: DiskSize::Total(150 * MIB),
        seed: b"ova-test".to_vec(),
    };
    let plan = layout.plan().unwrap();
    let path = dir.join("berth.img");
    let file = create_image(&path, &plan).unwrap();
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", noise(1, 150_000)).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0\n".to_vec()).unwrap();
    esp.add_file("berth/platform", b"virtualbox\n".to_vec()).unwrap();
    let esp_part = plan.esp();
    write_esp(&file, esp_part.offset, esp_part.size, &esp, &EspOptions::from_seed(b"ova-test", "EFI-SYSTEM", EPOCH))
        .unwrap();
    let root = &plan.partitions()[1];
    file.write_all_at(&words(5, 3 * MIB as usize), root.offset).unwrap();
    file.sync_all().unwrap();
    (path, plan.disk_size())
}

/// `xmllint --xpath EXPR file` printed value.
fn xpath(ovf: &Path, expr: &str) -> String {
    ok(Command::new(tool("xmllint", "libxml2-utils")).arg("--xpath").arg(expr).arg(ovf)).trim().to_string()
}

fn judge_ovf(ovf: &Path, disk_file: &str) {
    ok(Command::new(tool("xmllint", "libxml2-utils")).arg("--noout").arg(ovf));
    let l = |name: &str| format!("*[local-name()='{name}']");
    assert_eq!(xpath(ovf, &format!("string(//{}/{}/@type)", l("Hardware"), l("Firmware"))), "EFI");
    assert_eq!(xpath(ovf, &format!("string(//{}/@type)", l("Chipset"))), "ICH9");
    // Generic OVF: a VirtioSCSI controller (resource type 20), the disk on it, a virtio-net NIC.
    let item = |rt: &str, sub: &str| {
        format!("//{}[{}='{rt}'][{}='{sub}']", l("Item"), l("ResourceType"), l("ResourceSubType"))
    };
    assert_eq!(xpath(ovf, &format!("count({})", item("20", "VirtioSCSI"))), "1");
    let controller = xpath(ovf, &format!("string({}/{})", item("20", "VirtioSCSI"), l("InstanceID")));
    assert_eq!(xpath(ovf, &format!("string(//{}[{}='17']/{})", l("Item"), l("ResourceType"), l("Parent"))), controller);
    assert_eq!(xpath(ovf, &format!("count({})", item("10", "virtio-net"))), "1");
    // VirtualBox's own section: the same devices, the controller bootable, the disk attached.
    let sc = format!("//{}[@type='VirtioSCSI'][@Bootable='true']", l("StorageController"));
    assert_eq!(xpath(ovf, &format!("count({sc})")), "1");
    let image = xpath(ovf, &format!("string({sc}/{}/{}/@uuid)", l("AttachedDevice"), l("Image")));
    let disk_uuid = xpath(ovf, &format!("string(//{}/@*[local-name()='uuid'])", l("Disk")));
    assert_eq!(image, format!("{{{disk_uuid}}}"));
    let adapter = format!("//{}/{}[@type='virtio']", l("Network"), l("Adapter"));
    assert_eq!(xpath(ovf, &format!("count({adapter})")), "1");
    let mac = xpath(ovf, &format!("string({adapter}/@MACAddress)"));
    assert!(mac.starts_with("080027") && mac.len() == 12, "{mac}");
    assert_eq!(xpath(ovf, &format!("string(//{}/{}/@*[local-name()='href'])", l("References"), l("File"))), disk_file);
    assert_eq!(xpath(ovf, &format!("string(//{}/@localOrUTC)", l("RTC"))), "UTC");
    assert!(xpath(ovf, &format!("string(//{}/@*[local-name()='format'])", l("Disk"))).ends_with("#streamOptimized"));
}

#[test]
fn ova_of_a_berth_disk_passes_the_judges_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, len) = berth_disk(dir.path());
    let raw = File::open(&raw_path).unwrap();
    let mut p = OvaParams::new("berth-test", EPOCH);
    p.work_dir = dir.path().to_path_buf();

    let ova = dir.path().join("berth-test.ova");
    let info = write_ova(&raw, len, &mut File::create(&ova).unwrap(), &p, &|_| {}).unwrap();
    assert_eq!(info.bytes, fs::metadata(&ova).unwrap().len());
    let again = dir.path().join("again.ova");
    write_ova(&raw, len, &mut File::create(&again).unwrap(), &p, &|_| {}).unwrap();
    assert!(fs::read(&ova).unwrap() == fs::read(&again).unwrap(), "two OVAs of one disk differ");
    // Nothing left behind in the staging directory.
    let mut left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["again.ova", "berth-test.ova", "berth.img"]);

    // Member order: descriptor, manifest, disk; mtime the epoch, owned by root.
    let listing = ok(Command::new(tool("tar", "tar")).args(["--utc", "-tvf"]).arg(&ova));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    for (line, name) in lines.iter().zip(["berth-test.ovf", "berth-test.mf", "berth-test-disk1.vmdk"]) {
        assert!(line.ends_with(&format!(" {name}")), "{listing}");
        assert!(line.starts_with("-rw-r--r-- root/root"), "{listing}");
        assert!(line.contains("2023-11-14 22:13"), "{listing}");
    }

    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    ok(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
    // Every manifest line recomputed by sha256sum, and every file listed.
    let mf = fs::read_to_string(x.join("berth-test.mf")).unwrap();
    let mf_lines: Vec<&str> = mf.lines().collect();
    assert_eq!(mf_lines.len(), 2, "{mf}");
    for (line, name) in mf_lines.iter().zip(["berth-test.ovf", "berth-test-disk1.vmdk"]) {
        let sum = ok(Command::new(tool("sha256sum", "coreutils")).arg(name).current_dir(&x));
        let hex = sum.split_whitespace().next().unwrap();
        assert_eq!(*line, format!("SHA256({name})= {hex}"));
    }
    judge_ovf(&x.join("berth-test.ovf"), "berth-test-disk1.vmdk");
    let ovf = fs::read_to_string(x.join("berth-test.ovf")).unwrap();
    let vmdk_len = fs::metadata(x.join("berth-test-disk1.vmdk")).unwrap().len();
    assert!(ovf.contains(&format!("ovf:size=\"{vmdk_len}\"")), "{ovf}");
    assert!(ovf.contains(&format!("ovf:capacity=\"{len}\"")), "{ovf}");
    assert!(ovf.contains("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>"));
    qemu_img_judges(&raw_path, &x.join("berth-test-disk1.vmdk"));
}

#[test]
fn vagrant_virtualbox_disk_names_its_vmdk_and_matches_the_raw() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, len) = berth_disk(dir.path());
    let raw = File::open(&raw_path).unwrap();
    let mut p = OvaParams::new("berth-box", EPOCH);
    p.work_dir = dir.path().to_path_buf();
    let mut disk = vagrant_virtualbox_disk(&raw, len, &p, &|_| {}).unwrap();
    let ovf = dir.path().join("box.ovf");
    fs::write(&ovf, &disk.ovf).unwrap();
    judge_ovf(&ovf, BOX_DISK);
    assert!(disk.ovf.contains(&format!("MACAddress=\"{}\"", disk.base_mac)));
    let vmdk_path = dir.path().join(BOX_DISK);
    assert_eq!(disk.disk.stream_position().unwrap(), 0);
    let copied = std::io::copy(&mut disk.disk, &mut File::create(&vmdk_path).unwrap()).unwrap();
    assert_eq!(copied, disk.disk_len);
    qemu_img_judges(&raw_path, &vmdk_path);
    // The same disk twice: the same OVF (IDs derived, never random).
    let second = vagrant_virtualbox_disk(&raw, len, &p, &|_| {}).unwrap();
    assert_eq!(second.ovf, disk.ovf);
}

#[test]
fn ova_refuses_a_name_that_cannot_name_files() {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_file(&dir.path().join("r.raw"), MIB, &[]);
    let mut p = OvaParams::new("a/b", EPOCH);
    p.work_dir = dir.path().to_path_buf();
    let err = write_ova(&raw, MIB, &mut File::create(dir.path().join("x.ova")).unwrap(), &p, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("\"a/b\""), "{err}");
}
