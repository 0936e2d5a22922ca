//! The download cache: files named by their SHA-256, written atomically, re-verified on use.
//!
//! Layout under the cache directory:
//! - `debs/<sha256>.deb`: packages;
//! - `indexes/<sha256>`: `Packages` indexes, decompressed when the Release lists the
//!   uncompressed file's hash (so later builds skip decompression), else as downloaded;
//! - `inrelease/<host_path_dists_suite>_InRelease`: the last verified `InRelease` of each source
//!   (not content-addressed, as its hash is not known in advance; re-verified on every use).
//!
//! A file only ever appears under its final name after its size and hash were checked
//! (temporary file + rename), so an interrupted or corrupt download never poisons the cache.
//! A cached file whose content no longer matches its name is deleted and treated as missing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::ArchiveError;

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads a cached file if it exists and has the expected size and hash; a mismatching file is
/// removed. `Ok(None)` means "not (validly) cached".
pub(crate) fn read_verified(path: &Path, size: u64, sha: &[u8; 32]) -> Result<Option<Vec<u8>>, ArchiveError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ArchiveError::io(path, e)),
    };
    if bytes.len() as u64 == size && sha256(&bytes) == *sha {
        return Ok(Some(bytes));
    }
    remove_bad(path)?;
    Ok(None)
}

/// Whether a cached file exists with the expected size and hash (streamed, for large `.deb`s);
/// a mismatching file is removed.
pub(crate) fn file_verified(path: &Path, size: u64, sha: &[u8; 32]) -> Result<bool, ArchiveError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ArchiveError::io(path, e)),
    };
    let len = file.metadata().map_err(|e| ArchiveError::io(path, e))?.len();
    if len == size {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(|e| ArchiveError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if <[u8; 32]>::from(hasher.finalize()) == *sha {
            return Ok(true);
        }
    }
    remove_bad(path)?;
    Ok(false)
}

fn remove_bad(path: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::io(path, e)),
    }
}

/// Creates `dir` (and parents).
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), ArchiveError> {
    std::fs::create_dir_all(dir).map_err(|e| ArchiveError::io(dir, e))
}

/// A temporary file next to its final name; dropped without [`Pending::commit`] it disappears.
pub(crate) struct Pending {
    file: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl Pending {
    pub fn new(dest: &Path) -> Result<Pending, ArchiveError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        ensure_dir(dir)?;
        let file =
            tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(|e| ArchiveError::io(dir, e))?;
        Ok(Pending { file, dest: dest.to_path_buf() })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.file.write_all(bytes).map_err(|e| ArchiveError::io(self.file.path(), e))
    }

    /// Moves the file to its final name (atomic within the cache directory).
    pub fn commit(self) -> Result<(), ArchiveError> {
        let dest = self.dest;
        self.file.persist(&dest).map_err(|e| ArchiveError::io(&dest, e.error))?;
        Ok(())
    }
}

/// Writes `bytes` to `dest` atomically.
pub(crate) fn store(dest: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut pending = Pending::new(dest)?;
    pending.write_all(bytes)?;
    pending.commit()
}

/// The cache file name of a source's `InRelease`, in the style of apt's `lists/` names.
pub(crate) fn inrelease_name(dists_url: &str) -> String {
    let stripped = dists_url.split_once("://").map_or(dists_url, |(_, rest)| rest);
    let mut name: String =
        stripped.chars().map(|c| if c.is_ascii_alphanumeric() || "-.:".contains(c) { c } else { '_' }).collect();
    name.push_str("_InRelease");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_reads_remove_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let sha = sha256(b"hello");
        assert_eq!(read_verified(&path, 5, &sha).unwrap(), None);
        store(&path, b"hello").unwrap();
        assert_eq!(read_verified(&path, 5, &sha).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(file_verified(&path, 5, &sha).unwrap());
        store(&path, b"hellO").unwrap();
        assert!(!file_verified(&path, 5, &sha).unwrap());
        assert!(!path.exists());
        store(&path, b"hellO").unwrap();
        assert_eq!(read_verified(&path, 5, &sha).unwrap(), None);
        assert!(!path.exists());
        // Nothing but the final names is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn inrelease_names() {
        assert_eq!(
            inrelease_name("http://127.0.0.1:8080/debian/dists/stable"),
            "127.0.0.1:8080_debian_dists_stable_InRelease"
        );
    }
}
