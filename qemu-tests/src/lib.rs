//! Harness for booting real Berth disks in QEMU with OVMF, under TCG.
//!
//! The QEMU command line itself comes from `berth_builder::qemu`, the one place that knows it.
//! Each [`Machine`] owns a scratch directory with its own copy of the OVMF variable store, its
//! serial console log, QEMU's stderr, the unix sockets of its virtio-serial ports and, when asked,
//! a qcow2 overlay over the test's disk and a QMP socket ([`Machine::qmp`], [`Machine::device_add`],
//! [`Machine::system_powerdown`]). The disk hangs on the controller [`Options::disk_bus`] names
//! (virtio-blk, VirtualBox's virtio-scsi, NVMe). It waits for console markers and for QEMU's exit
//! with bounded timeouts, and kills its QEMU process when dropped, also when a test fails. Guest
//! networking, when a test adds it, is always `-netdev user,restrict=on` with forwards bound to
//! 127.0.0.1 only. A test can play a cloud's machine: its SMBIOS strings ([`Options::smbios`])
//! and a user network covering its metadata addresses ([`Options::user_subnet`]), answered by
//! the strict fakes of [`cloud`].

pub mod agent;
pub mod cloud;
pub mod fleetlock;
pub mod http;
pub mod moto;
pub mod oci;
pub mod timing;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_builder::qemu::{self, Accel, DiskFormat, Firmware, Network, QemuConfig, Serial, UserNet, VirtioPort};
pub use berth_builder::qemu::{DiskBus, Forward, GuestForward, GuestTarget, HOTPLUG_PORT_ID, Smbios, UserSubnet};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Qemu(#[from] qemu::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waited {secs} s for {marker:?} on the console; QEMU {state}; console so far:\n{console}")]
    Timeout { marker: String, secs: u64, state: String, console: String },
    #[error("waited {secs} s for QEMU to exit; it still runs; console so far:\n{console}")]
    StillRunning { secs: u64, console: String },
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
}

