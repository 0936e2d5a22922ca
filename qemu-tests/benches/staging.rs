//! Staging throughput: `berth-update apply` streaming a 512 MiB root image (zstd, over HTTP from
//! a server on 127.0.0.1 through a guestfwd) into the passive slot of `container-host`, next to
//! a plain `dd` of the same bytes onto the same virtio disk in the same guest (TCG, two vCPUs).
//! The agent's figure covers download, decompression, hashing and writing (its read-back
//! verification is timed apart); `dd` reads the staged slot and writes it back in place. Each
//! runs three times (`apply --force` stages again) and the best of each is compared.
//!
//! `cargo bench -p berth-qemu-tests --bench staging`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::host::{BOOT_COMPLETE, bash, run};
use common::updates::{Flavour, Repo, agent, boot_on, image, status, wait_status};

/// The goal: staging at no less than this share of `dd`.
const GOAL: f64 = 0.70;
/// Runs of each side; the best of each is compared.
const RUNS: usize = 3;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("staging: run with `cargo bench -p berth-qemu-tests --bench staging`");
        return;
    }
    let v1 = image("1.0.0", Flavour::Root512);
    let v2 = image("2.0.0", Flavour::Root512);
    let repo = Repo::new();
    let settings = "[update]\nstrategy = \"off\"\ninterval = \"12h\"\njitter = \"0s\"\n".to_string();
    // Two vCPUs, as a host has more than one: berth-update's stages (receive, zstd, write)
    // overlap; dd runs in the same guest.
    let mut m = boot_on(&v1, &repo, Some(settings), 2);
    m.wait_for(BOOT_COMPLETE, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e}"));
    let mut a = agent(&m);
    wait_status(&mut a, Duration::from_secs(60), "slot a marked good", |s| {
        s.running.priority == Some(2) && s.running.successful == Some(true)
    });
    repo.publish(&v2);

    // Each side RUNS times, the best of each compared: the first staging also allocates the
    // overlay's clusters, which the later ones and dd find allocated.
    let mut best_staging = f64::MAX;
    let (mut bytes, mut downloaded) = (0u64, 0u64);
    for i in 0..RUNS {
        let mut args = vec!["berth-update", "apply", "--no-reboot"];
        if i > 0 {
            args.push("--force");
        }
        let r = run(&mut a, &args, Duration::from_secs(1800));
        assert_eq!(r.status, Some(0), "berth-update apply: {r:?}");
        let s = status(&mut a);
        let st = s.last_staging.clone().unwrap_or_else(|| panic!("no staging figures: {s:#?}"));
        bytes = st.image_bytes;
        downloaded = st.downloaded_bytes;
        let secs = st.write_seconds;
        assert!(bytes > 0 && secs > 0.0, "no staging figures: {s:#?}");
        best_staging = best_staging.min(secs);
        println!(
            "staging run {}: {secs:.2} s, {:.1} MiB/s; CPU time of its overlapping stages: receiving, checking and \
             cutting the stream {:.1} s, zstd on {} threads {:.1} s, writing and syncing {:.1} s; read back and \
             verified in {:.1} s",
            i + 1,
            mib(bytes) / secs,
            st.receive_cpu_seconds,
            st.decoders,
            st.decompress_cpu_seconds,
            st.write_cpu_seconds,
            st.verify_seconds,
        );
    }

    // dd: the staged slot's bytes, read and written back in place, caches dropped first.
    let blocks = bytes / (4 << 20);
    let timed = |a: &mut berth_qemu_tests::agent::Agent, flags: &str| -> f64 {
        let out = bash(
            a,
            &format!(
                "sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); \
                 dd if=/dev/vda3 of=/dev/vda3 bs=4M count={blocks} conv=notrunc{flags} status=none; \
                 e=$(date +%s.%N); echo \"$s $e\""
            ),
            Duration::from_secs(1800),
        );
        let t: Vec<f64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert_eq!(t.len(), 2, "{out}");
        t[1] - t[0]
    };
    let mut best_dd = f64::MAX;
    for i in 0..RUNS {
        let secs = timed(&mut a, ",fsync");
        best_dd = best_dd.min(secs);
        println!("dd run {}: {secs:.2} s, {:.1} MiB/s", i + 1, mib(blocks * (4 << 20)) / secs);
    }
    let direct = timed(&mut a, " iflag=direct oflag=direct");

    // The same stages alone, in the same guest: what the pipeline is made of.
    let alone = bash(
        &mut a,
        "t() { date +%s.%N; }; s=$(t); exec 3<>/dev/tcp/10.0.2.100/80; \
         printf 'GET /releases/2.0.0/root.img.zst HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3 > /tmp/root.zst; \
         n=$(t); sha256sum /tmp/root.zst > /dev/null; h=$(t); rm -f /tmp/root.zst; echo \"$s $n $h\"",
        Duration::from_secs(600),
    );
    let t: Vec<f64> = alone.split_whitespace().filter_map(|x| x.parse().ok()).collect();

    let staging = mib(bytes) / best_staging;
    let dd = mib(blocks * (4 << 20)) / best_dd;
    println!();
    println!(
        "staging {} MiB ({:.0} MiB compressed) over loopback HTTP, best of {RUNS}: {best_staging:.2} s, {staging:.1} MiB/s",
        bytes >> 20,
        mib(downloaded)
    );
    println!("dd of the same bytes on the same disk, best of {RUNS}: {best_dd:.2} s, {dd:.1} MiB/s");
    println!(
        "staging / dd: {:.0}% (goal >= {:.0}%: {})",
        staging / dd * 100.0,
        GOAL * 100.0,
        if staging / dd >= GOAL { "met" } else { "NOT met" }
    );
    println!(
        "  for reference: dd with O_DIRECT (no page cache in the guest) {direct:.2} s, {:.1} MiB/s",
        mib(blocks * (4 << 20)) / direct
    );
    if t.len() == 3 {
        println!(
            "  alone in the guest: receiving {:.0} MiB over HTTP {:.1} s, sha256sum of it {:.1} s",
            mib(downloaded),
            t[1] - t[0],
            t[2] - t[1]
        );
    }
    let _ = a.spawn(&["berthctl", "poweroff"]);
    drop(a);
    let _ = m.wait_exit(Duration::from_secs(60));
}
