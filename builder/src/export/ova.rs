//! The VirtualBox artifacts: the OVA (`virtualbox`) and the OVF + VMDK pair of the VirtualBox
//! Vagrant box (`vagrant-virtualbox`, packed by [`super::vagrant`]).
//!
//! An OVA is a ustar archive whose members come in the order the OVF specification fixes: the
//! descriptor first, then the manifest, then the files of `<References>` (here one VMDK). The
//! descriptor and the manifest need the VMDK's size and digest, so the VMDK is written to an
//! unnamed temporary file first and copied into the archive after them.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ovf::{self, OvfParams};
use crate::tar::{TarError, TarWriter};
use crate::vmdk::{self, VmdkError, VmdkInfo, VmdkOptions};

/// The name the VirtualBox provider of Vagrant imports (`box.ovf`, by that exact name).
pub const BOX_OVF: &str = "box.ovf";
/// The disk file of the Vagrant box, as `box.ovf` references it.
pub const BOX_DISK: &str = "box-disk1.vmdk";

/// What the OVA is made of.
#[derive(Clone, Debug)]
pub struct OvaParams {
    /// The virtual machine's name, and the stem of the OVA's member names.
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The mtime of every archive member (the build's SOURCE_DATE_EPOCH).
    pub source_date_epoch: i64,
    /// Where the VMDK is staged before it goes into the archive (an unnamed temporary file, so
    /// nothing is left behind).
    pub work_dir: PathBuf,
}

impl OvaParams {
    /// Default hardware (2 CPUs, 2048 MiB), staging in the system's temporary directory.
    pub fn new(name: impl Into<String>, source_date_epoch: i64) -> Self {
        OvaParams {
            name: name.into(),
            cpus: ovf::DEFAULT_CPUS,
            memory_mib: ovf::DEFAULT_MEMORY_MIB,
            source_date_epoch,
            work_dir: std::env::temp_dir(),
        }
    }

    fn ovf_params(&self, disk_file: &str, info: &VmdkInfo) -> OvfParams {
        let mut p = OvfParams::for_disk(&self.name, disk_file, info);
        p.cpus = self.cpus;
        p.memory_mib = self.memory_mib;
        p
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    #[error("the VM name {0:?} cannot name files in an OVA (empty, '/', quotes or control characters)")]
    BadName(String),
    #[error("writing the VMDK")]
    Vmdk(#[from] VmdkError),
    #[error("creating a temporary file in {}", dir.display())]
    Temp { dir: PathBuf, source: io::Error },
    #[error("reading back the staged VMDK")]
    Staged(#[source] io::Error),
    #[error("writing the OVA archive")]
    Tar(#[from] TarError),
    #[error("writing the OVA archive")]
    Write(#[source] io::Error),
}

/// What [`write_ova`] wrote.
#[derive(Clone, Debug)]
pub struct OvaInfo {
    /// The OVA's length.
    pub bytes: u64,
    /// The member names in archive order: the OVF, the manifest, the VMDK.
    pub members: [String; 3],
    pub vmdk: VmdkInfo,
    pub ovf: OvfParams,
}

/// Writes the OVA of the raw disk `raw` (`len` bytes) to `out` at its current position.
/// `progress` gets the raw bytes converted so far.
pub fn write_ova(
    raw: &File,
    len: u64,
    out: &mut File,
    p: &OvaParams,
    progress: &dyn Fn(u64),
) -> Result<OvaInfo, OvaError> {
    check_name(&p.name)?;
    let ovf_name = format!("{}.ovf", p.name);
    let mf_name = format!("{}.mf", p.name);
    let disk_name = format!("{}-disk1.vmdk", p.name);

    let (mut disk, info) = stage_vmdk(raw, len, &disk_name, &p.work_dir, progress)?;
    let disk_digest = sha256(&mut disk)?;
    let params = p.ovf_params(&disk_name, &info);
    let descriptor = ovf::descriptor(&params);
    let manifest =
        ovf::manifest(&[(&ovf_name, Sha256::digest(descriptor.as_bytes()).into()), (&disk_name, disk_digest)]);

    let start = out.stream_position().map_err(OvaError::Write)?;
    let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, &mut *out), p.source_date_epoch)?;
    tar.append_bytes(&ovf_name, 0o644, descriptor.as_bytes())?;
    tar.append_bytes(&mf_name, 0o644, manifest.as_bytes())?;
    tar.append_file(&disk_name, 0o644, &mut disk, info.bytes)?;
    tar.finish()?;
    let bytes = out.stream_position().map_err(OvaError::Write)? - start;
    Ok(OvaInfo { bytes, members: [ovf_name, mf_name, disk_name], vmdk: info, ovf: params })
}

/// The VirtualBox Vagrant box's disk: `box.ovf`'s text and the VMDK it references as
/// [`BOX_DISK`].
#[derive(Debug)]
pub struct VagrantVirtualboxDisk {
    /// The text of [`BOX_OVF`].
    pub ovf: String,
    /// The VMDK, positioned at its start (an unnamed temporary file), to go into the box as
    /// [`BOX_DISK`].
    pub disk: File,
    pub disk_len: u64,
    /// The NIC's MAC as the OVF has it, for the box Vagrantfile's `config.vm.base_mac`.
    pub base_mac: String,
}

/// Converts the raw disk for a VirtualBox Vagrant box: the VMDK staged in `p.work_dir` and the
/// OVF that names it, both to be packed by the box writer.
pub fn vagrant_virtualbox_disk(
    raw: &File,
    len: u64,
    p: &OvaParams,
    progress: &dyn Fn(u64),
) -> Result<VagrantVirtualboxDisk, OvaError> {
    check_name(&p.name)?;
    let (mut disk, info) = stage_vmdk(raw, len, BOX_DISK, &p.work_dir, progress)?;
    disk.seek(SeekFrom::Start(0)).map_err(OvaError::Staged)?;
    let params = p.ovf_params(BOX_DISK, &info);
    Ok(VagrantVirtualboxDisk { ovf: ovf::descriptor(&params), disk, disk_len: info.bytes, base_mac: params.mac_hex() })
}

fn check_name(name: &str) -> Result<(), OvaError> {
    if name.is_empty() || name.chars().any(|c| c == '/' || c == '"' || c.is_control()) {
        return Err(OvaError::BadName(name.to_string()));
    }
    Ok(())
}

/// Writes the VMDK into an unnamed temporary file in `dir`.
fn stage_vmdk(
    raw: &File,
    len: u64,
    disk_name: &str,
    dir: &Path,
    progress: &dyn Fn(u64),
) -> Result<(File, VmdkInfo), OvaError> {
    let mut disk = tempfile::tempfile_in(dir).map_err(|source| OvaError::Temp { dir: dir.to_path_buf(), source })?;
    let info = vmdk::write(raw, len, &mut disk, &VmdkOptions::new(disk_name), progress)?;
    Ok((disk, info))
}

/// SHA-256 of the whole file; leaves it positioned at the start.
fn sha256(file: &mut File) -> Result<[u8; 32], OvaError> {
    file.seek(SeekFrom::Start(0)).map_err(OvaError::Staged)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(OvaError::Staged)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    file.seek(SeekFrom::Start(0)).map_err(OvaError::Staged)?;
    Ok(h.finalize().into())
}
