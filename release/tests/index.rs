//! Index::check: M2 (a release's command line cannot steer the slot or stage 1) and L3 (the
//! rollout's numbers are bounded, its arithmetic saturates).

use berth_release::index::{Index, MAX_ROLLOUT_SECONDS, Rollout, check_cmdline};
use berth_release::{Timestamp, rollout};

fn index_with(cmdline: &str, start: &str, duration: u64) -> String {
    format!(
        r#"{{"schema":1,"channel":"stable","sequence":1,"issued":"2026-01-01T00:00:00Z","expires":"2026-02-01T00:00:00Z","releases":[{{"version":"2.0.0","cmdline":{cmdline:?},"root":{{"path":"releases/2.0.0/root.img.zst","size":10,"sha256":"{d}","compression":"zstd","image_size":4096,"image_sha256":"{d}"}},"vmlinuz":{{"path":"releases/2.0.0/vmlinuz","size":1,"sha256":"{d}"}},"initrd":{{"path":"releases/2.0.0/initrd.img","size":1,"sha256":"{d}"}},"rollout":{{"start":{start:?},"duration_seconds":{duration}}}}}]}}"#,
        d = "ab".repeat(32)
    )
}

#[test]
fn m2_index_refuses_a_cmdline_that_sets_the_slot_root_init_or_rd() {
    let ok = index_with("console=ttyS0 quiet berth.rootwait=3", "2026-01-01T00:00:00Z", 0);
    Index::parse(ok.as_bytes()).expect("a plain command line");
    for bad in [
        "console=ttyS0 berth.slot=a",
        "root=/dev/vda2",
        "quiet \"root=PARTUUID=x\"",
        "init=/bin/sh",
        "rd.break",
        "rd.shell=1",
        "console=ttyS0 -- berth.slot=b",
    ] {
        let e = Index::parse(index_with(bad, "2026-01-01T00:00:00Z", 0).as_bytes()).unwrap_err().to_string();
        assert!(e.contains("releases[0].cmdline"), "{bad}: {e}");
        assert!(check_cmdline(bad).is_err(), "{bad}");
    }
}

#[test]
fn l3_rollout_numbers_are_bounded_and_the_arithmetic_saturates() {
    let too_long = index_with("console=ttyS0", "2026-01-01T00:00:00Z", MAX_ROLLOUT_SECONDS + 1);
    let e = Index::parse(too_long.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("rollout.duration_seconds"), "{e}");
    Index::parse(index_with("console=ttyS0", "2026-01-01T00:00:00Z", MAX_ROLLOUT_SECONDS).as_bytes()).expect("a year");
    let far = index_with("console=ttyS0", "2030-01-01T00:00:00Z", 0);
    let e = Index::parse(far.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("rollout.start"), "{e}");
    let early = index_with("console=ttyS0", "1969-12-31T00:00:00Z", 0);
    assert!(Index::parse(early.as_bytes()).unwrap_err().to_string().contains("rollout.start"));

    // The fuzzing finding: start = 1, duration ≈ 1.06e19, position 0.87 overflowed the add.
    let r = Rollout { start: Timestamp(1), duration_seconds: 10_618_708_694_469_917_696 };
    assert_eq!(rollout::allowed_from(&r, 0.868_596_389_847_118_2), Timestamp(i64::MAX));
    let late = Rollout { start: Timestamp(i64::MAX), duration_seconds: u64::MAX };
    assert_eq!(rollout::allowed_from(&late, 0.99), Timestamp(i64::MAX));
    let early = Rollout { start: Timestamp(i64::MIN), duration_seconds: 10 };
    assert!(rollout::allowed(&early, 0.5, Timestamp(i64::MAX)));
    assert_eq!(rollout::progress(&early, Timestamp(i64::MAX)), 1.0);
}

#[test]
fn m8_the_frame_list_adds_up_to_the_signed_file() {
    use berth_release::index::{Digest, FrameList, MAX_COMPRESSED_FRAME};
    let list = FrameList(vec![(100, Digest([1; 32])), (50, Digest([2; 32]))]);
    let bytes = list.to_bytes();
    assert_eq!(FrameList::parse(&bytes, 150, 8 << 20), Ok(list.clone()));
    assert!(FrameList::parse(&bytes, 151, 8 << 20).unwrap_err().contains("adds up to 150 bytes, the file is 151"));
    assert!(FrameList::parse(b"100 zz\n", 100, 1 << 20).unwrap_err().contains("line 1"));
    let huge = FrameList(vec![(MAX_COMPRESSED_FRAME + 1, Digest([1; 32]))]).to_bytes();
    assert!(FrameList::parse(&huge, MAX_COMPRESSED_FRAME + 1, 8 << 20).unwrap_err().contains("a frame of"));
    // More frames than the image has sectors: not this image's list.
    let many = FrameList(vec![(1, Digest([0; 32])); 5]).to_bytes();
    assert!(FrameList::parse(&many, 5, 1024).unwrap_err().contains("more than 3 frames"));
}
