//! Slot B as an update would leave it (a copy of A's root and kernel files), the boot state on
//! the disk file, and console counting, for the slot selection tests.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use berth_builder::disk::{read_slots, write_slots};
use berth_qemu_tests::{Boot, Machine};
use berth_slot::gpt::{Gpt, Header};
use berth_slot::layout::SECTOR_SIZE;
use berth_slot::{Slot, SlotAttrs};

use super::{Image, Template, mtools, put_cmdline};

/// The primary GPT of `disk`, with the backup header checked against it.
fn read_gpt(disk: &Path) -> Gpt {
    let file = std::fs::File::open(disk).unwrap();
    let read = |lba: u64, len: usize| {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, lba * SECTOR_SIZE).unwrap();
        b
    };
    let primary = read(1, SECTOR_SIZE as usize);
    let h = Header::parse(&primary).unwrap();
    let mut gpt = Gpt::parse(&primary, &read(h.entries_lba, h.entries_bytes())).unwrap();
    gpt.check_backup(&read(h.alternate_lba, SECTOR_SIZE as usize)).unwrap();
    gpt
}

/// Copies ROOT-A's bytes into ROOT-B, whose unique GUID (the PARTUUID stage 1 looks for) stays
/// its own. Zero chunks are skipped where B is already zero, so the image file stays sparse.
pub fn copy_root_a_to_b(image: &Image) {
    let gpt = read_gpt(&image.disk);
    let (a, b) = (gpt.slot_partition(Slot::A).unwrap(), gpt.slot_partition(Slot::B).unwrap());
    let len = (a.last_lba + 1 - a.first_lba) * SECTOR_SIZE;
    assert_eq!(len, (b.last_lba + 1 - b.first_lba) * SECTOR_SIZE, "ROOT-A and ROOT-B differ in size");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&image.disk).unwrap();
    let (from, to) = (a.first_lba * SECTOR_SIZE, b.first_lba * SECTOR_SIZE);
    let mut buf = vec![0u8; 1 << 20];
    let mut old = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], from + done).unwrap();
        let zero = buf[..n].iter().all(|&x| x == 0);
        let skip = zero && {
            file.read_exact_at(&mut old[..n], to + done).unwrap();
            old[..n].iter().all(|&x| x == 0)
        };
        if !skip {
            file.write_all_at(&buf[..n], to + done).unwrap();
        }
        done += n as u64;
    }
    file.sync_all().unwrap();
}

/// Copies `berth/a/{vmlinuz,initrd.img,cmdline}` to `berth/b/` on the ESP (the build writes
/// `berth/a/` and an empty `berth/b/`; `berth/b/` is created if missing, as on older images).
pub fn copy_kernel_a_to_b(image: &Image) {
    let target = format!("{}@@{}", image.disk.display(), image.esp_offset);
    let has_b = Command::new("mdir").arg("-i").arg(&target).arg("::/berth/b").output().unwrap().status.success();
    if !has_b {
        mtools("mmd", image, &["::/berth/b"]);
    }
    let files = tempfile::tempdir().unwrap();
    for name in ["vmlinuz", "initrd.img", "cmdline"] {
        let local = files.path().join(name);
        mtools("mcopy", image, &[&format!("::/berth/a/{name}"), local.to_str().unwrap()]);
        mtools("mcopy", image, &["-o", local.to_str().unwrap(), &format!("::/berth/b/{name}")]);
    }
}

/// Overwrites `berth/b/vmlinuz` with `bytes`.
pub fn put_b_kernel(image: &Image, bytes: &[u8]) {
    let files = tempfile::tempdir().unwrap();
    let local = files.path().join("vmlinuz");
    std::fs::write(&local, bytes).unwrap();
    mtools("mcopy", image, &["-o", local.to_str().unwrap(), "::/berth/b/vmlinuz"]);
}

/// The minimal image with slot B holding a copy of A (root and kernel files), both slots'
/// cmdlines `console=ttyS0` (the kernel echoes its command line), and the given boot state.
/// A copy of one such disk made once per test binary: only the boot state differs.
pub fn image_with_b_copy(a: SlotAttrs, b: SlotAttrs) -> Image {
    static B_COPY: OnceLock<Template> = OnceLock::new();
    let template = B_COPY.get_or_init(|| {
        super::minimal_template().derive("b-copy", |image| {
            put_cmdline(image, Slot::A, "console=ttyS0\n");
            copy_root_a_to_b(image);
            copy_kernel_a_to_b(image);
            put_cmdline(image, Slot::B, "console=ttyS0\n");
        })
    });
    let image = template.copy();
    set_slots(&image.disk, a, b);
    image
}

/// Writes both slots' boot state (backup GPT first) and checks it reads back.
pub fn set_slots(disk: &Path, a: SlotAttrs, b: SlotAttrs) {
    write_slots(disk, a, b).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_slots(disk).unwrap(), (a, b));
}

/// Both slots' boot state on disk, also printed to the test log under `when`.
pub fn slots_after(disk: &Path, when: &str) -> (SlotAttrs, SlotAttrs) {
    let (a, b) = read_slots(disk).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{when}: A = {{{a}}}, B = {{{b}}}");
    (a, b)
}

/// `sgdisk -v` finds nothing wrong with the partition tables.
pub fn sgdisk_verify(disk: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().expect("running sgdisk (install gdisk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("No problems found"), "sgdisk -v:\n{text}");
}

/// Powers the machine on (a fresh QEMU process on the same disk file).
pub fn power_on(image: &Image) -> Machine {
    Machine::start(&Boot { disk: &image.disk, format: "raw", memory_mib: 768 }).unwrap()
}

/// The lines of `console` that contain `needle`.
pub fn lines_with<'a>(console: &'a str, needle: &str) -> Vec<&'a str> {
    console.lines().filter(|l| l.contains(needle)).collect()
}
