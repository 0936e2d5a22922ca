//! `berth fleet serve|status|unlock|slots` (placeholder until its helper writes it).

/// The fleet commands.
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {}

pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {}
}
