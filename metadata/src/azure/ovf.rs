//! The provisioning CD Azure attaches to a new VM: `ovf-env.xml` (the `HostName`, the admin
//! `UserName`, `CustomData` in base64 and the SSH keys asked for at creation) and, on newer
//! hosts, `CustomData.bin` (the custom data as given). The CD is a UDF (older hosts: ISO 9660)
//! volume on an `sr` drive; it is mounted read-only, `nosuid,nodev,noexec`, on a directory under
//! `/run/berth/metadata` that only root can reach, read, and unmounted.
//!
//! A Berth image has no `/sbin/modprobe`, so the kernel cannot load a filesystem `mount(2)` asks
//! for (`fs-udf`): the filesystems' modules ([`FS_MODULES`]) are loaded first with berth-devd's
//! loader (`berth_devices::modules`). The drive may appear a little after boot (its bus scanned
//! late, or berth-devd not yet at its uevent): without one, the drive's driver
//! ([`DRIVE_MODULE`]) is loaded and `/sys/block/sr*` polled for [`DRIVE_WAIT`], within the
//! fetch's deadline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use berth_devices::modules::{Loader, ModuleDb, Outcome};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::xml;

/// The provisioning document on the CD.
pub const OVF_ENV: &str = "ovf-env.xml";
/// The custom data as given, on newer hosts.
pub const CUSTOM_DATA_BIN: &str = "CustomData.bin";

/// Most of either file read (Azure's custom data is at most 64 KiB, 88 KiB in base64).
const MAX_FILE: u64 = 1 << 20;

/// The CD's filesystems as modules, in the order they are loaded (and mounts tried): UDF, then
/// ISO 9660 (older hosts). Either may be built in or loaded already.
pub const FS_MODULES: [&str; 2] = ["udf", "isofs"];

/// The CD drive's driver (its `modules.dep` closure brings `cdrom`). berth-devd loads it from the
/// drive's `modalias` (`scsi:t-0x05`); it is loaded here too when no drive is there yet, in case
/// the device is there and berth-devd has not got to it.
pub const DRIVE_MODULE: &str = "sr_mod";

/// The longest a missing CD drive is waited for (never past the fetch's deadline).
pub const DRIVE_WAIT: Duration = Duration::from_secs(5);

/// How often `/sys/block` is looked at while waiting.
const DRIVE_POLL: Duration = Duration::from_millis(100);

/// Where the running kernel's modules are (`<release>/modules.dep`), as berth-devd reads them.
pub const MODULES_BASE: &str = "/usr/lib/modules";

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
        /// [`crate::record::RECORD_DIR`]: the mount point is made in it (0700).
        mount_base: PathBuf,
        /// [`MODULES_BASE`]: the drive's and the filesystems' modules are loaded from its
        /// `<uname -r>` directory; `None`: no module is loaded (tests).
        modules: Option<PathBuf>,
        /// How long a missing drive is waited for ([`DRIVE_WAIT`]).
        wait: Duration,
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
            mount_base: PathBuf::from(crate::record::RECORD_DIR),
            modules: Some(PathBuf::from(MODULES_BASE)),
            wait: DRIVE_WAIT,
        }
    }
}

impl CdSource {
    /// What the CD says; `Ok(None)` without a CD (no drive, no medium, no `ovf-env.xml`), which
    /// is not an error: a VM made from a specialised image has none. A missing drive is waited
    /// for until `deadline` at the latest; `note` hears what the record's reader should know
    /// (no drive appeared), `log` the rest.
    pub fn read(
        &self,
        deadline: Instant,
        log: &dyn Fn(&str),
        note: &dyn Fn(String),
    ) -> Result<Option<Provisioning>, String> {
        match self {
            CdSource::None => Ok(None),
            CdSource::Dir(dir) => read_dir(dir),
            CdSource::Probe { sys_block, dev, mount_base, modules, wait } => {
                let db = modules.as_deref().and_then(|base| module_db(base, log));
                let mut loader = db.as_ref().map(Loader::new);
                let mut load = |name: &str| loader.as_mut().map_or(Outcome::AlreadyLoaded, |l| l.load(name));
                let until = deadline.min(Instant::now() + *wait);
                let drives = find_drives(sys_block, until, &mut load, log, note)?;
                mount_and_read(&drives, dev, mount_base, log)
            }
        }
    }
}

/// The running kernel's module tables, `None` (logged) when they cannot be read: the modules
/// then must be built in or loaded already.
fn module_db(base: &Path, log: &dyn Fn(&str)) -> Option<ModuleDb> {
    let release = match nix::sys::utsname::uname() {
        Ok(u) => u.release().to_owned(),
        Err(e) => {
            log(&format!("azure: uname: {e}; no module loaded for the CD"));
            return None;
        }
    };
    match ModuleDb::open(&base.join(release)) {
        Ok(db) => Some(db),
        Err(e) => {
            log(&format!("azure: {e}; no module loaded for the CD"));
            None
        }
    }
}

