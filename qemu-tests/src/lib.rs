//! Harness for booting real Berth disks in QEMU with OVMF, under TCG.
//!
//! Each [`Machine`] owns a scratch directory with its own copy of the OVMF variable store and
//! its serial console log, waits for console markers with bounded timeouts, and kills its QEMU
//! process when dropped, also when a test fails. Guest networking, when a test adds it, must be
//! `-netdev user,restrict=on` with forwards bound to 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `ovmf` package: firmware code and the template of its variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} is missing: install the Debian package {package}")]
    Missing { what: String, package: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waited {secs} s for {marker:?} on the console; QEMU {state}; console so far:\n{console}")]
    Timeout { marker: String, secs: u64, state: String, console: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// A running QEMU guest.
pub struct Machine {
    child: Child,
    console: PathBuf,
    _dir: tempfile::TempDir,
}

/// How to boot a disk.
#[derive(Debug, Clone)]
pub struct Boot<'a> {
    pub disk: &'a Path,
    /// `raw` or `qcow2`.
    pub format: &'a str,
    pub memory_mib: u32,
}

impl Machine {
    /// Starts QEMU (q35, TCG, OVMF) on `boot.disk`, with the serial console captured to a file
    /// and no network device.
    pub fn start(boot: &Boot) -> Result<Machine, Error> {
        for (what, package) in [(OVMF_CODE, "ovmf"), (OVMF_VARS, "ovmf")] {
            if !Path::new(what).exists() {
                return Err(Error::Missing { what: what.into(), package });
            }
        }
        let dir = tempfile::Builder::new().prefix("berth-qemu-").tempdir().map_err(io(Path::new("/tmp")))?;
        let vars = dir.path().join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).map_err(io(&vars))?;
        let console = dir.path().join("console.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        // One vCPU: a single TCG thread per guest keeps boots steady on a 2-core host that is
        // also compiling (two vCPUs under load stalled a guest kernel for minutes in CI).
        cmd.args(["-machine", "q35", "-accel", "tcg", "-smp", "1", "-display", "none", "-no-user-config"])
            .args(["-m", &boot.memory_mib.to_string()])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format={}", boot.disk.display(), boot.format))
            .args(["-nic", "none", "-serial"])
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::Missing { what: "qemu-system-x86_64".into(), package: "qemu-system-x86" }
            }
            _ => io(Path::new("qemu-system-x86_64"))(e),
        })?;
        Ok(Machine { child, console, _dir: dir })
    }

    /// The serial console so far (lossy UTF-8).
    pub fn console(&self) -> String {
        std::fs::read(&self.console).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
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
                    Some(s) => format!("exited ({s})"),
                    None => "still running".into(),
                };
                return Err(Error::Timeout { marker: marker.into(), secs: timeout.as_secs(), state, console: text });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
