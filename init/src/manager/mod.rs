//! The service manager of stage 2 (docs/design.md §5): runs the units `berth-units` loads, as
//! systemd would, from PID 1's single poll loop (no threads).
//!
//! - Jobs: booting is one transaction (`default.target`, then `boot-complete.target` once
//!   everything of the boot has settled); `berthctl start` plans a transaction of its own. A
//!   unit starts when the units it is ordered after have finished starting (active, failed or
//!   skipped); one whose `Requires=` failed does not start.
//! - Services ([`service`]): the systemd state machine (start-pre, start, start-post, running,
//!   stop, stop-sigterm, stop-sigkill, stop-post, auto-restart), with sd_notify ([`notify`]),
//!   timeouts, `Restart=` and the start limit, KillMode, and one cgroup per unit ([`cgroup`]).
//! - Targets are active as soon as their job runs; `network-online.target` like any other
//!   (it requires `berth-netd.service`, which is ready once DHCP has applied a lease).
//! - Output of every command goes to the [`crate::manager::journal`].
//! - Shutdown stops every active unit in reverse dependency order.

pub mod cgroup;
mod error;
mod exec;
pub(crate) mod journal;
pub mod notify;
mod service;
pub(crate) mod syslog;
pub mod users;

pub use error::JobError;
pub use service::machine::{Outcome, State};

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use service::machine::{Role, ServiceRun};

use berth_units::{HostInfo, LoadState, Loader, UnitSet, UnitType};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::manager::journal::Journal;
use crate::sys::log;

/// Bytes of output kept in memory per unit.
const RING_BYTES: usize = 32 * 1024;

pub const BOOT_COMPLETE: &str = "boot-complete.target";
pub const NETWORK_ONLINE: &str = "network-online.target";
/// What the shutdown stops: the units that conflict with it (systemd's default dependencies).
const SHUTDOWN_TARGET: &str = "shutdown.target";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Start,
    Stop,
}

#[derive(Debug, Clone)]
struct Job {
    unit: String,
    kind: JobKind,
    /// Units whose jobs must finish first.
    after: Vec<String>,
    /// Units this one requires (a start fails when one of them failed).
    requires: Vec<String>,
    /// Has been dispatched (the unit is now starting or stopping).
    running: bool,
}

pub struct Manager {
    loader: Loader,
    set: UnitSet,
    runs: BTreeMap<String, ServiceRun>,
    /// Environment and account of each service's current start.
    launches: BTreeMap<String, service::Launch>,
    jobs: Vec<Job>,
    pids: BTreeMap<i32, (String, Role)>,
    pub journal: Journal,
    notify: Option<notify::NotifySocket>,
    syslog: Option<syslog::Syslog>,
    started: Instant,
    /// Where unit logs are persisted once the boot begins (`None` in tests).
    log_dir: Option<PathBuf>,
    boot_complete: bool,
    /// Why `boot-complete.target` failed (it could not be queued, or its job ended failed).
    boot_failed: Option<String>,
    shutting_down: bool,
    /// Unit names whose ignored directives were logged already.
    warned: BTreeSet<String>,
}

impl Manager {
    /// Loads the units of the boot and prepares cgroups and the notify socket.
    pub fn new(started: Instant) -> Manager {
        for w in cgroup::init() {
            log::line(&w);
        }
        let notify = match notify::NotifySocket::bind() {
            Ok(n) => Some(n),
            Err(e) => {
                log::line(&format!("{e}; Type=notify services will time out"));
                None
            }
        };
        let syslog = match syslog::Syslog::bind() {
            Ok(s) => Some(s),
            Err(e) => {
                log::line(&format!("{e}; syslog(3) messages are lost"));
                None
            }
        };
        let loader = Loader::new("/", HostInfo::detect(std::path::Path::new("/")));
        Manager::with_parts(loader, started, notify, syslog, Some(PathBuf::from("/var/log/berth")))
    }

