//! `berth-update`: Berth's on-host update agent (DESIGN.md §4).
//!
//! It owns the update flow on a host: it checks the signed channel, streams a new image into
//! the passive slot, switches slots through berth-slot's transitions, reboots as the strategy
//! allows, marks a healthy boot good and notices (and remembers) a rollback. The release
//! contract is berth-release's; the slot contract is berth-slot's. Built as a static
//! `x86_64-unknown-linux-musl` binary; runs as `berth-update.service` (the daemon) and
//! `berth-mark-good.service` (after `boot-complete.target`).

mod agent;
mod clock;
mod disk;
mod esp;
mod fleetlock;
mod http;
mod pipeline;
mod state;
mod status;
mod trust;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use berth_release::Timestamp;
use berth_release::config::Strategy;
use clap::{Parser, Subcommand};

use crate::agent::{Agent, Found};
use crate::state::{LOCK_FILE, Phase, State};

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

/// The error and its causes on one line, skipping a cause its parent already says.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
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

/// Holds the agent's lock (waiting for it) while alive: for the daemon, whose only rival is a
/// command that gives up at once.
fn lock() -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    state::lock_file(LOCK_FILE, true)?.context("the lock was not taken")
}

/// The agent's lock for a command someone waits for: taken at once, or an error saying what
/// the daemon is doing (a download can take long; a command must not hang behind it).
fn lock_now(agent: &Agent) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    match state::lock_file(LOCK_FILE, false)? {
        Some(l) => Ok(l),
        None => anyhow::bail!("{}; try again when it is done (`berth-update status` shows it)", busy(agent)),
    }
}

