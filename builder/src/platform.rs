//! The platforms a Berth disk is exported for (docs/design.md §8, docs/platforms.md).
//!
//! This module is the one home of the platform names: what `--platform` accepts, the word
//! written to `berth/platform` on each artifact's ESP, the artifact's file name and the line
//! `--help` and errors show for each. Every platform carries the same root; only the container
//! around the disk and that ESP word differ.

use std::fmt;
use std::str::FromStr;

/// A platform an image is exported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    /// The raw disk, for `dd` to a drive or any hypervisor that takes raw images.
    Metal,
    /// A qcow2 disk for QEMU/KVM and libvirt.
    Qemu,
    /// An OVA (OVF descriptor, streamOptimized VMDK, SHA-256 manifest) to import in VirtualBox.
    Virtualbox,
    /// A Vagrant box for the libvirt provider (qcow2 `box.img`).
    VagrantLibvirt,
    /// A Vagrant box for the VirtualBox provider (`box.ovf` + VMDK).
    VagrantVirtualbox,
}

impl Platform {
    /// Every platform, in the order `--help` lists them.
    pub const ALL: [Platform; 5] =
        [Platform::Metal, Platform::Qemu, Platform::Virtualbox, Platform::VagrantLibvirt, Platform::VagrantVirtualbox];

    /// The name `--platform` takes, which is also the word in `berth/platform` on the ESP.
    pub const fn name(self) -> &'static str {
        match self {
            Platform::Metal => "metal",
            Platform::Qemu => "qemu",
            Platform::Virtualbox => "virtualbox",
            Platform::VagrantLibvirt => "vagrant-libvirt",
            Platform::VagrantVirtualbox => "vagrant-virtualbox",
        }
    }

    /// One line: what the platform's artifact is and what it is for.
    pub const fn describe(self) -> &'static str {
        // Each fits a 100-column --help after the name column.
        match self {
            Platform::Metal => "<name>.img: the raw GPT disk (dd to a drive; hypervisors taking raw disks)",
            Platform::Qemu => "<name>.qcow2: a qcow2 disk for QEMU/KVM and libvirt (UEFI, q35)",
            Platform::Virtualbox => "<name>.ova: OVF, streamOptimized VMDK, SHA-256 manifest; import in VirtualBox",
            Platform::VagrantLibvirt => "<name>.libvirt.box: a Vagrant box for vagrant-libvirt (qcow2 box.img)",
            Platform::VagrantVirtualbox => "<name>.virtualbox.box: a Vagrant box for VirtualBox (box.ovf + VMDK)",
        }
    }

    /// The artifact's file name for an image called `image_name`.
    pub fn artifact_file(self, image_name: &str) -> String {
        match self {
            Platform::Metal => format!("{image_name}.img"),
            Platform::Qemu => format!("{image_name}.qcow2"),
            Platform::Virtualbox => format!("{image_name}.ova"),
            Platform::VagrantLibvirt => format!("{image_name}.libvirt.box"),
            Platform::VagrantVirtualbox => format!("{image_name}.virtualbox.box"),
        }
    }

    /// Whether the artifact is a Vagrant box (which gets the box's provisioning document on its
    /// ESP unless another is given).
    pub const fn is_vagrant(self) -> bool {
        matches!(self, Platform::VagrantLibvirt | Platform::VagrantVirtualbox)
    }

    /// The known names, comma-separated, for error messages.
    pub fn known_names() -> String {
        Platform::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    }

    /// Every platform with its description, one per line, for `--help`.
    pub fn help_table() -> String {
        let width = Platform::ALL.iter().map(|p| p.name().len()).max().unwrap_or(0);
        Platform::ALL.iter().map(|p| format!("  {:width$}  {}", p.name(), p.describe())).collect::<Vec<_>>().join("\n")
    }

    /// Parses a comma-separated list (`metal,qemu`): each name once, in the order given.
    pub fn parse_list(list: &str) -> Result<Vec<Platform>, UnknownPlatform> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim) {
            let p: Platform = name.parse()?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a platform; the message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform '{name}'; known: {}", Platform::known_names())]
pub struct UnknownPlatform {
    pub name: String,
}

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPlatform { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_artifacts_differ() {
        let mut files = std::collections::BTreeSet::new();
        for p in Platform::ALL {
            assert_eq!(p.name().parse::<Platform>().unwrap(), p);
            assert!(!p.name().contains(char::is_whitespace));
            assert!(files.insert(p.artifact_file("x")), "{p}");
            assert!(p.describe().starts_with(&p.artifact_file("<name>")), "{p}");
        }
        assert_eq!(Platform::Metal.artifact_file("host"), "host.img");
        assert_eq!(Platform::VagrantLibvirt.artifact_file("host"), "host.libvirt.box");
    }

    #[test]
    fn unknown_lists_the_known() {
        let e = "vmware".parse::<Platform>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown platform 'vmware'; known: metal, qemu, virtualbox, vagrant-libvirt, vagrant-virtualbox"
        );
        assert_eq!(Platform::parse_list("qemu, metal,qemu").unwrap(), vec![Platform::Qemu, Platform::Metal]);
        assert_eq!(Platform::parse_list("metal,").unwrap_err().name, "");
    }
}
