//! `berth upload aws`: the `aws` artifact (`NAME.aws.raw`, a raw GPT disk of whole GiB) to an EBS
//! snapshot through the EBS direct APIs, then an AMI through EC2 `RegisterImage`. The work is
//! `berth_cloud::aws`'s; this module reads the options, finds credentials and region as the AWS
//! CLI does, and prints the result.

use std::path::PathBuf;
use std::time::Duration;

use berth_cloud::aws::{self, Endpoints, Upload, credentials};

use super::{Bars, print_result};

/// Printed after `--help`.
pub const AFTER_HELP: &str = "\
Credentials, found as the AWS CLI finds them (the first that applies wins):
  AWS_ACCESS_KEY_ID and           keys from the environment (AWS_SESSION_TOKEN too for temporary
  AWS_SECRET_ACCESS_KEY           keys); not used when --profile is given
  --profile NAME, else            the profile's aws_access_key_id, aws_secret_access_key (and
  AWS_PROFILE, else \"default\"     aws_session_token) from AWS_SHARED_CREDENTIALS_FILE, else
                                  ~/.aws/credentials [NAME]; then from AWS_CONFIG_FILE, else
                                  ~/.aws/config [profile NAME]
  Profiles that use SSO, role_arn or credential_process are not followed: export the keys
  they give (aws configure export-credentials --format env) and run again.
Region: --region, else AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region.
Endpoints: https://ebs.REGION.amazonaws.com and https://ec2.REGION.amazonaws.com, unless
  --endpoint (both APIs at one URL, as moto's server serves them), --ebs-endpoint, --ec2-endpoint.
Permissions: ebs:StartSnapshot, ebs:PutSnapshotBlock, ebs:CompleteSnapshot, ec2:DescribeImages,
  ec2:DescribeSnapshots, ec2:RegisterImage, ec2:CreateTags. Refused credentials give one error
  line naming where they came from.

What is checked and sent:
  The file must be a whole number of GiB (EBS snapshots are): checked before anything is sent.
  It is read once for the SHA-256 of every 512 KiB block that is not all zeros (holes are not
  read); only those blocks are sent, each with its checksum, --jobs at a time. CompleteSnapshot
  carries their count and the linear checksum over them; the snapshot is awaited until EC2 says
  completed. The AMI: x86_64, UEFI boot, ENA, IMDSv2 required, root /dev/xvda on the snapshot
  (gp3, deleted with the instance). Snapshot and AMI are tagged Name=NAME and
  berth:content-sha256=HASH (the image's content hash).

Re-runs (the same command again, after any interruption):
  An AMI of that name is reported and nothing is sent (an error if its content tag names other
  content). A completed snapshot of the same content is reused. An interrupted upload is picked
  up through the same StartSnapshot client token and finished. A registration that failed after
  the snapshot completed names the snapshot kept; the next run registers it. Never two AMIs.

Examples:
  AWS_PROFILE=prod berth upload aws out/berth.aws.raw --region eu-west-1 --name berth-1.4.0
  berth upload aws out/berth.aws.raw --profile build --jobs 64 --json
  # moto's server on this host:
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test berth upload aws disk.aws.raw \\
    --region us-east-1 --endpoint http://127.0.0.1:5000";

/// Options of `berth upload aws`.
#[derive(Debug, clap::Args)]
pub struct AwsArgs {
    /// The raw disk to upload (`NAME.aws.raw` from `berth build --platform aws`).
    pub file: PathBuf,
    /// The AMI's name [default: the file's name without `.aws.raw`].
    #[arg(long)]
    pub name: Option<String>,
    /// The AMI's and the snapshot's description [default: "Berth image NAME"].
    #[arg(long)]
    pub description: Option<String>,
    /// The region (else AWS_REGION, AWS_DEFAULT_REGION, the profile's region).
    #[arg(long)]
    pub region: Option<String>,
    /// The profile in ~/.aws/credentials and ~/.aws/config (else AWS_PROFILE; given, it wins over
    /// the environment's keys).
    #[arg(long)]
    pub profile: Option<String>,
    /// Both the EBS and the EC2 API at this URL (an emulator, a proxy).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The EBS direct APIs at this URL (wins over --endpoint).
    #[arg(long, value_name = "URL")]
    pub ebs_endpoint: Option<String>,
    /// EC2 at this URL (wins over --endpoint).
    #[arg(long, value_name = "URL")]
    pub ec2_endpoint: Option<String>,
    /// Blocks in flight.
    #[arg(long, default_value_t = aws::DEFAULT_JOBS)]
    pub jobs: usize,
    /// Seconds between two DescribeSnapshots while the snapshot completes.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub poll_interval: f64,
    /// Print the result as JSON: snapshot_id, image_id, region, name, blocks_sent,
    /// zero_blocks_skipped, reused.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: AwsArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name(&args.file)?,
    };
    let description = args.description.clone().unwrap_or_else(|| format!("Berth image {name}"));
    // The file and the name first: a bad one is said before credentials are looked for.
    aws::check_name(&name)?;
    aws::volume_gib(&args.file)?;
    let env = |k: &str| std::env::var(k).ok();
    let found = credentials::find(args.profile.as_deref(), args.region.as_deref(), &env)?;
    let Some(region) = found.region.clone() else {
        anyhow::bail!(
            "no region: give --region, or set AWS_REGION, or region in the profile's section of ~/.aws/config \
             (credentials from {})",
            found.credentials.source
        );
    };
    let mut endpoints = match &args.endpoint {
        Some(url) => Endpoints::both_at(url),
        None => Endpoints::for_region(&region),
    };
    if let Some(url) = &args.ebs_endpoint {
        endpoints.ebs = url.trim_end_matches('/').to_string();
    }
    if let Some(url) = &args.ec2_endpoint {
        endpoints.ec2 = url.trim_end_matches('/').to_string();
    }
    let mut up = Upload::new(&args.file, &name, &description, &region, endpoints, &found.credentials);
    up.jobs = args.jobs.max(1);
    up.poll_interval = Duration::from_secs_f64(args.poll_interval.clamp(0.05, 600.0));
    let bars = Bars::new();
    let out = aws::upload(&berth_cloud::api::client(), &up, &bars)?;
    let summary = format!(
        "{} {} ({}) in {} from snapshot {}: {} blocks sent, {} zero blocks skipped",
        if out.reused { "found" } else { "registered" },
        out.image_id,
        out.name,
        out.region,
        out.snapshot_id,
        out.blocks_sent,
        out.zero_blocks_skipped
    );
    print_result(args.json, &out, &summary)
}

/// `NAME` of `NAME.aws.raw` (or of any file, its name without the last extension).
fn default_name(file: &std::path::Path) -> anyhow::Result<String> {
    let base = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = base.strip_suffix(".aws.raw").or_else(|| base.rsplit_once('.').map(|(n, _)| n)).unwrap_or(base);
    if name.is_empty() {
        anyhow::bail!("{}: no AMI name in the file's name: give --name", file.display());
    }
    Ok(name.to_string())
}
