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
