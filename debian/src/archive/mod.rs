//! The Debian archive client: from the host's apt configuration to verified `.deb` files.
//!
//! The flow, and the module that owns each step:
//! - [`sources`]: which repositories (`<apt_root>/etc/apt/sources.list{,.d/}`) and which keys;
//! - [`release`]: `InRelease` is fetched and its OpenPGP signature checked against the keyring
//!   its source names; its `SHA256` list becomes the root of trust (`Valid-Until` enforced);
//! - [`packages`]: the `Packages` indexes, checked against that list, cached by hash, parsed;
//! - [`resolve`]: the dependency closure of the requested packages (rules in that module);
//! - [`fetch`]: the `.deb`s, downloaded concurrently, checked against the index, cached by hash.
//!
//! [`Archive`] ties them together for the builder. Every error is one line naming what failed
//! (see [`ArchiveError`]); nothing unverified is ever returned or cached. `offline` builds use
//! only the cache and re-verify everything in it (the `InRelease` signature included).

mod cache;
mod deb822;
pub mod deps;
mod error;
pub mod fetch;
mod http;
pub mod packages;
pub mod release;
pub mod resolve;
pub mod sources;
pub mod version;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use error::ArchiveError;
pub use fetch::FetchedDeb;
use packages::{IndexContext, IndexStats, Package};
use release::{Keyring, Release, hex};
use resolve::Universe;
use sources::Source;

/// Largest `InRelease` accepted (Debian's are ~150 KB; this only bounds memory).
const INRELEASE_LIMIT: u64 = 64 << 20;

/// What [`Archive::open`] reads and where it caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Root of the filesystem whose `etc/apt` is read; `Signed-By` paths are resolved under it
    /// too. `/` on a build host.
    pub apt_root: PathBuf,
    /// Cache directory: `debs/`, `indexes/`, `inrelease/` (see the cache layout in `cache`).
    pub cache_dir: PathBuf,
    /// Never touch the network: use (and re-verify) only what is cached.
    pub offline: bool,
    /// Debian architecture of the image (`amd64`); `all` packages are always included.
    pub arch: String,
    /// Show download progress bars (only ever drawn when stderr is a terminal).
    pub progress: bool,
}

impl ArchiveConfig {
    /// Online, `amd64`, with progress bars.
    pub fn new(apt_root: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> ArchiveConfig {
        ArchiveConfig {
            apt_root: apt_root.into(),
            cache_dir: cache_dir.into(),
            offline: false,
            arch: "amd64".into(),
            progress: true,
        }
    }
}

/// A resolved package: everything needed to fetch and verify its `.deb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `amd64` or `all`.
    pub architecture: String,
    /// Full URL of the `.deb`.
    pub url: String,
    /// Size in bytes, from the signed index.
    pub size: u64,
    /// Hex SHA-256, from the signed index.
    pub sha256: String,
    /// `Essential: yes`.
    pub essential: bool,
    /// `Priority:` (`required`, `important`, ...).
    pub priority: Option<String>,
    /// `Multi-Arch:`.
    pub multi_arch: Option<String>,
}

/// What [`Archive::open`] did, for logs and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct OpenStats {
    /// Sources read.
    pub sources: usize,
    /// Distinct packages indexed.
    pub packages: usize,
    /// Compressed index bytes (downloaded or cached).
    pub compressed_bytes: u64,
    /// Decompressed index bytes parsed.
    pub raw_bytes: u64,
    /// Index bytes downloaded (0 when all came from the cache).
    pub downloaded_bytes: u64,
    /// Wall time of the whole open (fetch, verify, decompress, parse; sources in parallel).
    pub elapsed: Duration,
}

