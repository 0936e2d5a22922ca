//! What the boot tests share: building the minimal image with `berth build`, editing its ESP
//! with mtools, and reading the console.
#![allow(dead_code)]

pub mod host;
pub mod slots;
pub mod updates;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
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

/// A disk made once per test binary under the target directory, which tests copy instead of
/// building their own: a build is seconds of the two cores, a sparse copy milliseconds.
pub struct Template {
    disk: PathBuf,
    esp_offset: u64,
    guids: Vec<(u32, String)>,
    offsets: Vec<(u32, u64)>,
}

impl Template {
    /// A copy of the disk in a scratch directory of its own, for one test to change and boot.
    pub fn copy(&self) -> Image {
        let dir = tempfile::Builder::new().prefix("berth-boot-test-").tempdir().unwrap();
        let disk = dir.path().join(self.disk.file_name().expect("a disk file name"));
        sparse_copy(&self.disk, &disk);
        Image { _dir: dir, disk, esp_offset: self.esp_offset, guids: self.guids.clone(), offsets: self.offsets.clone() }
    }

    /// A template of this one's disk as `prepare` leaves a copy of it, kept as `name`.img next
    /// to this one's.
    pub fn derive(&self, name: &str, prepare: impl FnOnce(&Image)) -> Template {
        let image = self.copy();
        prepare(&image);
        let disk = self.disk.with_file_name(format!("{name}.img"));
        sparse_copy(&image.disk, &disk);
        Template { disk, esp_offset: image.esp_offset, guids: image.guids.clone(), offsets: image.offsets.clone() }
    }
}

/// `cp --sparse=always`: the holes of a fresh image (most of its root slots) stay holes.
fn sparse_copy(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("--sparse=always").arg(from).arg(to).output().expect("running cp");
    assert!(out.status.success(), "cp {} {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr));
}

/// [`build_minimal`] once per test binary (the first caller builds, the others wait), kept
/// under the target directory: what [`Template::copy`] copies.
pub fn minimal_template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let exe = std::env::current_exe().ok();
        let who = exe.as_deref().and_then(Path::file_stem).map(|s| s.to_string_lossy().into_owned());
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("minimal").join(who.unwrap_or("tests".into()));
        let started = Instant::now();
        let def = test_definition("minimal", &out.join("definition"));
        let options = BuildOptions::for_workspace(&root, def, out).expect("a cache directory");
        let report = build(&options).unwrap_or_else(|e| panic!("berth build images/minimal.toml (test image): {e:#}"));
        eprintln!(
            "built {} in {:.1} s (once for this test binary)",
            report.disk.display(),
            started.elapsed().as_secs_f64()
        );
        let esp = report.manifest.partitions.iter().find(|p| p.number == 1).expect("ESP in the manifest");
        Template {
            esp_offset: esp.offset,
            guids: report.manifest.partitions.iter().map(|p| (p.number, p.guid.to_lowercase())).collect(),
            offsets: report.manifest.partitions.iter().map(|p| (p.number, p.offset)).collect(),
            disk: report.disk,
        }
    })
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
