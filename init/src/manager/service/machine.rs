//! The service state machine of systemd.service(5), without I/O: what happens on start, on
//! each process exit, on sd_notify messages, on timeouts and on stop. Every method takes the
//! unit's [`Service`] and the time, changes the [`ServiceRun`] and returns the [`Effect`]s the
//! manager carries out (`super`): no process is forked or signalled here, no file is read, no
//! line is logged. What the machine must know about the world it asks a [`Probe`].
//!
//! The machine waits for the outcome of [`Effect::Prepare`] ([`ServiceRun::prepared`]) and of
//! [`Effect::Spawn`] ([`ServiceRun::spawned`]); each is the last effect of its batch.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use berth_release::time::human_duration;
use berth_units::Service;
use berth_units::command::ExecCommand;
use berth_units::service::{KillMode, NotifyAccess, Preserve, Restart, ServiceType};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// After SIGKILL, how long to wait for the processes to go before giving up on them.
pub const SIGKILL_WAIT: Duration = Duration::from_secs(5);

/// Where a service is in its life (systemd's service states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Dead,
    Failed,
    Condition,
    StartPre,
    Start,
    StartPost,
    Running,
    Exited,
    Reload,
    Stop,
    StopSigterm,
    StopSigkill,
    StopPost,
    AutoRestart,
}

impl State {
    /// systemd's "active state".
    pub fn active(self) -> &'static str {
        match self {
            State::Dead => "inactive",
            State::Failed => "failed",
            State::Condition | State::StartPre | State::Start | State::StartPost | State::AutoRestart => "activating",
            State::Running | State::Exited => "active",
            State::Reload => "reloading",
            State::Stop | State::StopSigterm | State::StopSigkill | State::StopPost => "deactivating",
        }
    }

    /// systemd's "sub state".
    pub fn sub(self) -> &'static str {
        match self {
            State::Dead => "dead",
            State::Failed => "failed",
            State::Condition => "condition",
            State::StartPre => "start-pre",
            State::Start => "start",
            State::StartPost => "start-post",
            State::Running => "running",
            State::Exited => "exited",
            State::Reload => "reload",
            State::Stop => "stop",
            State::StopSigterm => "stop-sigterm",
            State::StopSigkill => "stop-sigkill",
            State::StopPost => "stop-post",
            State::AutoRestart => "auto-restart",
        }
    }

    /// Up (reloading included).
    pub fn is_active(self) -> bool {
        matches!(self, State::Running | State::Exited | State::Reload)
    }

    /// Starting, reloading or stopping: a job on it has not finished.
    pub fn is_busy(self) -> bool {
        !matches!(self, State::Dead | State::Failed | State::Running | State::Exited)
    }

    fn is_stopping(self) -> bool {
        matches!(self, State::StopSigterm | State::StopSigkill)
    }

    fn is_starting(self) -> bool {
        matches!(self, State::Condition | State::StartPre | State::Start | State::StartPost)
    }
}

/// Why a run of a unit ended badly (systemd's service "result").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    Success,
    ExitCode(i32),
    Signal(Signal, bool),
    Timeout,
    Watchdog,
    StartLimit,
    Dependency(String),
    Resources(String),
}

impl Outcome {
    pub fn describe(&self) -> String {
        match self {
            Outcome::Success => "success".into(),
            Outcome::ExitCode(c) => format!("exit status {c}"),
            Outcome::Signal(s, core) => {
                format!("killed by {}{}", s.as_str(), if *core { " (core dumped)" } else { "" })
            }
            Outcome::Timeout => "timed out".into(),
            Outcome::Watchdog => "watchdog timeout".into(),
            Outcome::StartLimit => "start limit hit".into(),
            Outcome::Dependency(d) => format!("dependency {d} failed"),
            Outcome::Resources(why) => why.clone(),
        }
    }
}

/// Which process of a unit a PID is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Control,
}

/// Whom a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillTarget {
    Process(Pid),
    /// Every process in the unit's cgroup.
    Group,
}

