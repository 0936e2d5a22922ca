//! Harness for booting real Berth disks in QEMU with OVMF, under TCG.
//!
//! The QEMU command line itself comes from `berth_builder::qemu`, the one place that knows it.
//! Each [`Machine`] owns a scratch directory with its own copy of the OVMF variable store, its
//! serial console log, QEMU's stderr, the unix sockets of its virtio-serial ports and, when asked,
//! a qcow2 overlay over the test's disk. It waits for console markers and for QEMU's exit with
//! bounded timeouts, and kills its QEMU process when dropped, also when a test fails. Guest
//! networking, when a test adds it, is always `-netdev user,restrict=on` with forwards bound to
//! 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use berth_builder::qemu::{self, Accel, DiskFormat, Firmware, Network, QemuConfig, Serial, UserNet, VirtioPort};
pub use berth_builder::qemu::{Forward, GuestForward, GuestTarget};

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// A running QEMU guest.
pub struct Machine {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
    overlay: Option<PathBuf>,
    ports: Vec<VirtioPort>,
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
        // One vCPU: a single TCG thread per guest keeps boots steady on a 2-core host that is
        // also compiling (two vCPUs under load stalled a guest kernel for minutes in CI).
        config.cpus = 1;
        config.accel = Accel::Tcg;
        config.serial = Serial::File(console.clone());
        if options.network || !options.forwards.is_empty() || !options.guest_forwards.is_empty() {
            config.network = Network::User(UserNet {
                restrict: true,
                forwards: options.forwards.clone(),
                guest_forwards: options.guest_forwards.clone(),
            });
        }
        // Sockets by index: a unix socket path is limited to 108 bytes, port names are not.
        config.virtio_ports = (options.serial_ports.iter().enumerate())
            .map(|(i, name)| VirtioPort { name: name.clone(), socket: dir.path().join(format!("port{i}.sock")) })
            .collect();

        let stderr = dir.path().join("qemu.stderr");
        let stderr_file = std::fs::File::create(&stderr).map_err(io(&stderr))?;
        let mut cmd = config.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr_file);
        let child = qemu::spawn(&mut cmd)?;
        Ok(Machine { child, console, stderr, overlay, ports: config.virtio_ports, dir })
    }

    /// The serial console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        read_lossy(&self.console)
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
        let start = Instant::now();
        loop {
            let text = self.console();
            if text.contains(marker) {
                return Ok(text);
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() >= timeout {
                let state = match exited {
                    Some(s) => format!("exited ({s}); its stderr: {}", self.qemu_stderr().trim()),
                    None => "still running".into(),
                };
                return Err(Error::Timeout { marker: marker.into(), secs: timeout.as_secs(), state, console: text });
            }
            std::thread::sleep(Duration::from_millis(200));
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

    /// Kills QEMU (a power cut for the guest) and reaps it; nothing happens if it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
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
