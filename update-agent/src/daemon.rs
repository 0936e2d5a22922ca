//! The long-running agent (`berth-update daemon`, docs/design.md §4): settle what a cut-short run
//! left, then every interval (plus jitter) notice a rollback, give the fleet's reboot lock back
//! once, check, stage and reboot as the strategy allows; and [`apply`], the one check-stage-
//! reboot step the daemon and `berth-update apply` share. With a fleet server configured, the
//! daemon reports to it at its start and at the end of every cycle, and [`apply`] when an update
//! is staged (crate::fleet_report; best effort).

use std::process::ExitCode;
use std::time::Duration;

use berth_release::Timestamp;
use berth_release::config::Strategy;

use crate::agent::{Agent, Found};
use crate::state;

/// How soon a staged host asks for the fleet's reboot lock again.
const FLEETLOCK_RETRY: Duration = Duration::from_secs(300);

/// Check, and stage what is found; returns what happened. The caller holds the agent's lock.
pub fn apply(agent: &mut Agent, force: bool, reboot: bool) -> anyhow::Result<String> {
    // A failed update not yet recorded (the record could not be saved) must be recorded
    // before anything is staged over it.
    agent.notice_rollback()?;
    agent.state.begin_check()?;
    let (_, found) = agent.check(force)?;
    let release = match found {
        Found::UpToDate => {
            agent.state.rest();
            return Ok(format!("up to date: {} is the newest for this host", agent.version));
        }
        Found::Later { version, from } => {
            agent.state.rest();
            return Ok(format!("{version} is rolling out; this host's turn comes at {from}"));
        }
        Found::Update(r) => r,
    };
    if force || !agent.already_staged(&release) {
        let url = agent.config.channel.clone().unwrap_or_default();
        agent.stage(&url, &release, force)?;
        crate::fleet_report::send(agent);
    } else {
        // It waits in the passive slot already: back to staged.
        agent.state.rest();
    }
    if reboot { agent.maybe_reboot(Timestamp::now()) } else { Ok(format!("{} staged", release.version)) }
}

/// The daemon: the agent, and what this run of it has done that the state file does not say.
pub struct Daemon {
    agent: Agent,
    /// Whether this run has reported steady state to the FleetLock server (once per run, which
    /// is once per boot, until the server takes it).
    steady: bool,
}

impl Daemon {
    /// The daemon of `agent`.
    pub fn new(agent: Agent) -> Daemon {
        Daemon { agent, steady: false }
    }

