//! `.deb` files: reading them and unpacking their data into a [`Tree`](berth_fstree::Tree).
//!
//! This module owns the binary package format (deb(5)) and what dpkg's unpack phase does to a
//! filesystem, done in memory and without privilege:
//!
//! * [`DebFile::open`] reads the `ar` container, checks `debian-binary` is `2.0`, and reads the
//!   control archive ([`DebInfo`]: the `control` paragraph, `conffiles`, the maintainer scripts
//!   present, which never run).
//! * [`DebFile::read_data`] streams the data archive (`data.tar`, `.gz`, `.xz` or `.zst`)
//!   through the decompressor and the tar reader into a [`DataArchive`] (file contents are read
//!   once, straight into the buffer the tree keeps). It takes `&self`, so packages can be read
//!   on several threads.
//! * [`Unpacker`] applies data archives to the tree in order: merged-/usr, owners, modes, links
//!   and xattrs as the tar headers say, directory and file-conflict rules (see [`unpack`]).
//! * [`setup`] holds the steps the builder performs instead of maintainer scripts.
//!
//! A typical build:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_debian::deb::{DebFile, UnpackOptions, Unpacker, merged_usr_skeleton};
//! use berth_fstree::{Metadata, Tree};
//! let epoch = 1_700_000_000;
//! let mut tree = Tree::new(Metadata::root(0o755, epoch));
//! merged_usr_skeleton(&mut tree, epoch)?;
//! let mut unpacker = Unpacker::new(tree, UnpackOptions { mtime_clamp: Some(epoch) });
//! for path in ["base-files.deb", "bash.deb"] {
//!     let report = unpacker.unpack(&DebFile::open(path)?)?;
//!     println!("{}: skipped maintainer scripts {:?}", report.package, report.scripts_skipped);
//! }
//! let tree = unpacker.into_tree();
//! # Ok(()) }
//! ```

mod ar;
mod control;
mod data;
mod path;
pub mod setup;
pub mod unpack;

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use control::{Control, MaintainerScript, ScriptKind, relation_names};
pub use data::{Compression, DataArchive, DataEntry, EntryKind};
pub use unpack::{UnpackOptions, UnpackReport, Unpacker, merged_usr_skeleton};

/// The only `debian-binary` content dpkg has ever written.
const FORMAT_VERSION: &str = "2.0";

/// Buffer between the file and the decompressor; large reads keep syscalls out of the profile.
const READ_BUFFER: usize = 256 * 1024;

/// Why a `.deb` could not be read or unpacked. Every variant names the `.deb`; those about an
/// entry also name the package and the path inside it.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{}: {what}: {source}", deb.display())]
    Io {
        deb: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a valid .deb: {why}", deb.display())]
    Format { deb: PathBuf, why: String },
    #[error("{}: unsupported .deb format version `{found}` in debian-binary (only {FORMAT_VERSION} is known)", deb.display())]
    Version { deb: PathBuf, found: String },
    #[error("{}: member `{member}` uses an unsupported compression (known: none, .gz, .xz, .zst)", deb.display())]
    Compression { deb: PathBuf, member: String },
    #[error("{}: reading member `{member}`: {source}", deb.display())]
    Member {
        deb: PathBuf,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("{}: bad control archive: {why}", deb.display())]
    Control { deb: PathBuf, why: String },
    #[error("{}: package {package}: `{path}`: {why}", deb.display())]
    Entry { deb: PathBuf, package: String, path: String, why: String },
    #[error("{}: package {package} ships `{path}`, already installed by {other} with different content (and neither package Replaces the other)", deb.display())]
    Conflict {
        deb: PathBuf,
        package: String,
        path: String,
        /// `package NAME`, or `the initial tree` for a path that was there before any package.
        other: String,
    },
}

/// What a `.deb` says about itself (everything but the data archive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    /// The `.deb` file.
    pub path: PathBuf,
    pub control: Control,
    /// Paths from `conffiles` (kept for reporting; an immutable root has no configuration merge).
    pub conffiles: Vec<String>,
    /// Maintainer scripts present in the package, in [`ScriptKind`] order. None is ever run.
    pub scripts: Vec<MaintainerScript>,
    /// The `triggers` control file, if any (for example `activate-noawait ldconfig`).
    pub triggers: Option<String>,
    /// Name of the data member (`data.tar.xz`, ...).
    pub data_member: String,
    pub data_compression: Compression,
}

impl DebInfo {
    pub fn package(&self) -> &str {
        self.control.package()
    }
}

/// An opened `.deb`: its control information read, its data archive located but not read yet.
#[derive(Debug)]
pub struct DebFile {
    file: File,
    info: DebInfo,
    data: ar::Member,
}

impl DebFile {
    /// Opens a `.deb`: reads the `ar` index, checks `debian-binary` and the member order, and
    /// reads the control archive.
    pub fn open(path: impl AsRef<Path>) -> Result<DebFile, DebError> {
        let path = path.as_ref();
        let deb = || path.to_path_buf();
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| DebError::Io { deb: path.to_path_buf(), what, source }
        };
        let file = File::open(path).map_err(io("opening"))?;
        let len = file.metadata().map_err(io("reading metadata"))?.len();
        let members = ar::read_index(&file, len).map_err(|e| match e {
            ar::ArError::Io(source) => DebError::Io { deb: deb(), what: "reading the ar archive".into(), source },
            ar::ArError::Malformed(why) => DebError::Format { deb: deb(), why },
        })?;

