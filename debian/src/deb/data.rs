//! The data archive of a `.deb`: decompressing it and turning its tar entries into
//! [`DataEntry`]s (normalized path, metadata from the headers including PAX records, content).
//!
//! Reading is separate from placing entries in the tree so that several packages can be
//! decompressed on several threads while one [`Unpacker`](super::Unpacker) applies them in order.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use berth_fstree::Metadata;

use super::path::normalize;

/// How a member of the `.deb` is compressed, from its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// The compression of member `name` if it is `base` (`control.tar` or `data.tar`) with a
    /// known suffix; `Err(())` if it is `base` with a suffix we cannot read; `Ok(None)` if it is
    /// another member.
    pub(super) fn of_member(name: &str, base: &str) -> Result<Option<Compression>, ()> {
        let Some(rest) = name.strip_prefix(base) else { return Ok(None) };
        match rest {
            "" => Ok(Some(Compression::None)),
            ".gz" => Ok(Some(Compression::Gzip)),
            ".xz" => Ok(Some(Compression::Xz)),
            ".zst" => Ok(Some(Compression::Zstd)),
            _ if rest.starts_with('.') => Err(()),
            _ => Ok(None),
        }
    }

    /// A reader of the decompressed bytes of `r`.
    pub(super) fn decoder<'r>(self, r: impl BufRead + 'r) -> io::Result<Box<dyn Read + 'r>> {
        Ok(match self {
            Compression::None => Box::new(r),
            // Several gzip members in a row are one stream to gzip(1), so the same here.
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            // Concatenated .xz streams likewise (xz(1) accepts them).
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// What a data archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Arc<[u8]>),
    Dir,
    /// The link target exactly as in the archive.
    Symlink(Vec<u8>),
    /// A hard link to the earlier entry at this normalized path (relative to the root).
    HardLink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One entry of a package's data archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    /// Normalized path relative to the root: no `./`, no leading or trailing `/` (empty for the
    /// root directory itself).
    pub path: Vec<u8>,
    /// Permission bits, numeric owner, mtime and xattrs from the headers (PAX records override
    /// the ustar fields). The mtime is not clamped yet.
    pub meta: Metadata,
    pub kind: EntryKind,
}

/// A package's data archive, read into memory and ready to be applied to a tree.
#[derive(Debug, Clone, Default)]
pub struct DataArchive {
    pub entries: Vec<DataEntry>,
}

impl DataArchive {
    /// Total bytes of regular-file content.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

/// Why the archive could not be read: `path` is the member name as far as it is known.
#[derive(Debug)]
pub(super) enum ReadError {
    Io(io::Error),
    Entry { path: String, why: String },
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// PAX records that apply to an entry (from a global `g` header and the entry's own `x` header).
#[derive(Default, Clone)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pax {
    /// Adds the records of a PAX header body. They are parsed here rather than by the tar crate,
    /// which splits records at newlines and so breaks binary xattr values (a
    /// `security.capability` can contain the byte 0x0a); the length prefix is what counts.
    fn add(&mut self, mut body: &[u8]) -> Result<(), String> {
        while !body.is_empty() {
            let space = body.iter().position(|&b| b == b' ').ok_or("PAX record without a length")?;
            let len: usize = std::str::from_utf8(&body[..space])
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or("PAX record with a bad length")?;
            if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
                return Err("PAX record length does not match its content".into());
            }
            let record = &body[space + 1..len - 1];
            body = &body[len..];
            let eq = record.iter().position(|&b| b == b'=').ok_or("PAX record without `=`")?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            let text = || std::str::from_utf8(value).map_err(|_| format!("PAX `{}` is not UTF-8", lossy(key)));
            let number = |what: &str| -> Result<u64, String> { text()?.parse().map_err(|_| format!("bad PAX {what}")) };
            match key {
                b"path" => self.path = Some(value.to_vec()),
                b"linkpath" => self.linkpath = Some(value.to_vec()),
                b"size" => self.size = Some(number("size")?),
                b"mtime" => self.mtime = Some(parse_pax_time(text()?)?),
                b"uid" => self.uid = Some(number("uid")?),
                b"gid" => self.gid = Some(number("gid")?),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        // GNU tar and star: the name verbatim, the value as raw bytes.
                        self.xattrs.push((name.to_vec(), value.to_vec()));
                    } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
                        // bsdtar: the name URL-encoded, the value base64-encoded.
                        let name = percent_decode(name).ok_or("bad LIBARCHIVE.xattr name")?;
                        let value = base64_decode(value).ok_or("bad LIBARCHIVE.xattr value")?;
                        self.xattrs.push((name, value));
                    }
                    // atime, ctime, uname, gname, charset and comments have no place in the tree.
                }
            }
        }
        Ok(())
    }

    /// The entry's own records over the global ones.
    fn over(self, global: &Pax) -> Pax {
        let mut xattrs = global.xattrs.clone();
        xattrs.extend(self.xattrs);
        Pax {
            path: self.path.or_else(|| global.path.clone()),
            linkpath: self.linkpath.or_else(|| global.linkpath.clone()),
            size: self.size.or(global.size),
            mtime: self.mtime.or(global.mtime),
            uid: self.uid.or(global.uid),
            gid: self.gid.or(global.gid),
            xattrs,
        }
    }
}

