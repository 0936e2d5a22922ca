//! `berth export`: a built Berth disk to the artifact of each platform (docs/platforms.md,
//! docs/design.md §8).
//!
//! This module owns the orchestration: checking that the input is a Berth disk, copying it per
//! platform (reflink, else only its data, so holes stay holes), putting the platform word (and a
//! provisioning document) on the copy's ESP ([`esp`]), wrapping it in the platform's container
//! (qcow2 through `qemu-img` in [`qcow2`], boxes in [`vagrant`], the OVA in [`ova`], the clouds'
//! raw disk, tarball and VHD in [`cloud`]), and writing
//! every artifact beside its final name so that a failure leaves none. The root, and everything
//! on the disk outside the ESP, is the input's bytes on every platform.
//!
//! Same input, same bytes: every time stamped anywhere is the build's epoch (given, else read
//! back from the ESP's bootmgr entry, which the build stamped), and nothing random is used.

pub mod cloud;
pub mod esp;
pub mod gzip;
pub mod ova;
pub mod qcow2;
pub mod vagrant;
pub mod vhd;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use berth_slot::Slot;
use berth_slot::layout::{ESP_PARTITION, ESP_TYPE_GUID, ROOT_TYPE_GUID, STATE_PARTITION, STATE_TYPE_GUID};
use indicatif::ProgressBar;
use tempfile::NamedTempFile;

use crate::platform::{Platform, PlatformExt};
use crate::size::ByteSize;

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The platforms, each once; artifacts are written in this order.
    pub platforms: Vec<Platform>,
    /// Where the artifacts go (created if missing).
    pub out_dir: PathBuf,
    /// A provisioning document (docs/provisioning.md) put on every artifact's ESP as
    /// `berth/provision.toml`; without it, only Vagrant boxes get one (the box's own).
    pub provision: Option<PathBuf>,
    /// Every timestamp written (ESP entries, tar members); else the build's, read from the ESP.
    pub source_date_epoch: Option<i64>,
    /// Progress bars on stderr.
    pub progress: bool,
}

/// One artifact written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub platform: Platform,
    pub path: PathBuf,
    /// Its size on disk as a file (the apparent size; a raw disk's holes count).
    pub bytes: u64,
}

