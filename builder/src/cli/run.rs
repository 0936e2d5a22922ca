//! `berth run`: boot a disk image in QEMU, with its console on this terminal, in a file or on a
//! unix socket (`--headless`), and print the commands instead (`--dry-run`) as a script that runs.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use berth_builder::platform::Platform;
use berth_builder::qemu::{
    self, Accel, DiskBus, DiskFormat, Firmware, Forward, GuestForward, GuestTarget, LocalGuestForward, Network,
    QemuConfig, Serial, UserNet,
};

pub const EXAMPLES: &str = "\
Examples:
  berth run out/container-host.img
      Boot a built image. The guest writes to a temporary overlay: the image stays unchanged.
  berth run out/container-host.img -p 2222:22
      The same, and the guest's port 22 is reachable from this host at 127.0.0.1:2222.
  berth run out/container-host.img -p 2222:22 --config first-boot.toml
      Provision the machine on its first boot (hostname, users and SSH keys, files, units) from
      a TOML document handed over through QEMU's fw_cfg; see docs/provisioning.md.
  berth run out/container-host.img --persist --kvm --memory 4096
      Write to the image itself, with hardware virtualization and 4 GiB of memory.
  berth run out/container-host.img --console vm/console.log --monitor vm/mon.sock
      Headless: follow the console with `tail -f vm/console.log`; `socat - UNIX-CONNECT:vm/mon.sock`
      opens QEMU's monitor (`system_powerdown` presses the power button; so does Ctrl-C here).
  berth run out/container-host.img --restrict --guestfwd 10.0.2.100:80=127.0.0.1:8080
      Cut the guest off from every network but one: http://10.0.2.100/ in the guest is the
      server on this host's 127.0.0.1:8080 (a local release repository, a metadata server).
  berth run out/container-host.img --platform virtualbox
      Boot with VirtualBox's devices (virtio-scsi disk, virtio-net), as the OVA would be.
  berth run out/container-host.img --qemu-arg=-no-reboot -- -device virtio-rng-pci
      Pass options to QEMU as they are, after berth's own.
  berth run out/container-host.img --restrict --dry-run > run.sh && sh run.sh
      Print the commands (a temporary directory, the firmware variables, the overlay, QEMU) as a
      shell script that does what berth would do, instead of running them.";

/// Where the console goes when not on this terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Console {
    File(PathBuf),
    Socket(PathBuf),
}

