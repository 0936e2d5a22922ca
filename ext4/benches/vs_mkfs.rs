//! The ext4 writer against `mkfs.ext4 -d` on the same host directory: about 500 MiB in 20,000
//! entries (the acceptance tree's shape: a 10,000-name directory, deep paths, links, xattrs).
//! Goal: the writer at least twice as fast.
//!
//! Run with `cargo bench -p berth-ext4`. Caches cannot be dropped here, so each side runs once
//! to warm up and then three times, and the best run counts. Both sides read the tree from the
//! host directory: the writer's time includes `Tree::from_dir`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_ext4::{Options, write_file};
use berth_fstree::{LoadOptions, Tree};
use common::{Params, describe, e2fsck, generate, materialize, scratch, tool};

const RUNS: usize = 3;
/// mkfs.ext4 options closest to what the writer makes: 4 KiB blocks, no journal, and inode
/// tables not zeroed (the writer writes only what it uses either).
const MKFS_OPTS: &[&str] = &["-q", "-F", "-b", "4096", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard"];

fn best(label: &str, mut run: impl FnMut() -> Duration) -> Duration {
    let warm = run();
    eprintln!("{label}: warm-up {:.2} s", warm.as_secs_f64());
    let times: Vec<Duration> = (0..RUNS).map(|_| run()).collect();
    eprintln!("{label}: runs {:?}", times.iter().map(|t| format!("{:.2} s", t.as_secs_f64())).collect::<Vec<_>>());
    times.into_iter().min().unwrap()
}

fn mkfs(src: &Path, image: &Path, size: u64) -> Result<Duration, String> {
    let _ = std::fs::remove_file(image);
    std::fs::File::create(image).unwrap().set_len(size).unwrap();
    let t = Instant::now();
    let out =
        Command::new(tool("mkfs.ext4", "e2fsprogs")).args(MKFS_OPTS).arg("-d").arg(src).arg(image).output().unwrap();
    let took = t.elapsed();
    if out.status.success() {
        Ok(took)
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn main() {
    // The tree, then the same volume without large directories: mkfs.ext4 -d inserts
    // each name by scanning its directory, so the first measures mostly that.
    scenario("the issue's tree (one 10,000-name directory)", &Params::bench());
    scenario("no directory over 300 names", &Params { big_dir_entries: 0, mid_dir_entries: 255, ..Params::bench() });
}

fn scenario(title: &str, params: &Params) {
    println!("== {title}");
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let t = Instant::now();
    {
        let tree = generate(params);
        println!("tree: {}", describe(&tree));
        materialize(&tree, &src).expect("putting the tree on disk (needs root)");
    }
    println!("generated and written to {} in {:.1} s", src.display(), t.elapsed().as_secs_f64());

    let opts = Options {
        size: None,
        uuid: *b"berth-ext4-bench",
        hash_seed: *b"berth-hash-seed!",
        label: "bench".to_string(),
        timestamp: 1_700_000_000,
        journal: berth_ext4::Journal::None,
        bytes_per_inode: None,
        reserved: berth_ext4::Reserved::None,
    };
    let ours = dir.path().join("berth.ext4");
    let mut report = None;
    let writer = best("berth-ext4", || {
        let _ = std::fs::remove_file(&ours);
        let t = Instant::now();
        let tree = Tree::from_dir(&src, &LoadOptions::default()).expect("Tree::from_dir");
        report = Some(write_file(&tree, &ours, &opts).expect("write_file"));
        t.elapsed()
    });
    let report = report.unwrap();

    // The same size for mkfs, rounded up to a MiB; if mkfs cannot fit the tree in it (its
    // layout reserves more), grow it by 10% until it does, and say so.
    let mut size = report.size.div_ceil(1 << 20) << 20;
    let theirs = dir.path().join("mkfs.ext4");
    while let Err(e) = mkfs(&src, &theirs, size) {
        eprintln!("mkfs.ext4 -d failed at {size} bytes: {}", e.trim());
        size = (size + size / 10).div_ceil(1 << 20) << 20;
    }
    let mkfs_time = best("mkfs.ext4 -d", || mkfs(&src, &theirs, size).expect("mkfs.ext4 -d"));

    println!("image size: berth-ext4 {} bytes (chosen by the writer), mkfs.ext4 {size} bytes", report.size);
    println!("mkfs.ext4 options: {} -d SRC IMAGE", MKFS_OPTS.join(" "));
    println!("berth-ext4: {:.2} s (Tree::from_dir + write_file, best of {RUNS})", writer.as_secs_f64());
    println!("mkfs.ext4 -d: {:.2} s (best of {RUNS})", mkfs_time.as_secs_f64());
    println!("ratio: {:.1}x (goal: at least 2x)", mkfs_time.as_secs_f64() / writer.as_secs_f64());
    for (name, image) in [("berth-ext4", &ours), ("mkfs.ext4", &theirs)] {
        match e2fsck(image) {
            Ok(_) => println!("e2fsck -fn ({name}): clean"),
            Err(e) => println!("e2fsck -fn ({name}): FAILED\n{e}"),
        }
    }
}
