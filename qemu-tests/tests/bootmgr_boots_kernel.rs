//! bootmgr end to end, with the firmware, the kernel and `sgdisk` as judges: a minimal image
//! built by `berth build` boots under OVMF; bootmgr picks a slot from the GPT attributes, spends
//! a trial's try on disk *before* the kernel starts, and starts the slot's kernel with the right
//! command line (the kernel echoes it) and the initrd (berth-init, from the initramfs, runs).
//!
//! The image is built once and copied for each test, so the tests run two at a time, one
//! single-vCPU QEMU on each of the CI machine's two cores.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_builder::disk::read_slots;
use berth_qemu_tests::{Boot, Machine};
use berth_slot::gpt::{Gpt, Header};
use berth_slot::{Slot, SlotAttrs};
use common::{BOOT_TIMEOUT, Image, line_with, minimal_template, mtools, put_cmdline};

const SECTOR: u64 = 512;

fn sgdisk_verify(disk: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().expect("running sgdisk (install gdisk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("No problems found"), "sgdisk -v:\n{text}");
}

/// Boots until the kernel has started init from the initrd; returns the console.
fn boot_to_init(disk: &Path) -> String {
    let started = Instant::now();
    let mut m = Machine::start(&Boot { disk, format: "raw", memory_mib: 768 }).unwrap();
    let console = m.wait_for("berth-init 0.1.0", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("booted to berth-init in {:.1} s", started.elapsed().as_secs_f64());
    drop(m); // kills QEMU
    console
}

#[test]
fn bootmgr_boots_slot_a_kernel_with_initrd() {
    let image = minimal_template().copy();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let partuuid = image.partuuid(2).to_string();

    let console = boot_to_init(&image.disk);
    let decision = line_with(&console, "berth-bootmgr: -> booting");
    assert!(decision.contains("booting A (normal)"), "{decision}");
    assert!(console.contains("berth-bootmgr: slot A: priority 1, tries 0, successful"), "{console}");
    let kernel = line_with(&console, "Kernel command line:");
    assert!(kernel.contains("console=ttyS0"), "{kernel}");
    assert!(kernel.contains(&format!("root=PARTUUID={partuuid}")), "{kernel}");
    assert!(kernel.contains("berth.slot=a"), "{kernel}");
    // The initrd came through LoadFile2: the kernel unpacked it and ran its /init.
    assert!(console.contains("EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"), "{console}");
    assert!(console.contains("Run /init as init process"), "{console}");
    assert!(!console.contains("VFS: Cannot open root device"), "{console}");
    // Nothing was written on a normal boot.
    let (a, b) = read_slots(&image.disk).unwrap();
    assert_eq!((a, b), (SlotAttrs::FRESH_ACTIVE, SlotAttrs::EMPTY));
}

/// Sets a slot's attributes through the GPT module (backup first, then primary).
fn set_slot(disk: &Path, slot: Slot, attrs: SlotAttrs) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(disk).unwrap();
    let read = |lba: u64, len: usize| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, lba * SECTOR).unwrap();
        b
    };
    let header = read(1, 512);
    let h = Header::parse(&header).unwrap();
    let mut gpt = Gpt::parse(&header, &read(h.entries_lba, h.entries_bytes())).unwrap();
    gpt.check_backup(&read(h.alternate_lba, 512)).unwrap();
    let slots = gpt.slots().unwrap().with(slot, attrs);
    let out = gpt.with_slots(slots).unwrap().encode();
    file.write_all_at(&out.entries, out.backup_entries_lba * SECTOR).unwrap();
    file.write_all_at(&out.backup_header, out.backup_header_lba * SECTOR).unwrap();
    file.write_all_at(&out.entries, out.primary_entries_lba * SECTOR).unwrap();
    file.write_all_at(&out.primary_header, out.primary_header_lba * SECTOR).unwrap();
    file.sync_all().unwrap();
}

