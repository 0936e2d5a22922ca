//! `Packages` indexes: choosing, downloading (or taking from the cache), verifying against the
//! signed Release, decompressing and parsing them.
//!
//! Indexes are large (tens of MB uncompressed, ~60,000 stanzas for Debian main), so parsing is a
//! single pass over bytes that keeps only the fields the resolver and the fetcher need;
//! `Depends`/`Pre-Depends` stay as text and are parsed only for packages the resolver visits.

use std::io::Read;
use std::path::Path;

use berth_error_line::one_line;

use super::cache;
use super::deps::{Provide, parse_provides};
use super::error::ArchiveError;
use super::http::Http;
use super::release::{FileEntry, Release, hex, parse_sha256};
use super::sources::Source;

/// One binary package from an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// `Package:`
    pub name: String,
    /// `Version:`
    pub version: String,
    /// `Architecture:` (the target architecture or `all`).
    pub architecture: String,
    /// `Depends:` as written (parsed on demand).
    pub depends: String,
    /// `Pre-Depends:` as written (parsed on demand).
    pub pre_depends: String,
    /// `Provides:`, parsed.
    pub provides: Vec<Provide>,
    /// `Filename:`, relative to the source's base URI.
    pub filename: String,
    /// `Size:` of the `.deb`.
    pub size: u64,
    /// `SHA256:` of the `.deb`.
    pub sha256: [u8; 32],
    /// `Essential: yes`.
    pub essential: bool,
    /// `Priority:`
    pub priority: Option<String>,
    /// `Multi-Arch:`
    pub multi_arch: Option<String>,
    /// Index of the [`Source`] it came from, in the archive's source list.
    pub source: usize,
}

/// Which index files a source's Release offers for one component, best first: xz is smallest,
/// gz is the fallback, plain last. Returns (path relative to `dists/<suite>/`, entry).
fn choose_index(release: &Release, component: &str, arch: &str) -> Option<(String, FileEntry)> {
    ["Packages.xz", "Packages.gz", "Packages"].iter().find_map(|name| {
        let path = format!("{component}/binary-{arch}/{name}");
        release.files.get(&path).map(|e| (path, *e))
    })
}

/// Everything a source's indexes need to be loaded.
pub(crate) struct IndexContext<'a> {
    pub http: Option<&'a Http>,
    pub cache_dir: &'a Path,
    pub arch: &'a str,
}

/// Byte and count statistics of one source's indexes, for progress messages and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexStats {
    /// Compressed bytes of the indexes read.
    pub compressed_bytes: u64,
    /// Decompressed bytes parsed.
    pub raw_bytes: u64,
    /// Bytes actually downloaded (0 when all came from the cache).
    pub downloaded_bytes: u64,
}

/// Loads every `Packages` index of `source` (index `source_idx`) that `release` lists for the
/// target architecture (and `all` when the archive keeps those separately).
pub(crate) fn load_indexes(
    ctx: &IndexContext<'_>,
    source: &Source,
    source_idx: usize,
    release: &Release,
) -> Result<(Vec<Package>, IndexStats), ArchiveError> {
    let mut packages = Vec::new();
    let mut stats = IndexStats::default();
    let dists = source.dists_url();
    for component in &source.components {
        let mut archs = vec![ctx.arch];
        if !release.all_in_arch_indexes && release.architectures.iter().any(|a| a == "all") {
            archs.push("all");
        }
        for arch in archs {
            let Some((path, entry)) = choose_index(release, component, arch) else {
                if arch == "all" {
                    continue;
                }
                return Err(ArchiveError::Release {
                    url: format!("{dists}/InRelease"),
                    msg: format!("lists no Packages index for {component}/binary-{arch}"),
                });
            };
            let url = format!("{dists}/{path}");
            // The Release also lists the uncompressed index's hash (the file itself is not on
            // Debian's mirrors). Caching the decompressed bytes under that hash spares later
            // builds the xz decompression, the slowest part of opening the archive (~0.5 s for
            // Debian main), while staying verified; and it checks the decompressor's output.
            let plain_path = format!("{component}/binary-{arch}/Packages");
            let plain = release.files.get(&plain_path).copied().filter(|_| path != plain_path);
            let cached_plain = match &plain {
                Some(p) => {
                    cache::read_verified(&ctx.cache_dir.join("indexes").join(hex(&p.sha256)), p.size, &p.sha256)?
                }
                None => None,
            };
            let raw = match cached_plain {
                Some(raw) => raw,
                None => {
                    let (compressed, downloaded) = fetch_index(ctx, release, &dists, &path, &entry, plain.is_none())?;
                    stats.compressed_bytes += compressed.len() as u64;
                    stats.downloaded_bytes += downloaded;
                    let raw =
                        decompress(&path, &compressed).map_err(|msg| ArchiveError::Index { url: url.clone(), msg })?;
                    if let Some(p) = &plain {
                        check_bytes(&raw, p, &format!("{plain_path} (decompressed)"), &url)?;
                        cache::store(&ctx.cache_dir.join("indexes").join(hex(&p.sha256)), &raw)?;
                    }
                    raw
                }
            };
            stats.raw_bytes += raw.len() as u64;
            parse_packages(&raw, source_idx, ctx.arch, &mut packages)
                .map_err(|(line, msg)| ArchiveError::Index { url: url.clone(), msg: format!("line {line}: {msg}") })?;
        }
    }
    Ok((packages, stats))
}

