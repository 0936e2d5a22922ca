//! The EBS upload benchmark (issue 19): a 4 GiB sparse image with about 1.5% data spread over it
//! (whole blocks, partial blocks, a block written as zeros), uploaded to the in-tree EBS/EC2 fake
//! in this process over loopback HTTP (every request SigV4-signed and verified, every block's
//! checksum checked). Prints the MiB/s of data blocks sent and the zero/hole blocks skipped, next
//! to the MiB/s of reading the same data locally (the local limit): the scan alone (holes passed
//! over, SHA-256 of each block) and a plain read of the data blocks.
//!
//! `nice -n 19 cargo bench -p berth-cloud --bench ebs_upload`

#[path = "../tests/support/ebs_fake.rs"]
mod ebs_fake;
#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_cloud::aws::credentials::Credentials;
use berth_cloud::aws::{self, BLOCK, Endpoints, GIB, Upload};
use berth_http::Client;

const SIZE_GIB: u64 = 4;

/// Times each phase the upload reports (`start` to the next `start` or `finish`).
#[derive(Default)]
struct Phases(Mutex<Vec<(String, Instant, Option<Instant>)>>);

impl berth_cloud::Progress for Phases {
    fn start(&self, what: &str, _: u64) {
        self.0.lock().unwrap().push((what.to_string(), Instant::now(), None));
    }
    fn advance(&self, _: u64) {}
    fn finish(&self) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.2.get_or_insert_with(Instant::now);
        }
    }
    fn note(&self, _: &str) {}
}

impl Phases {
    fn took(&self, prefix: &str) -> Duration {
        let phases = self.0.lock().unwrap();
        phases.iter().find(|p| p.0.starts_with(prefix)).map_or(Duration::ZERO, |p| p.2.unwrap_or(p.1) - p.1)
    }
}

/// A deterministic, incompressible-looking byte stream (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bench.aws.raw");
    let f = File::create(&path).expect("the image");
    f.set_len(SIZE_GIB * GIB).expect("its size");
    let blocks = SIZE_GIB * GIB / BLOCK;
    // Every 67th block whole (1.5%), a few partial ones, one written as zeros (read, skipped).
    let mut written = 0;
    for i in (3..blocks).step_by(67) {
        f.write_all_at(&noise(i, BLOCK as usize), i * BLOCK).expect("data");
        written += 1;
    }
    for i in [1, blocks / 3 + 1, blocks - 1] {
        f.write_all_at(&noise(i, 4096), i * BLOCK + 1000).expect("data");
        written += 1;
    }
    f.write_all_at(&vec![0; BLOCK as usize], 5 * BLOCK).expect("zeros");
    f.sync_all().expect("sync");
    drop(f);
    println!(
        "image: {SIZE_GIB} GiB, {blocks} blocks of 512 KiB, {written} with data ({:.2}%)",
        written as f64 * 100.0 / blocks as f64
    );

    // The local limit: the scan (holes skipped, SHA-256 per block), then a plain read of the
    // data blocks (what the upload reads a second time to send them).
    let t = Instant::now();
    let scan = aws::scan(&path, &berth_cloud::Silent).expect("scan");
    let scan_time = t.elapsed();
    let data = scan.digests.len() as u64 * BLOCK;
    let file = File::open(&path).expect("open");
    let t = Instant::now();
    let mut buf = vec![0; BLOCK as usize];
    for i in scan.digests.keys() {
        file.read_exact_at(&mut buf, i * BLOCK).expect("read");
    }
    let read_time = t.elapsed();
    println!(
        "local: scan (SEEK_DATA + SHA-256) {:.0} MiB/s of data in {:.3} s; plain read of the data blocks {:.0} MiB/s",
        mib_s(data, scan_time),
        scan_time.as_secs_f64(),
        mib_s(data, read_time)
    );

    let creds = Credentials {
        access_key_id: ebs_fake::ACCESS_KEY.into(),
        secret_access_key: ebs_fake::SECRET.into(),
        session_token: None,
        source: "bench".into(),
    };
    // The one policy, but no proxy: the fake is on 127.0.0.1.
    let http = Client::builder("berth-bench").retry(berth_cloud::api::RETRY).no_proxy().build();
    println!(
        "{:>5} {:>12} {:>12} {:>14} {:>10} {:>9}",
        "jobs", "sent", "skipped", "blocks MiB/s", "upload s", "total s"
    );
    for jobs in [1, 8, 32, 64] {
        let fake = ebs_fake::EbsFake::start();
        fake.lock().completing_polls = 0;
        let mut up =
            Upload::new(&path, "berth-bench", "bench", ebs_fake::REGION, Endpoints::both_at(&fake.url()), &creds);
        up.jobs = jobs;
        up.poll_interval = Duration::from_millis(5);
        let phases = Phases::default();
        let t = Instant::now();
        let out = aws::upload(&http, &up, &phases).expect("upload");
        let total = t.elapsed();
        let sending = phases.took("EBS snapshot blocks");
        assert_eq!(fake.images().len(), 1);
        assert!(fake.refusals().is_empty(), "{:?}", fake.refusals());
        println!(
            "{jobs:>5} {:>12} {:>12} {:>14.0} {:>10.3} {:>9.3}",
            out.blocks_sent,
            out.zero_blocks_skipped,
            mib_s(out.blocks_sent * BLOCK, sending),
            sending.as_secs_f64(),
            total.as_secs_f64()
        );
    }
    println!(
        "sent: data blocks PUT (512 KiB each); skipped: zero or hole blocks never sent; blocks MiB/s: data blocks \
         sent per second of the PutSnapshotBlock phase; total: scan + DescribeImages/Snapshots + StartSnapshot + \
         blocks + CompleteSnapshot + polls + RegisterImage"
    );
}
