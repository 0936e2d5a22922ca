//! M4: an equal sequence is accepted only for the very same index bytes.

use berth_release::index::Index;
use berth_release::signature::{Signatures, public_key_hex, secret_key_from_seed};
use berth_release::{Floor, Rejected, Timestamp, TrustedKeys, accept};

fn index(sequence: u64, pulled: bool) -> Vec<u8> {
    let text = format!(
        r#"{{"schema":1,"channel":"stable","sequence":{sequence},"issued":"2026-01-01T00:00:00Z","expires":"2036-01-01T00:00:00Z","releases":[{{"version":"2.0.0","cmdline":"console=ttyS0","root":{{"path":"releases/2.0.0/root.img.zst","size":10,"sha256":"{d}","compression":"zstd","image_size":4096,"image_sha256":"{d}"}},"vmlinuz":{{"path":"releases/2.0.0/vmlinuz","size":1,"sha256":"{d}"}},"initrd":{{"path":"releases/2.0.0/initrd.img","size":1,"sha256":"{d}"}},"rollout":{{"start":"2026-01-01T00:00:00Z","duration_seconds":0}}{p}}}]}}"#,
        d = "ab".repeat(32),
        p = if pulled { r#","pulled":true"# } else { "" }
    );
    Index::parse(text.as_bytes()).expect("a valid index").to_bytes()
}

#[test]
fn m4_an_equal_sequence_is_accepted_only_with_the_same_bytes() {
    let key = secret_key_from_seed([3; 32]);
    let trusted = TrustedKeys::new(&[public_key_hex(&key)], 1).unwrap();
    let sign = |b: &[u8]| Signatures::sign_all(b, std::slice::from_ref(&key)).to_bytes();
    let now = Timestamp(1_800_000_000);
    let pulled = index(7, true);
    let (_, floor) = accept(&pulled, &sign(&pulled), &trusted, "stable", now, None).unwrap();
    assert_eq!(floor.sequence, 7);
    // The same bytes again: fine (a host checks the same index many times).
    let (_, again) = accept(&pulled, &sign(&pulled), &trusted, "stable", now, Some(floor)).unwrap();
    assert_eq!(again, floor);
    // Other bytes with the same sequence (the pull-back undone): refused.
    let unpulled = index(7, false);
    let e = accept(&unpulled, &sign(&unpulled), &trusted, "stable", now, Some(floor)).unwrap_err();
    assert!(matches!(e, Rejected::SameSequence { sequence: 7, .. }), "{e}");
    assert!(e.to_string().contains("bytes differ"), "{e}");
    // A floor without a digest (kept before digests were): only the sequence counts.
    let legacy = Floor { sequence: 7, index_sha256: None };
    assert!(accept(&unpulled, &sign(&unpulled), &trusted, "stable", now, Some(legacy)).is_ok());
    // The higher of two floors wins; the digest is kept when both agree on the sequence.
    assert_eq!(Floor::max(Some(legacy), Some(floor)), Some(floor));
    let higher = Floor { sequence: 9, index_sha256: None };
    assert_eq!(Floor::max(Some(floor), Some(higher)), Some(higher));
    assert_eq!(Floor::max(None, Some(floor)), Some(floor));
}