/// The test image of a production definition: the same text (so package lists, sizes and
/// units exist in one place, `images/`) plus `[debug] guest-agent = true`, the agent the tests
/// drive guests with; a relative `overlay` is made absolute against `base`, the production
/// file's directory, so that the text can be written anywhere.
pub fn with_guest_agent(production: &str, base: &Path) -> String {
    assert!(!production.contains("\n[debug]"), "the production definition has a [debug] table already");
    let mut out = String::new();
    for line in production.lines() {
        match line.strip_prefix("overlay = ") {
            Some(value) => {
                let rel: String = serde_json::from_str(value.trim()).expect("overlay = \"PATH\"");
                out.push_str(&format!("overlay = {:?}", base.join(rel).display().to_string()));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("\n[debug]\nguest-agent = true\n");
    out
}

/// `images/<name>.toml` of this workspace as a test image ([`with_guest_agent`]), written into
/// `dir`; the definition's path.
pub fn test_definition(name: &str, dir: &Path) -> PathBuf {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    let production = images.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&production).unwrap_or_else(|e| panic!("{}: {e}", production.display()));
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let def = dir.join(format!("{name}.toml"));
    std::fs::write(&def, with_guest_agent(&text, &images)).unwrap_or_else(|e| panic!("{}: {e}", def.display()));
    def
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// A running QEMU guest.
pub struct Machine {
    child: Child,
    /// To power the machine on again ([`Machine::restart`]).
    command: Command,
    console: PathBuf,
    /// The console of earlier power-ons (QEMU truncates the file when it starts).
    earlier: String,
    /// Each console line with the time it was first seen, since the first power-on.
    timeline: Vec<(Duration, String)>,
    /// How far into the current console file `timeline` has read, and a partial last line.
    seen: (u64, String),
    powered_on: Instant,
    stderr: PathBuf,
    overlay: Option<PathBuf>,
    ports: Vec<VirtioPort>,
    qmp: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// How to boot a disk.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    pub disk: &'a Path,
    /// `raw` or `qcow2`.
    pub format: &'a str,
    pub memory_mib: u32,
}

/// What a test may add to a [`Boot`]; the default adds nothing.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Boot a qcow2 overlay created in the machine's scratch directory over `Boot::disk`: the
    /// guest's writes go there and the test's disk stays as it was.
    pub overlay: bool,
    /// A network device on QEMU's user network with `restrict=on`. Implied by `forwards` and
    /// `guest_forwards`.
    pub network: bool,
    /// Host ports on 127.0.0.1 forwarded to the guest.
    pub forwards: Vec<Forward>,
    /// Guest addresses answered by the host (`guestfwd`).
    pub guest_forwards: Vec<GuestForward>,
    /// Names of virtio-serial ports (e.g. `org.berth.agent.0`); see [`Machine::serial_port`].
    pub serial_ports: Vec<String>,
    /// With `overlay`: the overlay's virtual size in bytes, when the guest should see a disk
    /// bigger than the image (as a resized cloud volume).
    pub overlay_size: Option<u64>,
    /// A QMP socket, for [`Machine::qmp`], [`Machine::send_keys`], [`Machine::device_add`] and
    /// [`Machine::system_powerdown`]. Implied by `hotplug_port`.
    pub qmp: bool,
    /// The guest cannot write its disk (a write-protected or failing disk).
    pub read_only: bool,
    /// vCPUs [default: 1, see `Machine::start_with`]; a benchmark may want the host's cores.
    pub cpus: Option<u32>,
    /// A first-boot provisioning document (TOML text), written to the scratch directory and
    /// handed to the guest through fw_cfg as `opt/org.berth/config` (`berth run --config`).
    pub provision: Option<String>,
    /// The controller of the boot disk [default: virtio-blk]; virtio-scsi is VirtualBox's, NVMe
    /// a cloud's (`berth run --platform`).
    pub disk_bus: DiskBus,
    /// Extra devices present from power-on, each a `-device` spec (e.g. `virtio-rng-pci`).
    pub devices: Vec<String>,
    /// An empty PCI Express root port with id [`HOTPLUG_PORT_ID`] (`hp0`) and a QMP socket, so
    /// that `machine.device_add("virtio-rng-pci,id=rng1,bus=hp0")` hot-adds a device.
    pub hotplug_port: bool,
    /// The user network's range instead of 10.0.2.0/24 (implies `network`): guest forwards to
    /// a cloud's fixed addresses must lie inside it ([`cloud`]).
    pub user_subnet: Option<UserSubnet>,
    /// SMBIOS structures the guest sees in `/sys/class/dmi/id` (a cloud's hypervisor strings).
    pub smbios: Vec<Smbios>,
}

impl Machine {
    /// Starts QEMU (q35, TCG, OVMF) on `boot.disk`, with the serial console captured to a file
    /// and no network device.
    pub fn start(boot: &Boot) -> Result<Machine, Error> {
        Machine::start_with(boot, &Options::default())
    }

    /// Starts QEMU as [`Machine::start`] does, with what `options` adds.
    pub fn start_with(boot: &Boot, options: &Options) -> Result<Machine, Error> {
        let firmware = Firmware::find()?;
        let format: DiskFormat = boot.format.parse()?;
        let dir = tempfile::Builder::new().prefix("berth-qemu-").tempdir().map_err(io(&std::env::temp_dir()))?;
        let vars = dir.path().join("vars.fd");
        firmware.copy_vars(&vars)?;
        let overlay = if options.overlay {
            let o = dir.path().join("disk.qcow2");
            qemu::create_overlay(boot.disk, format, &o)?;
            if let Some(size) = options.overlay_size {
                qemu::resize(&o, size)?;
            }
            Some(o)
        } else {
            None
        };
        let console = dir.path().join("console.log");
        let (disk, disk_format) = match &overlay {
            Some(o) => (o.as_path(), DiskFormat::Qcow2),
            None => (boot.disk, format),
        };

        let mut config = QemuConfig::new(&firmware, &vars, disk, disk_format);
        config.memory_mib = boot.memory_mib;
        config.disk_bus = options.disk_bus;
        config.devices = options.devices.clone();
        config.hotplug_port = options.hotplug_port;
        config.read_only = options.read_only;
        config.smbios = options.smbios.clone();
        // One vCPU: a single TCG thread per guest keeps boots steady on a 2-core host that is
        // also compiling (two vCPUs under load stalled a guest kernel for minutes in CI).
        config.cpus = options.cpus.unwrap_or(1);
        config.accel = Accel::Tcg;
        config.serial = Serial::File(console.clone());
        if options.network
            || !options.forwards.is_empty()
            || !options.guest_forwards.is_empty()
            || options.user_subnet.is_some()
        {
            config.network = Network::User(UserNet {
                restrict: true,
                forwards: options.forwards.clone(),
                guest_forwards: options.guest_forwards.clone(),
            });
            config.user_subnet = options.user_subnet;
        }
        // Sockets by index: a unix socket path is limited to 108 bytes, port names are not.
        config.virtio_ports = (options.serial_ports.iter().enumerate())
            .map(|(i, name)| VirtioPort { name: name.clone(), socket: dir.path().join(format!("port{i}.sock")) })
            .collect();
        let qmp = (options.qmp || options.hotplug_port).then(|| dir.path().join("qmp.sock"));
        config.qmp_sockets = qmp.iter().cloned().collect();
        if let Some(text) = &options.provision {
            let file = dir.path().join("provision.toml");
            std::fs::write(&file, text).map_err(io(&file))?;
            config.fw_cfg.push((qemu::PROVISION_FW_CFG.to_string(), file));
        }

        let stderr = dir.path().join("qemu.stderr");
        let command = config.command();
        let child = spawn(&command, &stderr)?;
        Ok(Machine {
            child,
            command,
            console,
            earlier: String::new(),
            timeline: Vec::new(),
            seen: (0, String::new()),
            powered_on: Instant::now(),
            stderr,
            overlay,
            ports: config.virtio_ports,
            qmp,
            dir,
        })
    }

    /// Powers the machine on again after QEMU exited (or kills it first: a power cycle), with
    /// the same disk, variables and sockets. The console keeps what the earlier runs printed.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.record();
        self.earlier.push_str(&read_lossy(&self.console));
        // QEMU may append to or truncate an existing file; a fresh one is the same either way.
        let _ = std::fs::remove_file(&self.console);
        self.seen = (0, String::new());
        self.child = spawn(&self.command, &self.stderr)?;
        Ok(())
    }

    /// The serial console so far, from the first power-on (lossy UTF-8).
    pub fn console(&self) -> String {
        format!("{}{}", self.earlier, read_lossy(&self.console))
    }

    /// Each console line seen so far with when the harness first saw it (since the first
    /// power-on; precise to the 50 ms polling of the `wait_*` methods).
    pub fn timeline(&mut self) -> Vec<(Duration, String)> {
        self.record();
        self.timeline.clone()
    }

    /// Reads the console lines that arrived since the last call into the timeline.
    fn record(&mut self) {
        let now = self.powered_on.elapsed();
        let Ok(mut f) = std::fs::File::open(&self.console) else { return };
        if f.seek(std::io::SeekFrom::Start(self.seen.0)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return;
        }
        self.seen.0 += bytes.len() as u64;
        self.seen.1.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(i) = self.seen.1.find('\n') {
            let line: String = self.seen.1.drain(..=i).collect();
            self.timeline.push((now, line.trim_end().to_string()));
        }
    }

    /// What QEMU wrote on its stderr so far.
    pub fn qemu_stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The machine's scratch directory (removed when the machine is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The qcow2 overlay the guest writes to, with [`Options::overlay`].
    pub fn overlay(&self) -> Option<&Path> {
        self.overlay.as_deref()
    }

    /// The unix socket QEMU listens on for the virtio-serial port `name` (from
    /// [`Options::serial_ports`]).
    pub fn serial_port(&self, name: &str) -> Option<&Path> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.socket.as_path())
    }

    /// Waits until `marker` appears on the console, or fails after `timeout` (or when QEMU
    /// exits first) with the console so far.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, Error> {
        self.wait_for_count(marker, 1, timeout)
    }

    /// Waits until `marker` has appeared `count` times on the console (since the first
    /// power-on), as [`Machine::wait_for`] does.
    pub fn wait_for_count(&mut self, marker: &str, count: usize, timeout: Duration) -> Result<String, Error> {
        let start = Instant::now();
        loop {
            self.record();
            let text = self.console();
            if text.matches(marker).count() >= count {
                return Ok(text);
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() >= timeout {
                let state = match exited {
                    Some(s) => format!("exited ({s}); its stderr: {}", self.qemu_stderr().trim()),
                    None => "still running".into(),
                };
                let marker = if count == 1 { marker.into() } else { format!("{marker} (x{count})") };
                return Err(Error::Timeout { marker, secs: timeout.as_secs(), state, console: text });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit by itself (a guest poweroff, or `-no-reboot` and a reset), at most
    /// `timeout`; QEMU is left running when it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Error> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io(Path::new("qemu-system-x86_64")))? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(Error::StillRunning { secs: timeout.as_secs(), console: self.console() });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Presses keys together on the guest's keyboard (QMP `send-key`; QEMU key codes such as
    /// `ctrl`, `alt`, `delete`). Needs [`Options::qmp`].
    pub fn send_keys(&mut self, keys: &[&str]) -> Result<(), Error> {
        let keys: Vec<String> = keys.iter().map(|k| format!(r#"{{"type":"qcode","data":"{k}"}}"#)).collect();
        self.qmp(&format!(r#"{{"execute":"send-key","arguments":{{"keys":[{}]}}}}"#, keys.join(","))).map(drop)
    }

    /// Presses the ACPI power button (QMP `system_powerdown`, what `virsh shutdown` and a
    /// hypervisor's "shut down" do). Returns once QEMU has pressed it; the guest decides what
    /// follows: wait for it with [`Machine::wait_exit`]. Needs [`Options::qmp`].
    pub fn system_powerdown(&mut self) -> Result<(), Error> {
        self.qmp(r#"{"execute":"system_powerdown"}"#).map(drop)
    }

    /// Plugs a device into the running machine, `spec` written as for `-device` (e.g.
    /// `virtio-rng-pci,id=rng1,bus=hp0` with [`Options::hotplug_port`]). Returns once QEMU has
    /// added it; the guest sees it through PCIe hot-plug a moment later.
    pub fn device_add(&mut self, spec: &str) -> Result<(), Error> {
        // Through the human monitor, whose device_add parses `spec` exactly as `-device` does
        // (QMP's own device_add wants typed JSON values: `"chassis": 2`, not `"2"`). It answers
        // an error as text instead of a QMP error.
        let command = serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": { "command-line": format!("device_add {spec}") },
        });
        let answer = self.qmp(&command.to_string())?;
        match serde_json::from_str::<serde_json::Value>(&answer) {
            Ok(serde_json::Value::String(text)) if text.trim().is_empty() => Ok(()),
            Ok(serde_json::Value::String(text)) => {
                Err(Error::Qmp { command: format!("device_add {spec}"), message: text.trim().to_string() })
            }
            _ => Err(Error::Qmp {
                command: format!("device_add {spec}"),
                message: format!("unexpected answer {answer}"),
            }),
        }
    }

    /// Runs one QMP command (a JSON object such as `{"execute":"query-status"}`) on a fresh
    /// connection and returns the JSON text of its `return` value; a QMP error is an
    /// [`Error::Qmp`]. Events QEMU sends meanwhile are skipped. Needs [`Options::qmp`].
    pub fn qmp(&mut self, command: &str) -> Result<String, Error> {
        let fail = |message: String| Error::Qmp { command: command.to_string(), message };
        let path = self.qmp.as_deref().ok_or_else(|| fail("the machine was started without Options::qmp".into()))?;
        qemu::qmp_execute(path, command, Duration::from_secs(30)).map_err(|e| match e {
            qemu::Error::Qmp { message, .. } => fail(message),
            other => Error::Qemu(other),
        })
    }

    /// Kills QEMU (a power cut for the guest) and reaps it; nothing happens if it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts QEMU with its stderr appended to `stderr`.
fn spawn(command: &Command, stderr: &Path) -> Result<Child, Error> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(stderr).map_err(io(stderr))?;
    let mut cmd = Command::new(command.get_program());
    cmd.args(command.get_args()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    Ok(qemu::spawn(&mut cmd)?)
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The switch for suites too long for every CI run (each takes minutes of TCG boots): set
/// `BERTH_TEST_SLOW=1` to run them. Without it a slow test says on stderr that it was skipped and
/// how to run it, and returns; they are run by hand before an issue that touches them is resolved.
pub fn slow_enabled(test: &str) -> bool {
    let on = std::env::var_os("BERTH_TEST_SLOW").is_some_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED {test}: a slow suite; BERTH_TEST_SLOW=1 scripts/test runs it");
    }
    on
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a forward's host side.
pub fn free_local_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io(Path::new("127.0.0.1:0")))?;
    Ok(listener.local_addr().map_err(io(Path::new("127.0.0.1:0")))?.port())
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The QMP helpers against a real QEMU running only the firmware (the disk is blank, so no
    /// guest boots: a few seconds of TCG).
    #[test]
    fn qmp_helpers_drive_a_real_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("blank.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let boot = Boot { disk: &disk, format: "raw", memory_mib: 256 };
        let options = Options {
            disk_bus: DiskBus::Nvme,
            devices: vec!["virtio-rng-pci,id=rng0".into()],
            hotplug_port: true,
            ..Options::default()
        };
        let mut m = Machine::start_with(&boot, &options).unwrap();
        let type_of = |m: &mut Machine, id: &str| {
            m.qmp(&format!(
                r#"{{"execute":"qom-get","arguments":{{"path":"/machine/peripheral/{id}","property":"type"}}}}"#
            ))
        };
        // QEMU may still be creating its socket.
        let start = Instant::now();
        let status = loop {
            match m.qmp(r#"{"execute":"query-status"}"#) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{e}; stderr: {}", m.qemu_stderr()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        assert!(status.contains(r#""status":"running""#), "{status}");
        assert_eq!(type_of(&mut m, "rng0").unwrap(), r#""virtio-rng-pci""#);
        assert_eq!(type_of(&mut m, "hp0").unwrap(), r#""pcie-root-port""#);

        m.device_add("virtio-balloon-pci,id=balloon1,bus=hp0").unwrap();
        assert_eq!(type_of(&mut m, "balloon1").unwrap(), r#""virtio-balloon-pci""#);
        let e = m.device_add("no-such-device,id=x").unwrap_err().to_string();
        assert!(e.contains("device_add no-such-device,id=x") && e.contains("no-such-device"), "{e}");
        let e = m.qmp(r#"{"execute":"no-such-command"}"#).unwrap_err().to_string();
        assert!(e.contains("CommandNotFound"), "{e}");
        m.system_powerdown().unwrap();

        let disks = m.qmp(r#"{"execute":"query-block"}"#).unwrap();
        assert!(disks.contains(r#""device":"disk0""#), "{disks}");
        m.kill();

        // Without QMP the helpers say what is missing.
        let mut m = Machine::start_with(&boot, &Options::default()).unwrap();
        let e = m.system_powerdown().unwrap_err().to_string();
        assert!(e.contains("without Options::qmp"), "{e}");
    }
}
