//! `berth upload aws` (placeholder until its helper writes it).

/// Printed after `--help`.
pub const AFTER_HELP: &str = "";

/// Options of `berth upload aws`.
#[derive(Debug, clap::Args)]
pub struct AwsArgs {}

pub fn run(_args: AwsArgs) -> anyhow::Result<()> {
    anyhow::bail!("berth upload aws is not written yet")
}