    fn with_parts(
        loader: Loader,
        started: Instant,
        notify: Option<notify::NotifySocket>,
        syslog: Option<syslog::Syslog>,
        log_dir: Option<PathBuf>,
    ) -> Manager {
        let mut journal = Journal::new(RING_BYTES);
        journal.set_console_echo(true);
        Manager {
            loader,
            set: UnitSet::new(),
            runs: BTreeMap::new(),
            launches: BTreeMap::new(),
            jobs: Vec::new(),
            pids: BTreeMap::new(),
            journal,
            notify,
            syslog,
            started,
            log_dir,
            boot_complete: false,
            boot_failed: None,
            shutting_down: false,
            warned: BTreeSet::new(),
        }
    }

    /// Queues the boot transaction: `default.target`, then `boot-complete.target`, which
    /// waits for every other job of the boot except those ordered after it (such as
    /// `berth-mark-good.service`: `Requires=` and `After=boot-complete.target`), which start
    /// once it is reached and not at all when it failed.
    pub fn boot(&mut self) {
        if let Some(dir) = &self.log_dir
            && let Err(e) = self.journal.persist_to(dir)
        {
            log::line(&format!("unit logs stay in memory: {e}"));
        }
        let goal = berth_units::builtin::DEFAULT_TARGET;
        // network-online.target is loaded even when nothing wants it: `berthctl status` names it.
        self.set.load_more(&self.loader, &[goal, BOOT_COMPLETE, NETWORK_ONLINE]);
        self.report_load_problems();
        let first = self.queue_start(goal);
        if let Err(e) = first {
            log::line(&format!("boot: {goal}: {e}"));
        }
        if let Err(e) = self.queue_start(BOOT_COMPLETE) {
            log::line(&format!("boot: {BOOT_COMPLETE}: {e}"));
            self.boot_failed = Some(e.to_string());
        }
        // The job may have come with default.target's transaction (a unit of the boot that
        // requires boot-complete.target): it is found wherever it is.
        let jobs: Vec<(String, Vec<String>)> = self.jobs.iter().map(|j| (j.unit.clone(), j.after.clone())).collect();
        let waits = boot_complete_waits(&jobs);
        if let Some(job) = self.jobs.iter_mut().find(|j| j.unit == BOOT_COMPLETE && j.kind == JobKind::Start) {
            for w in waits {
                if !job.after.contains(&w) {
                    job.after.push(w);
                }
            }
        } else if self.boot_failed.is_none() && !self.runs.get(BOOT_COMPLETE).is_some_and(|r| r.state.is_active()) {
            self.boot_failed = Some("no job was queued for it".to_string());
        }
    }

    /// Where the boot's health check stands (stage 2's boot deadline reads it).
    pub fn boot_health(&self) -> BootHealth {
        if let Some(why) = &self.boot_failed {
            BootHealth::Failed(why.clone())
        } else if self.boot_complete {
            BootHealth::Reached
        } else {
            BootHealth::Pending
        }
    }

    /// Units whose jobs have not finished yet (what a late boot is waiting for).
    pub fn pending_jobs(&self) -> Vec<String> {
        self.jobs.iter().filter(|j| j.unit != BOOT_COMPLETE).map(|j| j.unit.clone()).collect()
    }

    /// Why boot-complete.target failed: the unit it required that failed, and why that did.
    fn boot_complete_failure(&self) -> String {
        let Some(run) = self.runs.get(BOOT_COMPLETE) else {
            return "it never ran".to_string();
        };
        match &run.outcome {
            Outcome::Dependency(dep) => {
                let why = self.runs.get(dep).map(|r| &r.outcome).filter(|o| **o != Outcome::Success);
                match why {
                    Some(o) => format!("{dep} failed ({})", o.describe()),
                    None => format!("{dep} failed"),
                }
            }
            Outcome::Success => format!("it is {}", run.state.active()),
            other => other.describe(),
        }
    }

    /// Logs each unit's load errors and ignored directives, once per unit.
    fn report_load_problems(&mut self) {
        let mut lines = Vec::new();
        for unit in self.set.units() {
            if !self.warned.insert(unit.name.clone()) {
                continue;
            }
            for e in &unit.errors {
                lines.push(format!("{}: {e}", unit.name));
            }
            for i in &unit.ignored {
                lines.push(format!("{}: ignoring {}", unit.name, i.message()));
            }
        }
        for l in lines {
            log::line(&l);
        }
    }