/// Why an export failed. Each message is one line naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no platform given; known: {}", Platform::known_names())]
    NoPlatforms,
    #[error("{path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a Berth disk: {why}")]
    NotBerthDisk { path: PathBuf, why: String },
    #[error("output directory {path}: {source}")]
    OutDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} would be replaced by its own export; choose another --out")]
    SameAsInput { path: PathBuf },
    #[error("provisioning document {path}: {why}")]
    Provision { path: PathBuf, why: String },
    #[error("{path}: copying the disk: {source}")]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Esp {
        path: PathBuf,
        #[source]
        source: esp::EspEditError,
    },
    #[error("{path}: {source}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: qcow2::Qcow2Error,
    },
    #[error("{path}: {source}")]
    Tar {
        path: PathBuf,
        #[source]
        source: crate::tar::TarError,
    },
    #[error("{path}: {source}")]
    Ova {
        path: PathBuf,
        #[source]
        source: ova::OvaError,
    },
    #[error("{path}: {source}")]
    Cloud {
        path: PathBuf,
        #[source]
        source: cloud::CloudError,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the partitions the export needs are on the input disk.
#[derive(Debug, Clone, Copy)]
pub struct DiskLayoutInfo {
    /// Size of the disk in bytes.
    pub size: u64,
    /// The ESP's byte range.
    pub esp_offset: u64,
    pub esp_size: u64,
}

/// Checks that `path` is a Berth disk: a GPT (either copy) with the ESP as partition 1, ROOT-A
/// as partition 2 and STATE as partition 4, and a file as long as its GPT says.
pub fn check_disk(path: &Path) -> Result<DiskLayoutInfo, ExportError> {
    let not = |why: String| ExportError::NotBerthDisk { path: path.to_path_buf(), why };
    let info = crate::inspect::inspect(path).map_err(|e| match e {
        crate::inspect::InspectError::Open { path, source } => ExportError::Input { path, source },
        other => {
            let text = other.to_string();
            // The GPT reader names the file itself; once is enough.
            let prefix = format!("{}: ", path.display());
            not(text.strip_prefix(&prefix).unwrap_or(&text).to_string())
        }
    })?;
    if let Some(short) = info.gpt_problems.iter().find(|p| p.contains("truncated")) {
        return Err(not(short.clone()));
    }
    let find = |number: u32, type_guid: &str, label: &str| {
        info.partitions
            .iter()
            .find(|p| p.number == number && p.type_guid == type_guid)
            .ok_or_else(|| not(format!("no {label} partition (number {number}, type {type_guid})")))
    };
    let esp = find(ESP_PARTITION, ESP_TYPE_GUID, "ESP")?;
    let root_a = find(Slot::A.partition_number(), ROOT_TYPE_GUID, Slot::A.label())?;
    if root_a.label != Slot::A.label() {
        return Err(not(format!(
            "partition {} is labelled {:?}, not {}",
            root_a.number,
            root_a.label,
            Slot::A.label()
        )));
    }
    find(STATE_PARTITION, STATE_TYPE_GUID, "STATE")?;
    if esp.offset.checked_add(esp.size).is_none_or(|end| end > info.size) {
        return Err(not("the ESP lies past the end of the file".into()));
    }
    Ok(DiskLayoutInfo { size: info.size, esp_offset: esp.offset, esp_size: esp.size })
}

/// The image's name: the disk's file name without its extension (`host.img` → `host`).
pub fn image_name(disk: &Path) -> String {
    disk.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "berth".to_string())
}

/// Exports `disk` for every platform of `opts`. Everything is checked before anything is
/// written (the disk, the output directory, the provisioning document); every artifact is
/// written beside its final name and all are renamed into place at the end, so a failure
/// leaves none of them.
pub fn export(disk: &Path, opts: &ExportOptions) -> Result<Vec<Artifact>, ExportError> {
    export_as(disk, &image_name(disk), opts)
}

/// [`export`] with the artifacts named after `name` instead of the disk's file name.
pub fn export_as(disk: &Path, name: &str, opts: &ExportOptions) -> Result<Vec<Artifact>, ExportError> {
    if opts.platforms.is_empty() {
        return Err(ExportError::NoPlatforms);
    }
    let layout = check_disk(disk)?;
    check_out_dir(&opts.out_dir)?;
    for p in &opts.platforms {
        let target = opts.out_dir.join(p.artifact_file(name));
        if same_file(&target, disk) {
            return Err(ExportError::SameAsInput { path: disk.to_path_buf() });
        }
    }
    let provision = match &opts.provision {
        Some(path) => Some(read_provision(path)?),
        None => None,
    };
    let input = File::open(disk).map_err(|source| ExportError::Input { path: disk.to_path_buf(), source })?;
    let epoch = match opts.source_date_epoch {
        Some(e) => e,
        None => esp::build_epoch(&input, layout.esp_offset, layout.esp_size)
            .map_err(|source| ExportError::Esp { path: disk.to_path_buf(), source })?,
    };

    let mut staged: Vec<(Platform, NamedTempFile, PathBuf)> = Vec::new();
    for &platform in &opts.platforms {
        let final_path = opts.out_dir.join(platform.artifact_file(name));
        let ctx = Ctx { input: &input, disk, layout, name, epoch, opts, provision: provision.as_deref() };
        let tmp = ctx.artifact(platform, &final_path)?;
        staged.push((platform, tmp, final_path));
    }
    let mut out = Vec::new();
    for (platform, tmp, path) in staged {
        let werr = |source| ExportError::Write { path: path.clone(), source };
        // tempfile creates 0600; artifacts get what any other file the user creates gets.
        crate::umask::apply(tmp.as_file()).map_err(werr)?;
        tmp.as_file().sync_all().map_err(werr)?;
        let bytes = tmp.as_file().metadata().map_err(werr)?.len();
        tmp.persist(&path).map_err(|e| werr(e.error))?;
        out.push(Artifact { platform, path, bytes });
    }
    Ok(out)
}

