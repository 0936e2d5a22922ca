//! `berth upload gce`: the `gce` artifact (`NAME.gce.tar.gz`) into a Cloud Storage bucket, then
//! a Compute Engine image from it. The work is `berth_cloud::gce`'s; this module reads the
//! options and the environment and prints the result.

use std::path::PathBuf;

use berth_cloud::gce::{self, CredentialOptions, Credentials, Options};

use super::{Bars, print_result};

/// Printed after `--help`.
pub const AFTER_HELP: &str = "\
Credentials, the first found wins (at most one of the options):
  --key FILE                      a service-account key file (JSON, `gcloud iam service-accounts
                                  keys create`): a JWT signed with its key is exchanged at its
                                  token_uri for an access token (scopes devstorage.read_write and
                                  compute); its project_id is the default --project
  --access-token-env VAR          an access token in the environment variable VAR
  --access-token-file FILE        an access token in a file
  GOOGLE_APPLICATION_CREDENTIALS  the path of a service-account key file, as with --key
  CLOUDSDK_AUTH_ACCESS_TOKEN      an access token, e.g. $(gcloud auth print-access-token)
A token is never taken as an argument (the process list would show it). The account needs
roles/storage.objectAdmin on the bucket and roles/compute.storageAdmin in the project.

What is checked and how re-runs behave:
  The file must be gzip (NAME.gce.tar.gz from berth export --platform gce) and the names valid
  for GCS and GCE: checked before anything is sent. The upload is resumable: after a dropped
  connection, a 5xx or a 429 the server is asked what it has and the upload goes on from there.
  The session is kept in .NAME.gce.tar.gz.gce-upload beside the file (0600), so an interrupted
  run, run again, goes on with it. The object's CRC32C and size must be the file's, else no
  image is made. An object there already with the same CRC32C and size is not uploaded again;
  an image of the name made from the same object is reported, one still being made is waited
  for, one from another object is an error. An image whose creation fails is deleted.

Examples:
  berth upload gce out/berth.gce.tar.gz --bucket my-images --key sa-key.json
  CLOUDSDK_AUTH_ACCESS_TOKEN=$(gcloud auth print-access-token) berth upload gce \\
    out/berth.gce.tar.gz --bucket my-images --project my-project --image berth-1-2 \\
    --family berth --json";

/// Options of `berth upload gce`.
#[derive(Debug, clap::Args)]
pub struct GceArgs {
    /// The image tarball to upload (`NAME.gce.tar.gz` from `berth export --platform gce`).
    pub tarball: PathBuf,
    /// The Cloud Storage bucket to put it in (it must exist).
    #[arg(long)]
    pub bucket: String,
    /// The object's name [default: the file's name].
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// The project of the image [default: the key's project_id].
    #[arg(long)]
    pub project: Option<String>,
    /// The image's name [default: the file's name without .gce.tar.gz, lowercase, '.' and '_' as '-'].
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// The image family (instances made from the family get its newest image).
    #[arg(long)]
    pub family: Option<String>,
    /// The image's description [default: the object and its CRC32C].
    #[arg(long)]
    pub description: Option<String>,
    /// A service-account key file (JSON).
    #[arg(long, value_name = "FILE", group = "credentials")]
    pub key: Option<PathBuf>,
    /// The environment variable that holds an access token.
    #[arg(long, value_name = "VAR", group = "credentials")]
    pub access_token_env: Option<String>,
    /// A file that holds an access token.
    #[arg(long, value_name = "FILE", group = "credentials")]
    pub access_token_file: Option<PathBuf>,
    /// Bytes per upload request: a multiple of 256 KiB (262144), with K/KiB or M/MiB (8M, 512K).
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = chunk_size)]
    pub chunk_size: u64,
    /// Cloud Storage's endpoint (another for tests or an emulator).
    #[arg(long, value_name = "URL", default_value = gce::STORAGE_ENDPOINT)]
    pub storage_endpoint: String,
    /// Compute Engine's endpoint (another for tests).
    #[arg(long, value_name = "URL", default_value = gce::COMPUTE_ENDPOINT)]
    pub compute_endpoint: String,
    /// Print the result as JSON: bucket, object, crc32c, size, image, image_self_link,
    /// reused_object, reused_image.
    #[arg(long)]
    pub json: bool,
}

/// `8M`, `512K`, `8MiB`, `262144` → bytes.
fn chunk_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: a number of bytes, or with K/KiB or M/MiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        _ => return Err(format!("{s:?}: the unit is K/KiB or M/MiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

pub fn run(args: GceArgs) -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok();
    let credentials = Credentials::find(
        &CredentialOptions {
            key: args.key.clone(),
            access_token_env: args.access_token_env.clone(),
            access_token_file: args.access_token_file.clone(),
        },
        &env,
    )?;
    let mut opts = Options::new(&args.bucket);
    opts.object = args.object;
    opts.project = args.project;
    opts.image = args.image;
    opts.family = args.family;
    opts.description = args.description;
    opts.storage_endpoint = args.storage_endpoint;
    opts.compute_endpoint = args.compute_endpoint;
    opts.chunk_size = args.chunk_size;
    let client = gce::client(berth_cloud::api::RETRY);
    let bars = Bars::new();
    let out = gce::upload(&client, &args.tarball, credentials, &opts, &bars)?;
    let object = if out.reused_object {
        format!(
            "gs://{}/{}: there already ({} bytes, CRC32C {}), not uploaded again",
            out.bucket, out.object, out.size, out.crc32c
        )
    } else {
        format!("gs://{}/{}: {} bytes uploaded, CRC32C {} checked", out.bucket, out.object, out.size, out.crc32c)
    };
    let image = if out.reused_image {
        format!("image {}: there already, not made again ({})", out.image, out.image_self_link)
    } else {
        format!("image {}: made ({})", out.image, out.image_self_link)
    };
    print_result(args.json, &out, &format!("{object}\n{image}"))
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn chunk_sizes_take_units() {
        assert_eq!(chunk_size("8M"), Ok(8 << 20));
        assert_eq!(chunk_size("512KiB"), Ok(512 << 10));
        assert_eq!(chunk_size("262144"), Ok(262_144));
        assert!(chunk_size("8G").is_err());
        assert!(chunk_size("M").is_err());
    }
}
