//! berth-init stage 1 end to end: a minimal image built by `berth build` boots under OVMF;
//! bootmgr starts the kernel with `root=PARTUUID=<ROOT-A> berth.slot=a`; stage 1 (`/init` in
//! the initramfs) loads the storage modules in `modules.dep` order, finds ROOT-A by its GPT
//! unique GUID, mounts it read-only and switches root; stage 2 (`/sbin/init`) says it is ready.
//!
//!
//! The root-wait timeout is tested by keeping the disk driver out (`module_blacklist=virtio_blk`
//! on the kernel command line: the kernel refuses to load it), with `berth.rootwait=3`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use berth_qemu_tests::{Boot, Machine};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// One QEMU (and one image build) at a time: the CI machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

struct Image {
    _dir: tempfile::TempDir,
    disk: PathBuf,
    esp_offset: u64,
    /// ROOT-A's unique partition GUID (lower case).
    root_a: String,
}

fn build_minimal() -> Image {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::Builder::new().prefix("berth-stage1-test-").tempdir().unwrap();
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(c) => PathBuf::from(c).join("berth"),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/berth"),
    };
    let started = Instant::now();
    let report = build(&BuildOptions {
        definition: root.join("images/minimal.toml"),
        out_dir: dir.path().to_path_buf(),
        cache_dir: cache,
        apt_root: PathBuf::from("/"),
        offline: false,
        prebuilt: None,
        workspace: Some(root),
        source_date_epoch: None,
        progress: false,
    })
    .unwrap_or_else(|e| panic!("berth build images/minimal.toml: {e:#}"));
    eprintln!("built {} in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
    let part = |n: u32| report.manifest.partitions.iter().find(|p| p.number == n).expect("partition in the manifest");
    Image { esp_offset: part(1).offset, root_a: part(2).guid.to_lowercase(), disk: report.disk.clone(), _dir: dir }
}

/// Replaces `berth/a/cmdline` on the ESP (without `quiet`, so the kernel's lines show).
fn put_cmdline_a(image: &Image, text: &str) {
    let tmp = image.disk.with_file_name("cmdline");
    std::fs::write(&tmp, text).unwrap();
    let target = format!("{}@@{}", image.disk.display(), image.esp_offset);
    let out = Command::new("mcopy")
        .args(["-i", &target, "-o", tmp.to_str().unwrap(), "::/berth/a/cmdline"])
        .output()
        .expect("running mcopy (install mtools)");
    assert!(out.status.success(), "mcopy: {}", String::from_utf8_lossy(&out.stderr));
}

fn line_with<'a>(console: &'a str, needle: &str) -> &'a str {
    console.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} on the console:\n{console}"))
}

#[test]
fn stage1_finds_root_by_partuuid_and_switches_to_stage2() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = build_minimal();
    put_cmdline_a(&image, "console=ttyS0\n");

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
    assert!(cmdline.contains(&format!("root=PARTUUID={} berth.slot=a", image.root_a)), "{cmdline}");
    // Storage modules were loaded by stage 1 (virtio_blk at least: the cloud kernel builds it
    // as a module) and none failed.
    line_with(&console, "berth-init[1]: module virtio_blk loaded");
    let summary = line_with(&console, "berth-init[1]: modules for ");
    assert!(summary.contains(" 0 failed"), "{summary}");
    let found = line_with(&console, "berth-init[1]: root found: ");
    assert!(found.contains(&format!("/dev/vda2 (PARTUUID={})", image.root_a)), "{found}");
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
    put_cmdline_a(&image, "console=ttyS0 module_blacklist=virtio_blk berth.rootwait=3\n");

    let mut m = Machine::start(&Boot { disk: &image.disk, format: "raw", memory_mib: 768 }).unwrap();
    let console = m.wait_for("rebooting in 5 s", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let fatal = line_with(&console, "berth-init[1]: fatal: ");
    assert!(
        fatal.contains(&format!("root partition PARTUUID={} not found after 3 s; block devices: ", image.root_a)),
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