/// The shared inputs of one export.
struct Ctx<'a> {
    input: &'a File,
    disk: &'a Path,
    layout: DiskLayoutInfo,
    name: &'a str,
    epoch: i64,
    opts: &'a ExportOptions,
    provision: Option<&'a [u8]>,
}

impl Ctx<'_> {
    /// Writes the artifact of `platform` into a temporary file beside `final_path`.
    fn artifact(&self, platform: Platform, final_path: &Path) -> Result<NamedTempFile, ExportError> {
        let raw = self.stamped_copy(platform)?;
        let out = self.temp(&platform.artifact_file(self.name))?;
        match platform {
            Platform::Metal => return Ok(raw),
            Platform::Qemu => {
                qcow2::convert(
                    raw.path(),
                    out.path(),
                    qcow2::Compression::None,
                    &self.percent_bar("qcow2 (qemu-img convert)"),
                )
                .map_err(|source| ExportError::Qcow2 { path: final_path.to_path_buf(), source })?;
            }
            Platform::VagrantLibvirt => {
                vagrant::write_libvirt_box(self, raw.path(), out.as_file(), final_path)?;
            }
            Platform::Virtualbox => {
                let bar = self.bar("OVA (streamOptimized VMDK)", self.layout.size);
                let mut file = out.reopen().map_err(|source| ExportError::Write { path: out.path().into(), source })?;
                ova::write_ova(raw.as_file(), self.layout.size, &mut file, &self.ova_params(), &|n| {
                    bar.set_position(n)
                })
                .map_err(|source| ExportError::Ova { path: final_path.to_path_buf(), source })?;
                bar.finish_and_clear();
            }
            Platform::Aws => {
                self.write_aws(raw.as_file(), final_path)?;
                return Ok(raw);
            }
            Platform::Azure => {
                self.write_azure(raw.as_file(), final_path)?;
                return Ok(raw);
            }
            Platform::Gce => self.write_gce(raw.as_file(), out.as_file(), final_path)?,
            Platform::VagrantVirtualbox => {
                let bar = self.bar("box disk (streamOptimized VMDK)", self.layout.size);
                let mut disk =
                    ova::vagrant_virtualbox_disk(raw.as_file(), self.layout.size, &self.ova_params(), &|n| {
                        bar.set_position(n)
                    })
                    .map_err(|source| ExportError::Ova { path: final_path.to_path_buf(), source })?;
                bar.finish_and_clear();
                let vagrantfile = vagrant::virtualbox_vagrantfile(&disk.base_mac);
                vagrant::write_virtualbox_box(
                    self,
                    &disk.ovf,
                    ova::BOX_DISK,
                    &mut disk.disk,
                    &vagrantfile,
                    out.as_file(),
                    final_path,
                )?;
            }
        }
        Ok(out)
    }

    /// A copy of the input disk whose ESP says `platform` (and carries the provisioning
    /// document, if there is one for this platform).
    fn stamped_copy(&self, platform: Platform) -> Result<NamedTempFile, ExportError> {
        let tmp = self.temp(&format!("{}.{}.raw", self.name, platform.name()))?;
        let bar = self.bar(&format!("copying the disk ({platform})"), self.layout.size);
        copy_disk(self.input, tmp.as_file(), self.layout.size, &bar)
            .map_err(|source| ExportError::Copy { path: self.disk.to_path_buf(), source })?;
        bar.finish_and_clear();
        let word = platform.file_contents();
        let mut files: Vec<(&str, &[u8])> = vec![(esp::PLATFORM_FILE, word.as_bytes())];
        let provision = self.provision.or(platform.is_vagrant().then_some(vagrant::PROVISION.as_bytes()));
        if let Some(doc) = provision {
            files.push((esp::PROVISION_FILE, doc));
        }
        esp::put_files(tmp.as_file(), self.layout.esp_offset, self.layout.esp_size, &files, self.epoch)
            .map_err(|source| ExportError::Esp { path: self.disk.to_path_buf(), source })?;
        Ok(tmp)
    }

    /// The OVA's machine: named after the image, stamped with the epoch, the VMDK staged in the
    /// output directory (an unnamed file: nothing is left behind).
    fn ova_params(&self) -> ova::OvaParams {
        let mut p = ova::OvaParams::new(self.name, self.epoch);
        p.work_dir = self.opts.out_dir.clone();
        p
    }

    /// A progress bar counting percent (qemu-img reports nothing finer).
    fn percent_bar(&self, msg: &str) -> ProgressBar {
        let bar = self.bar(msg, 100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}% {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    }

    /// A temporary file in the output directory, removed unless persisted.
    fn temp(&self, what: &str) -> Result<NamedTempFile, ExportError> {
        tempfile::Builder::new()
            .prefix(&format!(".{what}."))
            .tempfile_in(&self.opts.out_dir)
            .map_err(|source| ExportError::OutDir { path: self.opts.out_dir.clone(), source })
    }

    /// A progress bar of `len` bytes (or percent), hidden unless progress was asked for.
    fn bar(&self, msg: &str, len: u64) -> ProgressBar {
        crate::publish::progress_bar(self.opts.progress, len, msg.to_string())
    }
}