/// What the manager must do for a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A line for the console and the unit's log.
    Say(String),
    /// Check the conditions and assertions, resolve the account, make the directories and the
    /// cgroup; then report with [`ServiceRun::prepared`].
    Prepare,
    /// Fork and exec `cmd` in the unit's cgroup; then report with [`ServiceRun::spawned`].
    Spawn {
        cmd: ExecCommand,
        role: Role,
    },
    Kill {
        whom: KillTarget,
        signal: Signal,
    },
    /// `pid` is the unit's main process now (MAINPID=, PIDFile=): its exit is the unit's.
    Adopt(Pid),
    /// The run is over: remove the empty cgroup, and `RuntimeDirectory=` unless preserved.
    Cleanup {
        runtime_directories: bool,
    },
    /// Stopped for a restart: queue a start of the unit.
    StartAgain,
}

/// What [`Effect::Prepare`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    Ready,
    /// A `Condition*=` is not met (its description): skipped, not failed.
    Skipped(String),
    /// An `Assert*=` failed, or the account, a directory or the cgroup could not be had.
    Failed(String),
}

/// How a process ended, judged by the unit's SuccessExitStatus= (and the clean signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub outcome: Outcome,
    /// `exited, status=3`, for the log.
    pub text: String,
    /// `status=3`, `signal=KILL`, for `berthctl status`.
    pub short: String,
}

impl Exit {
    pub fn of(status: &WaitStatus, svc: &Service) -> Exit {
        Exit { outcome: outcome_of(status, svc), text: exit_text(status), short: short_exit(status) }
    }
}

/// An sd_notify message the unit may send (NotifyAccess= was checked), with MAINPID= checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub status: Option<String>,
    /// The new main process, or the line that says why it was refused.
    pub main_pid: Option<Result<Pid, String>>,
    pub ready: bool,
    pub stopping: bool,
    pub watchdog_ping: bool,
    pub watchdog_trigger: bool,
}

/// What the machine asks about the world.
pub trait Probe {
    /// Whether a process is left in the unit's cgroup.
    fn group_populated(&self) -> bool;
    /// The main process of a forking service (PIDFile=, else the only process left), checked
    /// as MAINPID= is; `None` when there is none.
    fn forking_main_pid(&self, svc: &Service) -> Option<Result<Pid, String>>;
}

/// `StartLimitIntervalSec=` and `StartLimitBurst=` of the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartLimit {
    pub interval: Option<Duration>,
    pub burst: u32,
}

/// The spawn the machine waits for.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    role: Role,
    /// The command has the `-` prefix.
    ignore_failure: bool,
    /// ExecStart= of a non-oneshot service: up once spawned (simple, exec).
    exec_start: bool,
}

/// The runtime side of one unit.
#[derive(Debug, Default)]
pub struct ServiceRun {
    pub(in crate::manager) state: State,
    pub(in crate::manager) main_pid: Option<Pid>,
    pub(in crate::manager) control_pid: Option<Pid>,
    /// Commands left in the current phase.
    queue: VecDeque<ExecCommand>,
    /// When the current state times out.
    deadline: Option<Instant>,
    watchdog_at: Option<Instant>,
    pub(in crate::manager) restart_at: Option<Instant>,
    /// Start times inside the start-limit interval.
    starts: VecDeque<Instant>,
    limit: StartLimit,
    pub(in crate::manager) restarts: u32,
    /// The start under way is an automatic restart.
    restarting: bool,
    pub(in crate::manager) outcome: Outcome,
    pub(in crate::manager) last_exit: Option<String>,
    pub(in crate::manager) status_text: Option<String>,
    pub(in crate::manager) active_at: Option<Instant>,
    /// An explicit stop: no restart afterwards.
    stop_requested: bool,
    /// Start again once stopped (`restart`).
    then_start: bool,
    /// The main process said STOPPING=1.
    stopping: bool,
    awaiting: Option<Awaiting>,
}

impl ServiceRun {
    pub fn state(&self) -> State {
        self.state
    }