fn parse_console(s: &str) -> Result<Console, String> {
    match s.strip_prefix("unix:") {
        Some("") => Err("unix: needs a socket path, e.g. unix:/tmp/console.sock".into()),
        Some(path) => Ok(Console::Socket(path.into())),
        None if s.is_empty() => Err("a file or unix:PATH".into()),
        None => Ok(Console::File(s.into())),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Disk image to boot, raw, qcow2 or VMDK (told apart by their first bytes; a VMDK, such as
    /// the disk inside an OVA, only through the overlay, not with --persist).
    disk: PathBuf,
    /// Let the guest write to DISK itself instead of to a temporary overlay.
    #[arg(long)]
    persist: bool,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(128..))]
    memory: u32,
    /// Number of virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Run on the host CPU through /dev/kvm (-accel kvm -cpu host) instead of emulating it (TCG).
    #[arg(long)]
    kvm: bool,
    /// Boot with the devices of the machine NAME's artifact is made for (`berth export
    /// --platform`); --help lists each platform's disk controller [default: qemu].
    #[arg(long, value_name = "NAME", long_help = platform_help())]
    platform: Option<Platform>,
    /// The boot disk's controller, whatever the platform: virtio-blk, virtio-scsi or nvme.
    #[arg(long, value_name = "BUS")]
    disk_bus: Option<DiskBus>,
    /// Forward TCP port HOST on 127.0.0.1 to port GUEST of the guest, e.g. 2222:22 (repeatable).
    #[arg(short = 'p', long = "forward", value_name = "HOST:GUEST")]
    forward: Vec<Forward>,
    /// Connections the guest opens to GUESTADDR:PORT (an unused address of QEMU's user network
    /// 10.0.2.0/24, e.g. 10.0.2.100) reach the TCP server on this host's 127.0.0.1:HOSTPORT, one
    /// relay (berth itself) per connection. Works with --restrict; the host side must be
    /// 127.0.0.1 or localhost (repeatable).
    #[arg(long, value_name = "GUESTADDR:PORT=127.0.0.1:HOSTPORT")]
    guestfwd: Vec<LocalGuestForward>,
    /// Cut the guest off: QEMU's user network with restrict=on, so no traffic leaves the host;
    /// forwards with -p and --guestfwd still work.
    #[arg(long)]
    restrict: bool,
    /// First-boot provisioning document (TOML: hostname, users and SSH keys, files, units,
    /// update settings) the guest reads from QEMU's fw_cfg as opt/org.berth/config. It is applied
    /// once: a disk booted before (with --persist) ignores it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No network device at all.
    #[arg(long, conflicts_with_all = ["restrict", "forward", "guestfwd"])]
    no_network: bool,
    /// Keep the console off this terminal: it goes to --console, else to console.log in the
    /// state directory. berth prints where it is, waits for QEMU, and on Ctrl-C (or SIGTERM,
    /// SIGHUP) presses the guest's ACPI power button and waits for it to power off; a second
    /// Ctrl-C ends QEMU at once.
    #[arg(long)]
    headless: bool,
    /// The console (first serial port) to FILE, created or truncated; follow it with
    ///   tail -f FILE
    /// or, with unix:PATH, to a unix socket QEMU listens on (what the guest prints while nobody
    /// is connected is lost); connect with
    ///   socat -,raw,echo=0 UNIX-CONNECT:PATH
    /// Implies --headless.
    #[arg(long, value_name = "FILE|unix:PATH", value_parser = parse_console, verbatim_doc_comment)]
    console: Option<Console>,
    /// A unix socket QEMU listens on for its human monitor. Connect with
    ///   socat - UNIX-CONNECT:PATH
    /// then type e.g. `system_powerdown` (the ACPI power button), `info status` or `quit`.
    #[arg(long, value_name = "PATH", verbatim_doc_comment)]
    monitor: Option<PathBuf>,
    /// A unix socket QEMU listens on for QMP, its JSON protocol for programs.
    #[arg(long, value_name = "PATH")]
    qmp: Option<PathBuf>,
    /// One more argument for QEMU, appended as it is after berth's own (repeatable; write
    /// --qemu-arg=-no-reboot for one that starts with '-'). Arguments after `--` are appended too.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    qemu_arg: Vec<OsString>,
    #[arg(last = true, value_name = "QEMU ARGS", hide = true)]
    qemu_args: Vec<OsString>,
    /// Keep the run's files (firmware variables, overlay, headless console) in DIR, created if
    /// needed and left there after QEMU exits; each run replaces them [default: a new temporary
    /// directory in TMPDIR, removed when QEMU exits].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// OVMF firmware code to use [default: found where distributions install it].
    #[arg(long, value_name = "FILE", requires = "ovmf_vars")]
    ovmf_code: Option<PathBuf>,
    /// OVMF variable store template matching --ovmf-code (each run gets its own copy).
    #[arg(long, value_name = "FILE", requires = "ovmf_code")]
    ovmf_vars: Option<PathBuf>,
    /// Print the QEMU command line on stderr before starting it.
    #[arg(short, long)]
    verbose: bool,
    /// Print what would run and exit: a shell script (sh, bash) that makes the state directory
    /// (without --state-dir a new one from mktemp, held in $dir), copies the firmware variables,
    /// creates the overlay, runs QEMU and removes the temporary directory, as berth would.
    #[arg(long)]
    dry_run: bool,
}

/// The --platform help: each platform with the disk controller it gets (names from
/// berth_builder::platform, their one home).
fn platform_help() -> String {
    let mut help = String::from(
        "Boot with the devices of the machine NAME's artifact is made for (`berth export --platform`), \
         so the same disk is tried on that platform's controller; the NIC is virtio-net on each. \
         --disk-bus overrides the disk's [default: qemu]\n",
    );
    for p in Platform::ALL {
        let bus = match DiskBus::for_platform(p) {
            DiskBus::VirtioBlk => "virtio-blk disk",
            DiskBus::VirtioScsi => "virtio-scsi disk (VirtualBox's VirtioSCSI controller; GCE's default)",
            DiskBus::Nvme => "NVMe disk",
        };
        help.push_str(&format!("\n  {:20}{bus}", p.name()));
    }
    help
}

/// The longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Stands for the state directory in a dry run without --state-dir: the script's `$dir`.
/// A control character no real path has.
const DIR_MARK: &str = "\u{1}dir";

