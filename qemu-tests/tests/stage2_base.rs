//! berth-init stage 2 end to end on the `minimal` image, driven through the guest agent
//! (virtio-serial): the boot time split, STATE created on first boot and grown when the disk
//! grows, `/var` and the machine-id kept across reboots, `/` read-only, and clean reboots and
//! poweroffs (`berthctl`, Ctrl-Alt-Del) judged from the next boot's console, from the host with
//! the STATE superblock and `e2fsck -fn`, and by QEMU exiting by itself.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::{Agent, AgentError};
use berth_qemu_tests::timing::BootSplit;
use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, line_with, put_cmdline};

const GIB: u64 = 1 << 30;

fn boot_options(overlay_size: u64) -> Options {
    Options {
        overlay: true,
        overlay_size: Some(overlay_size),
        serial_ports: vec![PORT_NAME.into()],
        qmp: true,
        ..Options::default()
    }
}

/// The console from the `n`-th (1-based) start of stage 2 on.
fn boot_section(console: &str, n: usize) -> &str {
    let marker = "berth-init[1]: berth-init 0.1.0: stage 2";
    let mut at = None;
    let mut from = 0;
    for _ in 0..n {
        let i =
            console[from..].find(marker).unwrap_or_else(|| panic!("stage 2 started fewer than {n} times:\n{console}"));
        at = Some(from + i);
        from += i + marker.len();
    }
    &console[at.unwrap_or(0)..]
}

fn agent(m: &Machine) -> Agent {
    Agent::connect(m.serial_port(PORT_NAME).expect("agent port"), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", m.console()))
}

/// Reads STATE's superblock and runs `e2fsck -fn` on it, from a raw copy of the overlay.
fn judge_state(overlay: &Path, state_offset: u64, work: &Path) -> (bool, u64, String) {
    let raw = work.join("disk.raw");
    let out = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(overlay).arg(&raw).output().unwrap();
    assert!(out.status.success(), "qemu-img convert: {}", String::from_utf8_lossy(&out.stderr));
    let sgdisk = Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap();
    let text = String::from_utf8_lossy(&sgdisk.stdout).into_owned();
    assert!(text.contains("No problems found"), "sgdisk -v:\n{text}");
    let info = Command::new("sgdisk").args(["-i", "4"]).arg(&raw).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let last = info.lines().find(|l| l.starts_with("Last sector:")).unwrap_or_else(|| panic!("{info}"));
    let last: u64 = last.split_whitespace().nth(2).unwrap().parse().unwrap();
    let disk_bytes = std::fs::metadata(&raw).unwrap().len();
    let state_bytes = (last + 1) * 512 - state_offset;
    // STATE reaches the last whole MiB before the backup GPT.
    assert!(
        disk_bytes - (last + 1) * 512 < (1 << 20) + 33 * 512,
        "STATE ends at sector {last} of a {disk_bytes}-byte disk"
    );

    let part = work.join("state.raw");
    let dd = Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", state_offset >> 20))
        .arg(format!("count={}", state_bytes >> 20))
        .status()
        .unwrap();
    assert!(dd.success());
    let sb = std::fs::read(&part).unwrap();
    let incompat = u32::from_le_bytes(sb[1024 + 0x60..1024 + 0x64].try_into().unwrap());
    let clean = incompat & 0x4 == 0;
    let fsck = Command::new("e2fsck").arg("-fn").arg(&part).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&fsck.stdout), String::from_utf8_lossy(&fsck.stderr));
    assert!(fsck.status.success(), "e2fsck -fn STATE:\n{report}");
    let blocks = u32::from_le_bytes(sb[1024 + 4..1024 + 8].try_into().unwrap()) as u64;
    std::fs::remove_file(&raw).unwrap();
    (clean, blocks * 4096, report)
}

#[test]
fn minimal_boot_time_split() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let mut m = Machine::start_with(
        &Boot { disk: &image.disk, format: "raw", memory_mib: 768 },
        &Options { overlay: true, ..Options::default() },
    )
    .unwrap();
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let split = BootSplit::from_timeline(&m.timeline()).unwrap_or_else(|e| panic!("{e}\n{}", m.console()));
    eprintln!("{split}");
    for (what, d) in split.parts() {
        assert!(d > Duration::ZERO, "{what} took no time: {split}");
    }
}