    /// The earliest time [`ServiceRun::on_timeout`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        [self.deadline, self.restart_at, self.watchdog_at].into_iter().flatten().min()
    }

    /// Waiting for processes to go after a signal: worth polling, as the last process of a
    /// cgroup may not be a child of PID 1 (no SIGCHLD says it went).
    pub fn awaits_processes(&self) -> bool {
        self.state.is_stopping()
    }

    /// A manual start forgets an earlier start-limit failure (systemctl reset-failed + start).
    pub fn reset_start_limit(&mut self) {
        self.starts.clear();
    }

    /// `restart`: once stopped, start again.
    pub fn restart_after_stop(&mut self) {
        self.then_start = true;
        self.starts.clear();
    }

    /// The system goes down: no restart of any kind from now on.
    pub fn shutdown(&mut self) {
        self.restart_at = None;
        self.stop_requested = true;
        self.then_start = false;
    }

    /// Not started because `dep`, which it requires, failed.
    pub fn dependency_failed(&mut self, dep: String) {
        self.state = State::Failed;
        self.outcome = Outcome::Dependency(dep);
    }

    /// Start (a job, or a restart): the start limit, then [`Effect::Prepare`].
    pub fn start(&mut self, svc: &Service, limit: StartLimit, now: Instant) -> Vec<Effect> {
        self.limit = limit;
        self.begin(svc, now)
    }

    fn begin(&mut self, _svc: &Service, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.state.is_active() || self.state.is_busy() && self.state != State::AutoRestart {
            return fx;
        }
        // The start limit: more than `burst` starts within `interval` and the unit stays down.
        if let Some(interval) = self.limit.interval.filter(|d| !d.is_zero())
            && self.limit.burst > 0
        {
            while self.starts.front().is_some_and(|t| now.duration_since(*t) > interval) {
                self.starts.pop_front();
            }
            if self.starts.len() >= self.limit.burst as usize {
                self.restarting = false;
                self.state = State::Failed;
                self.restart_at = None;
                self.outcome = Outcome::StartLimit;
                fx.push(Effect::Say(format!(
                    "start limit hit ({} starts within {}); failed, not starting again",
                    self.limit.burst,
                    human_duration(interval)
                )));
                return fx;
            }
            self.starts.push_back(now);
        }
        // Counted once the start limit let the restart through.
        if std::mem::take(&mut self.restarting) {
            self.restarts += 1;
        }
        self.restart_at = None;
        self.stop_requested = false;
        self.stopping = false;
        self.outcome = Outcome::Success;
        self.status_text = None;
        fx.push(Effect::Prepare);
        fx
    }

    /// What [`Effect::Prepare`] found: the start goes on (ExecCondition=, ...) or ends here.
    pub fn prepared(&mut self, svc: &Service, probe: &dyn Probe, result: Prepared, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match result {
            Prepared::Skipped(why) => {
                fx.push(Effect::Say(format!("condition not met: {why}; skipped")));
                self.state = State::Dead;
            }
            Prepared::Failed(why) => self.fail_now(Outcome::Resources(why), &mut fx),
            Prepared::Ready => {
                fx.push(Effect::Say("starting".into()));
                self.deadline = svc.timeout_start.finite().map(|d| now + d);
                self.queue = svc.exec_condition.iter().cloned().collect();
                self.state = State::Condition;
                self.advance(svc, probe, now, &mut fx);
            }
        }
        fx
    }

    /// What became of the last [`Effect::Spawn`].
    pub fn spawned(
        &mut self,
        svc: &Service,
        probe: &dyn Probe,
        result: Result<Pid, String>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(a) = self.awaiting.take() else { return fx };
        match result {
            Ok(pid) => {
                match a.role {
                    Role::Main => self.main_pid = Some(pid),
                    Role::Control => self.control_pid = Some(pid),
                }
                // Started once forked (simple) or once exec succeeded (exec): the spawn
                // returns after exec, so both are up now.
                if a.exec_start && matches!(svc.service_type, ServiceType::Simple | ServiceType::Exec) {
                    self.enter_start_post(svc);
                    self.advance(svc, probe, now, &mut fx);
                }
            }
            Err(e) => {
                fx.push(Effect::Say(e.clone()));
                if a.ignore_failure && !a.exec_start {
                    self.advance(svc, probe, now, &mut fx);
                } else {
                    self.enter_stop(svc, probe, now, Outcome::Resources(e), &mut fx);
                }
            }
        }
        fx
    }

    /// `berthctl reload`: ExecReload= while the service is up (the caller checked it is).
    pub fn reload(&mut self, svc: &Service, probe: &dyn Probe, now: Instant) -> Vec<Effect> {
        let mut fx = vec![Effect::Say("reloading".into())];
        self.state = State::Reload;
        self.deadline = svc.timeout_start.finite().map(|d| now + d);
        self.queue = svc.exec_reload.iter().cloned().collect();
        self.advance(svc, probe, now, &mut fx);
        fx
    }

    /// Explicit stop (berthctl, shutdown, a conflict).
    pub fn stop(&mut self, svc: &Service, probe: &dyn Probe, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.stop_requested = true;
        if self.state == State::AutoRestart {
            self.restart_at = None;
            self.state = State::Dead;
            return fx;
        }
        if !self.state.is_active() && !self.state.is_starting() {
            return fx;
        }
        fx.push(Effect::Say("stopping".into()));
        self.enter_stop(svc, probe, now, Outcome::Success, &mut fx);
        fx
    }

    /// A process of the unit ended.
    pub fn on_exit(
        &mut self,
        svc: &Service,
        probe: &dyn Probe,
        role: Role,
        pid: Pid,
        exit: &Exit,
        now: Instant,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        match role {
            Role::Control => self.control_exited(svc, probe, pid, exit, now, &mut fx),
            Role::Main => self.main_exited(svc, probe, pid, exit, now, &mut fx),
        }
        fx
    }

    fn control_exited(
        &mut self,
        svc: &Service,
        probe: &dyn Probe,
        pid: Pid,
        exit: &Exit,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let state = self.state;
        if self.control_pid == Some(pid) {
            self.control_pid = None;
        }
        let outcome = exit.outcome.clone();
        let failed = outcome != Outcome::Success;
        // `-` prefix: the failure is ignored. (The command's flags are gone with it; the
        // prefix is looked up on the phase's commands by position.)
        let ignored = failed && self.last_command_ignores(svc, state);
        if failed {
            let t = format!("control process {pid} {}{}", exit.text, if ignored { " (ignored)" } else { "" });
            fx.push(Effect::Say(t));
        }
        match state {
            State::Condition if failed && !ignored => {
                if matches!(outcome, Outcome::ExitCode(c) if (1..255).contains(&c)) {
                    fx.push(Effect::Say("ExecCondition= not met; skipped".into()));
                    self.enter_stop(svc, probe, now, Outcome::Success, fx);
                    self.then_start = false;
                } else {
                    self.enter_stop(svc, probe, now, outcome, fx);
                }
            }
            State::StartPre | State::StartPost if failed && !ignored => self.enter_stop(svc, probe, now, outcome, fx),
            State::Reload if failed && !ignored => {
                // The service keeps running with its old configuration, as with systemd.
                self.queue.clear();
                self.deadline = None;
                self.state = self.up_state();
                fx.push(Effect::Say(format!("reload failed: {}", outcome.describe())));
            }
            State::Start if svc.service_type == ServiceType::Forking => {
                if failed {
                    self.enter_stop(svc, probe, now, outcome, fx);
                    return;
                }
                // PIDFile= is the service's to write: checked as MAINPID= is.
                match probe.forking_main_pid(svc) {
                    Some(Ok(main)) => {
                        fx.push(Effect::Adopt(main));
                        self.main_pid = Some(main);
                        self.enter_start_post(svc);
                        self.advance(svc, probe, now, fx);
                    }
                    Some(Err(why)) => {
                        let why = format!("forking: PIDFile= names a process that cannot be the main one: {why}");
                        self.enter_stop(svc, probe, now, Outcome::Resources(why), fx);
                    }
                    None => {
                        let why = "forking: no main process (PIDFile= missing and no single process left)";
                        self.enter_stop(svc, probe, now, Outcome::Resources(why.into()), fx);
                    }
                }
            }
            State::Stop | State::StopPost | State::Condition | State::StartPre | State::StartPost | State::Reload => {
                self.advance(svc, probe, now, fx)
            }
            State::StopSigterm | State::StopSigkill => self.check_stopped(svc, probe, now, fx),
            _ => {}
        }
    }

    fn main_exited(
        &mut self,
        svc: &Service,
        probe: &dyn Probe,
        pid: Pid,
        exit: &Exit,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let state = self.state;
        if self.main_pid == Some(pid) {
            self.main_pid = None;
        }
        self.last_exit = Some(exit.short.clone());
        self.watchdog_at = None;
        let outcome = exit.outcome.clone();
        match state {
            State::Start if svc.service_type == ServiceType::Oneshot => {
                if outcome != Outcome::Success && !self.last_command_ignores(svc, state) {
                    fx.push(Effect::Say(format!("main process {pid} {}", exit.text)));
                    self.enter_stop(svc, probe, now, outcome, fx);
                } else {
                    self.advance(svc, probe, now, fx);
                }
            }
            State::Start | State::StartPost => {
                // Exited before it was up (notify: before READY=1).
                fx.push(Effect::Say(format!("main process {pid} {} before the service was up", exit.text)));
                let o = if outcome == Outcome::Success {
                    Outcome::Resources("main process exited before READY=1".into())
                } else {
                    outcome
                };
                self.enter_stop(svc, probe, now, o, fx);
            }
            State::Running | State::Reload => {
                fx.push(Effect::Say(format!("main process {pid} {}", exit.text)));
                if outcome == Outcome::Success && svc.remain_after_exit {
                    self.state = State::Exited;
                } else if self.stopping {
                    self.enter_stop(svc, probe, now, Outcome::Success, fx);
                } else {
                    self.enter_stop(svc, probe, now, outcome, fx);
                }
            }
            // ExecStop= made it exit; go on once the control process ends.
            State::Stop => fx.push(Effect::Say(format!("main process {pid} {}", exit.text))),
            State::StopSigterm | State::StopSigkill => self.check_stopped(svc, probe, now, fx),
            _ => {}
        }
    }

    /// An sd_notify message from a process the unit allows to send one.
    pub fn on_notify(&mut self, svc: &Service, probe: &dyn Probe, notice: Notice, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(text) = notice.status {
            self.status_text = Some(text);
        }
        match notice.main_pid {
            Some(Ok(pid)) => {
                fx.push(Effect::Adopt(pid));
                self.main_pid = Some(pid);
            }
            Some(Err(why)) => fx.push(Effect::Say(why)),
            None => {}
        }
        if notice.watchdog_ping && self.watchdog_at.is_some() {
            self.watchdog_at = svc.watchdog.map(|d| now + d);
        }
        if notice.watchdog_trigger {
            fx.push(Effect::Say("watchdog triggered by the service".into()));
            self.enter_stop(svc, probe, now, Outcome::Watchdog, &mut fx);
            return fx;
        }
        if notice.stopping {
            self.stopping = true;
        }
        if notice.ready && self.state == State::Start && svc.service_type == ServiceType::Notify {
            self.enter_start_post(svc);
            self.advance(svc, probe, now, &mut fx);
        }
        fx
    }

    /// Deadlines, the watchdog, restarts, and processes gone after a signal.
    pub fn on_timeout(&mut self, svc: &Service, probe: &dyn Probe, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(at) = self.restart_at
            && now >= at
        {
            self.restart_at = None;
            self.restarting = true;
            return self.begin(svc, now);
        }
        if let Some(at) = self.watchdog_at
            && now >= at
        {
            self.watchdog_at = None;
            if let Some(p) = self.main_pid {
                fx.push(Effect::Kill { whom: KillTarget::Process(p), signal: Signal::SIGABRT });
            }
            fx.push(Effect::Say("watchdog timeout: no WATCHDOG=1 in time".into()));
            self.enter_stop(svc, probe, now, Outcome::Watchdog, &mut fx);
            return fx;
        }
        if self.state.is_stopping() {
            self.check_stopped(svc, probe, now, &mut fx);
        }
        let Some(deadline) = self.deadline else { return fx };
        if now < deadline {
            return fx;
        }
        self.deadline = None;
        match self.state {
            State::Condition | State::StartPre | State::Start | State::StartPost => {
                fx.push(Effect::Say(format!("start timed out after {}", svc.timeout_start)));
                self.enter_stop(svc, probe, now, Outcome::Timeout, &mut fx);
            }
            State::Reload => {
                fx.push(Effect::Say("reload timed out".into()));
                if let Some(p) = self.control_pid {
                    fx.push(Effect::Kill { whom: KillTarget::Process(p), signal: Signal::SIGKILL });
                }
                self.queue.clear();
                self.state = self.up_state();
            }
            State::Stop => {
                fx.push(Effect::Say(format!("ExecStop= timed out after {}", svc.timeout_stop)));
                self.enter_sigterm(svc, probe, now, &mut fx);
            }
            State::StopSigterm => {
                fx.push(Effect::Say(format!("stop timed out after {}; sending SIGKILL", svc.timeout_stop)));
                if svc.send_sigkill {
                    match svc.kill_mode {
                        KillMode::ControlGroup | KillMode::Mixed => {
                            fx.push(Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGKILL })
                        }
                        KillMode::Process => {
                            for p in [self.main_pid, self.control_pid].into_iter().flatten() {
                                fx.push(Effect::Kill { whom: KillTarget::Process(p), signal: Signal::SIGKILL });
                            }
                        }
                        KillMode::None => {}
                    }
                }
                if self.outcome == Outcome::Success && !self.stop_requested {
                    self.outcome = Outcome::Timeout;
                }
                self.state = State::StopSigkill;
                self.deadline = Some(now + SIGKILL_WAIT);
            }
            State::StopSigkill => {
                fx.push(Effect::Say("processes left after SIGKILL; giving up on them".into()));
                self.main_pid = None;
                self.control_pid = None;
                self.state = State::StopPost;
                self.queue = svc.exec_stop_post.iter().cloned().collect();
                self.advance(svc, probe, now, &mut fx);
            }
            State::StopPost => self.finish(svc, now, &mut fx),
            _ => {}
        }
        fx
    }

    /// Running when the main process is, else exited.
    fn up_state(&self) -> State {
        if self.main_pid.is_some() { State::Running } else { State::Exited }
    }

    /// Runs the next command of the current phase, or moves to the next phase.
    fn advance(&mut self, svc: &Service, probe: &dyn Probe, now: Instant, fx: &mut Vec<Effect>) {
        loop {
            let state = self.state;
            if let Some(cmd) = self.queue.pop_front() {
                let role = if state == State::Start && svc.service_type == ServiceType::Oneshot {
                    Role::Main
                } else {
                    Role::Control
                };
                self.spawn(cmd, role, false, fx);
                return;
            }
            // The phase is over.
            match state {
                State::Condition => {
                    self.queue = svc.exec_start_pre.iter().cloned().collect();
                    self.state = State::StartPre;
                }
                State::StartPre => {
                    self.state = State::Start;
                    if svc.service_type == ServiceType::Oneshot {
                        self.queue = svc.exec_start.iter().cloned().collect();
                        if svc.exec_start.is_empty() {
                            self.enter_start_post(svc);
                        }
                        continue;
                    }
                    let Some(cmd) = svc.exec_start.first().cloned() else {
                        self.enter_start_post(svc);
                        continue;
                    };
                    let role = if svc.service_type == ServiceType::Forking { Role::Control } else { Role::Main };
                    self.spawn(cmd, role, true, fx);
                    return;
                }
                // Oneshot: every ExecStart= done.
                State::Start => self.enter_start_post(svc),
                State::StartPost => {
                    let oneshot = svc.service_type == ServiceType::Oneshot;
                    if oneshot && !svc.remain_after_exit {
                        // Done, and nothing stays: straight to stopping what is left.
                        fx.push(Effect::Say("finished".into()));
                        self.enter_stop(svc, probe, now, Outcome::Success, fx);
                        return;
                    }
                    self.deadline = None;
                    self.state = self.up_state();
                    self.active_at = Some(now);
                    self.watchdog_at = svc.watchdog.map(|d| now + d);
                    fx.push(Effect::Say(match self.main_pid {
                        Some(p) => format!("active (main pid {p})"),
                        None => "active".to_string(),
                    }));
                    return;
                }
                State::Reload => {
                    self.deadline = None;
                    self.state = self.up_state();
                    fx.push(Effect::Say("reloaded".into()));
                    return;
                }
                State::Stop => {
                    self.enter_sigterm(svc, probe, now, fx);
                    return;
                }
                State::StopPost => {
                    self.finish(svc, now, fx);
                    return;
                }
                _ => return,
            }
        }
    }

    fn spawn(&mut self, cmd: ExecCommand, role: Role, exec_start: bool, fx: &mut Vec<Effect>) {
        let ignore_failure = cmd.flags.ignore_failure;
        self.awaiting = Some(Awaiting { role, ignore_failure, exec_start });
        fx.push(Effect::Spawn { cmd, role });
    }

    fn enter_start_post(&mut self, svc: &Service) {
        self.state = State::StartPost;
        self.queue = svc.exec_start_post.iter().cloned().collect();
    }

    /// Whether the command that just ran in `state` had the `-` prefix.
    fn last_command_ignores(&self, svc: &Service, state: State) -> bool {
        let list = match state {
            State::Condition => &svc.exec_condition,
            State::StartPre => &svc.exec_start_pre,
            State::Start => &svc.exec_start,
            State::StartPost => &svc.exec_start_post,
            State::Reload => &svc.exec_reload,
            State::Stop => &svc.exec_stop,
            State::StopPost => &svc.exec_stop_post,
            _ => return false,
        };
        let left = self.queue.len();
        list.len().checked_sub(left + 1).and_then(|i| list.get(i)).is_some_and(|c| c.flags.ignore_failure)
    }

    /// Fails without anything to stop.
    fn fail_now(&mut self, outcome: Outcome, fx: &mut Vec<Effect>) {
        fx.push(Effect::Say(format!("failed: {}", outcome.describe())));
        self.state = State::Failed;
        self.outcome = outcome;
    }

    /// ExecStop= (when the service was up), then the kill sequence. A failed start comes here
    /// too: what runs is stopped, then the unit is failed (and maybe restarted).
    fn enter_stop(&mut self, svc: &Service, probe: &dyn Probe, now: Instant, outcome: Outcome, fx: &mut Vec<Effect>) {
        let was_up = self.state.is_active();
        if outcome != Outcome::Success || self.outcome == Outcome::Success {
            self.outcome = outcome;
        }
        self.queue.clear();
        self.watchdog_at = None;
        self.deadline = svc.timeout_stop.finite().map(|d| now + d);
        // A control process of the start phase is killed with the rest.
        if was_up && !svc.exec_stop.is_empty() {
            self.state = State::Stop;
            self.queue = svc.exec_stop.iter().cloned().collect();
            self.advance(svc, probe, now, fx);
        } else {
            self.enter_sigterm(svc, probe, now, fx);
        }
    }

    fn enter_sigterm(&mut self, svc: &Service, probe: &dyn Probe, now: Instant, fx: &mut Vec<Effect>) {
        self.state = State::StopSigterm;
        self.deadline = svc.timeout_stop.finite().map(|d| now + d);
        let signal = svc.kill_signal;
        match svc.kill_mode {
            KillMode::ControlGroup => fx.push(Effect::Kill { whom: KillTarget::Group, signal }),
            KillMode::Mixed | KillMode::Process => {
                for p in [self.main_pid, self.control_pid].into_iter().flatten() {
                    fx.push(Effect::Kill { whom: KillTarget::Process(p), signal });
                    fx.push(Effect::Kill { whom: KillTarget::Process(p), signal: Signal::SIGCONT });
                }
            }
            KillMode::None => {}
        }
        if svc.send_sighup && svc.kill_mode == KillMode::ControlGroup {
            fx.push(Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGHUP });
        }
        self.check_stopped(svc, probe, now, fx);
    }

    /// In stop-sigterm/-sigkill: moves on once what KillMode waits for is gone.
    fn check_stopped(&mut self, svc: &Service, probe: &dyn Probe, now: Instant, fx: &mut Vec<Effect>) {
        if !self.state.is_stopping() {
            return;
        }
        let ours_gone = self.main_pid.is_none() && self.control_pid.is_none();
        let done = match svc.kill_mode {
            KillMode::ControlGroup => ours_gone && !probe.group_populated(),
            KillMode::Mixed | KillMode::Process | KillMode::None => ours_gone,
        };
        if !done {
            return;
        }
        if svc.kill_mode == KillMode::Mixed {
            fx.push(Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGKILL });
        }
        self.state = State::StopPost;
        self.queue = svc.exec_stop_post.iter().cloned().collect();
        self.advance(svc, probe, now, fx);
    }

    /// Stopped: inactive or failed, then maybe a restart.
    fn finish(&mut self, svc: &Service, now: Instant, fx: &mut Vec<Effect>) {
        fx.push(Effect::Cleanup { runtime_directories: svc.runtime_directory_preserve == Preserve::No });
        self.deadline = None;
        self.active_at = None;
        self.main_pid = None;
        self.control_pid = None;
        let outcome = self.outcome.clone();
        let failed = outcome != Outcome::Success;
        self.state = if failed { State::Failed } else { State::Dead };
        let then_start = std::mem::take(&mut self.then_start);
        if !self.stop_requested && should_restart(svc, &outcome) {
            self.state = State::AutoRestart;
            self.restart_at = Some(now + svc.restart_sec);
            let what = if failed { format!("failed: {}", outcome.describe()) } else { "exited".into() };
            fx.push(Effect::Say(format!(
                "{what}; restarting in {} (restart {})",
                human_duration(svc.restart_sec),
                self.restarts + 1
            )));
            return;
        }
        fx.push(Effect::Say(if failed { format!("failed: {}", outcome.describe()) } else { "stopped".into() }));
        if then_start {
            fx.push(Effect::StartAgain);
        }
    }
}