        // deb(5): `debian-binary`, then `control.tar*`, then `data.tar*`; members whose names
        // start with `_` may come in between and are ignored, as are any after the data.
        let mut it = members.into_iter().filter(|m| !m.name.starts_with('_'));
        let first = it.next().ok_or_else(|| DebError::Format { deb: deb(), why: "the ar archive is empty".into() })?;
        if first.name != "debian-binary" {
            return Err(DebError::Format {
                deb: deb(),
                why: format!("first member is `{}`, not `debian-binary`", first.name),
            });
        }
        let mut version = vec![0u8; first.size.min(64) as usize];
        file.read_exact_at(&mut version, first.offset).map_err(io("reading debian-binary"))?;
        let version = String::from_utf8_lossy(&version);
        let found = version.lines().next().unwrap_or_default().trim();
        if found != FORMAT_VERSION {
            return Err(DebError::Version { deb: deb(), found: found.to_owned() });
        }

        let member = |base: &str, m: Option<ar::Member>| -> Result<(ar::Member, Compression), DebError> {
            let m = m.ok_or_else(|| DebError::Format { deb: deb(), why: format!("no `{base}` member") })?;
            match Compression::of_member(&m.name, base) {
                Ok(Some(c)) => Ok((m, c)),
                Ok(None) => Err(DebError::Format {
                    deb: deb(),
                    why: format!("unexpected member `{}` where `{base}` should be", m.name),
                }),
                Err(()) => Err(DebError::Compression { deb: deb(), member: m.name }),
            }
        };
        let (control_m, control_c) = member("control.tar", it.next())?;
        let (data_m, data_c) = member("data.tar", it.next())?;

        let mut control = None;
        let mut conffiles = Vec::new();
        let mut scripts = Vec::new();
        let mut triggers = None;
        let member_err = |source| DebError::Member { deb: deb(), member: control_m.name.clone(), source };
        let reader = control_c.decoder(BufReader::new(MemberReader::new(&file, &control_m))).map_err(member_err)?;
        let mut archive = tar::Archive::new(reader);
        // The control archive is small: its files are read whole.
        for entry in archive.entries().map_err(member_err)? {
            let mut entry = entry.map_err(member_err)?;
            let name = path::normalize(&entry.path_bytes()).unwrap_or_default();
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let Ok(name) = String::from_utf8(name) else { continue };
            let mut body = Vec::new();
            entry.read_to_end(&mut body).map_err(member_err)?;
            let text = || {
                String::from_utf8(body.clone())
                    .map_err(|_| DebError::Control { deb: deb(), why: format!("`{name}` is not UTF-8") })
            };
            match name.as_str() {
                "control" => {
                    let c = Control::parse(&text()?).map_err(|why| DebError::Control { deb: deb(), why })?;
                    control = Some(c);
                }
                "conffiles" => conffiles = control::parse_conffiles(&text()?),
                "triggers" => triggers = Some(text()?),
                other => {
                    if let Some(kind) = ScriptKind::from_file_name(other) {
                        scripts.push(MaintainerScript { kind, body });
                    }
                }
            }
        }
        drop(archive);
        let control = control.ok_or_else(|| DebError::Control { deb: deb(), why: "no `control` file".into() })?;
        scripts.sort_by_key(|s| s.kind);
        let info = DebInfo {
            path: deb(),
            control,
            conffiles,
            scripts,
            triggers,
            data_member: data_m.name.clone(),
            data_compression: data_c,
        };
        Ok(DebFile { file, info, data: data_m })
    }

    pub fn info(&self) -> &DebInfo {
        &self.info
    }

    pub fn path(&self) -> &Path {
        &self.info.path
    }

    /// Decompresses and reads the data archive. Entry paths are normalized and checked here
    /// (absolute paths and `..` are errors); nothing touches a tree yet.
    pub fn read_data(&self) -> Result<DataArchive, DebError> {
        let member_err =
            |source| DebError::Member { deb: self.info.path.clone(), member: self.info.data_member.clone(), source };
        let raw = BufReader::with_capacity(READ_BUFFER, MemberReader::new(&self.file, &self.data));
        let reader = self.info.data_compression.decoder(raw).map_err(member_err)?;
        data::read_tar(reader).map_err(|e| match e {
            data::ReadError::Io(source) => member_err(source),
            data::ReadError::Entry { path, why } => {
                DebError::Entry { deb: self.info.path.clone(), package: self.info.package().to_owned(), path, why }
            }
        })
    }
}

/// Reads one member's bytes with positioned reads, so several readers can share the file.
struct MemberReader<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl<'f> MemberReader<'f> {
    fn new(file: &'f File, m: &ar::Member) -> Self {
        MemberReader { file, pos: m.offset, end: m.offset + m.size }
    }
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            // The index was checked against the file's length; a shorter file changed under us.
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the .deb shrank while being read"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod fuzz;