/// Gets an index file's verified bytes: from the cache when there, else from the mirror (by
/// hash when the archive supports it), caching them when `store`. Returns the bytes and how
/// many were downloaded.
fn fetch_index(
    ctx: &IndexContext<'_>,
    release: &Release,
    dists: &str,
    path: &str,
    entry: &FileEntry,
    store: bool,
) -> Result<(Vec<u8>, u64), ArchiveError> {
    let digest = hex(&entry.sha256);
    let cached = ctx.cache_dir.join("indexes").join(&digest);
    if let Some(bytes) = cache::read_verified(&cached, entry.size, &entry.sha256)? {
        return Ok((bytes, 0));
    }
    let plain_url = format!("{dists}/{path}");
    let Some(http) = ctx.http else {
        return Err(ArchiveError::NotCached {
            what: format!("index {plain_url} (SHA-256 {digest})"),
            cache: ctx.cache_dir.to_path_buf(),
        });
    };
    // by-hash URLs name one immutable file, so a mirror updating between our InRelease and
    // index downloads cannot hand us a mismatching pair; fall back to the plain name on 404.
    let mut urls = Vec::new();
    if release.acquire_by_hash
        && let Some((dir, _)) = path.rsplit_once('/')
    {
        urls.push(format!("{dists}/{dir}/by-hash/SHA256/{digest}"));
    }
    urls.push(plain_url.clone());
    let mut last_err = None;
    for url in &urls {
        match http.get(url, entry.size) {
            Ok(bytes) => {
                check_bytes(&bytes, entry, path, url)?;
                if store {
                    cache::store(&cached, &bytes)?;
                }
                let n = bytes.len() as u64;
                return Ok((bytes, n));
            }
            Err(ArchiveError::HttpStatus { status: 404, url }) => {
                last_err = Some(ArchiveError::HttpStatus { status: 404, url });
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or(ArchiveError::HttpStatus { url: plain_url, status: 404 }))
}

fn check_bytes(bytes: &[u8], entry: &FileEntry, what: &str, url: &str) -> Result<(), ArchiveError> {
    if bytes.len() as u64 != entry.size {
        return Err(ArchiveError::SizeMismatch {
            what: what.to_string(),
            url: url.to_string(),
            expected: entry.size,
            actual: bytes.len() as u64,
        });
    }
    let actual = cache::sha256(bytes);
    if actual != entry.sha256 {
        return Err(ArchiveError::HashMismatch {
            what: what.to_string(),
            url: url.to_string(),
            expected: hex(&entry.sha256),
            actual: hex(&actual),
        });
    }
    Ok(())
}

/// Decompresses by the index file's extension.
pub(crate) fn decompress(path: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    // Indexes compress about 5:1; reserving avoids repeated regrowth of a ~50 MB buffer.
    let mut out = Vec::with_capacity(bytes.len() * 5);
    if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(bytes).read_to_end(&mut out).map_err(|e| format!("xz: {}", one_line(&e)))?;
    } else if path.ends_with(".gz") {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip: {}", one_line(&e)))?;
    } else {
        out.clear();
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// The fields kept from a stanza, in the order of [`KEPT`].
const KEPT: [&[u8]; 12] = [
    b"Package",
    b"Version",
    b"Architecture",
    b"Depends",
    b"Pre-Depends",
    b"Provides",
    b"Filename",
    b"Size",
    b"SHA256",
    b"Essential",
    b"Priority",
    b"Multi-Arch",
];

/// One stanza's kept field values, as slices of the index.
type Fields<'a> = [Option<&'a [u8]>; KEPT.len()];

/// Parses a `Packages` file, appending packages of `arch` or `all` to `out`. Errors carry the
/// 1-based line of the offending stanza.
pub(crate) fn parse_packages(
    data: &[u8],
    source: usize,
    arch: &str,
    out: &mut Vec<Package>,
) -> Result<(), (usize, String)> {
    let mut fields: Fields<'_> = Default::default();
    // The kept field the previous line belonged to, and where its value starts: a
    // continuation line extends that value (the dependency parser treats newlines as spaces).
    let mut last: Option<(usize, usize)> = None;
    let mut stanza_line = 0;
    let mut in_stanza = false;
    let mut lineno = 0;
    let mut pos = 0;
    while pos <= data.len() {
        let end = data[pos..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| pos + i);
        let start = pos;
        let line = &data[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        lineno += 1;
        pos = end + 1;
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            if in_stanza {
                finish(std::mem::take(&mut fields), stanza_line, source, arch, out)?;
                in_stanza = false;
            }
            last = None;
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((slot, value_start)) = last {
                fields[slot] = Some(data[value_start..start + line.len()].trim_ascii());
            }
            continue;
        }
        if line[0] == b'#' {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err((lineno, format!("expected `Field: value`, found `{}`", String::from_utf8_lossy(line))));
        };
        if !in_stanza {
            in_stanza = true;
            stanza_line = lineno;
        }
        let name = &line[..colon];
        last = KEPT.iter().position(|k| *k == name).map(|slot| (slot, start + colon + 1));
        if let Some((slot, _)) = last {
            fields[slot] = Some(line[colon + 1..].trim_ascii());
        }
    }
    if in_stanza {
        finish(fields, stanza_line, source, arch, out)?;
    }
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn finish(
    f: Fields<'_>,
    line: usize,
    source: usize,
    arch: &str,
    out: &mut Vec<Package>,
) -> Result<(), (usize, String)> {
    let [
        name,
        version,
        architecture,
        depends,
        pre_depends,
        provides,
        filename,
        size,
        sha256,
        essential,
        priority,
        multi_arch,
    ] = f;
    let need = |v: Option<&[u8]>, field: &str| -> Result<String, (usize, String)> {
        v.map(text).ok_or_else(|| (line, format!("stanza has no `{field}`")))
    };
    let architecture = need(architecture, "Architecture")?;
    if architecture != arch && architecture != "all" {
        return Ok(());
    }
    let name = need(name, "Package")?;
    let sha_text = need(sha256, "SHA256")?;
    let sha256 = parse_sha256(&sha_text).ok_or_else(|| (line, format!("{name}: bad SHA256 `{sha_text}`")))?;
    let size_text = need(size, "Size")?;
    let size = size_text.parse().map_err(|_| (line, format!("{name}: bad Size `{size_text}`")))?;
    let provides = match provides {
        Some(p) => parse_provides(&text(p)).map_err(|e| (line, format!("{name}: Provides: {e}")))?,
        None => Vec::new(),
    };
    out.push(Package {
        version: need(version, "Version")?,
        filename: need(filename, "Filename")?,
        architecture,
        depends: depends.map(text).unwrap_or_default(),
        pre_depends: pre_depends.map(text).unwrap_or_default(),
        provides,
        size,
        sha256,
        essential: essential.is_some_and(|e| e.eq_ignore_ascii_case(b"yes")),
        priority: priority.map(text),
        multi_arch: multi_arch.map(text),
        source,
        name,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn index() -> String {
        format!(
            "Package: a\nVersion: 1:2.0-1\nArchitecture: amd64\nMaintainer: x\nPre-Depends: libc6 (>= 2.34)\nDepends: b | c, d:any\nProvides: v (= 2), w\nDescription: first\n long text\n .\n more\nFilename: pool/main/a/a_2.0-1_amd64.deb\nSize: 1234\nSHA256: {SHA}\nEssential: yes\nPriority: required\nMulti-Arch: foreign\n\n\
Package: other-arch\nVersion: 1\nArchitecture: arm64\nFilename: x\nSize: 1\nSHA256: {SHA}\n\n\n\
Package: b\r\nVersion: 3\r\nArchitecture: all\r\nDepends: x,\r\n y (>= 1)\r\nFilename: pool/b.deb\r\nSize: 5\r\nSHA256: {SHA}\r\n"
        )
    }

    #[test]
    fn parses_kept_fields() {
        let mut out = Vec::new();
        parse_packages(index().as_bytes(), 7, "amd64", &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!((a.name.as_str(), a.version.as_str(), a.architecture.as_str()), ("a", "1:2.0-1", "amd64"));
        assert_eq!(a.pre_depends, "libc6 (>= 2.34)");
        assert_eq!(a.depends, "b | c, d:any");
        assert_eq!(a.provides.len(), 2);
        assert_eq!(a.provides[0].version.as_deref(), Some("2"));
        assert_eq!(a.filename, "pool/main/a/a_2.0-1_amd64.deb");
        assert_eq!(a.size, 1234);
        assert_eq!(hex(&a.sha256), SHA);
        assert!(a.essential);
        assert_eq!(a.priority.as_deref(), Some("required"));
        assert_eq!(a.multi_arch.as_deref(), Some("foreign"));
        assert_eq!(a.source, 7);
        let b = &out[1];
        assert_eq!((b.name.as_str(), b.architecture.as_str(), b.size), ("b", "all", 5));
        assert!(!b.essential);
        // A folded field keeps its continuation lines.
        let groups = crate::archive::deps::parse_relations(&b.depends).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1][0].to_string(), "y (>= 1)");
    }

    #[test]
    fn errors_name_the_stanza_line() {
        let mut out = Vec::new();
        let e = parse_packages(
            b"Package: a\nVersion: 1\nArchitecture: all\nFilename: f\nSize: 1\n\nPackage: b\n",
            0,
            "amd64",
            &mut out,
        )
        .unwrap_err();
        assert_eq!(e, (1, "stanza has no `SHA256`".into()));
        let text = format!("Package: a\nVersion: 1\nArchitecture: all\nFilename: f\nSize: x\nSHA256: {SHA}\n");
        let e = parse_packages(text.as_bytes(), 0, "amd64", &mut out).unwrap_err();
        assert_eq!(e, (1, "a: bad Size `x`".into()));
        let e = parse_packages(b"\n\nPackage a\n", 0, "amd64", &mut out).unwrap_err();
        assert_eq!(e.0, 3);
    }

    #[test]
    fn decompress_formats() {
        let text = index();
        let xz = std::process::Command::new("xz")
            .args(["-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(text.as_bytes())?;
                c.wait_with_output()
            })
            .expect("xz is needed for this test: apt-get install xz-utils")
            .stdout;
        assert_eq!(decompress("main/binary-amd64/Packages.xz", &xz).unwrap(), text.as_bytes());
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
            enc.write_all(text.as_bytes()).unwrap();
            enc.finish().unwrap();
        }
        assert_eq!(decompress("x/Packages.gz", &gz).unwrap(), text.as_bytes());
        assert_eq!(decompress("x/Packages", text.as_bytes()).unwrap(), text.as_bytes());
        assert!(decompress("x/Packages.xz", b"not xz").unwrap_err().starts_with("xz: "));
    }
}
