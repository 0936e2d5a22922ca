//! OVMF as the judge of the disk writers: a GPT disk made entirely by Berth's writers (GPT,
//! FAT32 ESP holding the real `BOOTX64.EFI`, ext4 in ROOT-A) is found bootable by the firmware,
//! which loads bootmgr from the ESP; bootmgr's console output proves it ran: it reads the GPT,
//! picks slot A, finds no kernel on this ESP, says so, and resets instead of hanging.

use std::path::PathBuf;
use std::time::Duration;

use berth_builder::disk::{DiskLayout, DiskSize, create_image, write_gpt};
use berth_builder::esp::{EspContents, EspOptions, write_esp};
use berth_fstree::{Metadata, Node, NodeKind, Tree};
use berth_qemu_tests::{Boot, Machine};
use berth_slot::Slot;

const MIB: u64 = 1 << 20;

/// Builds BOOTX64.EFI with cargo, as the real build does.
fn bootmgr_efi() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    berth_builder::build::OwnBinaries::build(&workspace).expect("building berth's binaries").bootmgr
}

#[test]
fn ovmf_boots_bootmgr_from_our_esp() {
    let efi = std::fs::read(bootmgr_efi()).expect("reading berth-bootmgr.efi");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");

    let mut layout = DiskLayout::new(DiskSize::State(16 * MIB), b"ovmf-test".to_vec());
    layout.esp_size = 64 * MIB;
    layout.root_size = 32 * MIB;
    let plan = layout.plan().unwrap();
    let file = create_image(&disk, &plan).unwrap();
    write_gpt(&file, &plan).unwrap();

    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", efi).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0".as_slice()).unwrap();
    let p = plan.esp();
    write_esp(&file, p.offset, p.size, &esp, &EspOptions::from_seed(b"ovmf-test", "EFI-SYSTEM", 1_700_000_000))
        .unwrap();

    let mut tree = Tree::new(Metadata::root(0o755, 1_700_000_000));
    tree.insert("hello", Node::new(NodeKind::File(b"berth\n".as_slice().into()), Metadata::root(0o644, 0))).unwrap();
    let root = plan.root(Slot::A);
    let mut opts = berth_ext4::Options::derived("ROOT-A", b"ovmf-test", 1_700_000_000);
    opts.size = Some(root.size);
    berth_ext4::write_at(&tree, &file, root.offset, &opts).unwrap();
    drop(file);

    let mut m = Machine::start(&Boot { disk: &disk, format: "raw", memory_mib: 256 }).unwrap();
    let console =
        m.wait_for("berth-bootmgr: resetting in 5 s", Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    assert!(console.contains("berth-bootmgr 0.1.0"), "{console}");
    assert!(console.contains("berth-bootmgr: slot A: priority 1, tries 0, successful"), "{console}");
    assert!(console.contains("berth-bootmgr: -> booting A (normal)"), "{console}");
    assert!(console.contains("berth-bootmgr: error: reading berth/a/vmlinuz from the ESP: NOT_FOUND"), "{console}");
}
