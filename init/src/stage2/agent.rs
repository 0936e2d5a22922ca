//! Keeps `berth-guest-agent` running while the hypervisor offers its virtio-serial port (named
//! [`berth_guest_agent::PORT_NAME`]), in images that carry it: test images only (the
//! definition's `[debug] guest-agent = true`), since it is unauthenticated root access.

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
    /// Whether the image carries the agent (only test images do: `[debug] guest-agent` in the
    /// definition); looked up once, the root is read-only.
    installed: Option<bool>,
}

impl Agent {
    /// Starts the agent if the image carries it, its port exists and it is not running.
    pub fn tick(&mut self) {
        if self.stopped || self.pid.is_some() || self.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let program = berth_guest_agent::INSTALL_PATH;
        let installed = *self.installed.get_or_insert_with(|| {
            let there = Path::new(program).exists();
            if there {
                log::line(&format!(
                    "{program} is in this image (a test image): whoever reaches the virtio-serial port {} \
                     runs commands as root; each request is logged",
                    berth_guest_agent::PORT_NAME
                ));
            }
            there
        });
        // A production image: no agent, whatever ports the hypervisor offers, and nothing to say.
        if !installed {
            return;
        }
        let Some(port) = find_port() else { return };
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
