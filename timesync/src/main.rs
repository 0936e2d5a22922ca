//! `berth-timesync`: sets the clock from NTP servers (SNTP) and keeps it set; runs as
//! `berth-timesync.service`. See the library's documentation for the parts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use berth_release::Timestamp;
use berth_release::time::format_duration;
use berth_timesync::client::{self, Plan, Round};
use berth_timesync::clock;
use berth_timesync::config::Config;
use berth_timesync::status::{self, Synchronized};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth-timesync",
    version,
    about = "Berth's SNTP client: sets the clock from NTP servers and records that it did",
    long_about = "Berth's SNTP client (RFC 4330): asks the configured NTP servers, takes the sample with the \
                  lowest delay, steps the clock when it is off by more than 1 s and slews it otherwise, and \
                  records the synchronisation in /run/berth/timesync/synchronized, which the update agent \
                  waits for before it judges expiry and rollouts.\n\nConfiguration: \
                  /usr/lib/berth/timesync.toml (the image's), overridden key by key by /etc/berth/timesync.toml.",
    after_help = "Examples:\n  berth-timesync status                  the last synchronisation\n  \
                  berth-timesync query pool.ntp.org      ask a server, change nothing\n  \
                  berth-timesync once                    synchronise now"
)]
struct Cli {
    /// Read the configuration and write the status under this directory instead of `/`.
    #[arg(long, global = true, default_value = "/", hide = true)]
    root: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Synchronise now and then every `interval` (the service; the default).
    Daemon,
    /// Synchronise once and exit (non-zero when no server answered).
    Once {
        /// Measure and record, but leave the clock alone.
        #[arg(long)]
        dry_run: bool,
        /// Ask these servers instead of the configured ones.
        servers: Vec<String>,
    },
    /// Ask servers and print what each sample says; changes nothing.
    Query {
        /// `host` or `host:port`; the configured servers when none is given.
        servers: Vec<String>,
    },
    /// Print the last synchronisation (the status file) and the clock floor.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-timesync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let root = cli.root.as_path();
    match cli.command.unwrap_or(Command::Daemon) {
        Command::Daemon => daemon(root),
        Command::Once { dry_run, servers } => {
            let mut config = Config::load(root)?;
            if !servers.is_empty() {
                config.servers = servers;
            }
            if !dry_run {
                raise_to_floor(root);
            }
            match sync(root, &config, dry_run) {
                Ok(msg) => {
                    println!("{msg}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("berth-timesync: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Query { servers } => {
            let servers = if servers.is_empty() { Config::load(root)?.servers } else { servers };
            let round = client::measure(&servers, Plan::new(Config::default().samples));
            for s in &round.samples {
                println!(
                    "{} ({}): offset {:+.6} s, delay {:.6} s, stratum {}",
                    s.name,
                    s.addr,
                    seconds(s.exchange.offset_ns),
                    seconds(s.exchange.delay_ns),
                    s.exchange.stratum
                );
            }
            for e in &round.errors {
                println!("{e}");
            }
            Ok(if round.samples.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Status => {
            match berth_timesync::status::clock_synchronized_at(root, SystemTime::now()) {
                Ok(s) => println!(
                    "synchronised at {} from {} (offset {:+.6} s, delay {:.6} s, stratum {}, {})",
                    s.time, s.server, s.offset_seconds, s.delay_seconds, s.stratum, s.adjustment
                ),
                Err(e) => println!("not synchronised: {e}"),
            }
            match status::clock_floor(root) {
                Some(f) => println!("clock floor (image build time): {f}"),
                None => println!("clock floor: none ({} is missing)", root.join(status::CLOCK_EPOCH).display()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn seconds(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// A clock before the image's build time is wrong for sure (no RTC battery, a reset RTC):
/// it is moved up to the build time at once, before any server answers.
fn raise_to_floor(root: &Path) {
    let Some(floor) = status::clock_floor(root) else { return };
    let now = Timestamp::now();
    if now < floor {
        match clock::set(status::system_time(floor)) {
            Ok(()) => println!("the clock read {now}, before this image was built; set to {floor}"),
            Err(e) => println!("the clock reads {now}, before this image was built ({floor}); setting it: {e}"),
        }
    }
}

/// One synchronisation: measure, check, set (unless `dry_run`), record. Returns what it did.
fn sync(root: &Path, config: &Config, dry_run: bool) -> anyhow::Result<String> {
    if config.servers.is_empty() {
        let s = Synchronized {
            time: Timestamp::now(),
            server: "none".into(),
            offset_seconds: 0.0,
            delay_seconds: 0.0,
            stratum: 0,
            adjustment: "none".into(),
        };
        status::write(root, &s).context("writing the status file")?;
        return Ok(format!("servers = []: no network time; the clock is trusted as set ({})", s.time));
    }
    let round = client::measure(&config.servers, Plan::new(config.samples));
    let best = round.best().cloned().with_context(|| failure(&round))?;
    let x = best.exchange;
    // A server may not move the clock before the image's build time.
    if let Some(floor) = status::clock_floor(root) {
        let would = Timestamp::now().0 + x.offset_ns.div_euclid(1_000_000_000);
        anyhow::ensure!(
            would >= floor.0,
            "{} ({}) says it is {}, before this image was built ({floor}); not believed",
            best.name,
            best.addr,
            Timestamp(would)
        );
    }
    let adjustment = if dry_run {
        "none".to_string()
    } else {
        clock::adjust(x.offset_ns).context("setting the clock")?.name().to_string()
    };
    let s = Synchronized {
        time: Timestamp::now(),
        server: format!("{} ({})", best.name, best.addr),
        offset_seconds: seconds(x.offset_ns),
        delay_seconds: seconds(x.delay_ns),
        stratum: x.stratum,
        adjustment: adjustment.clone(),
    };
    status::write(root, &s).context("writing the status file")?;
    let verb = match adjustment.as_str() {
        "step" => "stepped",
        "slew" => "slewing",
        _ => "not changed (dry run)",
    };
    Ok(format!(
        "clock {verb}: offset {:+.6} s from {} (stratum {}, delay {:.1} ms; {} of {} samples good)",
        s.offset_seconds,
        s.server,
        s.stratum,
        s.delay_seconds * 1000.0,
        round.samples.len(),
        round.samples.len() + round.errors.len()
    ))
}

/// Every error of a round that gave no sample, on one line.
fn failure(round: &Round) -> String {
    let mut lines: Vec<String> = round.errors.iter().map(ToString::to_string).collect();
    lines.dedup();
    if lines.is_empty() {
        "no server gave a usable sample".into()
    } else {
        format!("no server gave a usable sample: {}", lines.join("; "))
    }
}

/// How long the daemon waits after a failed round: doubling from 5 s, at most 5 minutes (and
/// never more than the interval).
fn backoff(failures: u32, interval: Duration) -> Duration {
    let d = Duration::from_secs(5).saturating_mul(1 << failures.min(10));
    d.min(Duration::from_secs(300)).min(interval)
}

/// Tells the service manager the service is up (`Type=notify`), if it listens.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(b"READY=1", &a));
    if let Err(e) = sent {
        println!("notifying the service manager on {path}: {e}");
    }
}

fn daemon(root: &Path) -> anyhow::Result<ExitCode> {
    raise_to_floor(root);
    let config = Config::load(root)?;
    println!(
        "berth-timesync {}: servers {}; every {}",
        env!("CARGO_PKG_VERSION"),
        if config.servers.is_empty() { "none".to_string() } else { config.servers.join(", ") },
        format_duration(config.interval)
    );
    if config.servers.is_empty() {
        let msg = sync(root, &config, false)?;
        println!("{msg}");
        notify_ready();
        // Stays (idle) rather than exiting: the unit is active while the clock is trusted.
        loop {
            std::thread::sleep(Duration::from_secs(86_400));
        }
    }
    // Ready once the clock is at least the floor; the boot does not wait for a server.
    notify_ready();
    let mut failures = 0u32;
    loop {
        match sync(root, &config, false) {
            Ok(msg) => {
                println!("{msg}");
                failures = 0;
                std::thread::sleep(config.interval);
            }
            Err(e) => {
                let wait = backoff(failures, config.interval);
                println!("{e:#}; trying again in {}", format_duration(wait));
                failures = failures.saturating_add(1);
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(0, hour), Duration::from_secs(5));
        assert_eq!(backoff(1, hour), Duration::from_secs(10));
        assert_eq!(backoff(30, hour), Duration::from_secs(300));
        assert_eq!(backoff(30, Duration::from_secs(120)), Duration::from_secs(120));
    }
}
