//! `berth-devd`: the devices of a Berth host, as a `Type=notify` unit (`berth-devd.service`,
//! ordered before `sysinit.target`).
//!
//! 1. Coldplug: the root's `/usr/lib/modules/<kver>/modules.alias` against every `modalias`
//!    in sysfs, loading each match with its `modules.dep` closure, until a round
//!    loads nothing new; `/dev/disk/by-partuuid` and `/dev/disk/by-label` links for the block
//!    devices present; the input devices with a power key opened. Then `READY=1`.
//! 2. Then, from the kernel's uevents (the socket is opened before coldplug, so nothing that
//!    appears meanwhile is missed): the modules of each added device, the links of each added,
//!    changed or removed block device, and power keys that appear.
//! 3. A press of `KEY_POWER` (the ACPI power button: a hypervisor's or cloud's "shut down")
//!    asks PID 1 to power off in order: SIGUSR2, which berth-init treats as `poweroff`.
//!
//! It logs a line for each module loaded (and for which device), each link and each power key.
//! Errors are logged and the device skipped; it never panics.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_devices::coldplug::{coldplug, load_alias};
use berth_devices::input::{EVENT_BYTES, is_power_press, open_power_key};
use berth_devices::links::{Links, Names, fs_label, partuuid, read_head};
use berth_devices::modules::{Loader, ModuleDb};
use berth_devices::uevent::Uevent;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, setsockopt, socket, sockopt,
};

const USAGE: &str = "\
usage: berth-devd    load the modules of the devices present and appearing, keep /dev/disk/by-partuuid
                     and /dev/disk/by-label, power off on the power key (a Type=notify service)
       berth-devd --help
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => std::process::exit(daemon()),
        Some("--help" | "-h") => print!("{USAGE}"),
        Some(other) => {
            eprint!("berth-devd: unknown argument {other}\n{USAGE}");
            std::process::exit(2);
        }
    }
}

fn log(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn daemon() -> i32 {
    let started = Instant::now();
    let kver = match nix::sys::utsname::uname() {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => {
            log(&format!("uname: {e}"));
            return 1;
        }
    };
    let dir = Path::new("/usr/lib/modules").join(&kver);
    let db = ModuleDb::open(&dir).unwrap_or_else(|e| {
        log(&format!("no modules to load: {e}"));
        ModuleDb::default()
    });
    // Before coldplug, so that a device a module reveals meanwhile is announced to us.
    let uevents = match uevent_socket() {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!("no hotplug: the uevent socket: {e}"));
            None
        }
    };
    let mut loader = Loader::new(&db);
    let s = coldplug(&mut loader, Path::new("/sys"), &mut |l: &str| log(l));
    let ms = started.elapsed().as_millis();
    log(&format!(
        "coldplug: {} devices, {} aliases of kernel {kver}: {} modules loaded, {} failed, {} scans ({ms} ms)",
        s.devices,
        db.aliases().len(),
        s.loaded,
        s.failed,
        s.rounds
    ));

    let mut links = Links::new(Path::new("/dev/disk"));
    for (devname, sys) in block_devices() {
        block_added(&mut links, &devname, &sys);
    }
    let mut keys = PowerKeys::default();
    if let Ok(dir) = std::fs::read_dir("/dev/input") {
        let mut nodes: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
            .map(|e| e.path())
            .collect();
        nodes.sort();
        for n in nodes {
            keys.open(&n);
        }
    }
    if keys.files.is_empty() {
        log("no power key yet");
    }
    notify(&format!("READY=1\nSTATUS=coldplug: {} modules loaded; {} power keys\n", s.loaded, keys.files.len()));

    let Some(sock) = uevents else {
        // Nothing more to do without uevents but watch the power keys.
        loop {
            keys.wait(None);
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !keys.wait(Some(&sock)) {
            continue;
        }
        let (n, from) = match recvfrom::<NetlinkAddr>(sock.as_raw_fd(), &mut buf) {
            Ok(r) => r,
            Err(nix::errno::Errno::ENOBUFS) => {
                // Events were lost (a burst larger than the buffer): look at everything again.
                log("uevents lost (ENOBUFS): scanning the devices again");
                coldplug(&mut loader, Path::new("/sys"), &mut |l: &str| log(l));
                for (devname, sys) in block_devices() {
                    block_added(&mut links, &devname, &sys);
                }
                continue;
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => {
                log(&format!("reading uevents: {e}"));
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        // Only the kernel (port 0) speaks on this group; anything else is ignored.
        if from.is_none_or(|a| a.pid() != 0) {
            continue;
        }
        let Some(ev) = Uevent::parse(&buf[..n]) else { continue };
        handle(&ev, &mut loader, &mut links, &mut keys);
    }
}

fn handle(ev: &Uevent, loader: &mut Loader<'_>, links: &mut Links, keys: &mut PowerKeys) {
    let action = ev.action.as_str();
    if action == "add"
        && let Some(alias) = ev.get("MODALIAS")
    {
        load_alias(loader, alias, ev.devpath.trim_start_matches("/devices/"), &mut |l: &str| log(l));
    }
    let Some(devname) = ev.get("DEVNAME") else { return };
    match (ev.get("SUBSYSTEM"), action) {
        (Some("block"), "add" | "change") => {
            block_added(links, devname, &Path::new("/sys").join(ev.devpath.trim_start_matches('/')));
        }
        (Some("block"), "remove") => {
            for l in links.remove(devname) {
                log(&l);
            }
        }
        (Some("input"), "add") if devname.starts_with("input/event") => keys.open(&Path::new("/dev").join(devname)),
        (Some("input"), "remove") => keys.close(&Path::new("/dev").join(devname)),
        _ => {}
    }
}

/// `(devname, sysfs directory)` of every block device.
fn block_devices() -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/block") else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let sys = std::fs::canonicalize(e.path()).ok()?;
            let vars = Uevent::file_vars(&std::fs::read_to_string(sys.join("uevent")).ok()?);
            Some((vars.get("DEVNAME")?.clone(), sys))
        })
        .collect();
    out.sort();
    out
}

