//! `berth upload gce` (placeholder until its helper writes it).

/// Printed after `--help`.
pub const AFTER_HELP: &str = "";

/// Options of `berth upload gce`.
#[derive(Debug, clap::Args)]
pub struct GceArgs {}

pub fn run(_args: GceArgs) -> anyhow::Result<()> {
    anyhow::bail!("berth upload gce is not written yet")
}