#[test]
fn state_var_machine_id_read_only_root_and_clean_shutdowns() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");
    let image_bytes = std::fs::metadata(&image.disk).unwrap().len();
    let state_offset = image.partition_offset(4);
    let work = tempfile::tempdir().unwrap();
    let boot = Boot { disk: &image.disk, format: "raw", memory_mib: 768 };
    let started = Instant::now();

    // Boot 1, on a disk 2 GiB larger than the image: STATE grown to the disk's end, then created.
    let mut m = Machine::start_with(&boot, &boot_options(image_bytes + GIB)).unwrap();
    m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut a = agent(&m);
    let console = m.console();
    line_with(&console, "STATE /dev/vda4: partition grown");
    line_with(&console, "STATE /dev/vda4: created");
    let generated = line_with(&console, "(generated: first boot)");
    let id = a.read("/etc/machine-id").unwrap();
    assert!(generated.contains(id.trim()), "{generated} vs {id}");
    let token = format!("written in boot 1 at {:?}", std::time::SystemTime::now());
    a.exec(&["/usr/sbin/berth-init", "--version"], Duration::from_secs(30)).unwrap();
    a.write("/var/berth-test", &token).unwrap();
    a.write("/etc/berth-test", "etc is writable through the overlay").unwrap();
    match a.write("/usr/berth-test", "x") {
        Err(AgentError::Failed { message, .. }) => assert!(message.contains("(os error 30)"), "{message}"),
        other => panic!("writing under / should fail with EROFS: {other:?}"),
    }
    let mounts = a.read("/proc/self/mountinfo").unwrap();
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap();
    assert!(root.contains(" ro,") && root.contains("shared:"), "/ must be read-only and shared: {root}");
    for want in [" /var ", " /etc ", " /sys/fs/cgroup ", " /run "] {
        assert!(mounts.contains(want), "{want} not mounted:\n{mounts}");
    }

    // berthctl reboot: QEMU restarts by itself; STATE was unmounted cleanly.
    a.spawn(&["berthctl", "reboot"]).unwrap();
    // QEMU serves one client per socket: the old connection must go before the next one.
    drop(a);
    m.wait_for_count("stage 2 ready (slot a)", 2, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let boot2 = boot_section(&console, 2);
    line_with(&console, "shutdown: filesystems unmounted; rebooting");
    line_with(boot2, "(cleanly unmounted last time)");
    assert!(!boot2.contains("generated") && !boot2.contains("created"), "boot 2 redid first-boot work:\n{boot2}");
    let mut a = agent(&m);
    assert_eq!(a.read("/var/berth-test").unwrap(), token);
    assert_eq!(a.read("/etc/berth-test").unwrap(), "etc is writable through the overlay");
    assert_eq!(a.read("/etc/machine-id").unwrap(), id, "machine-id changed across the reboot");

    // Ctrl-Alt-Del reboots in order too.
    drop(a);
    m.send_keys(&["ctrl", "alt", "delete"]).unwrap();
    m.wait_for_count("stage 2 ready (slot a)", 3, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    line_with(&console, "Ctrl-Alt-Del (from pid 0): rebooting");
    line_with(boot_section(&console, 3), "(cleanly unmounted last time)");

    // berthctl poweroff: QEMU exits by itself, and STATE is clean when the host looks at it.
    let mut a = agent(&m);
    a.spawn(&["berthctl", "poweroff"]).unwrap();
    drop(a);
    let status = m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exited with {status}");
    let console = m.console();
    line_with(&console, "shutdown: filesystems unmounted; powering off");
    let overlay = m.overlay().unwrap().to_path_buf();
    let (clean, fs_bytes, _) = judge_state(&overlay, state_offset, work.path());
    assert!(clean, "STATE's journal needs recovery after poweroff");
    eprintln!("STATE after boot 1..3: {} MiB filesystem, clean", fs_bytes >> 20);

    // The disk grows by another GiB: the next boot grows the partition and the filesystem.
    let out =
        Command::new("qemu-img").arg("resize").arg(&overlay).arg((image_bytes + 2 * GIB).to_string()).output().unwrap();
    assert!(out.status.success(), "qemu-img resize: {}", String::from_utf8_lossy(&out.stderr));
    m.restart().unwrap();
    m.wait_for_count("stage 2 ready (slot a)", 4, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let console = m.console();
    let boot4 = boot_section(&console, 4);
    line_with(boot4, "STATE /dev/vda4: partition grown");
    line_with(boot4, "filesystem grown");
    let mut a = agent(&m);
    assert_eq!(a.read("/var/berth-test").unwrap(), token);
    assert_eq!(a.read("/etc/machine-id").unwrap(), id);
    a.spawn(&["berthctl", "poweroff"]).unwrap();
    m.wait_exit(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let (clean, grown_bytes, _) = judge_state(&overlay, state_offset, work.path());
    assert!(clean && grown_bytes >= fs_bytes + GIB - (2 << 20), "{fs_bytes} -> {grown_bytes} bytes, clean {clean}");
    eprintln!(
        "STATE grown online to {} MiB; four boots, two poweroffs in {:.0} s",
        grown_bytes >> 20,
        started.elapsed().as_secs_f64()
    );
}
