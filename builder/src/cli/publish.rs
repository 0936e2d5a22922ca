//! `berth keygen` and `berth publish`: release signing keys and the release repository.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use berth_release::time::{format_duration, parse_duration};
use clap::Args;

use berth_builder::publish::{PublishOptions, generate_key, publish};
use berth_builder::publish_s3::{S3Repo, S3Target, process_env, publish_s3};
use berth_builder::size::ByteSize;

pub const KEYGEN_EXAMPLES: &str = "\
Examples:
  A root key, kept offline: images trust it, it signs only key sets (berth keys sign):
      berth keygen --root --out keys/root
      [update]                       # in the image definition
      channel = \"https://releases.example/channels/stable.json\"
      keys = [\"<the 64 hex digits printed>\"]
  A signing key, used by berth publish; a key set names it:
      berth keygen --out keys/release
      berth keys sign --repo repo --root-key keys/root.key --signing-key keys/release.pub
  Without any key set, the keys images trust sign channels themselves (one tier).";

pub const PUBLISH_EXAMPLES: &str = "\
Examples:
  Publish a build to the stable channel, every host at once:
      berth build images/container-host.toml --out out
      berth publish --repo repo --channel stable --image out/container-host.img --key release.key
  Let hosts take it over 24 hours (each host's place in the wave is fixed):
      berth publish --repo repo --image out/container-host.img --key release.key --rollout 24h
  A release turned out bad: pull it back (no host installs it any more):
      berth publish --repo repo --pull-back 1.4.0 --key release.key
  Re-sign before the index expires (a new sequence and expiry, the releases unchanged):
      berth publish --repo repo --key release.key
  Keep hosts fresh: refresh daily with a short expiry (a mirror can then hide a newer index
  for at most 2 days; the signing key is online, the root keys that name it stay offline):
      berth publish --repo repo --key release.key --expires 2d
  Two signatures, for images whose [update] threshold is 2:
      berth publish --repo repo --image out/x.img --key a.key --key b.key

With a key set in the repository (keys/N.json, berth keys sign), sign with its signing keys.
An image whose own update.toml names no version or channel, another channel, or keys that do not
lead to the signing keys is refused: its hosts could not update again (--force publishes it).

Upload the repository as static files (any HTTP server or object store): keys/ and releases/
first, then channels/, so an index never names a file or key set that is not there yet.

Object storage (--repo s3://BUCKET/PREFIX): the same checks and the same signed index, written
straight to S3 or an S3-compatible store (SigV4). The index, its signatures and the key sets are
read from the bucket; the release's files are uploaded first (If-None-Match: *; the same bytes
already there are kept, other bytes refused), then channels/NAME.json.sig with old and new
signatures, then the index (If-Match on the ETag read: a publish racing this one makes it fail
with \"run again\", the old .sig put back), then the .sig with the new signatures alone. Publishing
the same image again uploads only the index and its .sig. The identity needs s3:GetObject,
s3:PutObject and s3:ListBucket (without ListBucket a missing key answers 403, not 404).
Credentials, as `berth upload aws` finds them:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN)  unless --profile is given;
  else the profile (--profile, else AWS_PROFILE, else default) in ~/.aws/credentials [NAME]
  (AWS_SHARED_CREDENTIALS_FILE), then ~/.aws/config [profile NAME] (AWS_CONFIG_FILE).
Region: --region, else AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region.
Examples:
  AWS_PROFILE=release berth publish --repo s3://example-releases/fleet --region eu-west-1 \\
      --image out/container-host.img --key release.key
  berth publish --repo s3://releases/fleet --endpoint http://127.0.0.1:9000 --region us-east-1 \\
      --image out/container-host.img --key release.key
Hosts then follow https://example-releases.s3.eu-west-1.amazonaws.com/fleet/channels/stable.json
(the bucket policy must let anyone s3:GetObject under the prefix).";

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Base name of the key files: BASE.key (secret) and BASE.pub (public).
    #[arg(long, value_name = "BASE", default_value = "./berth-release")]
    out: PathBuf,
    /// Replace existing key files (the old key is lost: hosts that trust only it stop updating).
    #[arg(long)]
    force: bool,
    /// A root key: images list it in [update] keys; it signs key sets only (berth keys sign),
    /// so keep it offline. Default --out: ./berth-root.
    #[arg(long)]
    root: bool,
}

pub fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let out = match (&a.out, a.root) {
        (o, true) if o.as_os_str() == DEFAULT_KEY_BASE => PathBuf::from("./berth-root"),
        (o, _) => o.clone(),
    };
    let k = generate_key(&out, a.force)?;
    println!("{}", k.public);
    if a.root {
        eprintln!(
            "root secret key: {} (mode 0600; keep it offline: it signs key sets only, berth keys sign --root-key)",
            k.secret_path.display()
        );
        eprintln!("root public key: {} (list it in the image definition's [update] keys)", k.public_path.display());
    } else {
        eprintln!(
            "secret key: {} (mode 0600; keep it off the hosts, sign with it: berth publish --key)",
            k.secret_path.display()
        );
        eprintln!(
            "public key: {} (name it in a key set: berth keys sign --signing-key; or, without key sets, list it in \
             the image definition's [update] keys)",
            k.public_path.display()
        );
    }
    Ok(())
}

