//! `berth keygen` and `berth publish`: release signing keys and the release repository.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use berth_release::time::{format_duration, parse_duration};
use clap::Args;

use berth_builder::publish::{PublishOptions, generate_key, publish};
use berth_builder::units::ByteSize;

pub const KEYGEN_EXAMPLES: &str = "\
Examples:
  berth keygen --out keys/release
      writes keys/release.key (keep it secret) and keys/release.pub
  Put the public key into the image definition, so its hosts trust the channel:
      [update]
      channel = \"https://releases.example/channels/stable.json\"
      keys = [\"<the 64 hex digits printed>\"]";

pub const PUBLISH_EXAMPLES: &str = "\
Examples:
  Publish a build to the stable channel, every host at once:
      berth build images/container-host.toml --out out
      berth publish --repo repo --channel stable --image out/container-host.img --key release.key
  Let hosts take it over 24 hours (each host's place in the wave is fixed):
      berth publish --repo repo --image out/container-host.img --key release.key --rollout 24h
  A release turned out bad: pull it back (no host installs it any more):
      berth publish --repo repo --pull-back 1.4.0 --key release.key
  Re-sign before the index expires (publishing the same image again changes nothing else):
      berth publish --repo repo --image out/container-host.img --key release.key
  Two signatures, for images whose [update] threshold is 2:
      berth publish --repo repo --image out/x.img --key a.key --key b.key

Upload the repository as static files (any HTTP server or object store): releases/ first,
then channels/, so an index never names a file that is not there yet.";

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Base name of the key files: BASE.key (secret) and BASE.pub (public).
    #[arg(long, value_name = "BASE", default_value = "./berth-release")]
    out: PathBuf,
    /// Replace existing key files (the old key is lost: hosts that trust only it stop updating).
    #[arg(long)]
    force: bool,
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let k = generate_key(&a.out, a.force)?;
    println!("{}", k.public);
    eprintln!(
        "secret key: {} (mode 0600; keep it off the hosts, sign with it: berth publish --key)",
        k.secret_path.display()
    );
    eprintln!("public key: {} (list it in the image definition's [update] keys)", k.public_path.display());
    Ok(())
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (such as 90s, 10m, 1h30m, 7d, 2w)"))
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The release repository's directory (created if missing).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Channel name: the index is DIR/channels/NAME.json.
    #[arg(long, value_name = "NAME", default_value = "stable")]
    channel: String,
    /// The disk `berth build` wrote (OUT/<name>.img, with <name>.manifest.json beside it).
    /// Leave out to only re-sign the index (with --pull-back).
    #[arg(long, value_name = "DISK")]
    image: Option<PathBuf>,
    /// Secret key file from `berth keygen`; repeat to sign with several keys.
    #[arg(long = "key", value_name = "KEY", required = true)]
    keys: Vec<PathBuf>,
    /// Spread the release over this long: hosts take it at evenly spaced moments [default: all at once].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    rollout: Option<Duration>,
    /// Mark VERSION pulled: no host installs it any more (repeatable).
    #[arg(long = "pull-back", value_name = "VERSION")]
    pull_back: Vec<String>,
    /// Hosts refuse the index this long after now: publish again before then.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = duration)]
    expires: Duration,
}

pub fn run(a: PublishArgs) -> anyhow::Result<()> {
    let o = PublishOptions {
        repo: a.repo,
        channel: a.channel,
        image: a.image,
        keys: a.keys,
        rollout: a.rollout,
        pull_back: a.pull_back,
        expires: a.expires,
        now: None,
        progress: std::io::stderr().is_terminal() || std::env::var_os("BERTH_PROGRESS").is_some(),
    };
    let r = publish(&o)?;
    let what = match (&r.version, r.unchanged) {
        (Some(v), false) => format!("published {v} to channel {}", o.channel),
        (Some(v), true) => format!("{v} is already in channel {} with the same bytes: re-signed", o.channel),
        (None, _) => format!("re-signed channel {}", o.channel),
    };
    eprintln!("{what}: sequence {}, expires {} (in {})", r.sequence, r.expires, format_duration(o.expires));
    if r.release_dir.is_some() {
        for f in &r.artifacts {
            eprintln!("  {:<40} {:>10}", f.path.display(), ByteSize(f.size).to_string());
        }
        if !r.unchanged {
            eprintln!(
                "  root image {} compressed to {} ({:.1}%, zstd level {}) in {:.1} s",
                ByteSize(r.image_size),
                ByteSize(r.compressed_size),
                r.ratio() * 100.0,
                berth_builder::publish::ROOT_ZSTD_LEVEL,
                r.compress_time.as_secs_f64()
            );
        }
    }
    if let Some(d) = o.rollout {
        eprintln!("  rollout: from {} over {}", r.issued, format_duration(d));
    }
    for v in &r.pulled {
        eprintln!("  pulled back: {v}");
    }
    eprintln!(
        "  index {} signed by {} key(s): {}",
        r.index.display(),
        r.signed_by.len(),
        r.signed_by.iter().map(|k| &k[..16]).collect::<Vec<_>>().join(", ")
    );
    eprintln!("done in {:.1} s", r.elapsed.as_secs_f64());
    Ok(())
}
