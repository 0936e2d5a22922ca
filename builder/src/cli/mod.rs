//! Command-line interface of `berth`.

mod build;
mod fs;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, inspect and boot Berth disk images.
///
/// Berth is a minimal, immutable container-host OS with A/B updates. This tool turns image
/// definitions into bootable disks without root and without host filesystem tools.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable disk image from an image definition.
    ///
    /// Resolves the definition's Debian packages from the host's apt sources (signatures
    /// checked), unpacks them into a root filesystem without root or host tools, selects kernel
    /// modules, builds the initramfs, and writes OUT/<name>.img (GPT: ESP with bootmgr and
    /// slot A's kernel, ROOT-A, empty ROOT-B, STATE) and OUT/<name>.manifest.json. Packages are
    /// cached by hash, so a second build downloads nothing. SOURCE_DATE_EPOCH fixes every
    /// timestamp; the same inputs give the same bytes.
    ///
    /// Example: berth build images/container-host.toml --out out
    Build(build::BuildArgs),
    /// Write filesystems directly, without mkfs, mount or root.
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// Show a disk's partitions and the A/B boot state in its GPT attributes.
    ///
    /// Prints each partition with its label, kind, place, GUID and, for ROOT-A and ROOT-B, the
    /// slot's priority, tries left and whether it was marked successful, then which slot the
    /// boot manager would start next.
    Inspect {
        /// Disk image (raw) to read.
        disk: std::path::PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Boot a disk image in QEMU, with its console on this terminal.
    ///
    /// The UEFI firmware (OVMF) is found where distributions install it. Unless --persist, the
    /// guest writes to a temporary copy-on-write overlay (in TMPDIR, removed when QEMU exits), so
    /// DISK stays unchanged. The guest gets QEMU's user-mode network: it reaches out through the
    /// host unless --restrict, and from the host only the ports forwarded with -p are reachable,
    /// on 127.0.0.1. Emulation (TCG) is the default: it works everywhere but is slow; --kvm uses
    /// hardware virtualization. Ctrl-A X quits QEMU, Ctrl-A C toggles the QEMU monitor. berth
    /// exits with QEMU's exit status.
    #[command(after_help = run::EXAMPLES)]
    Run(run::RunArgs),
}

/// Runs the command; its exit code is berth's (QEMU's for `berth run`).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(a) => build::run(a).map(|()| ExitCode::SUCCESS),
        Command::Fs(cmd) => fs::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::run(a),
        Command::Inspect { disk, json } => {
            let info = berth_builder::inspect::inspect(&disk)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