/// An absolute form of a path the user gave (QEMU gets it, and a dry run's script may run
/// elsewhere); its directory must exist, and a socket's path must fit a sockaddr.
fn user_path(option: &str, path: &Path, socket: bool) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{option} {}", path.display()))?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        bail!("{option} {}: the directory {} does not exist", path.display(), parent.display());
    }
    if abs.is_dir() {
        bail!("{option} {}: is a directory", path.display());
    }
    if socket && abs.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "{option} {}: a unix socket path is at most {MAX_SOCKET_PATH} bytes, this one is {} as an absolute path",
            path.display(),
            abs.as_os_str().len()
        );
    }
    Ok(abs)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let format = DiskFormat::detect(&a.disk)?;
    if format == DiskFormat::Vmdk && a.persist {
        bail!(
            "--persist: {} is a VMDK, which QEMU boots only through an overlay; convert it to write to it \
             (qemu-img convert -O raw DISK.vmdk DISK.img)",
            a.disk.display()
        );
    }
    let firmware = match (&a.ovmf_code, &a.ovmf_vars) {
        (Some(code), Some(vars)) => Firmware::new(code, vars)?,
        _ => Firmware::find()?,
    };
    // Only a real start needs the device; a dry run shows the command line anywhere.
    if a.kvm && !a.dry_run && !Path::new("/dev/kvm").exists() {
        bail!(
            "--kvm: /dev/kvm does not exist, so this host offers no KVM (enable virtualization in the \
             host's firmware and load kvm_intel or kvm_amd); without --kvm the guest is emulated"
        );
    }

    // Everything the user named is checked before anything is made.
    let console = match &a.console {
        Some(Console::File(p)) => Some(Console::File(user_path("--console", p, false)?)),
        Some(Console::Socket(p)) => Some(Console::Socket(user_path("--console unix:", p, true)?)),
        None => None,
    };
    let monitor = a.monitor.as_deref().map(|p| user_path("--monitor", p, true)).transpose()?;
    let qmp = a.qmp.as_deref().map(|p| user_path("--qmp", p, true)).transpose()?;
    let config_file = match &a.config {
        // QEMU reads the file when it starts; an absolute path keeps the command line usable
        // from anywhere (and a missing file is reported here, not by QEMU).
        Some(file) => Some(
            std::fs::canonicalize(file)
                .with_context(|| format!("--config {}: cannot read the provisioning document", file.display()))?,
        ),
        None => None,
    };
    let relay = if a.guestfwd.is_empty() {
        None
    } else {
        Some(std::env::current_exe().context("--guestfwd: finding berth's own program, the relay")?)
    };
    let state_dir = a.state_dir.as_deref().map(|d| std::path::absolute(d).with_context(|| d.display().to_string()));
    let state_dir = state_dir.transpose()?;
    if let Some(d) = &state_dir
        && d.exists()
        && !d.is_dir()
    {
        bail!("--state-dir {}: not a directory", d.display());
    }
    let headless = a.headless || console.is_some();

    // The run's files: in --state-dir, else a temporary directory removed at the end (a dry
    // run makes none: its script makes one).
    let mut scratch = None;
    let state: PathBuf = match (&state_dir, a.dry_run) {
        (Some(d), _) => d.clone(),
        (None, true) => PathBuf::from(DIR_MARK),
        (None, false) => {
            let t = tempfile::Builder::new()
                .prefix("berth-run-")
                .tempdir()
                .context("creating a temporary directory for the run (set TMPDIR to choose where)")?;
            let path = t.path().to_path_buf();
            scratch = Some(t);
            path
        }
    };
    let vars = state.join("OVMF_VARS.fd");
    let overlay = (!a.persist).then(|| state.join("overlay.qcow2"));
    let console = match console {
        Some(c) => Some(c),
        None if headless => Some(Console::File(state.join("console.log"))),
        None => None,
    };
    // Headless, berth presses the power button on Ctrl-C through a QMP socket of its own.
    let control = (headless && !a.dry_run).then(|| state.join("berth-qmp.sock"));
    if let Some(c) = &control
        && c.as_os_str().len() > MAX_SOCKET_PATH
    {
        bail!("the state directory {} is too long a path for a unix socket in it: use --state-dir", state.display());
    }

    let (drive, drive_format) = match &overlay {
        Some(o) => (o.clone(), DiskFormat::Qcow2),
        None => (std::path::absolute(&a.disk).with_context(|| a.disk.display().to_string())?, format),
    };
    let mut config = QemuConfig::new(&firmware, &vars, drive, drive_format);
    config.memory_mib = a.memory;
    config.cpus = a.cpus;
    config.accel = if a.kvm { Accel::Kvm } else { Accel::Tcg };
    config.disk_bus = a.disk_bus.or(a.platform.map(DiskBus::for_platform)).unwrap_or_default();
    config.serial = match &console {
        None => Serial::Stdio,
        Some(Console::File(p)) => Serial::File(p.clone()),
        Some(Console::Socket(p)) => Serial::Socket(p.clone()),
    };
    config.network = if a.no_network {
        Network::None
    } else {
        let guest_forwards = a
            .guestfwd
            .iter()
            .map(|g| {
                // QEMU starts the command for each connection, splitting it as a shell would.
                let relay = qemu::shell_quote(relay.as_deref().unwrap_or(Path::new("berth")).as_os_str());
                GuestForward {
                    addr: g.addr,
                    port: g.port,
                    target: GuestTarget::Cmd(format!("{relay} {RELAY_COMMAND} {}", g.host_port)),
                }
            })
            .collect();
        Network::User(UserNet { restrict: a.restrict, forwards: a.forward.clone(), guest_forwards })
    };
    if let Some(file) = config_file {
        config.fw_cfg.push((qemu::PROVISION_FW_CFG.to_string(), file));
    }
    config.monitor_socket = monitor.clone();
    // berth's own QMP monitor comes after the user's: a QMP socket takes one client at a time.
    config.qmp_sockets = qmp.iter().chain(control.iter()).cloned().collect();
    config.extra_args.extend(a.qemu_arg.iter().cloned());
    config.extra_args.extend(a.qemu_args.iter().cloned());
    let mut cmd = config.command();

    if a.dry_run {
        print!("{}", script(&a, &firmware, &state, state_dir.is_none(), &vars, overlay.as_deref(), format, &cmd)?);
        return Ok(ExitCode::SUCCESS);
    }

    if let Some(d) = &state_dir {
        std::fs::create_dir_all(d).with_context(|| format!("--state-dir {}", d.display()))?;
    }
    firmware.copy_vars(&vars)?;
    if let Some(o) = &overlay {
        qemu::create_overlay(&a.disk, format, o)?;
    }
    if a.verbose {
        eprintln!("{}", qemu::command_line(&cmd));
    }
    let kept = if a.persist { "the guest writes to it" } else { "its changes are discarded when QEMU exits" };
    eprintln!("berth: booting {} ({kept})", a.disk.display());
    let kept_files = match &state_dir {
        Some(d) => format!("kept in {}", d.display()),
        None => "removed when QEMU exits".into(),
    };
    match &console {
        None => eprintln!("berth: console on this terminal; Ctrl-A X quits QEMU"),
        Some(Console::File(p)) => {
            let temporary = if p.starts_with(&state) { format!(" ({kept_files})") } else { String::new() };
            eprintln!("berth: console in {}{temporary}; follow it with: tail -f {}", p.display(), shell(p));
        }
        Some(Console::Socket(p)) => {
            eprintln!(
                "berth: console on the unix socket {}; connect with: socat -,raw,echo=0 UNIX-CONNECT:{}",
                p.display(),
                shell(p)
            )
        }
    }
    if let Some(m) = &monitor {
        eprintln!("berth: QEMU monitor on {}; connect with: socat - UNIX-CONNECT:{}", m.display(), shell(m));
    }
    if let Some(q) = &qmp {
        eprintln!("berth: QMP on {}", q.display());
    }
    for g in &a.guestfwd {
        eprintln!("berth: {g}");
    }
    if headless {
        eprintln!(
            "berth: waiting for QEMU to exit; Ctrl-C presses the guest's power button, a second Ctrl-C ends QEMU"
        );
        // Headless, QEMU needs nothing from this terminal and must not get its Ctrl-C: berth
        // decides what a Ctrl-C means.
        cmd.stdin(Stdio::null()).process_group(0);
    }

    let status = run_to_exit(&mut cmd, control.as_deref())?;
    if let Some(s) = scratch {
        s.close().context("removing the run's temporary directory")?;
    }
    Ok(exit_code(status))
}