/// A GNU long name or link body: the name, NUL-terminated.
fn gnu_long(body: Vec<u8>) -> Vec<u8> {
    let mut v = body;
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    v.truncate(end);
    v
}

/// Reads every entry of an uncompressed tar stream.
///
/// The tar crate reads headers in raw mode: the extension headers (PAX `x`/`g`, GNU `L`/`K`)
/// come through as entries and are applied to the next real entry here.
pub(super) fn read_tar(r: impl Read) -> Result<DataArchive, ReadError> {
    let mut archive = tar::Archive::new(r);
    let mut global = Pax::default();
    let mut local = Pax::default();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut entries = Vec::new();
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let ty = entry.header().entry_type();
        let header_path = lossy(&entry.header().path_bytes());
        let extension_err =
            |why: String| ReadError::Entry { path: header_path.clone(), why: format!("extension header: {why}") };
        if ty.is_pax_global_extensions() || ty.is_pax_local_extensions() || ty.is_gnu_longname() || ty.is_gnu_longlink()
        {
            let mut body = Vec::with_capacity(entry.size().min(1 << 20) as usize);
            entry.read_to_end(&mut body)?;
            if ty.is_pax_global_extensions() {
                global.add(&body).map_err(extension_err)?;
            } else if ty.is_pax_local_extensions() {
                local.add(&body).map_err(extension_err)?;
            } else if ty.is_gnu_longname() {
                long_name = Some(gnu_long(body));
            } else {
                long_link = Some(gnu_long(body));
            }
            continue;
        }
        let pax = std::mem::take(&mut local).over(&global);
        let header = entry.header();
        let raw_path = match (pax.path.clone(), long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => header.path_bytes().into_owned(),
        };
        let link = match (pax.linkpath.clone(), long_link.take()) {
            (Some(p), _) | (None, Some(p)) => Some(p),
            (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
        };
        let bad = |why: String| ReadError::Entry { path: lossy(&raw_path), why };
        let path = normalize(&raw_path).map_err(|w| bad(w.into()))?;
        let field = |what: &str, e: io::Error| bad(format!("bad {what} field: {e}"));
        let uid = match pax.uid {
            Some(u) => u,
            None => header.uid().map_err(|e| field("uid", e))?,
        };
        let gid = match pax.gid {
            Some(g) => g,
            None => header.gid().map_err(|e| field("gid", e))?,
        };
        let meta = Metadata {
            mode: (header.mode().map_err(|e| field("mode", e))? & 0o7777) as u16,
            uid: u32::try_from(uid).map_err(|_| bad(format!("uid {uid} does not fit 32 bits")))?,
            gid: u32::try_from(gid).map_err(|_| bad(format!("gid {gid} does not fit 32 bits")))?,
            mtime: match pax.mtime {
                Some(t) => t,
                None => i64::try_from(header.mtime().map_err(|e| field("mtime", e))?).unwrap_or(i64::MAX),
            },
            xattrs: pax.xattrs.into_iter().collect(),
        };
        use tar::EntryType as T;
        let kind = match ty {
            T::Regular | T::Continuous => {
                let size = entry.size();
                // In raw mode the tar crate sizes the entry from the header; a PAX size that
                // differs (files over 8 GiB) cannot be followed, so it is refused, not misread.
                if pax.size.is_some_and(|s| s != size) {
                    return Err(bad("a PAX size differing from the header's is not supported".into()));
                }
                // A failure here is the stream's (truncated or corrupt), not the entry's.
                let content = read_content(&mut entry, size)
                    .map_err(|e| io::Error::new(e.kind(), format!("content of `{}`: {e}", lossy(&raw_path))))?;
                EntryKind::File(content)
            }
            T::Directory => EntryKind::Dir,
            T::Symlink => match link {
                Some(t) if !t.is_empty() => EntryKind::Symlink(t),
                _ => return Err(bad("symlink with an empty target".into())),
            },
            T::Link => {
                let t = link.ok_or_else(|| bad("hard link without a target".into()))?;
                let t = normalize(&t).map_err(|w| bad(format!("hard link target `{}`: {w}", lossy(&t))))?;
                EntryKind::HardLink(t)
            }
            T::Char | T::Block => {
                let major = header.device_major().map_err(|e| field("devmajor", e))?.unwrap_or(0);
                let minor = header.device_minor().map_err(|e| field("devminor", e))?.unwrap_or(0);
                if ty == T::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                }
            }
            T::Fifo => EntryKind::Fifo,
            other => return Err(bad(format!("unsupported tar entry type `{}`", other.as_byte() as char))),
        };
        entries.push(DataEntry { path, meta, kind });
    }
    if long_name.is_some() || long_link.is_some() {
        return Err(ReadError::Entry {
            path: String::new(),
            why: "GNU long name header at the end of the archive".into(),
        });
    }
    Ok(DataArchive { entries })
}

