//! Vagrant boxes (docs/platforms.md): a tar of `metadata.json`, the box's `Vagrantfile` (with
//! the `berth` guest plugin; `vagrant/Vagrantfile`) and the disk, in the layout each provider
//! reads.
//!
//! - libvirt (vagrant-libvirt's v1 box): `metadata.json` `{"provider":"libvirt","format":"qcow2",
//!   "virtual_size":<GiB, rounded up>}`, `Vagrantfile`, `box.img` (qcow2).
//! - VirtualBox: `metadata.json` `{"provider":"virtualbox"}`, `Vagrantfile`, `box.ovf` (the name
//!   Vagrant imports) and the VMDK it references, from `ova`.
//!
//! The tar is not gzipped: the disk inside is already compressed (zlib qcow2 clusters; the
//! streamOptimized VMDK's deflate grains) and it is nearly all of the box, so gzip would cost a
//! pass over gigabytes to save almost nothing; Vagrant unpacks plain tar boxes as it does
//! gzipped ones. The members are written by `crate::tar` with the build's epoch, so the box is
//! the same bytes every time.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom};
use std::path::Path;

use super::{Ctx, ExportError, qcow2};
use crate::tar::TarWriter;

/// The box's Vagrantfile: Berth's guest plugin and settings, merged under the user's.
pub const VAGRANTFILE: &str = include_str!("vagrant/Vagrantfile");
/// The provisioning document a box's ESP gets unless `--provision` names another: user `core`
/// with Vagrant's insecure key, passwordless sudo.
pub const PROVISION: &str = include_str!("vagrant/provision.toml");

/// Mode of every box member.
const MODE: u32 = 0o644;
const GIB: u64 = 1 << 30;

/// `metadata.json` of a libvirt box for a disk of `disk_bytes`. vagrant-libvirt reads
/// `virtual_size` as whole GiB (`ByteNumber.from_GB`), so it is rounded up: the volume it makes
/// is never smaller than the disk.
pub fn libvirt_metadata(disk_bytes: u64) -> String {
    let gib = disk_bytes.div_ceil(GIB).max(1);
    format!("{{\n  \"provider\": \"libvirt\",\n  \"format\": \"qcow2\",\n  \"virtual_size\": {gib}\n}}\n")
}

/// `metadata.json` of a VirtualBox box.
pub fn virtualbox_metadata() -> String {
    "{\n  \"provider\": \"virtualbox\"\n}\n".to_string()
}

/// The VirtualBox box's Vagrantfile: Berth's, and the NIC's MAC from `box.ovf` as
/// `config.vm.base_mac` (Vagrant's VirtualBox provider sets the imported NIC's MAC to it; the
/// MAC is derived from the disk, so the box stays the same bytes).
pub fn virtualbox_vagrantfile(base_mac: &str) -> String {
    format!(
        "{VAGRANTFILE}\n# The NIC's MAC as box.ovf has it (derived from the disk by berth export).\n\
         Vagrant.configure(\"2\") do |config|\n  config.vm.base_mac = \"{base_mac}\"\nend\n"
    )
}

/// Writes the libvirt box of the stamped raw disk at `raw` into `out`.
pub(super) fn write_libvirt_box(ctx: &Ctx<'_>, raw: &Path, out: &File, final_path: &Path) -> Result<(), ExportError> {
    let img = ctx.temp("box.img")?;
    qcow2::convert(raw, img.path(), qcow2::Compression::Zlib, &ctx.percent_bar("box.img (qemu-img convert -c)"))
        .map_err(|source| ExportError::Qcow2 { path: final_path.to_path_buf(), source })?;
    let terr = |source| ExportError::Tar { path: final_path.to_path_buf(), source };
    let mut img_file =
        File::open(img.path()).map_err(|source| ExportError::Write { path: img.path().into(), source })?;
    let img_len = img_file.metadata().map_err(|source| ExportError::Write { path: img.path().into(), source })?.len();

    let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, out), ctx.epoch).map_err(terr)?;
    tar.append_bytes("metadata.json", MODE, libvirt_metadata(ctx.layout.size).as_bytes()).map_err(terr)?;
    tar.append_bytes("Vagrantfile", MODE, VAGRANTFILE.as_bytes()).map_err(terr)?;
    let bar = ctx.bar("packing the box", img_len);
    tar.append_reader("box.img", MODE, &mut img_file, img_len, &|n| bar.set_position(n)).map_err(terr)?;
    tar.finish().map_err(terr)?;
    bar.finish_and_clear();
    Ok(())
}

/// Writes the VirtualBox box into `out`: the OVF descriptor as `box.ovf` (the name Vagrant
/// imports) and the streamOptimized VMDK it references, read from `vmdk`.
pub(super) fn write_virtualbox_box(
    ctx: &Ctx<'_>,
    ovf: &str,
    vmdk_name: &str,
    vmdk: &mut File,
    vagrantfile: &str,
    out: &File,
    final_path: &Path,
) -> Result<(), ExportError> {
    let terr = |source| ExportError::Tar { path: final_path.to_path_buf(), source };
    let werr = |source| ExportError::Write { path: final_path.to_path_buf(), source };
    vmdk.seek(SeekFrom::Start(0)).map_err(werr)?;
    let vmdk_len = vmdk.metadata().map_err(werr)?.len();

    let mut tar = TarWriter::new(BufWriter::with_capacity(1 << 20, out), ctx.epoch).map_err(terr)?;
    tar.append_bytes("metadata.json", MODE, virtualbox_metadata().as_bytes()).map_err(terr)?;
    tar.append_bytes("Vagrantfile", MODE, vagrantfile.as_bytes()).map_err(terr)?;
    tar.append_bytes("box.ovf", MODE, ovf.as_bytes()).map_err(terr)?;
    let bar = ctx.bar("packing the box", vmdk_len);
    tar.append_reader(vmdk_name, MODE, vmdk, vmdk_len, &|n| bar.set_position(n)).map_err(terr)?;
    tar.finish().map_err(terr)?;
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_size_rounds_up_to_whole_gib() {
        let v = |b| serde_json::from_str::<serde_json::Value>(&libvirt_metadata(b)).unwrap()["virtual_size"].clone();
        assert_eq!(v(GIB), 1);
        assert_eq!(v(GIB + 1), 2);
        assert_eq!(v(100 << 20), 1);
        let m: serde_json::Value = serde_json::from_str(&libvirt_metadata(GIB)).unwrap();
        assert_eq!(m["provider"], "libvirt");
        assert_eq!(m["format"], "qcow2");
    }

    #[test]
    fn box_files_are_there() {
        assert!(VAGRANTFILE.contains("config.vm.guest = :berth"));
        assert!(PROVISION.parse::<toml::Table>().is_ok());
    }
}