/// Whether `access` lets a process send notifications: `role` is what the manager knows it
/// as (`None`: only found in the unit's cgroup).
pub fn notify_allowed(access: NotifyAccess, role: Option<Role>) -> bool {
    match access {
        NotifyAccess::None => false,
        NotifyAccess::Main => role == Some(Role::Main),
        NotifyAccess::Exec => role.is_some(),
        NotifyAccess::All => true,
    }
}

/// How a process ended, judged by the unit's SuccessExitStatus= (and the clean signals).
fn outcome_of(status: &WaitStatus, svc: &Service) -> Outcome {
    match *status {
        WaitStatus::Exited(_, 0) => Outcome::Success,
        WaitStatus::Exited(_, c) if svc.success_exit_status.codes.contains(&(c as u8)) => Outcome::Success,
        WaitStatus::Exited(_, c) => Outcome::ExitCode(c),
        WaitStatus::Signaled(_, s, core) => {
            let clean = matches!(s, Signal::SIGHUP | Signal::SIGINT | Signal::SIGTERM | Signal::SIGPIPE)
                && svc.service_type != ServiceType::Oneshot;
            if clean || svc.success_exit_status.signals.contains(&s) {
                Outcome::Success
            } else {
                Outcome::Signal(s, core)
            }
        }
        _ => Outcome::Success,
    }
}

