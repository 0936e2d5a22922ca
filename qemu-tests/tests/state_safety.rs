//! STATE is never formatted to "repair" it (H3): the `minimal` image boots, writes a file to
//! `/var` and powers off; the host zeroes the ext4 magic number of STATE's primary superblock
//! (what formatted STATE before); the next boot repairs the superblock from its backup, says
//! so on the console, and reads the file back. Two boots; `e2fsck -fn` and `dumpe2fs` judge
//! STATE from the host afterwards (reserved blocks for root, M7).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, line_with, put_cmdline};

fn agent(m: &Machine) -> Agent {
    Agent::connect(m.serial_port(PORT_NAME).expect("agent port"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", m.console()))
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?}:\n{text}");
    text
}

/// STATE of the overlay as a raw file in `work` (sparse), from the GPT's partition 4.
fn state_partition(overlay: &Path, state_offset: u64, work: &Path) -> std::path::PathBuf {
    let raw = work.join("disk.raw");
    run("qemu-img", &["convert", "-O", "raw", &overlay.to_string_lossy(), &raw.to_string_lossy()]);
    let info = run("sgdisk", &["-i", "4", &raw.to_string_lossy()]);
    let last: u64 = line_with(&info, "Last sector:").split_whitespace().nth(2).unwrap().parse().unwrap();
    let part = work.join("state.raw");
    run(
        "dd",
        &[
            &format!("if={}", raw.display()),
            &format!("of={}", part.display()),
            "bs=1M",
            "conv=sparse",
            "status=none",
            &format!("skip={}", state_offset >> 20),
            &format!("count={}", ((last + 1) * 512 - state_offset) >> 20),
        ],
    );
    std::fs::remove_file(&raw).unwrap();
    part
}

#[test]
fn h3_state_with_a_damaged_primary_superblock_boots_with_its_data_intact() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let image_bytes = std::fs::metadata(&image.disk).unwrap().len();
    let state_offset = image.partition_offset(4);
    let work = tempfile::tempdir().unwrap();
    // 512 MiB more than the image: STATE grows past one block group, so it has a backup superblock.
    let options = Options {
        overlay: true,
        overlay_size: Some(image_bytes + (512 << 20)),
        serial_ports: vec![PORT_NAME.into()],
        ..Options::default()
    };
    let mut m = Machine::start_with(&Boot { disk: &image.disk, format: "raw", memory_mib: 768 }, &options).unwrap();

    // Boot 1: the builder's marker lets init format STATE; a file goes to /var.
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let created = line_with(&console, "STATE /dev/vda4: created ext4");
    assert!(created.contains("new STATE (the image's marker)") && created.contains("reserved for root"), "{created}");
    line_with(&console, "STATE /dev/vda4: ext4 clean, errors=continue, no errors recorded");
    let mut a = agent(&m);
    let token = format!("precious, written in boot 1 at {:?}", std::time::SystemTime::now());
    a.write("/var/berth-precious", &token).unwrap();
    a.spawn(&["berthctl", "poweroff"]).unwrap();
    drop(a);
    let status = m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exited with {status}");

    // The two bytes whose loss used to mean "format STATE".
    let overlay = m.overlay().unwrap().to_path_buf();
    let magic = state_offset + 1024 + 0x38;
    run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P 0 {magic} 2"), &overlay.to_string_lossy()]);
    let read = run("qemu-io", &["-f", "qcow2", "-c", &format!("read -v {magic} 2"), &overlay.to_string_lossy()]);
    assert!(read.contains(":  00 00  .."), "the magic number is not zeroed:\n{read}");

    // Boot 2: repaired from the backup, not formatted; the file is there.
    m.restart().unwrap();
    m.wait_for_count("stage 2 ready (slot a)", 2, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let boot2 = &console[console.rfind("berth-init 0.1.0: stage 2").expect("stage 2 of boot 2")..];
    let repaired = line_with(boot2, "STATE /dev/vda4: REPAIRED:");
    assert!(
        repaired.contains("no ext4 magic") && repaired.contains("rewritten from the backup in group 1"),
        "{repaired}"
    );
    assert!(!boot2.contains("created ext4") && !boot2.contains("UNUSABLE"), "boot 2:\n{boot2}");
    line_with(boot2, "STATE /dev/vda4 mounted on");
    eprintln!("{repaired}");
    let mut a = agent(&m);
    assert_eq!(a.read("/var/berth-precious").unwrap(), token, "the file written before the damage");
    a.spawn(&["berthctl", "poweroff"]).unwrap();
    drop(a);
    m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));

    // The host's judges: a clean filesystem, with its reserve for root.
    let part = state_partition(&overlay, state_offset, work.path());
    let fsck = Command::new("e2fsck").arg("-fn").arg(&part).output().unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
    assert!(fsck.status.success(), "e2fsck -fn STATE after the repair:\n{report}");
    let dump = run("dumpe2fs", &["-h", &part.to_string_lossy()]);
    let reserved = line_with(&dump, "Reserved block count:");
    assert!(!reserved.ends_with(" 0"), "{reserved}");
    eprintln!("STATE after the repair: e2fsck -fn clean; {reserved}");
}
