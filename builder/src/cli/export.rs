//! `berth export`: a built disk to the artifact of each platform, and the `--platform` option
//! `berth build` shares with it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use berth_builder::export::{ExportOptions, describe, export};
use berth_builder::platform::{Platform, PlatformExt};

/// The platform table `--help` shows (from platform.rs, the one list of platforms).
pub fn platforms_help() -> String {
    format!(
        "Platforms (--platform, comma-separated):\n{}\n\nEvery artifact holds the same root; only the container \
         and the word in berth/platform on its ESP differ (docs/platforms.md).",
        Platform::help_table()
    )
}

/// `--platform LIST` → the platforms, each once, or the one-line error naming the known ones.
pub fn parse_platforms(list: &str) -> anyhow::Result<Vec<Platform>> {
    Ok(Platform::parse_list(list)?)
}

/// Whether to draw progress bars: on a terminal, or when BERTH_PROGRESS is set (tests, CI logs).
pub fn show_progress() -> bool {
    std::io::stderr().is_terminal() || std::env::var_os("BERTH_PROGRESS").is_some()
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A disk `berth build` wrote (OUT/<name>.img); artifacts are named after its file name.
    disk: PathBuf,
    /// Platforms to export for, comma-separated (see below), e.g. qemu,vagrant-libvirt.
    #[arg(long, value_name = "LIST")]
    platform: String,
    /// Directory for the artifacts (created if missing).
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,
    /// A provisioning document (docs/provisioning.md) to put on every artifact's ESP as
    /// berth/provision.toml, applied on the first boot when no other source gives one. Vagrant
    /// boxes get one of their own without it (user core with Vagrant's insecure key).
    #[arg(long, value_name = "FILE")]
    provision: Option<PathBuf>,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let opts = ExportOptions {
        platforms: parse_platforms(&a.platform)?,
        out_dir: a.out,
        provision: a.provision,
        source_date_epoch: super::source_date_epoch()?,
        progress: show_progress(),
    };
    let artifacts = export(&a.disk, &opts)?;
    for line in describe(&artifacts) {
        println!("{line}");
    }
    eprintln!("exported {} in {:.1} s", a.disk.display(), started.elapsed().as_secs_f64());
    Ok(())
}