    /// Plans starting `goal` and queues its jobs. Errors when the goal itself cannot start.
    fn queue_start(&mut self, goal: &str) -> Result<String, JobError> {
        self.set.load_more(&self.loader, &[goal]);
        self.report_load_problems();
        let active: Vec<String> =
            self.runs.iter().filter(|(_, r)| r.state.is_active()).map(|(n, _)| n.clone()).collect();
        let plan = self.set.plan_start(goal, &active);
        for p in &plan.problems {
            log::line(&format!("{}: {p}", plan.goal));
        }
        let Some(name) = self.set.resolve(goal).map(str::to_string) else {
            return Err(JobError::not_found(goal));
        };
        if plan.start.is_empty() {
            let state = self.set.get(&name).map(|u| u.state);
            return Err(match state {
                Some(LoadState::Masked) => JobError::Masked { unit: name },
                Some(LoadState::NotFound) | None => JobError::not_found(&name),
                Some(LoadState::Error) => JobError::LoadError { unit: name },
                Some(LoadState::Unsupported) => JobError::Unsupported { unit: name },
                Some(LoadState::Loaded) => {
                    let why = plan.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ");
                    JobError::Unstartable { unit: name, why }
                }
            });
        }
        for unit in plan.stop {
            self.push_job(Job { unit, kind: JobKind::Stop, after: Vec::new(), requires: Vec::new(), running: false });
        }
        for unit in &plan.start {
            let active = self.runs.get(unit).is_some_and(|r| r.state.is_active());
            if active {
                continue;
            }
            let after = plan.waits_for.get(unit).cloned().unwrap_or_default();
            let requires = self
                .set
                .get(unit)
                .map(|u| u.deps.requires.iter().map(|r| self.set.resolve(r).unwrap_or(r).to_string()).collect())
                .unwrap_or_default();
            self.push_job(Job { unit: unit.clone(), kind: JobKind::Start, after, requires, running: false });
        }
        Ok(name)
    }

    fn push_job(&mut self, job: Job) {
        if self.jobs.iter().any(|j| j.unit == job.unit && j.kind == job.kind) {
            return;
        }
        // A new job replaces an opposite one that has not run yet.
        self.jobs.retain(|j| j.unit != job.unit || j.running);
        self.jobs.push(job);
    }

    /// `berthctl start`: queues the unit (and what it pulls in). Returns the canonical name.
    pub fn start(&mut self, unit: &str) -> Result<String, JobError> {
        if self.shutting_down {
            return Err(JobError::ShuttingDown);
        }
        let name = self.queue_start(unit)?;
        if let Some(u) = self.set.get(&name)
            && u.refuse_manual_start
        {
            self.jobs.retain(|j| j.running);
            return Err(JobError::RefusedManualStart { unit: name });
        }
        // A manual start forgets an earlier start-limit failure (systemctl reset-failed + start).
        if let Some(r) = self.runs.get_mut(&name) {
            r.reset_start_limit();
        }
        Ok(name)
    }

    /// `berthctl stop`: the unit and the active units that require it, in stop order.
    pub fn stop(&mut self, unit: &str) -> Result<String, JobError> {
        self.set.load_more(&self.loader, &[unit]);
        let Some(name) = self.set.resolve(unit).map(str::to_string) else {
            return Err(JobError::not_found(unit));
        };
        if let Some(u) = self.set.get(&name)
            && u.refuse_manual_stop
        {
            return Err(JobError::RefusedManualStop { unit: name });
        }
        let mut names = vec![name.clone()];
        for (n, r) in &self.runs {
            let requires = self
                .set
                .get(n)
                .is_some_and(|u| u.deps.requires.iter().any(|d| self.set.resolve(d) == Some(name.as_str())));
            if requires && (r.state.is_active() || r.state.is_busy()) {
                names.push(n.clone());
            }
        }
        self.queue_stops(&names);
        Ok(name)
    }

