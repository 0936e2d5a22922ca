//! The `ar` container of a `.deb` (deb(5)): a global header `!<arch>\n`, then members, each a
//! 60-byte header followed by its data padded to an even length.
//!
//! Only the member index is read here (names, offsets, sizes); the members' bytes are read later
//! straight from the file, so nothing is held in memory twice.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The global header every `ar` archive starts with.
pub(super) const MAGIC: &[u8; 8] = b"!<arch>\n";
const HEADER_LEN: u64 = 60;

/// One member of the archive: its name and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Member {
    pub name: String,
    /// Offset of the member's data (just past its header).
    pub offset: u64,
    pub size: u64,
}

/// Why a file is not a well-formed `ar` archive (the caller adds the path).
#[derive(Debug)]
pub(super) enum ArError {
    Io(std::io::Error),
    Malformed(String),
}

impl From<std::io::Error> for ArError {
    fn from(e: std::io::Error) -> Self {
        ArError::Io(e)
    }
}

/// Reads every member header of the archive in `file` (whose length is `len`).
pub(super) fn read_index(file: &File, len: u64) -> Result<Vec<Member>, ArError> {
    let mut magic = [0u8; 8];
    if len < 8 {
        return Err(ArError::Malformed(format!("{len} bytes is too short for an ar archive")));
    }
    file.read_exact_at(&mut magic, 0)?;
    if &magic != MAGIC {
        return Err(ArError::Malformed("no `!<arch>` header: not an ar archive".into()));
    }
    let mut members = Vec::new();
    let mut pos = 8u64;
    while pos < len {
        if len - pos < HEADER_LEN {
            return Err(ArError::Malformed(format!("truncated: a member header at offset {pos} is cut off")));
        }
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, pos)?;
        if &h[58..60] != b"`\n" {
            return Err(ArError::Malformed(format!("bad member header at offset {pos} (no end marker)")));
        }
        let name = parse_name(&h[0..16])
            .ok_or_else(|| ArError::Malformed(format!("member name at offset {pos} is not ASCII")))?;
        let size = parse_decimal(&h[48..58])
            .ok_or_else(|| ArError::Malformed(format!("member `{name}` has an invalid size field")))?;
        let offset = pos + HEADER_LEN;
        let end =
            offset.checked_add(size).ok_or_else(|| ArError::Malformed(format!("member `{name}` is too large")))?;
        if end > len {
            return Err(ArError::Malformed(format!(
                "truncated: member `{name}` needs {size} bytes at offset {offset}, the file has {len}"
            )));
        }
        members.push(Member { name, offset, size });
        // Members are aligned to 2 bytes; the last one's padding byte may be missing.
        pos = end + (end & 1);
    }
    Ok(members)
}

/// A member name: space padded; GNU `ar` also ends it with `/`.
fn parse_name(field: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(field).ok()?.trim_end_matches(' ');
    let s = if s.len() > 1 { s.strip_suffix('/').unwrap_or(s) } else { s };
    Some(s.to_owned())
}

/// A space-padded decimal field.
fn parse_decimal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?.trim_end_matches(' ');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(name: &str, size: usize) -> Vec<u8> {
        let h = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, "100644");
        assert_eq!(h.len(), 60);
        h.into_bytes()
    }

    #[test]
    fn index_with_padding_and_gnu_names() {
        let mut f = tempfile::tempfile().unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend(header("debian-binary/", 4));
        bytes.extend(b"2.0\n");
        bytes.extend(header("odd", 3));
        bytes.extend(b"abc\n");
        bytes.extend(header("last", 1));
        bytes.extend(b"z");
        f.write_all(&bytes).unwrap();
        let idx = read_index(&f, bytes.len() as u64).unwrap();
        let names: Vec<_> = idx.iter().map(|m| (m.name.as_str(), m.offset, m.size)).collect();
        assert_eq!(names, [("debian-binary", 68, 4), ("odd", 132, 3), ("last", 196, 1)]);

        let cut = bytes.len() as u64 - 1;
        assert!(matches!(read_index(&f, cut), Err(ArError::Malformed(m)) if m.contains("truncated")));
        assert!(matches!(read_index(&f, 30), Err(ArError::Malformed(m)) if m.contains("truncated")));
    }
}
