//! Command-line interface of `berth`.

mod fs;

use clap::{Parser, Subcommand};

/// Build, inspect and run Berth disk images.
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
    /// Write filesystems directly, without mkfs, mount or root.
    #[command(subcommand)]
    Fs(fs::FsCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fs(cmd) => fs::run(cmd),
    }
}
