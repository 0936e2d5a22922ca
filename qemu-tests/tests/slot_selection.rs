//! A/B slot selection end to end (docs/design.md §2, §3): slot B holds a copy of A's root and kernel,
//! as an update would leave it, and is offered as a trial through the GPT attributes. bootmgr
//! spends a try before the kernel starts; a trial that never gets marked successful (here
//! nothing marks it) runs out of tries, and bootmgr goes back to A by itself, whether B booted,
//! its kernel could not be started, or its stage 1 could not find its root. Power cycles are a
//! new QEMU process on the same disk file; resets within one run are the guest's own.
//!
//! The disk is built once and copied for each test (only the boot state differs), so the tests
//! run two at a time, one single-vCPU QEMU on each of the CI machine's two cores.

mod common;

use std::time::Instant;

use berth_qemu_tests::{Boot, Machine, Options};
use berth_slot::{Slot, SlotAttrs};
use common::slots::{image_with_b_copy, lines_with, power_on, put_b_kernel, sgdisk_verify, slots_after};
use common::{BOOT_TIMEOUT, line_with, put_cmdline};

const GOOD_A: SlotAttrs = SlotAttrs { priority: 1, tries: 0, successful: true };
/// B after its last try was spent without being marked successful.
const SPENT_B: SlotAttrs = SlotAttrs { priority: 2, tries: 0, successful: false };

const BOOTING_A: &str = "berth-bootmgr: -> booting A ";
const BOOTING_B: &str = "berth-bootmgr: -> booting B ";

