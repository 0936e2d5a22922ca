//! The archive client against this host's real apt configuration and Debian mirror: the
//! `InRelease` files must verify with the host's real keyrings, the indexes must parse, and the
//! container host's core packages must resolve. Only one small `.deb` is downloaded.

use std::time::Instant;

use berth_debian::{Archive, ArchiveConfig};

#[test]
fn host_sources_verify_resolve_and_fetch_one() {
    let cache = tempfile::tempdir().unwrap();
    let mut config = ArchiveConfig::new("/", cache.path());
    config.progress = false;

    let start = Instant::now();
    let archive = Archive::open(&config).unwrap_or_else(|e| panic!("opening the host's archive: {e}"));
    let cold = start.elapsed();
    let stats = archive.stats().clone();
    eprintln!(
        "cold open: {} sources, {} packages, {:.1} MB compressed ({:.1} MB downloaded), {:.1} MB parsed, {:.2?}",
        stats.sources,
        stats.packages,
        stats.compressed_bytes as f64 / 1e6,
        stats.downloaded_bytes as f64 / 1e6,
        stats.raw_bytes as f64 / 1e6,
        cold
    );
    for (source, release) in archive.sources().iter().zip(archive.releases()) {
        eprintln!(
            "  {} -> Suite {:?} Codename {:?} Date {:?} Valid-Until {:?}",
            source.describe(),
            release.suite,
            release.codename,
            release.date,
            release.valid_until
        );
    }
    assert!(stats.packages > 10_000, "a Debian main index has tens of thousands of packages");

    let closure = archive
        .resolve(&["containerd", "runc", "ca-certificates", "openssh-server"])
        .unwrap_or_else(|e| panic!("resolving: {e}"));
    let total: u64 = closure.iter().map(|p| p.size).sum();
    eprintln!("closure: {} packages, {:.1} MB of .debs", closure.len(), total as f64 / 1e6);
    let names: Vec<&str> = closure.iter().map(|p| p.name.as_str()).collect();
    for needed in ["containerd", "runc", "ca-certificates", "openssh-server", "libc6", "openssl"] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by name, no duplicates");
    // Only packages of the target architecture or `all`.
    assert!(closure.iter().all(|p| p.architecture == "amd64" || p.architecture == "all"));

    // The indexes are cached: a second open downloads only the InRelease files and re-parses.
    let start = Instant::now();
    let again = Archive::open(&config).unwrap();
    eprintln!("warm open (indexes cached): {:.2?}", start.elapsed());
    assert_eq!(again.stats().downloaded_bytes, 0);
    assert_eq!(again.resolve(&["containerd", "runc", "ca-certificates", "openssh-server"]).unwrap(), closure);

    // Fetch the smallest package of the closure, and check it with dpkg-deb as a judge.
    let smallest = closure.iter().min_by_key(|p| p.size).unwrap().clone();
    let fetched = archive.fetch(std::slice::from_ref(&smallest)).unwrap();
    assert_eq!(fetched.len(), 1);
    assert!(fetched[0].downloaded);
    eprintln!("fetched {} {} ({} bytes)", smallest.name, smallest.version, smallest.size);
    let out = std::process::Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&fetched[0].path)
        .args(["Package", "Version"])
        .output()
        .expect("dpkg-deb is needed for this test: apt-get install dpkg");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("Package: {}", smallest.name)), "{text}");
    assert!(text.contains(&format!("Version: {}", smallest.version)), "{text}");

    // Offline from the same cache: everything re-verified, nothing fetched.
    config.offline = true;
    let offline = Archive::open(&config).unwrap_or_else(|e| panic!("offline open: {e}"));
    let again = offline.fetch(std::slice::from_ref(&smallest)).unwrap();
    assert!(!again[0].downloaded);
}
