//! A deterministic POSIX ustar writer: the archive format of OVA files and Vagrant boxes.
//!
//! This module owns the ustar header (POSIX.1-1988 as refined by POSIX.1-2001 `pax`'s ustar
//! format): 512-byte headers, data padded to 512 bytes, two zero blocks at the end. Only
//! regular files are written; nothing else is needed by the containers Berth exports (an OVA is
//! a flat list of files in an order the OVF specification fixes, and so is a box).
//!
//! For the same inputs it writes the same bytes:
//! - members come in the order they are appended;
//! - every member gets the one mtime given to [`TarWriter::new`] (the build's epoch), uid and
//!   gid 0, uname and gname `root`, the mode the caller gives;
//! - numbers are zero-padded octal with a NUL terminator, the checksum as `%06o\0 ` (what GNU
//!   tar and libarchive write).
//!
//! Limits of the format, refused with an error rather than worked around (no GNU or pax
//! extensions): a size of at most 8 GiB − 1 (eleven octal digits), and a name that fits in the
//! 100-byte name field, or splits at a `/` into a prefix of at most 155 bytes and a rest of at
//! most 100.
//!
//! One GNU extension is written, because GCE's image tarball wants it: a sparse member
//! ([`TarWriter::append_sparse`]) in the "oldgnu" layout of GNU tar's manual ("Standard", the
//! `oldgnu_header` and `sparse_header` structs): typeflag `S`, magic `"ustar  \0"`, a map of
//! up to four (offset, length) data regions in the header and 21 more in each extension block
//! that follows it, the file's real size, then only the regions' bytes. Its numbers that do not
//! fit eleven octal digits (a disk past 8 GiB) are written in GNU's base-256 form.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

/// Size of a header and of the blocks data is padded to.
pub const BLOCK: usize = 512;
/// The largest member size the 11-octal-digit size field holds: 8 GiB − 1.
pub const MAX_SIZE: u64 = (1 << 33) - 1;
/// The largest mtime the 11-octal-digit mtime field holds.
const MAX_MTIME: i64 = (1 << 33) - 1;
/// Name field and prefix field lengths.
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// The owner written for every member: what an archive made by root carries.
const OWNER: &[u8] = b"root";

/// What can go wrong writing an archive. Every variant names the member.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar member '{name}': the name is empty, absolute, or contains a NUL byte")]
    BadName { name: String },
    #[error(
        "tar member '{name}': the name does not fit ustar (at most 100 bytes, or a prefix of at most 155 \
         bytes and a rest of at most 100 split at a '/')"
    )]
    NameTooLong { name: String },
    #[error("tar member '{name}': {size} bytes is more than ustar's limit of 8 GiB - 1 ({MAX_SIZE} bytes)")]
    TooLarge { name: String, size: u64 },
    #[error("tar member '{name}': mode {mode:#o} has bits outside 0o7777")]
    BadMode { name: String, mode: u32 },
    #[error("tar: mtime {0} is outside what ustar can store (0 ..= {MAX_MTIME})")]
    BadMtime(i64),
    #[error("tar member '{name}': sparse region {offset}+{len} is out of order, overlaps, or ends past {size}")]
    BadSparseMap { name: String, offset: u64, len: u64, size: u64 },
    #[error("tar member '{name}': the source ended after {got} of {expected} bytes")]
    ShortRead { name: String, expected: u64, got: u64 },
    #[error("tar member '{name}': {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Writes a ustar archive to `W`, member by member. Call [`TarWriter::finish`] to end it: an
