//! The archive client end to end against a throwaway repository on 127.0.0.1: real `.deb`s
//! (dpkg-deb), a real OpenPGP signature (gpg), xz/gzip indexes, and an HTTP server that logs
//! every request so "no network" can be asserted, not assumed.

#[path = "support/archive_repo.rs"]
mod repo;

use berth_debian::{Archive, ArchiveError};
use repo::{Options, Repo, Spec, spec};

const SPECS: &[Spec] = &[
    spec(
        "hello",
        "1.0-1",
        "amd64",
        "Pre-Depends: base-files\nDepends: libgreet (>= 1.1) | libgreet-compat, mail-transport-agent",
    ),
    spec("libgreet", "1.2-1", "amd64", ""),
    spec("libgreet-compat", "0.1", "amd64", ""),
    spec("base-files", "12.4", "all", "Essential: yes\nPriority: required"),
    spec("tiny-mta", "2:0.5~rc1-3", "amd64", "Provides: mail-transport-agent"),
    spec("lonely", "1", "all", ""),
];

fn one_line(e: &ArchiveError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s:?}");
    s
}

#[test]
fn resolve_fetch_then_cache_then_offline() {
    let repo = Repo::new(SPECS, &Options::default());
    let archive = Archive::open(&repo.config()).unwrap();
    // InRelease, then the xz index by hash; nothing else.
    let reqs = repo.server.take_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0], "/debian/dists/stable/InRelease");
    assert!(reqs[1].starts_with("/debian/dists/stable/main/binary-amd64/by-hash/SHA256/"), "{reqs:?}");
    assert_eq!(archive.universe().len(), SPECS.len());

    let closure = archive.resolve(&["hello"]).unwrap();
    let got: Vec<(&str, &str)> = closure.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
    // Alternatives: the first one; virtual: its only provider; no `lonely`; sorted by name.
    assert_eq!(got, [("base-files", "12.4"), ("hello", "1.0-1"), ("libgreet", "1.2-1"), ("tiny-mta", "2:0.5~rc1-3")]);
    assert!(closure[0].essential && closure[0].priority.as_deref() == Some("required"));
    assert_eq!(closure[1].url, format!("{}/debian/pool/main/h/hello_1.0-1_amd64.deb", repo.server.url()));

    let fetched = archive.fetch(&closure).unwrap();
    let mut reqs = repo.server.take_requests();
    reqs.sort();
    assert_eq!(reqs.len(), 4, "one request per package: {reqs:?}");
    for (f, p) in fetched.iter().zip(&closure) {
        assert!(f.downloaded);
        assert_eq!((f.name.as_str(), f.size, f.sha256.as_str()), (p.name.as_str(), p.size, p.sha256.as_str()));
        // Byte-identical to what the server holds, stored under its hash.
        assert_eq!(std::fs::read(&f.path).unwrap(), repo.debs[&p.name].1);
        assert_eq!(f.path, repo.cache.path().join("debs").join(format!("{}.deb", p.sha256)));
    }
    assert_eq!(repo.cached_debs().len(), 4, "no temporary files left: {:?}", repo.cached_debs());

    // Second fetch: everything cached, zero requests.
    let again = archive.fetch(&closure).unwrap();
    assert!(again.iter().all(|f| !f.downloaded));
    assert_eq!(repo.server.take_requests(), Vec::<String>::new());

    // A second build: only the (small) InRelease is fetched to learn about updates; the
    // index comes from the cache by hash, and the .debs make no request.
    let second = Archive::open(&repo.config()).unwrap();
    assert_eq!(second.stats().downloaded_bytes, 0);
    let closure2 = second.resolve(&["hello"]).unwrap();
    assert_eq!(closure2, closure);
    second.fetch(&closure2).unwrap();
    assert_eq!(repo.server.take_requests(), ["/debian/dists/stable/InRelease"]);

    // Offline: the cache alone, signature and hashes re-verified, not a single request.
    let mut config = repo.config();
    config.offline = true;
    let offline = Archive::open(&config).unwrap();
    let closure3 = offline.resolve(&["hello"]).unwrap();
    assert_eq!(closure3, closure);
    let fetched3 = offline.fetch(&closure3).unwrap();
    assert_eq!(
        fetched3.iter().map(|f| &f.path).collect::<Vec<_>>(),
        fetched.iter().map(|f| &f.path).collect::<Vec<_>>()
    );
    // Offline and not cached: an error naming the package.
    let lonely = offline.resolve(&["lonely"]).unwrap();
    let e = offline.fetch(&lonely).unwrap_err();
    assert_eq!(one_line(&e), format!("offline: package lonely 1 is not in the cache {}", repo.cache.path().display()));
    assert_eq!(repo.server.take_requests(), Vec::<String>::new());

    // A cached .deb that rotted on disk is not trusted: offline it is missing...
    let victim = &fetched[1].path;
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    let e = offline.fetch(&closure3).unwrap_err();
    assert!(one_line(&e).starts_with("offline: package hello 1.0-1 is not in the cache"), "{e}");
    assert!(!victim.exists(), "a corrupt cache entry is removed");
    // ...and online it is downloaded again (one request).
    archive.fetch(&closure).unwrap();
    assert_eq!(repo.server.take_requests(), ["/debian/pool/main/h/hello_1.0-1_amd64.deb"]);
}