fn exit_text(status: &WaitStatus) -> String {
    match *status {
        WaitStatus::Exited(_, c) => format!("exited, status={c}"),
        WaitStatus::Signaled(_, s, _) => format!("killed by signal {}", s.as_str()),
        _ => format!("ended ({status:?})"),
    }
}

fn short_exit(status: &WaitStatus) -> String {
    match *status {
        WaitStatus::Exited(_, c) => format!("status={c}"),
        WaitStatus::Signaled(_, s, _) => format!("signal={}", s.as_str().trim_start_matches("SIG")),
        _ => "unknown".into(),
    }
}

/// systemd.service(5)'s table of Restart= against how the run ended.
fn should_restart(svc: &Service, outcome: &Outcome) -> bool {
    let prevented = match outcome {
        Outcome::ExitCode(c) => svc.restart_prevent_exit_status.codes.contains(&(*c as u8)),
        Outcome::Signal(s, _) => svc.restart_prevent_exit_status.signals.contains(s),
        Outcome::Success => svc.restart_prevent_exit_status.codes.contains(&0),
        _ => false,
    };
    if prevented || matches!(outcome, Outcome::StartLimit | Outcome::Dependency(_)) {
        return false;
    }
    let forced = match outcome {
        Outcome::ExitCode(c) => svc.restart_force_exit_status.codes.contains(&(*c as u8)),
        Outcome::Signal(s, _) => svc.restart_force_exit_status.signals.contains(s),
        _ => false,
    };
    if forced {
        return true;
    }
    let unclean_signal = matches!(outcome, Outcome::Signal(..));
    match svc.restart {
        Restart::No => false,
        Restart::Always => true,
        Restart::OnSuccess => *outcome == Outcome::Success,
        Restart::OnFailure => *outcome != Outcome::Success,
        Restart::OnAbnormal => unclean_signal || matches!(outcome, Outcome::Timeout | Outcome::Watchdog),
        Restart::OnAbort => unclean_signal,
        Restart::OnWatchdog => *outcome == Outcome::Watchdog,
    }
}

#[cfg(test)]
mod tests;
