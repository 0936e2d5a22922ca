//! What the boot tests share: building the minimal image with `berth build`, editing its ESP
//! with mtools, and reading the console.
#![allow(dead_code)]

pub mod host;
pub mod slots;
pub mod updates;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use berth_qemu_tests::test_definition;
use berth_slot::Slot;

/// Every wait for a console marker is bounded by this.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// One QEMU (and one image build) at a time within a test binary: the CI machine has two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub struct Image {
    _dir: tempfile::TempDir,
    pub disk: PathBuf,
    /// ESP byte offset.
    pub esp_offset: u64,
    /// Unique partition GUIDs by partition number, from the build manifest (lower case).
    guids: Vec<(u32, String)>,
    /// Byte offsets by partition number.
    offsets: Vec<(u32, u64)>,
}

impl Image {
    /// The `PARTUUID` of partition `number`.
    pub fn partuuid(&self, number: u32) -> &str {
        self.guids.iter().find(|(n, _)| *n == number).map(|(_, g)| g.as_str()).expect("partition in the manifest")
    }

    /// The byte offset of partition `number` on the disk.
    pub fn partition_offset(&self, number: u32) -> u64 {
        self.offsets.iter().find(|(n, _)| *n == number).map(|(_, o)| *o).expect("partition in the manifest")
    }
}

/// `images/minimal.toml` as a test image (plus the guest agent, [`test_definition`]), built as
/// a user would (binaries from this workspace, the user's cache).
pub fn build_minimal() -> Image {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::Builder::new().prefix("berth-boot-test-").tempdir().unwrap();
    let started = Instant::now();
    let def = test_definition("minimal", &dir.path().join("definition"));
    let options = BuildOptions::for_workspace(&root, def, dir.path().to_path_buf()).expect("a cache directory");
    let report = build(&options).unwrap_or_else(|e| panic!("berth build images/minimal.toml (test image): {e:#}"));
    eprintln!("built {} in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
    let esp = report.manifest.partitions.iter().find(|p| p.number == 1).expect("ESP in the manifest");
    let guids = report.manifest.partitions.iter().map(|p| (p.number, p.guid.to_lowercase())).collect();
    let offsets = report.manifest.partitions.iter().map(|p| (p.number, p.offset)).collect();
    Image { esp_offset: esp.offset, disk: report.disk, guids, offsets, _dir: dir }
}

/// Runs an mtools command on the image's ESP.
pub fn mtools(tool: &str, image: &Image, args: &[&str]) {
    let target = format!("{}@@{}", image.disk.display(), image.esp_offset);
    let out = Command::new(tool).arg("-i").arg(&target).args(args).output().expect("running mtools (install mtools)");
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Replaces `berth/<slot>/cmdline` with `text` (without `quiet`, so the kernel echoes its
/// command line on the console).
pub fn put_cmdline(image: &Image, slot: Slot, text: &str) {
    let tmp = image.disk.with_file_name("cmdline");
    std::fs::write(&tmp, text).unwrap();
    mtools("mcopy", image, &["-o", tmp.to_str().unwrap(), &format!("::/{}/cmdline", slot.esp_dir())]);
}

/// The line of `console` that contains `needle`.
pub fn line_with<'a>(console: &'a str, needle: &str) -> &'a str {
    console.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} on the console:\n{console}"))
}
