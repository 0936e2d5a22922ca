//! Which platform this machine is (docs/design.md §8): the word the artifact put in
//! `berth/platform` on the ESP wins (it is what the image was exported for); without one, the
//! firmware's SMBIOS strings in `/sys/class/dmi/id` (the tests cloud-init's `ds-identify` makes);
//! else `metal`. One exception: when the SMBIOS names a cloud and the ESP word is not that
//! cloud (`berth build`'s own `metal` image, a `qemu` image uploaded to Azure, an `aws` image on
//! GCE), the cloud wins: only its metadata service can answer there, and on Azure a machine that
//! never reports ready fails its creation. [`Detected::mismatch`] says so, for the caller to log
//! loudly.
//!
//! PID 1 decides at boot and writes the word to [`PLATFORM_RUN_FILE`]; `berth-metadata` reads it
//! from there.

use std::fmt;
use std::path::Path;

pub use berth_slot::platform::Platform;

/// Where PID 1 leaves the platform it detected at boot: the word and a newline.
pub const PLATFORM_RUN_FILE: &str = "/run/berth/platform";

/// Where the kernel shows the SMBIOS strings.
pub const DMI_DIR: &str = "/sys/class/dmi/id";

/// Azure's chassis asset tag (plain Hyper-V lacks it).
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// What was detected and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The platform.
    pub platform: Platform,
    /// What decided it.
    pub how: How,
    /// Something the caller must log loudly: SMBIOS names a cloud other than the ESP word says,
    /// or the ESP word is not a platform (then SMBIOS decided).
    pub mismatch: Option<String>,
}

/// What decided the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The ESP's `berth/platform`.
    EspWord,
    /// The SMBIOS strings.
    Smbios,
    /// Neither said anything: `metal`.
    Default,
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            How::EspWord => "the ESP's berth/platform",
            How::Smbios => "SMBIOS (/sys/class/dmi/id)",
            How::Default => "neither the ESP nor SMBIOS named one: the default",
        })
    }
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.platform, self.how)
    }
}

/// The platform, from the ESP's word (`esp_word`: the file's contents, `None` without the file)
/// and the SMBIOS strings under `dmi_dir` (normally [`DMI_DIR`]).
pub fn detect(esp_word: Option<&str>, dmi_dir: &Path) -> Detected {
    let smbios = smbios_platform(dmi_dir);
    let mut mismatch = None;
    if let Some(word) = esp_word {
        match Platform::parse_file(word.as_bytes()) {
            Ok(platform) => {
                if let Some(found) = smbios.filter(|p| p.is_cloud() && *p != platform) {
                    let mismatch = format!(
                        "the ESP's berth/platform says {platform} but SMBIOS says this machine is on {found}; \
                         going by SMBIOS ({found}), whose metadata service is the one here \
                         (`berth export --platform {found}` makes this cloud's artifact)"
                    );
                    return Detected { platform: found, how: How::Smbios, mismatch: Some(mismatch) };
                }
                return Detected { platform, how: How::EspWord, mismatch };
            }
            Err(e) => mismatch = Some(format!("the ESP's berth/platform is not used: {e}")),
        }
    }
    match smbios {
        Some(platform) => Detected { platform, how: How::Smbios, mismatch },
        None => Detected { platform: Platform::Metal, how: How::Default, mismatch },
    }
}

/// The platform the SMBIOS strings under `dmi_dir` name, if any.
pub fn smbios_platform(dmi_dir: &Path) -> Option<Platform> {
    let read = |name: &str| {
        std::fs::read(dmi_dir.join(name))
            .map(|b| String::from_utf8_lossy(b.trim_ascii()).into_owned())
            .unwrap_or_default()
    };
    let starts_ec2 = |s: &str| s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2"));
    let (vendor, product) = (read("sys_vendor"), read("product_name"));
    if read("chassis_asset_tag") == AZURE_ASSET_TAG {
        Some(Platform::Azure)
    } else if product == "Google Compute Engine" || read("product_serial").starts_with("GoogleCloud-") {
        Some(Platform::Gce)
    } else if vendor == "Amazon EC2" || (starts_ec2(&read("product_uuid")) && starts_ec2(&read("product_serial"))) {
        Some(Platform::Aws)
    } else if product == "VirtualBox" {
        Some(Platform::Virtualbox)
    } else if vendor == "QEMU" {
        Some(Platform::Qemu)
    } else {
        None
    }
}

