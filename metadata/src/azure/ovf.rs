//! The provisioning CD Azure attaches to a new VM: `ovf-env.xml` (the `HostName`, the admin
//! `UserName`, `CustomData` in base64 and the SSH keys asked for at creation) and, on newer
//! hosts, `CustomData.bin` (the custom data as given). The CD is a UDF (older hosts: ISO 9660)
//! volume on an `sr` drive; it is mounted read-only, `nosuid,nodev,noexec`, on a directory under
//! `/run/berth/metadata` that only root can reach, read, and unmounted.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::xml;

/// The provisioning document on the CD.
pub const OVF_ENV: &str = "ovf-env.xml";
/// The custom data as given, on newer hosts.
pub const CUSTOM_DATA_BIN: &str = "CustomData.bin";

/// Most of either file read (Azure's custom data is at most 64 KiB, 88 KiB in base64).
const MAX_FILE: u64 = 1 << 20;

/// What the CD says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provisioning {
    /// `HostName`: the computer name given at creation.
    pub hostname: Option<String>,
    /// `UserName`: the admin user.
    pub user: Option<String>,
    /// The custom data (the provisioning document), decoded.
    pub custom_data: Option<Vec<u8>>,
    /// `SSH/PublicKeys/PublicKey/Value`: keys given for the admin user.
    pub keys: Vec<String>,
}

/// Parses `ovf-env.xml`.
pub fn parse_ovf_env(text: &str) -> Result<Provisioning, String> {
    let root = xml::parse(text)?;
    if root.name != "Environment" {
        return Err(format!("the root element is <{}>, not <Environment>", root.name));
    }
    let Some(set) = root.find("LinuxProvisioningConfigurationSet") else {
        return Err("no LinuxProvisioningConfigurationSet".into());
    };
    let text = |name: &str| set.text_at(&[name]).map(str::to_string);
    let custom_data = match text("CustomData") {
        Some(b64) => {
            // The element may be wrapped over lines.
            let compact: String = b64.split_whitespace().collect();
            Some(STANDARD.decode(compact.as_bytes()).map_err(|e| format!("CustomData is not base64: {e}"))?)
        }
        None => None,
    };
    let keys = set
        .at(&["SSH", "PublicKeys"])
        .map(|pk| {
            pk.children_named("PublicKey")
                .filter_map(|k| k.text_at(&["Value"]))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect()
        })
        .unwrap_or_default();
    Ok(Provisioning { hostname: text("HostName"), user: text("UserName"), custom_data, keys })
}

/// What a mounted CD (or any directory with its files) says; `None` without `ovf-env.xml`.
pub fn read_dir(dir: &Path) -> Result<Option<Provisioning>, String> {
    let Some(env) = read_file(&dir.join(OVF_ENV))? else { return Ok(None) };
    let env = String::from_utf8(env).map_err(|_| format!("{OVF_ENV}: not UTF-8"))?;
    let mut p = parse_ovf_env(&env).map_err(|e| format!("{OVF_ENV}: {e}"))?;
    if p.custom_data.is_none() {
        p.custom_data = read_file(&dir.join(CUSTOM_DATA_BIN))?;
    }
    if p.custom_data.as_ref().is_some_and(Vec::is_empty) {
        p.custom_data = None;
    }
    Ok(Some(p))
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut data = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut data).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
    }
    Ok(Some(data))
}

/// Where the provisioning CD is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdSource {
    /// The machine's CD drives (`sys_block/sr*`, as `dev/sr*`), mounted under `mount_base`.
    Probe {
        /// `/sys/block`.
        sys_block: PathBuf,
        /// `/dev`.
        dev: PathBuf,
        /// `/run/berth/metadata`: the mount point is made in it (0700).
        mount_base: PathBuf,
    },
    /// A directory with the CD's files (tests).
    Dir(PathBuf),
    /// No CD is looked for.
    None,
}

impl Default for CdSource {
    fn default() -> Self {
        CdSource::Probe {
            sys_block: PathBuf::from("/sys/block"),
            dev: PathBuf::from("/dev"),
            mount_base: PathBuf::from("/run/berth/metadata"),
        }
    }
}

impl CdSource {
    /// What the CD says; `Ok(None)` without a CD (no drive, no medium, no `ovf-env.xml`), which
    /// is not an error: a VM made from a specialised image has none.
    pub fn read(&self, log: &dyn Fn(&str)) -> Result<Option<Provisioning>, String> {
        match self {
            CdSource::None => Ok(None),
            CdSource::Dir(dir) => read_dir(dir),
            CdSource::Probe { sys_block, dev, mount_base } => probe(sys_block, dev, mount_base, log),
        }
    }
}