/// What the holder of the lock is doing, as the state file says.
fn busy(agent: &Agent) -> String {
    let st = agent.load_state();
    match (&st.state, &st.download) {
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
    match command {
        Command::Status { json } => {
            // No lock: the state file is replaced whole (rename), so it reads consistently.
            let agent = Agent::open()?;
            let st = agent.load_state();
            let busy = state::lock_file(LOCK_FILE, false).ok().is_some_and(|l| l.is_none()).then(|| busy(&agent));
            status::print(&agent, &st, busy.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let agent = Agent::open()?;
            let _lock = lock_now(&agent)?;
            let mut st = agent.load_state();
            let r = agent.check(&mut st, false);
            let out = match r {
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
                    st.error(&e);
                    st.last_check = Some(Timestamp::now());
                    Err(e)
                }
            };
            agent.save(&st);
            out
        }
        Command::Apply { force, no_reboot } => {
            let agent = Agent::open()?;
            let _lock = lock_now(&agent)?;
            let mut st = agent.load_state();
            st.paused = None;
            let r = apply(&agent, &mut st, force, !no_reboot);
            if let Err(e) = &r {
                st.error(e);
                st.rest();
            }
            agent.save(&st);
            r.map(|msg| {
                println!("{msg}");
                ExitCode::SUCCESS
            })
        }
        Command::Rollback => {
            let agent = Agent::open()?;
            let _lock = lock_now(&agent)?;
            let mut st = agent.load_state();
            st.drop_stale_available(&agent.version);
            println!("{}", agent.rollback(&mut st)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::MarkGood => {
            let agent = Agent::open()?;
            // A service, not a person: it waits (the daemon does not stage while on trial).
            let _lock = lock()?;
            let mut st = agent.load_state();
            let msg = agent.mark_good(&mut st)?;
            agent.save(&st);
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon => daemon(),
    }
}

/// Check, and stage what is found; returns what happened.
fn apply(agent: &Agent, st: &mut State, force: bool, reboot: bool) -> anyhow::Result<String> {
    // A failed update not yet recorded (the record could not be saved) must be recorded
    // before anything is staged over it.
    agent.notice_rollback(st)?;
    st.state = Phase::Checking;
    let (_, found) = agent.check(st, force)?;
    let release = match found {
        Found::UpToDate => {
            st.rest();
            return Ok(format!("up to date: {} is the newest for this host", agent.version));
        }
        Found::Later { version, from } => {
            st.rest();
            return Ok(format!("{version} is rolling out; this host's turn comes at {from}"));
        }
        Found::Update(r) => r,
    };
    if force || !agent.already_staged(st, &release) {
        let url = agent.config.channel.clone().unwrap_or_default();
        agent.stage(st, &url, &release, force)?;
    }
    if reboot { agent.maybe_reboot(st, Timestamp::now()) } else { Ok(format!("{} staged", release.version)) }
}

/// The long-running agent.
fn daemon() -> anyhow::Result<ExitCode> {
    let agent = Agent::open()?;
    println!(
        "berth-update {}: running {} from {}; channel {}; strategy {}; every {} (+ up to {} jitter)",
        env!("CARGO_PKG_VERSION"),
        agent.version,
        agent.disk.booted.label(),
        agent.config.channel.as_deref().unwrap_or("(none: checks are off)"),
        agent.config.strategy.name(),
        berth_release::time::format_duration(agent.config.interval),
        berth_release::time::format_duration(agent.config.jitter),
    );
    {
        let _lock = lock()?;
        let mut st = agent.load_state();
        // A run cut short (a crash, a power cut) left its phase behind.
        st.paused = None;
        if matches!(st.state, Phase::Checking | Phase::Downloading | Phase::Rebooting) {
            st.state = Phase::Idle;
        }
        st.rest();
        // The update that was available is the one running now.
        st.drop_stale_available(&agent.version);
        if let Err(e) = agent.notice_rollback(&mut st) {
            st.error(&e);
        }
        agent.save(&st);
    }
    loop {
        let wait = cycle(&agent);
        std::thread::sleep(wait);
    }
}

/// Whether this run of the daemon has reported steady state to the FleetLock server.
static STEADY: AtomicBool = AtomicBool::new(false);
/// How soon a staged host asks for the fleet's reboot lock again.
const FLEETLOCK_RETRY: Duration = Duration::from_secs(300);

/// One check (and stage, and reboot); returns how long to sleep.
fn cycle(agent: &Agent) -> Duration {
    let jitter = rand::random_range(0..=agent.config.jitter.as_millis().min(u128::from(u64::MAX)) as u64);
    let mut wait = agent.config.interval + Duration::from_millis(jitter);
    if agent.config.channel.is_none() {
        return wait;
    }
    let Ok(_lock) = lock().map_err(|e| println!("error: {e:#}")) else { return wait };
    let mut st = agent.load_state();
    if let Err(e) = agent.notice_rollback(&mut st) {
        // The rollback is not recorded: nothing else this cycle (a stage would clear the
        // failed slot and take the same version again).
        st.error(&e);
        agent.save(&st);
        return wait;
    }
    let on_trial = agent.disk.slots().map(|s| !s.get(agent.disk.booted).successful).unwrap_or(true);
    if on_trial {
        println!("{} is on trial: no update checks until it is marked good", agent.disk.booted.label());
        agent.save(&st);
        return wait;
    }
    // A good slot runs: a reboot lock taken before the reboot that led here is given back
    // (once per run of the daemon, which is once per boot, until the server takes it).
    if !STEADY.load(Ordering::Relaxed)
        && let Some(r) = agent.fleet_steady_state()
    {
        match r {
            Ok(()) => STEADY.store(true, Ordering::Relaxed),
            Err(why) => st.error(&anyhow::anyhow!("fleetlock: {why}")),
        }
    }
    match apply(agent, &mut st, false, true) {
        Ok(msg) => println!("{msg}"),
        Err(e) => {
            // The clock is set within seconds of the network coming up: ask again soon.
            if e.downcast_ref::<clock::ClockNotSet>().is_some() {
                wait = wait.min(clock::CLOCK_RETRY);
            }
            st.error(&e);
            st.rest();
        }
    }
    // A window strategy wakes up for its window; a host waiting for the fleet's reboot lock
    // asks again within minutes.
    if st.staged.is_some() {
        match &agent.config.strategy {
            Strategy::Window(w) => {
                let now = Timestamp::now();
                let open = w.next_open(now);
                wait = wait.min(Duration::from_secs(u64::try_from(open.0 - now.0).unwrap_or(0).max(1)));
            }
            Strategy::FleetLock(_) => wait = wait.min(FLEETLOCK_RETRY),
            _ => {}
        }
    }
    agent.save(&st);
    wait
}
