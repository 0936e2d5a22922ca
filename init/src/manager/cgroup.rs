//! cgroup v2 for units: PID 1 in `init.scope`, each service in `system.slice/<unit>` with the
//! slice's controllers enabled for it. A unit with `Delegate=` owns everything below its group:
//! the manager only reads it, kills it when the unit's KillMode says so, and removes what is
//! left empty after the unit stopped.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A unit's group could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("enabling {controllers} in {}: {source}", group.display())]
    Enable { group: PathBuf, controllers: String, source: std::io::Error },
    #[error("{}/pids.max = {value}: {source}", group.display())]
    PidsMax { group: PathBuf, value: String, source: std::io::Error },
}

pub const ROOT: &str = "/sys/fs/cgroup";
pub const SLICE: &str = "system.slice";

/// Creates `init.scope` (moving PID 1 there) and `system.slice` with every controller the root
/// hands down enabled for the units' groups. Returns a warning when something did not work.
pub fn init() -> Vec<String> {
    let mut warnings = Vec::new();
    let root = Path::new(ROOT);
    for dir in ["init.scope", SLICE] {
        if let Err(e) = mkdir(&root.join(dir)) {
            warnings.push(format!("cgroup {dir}: {e}"));
        }
    }
    if let Err(e) = std::fs::write(root.join("init.scope/cgroup.procs"), "1") {
        warnings.push(format!("moving PID 1 to init.scope: {e}"));
    }
    let slice = root.join(SLICE);
    let controllers = std::fs::read_to_string(slice.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<String> = controllers.split_whitespace().map(|c| format!("+{c}")).collect();
    if !enable.is_empty()
        && let Err(e) = std::fs::write(slice.join("cgroup.subtree_control"), enable.join(" "))
    {
        warnings.push(format!("enabling {} in {SLICE}: {e}", enable.join(" ")));
    }
    warnings
}

/// The group of `unit` (created when absent).
pub fn create(unit: &str) -> Result<PathBuf, CgroupError> {
    let path = path(unit);
    match mkdir(&path) {
        Ok(()) => Ok(path),
        Err(source) => Err(CgroupError::Create { path, source }),
    }
}

/// Where a `Delegate=` unit's own processes go, below its group (systemd's
/// `DelegateSubgroup=supervisor`): cgroup v2 lets a group hand domain controllers (memory, io)
/// to children only while it has no processes itself, so the service's group stays empty and
/// the service can create siblings of `supervisor` (containerd's containers) with every
/// controller.
pub const SUPERVISOR: &str = "supervisor";

/// Creates the supervisor group of a delegated unit and enables every controller of the
/// unit's group for its children. Returns the group its processes go to.
pub fn delegate(unit: &str) -> Result<PathBuf, CgroupError> {
    let group = path(unit);
    let supervisor = group.join(SUPERVISOR);
    if let Err(source) = mkdir(&supervisor) {
        return Err(CgroupError::Create { path: supervisor, source });
    }
    let controllers = std::fs::read_to_string(group.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<String> = controllers.split_whitespace().map(|c| format!("+{c}")).collect();
    if !enable.is_empty() {
        let controllers = enable.join(" ");
        if let Err(source) = std::fs::write(group.join("cgroup.subtree_control"), &controllers) {
            return Err(CgroupError::Enable { group, controllers, source });
        }
    }
    Ok(supervisor)
}

pub fn path(unit: &str) -> PathBuf {
    Path::new(ROOT).join(SLICE).join(unit)
}

/// The name shown to users (`/system.slice/<unit>`).
pub fn display(unit: &str) -> String {
    format!("/{SLICE}/{unit}")
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Every process in the group and below it.
pub fn processes(group: &Path) -> Vec<Pid> {
    let mut pids = Vec::new();
    collect(group, &mut pids, 0);
    pids
}

fn collect(group: &Path, pids: &mut Vec<Pid>, depth: usize) {
    if let Ok(text) = std::fs::read_to_string(group.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).map(Pid::from_raw));
    }
    if depth > 32 {
        return;
    }
    if let Ok(dir) = std::fs::read_dir(group) {
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&e.path(), pids, depth + 1);
            }
        }
    }
}

/// Whether any process is left in the group or below it (`cgroup.events`).
pub fn populated(group: &Path) -> bool {
    match std::fs::read_to_string(group.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l == "populated 1"),
        Err(_) => false,
    }
}

/// Sends `signal` to every process of the group and below (SIGKILL through `cgroup.kill`,
/// which also catches processes forking at that moment). Returns how many were signalled.
pub fn signal_all(group: &Path, signal: Signal) -> usize {
    let pids = processes(group);
    if signal == Signal::SIGKILL && std::fs::write(group.join("cgroup.kill"), "1").is_ok() {
        return pids.len();
    }
    for pid in &pids {
        let _ = kill(*pid, signal);
        // A stopped process would not act on SIGTERM.
        if signal != Signal::SIGKILL {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
    pids.len()
}

/// `pids.max` (`TasksMax=`).
pub fn set_pids_max(group: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(group.join("pids.max"), value).map_err(|source| CgroupError::PidsMax {
        group: group.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

pub fn memory_current(group: &Path) -> Option<u64> {
    std::fs::read_to_string(group.join("memory.current")).ok()?.trim().parse().ok()
}

pub fn tasks_current(group: &Path) -> Option<u64> {
    std::fs::read_to_string(group.join("pids.current")).ok()?.trim().parse().ok()
}

/// Removes the group and the (empty) groups below it, deepest first. Leftovers are harmless:
/// the next start of the unit reuses the group.
pub fn remove(group: &Path) {
    if let Ok(dir) = std::fs::read_dir(group) {
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(group);
}

/// The unit whose group `pid` is in (`0::/system.slice/<unit>[/...]` in /proc/PID/cgroup).
pub fn unit_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rest = path.strip_prefix('/')?.strip_prefix(SLICE)?.strip_prefix('/')?;
    Some(rest.split('/').next()?.to_string())
}
