//! `berth-metadata`: the cloud metadata client, run once per boot as `berth-metadata.service`
//! (and `berth-azure-ready.service` on Azure). See the library's documentation for the parts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_metadata::azure::wireserver::{self, Ready, WireServer};
use berth_metadata::platform::{self, DMI_DIR, Detected, How, PLATFORM_RUN_FILE, Platform};
use berth_metadata::provider::{self, Log};
use berth_metadata::record::{InstanceRecord, Outcome, RECORD_PATH};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-metadata",
    version,
    about = "Berth's cloud metadata client: which platform this is, what the cloud says about the instance, \
             and Azure's ready report",
    long_about = "Berth's cloud metadata client.\n\nAt boot, berth-init decides the platform (the word in \
                  berth/platform on the ESP, else the SMBIOS strings, else metal) and writes it to \
                  /run/berth/platform. On a cloud, `berth-metadata fetch` (berth-metadata.service, before \
                  provisioning) asks its metadata service (AWS IMDSv2, the GCE metadata server, Azure IMDS and \
                  the provisioning CD) for the instance id, hostname, SSH keys and user data, and writes them \
                  to /run/berth/metadata/instance.toml, which berth-init maps onto the provisioning document: \
                  the user data is the document, the keys go to `core` unless the document names users, the \
                  hostname is used unless the document sets one, and a new instance id provisions again.\n\n\
                  Requests are retried (1 s, doubling, at most 5 s apart) within a deadline; a field the \
                  instance does not have never fails the fetch, and a service that never answers is logged \
                  and the boot goes on with what the image has.\n\nOn Azure, `berth-metadata report-ready` \
                  (after boot-complete.target) tells the WireServer the VM is up, once per instance.",
    after_help = "Examples:\n  berth-metadata platform                 the platform and how it was decided\n  \
                  berth-metadata fetch                    ask the metadata service, write the record\n  \
                  berth-metadata fetch --out /tmp/i.toml  write the record elsewhere\n  \
                  berth-metadata report-ready             Azure: report ready (once per instance)"
)]
struct Cli {
    /// The file berth-init writes the platform to at boot.
    #[arg(long, global = true, default_value = PLATFORM_RUN_FILE, hide = true)]
    platform_file: PathBuf,
    /// Where the SMBIOS strings are.
    #[arg(long, global = true, default_value = DMI_DIR, hide = true)]
    dmi_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the platform (one word on the first line) and how it was decided.
    Platform,
    /// Ask the cloud's metadata service and write the instance record (a `notacloud` record on
    /// metal, QEMU, VirtualBox and Vagrant).
    Fetch {
        /// Give up on the service after this many seconds (the boot goes on without it).
        #[arg(long, value_name = "SECS", default_value_t = provider::DEFAULT_DEADLINE.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        deadline: u64,
        /// Write the record here.
        #[arg(long, value_name = "PATH", default_value = RECORD_PATH)]
        out: PathBuf,
    },
    /// Azure: report ready to the WireServer, unless it was done for this instance (the
    /// instance id from the record, remembered in /var/lib/berth/azure-ready). Elsewhere: nothing.
    ReportReady {
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = wireserver::DEFAULT_DEADLINE.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=3600))]
        deadline: u64,
        /// The instance record to take the instance id from.
        #[arg(long, value_name = "PATH", default_value = RECORD_PATH, hide = true)]
        record: PathBuf,
        /// Where the report is remembered.
        #[arg(long, value_name = "PATH", default_value = wireserver::READY_MARKER, hide = true)]
        marker: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-metadata: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log() -> Log {
    Arc::new(|line: &str| eprintln!("berth-metadata: {line}"))
}

/// The platform berth-init decided at boot, else SMBIOS's (or metal).
fn platform(run_file: &Path, dmi_dir: &Path) -> anyhow::Result<Detected> {
    match platform::read_run_file(run_file).map_err(anyhow::Error::msg)? {
        // berth-init decided; the cross-check with SMBIOS is reported again for this log.
        Some(word) => Ok(platform::detect(Some(word.name()), dmi_dir)),
        None => Ok(platform::detect(None, dmi_dir)),
    }
}

