//! `berth upload azure`: the `azure` artifact (`NAME.azure.vhd`, a fixed VHD) into a page blob,
//! then, given a subscription, a resource group and a location, a Generation 2 managed image
//! from it. The work is `berth_cloud::azure`'s; this module reads the options, the environment
//! and the token, and prints the result.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_cloud::azure::{self, BlobOptions, ImageSpec};

use super::{Bars, print_result};

/// Printed after `--help`.
pub const AFTER_HELP: &str = "\
Storage credentials (the first found wins):
  --sas-url URL
      A container URL with a SAS (permissions r and w), or a blob URL with a blob SAS (sr=b).
      Nothing is signed here; the signature (sig=) is never printed.
  --account-key-file FILE
      The account key (base64) in a file, with --account or AZURE_STORAGE_ACCOUNT.
  AZURE_STORAGE_CONNECTION_STRING
      AccountName=...;AccountKey=...[;BlobEndpoint=...], or SharedAccessSignature=...,
      or UseDevelopmentStorage=true (Azurite on 127.0.0.1:10000, account devstoreaccount1).
  AZURE_STORAGE_SAS_TOKEN
      A SAS query (sv=...&sig=...), with --account, AZURE_STORAGE_ACCOUNT or --blob-endpoint.
  AZURE_STORAGE_KEY
      The account key (base64), with --account or AZURE_STORAGE_ACCOUNT.

Resource Manager token (with --subscription, --resource-group and --location):
  --access-token-file FILE
      An Entra ID access token for Resource Manager in a file.
  AZURE_ACCESS_TOKEN
      The token itself: $(az account get-access-token --query accessToken -o tsv).