/// archive without its two zero blocks is incomplete.
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer stamping every member with `mtime` (seconds since the epoch; the build's
    /// `SOURCE_DATE_EPOCH`, so the archive does not depend on when it was made).
    pub fn new(out: W, mtime: i64) -> Result<Self, TarError> {
        if !(0..=MAX_MTIME).contains(&mtime) {
            return Err(TarError::BadMtime(mtime));
        }
        Ok(TarWriter { out, mtime: mtime as u64, written: 0 })
    }

    /// Bytes written so far (headers, data, padding).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends a regular file with these contents.
    pub fn append_bytes(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), TarError> {
        let mut reader = data;
        self.append_reader(name, mode, &mut reader, data.len() as u64, &|_| {})
    }

    /// Appends a regular file of `len` bytes read from `file` (from its current position).
    pub fn append_file(&mut self, name: &str, mode: u32, file: &mut impl Read, len: u64) -> Result<(), TarError> {
        self.append_reader(name, mode, file, len, &|_| {})
    }

    /// Appends a regular file of `len` bytes read from `src`, calling `progress` with the number
    /// of bytes copied so far (for a progress bar on a multi-gigabyte disk). Fails, naming the
    /// member, if `src` ends early; the archive is then unusable (the caller discards it).
    pub fn append_reader(
        &mut self,
        name: &str,
        mode: u32,
        src: &mut impl Read,
        len: u64,
        progress: &dyn Fn(u64),
    ) -> Result<(), TarError> {
        let header = self.header(name, mode, len)?;
        self.write(name, &header)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < len {
            let want = buf.len().min((len - done) as usize);
            let n = match src.read(&mut buf[..want]) {
                Ok(0) => return Err(TarError::ShortRead { name: name.to_string(), expected: len, got: done }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(TarError::Io { name: name.to_string(), source }),
            };
            self.write(name, &buf[..n])?;
            done += n as u64;
            progress(done);
        }
        let pad = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.write(name, &[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// Appends `src`'s first `real_size` bytes as a GNU sparse member (oldgnu layout, see the
    /// module docs): only `regions` — (offset, length) pairs, in order, not overlapping, inside
    /// `real_size` — are stored; everything else reads back as zeros, and GNU tar extracting
    /// with `-S` leaves it as holes. `progress` gets the stored bytes copied so far.
    pub fn append_sparse(
        &mut self,
        name: &str,
        mode: u32,
        src: &impl FileExt,
        real_size: u64,
        regions: &[(u64, u64)],
        progress: &dyn Fn(u64),
    ) -> Result<(), TarError> {
        let blocks = self.sparse_headers(name, mode, real_size, regions)?;
        for block in &blocks {
            self.write(name, block)?;
        }
        let stored: u64 = regions.iter().map(|r| r.1).sum();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        for &(offset, len) in regions {
            let mut at = 0u64;
            while at < len {
                let n = buf.len().min((len - at) as usize);
                src.read_exact_at(&mut buf[..n], offset + at).map_err(|source| match source.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        TarError::ShortRead { name: name.to_string(), expected: stored, got: done }
                    }
                    _ => TarError::Io { name: name.to_string(), source },
                })?;
                self.write(name, &buf[..n])?;
                at += n as u64;
                done += n as u64;
                progress(done);
            }
        }
        let pad = (BLOCK - (stored % BLOCK as u64) as usize) % BLOCK;
        self.write(name, &[0u8; BLOCK][..pad])?;
        Ok(())
    }

    /// The oldgnu sparse header of a member and its extension blocks.
    fn sparse_headers(
        &self,
        name: &str,
        mode: u32,
        real_size: u64,
        regions: &[(u64, u64)],
    ) -> Result<Vec<[u8; BLOCK]>, TarError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(TarError::BadName { name: name.to_string() });
        }
        // oldgnu has no prefix field (its bytes hold the sparse map).
        if name.len() > NAME_LEN {
            return Err(TarError::NameTooLong { name: name.to_string() });
        }
        if mode > 0o7777 {
            return Err(TarError::BadMode { name: name.to_string(), mode });
        }
        let mut end = 0u64;
        for &(offset, len) in regions {
            if offset < end || offset.checked_add(len).is_none_or(|e| e > real_size) {
                return Err(TarError::BadSparseMap { name: name.to_string(), offset, len, size: real_size });
            }
            end = offset + len;
        }
        let mut map: Vec<(u64, u64)> = regions.to_vec();
        // GNU tar ends a file that ends in a hole with an empty region at its end (and truncates
        // the extracted file there); a file with no data at all is that region alone.
        if end < real_size || map.is_empty() {
            map.push((real_size, 0));
        }
        let stored: u64 = regions.iter().map(|r| r.1).sum();

        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        number(&mut h[124..136], stored);
        octal(&mut h[136..148], self.mtime);
        h[156] = b'S';
        h[257..265].copy_from_slice(b"ustar  \0"); // the oldgnu magic and version
        h[265..265 + OWNER.len()].copy_from_slice(OWNER);
        h[297..297 + OWNER.len()].copy_from_slice(OWNER);
        let (first, rest) = map.split_at(map.len().min(SPARSES_IN_HEADER));
        for (i, &(offset, len)) in first.iter().enumerate() {
            let at = 386 + i * 24;
            number(&mut h[at..at + 12], offset);
            number(&mut h[at + 12..at + 24], len);
        }
        h[482] = u8::from(!rest.is_empty());
        number(&mut h[483..495], real_size);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
        h[154] = 0;
        h[155] = b' ';

        let mut blocks = vec![h];
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(SPARSES_IN_EXTENSION).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            let mut x = [0u8; BLOCK];
            for (i, &(offset, len)) in chunk.iter().enumerate() {
                number(&mut x[i * 24..i * 24 + 12], offset);
                number(&mut x[i * 24 + 12..i * 24 + 24], len);
            }
            x[504] = u8::from(c + 1 < chunks.len());
            blocks.push(x);
        }
        Ok(blocks)
    }

    /// Ends the archive with two zero blocks, flushes, and gives the writer back.
    pub fn finish(mut self) -> Result<W, TarError> {
        self.write("(end of archive)", &[0u8; 2 * BLOCK])?;
        self.out.flush().map_err(|source| TarError::Io { name: "(end of archive)".to_string(), source })?;
        Ok(self.out)
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), TarError> {
        self.out.write_all(bytes).map_err(|source| TarError::Io { name: name.to_string(), source })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The 512-byte ustar header of a regular file.
    fn header(&self, name: &str, mode: u32, size: u64) -> Result<[u8; BLOCK], TarError> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(TarError::BadName { name: name.to_string() });
        }
        if mode > 0o7777 {
            return Err(TarError::BadMode { name: name.to_string(), mode });
        }
        if size > MAX_SIZE {
            return Err(TarError::TooLarge { name: name.to_string(), size });
        }
        let (prefix, rest) = split_name(name).ok_or_else(|| TarError::NameTooLong { name: name.to_string() })?;

        let mut h = [0u8; BLOCK];
        h[0..rest.len()].copy_from_slice(rest.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], self.mtime);
        h[156] = b'0'; // regular file
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..265 + OWNER.len()].copy_from_slice(OWNER); // uname
        h[297..297 + OWNER.len()].copy_from_slice(OWNER); // gname
        octal(&mut h[329..337], 0); // devmajor
        octal(&mut h[337..345], 0); // devminor
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is the byte sum of the header with its own field read as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let digits = format!("{sum:06o}");
        h[148..154].copy_from_slice(digits.as_bytes());
        h[154] = 0;
        h[155] = b' ';
        Ok(h)
    }
}