    /// `berthctl restart`.
    pub fn restart(&mut self, unit: &str) -> Result<String, JobError> {
        self.set.load_more(&self.loader, &[unit]);
        let Some(name) = self.set.resolve(unit).map(str::to_string) else {
            return Err(JobError::not_found(unit));
        };
        let running = self.runs.get(&name).is_some_and(|r| r.state.is_active() || r.state.is_busy());
        if !running {
            return self.start(&name);
        }
        if let Some(r) = self.runs.get_mut(&name) {
            r.restart_after_stop();
        }
        self.queue_stops(std::slice::from_ref(&name));
        Ok(name)
    }

    /// `berthctl daemon-reload` (after enable/disable): unit files are read again; running
    /// units keep running with what they were started with.
    pub fn reload(&mut self) -> usize {
        let root = self.loader.root().to_path_buf();
        self.loader = Loader::new(&root, HostInfo::detect(&root));
        let names: Vec<String> = self.set.units().map(|u| u.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.set = UnitSet::new();
        self.set.load_more(&self.loader, &refs);
        self.warned.clear();
        self.report_load_problems();
        self.set.len()
    }

    /// The units the default target pulls in (all of them, whether they run or not), as the
    /// unit files now loaded say: compared before and after a [`Manager::reload`], the units
    /// first-boot provisioning enabled.
    pub fn default_wants(&mut self) -> BTreeSet<String> {
        let goal = berth_units::builtin::DEFAULT_TARGET;
        self.set.load_more(&self.loader, &[goal]);
        self.set.plan_start(goal, &[]).start.into_iter().collect()
    }

    /// Queues stop jobs for `names`: each waits for the units ordered after it.
    fn queue_stops(&mut self, names: &[String]) {
        // Units earlier in the stop order that are ordered after this one (directly or through a
        // target that has nothing to stop) stop first.
        let (plan, problems) = self.set.stop_plan(names);
        for p in problems {
            log::line(&format!("stopping: {p}"));
        }
        for (unit, after) in plan {
            self.push_job(Job { unit, kind: JobKind::Stop, after, requires: Vec::new(), running: false });
        }
    }

    /// Begins stopping every unit; [`Manager::stopped`] says when they are all down.
    pub fn shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.jobs.clear();
        let names: Vec<String> = self
            .runs
            .iter()
            .filter(|(n, r)| r.state != State::Dead && r.state != State::Failed && self.stops_for_shutdown(n))
            .map(|(n, _)| n.clone())
            .collect();
        for r in self.runs.values_mut() {
            r.shutdown();
        }
        log::line(&format!("stopping {} units", names.len()));
        self.queue_stops(&names);
    }

    /// Whether the shutdown stops `unit` in order: as systemd's shutdown.target, the units that
    /// conflict with it (every unit with default dependencies). The others (`DefaultDependencies=no`
    /// without that conflict, e.g. the guest agent, which must still answer the request that
    /// began the shutdown) run until the final SIGTERM to every process.
    fn stops_for_shutdown(&self, unit: &str) -> bool {
        let Some(u) = self.set.get(unit) else { return true };
        u.deps.conflicts.iter().any(|c| self.set.resolve(c).unwrap_or(c) == SHUTDOWN_TARGET)
    }

    /// Every unit the shutdown stops is down (after [`Manager::shutdown`]).
    pub fn stopped(&self) -> bool {
        self.jobs.is_empty()
            && self.runs.iter().all(|(n, r)| {
                matches!(r.state, State::Dead | State::Failed | State::AutoRestart) || !self.stops_for_shutdown(n)
            })
    }