    /// Runs for ever (an error only when the start fails).
    pub fn run(mut self) -> anyhow::Result<ExitCode> {
        let agent = &mut self.agent;
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
            let _lock = state::wait_for_lock()?;
            // A run cut short (a crash, a power cut) left its phase behind.
            agent.reload_locked();
            // The update that was available is the one running now.
            agent.state.drop_stale_available(&agent.version);
            if let Err(e) = agent.notice_rollback() {
                agent.state.error(&e);
            }
            agent.save();
        }
        crate::fleet_report::send(agent);
        loop {
            let wait = self.cycle();
            std::thread::sleep(wait);
        }
    }

    /// One check (and stage, and reboot), then the periodic report (whatever the cycle did: a
    /// host that stops reporting is shown as silent); returns how long to sleep.
    fn cycle(&mut self) -> Duration {
        let wait = self.check_cycle();
        crate::fleet_report::send(&self.agent);
        wait
    }

    /// One check (and stage, and reboot); returns how long to sleep.
    fn check_cycle(&mut self) -> Duration {
        let agent = &mut self.agent;
        let jitter = rand::random_range(0..=agent.config.jitter.as_millis().min(u128::from(u64::MAX)) as u64);
        let mut wait = agent.config.interval + Duration::from_millis(jitter);
        if agent.config.channel.is_none() {
            return wait;
        }
        let Ok(_lock) = state::wait_for_lock().map_err(|e| println!("error: {e:#}")) else { return wait };
        agent.reload_locked();
        if let Err(e) = agent.notice_rollback() {
            // The rollback is not recorded: nothing else this cycle (a stage would clear the
            // failed slot and take the same version again).
            agent.state.error(&e);
            agent.save();
            return wait;
        }
        let on_trial = agent.slots().map(|s| !s.get(agent.disk.booted).successful).unwrap_or(true);
        if on_trial {
            println!("{} is on trial: no update checks until it is marked good", agent.disk.booted.label());
            agent.save();
            return wait;
        }
        // A good slot runs: a reboot lock taken before the reboot that led here is given back
        // (once per run of the daemon, which is once per boot, until the server takes it).
        if !self.steady
            && let Some(r) = agent.fleet_steady_state()
        {
            match r {
                Ok(()) => self.steady = true,
                Err(why) => agent.state.error(&anyhow::anyhow!("fleetlock: {why}")),
            }
        }
        match apply(agent, false, true) {
            Ok(msg) => println!("{msg}"),
            Err(e) => {
                // The clock is set within seconds of the network coming up: ask again soon.
                if e.downcast_ref::<crate::clock::ClockNotSet>().is_some() {
                    wait = wait.min(crate::clock::CLOCK_RETRY);
                }
                agent.state.error(&e);
                agent.state.rest();
            }
        }
        // A window strategy wakes up for its window; a host waiting for the fleet's reboot lock
        // asks again within minutes.
        if agent.state.staged.is_some() {
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
        agent.save();
        wait
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use berth_release::config::FleetLock;
    use berth_release::fleet::ReportRequest;
    use berth_slot::{Slot, Slots};
    use berth_testkit::{Response, Server};

    use super::*;
    use crate::disk::{BootDisk, MemorySlots};
    use crate::state::RolledBack;

    /// Every cycle ends with a report, whatever it did (here: no channel, nothing to check), so
    /// the server can tell a live host from a silent one; what changed in between is in the next.
    #[test]
    fn every_cycle_reports_and_carries_what_changed() {
        let server = Server::start(|_| Response::status(200).into()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Box::new(MemorySlots(Cell::new(Slots::FRESH.mark_good(Slot::A).unwrap())));
        let disk = BootDisk::image(dir.path().join("no-disk.img"), Slot::A);
        let mut agent = Agent::for_test_with(store, disk, "1.0.0", &dir.path().join("state"));
        agent.config.interval = Duration::from_secs(5);
        agent.config.jitter = Duration::ZERO;
        agent.config.fleet =
            Some(FleetLock { url: server.url(), group: "workers".into(), token_file: None, report: true });
        let mut daemon = Daemon::new(agent);
        assert_eq!(daemon.cycle(), Duration::from_secs(5));
        daemon.agent.state.rolled_back.push(RolledBack {
            version: "1.1.0".into(),
            slot: Slot::B,
            at: Timestamp(1_796_000_000),
            manual: false,
        });
        daemon.cycle();
        let reports: Vec<ReportRequest> =
            server.requests().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
        assert_eq!(reports.len(), 2, "one per cycle");
        for r in &reports {
            assert_eq!((r.report.state.as_str(), r.report.version.as_str()), ("idle", "1.0.0"));
            assert_eq!((r.report.interval_seconds, r.report.jitter_seconds), (5, 0));
        }
        assert!(reports[0].report.rolled_back.is_empty());
        let rb = &reports[1].report.rolled_back;
        assert_eq!((rb.len(), rb[0].version.as_str(), rb[0].slot.as_str()), (1, "1.1.0", "b"));

        // A fleet server that is gone costs the cycle nothing but a log line.
        daemon.agent.config.fleet.as_mut().unwrap().url = format!("http://127.0.0.1:{}", berth_testkit::dead_port());
        assert_eq!(daemon.cycle(), Duration::from_secs(5));
    }
}
