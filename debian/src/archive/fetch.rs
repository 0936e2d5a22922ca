//! Downloading `.deb`s into the content-addressed cache, concurrently, with progress bars.
//!
//! Each package is streamed to a temporary file in `<cache>/debs/` while its size and SHA-256
//! are checked; only a file matching the signed index is renamed to `<sha256>.deb`. A package
//! already cached (and still matching its hash) costs no request at all, so a second build with
//! the same packages is network-free, and `offline` builds use the cache alone.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use super::PackageRef;
use super::cache::{self, Pending};
use super::error::ArchiveError;
use super::http::{Failure, Http};
use super::release::{hex, parse_sha256};

/// Concurrent downloads: enough to hide per-request latency, few enough to be polite to a
/// public mirror.
const WORKERS: usize = 4;

/// A `.deb` in the cache, verified against the signed index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDeb {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// `amd64` or `all`.
    pub architecture: String,
    /// `<cache>/debs/<sha256>.deb`.
    pub path: PathBuf,
    /// Hex SHA-256 (lowercase).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether this call downloaded it (false: it was in the cache).
    pub downloaded: bool,
}

/// The cache path of a package with the given hex SHA-256.
pub fn deb_path(cache_dir: &Path, sha256_hex: &str) -> PathBuf {
    cache_dir.join("debs").join(format!("{sha256_hex}.deb"))
}

struct Job<'a> {
    pkg: &'a PackageRef,
    sha: [u8; 32],
    path: PathBuf,
}

/// Makes every package available in the cache; returns them in input order.
pub(crate) fn fetch_debs(
    http: Option<&Http>,
    cache_dir: &Path,
    packages: &[PackageRef],
    progress: bool,
) -> Result<Vec<FetchedDeb>, ArchiveError> {
    let debs = cache_dir.join("debs");
    cache::ensure_dir(&debs)?;
    let mut out = Vec::with_capacity(packages.len());
    let mut missing = Vec::new();
    for (i, pkg) in packages.iter().enumerate() {
        let sha = parse_sha256(&pkg.sha256.to_ascii_lowercase()).ok_or_else(|| ArchiveError::Index {
            url: pkg.url.clone(),
            msg: format!("{}: bad SHA-256 `{}`", pkg.name, pkg.sha256),
        })?;
        let sha_hex = hex(&sha);
        let path = deb_path(cache_dir, &sha_hex);
        let cached = cache::file_verified(&path, pkg.size, &sha)?;
        out.push(FetchedDeb {
            name: pkg.name.clone(),
            version: pkg.version.clone(),
            architecture: pkg.architecture.clone(),
            path: path.clone(),
            sha256: sha_hex,
            size: pkg.size,
            downloaded: !cached,
        });
        if !cached {
            missing.push((i, Job { pkg, sha, path }));
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let Some(http) = http else {
        let (_, job) = &missing[0];
        let more = if missing.len() > 1 { format!(" (and {} more)", missing.len() - 1) } else { String::new() };
        return Err(ArchiveError::NotCached {
            what: format!("package {} {}{more}", job.pkg.name, job.pkg.version),
            cache: cache_dir.to_path_buf(),
        });
    };
    download_all(http, &missing, progress)?;
    Ok(out)
}

fn download_all(http: &Http, jobs: &[(usize, Job<'_>)], progress: bool) -> Result<(), ArchiveError> {
    // Bars only on a terminal: logs and CI output stay clean.
    let target = if progress && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let multi = MultiProgress::with_draw_target(target);
    let total: u64 = jobs.iter().map(|(_, j)| j.pkg.size).sum();
    let overall = multi.add(ProgressBar::new(total));
    overall.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    overall.set_message(format!("fetching {} packages", jobs.len()));

    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, ArchiveError)>> = Mutex::new(Vec::new());
    let workers = jobs.len().min(WORKERS);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            // Keeps the spinner moving while one large package downloads.
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let (next, abort, errors, overall) = (&next, &abort, &errors, &overall);
            scope.spawn(move || {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some((index, job)) = jobs.get(n) else { break };
                    bar.set_message(format!("{} {}", job.pkg.name, job.pkg.version));
                    bar.tick();
                    match download(http, job, overall, abort) {
                        Ok(()) => {}
                        Err(None) => break, // cancelled because another download failed
                        Err(Some(e)) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut errs) = errors.lock() {
                                errs.push((*index, e));
                            }
                            break;
                        }
                    }
                }
                bar.finish_and_clear();
            });
        }
    });
    overall.finish_and_clear();
    let mut errors = errors.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Report the failure of the first package in input order, whichever thread saw it first.
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Downloads one package into the cache. `Err(None)`: cancelled.
fn download(http: &Http, job: &Job<'_>, overall: &ProgressBar, abort: &AtomicBool) -> Result<(), Option<ArchiveError>> {
    let url = &job.pkg.url;
    let what = || format!("package {} {}", job.pkg.name, job.pkg.version);
    let cancelled = AtomicBool::new(false);
    let result = http.with_retries(url, |_| {
        let (mut reader, _) = http.open_once(url)?;
        let mut pending = Pending::new(&job.path).map_err(Failure::Final)?;
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        let outcome = loop {
            if abort.load(Ordering::Relaxed) {
                cancelled.store(true, Ordering::Relaxed);
                break Err(Failure::Final(ArchiveError::Unreachable { url: url.clone(), msg: "cancelled".into() }));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(Failure::Retry(berth_http::Error::Read(e))),
            };
            received += n as u64;
            overall.inc(n as u64);
            if received > job.pkg.size {
                break Err(Failure::Final(ArchiveError::SizeMismatch {
                    what: what(),
                    url: url.clone(),
                    expected: job.pkg.size,
                    actual: received,
                }));
            }
            hasher.update(&buf[..n]);
            if let Err(e) = pending.write_all(&buf[..n]) {
                break Err(Failure::Final(e));
            }
        };
        if let Err(e) = outcome {
            // The partial file disappears with `pending`; un-count its bytes for a retry.
            overall.set_position(overall.position().saturating_sub(received));
            return Err(e);
        }
        if received != job.pkg.size {
            return Err(Failure::Final(ArchiveError::SizeMismatch {
                what: what(),
                url: url.clone(),
                expected: job.pkg.size,
                actual: received,
            }));
        }
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != job.sha {
            return Err(Failure::Final(ArchiveError::HashMismatch {
                what: what(),
                url: url.clone(),
                expected: hex(&job.sha),
                actual: hex(&actual),
            }));
        }
        pending.commit().map_err(Failure::Final)
    });
    match result {
        Ok(()) => Ok(()),
        Err(_) if cancelled.load(Ordering::Relaxed) => Err(None),
        Err(e) => Err(Some(e)),
    }
}