/// The links of the block device `devname` (sysfs directory `sys`).
fn block_added(links: &mut Links, devname: &str, sys: &Path) {
    // Devices without a medium or of no interest for names.
    if ["loop", "ram", "zram", "sr"].iter().any(|p| devname.starts_with(p)) && !sys.join("partition").exists() {
        return;
    }
    let vars: BTreeMap<String, String> =
        std::fs::read_to_string(sys.join("uevent")).map(|t| Uevent::file_vars(&t)).unwrap_or_default();
    let node = Path::new("/dev").join(devname);
    let mut names = Names::default();
    if let Some(partn) = vars.get("PARTN").and_then(|p| p.parse::<u32>().ok()) {
        let disk_sys = sys.parent().unwrap_or(sys);
        let disk = std::fs::read_to_string(disk_sys.join("uevent"))
            .ok()
            .and_then(|t| Uevent::file_vars(&t).get("DEVNAME").cloned());
        if let Some(disk) = disk {
            match partuuid(&Path::new("/dev").join(&disk), disk_sys, partn) {
                Ok(u) => names.partuuid = u,
                Err(e) => log(&format!("{devname}: no PARTUUID: {e}")),
            }
        }
    }
    if std::fs::read_to_string(sys.join("size")).is_ok_and(|s| s.trim() != "0") {
        match read_head(&node) {
            Ok(head) => names.label = fs_label(&head),
            Err(e) => log(&format!("{devname}: no label: {e}")),
        }
    }
    for l in links.add(devname, &names) {
        log(&l);
    }
}

/// The open input devices that have a power key.
#[derive(Default)]
struct PowerKeys {
    files: Vec<(PathBuf, std::fs::File)>,
}

impl PowerKeys {
    fn open(&mut self, node: &Path) {
        if self.files.iter().any(|(p, _)| p == node) {
            return;
        }
        match open_power_key(node) {
            Ok(Some((f, name))) => {
                log(&format!("power key: {} ({name}); a press powers off", node.display()));
                self.files.push((node.to_path_buf(), f));
            }
            Ok(None) => {}
            Err(e) => log(&format!("{}: {e}", node.display())),
        }
    }

    fn close(&mut self, node: &Path) {
        self.files.retain(|(p, _)| p != node);
    }

    /// Waits for the uevent socket (if any) or a power key; handles the power keys' events.
    /// Returns whether the socket is readable.
    fn wait(&mut self, sock: Option<&OwnedFd>) -> bool {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        if let Some(s) = sock {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        let first_key = fds.len();
        for (_, f) in &self.files {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e != nix::errno::Errno::EINTR {
                log(&format!("poll: {e}"));
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            return false;
        }
        let ready: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        let mut gone = Vec::new();
        for (i, (path, file)) in self.files.iter_mut().enumerate() {
            let r = ready[first_key + i];
            if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                gone.push(path.clone());
            } else if r.contains(PollFlags::POLLIN) {
                read_keys(path, file);
            }
        }
        for p in gone {
            self.close(&p);
        }
        sock.is_some() && ready.first().is_some_and(|r| r.contains(PollFlags::POLLIN))
    }
}

/// Reads the pending events of a power-key device; a press asks PID 1 to power off.
fn read_keys(path: &Path, file: &mut std::fs::File) {
    let mut buf = [0u8; EVENT_BYTES * 16];
    let n = match file.read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(e) => {
            log(&format!("{}: {e}", path.display()));
            return;
        }
    };
    for ev in buf[..n].chunks_exact(EVENT_BYTES) {
        let Ok(ev) = <&[u8; EVENT_BYTES]>::try_from(ev) else { continue };
        if is_power_press(ev) {
            log(&format!("power key pressed on {}: asking PID 1 to power off (SIGUSR2)", path.display()));
            if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), nix::sys::signal::Signal::SIGUSR2) {
                log(&format!("signalling PID 1: {e}"));
            }
        }
    }
}

/// The kernel's uevent multicast group 1, with a receive buffer large enough for a burst.
fn uevent_socket() -> nix::Result<OwnedFd> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkKObjectUEvent)?;
    // RcvBufForce needs CAP_NET_ADMIN (we are root); fall back to what the limit allows.
    if setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20)).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
    }
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
    Ok(fd)
}

/// `READY=1`/`STATUS=` to `$NOTIFY_SOCKET` (sd_notify), if set.
fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(message.as_bytes(), &path));
    if let Err(e) = sent {
        log(&format!("sd_notify to {}: {e}", Path::new(&path).display()));
    }
}