const DEFAULT_KEY_BASE: &str = "./berth-release";

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (such as 90s, 10m, 1h30m, 7d, 2w)"))
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The release repository: a directory (created if missing), or s3://BUCKET/PREFIX on S3 or
    /// an S3-compatible store (see "Object storage" below).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    repo: PathBuf,
    /// s3:// only: an S3-compatible endpoint (MinIO, a proxy: http://127.0.0.1:9000), reached
    /// path-style (ENDPOINT/BUCKET/KEY) [default: AWS, https://BUCKET.s3.REGION.amazonaws.com].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// s3:// only: the region signed for (else AWS_REGION, AWS_DEFAULT_REGION, the profile's region).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// s3:// only: the profile in ~/.aws/credentials and ~/.aws/config (else AWS_PROFILE, else
    /// the environment's keys, else `default`); given, it wins over AWS_ACCESS_KEY_ID.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// s3:// only: a canned ACL set on every object written (x-amz-acl: public-read for a bucket
    /// that grants reads by ACL; a bucket policy is the better way).
    #[arg(long, value_name = "ACL")]
    acl: Option<String>,
    /// Channel name: the index is DIR/channels/NAME.json.
    #[arg(long, value_name = "NAME", default_value = "stable")]
    channel: String,
    /// The disk `berth build` wrote (OUT/<name>.img, with <name>.manifest.json beside it).
    /// Leave out to only re-sign the channel's index: a refresh (new sequence and expiry), or
    /// with --pull-back.
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
    /// Publish an image whose own update.toml would strand its hosts (no version or channel,
    /// another channel, keys that do not lead to the signing keys).
    #[arg(long)]
    force: bool,
}

pub fn run(a: PublishArgs) -> anyhow::Result<()> {
    let s3 = berth_builder::publish_s3::is_s3(&a.repo);
    if !s3 {
        for (given, flag) in [
            (a.endpoint.is_some(), "--endpoint"),
            (a.region.is_some(), "--region"),
            (a.profile.is_some(), "--profile"),
            (a.acl.is_some(), "--acl"),
        ] {
            if given {
                anyhow::bail!(
                    "{flag} applies to an s3://BUCKET/PREFIX repository, not the directory {}",
                    a.repo.display()
                );
            }
        }
    }
    let target = if s3 {
        let url = a.repo.to_string_lossy().into_owned();
        Some(S3Target {
            repo: S3Repo::parse(&url)?,
            endpoint: a.endpoint.clone(),
            region: a.region.clone(),
            profile: a.profile.clone(),
            acl: a.acl.clone(),
        })
    } else {
        None
    };
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
        force: a.force,
    };
    let (r, remote) = match &target {
        Some(t) => {
            let bars = super::upload::Bars::new();
            let r = publish_s3(&o, t, &process_env, &bars)?;
            (r.publish.clone(), Some((t, r)))
        }
        None => (publish(&o)?, None),
    };
    let what = match (&r.version, r.unchanged) {
        (Some(v), false) => format!("published {v} to channel {}", o.channel),
        (Some(v), true) => format!("{v} is already in channel {} with the same bytes: re-signed", o.channel),
        (None, _) => format!("re-signed channel {}", o.channel),
    };
    eprintln!("{what}: sequence {}, expires {} (in {})", r.sequence, r.expires, format_duration(o.expires));
    if let Some((t, s3)) = &remote {
        eprintln!(
            "  s3://{}/{} in {} (credentials from {}):",
            t.repo.bucket, t.repo.prefix, s3.region, s3.credentials_source
        );
        for (key, size) in &s3.uploaded {
            eprintln!("  uploaded {key:<40} {:>10}", ByteSize(*size).to_string());
        }
        for key in &s3.present {
            eprintln!("  already there with the same bytes: {key}");
        }
    } else if r.release_dir.is_some() {
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
    let index_name = match &target {
        Some(t) => t.repo.url(&berth_release::repo::index_path(&o.channel)),
        None => r.index.display().to_string(),
    };
    eprintln!(
        "  index {} signed by {} key(s): {}",
        index_name,
        r.signed_by.len(),
        r.signed_by.iter().map(|k| &k[..16]).collect::<Vec<_>>().join(", ")
    );
    eprintln!("done in {:.1} s", r.elapsed.as_secs_f64());
    Ok(())
}
