//! `berth run`: boot a disk image in QEMU with its console on this terminal.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, bail};
use clap::Args;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use berth_builder::qemu::{self, Accel, DiskFormat, Firmware, Forward, Network, QemuConfig, Serial, UserNet};

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
  berth run out/container-host.img --restrict --dry-run
      Print the QEMU command line (guest cut off from any network) instead of running it.";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Disk image to boot, raw or qcow2 (told apart by its first bytes).
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
    /// Forward TCP port HOST on 127.0.0.1 to port GUEST of the guest, e.g. 2222:22 (repeatable).
    #[arg(short = 'p', long = "forward", value_name = "HOST:GUEST")]
    forward: Vec<Forward>,
    /// Cut the guest off: QEMU's user network with restrict=on, so no traffic leaves the host;
    /// forwards with -p still work.
    #[arg(long)]
    restrict: bool,
    /// First-boot provisioning document (TOML: hostname, users and SSH keys, files, units,
    /// update settings) the guest reads from QEMU's fw_cfg as opt/org.berth/config. It is applied
    /// once: a disk booted before (with --persist) ignores it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No network device at all.
    #[arg(long, conflicts_with_all = ["restrict", "forward"])]
    no_network: bool,
    /// OVMF firmware code to use [default: found where distributions install it].
    #[arg(long, value_name = "FILE", requires = "ovmf_vars")]
    ovmf_code: Option<PathBuf>,
    /// OVMF variable store template matching --ovmf-code (each run gets its own copy).
    #[arg(long, value_name = "FILE", requires = "ovmf_code")]
    ovmf_vars: Option<PathBuf>,
    /// Print the QEMU command line on stderr before starting it.
    #[arg(short, long)]
    verbose: bool,
    /// Print the commands that would run (qemu-img for the overlay, then QEMU) and exit.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let format = DiskFormat::detect(&a.disk)?;
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

    // Holds this run's firmware variables and overlay; removed when berth exits.
    let scratch = tempfile::Builder::new()
        .prefix("berth-run-")
        .tempdir()
        .context("creating a temporary directory for the run (set TMPDIR to choose where)")?;
    let vars = scratch.path().join("OVMF_VARS.fd");
    let overlay = (!a.persist).then(|| scratch.path().join("overlay.qcow2"));

    let (drive, drive_format) = match &overlay {
        Some(o) => (o.clone(), DiskFormat::Qcow2),
        None => (a.disk.clone(), format),
    };
    let mut config = QemuConfig::new(&firmware, &vars, drive, drive_format);
    config.memory_mib = a.memory;
    config.cpus = a.cpus;
    config.accel = if a.kvm { Accel::Kvm } else { Accel::Tcg };
    config.serial = Serial::Stdio;
    config.network = if a.no_network {
        Network::None
    } else {
        Network::User(UserNet { restrict: a.restrict, forwards: a.forward.clone(), guest_forwards: Vec::new() })
    };
    if let Some(file) = &a.config {
        // QEMU reads the file when it starts; an absolute path keeps the command line usable
        // from anywhere (and a missing file is reported here, not by QEMU).
        let file = std::fs::canonicalize(file)
            .with_context(|| format!("--config {}: cannot read the provisioning document", file.display()))?;
        config.fw_cfg.push((qemu::PROVISION_FW_CFG.to_string(), file));
    }
    let mut cmd = config.command();

    if a.dry_run {
        if let Some(o) = &overlay {
            let base = std::fs::canonicalize(&a.disk).with_context(|| a.disk.display().to_string())?;
            let mut img = Command::new(qemu::QEMU_IMG);
            img.args(qemu::overlay_args(&base, format, o));
            println!("{}", qemu::command_line(&img));
        }
        println!("{}", qemu::command_line(&cmd));
        return Ok(ExitCode::SUCCESS);
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
    eprintln!("berth: console on this terminal; Ctrl-A X quits QEMU");

    let status = run_to_exit(&mut cmd)?;
    scratch.close().context("removing the run's temporary directory")?;
    Ok(exit_code(status))
}

/// Runs QEMU until it exits. SIGINT, SIGTERM and SIGHUP sent to berth are passed on to QEMU
/// (which then exits cleanly) rather than killing berth, so the overlay is still removed.
fn run_to_exit(cmd: &mut Command) -> anyhow::Result<ExitStatus> {
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
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
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
