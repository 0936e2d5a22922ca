//! `berth upload azure` (placeholder until its helper writes it).

/// Printed after `--help`.
pub const AFTER_HELP: &str = "";

/// Options of `berth upload azure`.
#[derive(Debug, clap::Args)]
pub struct AzureArgs {}

pub fn run(_args: AzureArgs) -> anyhow::Result<()> {
    anyhow::bail!("berth upload azure is not written yet")
}
