//! How long writing an empty writable (STATE) filesystem takes, as berth-init does at first
//! boot (`write_at_durably`), and how many bytes it really writes into a sparse file; e2fsck
//! judges the result. Run with `cargo bench -p berth-ext4 --bench writable_state`.

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use berth_ext4::{Options, write_at_durably};
use berth_fstree::{Metadata, Tree};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ts = 1_700_000_000;
    for gib in [1u64, 8] {
        let size = gib << 30;
        let img = dir.path().join(format!("state-{gib}g.img"));
        let file = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(true).open(&img).unwrap();
        file.set_len(size).unwrap();
        let tree = Tree::new(Metadata::root(0o755, ts.into()));
        let t = Instant::now();
        let report = write_at_durably(&tree, &file, 0, &Options::writable("STATE", b"bench", ts, size)).unwrap();
        let took = t.elapsed();
        file.sync_all().unwrap();
        let written = std::fs::metadata(&img).unwrap().blocks() * 512;
        let out = Command::new("e2fsck").arg("-fn").arg(&img).output().expect("e2fsck (e2fsprogs)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "e2fsck on the {gib} GiB STATE:\n{text}");
        println!(
            "{gib} GiB STATE: write_at {:.3} s, {} bytes allocated ({:.1} MiB), {} inodes, {} blocks",
            took.as_secs_f64(),
            written,
            written as f64 / (1 << 20) as f64,
            report.inodes,
            report.blocks
        );
        drop(file);
        std::fs::remove_file(&img).unwrap();
    }
}