/// Builds an image whose slot B is a trial `{2, tries 1, not successful}` holding A's kernel
/// files (copied on the ESP with mtools) and a `cmdline` the kernel echoes.
fn image_with_b_trial() -> Image {
    let image = minimal_template().copy();
    let trial = SlotAttrs { priority: 2, tries: 1, successful: false };
    set_slot(&image.disk, Slot::B, trial);
    sgdisk_verify(&image.disk);
    assert_eq!(read_slots(&image.disk).unwrap().1, trial);

    let files = tempfile::tempdir().unwrap();
    // `berth build` makes berth/b/ (empty) on the ESP: the update agent writes into it in place.
    for name in ["vmlinuz", "initrd.img"] {
        let local = files.path().join(name);
        mtools("mcopy", &image, &[&format!("::/berth/a/{name}"), local.to_str().unwrap()]);
        mtools("mcopy", &image, &[local.to_str().unwrap(), &format!("::/berth/b/{name}")]);
    }
    put_cmdline(&image, Slot::B, "console=ttyS0\n");
    image
}

/// The console of a boot of B as a trial, and the GPT afterwards.
fn check_b_trial(image: &Image, console: &str) {
    let partuuid = image.partuuid(3);
    assert!(console.contains("berth-bootmgr: slot B: priority 2, tries 1, not successful"), "{console}");
    let decision = line_with(console, "berth-bootmgr: -> booting");
    assert!(decision.contains("booting B (trial, 0 tries left after this boot)"), "{decision}");
    assert!(console.contains("berth-bootmgr: GPT updated and verified"), "{console}");
    assert!(console.contains("EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"), "{console}");
    let kernel = line_with(console, "Kernel command line:");
    assert!(kernel.contains(&format!("root=PARTUUID={partuuid}")), "{kernel}");
    assert!(kernel.contains("berth.slot=b"), "{kernel}");
    // The write happened before the kernel started.
    let write = console.find("GPT updated and verified").unwrap();
    let kernel_at = console.find("Kernel command line:").unwrap();
    assert!(write < kernel_at, "{console}");

    // Both copies valid (read_slots insists on both headers) and the try spent.
    let (a, b) = read_slots(&image.disk).unwrap();
    assert_eq!(a, SlotAttrs::FRESH_ACTIVE);
    assert_eq!(b, SlotAttrs { priority: 2, tries: 0, successful: false });
    sgdisk_verify(&image.disk);
}

#[test]
fn bootmgr_boots_slot_b_trial_and_spends_its_try_first() {
    let image = image_with_b_trial();
    let console = boot_to_init(&image.disk);
    check_b_trial(&image, &console);
}

#[test]
fn damaged_primary_gpt_still_boots_the_trial_and_ends_with_both_copies_valid() {
    use std::os::unix::fs::FileExt;
    let image = image_with_b_trial();
    // Damage the primary entry array (STATE's name): its CRC no longer matches.
    let file = std::fs::OpenOptions::new().write(true).open(&image.disk).unwrap();
    file.write_all_at(b"X", 2 * SECTOR + 3 * 128 + 56).unwrap();
    drop(file);
    assert!(read_slots(&image.disk).is_err(), "the primary GPT should be damaged");

    let console = boot_to_init(&image.disk);
    // OVMF's partition driver restores a damaged primary GPT from the backup before bootmgr
    // runs; bootmgr would otherwise warn and read the backup itself. Either way the trial boots
    // and both copies end up valid with the try spent.
    check_b_trial(&image, &console);
}

#[test]
fn no_bootable_slot_says_why_and_resets() {
    let image = minimal_template().copy();
    // A spent its tries without being marked good; B is empty.
    set_slot(&image.disk, Slot::A, SlotAttrs { priority: 1, tries: 0, successful: false });
    let mut m = Machine::start(&Boot { disk: &image.disk, format: "raw", memory_mib: 512 }).unwrap();
    let first = m.wait_for("berth-bootmgr: resetting in 5 s", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first.contains(
            "berth-bootmgr: no bootable slot: ROOT-A: all boot tries spent without being marked successful; \
             ROOT-B: priority 0 (never boot) and never marked successful; resetting to retry"
        ),
        "{first}"
    );
    // It really resets: bootmgr runs again.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let console = m.console();
        if console.matches("berth-bootmgr 0.1.0").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "bootmgr did not run again after the reset:\n{console}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(m);
    // Nothing was written.
    assert_eq!(read_slots(&image.disk).unwrap().0, SlotAttrs { priority: 1, tries: 0, successful: false });
    sgdisk_verify(&image.disk);
}