/// The hidden subcommand QEMU starts for each `--guestfwd` connection: `berth guestfwd-relay PORT`.
pub const RELAY_COMMAND: &str = "guestfwd-relay";

/// `berth guestfwd-relay PORT`: stdin and stdout joined to 127.0.0.1:PORT (see
/// [`qemu::relay_stdio`]). Its errors go nowhere: QEMU made stderr the guest's connection.
pub fn guestfwd_relay(port: u16) -> ExitCode {
    match qemu::relay_stdio(port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn shell(path: &Path) -> String {
    qemu::shell_quote(path.as_os_str())
}

/// One argument as a shell word, with the [`DIR_MARK`]s in it as `$dir`.
fn word(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.contains(DIR_MARK) {
        return qemu::shell_quote(arg);
    }
    // Inside double quotes only these four keep a meaning.
    let escaped: Vec<String> = s
        .split(DIR_MARK)
        .map(|part| {
            part.chars().fold(String::new(), |mut out, c| {
                if matches!(c, '"' | '\\' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
                out
            })
        })
        .collect();
    format!("\"{}\"", escaped.join("$dir"))
}

fn line<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(words: I) -> String {
    words.into_iter().map(|w| word(w.as_ref())).collect::<Vec<_>>().join(" ") + "\n"
}

/// The dry run's script: the state directory, the firmware variables, the overlay, QEMU, and
/// the temporary directory's removal.
#[allow(clippy::too_many_arguments)]
fn script(
    a: &RunArgs,
    firmware: &Firmware,
    state: &Path,
    temporary: bool,
    vars: &Path,
    overlay: Option<&Path>,
    format: DiskFormat,
    qemu_cmd: &Command,
) -> anyhow::Result<String> {
    let mut out = String::new();
    if temporary {
        out.push_str("dir=$(mktemp -d \"${TMPDIR:-/tmp}/berth-run-XXXXXX\")\n");
    } else {
        out.push_str(&line([OsStr::new("mkdir"), OsStr::new("-p"), state.as_os_str()]));
    }
    out.push_str(&line([OsStr::new("cp"), firmware.vars_template.as_os_str(), vars.as_os_str()]));
    // The template may be read-only (packaged 0444); QEMU opens the copy read-write.
    out.push_str(&line([OsStr::new("chmod"), OsStr::new("600"), vars.as_os_str()]));
    if let Some(o) = overlay {
        let base = std::fs::canonicalize(&a.disk).with_context(|| a.disk.display().to_string())?;
        out.push_str(&line(
            std::iter::once(OsString::from(qemu::QEMU_IMG)).chain(qemu::overlay_args(&base, format, o)),
        ));
    }
    out.push_str(&line(std::iter::once(qemu_cmd.get_program()).chain(qemu_cmd.get_args())));
    if temporary {
        out.push_str("rm -r \"$dir\"\n");
    }
    Ok(out)
}

/// Runs QEMU until it exits. SIGINT, SIGTERM and SIGHUP sent to berth are passed on to QEMU
/// (which then exits cleanly) rather than killing berth, so the overlay is still removed. With
/// `control`, berth's QMP socket (headless runs), the first of them presses the guest's power
/// button instead, and only a second one is passed on.
fn run_to_exit(cmd: &mut Command, control: Option<&Path>) -> anyhow::Result<ExitStatus> {
    let mut child = qemu::spawn(cmd)?;
    let pid = rustix::process::Pid::from_child(&child);
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("installing signal handlers");
        }
    };
    let handle = signals.handle();
    let control = control.map(Path::to_path_buf);
    let forwarder = std::thread::spawn(move || {
        let mut pressed = false;
        for sig in signals.forever() {
            if let (Some(socket), false) = (&control, pressed) {
                pressed = true;
                match qemu::qmp_execute(socket, r#"{"execute":"system_powerdown"}"#, Duration::from_secs(10)) {
                    Ok(_) => {
                        eprintln!("\nberth: pressed the guest's power button; waiting for it to power off");
                        continue;
                    }
                    Err(e) => eprintln!("\nberth: could not press the power button ({e}); ending QEMU"),
                }
            }
            let signal = match sig {
                SIGINT => rustix::process::Signal::INT,
                SIGHUP => rustix::process::Signal::HUP,
                _ => rustix::process::Signal::TERM,
            };
            let _ = rustix::process::kill_process(pid, signal);
        }
    });
    let status = child.wait().context("waiting for QEMU");
    handle.close();
    let _ = forwarder.join();
    status
}

/// QEMU's exit code; 128 + the signal number when a signal ended it, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn words_with_the_state_directory_become_double_quoted_dir() {
        let w = |s: &str| word(OsStr::new(s));
        assert_eq!(w("-m"), "-m");
        assert_eq!(
            w(&format!("if=pflash,format=raw,file={DIR_MARK}/OVMF_VARS.fd")),
            r#""if=pflash,format=raw,file=$dir/OVMF_VARS.fd""#
        );
        assert_eq!(w(&format!("a$b\"`c\\{DIR_MARK}/x")), r#""a\$b\"\`c\\$dir/x""#);
        assert_eq!(w("it's"), r"'it'\''s'");
        assert!(!OsStr::new(DIR_MARK).as_bytes().contains(&b'/'));
    }

    #[test]
    fn consoles_parse() {
        assert_eq!(parse_console("c.log"), Ok(Console::File("c.log".into())));
        assert_eq!(parse_console("unix:/t/c.sock"), Ok(Console::Socket("/t/c.sock".into())));
        assert!(parse_console("unix:").is_err());
        assert!(parse_console("").is_err());
    }
}