/// The platform PID 1 wrote to `run_file` at boot ([`PLATFORM_RUN_FILE`]), or `None` without
/// the file. A word that is not a platform is an error naming the file.
pub fn read_run_file(run_file: &Path) -> Result<Option<Platform>, String> {
    match std::fs::read(run_file) {
        Ok(bytes) => {
            // Only the first word: PID 1 may add how it decided after it.
            let first = bytes.split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty()).unwrap_or_default();
            Platform::parse_file(first).map(Some).map_err(|e| format!("{}: {e}", run_file.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", run_file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dmi(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in files {
            std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn smbios_names_each_cloud_and_hypervisor() {
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<Platform>);
        let cases: &[Case] = &[
            (&[("chassis_asset_tag", AZURE_ASSET_TAG), ("sys_vendor", "Microsoft Corporation")], Some(Platform::Azure)),
            (&[("sys_vendor", "Microsoft Corporation"), ("product_name", "Virtual Machine")], None),
            (&[("product_name", "Google Compute Engine"), ("sys_vendor", "Google")], Some(Platform::Gce)),
            (&[("product_serial", "GoogleCloud-5F0D3F"), ("sys_vendor", "QEMU")], Some(Platform::Gce)),
            (&[("sys_vendor", "Amazon EC2"), ("product_name", "m5.large")], Some(Platform::Aws)),
            (
                &[("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"), ("product_serial", "ec2e1916-9099")],
                Some(Platform::Aws),
            ),
            (&[("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"), ("sys_vendor", "Xen")], None),
            (&[("product_name", "VirtualBox"), ("sys_vendor", "innotek GmbH")], Some(Platform::Virtualbox)),
            (&[("sys_vendor", "QEMU"), ("product_name", "Standard PC (Q35 + ICH9, 2009)")], Some(Platform::Qemu)),
            (&[("sys_vendor", "Dell Inc.")], None),
            (&[], None),
        ];
        for (files, want) in cases {
            assert_eq!(smbios_platform(dmi(files).path()), *want, "{files:?}");
        }
        assert_eq!(smbios_platform(Path::new("/nonexistent/dmi")), None);
    }

    #[test]
    fn the_esp_word_wins_but_a_cloud_contradicting_it_wins_over_it_and_is_reported() {
        let gce = dmi(&[("product_name", "Google Compute Engine")]);
        let qemu = dmi(&[("sys_vendor", "QEMU")]);
        let none = dmi(&[]);

        let d = detect(Some("aws\n"), qemu.path());
        assert_eq!((d.platform, d.how, d.mismatch), (Platform::Aws, How::EspWord, None));
        let d = detect(Some("aws"), gce.path());
        assert_eq!((d.platform, d.how), (Platform::Gce, How::Smbios));
        assert_eq!(
            d.mismatch.as_deref(),
            Some(
                "the ESP's berth/platform says aws but SMBIOS says this machine is on gce; going by SMBIOS (gce), \
                 whose metadata service is the one here (`berth export --platform gce` makes this cloud's artifact)"
            )
        );
        let d = detect(Some("qemu"), gce.path());
        assert!(d.platform == Platform::Gce && d.mismatch.is_some(), "a hypervisor image on a cloud: {d:?}");
        let d = detect(Some("metal\n"), gce.path());
        assert!(d.platform == Platform::Gce && d.mismatch.is_some(), "berth build's own image on a cloud: {d:?}");
        // A hypervisor's SMBIOS does not override the word (vagrant-libvirt runs on QEMU).
        let d = detect(Some("vagrant-libvirt"), qemu.path());
        assert_eq!((d.platform, d.how, d.mismatch), (Platform::VagrantLibvirt, How::EspWord, None));
        assert_eq!(detect(Some("gce"), gce.path()).mismatch, None);

        let d = detect(None, gce.path());
        assert_eq!((d.platform, d.how, d.mismatch), (Platform::Gce, How::Smbios, None));
        let d = detect(None, none.path());
        assert_eq!((d.platform, d.how), (Platform::Metal, How::Default));
        assert_eq!(d.to_string(), "metal (from neither the ESP nor SMBIOS named one: the default)");

        let d = detect(Some("vmware"), qemu.path());
        assert_eq!((d.platform, d.how), (Platform::Qemu, How::Smbios));
        assert!(d.mismatch.unwrap().starts_with("the ESP's berth/platform is not used: unknown platform 'vmware'"));
    }

    #[test]
    fn the_run_file_holds_the_word() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("platform");
        assert_eq!(read_run_file(&file), Ok(None));
        std::fs::write(&file, "azure\n").unwrap();
        assert_eq!(read_run_file(&file), Ok(Some(Platform::Azure)));
        std::fs::write(&file, "gce smbios\n").unwrap();
        assert_eq!(read_run_file(&file), Ok(Some(Platform::Gce)));
        std::fs::write(&file, "cloud\n").unwrap();
        assert!(read_run_file(&file).unwrap_err().contains("unknown platform 'cloud'"));
    }
}