    /// `is-system-running`: starting, running, degraded or stopping.
    pub fn system_state(&self) -> &'static str {
        if self.shutting_down {
            "stopping"
        } else if !self.boot_complete {
            "starting"
        } else if self.runs.values().any(|r| r.state == State::Failed) {
            "degraded"
        } else {
            "running"
        }
    }

    /// File descriptors to poll for input.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = self.journal.fds();
        if let Some(n) = &self.notify {
            fds.push(n.fd());
        }
        if let Some(s) = &self.syslog {
            fds.push(s.fd());
        }
        fds
    }

    /// Reads what arrived on the notify socket and the log pipes.
    pub fn on_readable(&mut self) {
        self.journal.on_readable();
        let messages = self.notify.as_ref().map(|n| n.receive()).unwrap_or_default();
        for m in messages {
            self.on_notify(m);
        }
        let entries = self.syslog.as_ref().map(|s| s.receive()).unwrap_or_default();
        for e in entries {
            let unit = if e.pid > 0 { cgroup::unit_of(e.pid) } else { None };
            let pid = (e.pid > 0).then_some(e.pid);
            self.journal.record(unit.as_deref().unwrap_or("syslog"), pid, &e.text);
        }
    }

    /// The earliest deadline of any unit.
    pub fn next_deadline(&self) -> Option<Instant> {
        let busy = self.runs.values().any(ServiceRun::awaits_processes);
        let soon = busy.then(|| Instant::now() + Duration::from_millis(50));
        self.runs.values().filter_map(ServiceRun::deadline).chain(soon).min()
    }

    /// A child was reaped. Returns whether it belonged to a unit.
    pub fn on_exit(&mut self, pid: Pid, status: &WaitStatus) -> bool {
        let Some((unit, role)) = self.pids.remove(&pid.as_raw()) else {
            return false;
        };
        self.process_exited(&unit, role, pid, status);
        true
    }

    /// Timeouts, restarts, processes gone, and jobs that can run now.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self.runs.keys().cloned().collect();
        for name in names {
            self.unit_tick(&name, now);
        }
        self.dispatch(now);
    }

    /// Runs every job whose predecessors have finished. Repeats while something changes
    /// (targets finish at once).
    fn dispatch(&mut self, now: Instant) {
        loop {
            let mut changed = false;
            // Finished jobs go.
            let before = self.jobs.len();
            let finished: Vec<bool> = self.jobs.iter().map(|j| j.running && !self.job_busy(j)).collect();
            let mut done = Vec::new();
            let mut keep = Vec::new();
            for (job, fin) in std::mem::take(&mut self.jobs).into_iter().zip(finished) {
                if fin { done.push(job) } else { keep.push(job) }
            }
            self.jobs = keep;
            for job in done {
                self.job_finished(&job);
            }
            changed |= self.jobs.len() != before;

            let pending: Vec<Job> = self.jobs.iter().filter(|j| !j.running).cloned().collect();
            for job in pending {
                let waiting = job.after.iter().any(|a| self.jobs.iter().any(|j| &j.unit == a && j.unit != job.unit));
                if waiting {
                    continue;
                }
                if let Some(j) = self.jobs.iter_mut().find(|j| j.unit == job.unit && j.kind == job.kind) {
                    j.running = true;
                }
                changed = true;
                match job.kind {
                    JobKind::Start => {
                        let failed_dep = job.requires.iter().find(|r| {
                            self.runs.get(*r).is_some_and(|run| run.state == State::Failed) && self.set.get(r).is_some()
                        });
                        if let Some(dep) = failed_dep.cloned() {
                            log::line(&format!("{}: not starting: it requires {dep}, which failed", job.unit));
                            self.run_mut(&job.unit).dependency_failed(dep);
                        } else {
                            self.start_unit(&job.unit, now);
                        }
                    }
                    JobKind::Stop => self.stop_unit(&job.unit, now),
                }
            }
            if !changed {
                return;
            }
        }
    }

    fn job_busy(&self, job: &Job) -> bool {
        self.runs.get(&job.unit).is_some_and(|r| match job.kind {
            JobKind::Start => r.state.is_busy() && r.state != State::AutoRestart,
            JobKind::Stop => r.state.is_busy() || r.restart_at.is_some(),
        })
    }

    fn job_finished(&mut self, job: &Job) {
        if job.kind == JobKind::Start && job.unit == BOOT_COMPLETE && !self.boot_complete {
            let ok = self.runs.get(BOOT_COMPLETE).is_some_and(|r| r.state.is_active());
            self.boot_complete = true;
            self.journal.set_console_echo(false);
            let ms = self.started.elapsed().as_millis();
            if ok {
                log::line(&format!("reached {BOOT_COMPLETE} ({ms} ms after stage 2 began)"));
            } else {
                let why = self.boot_complete_failure();
                log::line(&format!("{BOOT_COMPLETE} failed ({ms} ms after stage 2 began): {why}"));
                self.boot_failed = Some(why);
            }
            let failed: Vec<&String> =
                self.runs.iter().filter(|(_, r)| r.state == State::Failed).map(|(n, _)| n).collect();
            if !failed.is_empty() {
                log::line(&format!(
                    "failed units: {}",
                    failed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }

    fn run_mut(&mut self, unit: &str) -> &mut ServiceRun {
        self.runs.entry(unit.to_string()).or_default()
    }

    fn target_reached(&mut self, unit: &str) {
        let run = self.run_mut(unit);
        if run.state.is_active() {
            return;
        }
        run.state = State::Exited;
        run.active_at = Some(Instant::now());
        // boot-complete says so itself once its job ends.
        if unit != BOOT_COMPLETE {
            log::line(&format!("reached {unit}"));
        }
    }

    /// Starts one unit (its dependencies are already handled by the job).
    fn start_unit(&mut self, unit: &str, now: Instant) {
        let Some(u) = self.set.get(unit) else { return };
        if !u.is_startable() {
            log::line(&format!("cannot start: load state {:?}", u.state));
            self.run_mut(unit).state = State::Failed;
            return;
        }
        match u.kind {
            UnitType::Target => self.target_reached(unit),
            UnitType::Service => self.start_service(unit, now),
            other => log::line(&format!("{unit}: {} units are not run by berth-init", other.suffix())),
        }
    }

    fn stop_unit(&mut self, unit: &str, now: Instant) {
        let kind = self.set.get(unit).map(|u| u.kind);
        match kind {
            Some(UnitType::Service) => self.stop_service(unit, now),
            _ => {
                if let Some(r) = self.runs.get_mut(unit)
                    && r.state.is_active()
                {
                    r.state = State::Dead;
                    r.active_at = None;
                }
            }
        }
    }

    /// Status of one unit for berthctl.
    pub fn status(&mut self, unit: &str) -> Result<crate::control::UnitStatus, JobError> {
        self.set.load_more(&self.loader, &[unit]);
        let Some(u) = self.set.get(unit) else {
            return Err(JobError::not_found(unit));
        };
        if u.state == LoadState::NotFound {
            return Err(JobError::not_found(unit));
        }
        Ok(self.status_of(&u.name.clone()))
    }

    fn status_of(&self, name: &str) -> crate::control::UnitStatus {
        let u = self.set.get(name);
        let run = self.runs.get(name);
        let state = run.map_or(State::Dead, |r| r.state);
        let group = cgroup::path(name);
        let has_group = u.is_some_and(|u| u.kind == UnitType::Service) && group.is_dir();
        crate::control::UnitStatus {
            name: name.to_string(),
            description: u.map(|u| u.description.clone()).unwrap_or_default(),
            load: match u.map(|u| u.state) {
                Some(LoadState::Loaded) => "loaded",
                Some(LoadState::Masked) => "masked",
                Some(LoadState::Error) => "error",
                Some(LoadState::Unsupported) => "unsupported",
                Some(LoadState::NotFound) | None => "not-found",
            }
            .into(),
            active: state.active().into(),
            sub: state.sub().into(),
            main_pid: run.and_then(|r| r.main_pid).map(|p| p.as_raw()),
            memory_bytes: if has_group { cgroup::memory_current(&group) } else { None },
            tasks: if has_group { cgroup::tasks_current(&group) } else { None },
            restarts: run.map_or(0, |r| r.restarts),
            last_exit: run.and_then(|r| r.last_exit.clone()),
            active_since_us: run.and_then(|r| r.active_at).and_then(|at| {
                let since = SystemTime::now().checked_sub(at.elapsed())?;
                since.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_micros() as u64)
            }),
            status_text: run.and_then(|r| r.status_text.clone()),
            cgroup: has_group.then(|| cgroup::display(name)),
            fragment: u.and_then(|u| u.fragment.as_ref()).map(|p| p.display().to_string()),
            enabled: u.map(|u| berth_units::install::enablement(&self.loader, u).to_string()),
            error: run.filter(|r| r.state == State::Failed).map(|r| r.outcome.describe()),
        }
    }

    /// Every unit the manager knows (`all`) or only those that are not inactive.
    pub fn list(&self, all: bool) -> Vec<crate::control::UnitStatus> {
        self.set
            .units()
            .filter(|u| matches!(u.kind, UnitType::Service | UnitType::Target) || all)
            .filter(|u| all || self.runs.get(&u.name).is_some_and(|r| r.state != State::Dead))
            .map(|u| self.status_of(&u.name))
            .collect()
    }

    /// Canonical name of a loaded unit.
    pub fn resolve(&self, unit: &str) -> Option<String> {
        self.set.resolve(unit).map(str::to_string)
    }

    /// Whether a job for `unit` is still queued or running (a reload counts).
    pub fn has_job(&self, unit: &str) -> bool {
        self.jobs.iter().any(|j| j.unit == unit) || self.runs.get(unit).is_some_and(|r| r.state == State::Reload)
    }

    /// (active state, failure reason) of `unit`.
    pub fn outcome(&self, unit: &str) -> (&'static str, Option<String>) {
        match self.runs.get(unit) {
            None => ("inactive", None),
            Some(r) => (r.state.active(), (r.state == State::Failed).then(|| r.outcome.describe())),
        }
    }
}

/// Where `boot-complete.target` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootHealth {
    /// Its job has not finished.
    Pending,
    /// Reached, every unit it requires active (or finished, for oneshots).
    Reached,
    /// Failed, with the reason.
    Failed(String),
}

/// The units boot-complete.target's job waits for, given every job of the boot as (unit,
/// units it waits for): all of them but itself and those that wait for it, directly or
/// through others (waiting for those would deadlock).
fn boot_complete_waits(jobs: &[(String, Vec<String>)]) -> Vec<String> {
    let mut later: BTreeSet<&str> = BTreeSet::from([BOOT_COMPLETE]);
    loop {
        let mut changed = false;
        for (unit, after) in jobs {
            if !later.contains(unit.as_str()) && after.iter().any(|a| later.contains(a.as_str())) {
                later.insert(unit);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (unit, _) in jobs {
        if !later.contains(unit.as_str()) && !out.contains(unit) {
            out.push(unit.clone());
        }
    }
    out
}

/// One directory a service asks for with `RuntimeDirectory=` and friends.
struct ServiceDir {
    /// The directive, for messages: `StateDirectory=`.
    directive: &'static str,
    /// The directory it is under, which only root can change: `/var/lib`.
    base: &'static str,
    /// Relative to `base`; may have several components.
    name: String,
    mode: u32,
    /// The environment variable that lists them: `STATE_DIRECTORY`.
    var: &'static str,
}

impl ServiceDir {
    fn path(&self) -> PathBuf {
        PathBuf::from(self.base).join(&self.name)
    }
}

fn directories(s: &berth_units::Service) -> Vec<ServiceDir> {
    let mut out = Vec::new();
    for (dirs, directive, base, var) in [
        (&s.runtime_directory, "RuntimeDirectory=", "/run", "RUNTIME_DIRECTORY"),
        (&s.state_directory, "StateDirectory=", "/var/lib", "STATE_DIRECTORY"),
        (&s.cache_directory, "CacheDirectory=", "/var/cache", "CACHE_DIRECTORY"),
        (&s.logs_directory, "LogsDirectory=", "/var/log", "LOGS_DIRECTORY"),
        (&s.configuration_directory, "ConfigurationDirectory=", "/etc", "CONFIGURATION_DIRECTORY"),
    ] {
        for name in &dirs.names {
            out.push(ServiceDir { directive, base, name: name.clone(), mode: dirs.mode, var });
        }
    }
    out
}

#[cfg(test)]
mod tests;
