//! Azure: the fixed VHD (`<name>.azure.vhd`) into a page blob, then a Generation 2 managed
//! image from it through Azure Resource Manager.
//!
//! The upload ([`upload_vhd`]): the VHD is checked ([`vhd::check`]); the page blob is created
//! with the VHD's length and the footer's digest as metadata; only the data runs are written
//! ([`crate::blocks::DataRuns`]: holes and zero granules skipped, unwritten pages read as zeros),
//! at most 4 MiB per Put Page, many in flight; Get Page Ranges must then cover every run sent;
//! last, the metadata gains `berthsha256`, the digest of the data sent, which marks the blob
//! complete.
//!
//! Run again, an upload finds the blob and decides from its length and metadata: complete with
//! the same digest → nothing sent; started by a run for the same VHD (same footer) but not
//! complete → every page written again (Put Page is idempotent) and completed; anything else
//! (another length, another VHD, a blob Berth did not make) → an error, unless `overwrite`,
//! which recreates the blob empty first.

pub mod arm;
pub mod auth;
pub mod pageblob;
pub mod vhd;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_http::Client;
use sha2::{Digest, Sha256};

pub use arm::{ImageOutcome, ImageSpec, create_image, preflight};
pub use auth::{Auth, Blob, BlobOptions, Credentials, resolve};

use crate::blocks::DataRuns;
use crate::{Error, Progress};

/// Files are scanned for data in granules of this size: a zero granule is not sent.
pub const GRANULE: u64 = 64 << 10;
/// The most one Put Page carries (the service's limit).
pub const MAX_RUN: u64 = pageblob::MAX_PAGE_WRITE as u64;
/// Page writes in flight unless told otherwise.
pub const DEFAULT_JOBS: usize = 16;

/// Metadata names Berth sets on the blob: the footer's SHA-256 (set at creation: which VHD this
/// blob is for), the VHD's unique id, and the data digest (set last: the blob is complete).
pub const META_FOOTER: &str = "berthfooter";
/// See [`META_FOOTER`].
pub const META_UNIQUE_ID: &str = "berthvhdid";
/// See [`META_FOOTER`].
pub const META_SHA256: &str = "berthsha256";
const META_NAMES: [&str; 3] = [META_FOOTER, META_UNIQUE_ID, META_SHA256];

/// What the upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobOutcome {
    /// The blob's URL, without any SAS.
    pub blob_url: String,
    /// Put Page calls that succeeded.
    pub pages_sent: u64,
    /// Bytes those calls carried.
    pub bytes_sent: u64,
    /// Bytes not sent: holes and zero granules (or the whole file when the blob was complete).
    pub bytes_skipped: u64,
    /// Whether the blob was complete already, from an earlier run.
    pub reused: bool,
    /// The data digest ([`META_SHA256`]).
    pub sha256: String,
    /// The page ranges Get Page Ranges listed after the upload (`[start, end]`, merged), empty
    /// when the blob was reused.
    pub ranges: Vec<(u64, u64)>,
}

/// The SHA-256 of the VHD's data as the upload sends it: for each data run in order, its offset
/// and length (big-endian u64) and its bytes. Equal files give equal digests; holes cost nothing.
struct DataDigest(Sha256);

impl DataDigest {
    fn add(&mut self, offset: u64, data: &[u8]) {
        self.0.update(offset.to_be_bytes());
        self.0.update((data.len() as u64).to_be_bytes());
        self.0.update(data);
    }

    fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The data digest of `path`, read without sending anything.
fn digest_of(path: &Path) -> Result<String, Error> {
    let mut d = DataDigest(Sha256::new());
    for run in DataRuns::open(path, GRANULE, MAX_RUN)? {
        let run = run?;
        d.add(run.offset, &run.data);
    }
    Ok(d.hex())
}

/// Uploads the fixed VHD at `path` into the page blob `blob` (see the module's doc for re-runs),
/// `jobs` page writes in flight.
pub fn upload_vhd(
    client: &Client,
    blob: &Blob,
    path: &Path,
    jobs: usize,
    overwrite: bool,
    progress: &dyn Progress,
) -> Result<BlobOutcome, Error> {
    let footer = vhd::check(path)?;
    let length = footer.disk_size + vhd::FOOTER_LEN;
    let footer_sha = hex(&Sha256::digest(&footer.bytes));
    let started = |with: Option<String>| {
        let mut m = vec![(META_FOOTER, footer_sha.clone()), (META_UNIQUE_ID, footer.unique_id.clone())];
        if let Some(sha) = with {
            m.push((META_SHA256, sha));
        }
        m
    };
    let outcome = |pages_sent, bytes_sent, bytes_skipped, reused, sha256, ranges| BlobOutcome {
        blob_url: blob.url.clone(),
        pages_sent,
        bytes_sent,
        bytes_skipped,
        reused,
        sha256,
        ranges,
    };
    let refuse = |why: String| Error::Operation {
        what: format!("blob {}", blob.url),
        message: format!("{why}; --overwrite replaces it"),
    };
    match pageblob::properties(client, blob, progress)? {
        None => pageblob::create(client, blob, length, &started(None), progress)?,
        Some(p) if p.blob_type != "PageBlob" || p.length != length => {
            if !overwrite {
                return Err(refuse(format!("exists as a {} of {} bytes, the VHD has {length}", p.blob_type, p.length)));
            }
            progress.note(&format!(
                "{}: replacing the existing {} of {} bytes (--overwrite)",
                blob.url, p.blob_type, p.length
            ));
            pageblob::create(client, blob, length, &started(None), progress)?;
        }
        Some(p) if p.meta(META_FOOTER) == Some(footer_sha.as_str()) => match p.meta(META_SHA256) {
            Some(done) => {
                let sha = digest_of(path)?;
                if sha == done {
                    progress
                        .note(&format!("{}: complete from an earlier run (sha256 {sha}); nothing to send", blob.url));
                    progress.start("page blob (already uploaded)", length);
                    progress.advance(length);
                    progress.finish();
                    return Ok(outcome(0, 0, length, true, sha, Vec::new()));
                }
                if !overwrite {
                    return Err(refuse(format!(
                        "holds other data for this VHD's footer (sha256 {done}, the file's {sha})"
                    )));
                }
                pageblob::create(client, blob, length, &started(None), progress)?;
            }
            None => progress
                .note(&format!("{}: an earlier run for this VHD did not finish; writing its pages again", blob.url)),
        },
        Some(p) => {
            if !overwrite {
                let whose =
                    if p.meta(META_FOOTER).is_some() { "another VHD's upload" } else { "a blob berth did not upload" };
                return Err(refuse(format!("exists ({whose}, {} bytes)", p.length)));
            }
            progress.note(&format!("{}: replacing it (--overwrite)", blob.url));
            pageblob::create(client, blob, length, &started(None), progress)?;
        }
    }

    progress.start("page blob", length);
    let mut digest = DataDigest(Sha256::new());
    let mut scanned = 0u64;
    let mut skipped = 0u64;
    let mut sent_runs: Vec<(u64, u64)> = Vec::new();
    let pages = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let runs = DataRuns::open(path, GRANULE, MAX_RUN)?;
    // Runs are read, hashed and counted on this thread, in order; the pages go out on `jobs`.
    let items = runs.map(|run| {
        let run = run?;
        let gap = run.offset - scanned;
        skipped += gap;
        progress.advance(gap);
        scanned = run.offset + run.data.len() as u64;
        digest.add(run.offset, &run.data);
        sent_runs.push((run.offset, scanned - 1));
        Ok(run)
    });
    crate::parallel::for_each(items, jobs, |run| {
        pageblob::put_page(client, blob, run.offset, &run.data, progress)?;
        pages.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(run.data.len() as u64, Ordering::Relaxed);
        progress.advance(run.data.len() as u64);
        Ok::<_, Error>(())
    })?;
    skipped += length - scanned;
    progress.advance(length - scanned);
    progress.finish();

    // The footer is data (its cookie), so the last run must end the blob.
    if sent_runs.last().map(|r| r.1 + 1) != Some(length) {
        return Err(Error::Protocol {
            call: "upload".to_string(),
            url: blob.url.clone(),
            message: "the VHD footer was not among the pages written".to_string(),
        });
    }
    let ranges = merge(pageblob::page_ranges(client, blob, progress)?);
    if let Some(missing) = sent_runs.iter().find(|r| !covered(&ranges, **r)) {
        return Err(Error::Protocol {
            call: "Get Page Ranges".to_string(),
            url: blob.url.clone(),
            message: format!("bytes {}-{} were written but are not listed as a page range", missing.0, missing.1),
        });
    }
    let sha = digest.hex();
    pageblob::set_metadata(client, blob, &started(Some(sha.clone())), progress)?;
    Ok(outcome(pages.into_inner(), bytes.into_inner(), skipped, false, sha, ranges))
}

/// Adjacent or overlapping ranges joined.
pub fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn covered(merged: &[(u64, u64)], (s, e): (u64, u64)) -> bool {
    merged.iter().any(|&(a, b)| a <= s && e <= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_cover() {
        let m = merge(vec![(1024, 2047), (0, 511), (512, 1023), (4096, 4607)]);
        assert_eq!(m, [(0, 2047), (4096, 4607)]);
        assert!(covered(&m, (512, 2047)));
        assert!(!covered(&m, (2048, 2559)));
    }
}