/// Makes the output directory if needed and proves it writable by making (and removing) a
/// temporary file in it, before any work.
fn check_out_dir(dir: &Path) -> Result<(), ExportError> {
    let err = |source| ExportError::OutDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    tempfile::Builder::new().prefix(".berth-export-check.").tempfile_in(dir).map_err(err)?;
    Ok(())
}

/// Whether `a` exists and is the same file as `b`.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Reads a provisioning document and checks it is TOML (its meaning is checked by the
/// provisioning on the first boot, which reports what it refuses).
fn read_provision(path: &Path) -> Result<Vec<u8>, ExportError> {
    let bad = |why: String| ExportError::Provision { path: path.to_path_buf(), why };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    text.parse::<toml::Table>().map_err(|e| bad(format!("not TOML: {}", one_line(&e.to_string()))))?;
    Ok(bytes)
}

/// Joins a multi-line message (TOML errors draw the line at fault) into one line.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Copies `len` bytes of `src` into the empty `dst`: a reflink where the filesystem shares
/// extents (instant, no space used), else only the data `SEEK_DATA` finds, skipping zero
/// blocks, so the copy is as sparse as the input (a built disk is mostly holes).
pub fn copy_disk(src: &File, dst: &File, len: u64, bar: &ProgressBar) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        bar.set_position(len);
        return Ok(());
    }
    dst.set_len(len)?;
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA here: everything is data.
            Err(_) => pos,
        };
        let hole = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(data)).unwrap_or(len).min(len);
        copy_range(src, dst, data, hole)?;
        bar.set_position(hole);
        pos = hole.max(data + 1);
    }
    bar.set_position(len);
    Ok(())
}

/// Copies `[from, to)`, writing only the 64 KiB blocks that are not all zeros.
fn copy_range(src: &File, dst: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 4 << 20;
    const BLOCK: usize = 64 << 10;
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        src.read_exact_at(&mut buf[..n], at)?;
        for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                dst.write_all_at(block, at + (i * BLOCK) as u64)?;
            }
        }
        at += n as u64;
    }
    Ok(())
}

/// One line per artifact: where it is and how big.
pub fn describe(artifacts: &[Artifact]) -> Vec<String> {
    artifacts.iter().map(|a| format!("{}: {} ({})", a.platform, a.path.display(), ByteSize(a.bytes))).collect()
}