/// Loads each of `names` with its dependencies, logging what was done or failed (a module the
/// kernel has built in, or loaded already, is fine).
fn load_modules(load: &mut dyn FnMut(&str) -> Outcome, names: &[&str], log: &dyn Fn(&str)) {
    for &name in names {
        match load(name) {
            Outcome::Loaded(paths) => log(&format!("azure: loaded {name} ({})", paths.join(", "))),
            Outcome::AlreadyLoaded | Outcome::FailedBefore => {}
            Outcome::Unknown => log(&format!("azure: no module {name} (built in, or not in this kernel)")),
            Outcome::Failed(path, e) => log(&format!("azure: loading {path} for {name}: {e}")),
        }
    }
}

/// The `sr*` drives in `sys_block`, sorted.
fn cd_drives(sys_block: &Path) -> Result<Vec<String>, String> {
    let mut drives: Vec<String> = std::fs::read_dir(sys_block)
        .map_err(|e| format!("{}: {e}", sys_block.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() > 2 && n.starts_with("sr") && n[2..].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    drives.sort();
    Ok(drives)
}

/// The CD drives. Without one yet, the drive's driver is loaded and `sys_block` looked at again
/// until `until`; with one, the filesystems' modules are loaded, ready for the mount.
fn find_drives(
    sys_block: &Path,
    until: Instant,
    load: &mut dyn FnMut(&str) -> Outcome,
    log: &dyn Fn(&str),
    note: &dyn Fn(String),
) -> Result<Vec<String>, String> {
    let start = Instant::now();
    let mut drives = cd_drives(sys_block)?;
    if drives.is_empty() {
        load_modules(load, &[DRIVE_MODULE], log);
        loop {
            drives = cd_drives(sys_block)?;
            if !drives.is_empty() {
                log(&format!("azure: CD drive {} appeared after {} ms", drives[0], start.elapsed().as_millis()));
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                note(format!(
                    "no CD drive ({}/sr*) appeared within {:.1} s: no provisioning CD",
                    sys_block.display(),
                    start.elapsed().as_secs_f64()
                ));
                return Ok(drives);
            }
            std::thread::sleep(left.min(DRIVE_POLL));
        }
    }
    load_modules(load, &FS_MODULES, log);
    Ok(drives)
}

fn mount_and_read(
    drives: &[String],
    dev: &Path,
    mount_base: &Path,
    log: &dyn Fn(&str),
) -> Result<Option<Provisioning>, String> {
    if drives.is_empty() {
        return Ok(None);
    }
    // Only root may reach the mount point: the CD's files are the instance's secrets.
    crate::atomic::private_dir(mount_base).map_err(|e| format!("{}: {e}", mount_base.display()))?;
    for name in drives {
        let device = dev.join(name);
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
            modules: None,
            wait: Duration::ZERO,
        };
        let notes = std::cell::RefCell::new(Vec::new());
        let read = probe.read(Instant::now() + Duration::from_secs(5), &|_| {}, &|n| notes.borrow_mut().push(n));
        assert_eq!(read, Ok(None), "no sr drive: no CD, no error");
        assert_eq!(notes.borrow().len(), 1);
        assert!(notes.borrow()[0].starts_with("no CD drive ("), "{:?}", notes.borrow());
        assert!(!none.path().join("m").exists(), "no drive: no mount point made");
    }

    // Depmod's lines for the CD's modules as Fedora's kernel has them.
    const DEP: &str = "\
kernel/fs/udf/udf.ko.xz: kernel/lib/crc-itu-t.ko.xz
kernel/lib/crc-itu-t.ko.xz:
kernel/fs/isofs/isofs.ko.xz:
kernel/drivers/scsi/sr_mod.ko.xz: kernel/drivers/cdrom/cdrom.ko.xz
kernel/drivers/cdrom/cdrom.ko.xz:
";

    /// Runs [`find_drives`] on `sys` until `until` with a loader over [`DEP`] that records the
    /// paths it loads: the drives, the paths, the notes, how long it took.
    fn find(sys: &Path, until: Instant) -> (Vec<String>, Vec<String>, Vec<String>, Duration) {
        let db = ModuleDb::from_text(Path::new("/m"), DEP, "");
        let paths = std::cell::RefCell::new(Vec::new());
        let mut loader = Loader::with(&db, |p: &Path| {
            paths.borrow_mut().push(p.strip_prefix("/m").unwrap().to_string_lossy().into_owned());
            Ok(())
        });
        let notes = std::cell::RefCell::new(Vec::new());
        let start = Instant::now();
        let drives =
            find_drives(sys, until, &mut |name: &str| loader.load(name), &|_| {}, &|n| notes.borrow_mut().push(n))
                .unwrap();
        let took = start.elapsed();
        drop(loader);
        (drives, paths.into_inner(), notes.into_inner(), took)
    }

    #[test]
    fn with_a_drive_the_filesystems_are_loaded_udf_first_with_their_dependencies() {
        let sys = tempfile::tempdir().unwrap();
        for d in ["sr1", "loop0", "sr0", "sda", "srx"] {
            std::fs::create_dir(sys.path().join(d)).unwrap();
        }
        let (drives, paths, notes, took) = find(sys.path(), Instant::now() + Duration::from_secs(30));
        assert_eq!(drives, ["sr0", "sr1"]);
        assert_eq!(paths, ["kernel/lib/crc-itu-t.ko.xz", "kernel/fs/udf/udf.ko.xz", "kernel/fs/isofs/isofs.ko.xz"]);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(took < Duration::from_secs(2), "a drive present is not waited for: {took:?}");
    }

    #[test]
    fn a_missing_drive_loads_sr_mod_and_is_waited_for_until_the_bound_and_noted() {
        let sys = tempfile::tempdir().unwrap();
        let bound = Duration::from_millis(400);
        let (drives, paths, notes, took) = find(sys.path(), Instant::now() + bound);
        assert!(drives.is_empty());
        assert_eq!(paths, ["kernel/drivers/cdrom/cdrom.ko.xz", "kernel/drivers/scsi/sr_mod.ko.xz"], "no drive: no fs");
        assert!(took >= bound && took < bound + Duration::from_secs(1), "{took:?}");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with(&format!("no CD drive ({}/sr*) appeared within 0.", sys.path().display())));

        // A bound already passed: one look, no wait.
        let (drives, _, notes, took) = find(sys.path(), Instant::now() - Duration::from_secs(1));
        assert!(drives.is_empty() && notes.len() == 1);
        assert!(took < Duration::from_millis(300), "{took:?}");
    }

    #[test]
    fn a_drive_that_appears_while_waiting_is_found() {
        let sys = tempfile::tempdir().unwrap();
        let late = sys.path().join("sr0");
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::create_dir(late).unwrap();
        });
        let (drives, paths, notes, took) = find(sys.path(), Instant::now() + Duration::from_secs(10));
        maker.join().unwrap();
        assert_eq!(drives, ["sr0"]);
        assert_eq!(
            paths,
            [
                "kernel/drivers/cdrom/cdrom.ko.xz",
                "kernel/drivers/scsi/sr_mod.ko.xz",
                "kernel/lib/crc-itu-t.ko.xz",
                "kernel/fs/udf/udf.ko.xz",
                "kernel/fs/isofs/isofs.ko.xz",
            ]
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn the_wait_for_a_drive_ends_at_the_fetch_deadline() {
        let none = tempfile::tempdir().unwrap();
        let probe = CdSource::Probe {
            sys_block: none.path().to_path_buf(),
            dev: none.path().to_path_buf(),
            mount_base: none.path().join("m"),
            modules: None,
            wait: Duration::from_secs(30),
        };
        let start = Instant::now();
        let notes = std::cell::RefCell::new(Vec::new());
        let read = probe.read(start + Duration::from_millis(300), &|_| {}, &|n| notes.borrow_mut().push(n));
        assert_eq!(read, Ok(None));
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(notes.borrow().len(), 1, "{:?}", notes.borrow());
        // A sys dir that cannot be read is an error, not "no CD".
        let gone = CdSource::Probe {
            sys_block: none.path().join("nosuch"),
            dev: none.path().to_path_buf(),
            mount_base: none.path().join("m"),
            modules: None,
            wait: Duration::ZERO,
        };
        assert!(gone.read(start, &|_| {}, &|_| {}).unwrap_err().contains("nosuch"));
    }

    #[test]
    fn module_outcomes_are_logged_and_none_is_fatal() {
        let lines = std::cell::RefCell::new(Vec::new());
        let mut load = |name: &str| match name {
            "udf" => Outcome::Unknown,
            _ => Outcome::Failed("kernel/fs/isofs/isofs.ko.xz".into(), Errno::ENOEXEC),
        };
        load_modules(&mut load, &FS_MODULES, &|l| lines.borrow_mut().push(l.to_string()));
        assert_eq!(
            lines.into_inner(),
            [
                "azure: no module udf (built in, or not in this kernel)",
                "azure: loading kernel/fs/isofs/isofs.ko.xz for isofs: ENOEXEC: Exec format error",
            ]
        );
    }
}