#[test]
fn boots_b_once_then_a() {
    let trial = SlotAttrs { priority: 2, tries: 1, successful: false };
    let image = image_with_b_copy(GOOD_A, trial);
    // The writer leaves tables sgdisk accepts.
    sgdisk_verify(&image.disk);
    slots_after(&image.disk, "before boot 1");
    let (root_a, root_b) = (image.partuuid(2).to_string(), image.partuuid(3).to_string());

    // Boot 1: B as a trial, on B's own root.
    let started = Instant::now();
    let mut m = power_on(&image);
    let console = m.wait_for("stage 2 ready (slot b)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(m); // power off
    eprintln!("boot 1: power-on to stage 2 of B in {:.1} s", started.elapsed().as_secs_f64());
    assert!(console.contains("berth-bootmgr: slot B: priority 2, tries 1, not successful"), "{console}");
    let decision = line_with(&console, "berth-bootmgr: -> booting");
    assert!(decision.contains("booting B (trial, 0 tries left after this boot)"), "{decision}");
    assert!(console.contains("berth-bootmgr: GPT updated and verified"), "{console}");
    let kernel = line_with(&console, "Kernel command line:");
    assert!(kernel.contains(&format!("root=PARTUUID={root_b}")) && kernel.contains("berth.slot=b"), "{kernel}");
    let found = line_with(&console, "berth-init[1]: root found: ");
    assert!(found.contains(&format!("/dev/vda3 (PARTUUID={root_b})")), "{found}");
    assert_eq!(lines_with(&console, "berth-bootmgr 0.1.0").len(), 1, "{console}");
    let (a, b) = slots_after(&image.disk, "after boot 1");
    assert_eq!((a, b), (GOOD_A, SPENT_B), "the try is spent and B not marked successful; A unchanged");

    // Boot 2: B has no tries left and was never marked successful, so A.
    let started = Instant::now();
    let mut m = power_on(&image);
    let console = m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(m);
    eprintln!("boot 2: power-on to stage 2 of A in {:.1} s", started.elapsed().as_secs_f64());
    let decision = line_with(&console, "berth-bootmgr: -> booting");
    assert!(
        decision
            .contains("booting A (normal); slot B not chosen: all boot tries spent without being marked successful"),
        "{decision}"
    );
    assert!(!console.contains("GPT updated"), "a normal boot writes nothing:\n{console}");
    let kernel = line_with(&console, "Kernel command line:");
    assert!(kernel.contains(&format!("root=PARTUUID={root_a}")) && kernel.contains("berth.slot=a"), "{kernel}");
    let (a, b) = slots_after(&image.disk, "after boot 2");
    assert_eq!((a, b), (GOOD_A, SPENT_B));
}

#[test]
fn corrupt_b_kernel_falls_back_to_a() {
    let image = image_with_b_copy(GOOD_A, SlotAttrs { priority: 2, tries: 1, successful: false });
    // Not a PE image at all: the firmware's LoadImage must refuse it.
    put_b_kernel(&image, &vec![0x5a; 1 << 20]);
    slots_after(&image.disk, "before the run");

    let started = Instant::now();
    let mut m = power_on(&image);
    let first = m.wait_for("berth-bootmgr: resetting in 5 s", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let error = line_with(&first, "berth-bootmgr: error: ");
    eprintln!("bootmgr said: {error}");
    // OVMF's LoadImage answers EFI_UNSUPPORTED for a buffer that is not a PE image.
    assert!(error.contains("berth-bootmgr: error: loading berth/b/vmlinuz: UNSUPPORTED"), "{error}");
    assert!(first.contains("berth/b/vmlinuz (1048576 bytes)"), "{first}");
    // The try was spent before the kernel was even read.
    let decision = line_with(&first, "berth-bootmgr: -> booting");
    assert!(decision.contains("booting B (trial, 0 tries left after this boot)"), "{decision}");
    assert!(first.contains("berth-bootmgr: GPT updated and verified"), "{first}");

    // The reset is bootmgr's own; the next selection picks A.
    let console = m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(m);
    eprintln!("power-on to stage 2 of A in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(lines_with(&console, "berth-bootmgr 0.1.0").len(), 2, "{console}");
    assert_eq!(lines_with(&console, BOOTING_B).len(), 1, "{console}");
    let decision = line_with(&console, BOOTING_A);
    assert!(decision.contains("(normal); slot B not chosen: all boot tries spent"), "{decision}");
    let kernel = line_with(&console, "Kernel command line:");
    assert!(kernel.contains("berth.slot=a"), "{kernel}");
    let (a, b) = slots_after(&image.disk, "after the run");
    assert_eq!((a, b), (GOOD_A, SPENT_B));
}

#[test]
fn b_without_root_falls_back_after_tries() {
    let image = image_with_b_copy(GOOD_A, SlotAttrs { priority: 2, tries: 2, successful: false });
    // B's kernel cannot load the disk driver, so its stage 1 never sees ROOT-B.
    put_cmdline(&image, Slot::B, "console=ttyS0 module_blacklist=virtio_blk berth.rootwait=3\n");
    slots_after(&image.disk, "before the run");
    let fatal = format!("berth-init[1]: fatal: root partition PARTUUID={} not found after 3 s", image.partuuid(3));

    let started = Instant::now();
    let mut m = power_on(&image);
    for n in 1..=2 {
        m.wait_for_count(&fatal, n, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("try {n}: stage 1 of B gave up after {:.1} s", started.elapsed().as_secs_f64());
    }
    let console = m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(m);
    eprintln!("power-on to stage 2 of A in {:.1} s", started.elapsed().as_secs_f64());

    let b_boots = lines_with(&console, BOOTING_B);
    eprintln!("{}", b_boots.join("\n"));
    assert_eq!(b_boots.len(), 2, "{console}");
    assert!(b_boots[0].contains("(trial, 1 tries left after this boot)"), "{}", b_boots[0]);
    assert!(b_boots[1].contains("(trial, 0 tries left after this boot)"), "{}", b_boots[1]);
    let fatals = lines_with(&console, &fatal);
    assert_eq!(fatals.len(), 2, "{console}");
    assert!(fatals.iter().all(|l| l.contains("; rebooting in 5 s")), "{fatals:?}");
    // Three firmware boots in one QEMU run: B, B, then A.
    assert_eq!(lines_with(&console, "berth-bootmgr 0.1.0").len(), 3, "{console}");
    let a_boots = lines_with(&console, BOOTING_A);
    assert_eq!(a_boots.len(), 1, "{console}");
    assert!(a_boots[0].contains("(normal); slot B not chosen: all boot tries spent"), "{}", a_boots[0]);
    let events: Vec<&str> = console
        .lines()
        .filter_map(|l| match () {
            _ if l.contains(BOOTING_A) => Some("A"),
            _ if l.contains(BOOTING_B) => Some("B"),
            _ if l.contains(&fatal) => Some("root not found"),
            _ => None,
        })
        .collect();
    assert_eq!(events, ["B", "root not found", "B", "root not found", "A"], "{console}");
    for bad in ["Kernel panic", "Attempted to kill init"] {
        assert!(!console.contains(bad), "{bad:?} on the console:\n{console}");
    }
    let (a, b) = slots_after(&image.disk, "after the run");
    assert_eq!((a, b), (GOOD_A, SPENT_B));
    // Written twice by bootmgr since our own write: still sound.
    sgdisk_verify(&image.disk);
}

/// A disk bootmgr cannot write (write-protected): B's try cannot be recorded, so B is not
/// tried (a crash would retry it forever) and the successful A boots instead, without a reset
/// loop. Stage 2 then finds STATE unwritable and goes on with /var and /etc on tmpfs.
#[test]
fn unwritable_gpt_boots_the_successful_slot_instead_of_the_trial() {
    let trial = SlotAttrs { priority: 2, tries: 1, successful: false };
    let image = image_with_b_copy(GOOD_A, trial);
    let boot = Boot { disk: &image.disk, format: "raw", memory_mib: 768 };
    let mut m = Machine::start_with(&boot, &Options { read_only: true, ..Options::default() }).unwrap();
    let console = m.wait_for("stage 2 ready (slot a)", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    drop(m);
    for l in console.lines().filter(|l| l.contains("berth-bootmgr") || l.contains("STATE")) {
        eprintln!("{l}");
    }
    line_with(&console, "booting B (trial, 0 tries left after this boot)");
    let refused = line_with(&console, "not trying slot B");
    assert!(refused.contains("error:"), "{refused}");
    line_with(&console, "berth-bootmgr: -> booting A instead (normal): slot B's try cannot be recorded");
    assert_eq!(lines_with(&console, "berth-bootmgr 0.1.0").len(), 1, "no reset:\n{console}");
    line_with(&console, "STATE UNUSABLE:");
    line_with(&console, "STATE volatile:");
    let (a, b) = slots_after(&image.disk, "after the read-only boot");
    assert_eq!((a, b), (GOOD_A, trial), "nothing was written");
}
