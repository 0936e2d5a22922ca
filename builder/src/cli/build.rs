//! `berth build`: an image definition to a bootable disk.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use berth_builder::build::{BuildOptions, build};
use berth_builder::size::ByteSize;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image definition, e.g. images/container-host.toml (see images/README.md).
    definition: PathBuf,
    /// Directory for <name>.img, <name>.manifest.json and the other platforms' artifacts.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Platforms to produce, comma-separated (see below). <name>.img (metal) is always written.
    #[arg(long, value_name = "LIST", default_value = "metal")]
    platform: String,
    /// Cache of downloaded packages and verified indexes [default: $XDG_CACHE_HOME/berth or ~/.cache/berth].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Build from the cache alone; fail naming what is missing instead of downloading.
    #[arg(long)]
    offline: bool,
    /// Directory holding prebuilt berth-init, berth-update, berth-timesync, berth-netd, berth-devd,
    /// berth-metadata, berth-guest-agent and
    /// BOOTX64.EFI (else they are built with cargo from the Berth sources this berth was built from, or --workspace).
    #[arg(long, value_name = "DIR")]
    prebuilt: Option<PathBuf>,
    /// Berth source tree to build berth-init, berth-update and bootmgr from.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Root whose etc/apt names the Debian sources.
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    apt_root: PathBuf,
}

pub fn run(a: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // The sources this binary was built from, when they are still there.
    let own_workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = a.workspace.or_else(|| own_workspace.join("Cargo.toml").is_file().then_some(own_workspace));
    let platforms = super::export::parse_platforms(&a.platform)?;
    let opts = BuildOptions {
        platforms,
        definition: a.definition,
        out_dir: a.out,
        cache_dir: match a.cache {
            Some(c) => c,
            None => berth_builder::build::default_cache_dir()?,
        },
        apt_root: a.apt_root,
        offline: a.offline,
        prebuilt: a.prebuilt,
        workspace,
        source_date_epoch: super::source_date_epoch()?,
        progress: super::export::show_progress(),
    };
    let r = build(&opts)?;
    let m = &r.manifest;
    eprintln!(
        "built {} {}: {} ({} packages, {} downloaded; {} inodes, {}; kernel {} with {} modules) in {:.1} s",
        m.name,
        m.version,
        r.disk.display(),
        m.packages.len(),
        r.downloaded,
        m.inodes,
        ByteSize(m.content_bytes),
        m.kernel,
        m.kernel_modules,
        started.elapsed().as_secs_f64()
    );
    eprintln!("manifest: {}", r.manifest_path.display());
    for line in berth_builder::export::describe(&r.artifacts) {
        println!("{line}");
    }
    Ok(())
}
