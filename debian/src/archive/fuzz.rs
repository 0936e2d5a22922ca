//! Fuzz targets (berth-fuzzkit) for the archive's parsers: `Release` (deb822, the SHA256 list,
//! dates), `Packages` (plain and xz, then dependency relations, versions and the resolver over
//! what parsed) and the OpenPGP check of `InRelease`. Seeds: `debian/fuzz/corpus/release/`,
//! `packages/`, `inrelease/` (signed by `debian/fuzz/keys/archive.gpg`, made for this). The
//! bytes are the archive's, verified or not yet verified; no input may panic the builder.

use std::path::{Path, PathBuf};

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Corpus, run};

use super::release::{Keyring, Release, parse_date};
use super::resolve::Universe;
use super::{deb822, deps, packages, version};

fn dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(rel)
}

const DEB822_TOKENS: &[&str] = &[
    "\n ",
    "\n .\n",
    "\n\n",
    ": ",
    "SHA256:\n ",
    "Valid-Until: ",
    "Depends: ",
    "Provides: ",
    "(>= ",
    " | ",
    ":any",
    "~",
    "+",
    "UTC",
    "+0100",
];

#[test]
fn fuzz_release_files() {
    let corpus = Corpus::load(&[dir("corpus/release")]).tokens(DEB822_TOKENS);
    run("debian/release", 20_000, corpus.inputs(), |input| {
        let text = input.text();
        let _ = deb822::parse(&text);
        if let Ok(r) = Release::parse(&text, "http://deb.invalid/dists/stable/InRelease") {
            let _ = r.check("stable", i64::MAX, "url");
            let _ = r.check("bookworm", i64::MIN, "url");
        }
        for line in text.lines() {
            let _ = parse_date(line);
            let _ = parse_date(line.split_once(':').map_or(line, |(_, v)| v));
        }
        Ok(())
    });
}

#[test]
fn fuzz_packages_indexes() {
    let corpus = Corpus::load(&[dir("corpus/packages")]).tokens(DEB822_TOKENS);
    run("debian/packages", 20_000, (corpus.inputs(), any::<bool>()), |(input, xz)| {
        // The xz seed decompresses; mutations of it exercise liblzma's error paths.
        let data = match packages::decompress(if xz { "Packages.xz" } else { "Packages" }, &input) {
            Ok(d) => d,
            Err(_) => input.0.clone(),
        };
        let mut out = Vec::new();
        let _ = packages::parse_packages(&data, 0, "amd64", &mut out);
        for p in &out {
            for field in [&p.depends, &p.pre_depends] {
                if let Ok(groups) = deps::parse_relations(field) {
                    for g in &groups {
                        let _ = deps::display_group(g);
                    }
                }
            }
            let _ = deps::parse_provides(&p.depends);
            for q in &out {
                let a = version::compare(&p.version, &q.version);
                prop_assert_eq!(
                    a.reverse(),
                    version::compare(&q.version, &p.version),
                    "{} vs {}",
                    p.version,
                    q.version
                );
            }
            for op in ["<<", "<=", "=", ">=", ">>", "<", ">"] {
                if let Some(r) = version::Relation::parse(op) {
                    let _ = r.holds(&p.version, "1.0");
                }
            }
        }
        let names: Vec<String> = out.iter().map(|p| p.name.clone()).collect();
        let requests: Vec<&str> = names.iter().map(String::as_str).take(3).collect();
        let universe = Universe::new(out);
        let _ = universe.resolve(&requests, "amd64");
        Ok(())
    });
}

#[test]
fn fuzz_inrelease_signatures() {
    let key = std::fs::read(dir("keys/archive.gpg")).unwrap();
    let keyring = Keyring::from_bytes(&key, "archive.gpg").unwrap();
    let corpus = Corpus::load(&[dir("corpus/inrelease")]).tokens(&[
        "-----BEGIN PGP SIGNED MESSAGE-----\n",
        "-----BEGIN PGP SIGNATURE-----\n",
        "-----END PGP SIGNATURE-----\n",
        "Hash: SHA512\n",
        "\n- ",
        "=",
    ]);
    let seed = String::from_utf8(corpus.seeds()[0].clone()).unwrap();
    assert!(keyring.verify_inrelease(seed.as_bytes(), "seed").is_ok(), "the seed is signed by the seed key");
    run("debian/inrelease", 3000, corpus.inputs(), |input| {
        if let Ok(text) = keyring.verify_inrelease(&input, "http://deb.invalid/InRelease") {
            let _ = Release::parse(&text, "InRelease");
        }
        let _ = Keyring::from_bytes(&input, "fuzzed keyring");
        Ok(())
    });
}
