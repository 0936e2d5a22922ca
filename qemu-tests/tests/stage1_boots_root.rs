//! berth-init stage 1 end to end: a minimal image built by `berth build` boots under OVMF;
//! bootmgr starts the kernel with `root=PARTUUID=<ROOT-A> berth.slot=a`; stage 1 (`/init` in
//! the initramfs) loads the modules of the devices present (their `modalias` against the
//! initramfs's `modules.alias`, each with its `modules.dep` closure), finds ROOT-A by its GPT
//! unique GUID, mounts it read-only and switches root; stage 2 (`/sbin/init`) says it is ready.
//!
//!
//! The root-wait timeout is tested by keeping the disk driver out (`module_blacklist=virtio_blk`
//! on the kernel command line: the kernel refuses to load it), with `berth.rootwait=3`.

mod common;

use std::time::{Duration, Instant};

use berth_qemu_tests::{Boot, Machine};
use berth_slot::Slot;
use common::{BOOT_TIMEOUT, SERIAL, build_minimal, line_with, put_cmdline};

#[test]
fn stage1_finds_root_by_partuuid_and_switches_to_stage2() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0\n");

    let started = Instant::now();
    let mut m = Machine::start(&Boot { disk: &image.disk, format: "raw", memory_mib: 768 }).unwrap();
    let console = m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("power-on to stage 2 in {:.1} s", started.elapsed().as_secs_f64());
    // PID 1 stays up: nothing panics in the next moments.
    std::thread::sleep(Duration::from_secs(2));
    let console_after = m.console();
    drop(m);
    let shown: Vec<&str> = console.lines().filter(|l| l.contains("berth-init")).collect();
    eprintln!("{}", shown.join("\n"));

    assert!(console.contains("berth-init 0.1.0: stage 1 (initramfs)"), "{console}");
    let cmdline = line_with(&console, "berth-init[1]: root=PARTUUID=");
    assert!(cmdline.contains(&format!("root=PARTUUID={} berth.slot=a", image.partuuid(2))), "{cmdline}");
    // The disk's modules were loaded by stage 1 (virtio_blk at least: the cloud kernel builds it
    // as a module) and none failed.
    line_with(&console, "berth-init[1]: module virtio_blk loaded");
    let summary = line_with(&console, "berth-init[1]: modules for ");
    assert!(summary.contains(" 0 failed"), "{summary}");
    let found = line_with(&console, "berth-init[1]: root found: ");
    assert!(found.contains(&format!("/dev/vda2 (PARTUUID={})", image.partuuid(2))), "{found}");
    assert!(console.contains("berth-init[1]: mounted /dev/vda2 read-only on /sysroot"), "{console}");
    assert!(console.contains("berth-init 0.1.0: stage 2"), "{console}");
    // The order: modules, root, stage 2.
    let at = |s: &str| console.find(s).unwrap();
    assert!(at("module virtio_blk loaded") < at("root found") && at("root found") < at("stage 2 ready"));
    for bad in ["Kernel panic", "Attempted to kill init", "fatal:", "could not move", "VFS: Cannot open root"] {
        assert!(!console_after.contains(bad), "{bad:?} on the console:\n{console_after}");
    }
}

#[test]
fn stage1_without_its_root_says_what_it_saw_and_reboots() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline(&image, Slot::A, "console=ttyS0 module_blacklist=virtio_blk berth.rootwait=3\n");

    let mut m = Machine::start(&Boot { disk: &image.disk, format: "raw", memory_mib: 768 }).unwrap();
    let console = m.wait_for("rebooting in 5 s", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let fatal = line_with(&console, "berth-init[1]: fatal: ");
    assert!(
        fatal.contains(&format!("root partition PARTUUID={} not found after 3 s; block devices: ", image.partuuid(2))),
        "{fatal}"
    );
    assert!(console.contains("waiting up to 3 s for PARTUUID="), "{console}");
    line_with(&console, "berth-init[1]: module virtio_blk (");
    // It really reboots (no kernel panic): bootmgr runs again.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let console = loop {
        let console = m.console();
        if console.matches("berth-bootmgr 0.1.0").count() >= 2 {
            break console;
        }
        assert!(Instant::now() < deadline, "no reboot after the root-wait timeout:\n{console}");
        std::thread::sleep(Duration::from_millis(500));
    };
    drop(m);
    eprintln!("{}", console.lines().filter(|l| l.contains("berth-init[1]")).collect::<Vec<_>>().join("\n"));
    for bad in ["Kernel panic", "Attempted to kill init", "stage 2 ready"] {
        assert!(!console.contains(bad), "{bad:?} on the console:\n{console}");
    }
}
