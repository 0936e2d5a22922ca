//! `berth inspect` reads back the table the disk writer wrote, slot attributes in words.

use std::process::Command;

use berth_builder::disk::{DiskLayout, DiskSize, create_image, write_gpt};
use berth_slot::{Slot, SlotAttrs};

#[test]
fn inspect_shows_partitions_slots_and_next_boot() {
    let d = tempfile::tempdir().unwrap();
    let disk = d.path().join("disk.img");
    let mut layout = DiskLayout::new(DiskSize::State(8 << 20), b"inspect".to_vec());
    layout.esp_size = 40 << 20;
    layout.root_size = 16 << 20;
    let mut plan = layout.plan().unwrap();
    plan.set_slot_attrs(Slot::B, SlotAttrs { priority: 2, tries: 1, successful: false });
    let f = create_image(&disk, &plan).unwrap();
    write_gpt(&f, &plan).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_berth")).arg("inspect").arg(&disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in
        ["EFI-SYSTEM", "ROOT-A", "priority 1, tries 0, successful", "priority 2, tries 1, not successful", "STATE"]
    {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(text.contains("next boot: ROOT-B (Trial"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["inspect", "--json"]).arg(&disk).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[2]["label"], "ROOT-B");
    assert_eq!(parts[2]["slot"]["priority"], 2);
    assert_eq!(parts[2]["guid"].as_str().unwrap(), plan.root(Slot::B).guid.to_string().to_uppercase());

    let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["inspect", "/nonexistent.img"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.img"));
}

fn small_disk(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let disk = dir.join("disk.img");
    let mut layout = DiskLayout::new(DiskSize::State(8 << 20), b"inspect".to_vec());
    layout.esp_size = 40 << 20;
    layout.root_size = 16 << 20;
    let plan = layout.plan().unwrap();
    create_image(&disk, &plan).unwrap();
    (disk, plan.disk_size())
}

fn inspect(disk: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth")).arg("inspect").arg(disk).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// L2: a damaged primary GPT with a good backup is read as bootmgr, berth-init and the update
/// agent read it (from the backup), and said so; a short file is named as such.
#[test]
fn l2_inspect_falls_back_to_the_backup_gpt_and_names_a_short_file() {
    use std::os::unix::fs::FileExt;
    let d = tempfile::tempdir().unwrap();
    let (disk, size) = small_disk(d.path());

    // The primary header's CRC broken (one byte of its disk GUID changed).
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 512 + 56).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], 512 + 56).unwrap();
    let (ok, text, err) = inspect(&disk);
    assert!(ok, "{err}");
    assert!(text.contains("warning: primary GPT unusable (") && text.contains("), backup used"), "{text}");
    for want in ["EFI-SYSTEM", "ROOT-A", "ROOT-B", "STATE", "next boot: ROOT-A"] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    f.write_all_at(&b, 512 + 56).unwrap();
    let (ok, text, _) = inspect(&disk);
    assert!(ok && !text.contains("warning"), "{text}");

    // Cut short, the primary intact: the table is shown, and what is missing.
    f.set_len(20 << 10).unwrap();
    let (ok, text, err) = inspect(&disk);
    assert!(ok, "{err}");
    assert!(text.contains(&format!("warning: file is 20480 bytes, the GPT says {size}")), "{text}");

    // Cut shorter than the primary entry array: no GPT, and why.
    f.set_len(1024).unwrap();
    let (ok, _, err) = inspect(&disk);
    assert!(!ok);
    assert!(
        err.contains("no usable GPT") && err.contains(&format!("file is 1024 bytes, the GPT says {size}")),
        "{err}"
    );
    assert!(!err.contains("to small"), "{err}");

    // Not a disk at all.
    let (ok, _, err) = inspect(d.path());
    assert!(!ok && err.contains("directory"), "{err}");
}