#[test]
fn offline_without_cache_names_what_is_missing() {
    let repo = Repo::new(SPECS, &Options::default());
    let mut config = repo.config();
    config.offline = true;
    let e = Archive::open(&config).unwrap_err();
    assert_eq!(
        one_line(&e),
        format!(
            "offline: InRelease of {}/debian stable is not in the cache {}",
            repo.server.url(),
            repo.cache.path().display()
        )
    );
    assert_eq!(repo.server.take_requests(), Vec::<String>::new());
}

#[test]
fn tampered_inrelease_is_rejected() {
    let repo = Repo::new(SPECS, &Options::default());
    let path = "/debian/dists/stable/InRelease";
    let signed = String::from_utf8(repo.server.get(path)).unwrap();
    // Change one byte of the signed text: the first hex digit of the first index hash.
    let at = signed.find("SHA256:\n ").unwrap() + "SHA256:\n ".len();
    let mut bytes = signed.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    repo.server.put(path, bytes);
    let e = Archive::open(&repo.config()).unwrap_err();
    assert!(matches!(e, ArchiveError::BadSignature { .. }), "{e:?}");
    let msg = one_line(&e);
    assert!(msg.starts_with(&format!("{}{path}: BAD signature from key", repo.server.url())), "{msg}");
    assert!(msg.contains("keys/archive.gpg"), "{msg}");
    // Nothing was cached from it.
    assert!(!repo.cache.path().join("inrelease").exists());
    assert!(!repo.cache.path().join("indexes").exists());
}

#[test]
fn signature_by_a_key_outside_the_keyring_is_rejected() {
    let repo = Repo::new(SPECS, &Options { foreign_signer: true, ..Options::default() });
    let e = Archive::open(&repo.config()).unwrap_err();
    assert!(matches!(e, ArchiveError::UnknownSigner { .. }), "{e:?}");
    let msg = one_line(&e);
    assert!(msg.contains("/InRelease: not signed by any key in"), "{msg}");
    assert!(!msg.contains(&repo.key), "the signer is not the keyring's key: {msg}");
}

#[test]
fn expired_release_is_rejected() {
    let valid_until = "Sat, 01 Jan 2022 00:00:00 UTC";
    let repo = Repo::new(SPECS, &Options { valid_until: Some(valid_until.into()), ..Options::default() });
    let e = Archive::open(&repo.config()).unwrap_err();
    assert_eq!(
        one_line(&e),
        format!(
            "{}/debian/dists/stable/InRelease: Release expired: Valid-Until {valid_until} is in the past",
            repo.server.url()
        )
    );
}

#[test]
fn future_valid_until_inline_key_and_gz_index() {
    let repo = Repo::new(
        SPECS,
        &Options {
            valid_until: Some("Fri, 31 Dec 2094 00:00:00 UTC".into()),
            inline_key: true,
            gz_only: true,
            ..Options::default()
        },
    );
    let archive = Archive::open(&repo.config()).unwrap();
    let reqs = repo.server.take_requests();
    assert!(reqs.iter().any(|r| r.contains("by-hash")), "{reqs:?}");
    // The requested libgreet-compat satisfies hello's `libgreet (>= 1.1) | libgreet-compat`,
    // so libgreet is not pulled in.
    let closure = archive.resolve(&["libgreet-compat", "hello"]).unwrap();
    let names: Vec<&str> = closure.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base-files", "hello", "libgreet-compat", "tiny-mta"]);
}

