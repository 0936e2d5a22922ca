//! `berth upload aws|gce|azure`: a built artifact to a bootable cloud image, straight to each
//! cloud's API. The work is berth-cloud's; this module owns the command line, the progress bars
//! and the output (a summary, or `--json`).

mod aws;
mod azure;
mod gce;

use std::io::IsTerminal;
use std::sync::Mutex;

use clap::Subcommand;
use indicatif::ProgressBar;

/// Which cloud to upload to.
#[derive(Debug, Subcommand)]
pub enum UploadCommand {
    /// Upload the `aws` artifact as an EBS snapshot and register an AMI from it.
    #[command(after_help = aws::AFTER_HELP)]
    Aws(aws::AwsArgs),
    /// Upload the `gce` tarball to a GCS bucket and create a Compute Engine image from it.
    #[command(after_help = gce::AFTER_HELP)]
    Gce(gce::GceArgs),
    /// Upload the `azure` VHD as a page blob and, with a subscription, create a managed image.
    #[command(after_help = azure::AFTER_HELP)]
    Azure(azure::AzureArgs),
}

/// Runs the upload.
pub fn run(cmd: UploadCommand) -> anyhow::Result<()> {
    match cmd {
        UploadCommand::Aws(a) => aws::run(a),
        UploadCommand::Gce(a) => gce::run(a),
        UploadCommand::Azure(a) => azure::run(a),
    }
}

/// Prints the result: `value` as pretty JSON with `--json`, else its summary.
fn print_result<T: serde::Serialize>(json: bool, value: &T, summary: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{summary}");
    }
    Ok(())
}

/// Progress on stderr: a bar with bytes, throughput and ETA per transfer, notes above it. Hidden
/// when stderr is not a terminal (notes are then plain lines), so logs stay readable.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
}

impl Bars {
    /// Bars on stderr when it is a terminal.
    pub fn new() -> Bars {
        Bars { bar: Mutex::new(None), tty: std::io::stderr().is_terminal() }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl berth_cloud::Progress for Bars {
    fn start(&self, what: &str, total: u64) {
        let bar = berth_builder::publish::progress_bar(self.tty, total, what.to_string());
        if !self.tty {
            eprintln!("{what}: {} bytes", total);
        }
        if let Some(old) = self.current().replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.current() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current().take() {
            bar.finish();
        }
    }

    fn note(&self, line: &str) {
        match &*self.current() {
            Some(bar) if self.tty => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}
