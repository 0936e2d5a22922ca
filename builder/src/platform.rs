//! The platforms a Berth disk is exported for (docs/design.md §8, docs/platforms.md): what the
//! builder adds to the platform words of [`berth_slot::platform`].
//!
//! The names themselves (what `--platform` accepts and the word written to `berth/platform` on
//! each artifact's ESP) live in `berth_slot::platform`, where the guest reads them too; they
//! are re-exported here so builder code says `crate::platform::Platform`. This module owns the
//! builder-only part, through [`PlatformExt`]: each platform's artifact file name and the line
//! `--help` shows for it. Every platform carries the same root; only the container around the
//! disk and that ESP word differ.
//!
//! | platform | artifact | judged by (tests) |
//! |---|---|---|
//! | `metal` | `<name>.img`, the raw disk | `sgdisk -v`, `fsck.fat` |
//! | `qemu` | `<name>.qcow2` | `qemu-img check`, `qemu-img compare` |
//! | `virtualbox` | `<name>.ova` | GNU tar, `qemu-img` on the VMDK |
//! | `vagrant-libvirt`, `vagrant-virtualbox` | `<name>.{libvirt,virtualbox}.box` | GNU tar, Vagrant |
//! | `aws` | `<name>.aws.raw`, whole GiB, backup GPT at the end | `sgdisk -v` |
//! | `gce` | `<name>.gce.tar.gz`, `disk.raw` (whole GiB) as an oldgnu sparse member | GNU tar, `gzip -t` |
//! | `azure` | `<name>.azure.vhd`, a fixed VHD of a whole MiB | `qemu-img info -f vpc`, `qemu-img compare` |

pub use berth_slot::platform::{PLATFORM_FILE, PROVISION_FILE, Platform, UnknownPlatform};

/// What the builder knows of a platform beyond its name: its artifact and `--help` line.
pub trait PlatformExt: Copy {
    /// One line: what the platform's artifact is and what it is for.
    fn describe(self) -> &'static str;
    /// The artifact's file name for an image called `image_name`.
    fn artifact_file(self, image_name: &str) -> String;
    /// Whether the artifact is a Vagrant box (which gets the box's provisioning document on
    /// its ESP unless another is given).
    fn is_vagrant(self) -> bool;
    /// Every platform with its description, one per line, for `--help`.
    fn help_table() -> String;
}

impl PlatformExt for Platform {
    fn describe(self) -> &'static str {
        // Each fits a 100-column --help after the name column.
        match self {
            Platform::Metal => "<name>.img: the raw GPT disk (dd to a drive; hypervisors taking raw disks)",
            Platform::Qemu => "<name>.qcow2: a qcow2 disk for QEMU/KVM and libvirt (UEFI, q35)",
            Platform::Virtualbox => "<name>.ova: OVF, streamOptimized VMDK, SHA-256 manifest; import in VirtualBox",
            Platform::VagrantLibvirt => "<name>.libvirt.box: a Vagrant box for vagrant-libvirt (qcow2 box.img)",
            Platform::VagrantVirtualbox => "<name>.virtualbox.box: a Vagrant box for VirtualBox (box.ovf + VMDK)",
            Platform::Aws => "<name>.aws.raw: the raw disk, whole GiB, for an EBS snapshot and an AMI (UEFI)",
            Platform::Gce => "<name>.gce.tar.gz: disk.raw (whole GiB, sparse) in a gzip'd tar, a GCE image",
            Platform::Azure => "<name>.azure.vhd: a fixed VHD (whole MiB) for an Azure Generation 2 image",
        }
    }

    fn artifact_file(self, image_name: &str) -> String {
        match self {
            Platform::Metal => format!("{image_name}.img"),
            Platform::Qemu => format!("{image_name}.qcow2"),
            Platform::Virtualbox => format!("{image_name}.ova"),
            Platform::VagrantLibvirt => format!("{image_name}.libvirt.box"),
            Platform::VagrantVirtualbox => format!("{image_name}.virtualbox.box"),
            Platform::Aws => format!("{image_name}.aws.raw"),
            Platform::Gce => format!("{image_name}.gce.tar.gz"),
            Platform::Azure => format!("{image_name}.azure.vhd"),
        }
    }

    fn is_vagrant(self) -> bool {
        matches!(self, Platform::VagrantLibvirt | Platform::VagrantVirtualbox)
    }

    fn help_table() -> String {
        let width = Platform::ALL.iter().map(|p| p.name().len()).max().unwrap_or(0);
        Platform::ALL.iter().map(|p| format!("  {:width$}  {}", p.name(), p.describe())).collect::<Vec<_>>().join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_differ_and_are_described() {
        let mut files = std::collections::BTreeSet::new();
        for p in Platform::ALL {
            assert!(files.insert(p.artifact_file("x")), "{p}");
            assert!(p.describe().starts_with(&p.artifact_file("<name>")), "{p}");
            // Name column (18) + 4 spaces + the description fits --help's 100 columns.
            assert!(p.describe().len() + 22 <= 100, "{p}: {}", p.describe());
        }
        assert_eq!(Platform::Metal.artifact_file("host"), "host.img");
        assert_eq!(Platform::VagrantLibvirt.artifact_file("host"), "host.libvirt.box");
        assert_eq!(Platform::Gce.artifact_file("host"), "host.gce.tar.gz");
        assert_eq!(Platform::help_table().lines().count(), Platform::ALL.len());
    }
}