#[test]
fn deb_with_wrong_hash_is_rejected_and_not_cached() {
    let repo = Repo::new(SPECS, &Options::default());
    let archive = Archive::open(&repo.config()).unwrap();
    let closure = archive.resolve(&["libgreet"]).unwrap();
    // Same size, one byte different.
    let (pool, mut bytes) = repo.debs["libgreet"].clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    repo.server.put(&format!("/debian/{pool}"), bytes);
    let e = archive.fetch(&closure).unwrap_err();
    assert!(matches!(e, ArchiveError::HashMismatch { .. }), "{e:?}");
    let msg = one_line(&e);
    let url = format!("{}/debian/{pool}", repo.server.url());
    assert!(msg.starts_with(&format!("package libgreet 1.2-1 from {url}: SHA-256 ")), "{msg}");
    assert!(msg.ends_with(&format!("expected {}", closure[0].sha256)), "{msg}");
    assert_eq!(repo.cached_debs(), Vec::<std::path::PathBuf>::new(), "nothing (not even a partial file) is cached");

    // A longer body is cut off at the announced size and rejected too.
    let (_, mut longer) = repo.debs["libgreet"].clone();
    longer.extend_from_slice(b"trailing junk");
    repo.server.put(&format!("/debian/{pool}"), longer);
    let e = archive.fetch(&closure).unwrap_err();
    assert!(matches!(e, ArchiveError::SizeMismatch { .. }), "{e:?}");
    assert_eq!(repo.cached_debs(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn tampered_index_is_rejected() {
    let repo = Repo::new(SPECS, &Options::default());
    let requests = {
        // Learn the by-hash name, then serve other bytes under it.
        Archive::open(&repo.config()).unwrap();
        repo.server.take_requests()
    };
    let by_hash = requests.iter().find(|r| r.contains("by-hash")).unwrap().clone();
    std::fs::remove_dir_all(repo.cache.path()).unwrap();
    let mut bytes = repo.server.get(&by_hash);
    bytes[10] ^= 1;
    repo.server.put(&by_hash, bytes);
    let e = Archive::open(&repo.config()).unwrap_err();
    assert!(matches!(e, ArchiveError::HashMismatch { .. }), "{e:?}");
    assert!(one_line(&e).starts_with("main/binary-amd64/Packages.xz from http://127.0.0.1:"), "{e}");
    assert!(!repo.cache.path().join("indexes").read_dir().is_ok_and(|mut d| d.next().is_some()));
}

#[test]
fn unknown_package_names_it_and_who_needs_it() {
    let repo = Repo::new(SPECS, &Options::default());
    let archive = Archive::open(&repo.config()).unwrap();
    let e = archive.resolve(&["hello", "no-such-package"]).unwrap_err();
    assert_eq!(one_line(&e), "unknown package `no-such-package` (needed by the image definition)");
    let e = archive.resolve(&["hello (>= 2)"]).unwrap_err();
    assert_eq!(one_line(&e), "cannot satisfy `hello (>= 2)` (needed by the image definition): available: 1.0-1");
}

#[test]
fn unreachable_mirror_is_one_line_naming_the_url() {
    let repo = Repo::new(SPECS, &Options::default());
    let port = repo::dead_port();
    let sources = repo.apt_root.path().join("etc/apt/sources.list.d/berth-test.sources");
    let text =
        std::fs::read_to_string(&sources).unwrap().replace(&repo.server.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(&sources, text).unwrap();
    let e = Archive::open(&repo.config()).unwrap_err();
    assert!(matches!(e, ArchiveError::Unreachable { .. }), "{e:?}");
    let msg = one_line(&e);
    assert!(msg.starts_with(&format!("cannot reach http://127.0.0.1:{port}/debian/dists/stable/InRelease: ")), "{msg}");
    assert!(msg.ends_with("(tried 3 times)"), "{msg}");
}

#[test]
fn missing_keyring_is_one_line() {
    let repo = Repo::new(SPECS, &Options::default());
    std::fs::remove_file(repo.apt_root.path().join("keys/archive.gpg")).unwrap();
    let e = Archive::open(&repo.config()).unwrap_err();
    let msg = one_line(&e);
    assert!(msg.contains("keys/archive.gpg: No such file"), "{msg}");
}
