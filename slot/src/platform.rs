//! The platforms a Berth disk is exported for, and where the ESP says which one a disk is
//! (docs/design.md §8, docs/platforms.md).
//!
//! This module is the one home of the platform *words*: what `berth export --platform` accepts,
//! and the word the export writes to [`PLATFORM_FILE`] on each artifact's ESP, which the guest
//! (PID 1, berth-metadata) reads back and matches against the same list. What only the builder
//! needs (artifact file names, `--help` lines) stays in the builder.
//!
//! ```
//! use berth_slot::platform::Platform;
//!
//! let p: Platform = "aws".parse().unwrap();
//! assert!(p.is_cloud());
//! assert_eq!(Platform::parse_file(b"gce\n"), Ok(Platform::Gce));
//! assert_eq!(p.file_contents(), "aws\n");
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

/// The platform word on the ESP: one line, the platform's [`Platform::name`].
pub const PLATFORM_FILE: &str = "berth/platform";
/// The ESP provisioning source (docs/provisioning.md): a provisioning document put there by
/// `berth export --provision` (and on every Vagrant box).
pub const PROVISION_FILE: &str = "berth/provision.toml";

/// A platform an image is exported for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    /// The raw disk, for `dd` to a drive or any hypervisor that takes raw images.
    Metal,
    /// A qcow2 disk for QEMU/KVM and libvirt.
    Qemu,
    /// An OVA to import in VirtualBox.
    Virtualbox,
    /// A Vagrant box for the libvirt provider.
    VagrantLibvirt,
    /// A Vagrant box for the VirtualBox provider.
    VagrantVirtualbox,
    /// Amazon EC2: a raw disk for an EBS snapshot.
    Aws,
    /// Google Compute Engine: `disk.raw` in a gzip'd tar.
    Gce,
    /// Microsoft Azure: a fixed VHD.
    Azure,
}

impl Platform {
    /// Every platform, in the order `--help` lists them.
    pub const ALL: [Platform; 8] = [
        Platform::Metal,
        Platform::Qemu,
        Platform::Virtualbox,
        Platform::VagrantLibvirt,
        Platform::VagrantVirtualbox,
        Platform::Aws,
        Platform::Gce,
        Platform::Azure,
    ];

    /// The name `--platform` takes, which is also the word in [`PLATFORM_FILE`].
    pub const fn name(self) -> &'static str {
        match self {
            Platform::Metal => "metal",
            Platform::Qemu => "qemu",
            Platform::Virtualbox => "virtualbox",
            Platform::VagrantLibvirt => "vagrant-libvirt",
            Platform::VagrantVirtualbox => "vagrant-virtualbox",
            Platform::Aws => "aws",
            Platform::Gce => "gce",
            Platform::Azure => "azure",
        }
    }

    /// Whether the platform is a cloud with a metadata service (the instance's hostname, keys
    /// and user data come from it).
    pub const fn is_cloud(self) -> bool {
        matches!(self, Platform::Aws | Platform::Gce | Platform::Azure)
    }

    /// The known names, comma-separated, for error messages.
    pub fn known_names() -> String {
        Platform::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
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

    /// What the export writes to [`PLATFORM_FILE`]: the name and a newline.
    pub fn file_contents(self) -> String {
        let mut s = String::from(self.name());
        s.push('\n');
        s
    }

    /// Reads [`PLATFORM_FILE`]'s bytes: the name, surrounding ASCII whitespace ignored (a file
    /// edited by hand may lack the newline or have a CRLF).
    pub fn parse_file(bytes: &[u8]) -> Result<Platform, UnknownPlatform> {
        let text = core::str::from_utf8(bytes.trim_ascii())
            .map_err(|_| UnknownPlatform { name: String::from_utf8_lossy(bytes.trim_ascii()).into_owned() })?;
        text.parse()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a platform; the message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPlatform {
    /// The name as given.
    pub name: String,
}

impl fmt::Display for UnknownPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown platform '{}'; known: {}", self.name, Platform::known_names())
    }
}

impl core::error::Error for UnknownPlatform {}

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPlatform { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn names_round_trip_and_are_one_word() {
        for p in Platform::ALL {
            assert_eq!(p.name().parse::<Platform>(), Ok(p));
            assert_eq!(Platform::parse_file(p.file_contents().as_bytes()), Ok(p));
            assert!(!p.name().is_empty() && p.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        let clouds: Vec<_> = Platform::ALL.into_iter().filter(|p| p.is_cloud()).collect();
        assert_eq!(clouds, [Platform::Aws, Platform::Gce, Platform::Azure]);
    }

    #[test]
    fn unknown_lists_the_known() {
        let e = "vmware".parse::<Platform>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown platform 'vmware'; known: metal, qemu, virtualbox, vagrant-libvirt, vagrant-virtualbox, aws, gce, \
             azure"
        );
        assert_eq!(Platform::parse_list("qemu, metal,qemu"), Ok(vec![Platform::Qemu, Platform::Metal]));
        assert_eq!(Platform::parse_list("metal,").unwrap_err().name, "");
        assert_eq!(Platform::parse_list("aws,gce,azure").unwrap().len(), 3);
    }

    #[test]
    fn the_file_is_read_forgivingly_but_not_guessed() {
        assert_eq!(Platform::parse_file(b"  azure\r\n"), Ok(Platform::Azure));
        assert_eq!(Platform::parse_file(b"AWS\n").unwrap_err().name, "AWS");
        assert_eq!(Platform::parse_file(b"").unwrap_err().name, "");
        assert_eq!(Platform::parse_file(b"aws\ngce\n").unwrap_err().name, "aws\ngce");
        assert_eq!(Platform::parse_file(b"\xffaws").unwrap_err().name, "\u{fffd}aws");
    }
}
