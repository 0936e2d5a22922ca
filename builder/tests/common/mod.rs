//! What the builder's test binaries share (each says `mod common;` and uses what it needs): the
//! judge-tool finder and the runners for judges (`tool`, `run`, `ok`, `text`), deterministic
//! filler bytes (`noise`, `pattern`), the small Berth disk the export and publish tests start
//! from (`small_berth_disk`) and a fresh signing key (`key`).

// Not every test binary uses every helper.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_builder::disk::{DiskLayout, DiskPlan, DiskSize, create_image, write_gpt};
use berth_builder::esp::{EspContents, EspOptions, write_esp};
use berth_builder::publish::keygen;

/// The build time stamped on the small disk's ESP (2023-11-14 22:13:20 UTC).
pub const EPOCH: i64 = 1_700_000_000;

/// Finds a judge tool on PATH or in the sbin directories (where `sgdisk` and `fsck.fat` live,
/// which a non-root PATH often lacks). Fails the test, naming the package, if it is missing.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "judge tool `{name}` not found on PATH or in /usr/sbin, /sbin: install the Debian package `{package}` \
         (apt-get install {package}, or scripts/setup-host); these tests need it and do not skip"
    );
}

/// Runs `cmd` and returns what it did; fails the test only if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("running {shown}: {e}"))
}

/// Runs `cmd`, requires success, returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{shown} failed ({}):\n{stdout}\n{}", out.status, text(&out.stderr));
    stdout
}

/// Output bytes as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Deterministic filler bytes (xorshift), so content mismatches cannot hide in zeros.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes from a simple generator, like a filesystem: runs of `zero_every` bytes, every third
/// one (from the first) zeros (holes in a copy, compressible), the others letters `a`–`p`.
pub fn pattern(len: usize, seed: u8, zero_every: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|i| {
            if (i / zero_every).is_multiple_of(3) {
                0
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 16) as u8 + b'a'
            }
        })
        .collect()
}

/// A small disk at `disk` (its directory is made) as `berth build` lays it out, with 8 MiB for
/// STATE, a 40 MiB ESP and 16 MiB root slots: the GPT (its GUIDs derived from `seed`) and `esp`
/// written as the ESP, stamped with [`EPOCH`]. The root slots are left to the caller: returns
/// the open disk and its plan.
pub fn small_berth_disk(disk: &Path, seed: &[u8], esp: &EspContents) -> (File, DiskPlan) {
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let mut layout = DiskLayout::new(DiskSize::State(8 << 20), seed);
    layout.esp_size = 40 << 20;
    layout.root_size = 16 << 20;
    let plan = layout.plan().unwrap();
    let f = create_image(disk, &plan).unwrap();
    write_gpt(&f, &plan).unwrap();
    let p = plan.esp();
    write_esp(&f, p.offset, p.size, esp, &EspOptions::from_seed(b"t", "EFI-SYSTEM", EPOCH)).unwrap();
    (f, plan)
}

/// A new key pair `dir/name.key` (+ `.pub`): the secret key's path and the public key.
pub fn key(dir: &Path, name: &str) -> (PathBuf, String) {
    let base = dir.join(name);
    let public = keygen(&base).unwrap();
    (base.with_extension("key"), public)
}
