//! `berth-update`: Berth's on-host update agent (docs/design.md §4).
//!
//! It owns the update flow on a host: it checks the signed channel, streams a new image into
//! the passive slot, switches slots through berth-slot's transitions, reboots as the strategy
//! allows, marks a healthy boot good and notices (and remembers) a rollback. The release
//! contract is berth-release's; the slot contract is berth-slot's. Built as a static
//! `x86_64-unknown-linux-musl` binary; runs as `berth-update.service` (the daemon) and
//! `berth-mark-good.service` (after `boot-complete.target`).

mod agent;
mod clock;
mod daemon;
mod disk;
mod esp;
#[cfg(feature = "failpoints")]
mod failpoints;
mod fleet_report;
mod fleetlock;
mod http;
mod pipeline;
mod state;
mod status;
mod trust;

use std::process::ExitCode;

use berth_release::Timestamp;
use clap::{Parser, Subcommand};

use crate::agent::{Agent, Found};
use crate::state::{LOCK_FILE, Phase};

#[derive(Parser)]
#[command(
    name = "berth-update",
    version,
    about = "Berth's update agent: signed A/B updates with automatic rollback",
    long_about = "Berth's update agent: checks the signed release channel, streams a new image into the passive \
                  slot, reboots into it as the strategy allows, marks a healthy boot good, and notices a \
                  rollback.\n\nConfiguration: /usr/lib/berth/update.toml (the image's), overridden key by key by \
                  /etc/berth/update.toml. State: /var/lib/berth/update/state.json.",
    after_help = "Examples:\n  berth-update status            what runs, what is staged, the last check and error\n  \
                  berth-update check             is there an update for this host? (changes nothing on disk)\n  \
                  berth-update apply             stage it now, then reboot as the strategy says\n  \
                  berth-update rollback          boot the other (good) slot next"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the slots, their versions and attributes, the agent's state, last check and error.
    Status {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fetch and verify the channel's index and say what it offers this host.
    Check,
    /// Check, stage the offered update into the passive slot, then reboot as the strategy says.
    Apply {
        /// Also take a version that rolled back here before, or one the rollout has not reached;
        /// stage it again even when it is staged already.
        #[arg(long)]
        force: bool,
        /// Stage only; do not reboot whatever the strategy.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Boot the other slot next (it must have booted to health before).
    Rollback,
    /// Mark the booted slot good (run by berth-mark-good.service after boot-complete.target).
    MarkGood,
    /// Check periodically (interval plus jitter), stage and reboot as configured.
    Daemon,
}

/// The error and its causes on one line (Berth's one error-chain printer).
pub fn one_line(e: &anyhow::Error) -> String {
    berth_error_line::one_line(e.as_ref())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-update: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The agent's lock for a command someone waits for: taken at once (and the state read again
/// under it), or an error saying what the daemon is doing (a download can take long; a command
/// must not hang behind it).
fn lock_now(agent: &mut Agent) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    match state::lock_file(LOCK_FILE, false)? {
        Some(l) => {
            agent.reload_locked();
            Ok(l)
        }
        None => anyhow::bail!("{}; try again when it is done (`berth-update status` shows it)", busy(agent)),
    }
}

/// What the holder of the lock is doing, as the state file says.
fn busy(agent: &mut Agent) -> String {
    agent.reload();
    let st = &agent.state;
    match (st.phase(), &st.download) {
        (Phase::Downloading, Some(d)) => format!(
            "the daemon is busy (staging {}: {} of {} MiB written)",
            d.version,
            d.written >> 20,
            d.image_size >> 20
        ),
        (Phase::Checking, _) => "the daemon is busy (checking the channel)".into(),
        _ => "the daemon is busy (another berth-update holds its lock)".into(),
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let network = matches!(command, Command::Check | Command::Apply { .. } | Command::Daemon);
    let mut agent = Agent::open(network)?;
    match command {
        Command::Status { json } => {
            // No lock: the state file is replaced whole (rename), so it reads consistently.
            let busy = state::lock_file(LOCK_FILE, false).ok().is_some_and(|l| l.is_none()).then(|| busy(&mut agent));
            status::print(&agent, busy.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let _lock = lock_now(&mut agent)?;
            let out = match agent.check(false) {
                Ok((index, found)) => {
                    println!(
                        "{}: sequence {}, expires {}",
                        agent.config.channel.as_deref().unwrap_or("?"),
                        index.sequence,
                        index.expires
                    );
                    match found {
                        Found::UpToDate => println!("up to date: {} is the newest for this host", agent.version),
                        Found::Update(r) => println!("update available: {} (running {})", r.version, agent.version),
                        Found::Later { version, from } => {
                            println!("{version} is rolling out; this host's turn comes at {from}")
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    agent.state.error(&e);
                    agent.state.last_check = Some(Timestamp::now());
                    Err(e)
                }
            };
            agent.save();
            out
        }
        Command::Apply { force, no_reboot } => {
            let _lock = lock_now(&mut agent)?;
            let r = daemon::apply(&mut agent, force, !no_reboot);
            if let Err(e) = &r {
                agent.state.error(e);
                agent.state.rest();
            }
            agent.save();
            r.map(|msg| {
                println!("{msg}");
                ExitCode::SUCCESS
            })
        }
        Command::Rollback => {
            let _lock = lock_now(&mut agent)?;
            let version = agent.version.clone();
            agent.state.drop_stale_available(&version);
            println!("{}", agent.rollback()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::MarkGood => {
            // A service, not a person: it waits (the daemon does not stage while on trial).
            let _lock = state::wait_for_lock()?;
            agent.reload_locked();
            let msg = agent.mark_good()?;
            agent.save();
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon => daemon::Daemon::new(agent).run(),
    }
}
