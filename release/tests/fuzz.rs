//! Fuzz targets (berth-fuzzkit) for what an agent reads from a release repository and its
//! own configuration, extending `untrusted_input.rs` (arbitrary bytes, single bit flips) with
//! mutations of committed seeds (`fuzz/corpus/`): a channel index, its signature file, and
//! `update.toml` files. Mutated indexes are signed again, so that they get past the signature
//! check to the parser, the checks of `accept` and the rollout arithmetic (where L3 was: the
//! overflow checks of the test profile make any overflow a failure).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Bytes, Corpus, run};
use berth_release::config::Strategy as Reboot;
use berth_release::signature::{Signatures, public_key_hex, secret_key_from_seed};
use berth_release::{Floor, Index, Timestamp, TrustedKeys, UpdateConfig, accept, repo, rollout};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

const JSON_TOKENS: &[&str] = &[
    "\"",
    ",",
    "{",
    "}",
    "[",
    "]",
    ":",
    "\"pulled\": true,",
    "\"duration_seconds\": ",
    "\"start\": ",
    "\"1970-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:60Z\"",
    "\"-0001-01-01T00:00:00Z\"",
    "T",
    "Z",
    "+01:00",
    ".999999999",
    "1e400",
    "-",
    "../",
    "%2e",
    "root=",
    " berth.slot=b",
    " --",
];

/// Interesting clocks: the epoch, the index's own window, the extremes.
fn now() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        Just(Timestamp(0)),
        Just(Timestamp(1_765_050_000)),
        Just(Timestamp(i64::MAX)),
        Just(Timestamp(i64::MIN)),
        any::<i64>().prop_map(Timestamp),
    ]
}

fn floor() -> impl Strategy<Value = Option<Floor>> {
    proptest::option::of(prop_oneof![Just(41u64), Just(42), Just(u64::MAX), any::<u64>()])
        .prop_map(|s| s.map(|sequence| Floor { sequence, index_sha256: None }))
}

#[test]
fn fuzz_signed_index() {
    let key = secret_key_from_seed([3; 32]);
    let trusted = TrustedKeys::new(&[public_key_hex(&key)], 1).unwrap();
    let corpus = Corpus::load(&[corpus("index")]).tokens(JSON_TOKENS);
    let machine = prop_oneof![Just(String::new()), "[0-9a-f]{32}", ".{0,40}"];
    run("release/index", 20_000, (corpus.inputs(), now(), floor(), machine), |(input, now, floor, machine)| {
        let bytes: &[u8] = &input;
        if let Ok(i) = Index::parse(bytes) {
            // What parses writes back to itself.
            let again = Index::parse(&i.to_bytes());
            prop_assert_eq!(again.as_ref(), Ok(&i));
        }
        let sigs = Signatures::sign_all(bytes, std::slice::from_ref(&key)).to_bytes();
        let Ok((index, _)) = accept(bytes, &sigs, &trusted, "stable", now, floor) else { return Ok(()) };
        let _ = index.release("1.5.0");
        for r in &index.releases {
            let p = rollout::position(&machine, &r.version);
            prop_assert!((0.0..1.0).contains(&p), "position {p}");
            let progress = rollout::progress(&r.rollout, now);
            prop_assert!((0.0..=1.0).contains(&progress), "progress {progress}");
            let _ = rollout::allowed(&r.rollout, p, now);
            for p in [0.0, p, 0.999_999_999_999] {
                let _ = rollout::allowed_from(&r.rollout, p);
            }
            let _ = berth_release::index::compare_versions(&r.version, "1.5.0");
            for a in [&r.root.file, &r.vmlinuz, &r.initrd] {
                let _ = repo::artifact_url("https://releases.example/", &a.path);
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_signature_file() {
    let keys = [secret_key_from_seed([3; 32]), secret_key_from_seed([4; 32])];
    let hex: Vec<String> = keys.iter().map(public_key_hex).collect();
    let index = std::fs::read(corpus("index").join("stable.json")).unwrap();
    let corpus = Corpus::load(&[corpus("sig")]).tokens(JSON_TOKENS);
    let threshold = 1u32..4;
    run("release/sig", 20_000, (corpus.inputs(), threshold), |(input, threshold): (Bytes, u32)| {
        let Ok(trusted) = TrustedKeys::new(&hex, threshold) else { return Ok(()) };
        if let Ok(n) = trusted.verify(&index, &input) {
            prop_assert!(n >= trusted.threshold() && n <= 2, "{n} valid signatures of 2 keys");
        }
        // Any other message is refused, whatever the file says.
        prop_assert!(trusted.verify(b"another index", &input).is_err());
        let _ = accept(&index, &input, &trusted, "stable", Timestamp(1_765_050_000), None);
        Ok(())
    });
}

#[test]
fn fuzz_update_toml() {
    let corpus = Corpus::load(&[corpus("update-toml")]).tokens(&[
        "strategy = ",
        "\"window\"",
        "[window]\n",
        "days = [",
        "start = \"",
        "length = \"",
        "[fleetlock]\n",
        "url = \"http://",
        "threshold = ",
        "tries = ",
        "interval = \"",
        "h",
        "m",
        "s",
    ]);
    let layers = (corpus.inputs(), proptest::option::of(corpus.inputs()));
    // A clock a machine can have (years -32000 to 36000): a window is days from now.
    let clock = prop_oneof![Just(Timestamp(1_765_050_000)), (-(1i64 << 40)..1i64 << 40).prop_map(Timestamp)];
    run("release/update-toml", 50_000, (layers, clock), |((image, admin), now)| {
        let mut texts = vec![(PathBuf::from("/usr/lib/berth/update.toml"), image.text())];
        if let Some(a) = admin {
            texts.push((PathBuf::from("/etc/berth/update.toml"), a.text()));
        }
        let Ok(c) = UpdateConfig::from_texts(&texts) else { return Ok(()) };
        // A threshold of 0 or above the keys is the trust check's to refuse.
        let _ = TrustedKeys::new(&c.keys, c.threshold);
        let _ = c.interval.checked_add(c.jitter).unwrap_or(Duration::MAX);
        if let Reboot::Window(w) = &c.strategy {
            let open = w.next_open(now);
            let _ = (w.contains(now), w.contains(open), w.describe());
        }
        if let Some(ch) = &c.channel {
            let _ = repo::split_index_url(ch);
            let _ = repo::signature_url(ch);
        }
        Ok(())
    });
}
