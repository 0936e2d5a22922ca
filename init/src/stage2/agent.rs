//! Keeps `berth-guest-agent` running while the hypervisor offers its virtio-serial port (named
//! [`berth_guest_agent::PORT_NAME`]). Until units exist (issue 5) init starts it itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::log;

/// Pause before starting the agent again after it ended.
const RESTART_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Agent {
    pid: Option<Pid>,
    /// Not started again before this.
    not_before: Option<Instant>,
    stopped: bool,
    announced_missing: bool,
}

impl Agent {
    /// Starts the agent if its port exists and it is not running.
    pub fn tick(&mut self) {
        if self.stopped || self.pid.is_some() || self.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(port) = find_port() else { return };
        let program = berth_guest_agent::INSTALL_PATH;
        if !Path::new(program).exists() {
            if !self.announced_missing {
                log::line(&format!("virtio-serial port {} present but {program} is not in the image", port.display()));
                self.announced_missing = true;
            }
            return;
        }
        match crate::child::command(program).arg(&port).stdin(Stdio::null()).spawn() {
            Ok(child) => {
                log::line(&format!("guest agent started on {} (pid {})", port.display(), child.id()));
                self.pid = Some(Pid::from_raw(child.id() as i32));
            }
            Err(e) => {
                log::line(&format!("starting {program}: {e}"));
                self.not_before = Some(Instant::now() + RESTART_DELAY);
            }
        }
    }

    /// A child ended; if it was the agent, start it again later.
    pub fn exited(&mut self, pid: Pid, status: &WaitStatus) {
        if self.pid == Some(pid) {
            self.pid = None;
            if !self.stopped {
                log::line(&format!("guest agent ended ({status:?}); starting it again in 1 s"));
                self.not_before = Some(Instant::now() + RESTART_DELAY);
            }
        }
    }

    /// No more restarts (shutdown).
    pub fn stop(&mut self) {
        self.stopped = true;
    }
}

/// `/dev/vportNpM` of the port named [`berth_guest_agent::PORT_NAME`] (no udev, so no
/// `/dev/virtio-ports` links: the names are in sysfs).
fn find_port() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.filter_map(|e| e.ok()).find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim() == berth_guest_agent::PORT_NAME).then(|| Path::new("/dev").join(e.file_name()))
    })
}