/// Up to this size a file's buffer is allocated from its header's size at once; a bigger one
/// grows as its bytes arrive, so a header claiming terabytes is a short read, not an abort.
const PREALLOCATE_MAX: usize = 64 << 20;

/// Reads exactly `size` bytes into a shared buffer, allocated once (the tree keeps it as is).
fn read_content(r: &mut impl Read, size: u64) -> io::Result<Arc<[u8]>> {
    let len = usize::try_from(size).map_err(|_| io::Error::other("file too large for memory"))?;
    if len > PREALLOCATE_MAX {
        let mut buf = Vec::with_capacity(PREALLOCATE_MAX);
        r.take(size).read_to_end(&mut buf)?;
        if buf.len() != len {
            let why = format!("{} of the {size} bytes its header declares", buf.len());
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
        return Ok(Arc::from(buf));
    }
    // Collecting an exact-size iterator allocates the Arc once; reading in place avoids a copy.
    let mut buf: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
    let slice = Arc::get_mut(&mut buf).ok_or_else(|| io::Error::other("content buffer is shared"))?;
    r.read_exact(slice)?;
    Ok(buf)
}

/// A PAX time: decimal seconds with an optional fraction, rounded down to whole seconds.
fn parse_pax_time(s: &str) -> Result<i64, String> {
    let bad = || format!("bad PAX mtime `{s}`");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = int.parse().map_err(|_| bad())?;
    let negative = int.starts_with('-');
    Ok(if negative && frac.bytes().any(|b| b != b'0') { secs - 1 } else { secs })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// libarchive writes the xattr values unpadded; a padded one is read too, as before.
const PAX_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    PAX_BASE64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_round_down() {
        assert_eq!(parse_pax_time("1700000000.75").unwrap(), 1_700_000_000);
        assert_eq!(parse_pax_time("12").unwrap(), 12);
        assert_eq!(parse_pax_time("-1.5").unwrap(), -2);
        assert_eq!(parse_pax_time("-1.0").unwrap(), -1);
        assert!(parse_pax_time("x").is_err());
        assert!(parse_pax_time("1.2e3").is_err());
    }

    #[test]
    fn libarchive_xattr_encoding() {
        assert_eq!(percent_decode(b"user.a%3Db").unwrap(), b"user.a=b");
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode(b"AQAAAg==").unwrap(), [1, 0, 0, 2]);
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"a").is_none());
        // libarchive leaves the padding out.
        assert_eq!(base64_decode(b"aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode(b"aGV*").is_none());
    }

    #[test]
    fn member_compression() {
        assert_eq!(Compression::of_member("data.tar.xz", "data.tar"), Ok(Some(Compression::Xz)));
        assert_eq!(Compression::of_member("data.tar", "data.tar"), Ok(Some(Compression::None)));
        assert_eq!(Compression::of_member("data.tar.bz2", "data.tar"), Err(()));
        assert_eq!(Compression::of_member("control.tar.gz", "data.tar"), Ok(None));
    }

    #[test]
    fn pax_records_are_length_delimited() {
        let mut p = Pax::default();
        // A binary value holding a newline, as a capability set can.
        p.add(b"40 SCHILY.xattr.security.capability=\x01\n\x00\n27 path=./a/very/long/name\n").unwrap();
        assert_eq!(p.xattrs, [(b"security.capability".to_vec(), b"\x01\n\x00".to_vec())]);
        assert_eq!(p.path.as_deref(), Some(&b"./a/very/long/name"[..]));
        assert!(Pax::default().add(b"99 path=x\n").is_err());
        assert!(Pax::default().add(b"9 pathx\n").is_err());
    }

    /// Found by the fuzz target (deb/fuzz.rs): a header's size was allocated (and zeroed)
    /// before a byte was read, so a few hundred bytes claiming 2^62 aborted the builder and
    /// 8 GiB wrote 8 GiB of zeros.
    #[test]
    fn a_size_the_stream_does_not_have_is_an_error_not_an_allocation() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(3);
        b.append_data(&mut h, "./big", &b"abc"[..]).unwrap();
        let mut data = b.into_inner().unwrap();
        // Base-256 size field (GNU): 2^62 bytes.
        data[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        data[148..156].copy_from_slice(b"        ");
        let sum: u32 = data[..512].iter().map(|&b| u32::from(b)).sum();
        data[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Err(ReadError::Io(e)) = read_tar(&data[..]) else { panic!("read a 2^62-byte file") };
        assert!(e.to_string().contains("of the 4611686018427387904 bytes its header declares"), "{e}");
    }

    #[test]
    fn pax_records_and_global_headers() {
        let mut b = tar::Builder::new(Vec::new());
        let mut g = tar::Header::new_ustar();
        g.set_entry_type(tar::EntryType::XGlobalHeader);
        let global = b"12 uid=4242\n12 gid=4343\n";
        g.set_size(global.len() as u64);
        b.append_data(&mut g, "global", &global[..]).unwrap();
        b.append_pax_extensions([
            ("mtime", &b"1700000000.5"[..]),
            ("SCHILY.xattr.user.k", &b"v\0bin"[..]),
            ("LIBARCHIVE.xattr.user.b64", &b"aGk="[..]),
            ("gid", &b"7"[..]),
        ])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o4755);
        h.set_mtime(5);
        h.set_size(3);
        b.append_data(&mut h, "./usr/bin/x", &b"abc"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let a = read_tar(&data[..]).unwrap();
        assert_eq!(a.entries.len(), 1);
        let e = &a.entries[0];
        assert_eq!(e.path, b"usr/bin/x");
        assert_eq!((e.meta.mode, e.meta.uid, e.meta.gid, e.meta.mtime), (0o4755, 4242, 7, 1_700_000_000));
        let xattrs: Vec<_> = e.meta.xattrs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        assert_eq!(xattrs, [(&b"user.b64"[..], &b"hi"[..]), (&b"user.k"[..], &b"v\0bin"[..])]);
        assert_eq!(e.kind, EntryKind::File(Arc::from(&b"abc"[..])));
        assert_eq!(a.content_bytes(), 3);
    }
}