What is checked, and re-runs:
  The file must be a fixed VHD (a \"conectix\" footer, disk type 2, a whole number of MiB),
  checked before anything is sent. Only data is written: holes and all-zero 64 KiB granules
  are skipped (Azure reads unwritten pages as zeros), at most 4 MiB per Put Page, --jobs at
  once. Get Page Ranges must then list every range sent, and the metadata berthsha256 marks
  the blob complete. Run again, a complete blob is not sent again, an unfinished one for the
  same VHD is completed, and any other blob of that name is an error unless --overwrite.
  An image of that name made from the same blob is reported; one from another blob is an
  error (never replaced). An image whose provisioning fails is deleted, and the error says so.

Examples:
  AZURE_STORAGE_ACCOUNT=myacct AZURE_STORAGE_KEY=... \\
    berth upload azure out/berth.azure.vhd --container images
  AZURE_ACCESS_TOKEN=$(az account get-access-token --query accessToken -o tsv) \\
    berth upload azure out/berth.azure.vhd \\
    --sas-url 'https://myacct.blob.core.windows.net/images?sv=...&sig=...' \\
    --subscription 00000000-0000-0000-0000-000000000000 --resource-group rg \\
    --location westeurope --image-name berth-1 --json
  AZURE_STORAGE_CONNECTION_STRING=UseDevelopmentStorage=true \\
    berth upload azure disk.azure.vhd --container images";

/// Options of `berth upload azure`.
#[derive(Debug, clap::Args)]
pub struct AzureArgs {
    /// The fixed VHD to upload (`NAME.azure.vhd` from `berth build`).
    pub vhd: PathBuf,
    /// The container to put the blob in (not needed with a --sas-url, which names it).
    #[arg(long)]
    pub container: Option<String>,
    /// The blob's name [default: the file's name].
    #[arg(long)]
    pub blob_name: Option<String>,
    /// The storage account (else AZURE_STORAGE_ACCOUNT), for a key or a SAS token.
    #[arg(long)]
    pub account: Option<String>,
    /// A file holding the account's key (base64).
    #[arg(long, value_name = "FILE")]
    pub account_key_file: Option<PathBuf>,
    /// A container (or blob) URL with its SAS query.
    #[arg(long, value_name = "URL")]
    pub sas_url: Option<String>,
    /// The Blob service endpoint instead of https://ACCOUNT.blob.core.windows.net; path-style for
    /// Azurite: http://127.0.0.1:10000/devstoreaccount1.
    #[arg(long, value_name = "URL")]
    pub blob_endpoint: Option<String>,
    /// Page writes in flight.
    #[arg(long, default_value_t = azure::DEFAULT_JOBS)]
    pub jobs: usize,
    /// Replace a blob of that name that is not this VHD's (another size, another VHD).
    #[arg(long)]
    pub overwrite: bool,
    /// The subscription id of the image; with --resource-group and --location, an image is created.
    #[arg(long)]
    pub subscription: Option<String>,
    /// The resource group of the image.
    #[arg(long)]
    pub resource_group: Option<String>,
    /// The image's region (westeurope, eastus, …).
    #[arg(long)]
    pub location: Option<String>,
    /// The image's name [default: the file's name without .azure.vhd / .vhd].
    #[arg(long)]
    pub image_name: Option<String>,
    /// A file holding the Resource Manager access token (else AZURE_ACCESS_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub access_token_file: Option<PathBuf>,
    /// The Resource Manager endpoint.
    #[arg(long, value_name = "URL", default_value = azure::arm::DEFAULT_ENDPOINT)]
    pub arm_endpoint: String,
    /// Print the result as JSON: blob_url, pages_sent, bytes_sent, bytes_skipped, image_id,
    /// reused_blob, reused_image.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, serde::Serialize)]
struct Uploaded {
    blob_url: String,
    pages_sent: u64,
    bytes_sent: u64,
    bytes_skipped: u64,
    sha256: String,
    image_id: Option<String>,
    reused_blob: bool,
    reused_image: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub fn run(args: AzureArgs) -> anyhow::Result<()> {
    let file_name = args
        .vhd
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", args.vhd.display()))?
        .to_string();
    let image = image_spec(&args, &file_name)?;
    let options = BlobOptions {
        account: args.account.clone(),
        account_key_file: args.account_key_file.clone(),
        sas_url: args.sas_url.clone(),
        blob_endpoint: args.blob_endpoint.clone(),
        container: args.container.clone(),
        blob_name: args.blob_name.clone().unwrap_or_else(|| file_name.clone()),
    };
    let blob = azure::resolve(&options, &env)?;
    let client = berth_cloud::api::client();
    let bars = Bars::new();
    if let Some(spec) = &image {
        // The token and the image's name are checked before the upload, not after it.
        azure::preflight(&client, spec, &blob.url, &bars)?;
    }
    let out = azure::upload_vhd(&client, &blob, &args.vhd, args.jobs, args.overwrite, &bars)?;
    let image = match image {
        Some(spec) => Some(azure::create_image(&client, &spec, &out.blob_url, &bars)?),
        None => None,
    };
    let mut summary = if out.reused {
        format!("{}: complete from an earlier run, nothing sent", out.blob_url)
    } else {
        format!(
            "{}: {} bytes sent in {} page writes, {} bytes skipped as zeros",
            out.blob_url, out.bytes_sent, out.pages_sent, out.bytes_skipped
        )
    };
    if let Some(i) = &image {
        summary += &format!("\nimage {}{}", i.id, if i.reused { " (from an earlier run)" } else { "" });
    }
    let result = Uploaded {
        blob_url: out.blob_url,
        pages_sent: out.pages_sent,
        bytes_sent: out.bytes_sent,
        bytes_skipped: out.bytes_skipped,
        sha256: out.sha256,
        image_id: image.as_ref().map(|i| i.id.clone()),
        reused_blob: out.reused,
        reused_image: image.as_ref().is_some_and(|i| i.reused),
    };
    print_result(args.json, &result, &summary)
}

/// The image to create, when --subscription, --resource-group and --location are all given;
/// the token is read now, so that a missing one fails before the upload.
fn image_spec(args: &AzureArgs, file_name: &str) -> anyhow::Result<Option<ImageSpec>> {
    let (subscription, resource_group, location) = match (&args.subscription, &args.resource_group, &args.location) {
        (None, None, None) => {
            if args.image_name.is_some() || args.access_token_file.is_some() {
                anyhow::bail!(
                    "--image-name and --access-token-file need --subscription, --resource-group and --location"
                );
            }
            return Ok(None);
        }
        (Some(s), Some(g), Some(l)) => (s.clone(), g.clone(), l.clone()),
        _ => anyhow::bail!("an image needs all of --subscription, --resource-group and --location"),
    };
    let (token, token_source) = match &args.access_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| berth_cloud::Error::io(path, e))?;
            (token.trim().to_string(), format!("--access-token-file {}", path.display()))
        }
        None => match env("AZURE_ACCESS_TOKEN").filter(|t| !t.trim().is_empty()) {
            Some(t) => (t.trim().to_string(), "AZURE_ACCESS_TOKEN".to_string()),
            None => {
                return Err(berth_cloud::Error::Credentials {
                    source_name: "the command line and the environment".to_string(),
                    reason: "no Resource Manager token: give --access-token-file or set AZURE_ACCESS_TOKEN".to_string(),
                }
                .into());
            }
        },
    };
    if token.is_empty() {
        anyhow::bail!(berth_cloud::Error::Credentials {
            source_name: token_source,
            reason: "the token is empty".to_string()
        });
    }
    let name = args.image_name.clone().unwrap_or_else(|| {
        let stem = file_name.strip_suffix(".azure.vhd").or_else(|| file_name.strip_suffix(".vhd")).unwrap_or(file_name);
        stem.to_string()
    });
    Ok(Some(ImageSpec {
        endpoint: args.arm_endpoint.trim_end_matches('/').to_string(),
        subscription,
        resource_group,
        location,
        name,
        token,
        token_source,
        poll_interval: Duration::from_secs(5),
        timeout: Duration::from_secs(30 * 60),
    }))
}