fn probe(sys_block: &Path, dev: &Path, mount_base: &Path, log: &dyn Fn(&str)) -> Result<Option<Provisioning>, String> {
    let mut drives: Vec<String> = match std::fs::read_dir(sys_block) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.len() > 2 && n.starts_with("sr") && n[2..].bytes().all(|b| b.is_ascii_digit()))
            .collect(),
        Err(e) => return Err(format!("{}: {e}", sys_block.display())),
    };
    drives.sort();
    if drives.is_empty() {
        log("azure: no CD drive (/sys/block/sr*): no provisioning CD");
        return Ok(None);
    }
    // Only root may reach the mount point: the CD's files are the instance's secrets.
    crate::atomic::private_dir(mount_base).map_err(|e| format!("{}: {e}", mount_base.display()))?;
    for name in drives {
        let device = dev.join(&name);
        let target = mount_base.join(format!("cd-{name}"));
        match std::fs::create_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("{}: {e}", target.display())),
        }
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mut errors = Vec::new();
        let mut mounted = false;
        for fstype in ["udf", "iso9660"] {
            match mount(Some(&device), &target, Some(fstype), flags, None::<&str>) {
                Ok(()) => {
                    mounted = true;
                    break;
                }
                Err(Errno::ENOMEDIUM) => {
                    errors.push("no medium".to_string());
                    break;
                }
                Err(e) => errors.push(format!("{fstype}: {e}")),
            }
        }
        if !mounted {
            let _ = std::fs::remove_dir(&target);
            log(&format!("azure: {} not mounted ({}); not the provisioning CD", device.display(), errors.join(", ")));
            continue;
        }
        let read = read_dir(&target);
        if umount2(&target, MntFlags::empty()).is_err() {
            // Busy: detached, so that it goes when the last user does.
            let _ = umount2(&target, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&target);
        match read {
            Ok(Some(p)) => {
                log(&format!("azure: read {OVF_ENV} from the provisioning CD {}", device.display()));
                return Ok(Some(p));
            }
            Ok(None) => log(&format!("azure: {} has no {OVF_ENV}", device.display())),
            Err(e) => return Err(format!("the provisioning CD {}: {e}", device.display())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Azure writes (namespaces as the hosts send them; secrets left out).
    pub(crate) const OVF_ENV_SAMPLE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<ns0:Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns0="http://schemas.dmtf.org/ovf/environment/1" xmlns:ns1="http://schemas.microsoft.com/windowsazure" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">
  <ns1:ProvisioningSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:LinuxProvisioningConfigurationSet>
      <ns1:ConfigurationSetType>LinuxProvisioningConfiguration</ns1:ConfigurationSetType>
      <ns1:HostName>berth-vm</ns1:HostName>
      <ns1:UserName>azureuser</ns1:UserName>
      <ns1:DisableSshPasswordAuthentication>true</ns1:DisableSshPasswordAuthentication>
      <ns1:SSH>
        <ns1:PublicKeys>
          <ns1:PublicKey>
            <ns1:Fingerprint>6BE7A7C3C8A8F4B123CCA5D0C2F1BE4CA7B63ED7</ns1:Fingerprint>
            <ns1:Path>/home/azureuser/.ssh/authorized_keys</ns1:Path>
            <ns1:Value>ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrom the CD</ns1:Value>
          </ns1:PublicKey>
        </ns1:PublicKeys>
      </ns1:SSH>
      <ns1:CustomData>aG9zdG5hbWUgPSAiZnJvbS1jZCIK</ns1:CustomData>
    </ns1:LinuxProvisioningConfigurationSet>
  </ns1:ProvisioningSection>
  <ns1:PlatformSettingsSection>
    <ns1:Version>1.0</ns1:Version>
    <ns1:PlatformSettings><ns1:ProvisionGuestAgent>false</ns1:ProvisionGuestAgent></ns1:PlatformSettings>
  </ns1:PlatformSettingsSection>
</ns0:Environment>
"#;

    #[test]
    fn ovf_env_gives_the_hostname_user_custom_data_and_keys() {
        let p = parse_ovf_env(OVF_ENV_SAMPLE).unwrap();
        assert_eq!(
            p,
            Provisioning {
                hostname: Some("berth-vm".into()),
                user: Some("azureuser".into()),
                custom_data: Some(b"hostname = \"from-cd\"\n".to_vec()),
                keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrom the CD".into()],
            }
        );
        let bare = OVF_ENV_SAMPLE.replace("<ns1:CustomData>aG9zdG5hbWUgPSAiZnJvbS1jZCIK</ns1:CustomData>", "");
        assert_eq!(parse_ovf_env(&bare).unwrap().custom_data, None);
        let bad = OVF_ENV_SAMPLE.replace("aG9zdG5hbWUgPSAiZnJvbS1jZCIK", "%%%");
        assert!(parse_ovf_env(&bad).unwrap_err().starts_with("CustomData is not base64"));
        assert_eq!(parse_ovf_env("<Other/>").unwrap_err(), "the root element is <Other>, not <Environment>");
        assert!(parse_ovf_env("<Environment><x></Environment>").unwrap_err().contains("closes"));
    }

    #[test]
    fn a_directory_without_ovf_env_is_no_cd_and_custom_data_bin_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_dir(dir.path()), Ok(None));
        let bare = OVF_ENV_SAMPLE.replace("<ns1:CustomData>aG9zdG5hbWUgPSAiZnJvbS1jZCIK</ns1:CustomData>", "");
        std::fs::write(dir.path().join(OVF_ENV), bare).unwrap();
        std::fs::write(dir.path().join(CUSTOM_DATA_BIN), b"raw = 1\n").unwrap();
        assert_eq!(read_dir(dir.path()).unwrap().unwrap().custom_data.as_deref(), Some(&b"raw = 1\n"[..]));
        let none = tempfile::tempdir().unwrap();
        let probe = CdSource::Probe {
            sys_block: none.path().to_path_buf(),
            dev: none.path().to_path_buf(),
            mount_base: none.path().join("m"),
        };
        assert_eq!(probe.read(&|_| {}), Ok(None), "no sr drive: no CD, no error");
    }
}