fn describe(d: &Detected, run_file: &Path) -> String {
    match d.how {
        How::EspWord => format!("{} (as berth-init decided at boot: {})", d.platform, run_file.display()),
        _ => format!("{} (from {}; {} does not exist)", d.platform, d.how, run_file.display()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let detected = platform(&cli.platform_file, &cli.dmi_dir)?;
    match cli.command {
        Command::Platform => {
            println!("{}", detected.platform);
            match detected.how {
                How::EspWord => println!("decided by berth-init at boot ({})", cli.platform_file.display()),
                how => println!("decided by {how} ({} does not exist)", cli.platform_file.display()),
            }
            let smbios = platform::smbios_platform(&cli.dmi_dir).map_or("nothing", Platform::name);
            println!("SMBIOS says: {smbios}");
            if let Some(m) = &detected.mismatch {
                println!("warning: {m}");
            }
            Ok(())
        }
        Command::Fetch { deadline, out } => fetch(&detected, &cli.platform_file, Duration::from_secs(deadline), &out),
        Command::ReportReady { deadline, record, marker } => {
            report_ready(&detected, Duration::from_secs(deadline), &record, &marker)
        }
    }
}

fn fetch(detected: &Detected, run_file: &Path, deadline: Duration, out: &Path) -> anyhow::Result<()> {
    let log = log();
    log(&format!("platform {}", describe(detected, run_file)));
    if let Some(m) = &detected.mismatch {
        log(&format!("WARNING: {m}"));
    }
    let record = if detected.platform.is_cloud() {
        log(&format!("asking {}'s metadata service (deadline {} s)", detected.platform, deadline.as_secs()));
        provider::fetch_for(
            detected.platform,
            provider::client(),
            provider::default_retry(),
            Instant::now() + deadline,
            log.clone(),
        )
    } else {
        InstanceRecord::empty(detected.platform.name(), Outcome::NotACloud)
    };
    record.write_atomic(out).with_context(|| "the instance record")?;
    log(&format!("{}; wrote {}", summary(&record), out.display()));
    Ok(())
}

fn summary(r: &InstanceRecord) -> String {
    if r.outcome == Outcome::NotACloud {
        return format!("{}: no metadata service on this platform", r.platform);
    }
    let mut parts = vec![format!("{}: {}", r.platform, r.outcome.as_str())];
    if let Some(id) = &r.instance_id {
        parts.push(format!("instance {id}"));
    }
    if let Some(h) = &r.hostname {
        parts.push(format!("hostname {h}"));
    }
    parts.push(format!("{} SSH key(s)", r.ssh_keys.len()));
    parts.push(match &r.user_data {
        Some(d) => format!("user data {} bytes", d.len()),
        None => "no user data".into(),
    });
    if r.outcome == Outcome::Unreachable {
        parts.push("booting with what the image has".into());
    }
    parts.join(", ")
}

fn report_ready(detected: &Detected, deadline: Duration, record: &Path, marker: &Path) -> anyhow::Result<()> {
    let log = log();
    if detected.platform != Platform::Azure {
        log(&format!("report-ready: nothing to do on {} (only Azure has a ready report)", detected.platform));
        return Ok(());
    }
    let instance_id = match InstanceRecord::read(record) {
        Ok(r) => r.instance_id,
        Err(e) => {
            log(&format!("report-ready: no instance id ({e}); reporting without remembering it"));
            None
        }
    };
    let log2 = log.clone();
    let ws = WireServer::new(provider::client(), provider::default_retry()).marker(marker).log(move |l| log2(l));
    match ws.report_ready(instance_id.as_deref(), Instant::now() + deadline)? {
        Ready::AlreadyReported { .. } => {}
        Ready::Reported { goal_state, .. } => log(&format!(
            "reported Ready to the WireServer (incarnation {}, role instance {})",
            goal_state.incarnation, goal_state.role_instance_id
        )),
    }
    Ok(())
}