/// Splits `name` into ustar's (prefix, name) fields: the whole name if it fits in 100 bytes,
/// else at the last `/` that leaves a prefix of at most 155 bytes and a non-empty rest of at
/// most 100.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= NAME_LEN {
        return Some(("", name));
    }
    name.rmatch_indices('/')
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= PREFIX_LEN && !rest.is_empty() && rest.len() <= NAME_LEN)
}

/// Sparse map entries in an oldgnu header, and in each extension block.
const SPARSES_IN_HEADER: usize = 4;
const SPARSES_IN_EXTENSION: usize = 21;

/// Writes `value` into a 12-byte GNU numeric field: octal as [`octal`] when eleven digits hold
/// it, else GNU tar's base-256 form (first byte 0x80, the value big-endian in the rest).
fn number(field: &mut [u8], value: u64) {
    if value < 1 << (3 * (field.len() - 1)) {
        octal(field, value);
    } else {
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - bytes.len()..].copy_from_slice(&bytes);
        field[0] = 0x80;
    }
}

/// Writes `value` as zero-padded octal filling the field but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    debug_assert_eq!(text.len(), digits, "callers check the range");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    fn field(h: &[u8], range: std::ops::Range<usize>) -> &str {
        let f = &h[range];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        std::str::from_utf8(&f[..end]).unwrap()
    }

    #[test]
    fn header_fields_and_layout() {
        let mut w = TarWriter::new(Vec::new(), 1_700_000_000).unwrap();
        w.append_bytes("a.txt", 0o644, b"hello\n").unwrap();
        w.append_bytes("empty", 0o600, b"").unwrap();
        let out = w.finish().unwrap();
        // header + 1 data block, header, 2 zero blocks
        assert_eq!(out.len(), 5 * BLOCK);
        let h = &out[..BLOCK];
        assert_eq!(field(h, 0..100), "a.txt");
        assert_eq!(field(h, 100..108), "0000644");
        assert_eq!(field(h, 108..116), "0000000");
        assert_eq!(field(h, 124..136), "00000000006");
        assert_eq!(field(h, 136..148), format!("{:011o}", 1_700_000_000));
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(field(h, 265..297), "root");
        assert_eq!(field(h, 297..329), "root");
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(field(h, 148..156), format!("{sum:06o}"));
        assert_eq!(&out[BLOCK..BLOCK + 6], b"hello\n");
        assert!(out[BLOCK + 6..2 * BLOCK].iter().all(|&b| b == 0));
        assert_eq!(field(&out[2 * BLOCK..3 * BLOCK], 0..100), "empty");
        assert!(out[3 * BLOCK..].iter().all(|&b| b == 0));
    }

    #[test]
    fn same_input_same_bytes() {
        let make = || {
            let mut w = TarWriter::new(Vec::new(), 42).unwrap();
            w.append_bytes("x", 0o644, &[7u8; 1000]).unwrap();
            w.finish().unwrap()
        };
        assert_eq!(make(), make());
    }

    #[test]
    fn long_names_use_the_prefix_field() {
        let dir = "d".repeat(120);
        let name = format!("{dir}/file.txt");
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        w.append_bytes(&name, 0o644, b"x").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(field(&out, 0..100), "file.txt");
        assert_eq!(field(&out, 345..500), dir);

        let exactly_100 = "n".repeat(100);
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        w.append_bytes(&exactly_100, 0o644, b"").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..100], exactly_100.as_bytes());
        assert_eq!(out[345], 0);
    }

    #[test]
    fn refuses_what_ustar_cannot_hold() {
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        let e = w.append_bytes(&"n".repeat(101), 0o644, b"").unwrap_err();
        assert!(matches!(e, TarError::NameTooLong { .. }), "{e}");
        let e = w.append_bytes(&format!("{}/{}", "p".repeat(156), "x"), 0o644, b"").unwrap_err();
        assert!(matches!(e, TarError::NameTooLong { .. }), "{e}");
        for bad in ["", "/abs", "a\0b"] {
            assert!(matches!(w.append_bytes(bad, 0o644, b"").unwrap_err(), TarError::BadName { .. }));
        }
        assert!(matches!(w.append_bytes("m", 0o10000, b"").unwrap_err(), TarError::BadMode { .. }));
        let e = w.append_file("big", 0o644, &mut io::empty(), MAX_SIZE + 1).unwrap_err();
        assert!(e.to_string().contains("8 GiB - 1"), "{e}");
        assert!(matches!(TarWriter::new(Vec::new(), -1), Err(TarError::BadMtime(-1))));
        // Nothing was written for the refused members: the header check comes first.
        assert_eq!(w.bytes_written(), 0);
    }

    #[test]
    fn short_source_is_an_error_naming_the_member() {
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        let e = w.append_file("disk.img", 0o644, &mut &b"abc"[..], 10).unwrap_err();
        assert_eq!(e.to_string(), "tar member 'disk.img': the source ended after 3 of 10 bytes");
    }

    #[test]
    fn max_size_is_eleven_octal_digits() {
        let mut f = [0u8; 12];
        octal(&mut f, MAX_SIZE);
        assert_eq!(&f, b"77777777777\0");
    }

    /// A sparse file with `n` data regions of 1 KiB every 8 KiB, and its map.
    fn sparse_file(dir: &std::path::Path, n: u64, real_size: u64) -> (std::fs::File, Vec<(u64, u64)>, Vec<u8>) {
        let f = std::fs::File::options().read(true).write(true).create_new(true).open(dir.join("sparse")).unwrap();
        let mut whole = vec![0u8; real_size as usize];
        let mut map = Vec::new();
        for i in 0..n {
            let data: Vec<u8> = (0..1024u64).map(|b| (b * 7 + i) as u8 | 1).collect();
            f.write_all_at(&data, i * 8192).unwrap();
            whole[(i * 8192) as usize..(i * 8192 + 1024) as usize].copy_from_slice(&data);
            map.push((i * 8192, 1024));
        }
        f.set_len(real_size).unwrap();
        (f, map, whole)
    }

    /// The oldgnu sparse member, with 30 regions (4 in the header, 21 + 5 in two extension
    /// blocks) and a hole at the end: GNU tar lists it as sparse with its real size and
    /// extracts the same bytes, holes as holes.
    #[test]
    fn gnu_tar_reads_a_sparse_member() {
        let dir = tempfile::tempdir().unwrap();
        let real = 1 << 20;
        let (f, map, whole) = sparse_file(dir.path(), 30, real);
        let mut w = TarWriter::new(Vec::new(), 1_600_000_000).unwrap();
        w.append_sparse("disk.raw", 0o644, &f, real, &map, &|_| {}).unwrap();
        let out = w.finish().unwrap();
        // Header, 2 extension blocks, 30 KiB of data, 2 end blocks.
        assert_eq!(out.len(), 3 * BLOCK + 30 * 1024 + 2 * BLOCK);
        let h = &out[..BLOCK];
        assert_eq!(h[156], b'S');
        assert_eq!(&h[257..265], b"ustar  \0");
        assert_eq!(field(h, 124..136), format!("{:011o}", 30 * 1024));
        assert_eq!(field(h, 483..495), format!("{real:011o}"));
        assert_eq!((h[482], out[BLOCK + 504], out[2 * BLOCK + 504]), (1, 1, 0));
        // The terminating empty region at the real size, after the 30th.
        assert_eq!(field(&out[2 * BLOCK..], 5 * 24..5 * 24 + 12), format!("{real:011o}"));
        assert_eq!(field(&out[2 * BLOCK..], 5 * 24 + 12..6 * 24), "00000000000");

        let tar = dir.path().join("t.tar");
        std::fs::write(&tar, &out).unwrap();
        // GNU tar lists the member with its real size, and (-R, the block of each header) finds
        // the archive's end right after the header, its two extension blocks and the 60 blocks
        // of data: it read the map.
        let listing = Command::new("tar").args(["--utc", "-R", "-tvf"]).arg(&tar).output().unwrap();
        assert!(listing.status.success() && listing.stderr.is_empty(), "{}", String::from_utf8_lossy(&listing.stderr));
        let listing = String::from_utf8(listing.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert!(lines[0].starts_with("block 0: -rw-r--r-- root/root"), "{listing}");
        assert!(lines[0].ends_with(&format!(" {real} 2020-09-13 12:26 disk.raw")), "{listing}");
        assert_eq!(lines[1], "block 63: ** Block of NULs **", "{listing}");
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar").arg("-xSf").arg(&tar).arg("-C").arg(&x).status().unwrap();
        assert!(st.success());
        let extracted = x.join("disk.raw");
        assert!(std::fs::read(&extracted).unwrap() == whole, "tar -xSf gives other bytes");
        // The holes stayed holes (30 KiB of data; a filesystem block or so around each region).
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&extracted).unwrap().blocks() * 512;
        assert!(allocated < real / 2, "{allocated} bytes allocated");
    }

    #[test]
    fn sparse_numbers_past_eleven_octal_digits_are_base_256() {
        let mut f = [0u8; 12];
        number(&mut f, MAX_SIZE);
        assert_eq!(&f, b"77777777777\0");
        number(&mut f, MAX_SIZE + 1);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        // GNU tar reads the real size of a 9 GiB sparse member written that way.
        let dir = tempfile::tempdir().unwrap();
        let (f, map, _) = sparse_file(dir.path(), 2, 16384);
        let real = 9 << 30;
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        w.append_sparse("big.raw", 0o600, &f, real, &map, &|_| {}).unwrap();
        let tar = dir.path().join("t.tar");
        std::fs::write(&tar, w.finish().unwrap()).unwrap();
        let listing = Command::new("tar").args(["--utc", "-tvf"]).arg(&tar).output().unwrap();
        assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
        assert!(String::from_utf8_lossy(&listing.stdout).contains(&format!(" {real} 1970-01-01 00:00 big.raw")));
    }

    #[test]
    fn sparse_map_must_be_in_order_and_inside() {
        let mut w = TarWriter::new(Vec::new(), 0).unwrap();
        let src = tempfile::tempfile().unwrap();
        for bad in [&[(0u64, 1024u64), (512, 512)][..], &[(4096, 512), (0, 512)], &[(0, 4097)]] {
            let e = w.append_sparse("d", 0o644, &src, 4096, bad, &|_| {}).unwrap_err();
            assert!(matches!(e, TarError::BadSparseMap { .. }), "{e}");
        }
        let e = w.append_sparse(&"n".repeat(101), 0o644, &src, 0, &[], &|_| {}).unwrap_err();
        assert!(matches!(e, TarError::NameTooLong { .. }), "{e}");
        assert_eq!(w.bytes_written(), 0);
        // Regions past the end of the source: a short read naming the member.
        let e = w.append_sparse("d", 0o644, &src, 4096, &[(0, 512)], &|_| {}).unwrap_err();
        assert_eq!(e.to_string(), "tar member 'd': the source ended after 0 of 512 bytes");
    }

    /// GNU tar, a reader Berth did not write, lists and extracts the archive.
    #[test]
    fn gnu_tar_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        let long = format!("{}/{}", "sub".repeat(40), "member-with-a-long-name.bin");
        let mut w = TarWriter::new(std::fs::File::create(&path).unwrap(), 1_600_000_000).unwrap();
        w.append_bytes("box.ovf", 0o644, b"<Envelope/>\n").unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        w.append_file(&long, 0o600, &mut &data[..], data.len() as u64).unwrap();
        w.append_bytes("box.mf", 0o644, b"").unwrap();
        w.finish().unwrap();

        let out = Command::new("tar").arg("--utc").arg("-tvf").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "tar warned: {}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert!(lines[0].starts_with("-rw-r--r-- root/root"), "{listing}");
        assert!(lines[0].ends_with(" 12 2020-09-13 12:26 box.ovf"), "{listing}");
        assert!(lines[1].starts_with("-rw------- root/root"), "{listing}");
        assert!(lines[1].ends_with(&format!(" 5000 2020-09-13 12:26 {long}")), "{listing}");
        assert!(lines[2].ends_with(" box.mf"), "{listing}");

        let out = Command::new("tar").arg("-xOf").arg(&path).arg(&long).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }
}
