//! `berth keys`: the key sets of a release repository (root keys sign which keys sign channels).

use std::path::PathBuf;
use std::time::Duration;

use berth_builder::keys::{KeysOptions, newest_keyset, sign_keyset};
use berth_release::time::{format_duration, parse_duration};
use clap::{Args, Subcommand};

pub const SIGN_EXAMPLES: &str = "\
Examples:
  The first key set: root.key (offline, trusted by images) names release.pub as the signing key:
      berth keygen --root --out keys/root
      berth keygen --out keys/release
      berth keys sign --repo repo --root-key keys/root.key --signing-key keys/release.pub
  Replace a signing key (the old one is revoked: hosts refuse what it signs from now on):
      berth keygen --out keys/release2
      berth keys sign --repo repo --root-key keys/root.key --signing-key keys/release2.pub
  Revoke one of several signing keys:
      berth keys sign --repo repo --root-key keys/root.key --revoke keys/leaked.pub
  Renew before the key set expires (nothing else changes):
      berth keys sign --repo repo --root-key keys/root.key
  Rotate the root keys to 2 of 3 (signed by the current root and by two of the new ones):
      berth keys sign --repo repo --root-key keys/root.key --root-key keys/r1.key --root-key keys/r2.key \\
          --root keys/r1.pub --root keys/r2.pub --root keys/r3.pub --root-threshold 2

Every version stays in the repository (keys/1.json, keys/2.json, ...): a host walks them from the
root keys its image or /etc/berth/update.toml names, accepting each that the root keys it trusts
signed. Upload keys/ before channels/. Then publish with the signing keys (berth publish --key).";

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Sign the next key set with the root keys: which keys sign channels, the root keys, an expiry.
    ///
    /// Writes keys/N.json (N one more than the newest) and keys/N.json.sig, each through a
    /// temporary file renamed into place (the signatures first). Anything not given is kept
    /// from the newest key set. Before writing, the new key set is checked as hosts check it:
    /// signed by the threshold of the current root keys (for the first, of its own root keys)
    /// and, when the root keys change, of the new root keys too.
    #[command(after_help = SIGN_EXAMPLES)]
    Sign(SignArgs),
    /// Print the newest key set of a repository.
    Show {
        /// The release repository's directory.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (such as 90d, 52w)"))
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The release repository's directory.
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Secret root key file (berth keygen --root); repeat to reach the threshold.
    #[arg(long = "root-key", value_name = "KEY", required = true)]
    root_keys: Vec<PathBuf>,
    /// A signing key of the new key set (hex or .pub file); repeat. Default: the current ones.
    #[arg(long = "signing-key", value_name = "PUB")]
    signing: Vec<String>,
    /// Leave this signing key out (hex or .pub file): hosts refuse what it signs from now on.
    #[arg(long, value_name = "PUB")]
    revoke: Vec<String>,
    /// Signatures by signing keys an index needs. Default: the current threshold (1 at first).
    #[arg(long, value_name = "N")]
    threshold: Option<u32>,
    /// A root key of the new key set (hex or .pub file); repeat. Default: the current ones (at
    /// first, those of --root-key).
    #[arg(long = "root", value_name = "PUB")]
    root: Vec<String>,
    /// Root signatures the next key set needs. Default: the current threshold (1 at first).
    #[arg(long = "root-threshold", value_name = "N")]
    root_threshold: Option<u32>,
    /// Hosts accept no index after this long, until the root keys sign a newer key set.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = duration)]
    expires: Duration,
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Show { repo } => {
            match newest_keyset(&repo)? {
                Some(ks) => print!("{}", String::from_utf8_lossy(&ks.to_bytes())),
                None => {
                    eprintln!("{}: no key set (keys/): the keys images trust sign channels directly", repo.display())
                }
            }
            Ok(())
        }
        KeysCommand::Sign(a) => {
            let r = sign_keyset(&KeysOptions {
                repo: a.repo,
                root_keys: a.root_keys,
                root: a.root,
                root_threshold: a.root_threshold,
                signing: a.signing,
                revoke: a.revoke,
                threshold: a.threshold,
                expires: a.expires,
                now: None,
            })?;
            let ks = &r.keyset;
            eprintln!(
                "key set {} written: {} (after {}), expires {} (in {})",
                ks.version,
                r.path.display(),
                if r.previous == 0 { "none".to_string() } else { format!("key set {}", r.previous) },
                ks.expires,
                format_duration(a.expires)
            );
            eprintln!(
                "  signing keys ({} of them sign an index): {}",
                ks.signing.threshold,
                ks.signing.keys.join(", ")
            );
            eprintln!("  root keys ({} of them sign the next key set): {}", ks.root.threshold, ks.root.keys.join(", "));
            if r.rotated_root {
                eprintln!("  the root keys changed: images built from now on can list the new ones in [update] keys");
            }
            for k in &r.revoked {
                eprintln!("  revoked: {k}");
            }
            Ok(())
        }
    }
}