/// The packages of the configured sources, verified and ready to resolve and fetch.
pub struct Archive {
    config: ArchiveConfig,
    sources: Vec<Source>,
    releases: Vec<Release>,
    universe: Universe,
    http: Option<http::Http>,
    stats: OpenStats,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("config", &self.config).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Archive {
    /// Reads the apt sources, then for each source (in parallel): gets `InRelease` (online:
    /// from the mirror; offline: from the cache), verifies its signature and validity, and loads
    /// its `Packages` indexes (from the cache when a file with the signed hash is there).
    pub fn open(config: &ArchiveConfig) -> Result<Archive, ArchiveError> {
        let start = Instant::now();
        let sources = sources::load_sources(&config.apt_root, &config.arch)?;
        let http = if config.offline { None } else { Some(http::Http::new()) };
        let ctx = IndexContext { http: http.as_ref(), cache_dir: &config.cache_dir, arch: &config.arch };
        let results: Vec<Result<SourceIndex, ArchiveError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sources
                .iter()
                .enumerate()
                .map(|(i, source)| {
                    let ctx = &ctx;
                    scope.spawn(move || open_source(ctx, source, i))
                })
                .collect();
            handles
                .into_iter()
                .zip(&sources)
                .map(|(h, s)| {
                    h.join().unwrap_or_else(|_| {
                        Err(ArchiveError::Release { url: s.dists_url(), msg: "index loader panicked".into() })
                    })
                })
                .collect()
        });
        let mut releases = Vec::new();
        let mut all = Vec::new();
        let mut stats = OpenStats { sources: sources.len(), ..OpenStats::default() };
        // The first failing source in configuration order is reported.
        for result in results {
            let (release, packages, s) = result?;
            releases.push(release);
            all.extend(packages);
            stats.compressed_bytes += s.compressed_bytes;
            stats.raw_bytes += s.raw_bytes;
            stats.downloaded_bytes += s.downloaded_bytes;
        }
        let universe = Universe::new(all);
        stats.packages = universe.len();
        stats.elapsed = start.elapsed();
        Ok(Archive { config: config.clone(), sources, releases, universe, http, stats })
    }

    /// The sources read, in configuration order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The verified Release of each source (same order as [`Archive::sources`]).
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// Every indexed package.
    pub fn universe(&self) -> &Universe {
        &self.universe
    }

    /// Counts and timings of [`Archive::open`].
    pub fn stats(&self) -> &OpenStats {
        &self.stats
    }

    /// Resolves requested packages (each a dependency group such as `containerd (>= 1.6)` or
    /// `dropbear | openssh-server`) into their `Pre-Depends`/`Depends` closure, sorted by name.
    /// See [`resolve`] for the rules.
    pub fn resolve(&self, requests: &[&str]) -> Result<Vec<PackageRef>, ArchiveError> {
        let picked = self.universe.resolve(requests, &self.config.arch)?;
        Ok(picked.into_iter().map(|i| self.package_ref(self.universe.package(i))).collect())
    }

    fn package_ref(&self, p: &Package) -> PackageRef {
        PackageRef {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            url: format!("{}/{}", self.sources[p.source].uri, p.filename.trim_start_matches('/')),
            size: p.size,
            sha256: hex(&p.sha256),
            essential: p.essential,
            priority: p.priority.clone(),
            multi_arch: p.multi_arch.clone(),
        }
    }

    /// Makes every package's `.deb` available in the cache (downloading what is missing,
    /// concurrently, unless offline) and returns them in the same order. Any failure, including
    /// a hash mismatch, is an error and leaves nothing unverified in the cache.
    pub fn fetch(&self, packages: &[PackageRef]) -> Result<Vec<FetchedDeb>, ArchiveError> {
        fetch::fetch_debs(self.http.as_ref(), &self.config.cache_dir, packages, self.config.progress)
    }
}

/// One source's verified Release, its packages, and what reading them took.
type SourceIndex = (Release, Vec<Package>, IndexStats);

/// One source: its verified Release and its packages.
fn open_source(ctx: &IndexContext<'_>, source: &Source, index: usize) -> Result<SourceIndex, ArchiveError> {
    let keyring = Keyring::load(&source.signed_by)?;
    let url = format!("{}/InRelease", source.dists_url());
    let cached = ctx.cache_dir.join("inrelease").join(cache::inrelease_name(&source.dists_url()));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (release, raw) = match ctx.http {
        Some(http) => {
            let raw = http.get(&url, INRELEASE_LIMIT)?;
            let text = keyring.verify_inrelease(&raw, &url)?;
            let release = Release::parse(&text, &url)?;
            release.check(&source.suite, now, &url)?;
            (release, Some(raw))
        }
        None => {
            let raw = match std::fs::read(&cached) {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ArchiveError::NotCached {
                        what: format!("InRelease of {}", source.describe()),
                        cache: ctx.cache_dir.to_path_buf(),
                    });
                }
                Err(e) => return Err(ArchiveError::io(&cached, e)),
            };
            let label = format!("{url} (cached in {})", cached.display());
            let text = keyring.verify_inrelease(&raw, &label)?;
            let release = Release::parse(&text, &label)?;
            release.check(&source.suite, now, &label)?;
            (release, None)
        }
    };
    let (packages, stats) = packages::load_indexes(ctx, source, index, &release)?;
    // Cache InRelease only once its indexes were all good, so an offline build finds a
    // consistent set.
    if let Some(raw) = raw {
        cache::store(&cached, &raw)?;
    }
    Ok((release, packages, stats))
}

#[cfg(test)]
mod fuzz;
