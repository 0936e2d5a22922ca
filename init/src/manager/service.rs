//! The service state machine (systemd.service(5)): what happens on start, on each process
//! exit, on sd_notify messages, on timeouts and on stop.

use std::time::{Instant, SystemTime};

use berth_units::command::ExecCommand;
use berth_units::service::{KillMode, Restart, ServiceType, TasksMax};
use berth_units::{Service, condition};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::exec::{self, Output};
use super::{Manager, Outcome, Role, State, cgroup, directories, notify, users};
use crate::log;

impl Manager {
    fn service(&self, unit: &str) -> Option<Service> {
        self.set.get(unit).and_then(|u| u.service.clone())
    }

    /// Logs a line about `unit` on the console and in its log.
    pub(super) fn say(&mut self, unit: &str, text: &str) {
        log::line(&format!("{unit}: {text}"));
        self.journal.record(unit, None, text);
    }

    pub(super) fn start_service(&mut self, unit: &str, now: Instant) {
        let Some(svc) = self.service(unit) else { return };
        let Some(u) = self.set.get(unit) else { return };
        let (interval, burst) = (u.start_limit_interval, u.start_limit_burst);
        let conditions = u.conditions.clone();
        let asserts = u.asserts.clone();
        {
            let run = self.run_mut(unit);
            if run.state.is_active() || run.state.is_busy() && run.state != State::AutoRestart {
                return;
            }
            // The start limit: more than `burst` starts within `interval` and the unit stays down.
            if let Some(interval) = interval.finite().filter(|d| !d.is_zero())
                && burst > 0
            {
                while run.starts.front().is_some_and(|t| now.duration_since(*t) > interval) {
                    run.starts.pop_front();
                }
                if run.starts.len() >= burst as usize {
                    run.restarting = false;
                    run.state = State::Failed;
                    run.restart_at = None;
                    run.outcome = Outcome::StartLimit;
                    let text = format!(
                        "start limit hit ({burst} starts within {}); failed, not starting again",
                        super::fmt_duration(interval)
                    );
                    self.say(unit, &text);
                    return;
                }
                run.starts.push_back(now);
            }
            // Counted once the start limit let the restart through.
            if std::mem::take(&mut run.restarting) {
                run.restarts += 1;
            }
            run.restart_at = None;
            run.stop_requested = false;
            run.stopping = false;
            run.outcome = Outcome::Success;
            run.status_text = None;
        }

        let env = condition_env();
        if let Err(c) = condition::check(&conditions, &env) {
            let text = format!("condition not met: {}; skipped", describe_condition(c));
            self.say(unit, &text);
            self.run_mut(unit).state = State::Dead;
            return;
        }
        if let Err(c) = condition::check(&asserts, &env) {
            let text = format!("assertion failed: {}", describe_condition(c));
            self.fail_now(unit, Outcome::Resources(text));
            return;
        }
        if let Err(e) = self.prepare(unit, &svc) {
            self.fail_now(unit, Outcome::Resources(e));
            return;
        }
        self.say(unit, "starting");
        let run = self.run_mut(unit);
        run.deadline = svc.timeout_start.finite().map(|d| now + d);
        run.queue = svc.exec_condition.iter().cloned().collect();
        run.state = State::Condition;
        self.advance(unit, now);
    }

    /// Environment, account, directories and cgroup for a start.
    fn prepare(&mut self, unit: &str, svc: &Service) -> Result<(), String> {
        let account = users::resolve(
            std::path::Path::new("/"),
            svc.user.as_deref(),
            svc.group.as_deref(),
            &svc.supplementary_groups,
        )
        .map_err(|e| format!("User=/Group=: {e}"))?;
        let mut env: Vec<(String, String)> = vec![("PATH".into(), exec::PATH.into())];
        if svc.user.is_some() {
            for (k, v) in [
                ("HOME", account.home.display().to_string()),
                ("USER", account.name.clone()),
                ("LOGNAME", account.name.clone()),
                ("SHELL", account.shell.clone()),
            ] {
                env.push((k.into(), v));
            }
        }
        if svc.service_type == ServiceType::Notify || svc.notify_access != berth_units::service::NotifyAccess::None {
            env.push(("NOTIFY_SOCKET".into(), notify::SOCKET.into()));
        }
        if let Some(w) = svc.watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        let mut by_var: Vec<(&'static str, String)> = Vec::new();
        for dir in directories(svc) {
            let path = dir.path();
            make_directory(&dir, &account).map_err(|e| format!("{}{}: {e}", dir.directive, dir.name))?;
            match by_var.iter_mut().find(|(v, _)| *v == dir.var) {
                Some((_, list)) => {
                    list.push(':');
                    list.push_str(&path.display().to_string());
                }
                None => by_var.push((dir.var, path.display().to_string())),
            }
        }
        for (var, value) in by_var {
            env.push((var.into(), value));
        }
        for (k, v) in &svc.environment {
            berth_units::env::set_var(&mut env, k, v);
        }
        for f in &svc.environment_files {
            match std::fs::read_to_string(&f.path) {
                Ok(text) => {
                    for (k, v) in berth_units::env::parse_env_file(&text).vars {
                        berth_units::env::set_var(&mut env, &k, &v);
                    }
                }
                Err(e) if f.optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("EnvironmentFile={}: {e}", f.path.display())),
            }
        }
        let group = cgroup::create(unit)?;
        if let Some(t) = svc.tasks_max {
            let value = match t {
                TasksMax::Infinity => "max".to_string(),
                TasksMax::Count(n) => n.to_string(),
                TasksMax::PerMille(pm) => {
                    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(32768);
                    (max * pm as u64 / 1000).max(1).to_string()
                }
            };
            if let Err(e) = cgroup::set_pids_max(&group, &value) {
                self.say(unit, &format!("TasksMax: {e}"));
            }
        }
        if svc.delegate != berth_units::service::Delegate::No {
            let supervisor = cgroup::delegate(unit)?;
            if account.uid != 0 {
                // The delegated subtree belongs to the service's user (systemd chowns the group).
                for dir in [&group, &supervisor] {
                    for f in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
                        let _ = nix::unistd::chown(
                            &dir.join(f),
                            Some(nix::unistd::Uid::from_raw(account.uid)),
                            Some(nix::unistd::Gid::from_raw(account.gid)),
                        );
                    }
                }
            }
        }
        let run = self.run_mut(unit);
        run.env = env;
        run.account = Some(account);
        Ok(())
    }

    /// Runs the next command of the current phase, or moves to the next phase.
    fn advance(&mut self, unit: &str, now: Instant) {
        loop {
            let Some(svc) = self.service(unit) else { return };
            let state = self.run_mut(unit).state;
            let next = self.run_mut(unit).queue.pop_front();
            if let Some(cmd) = next {
                let role = if state == State::Start && svc.service_type == ServiceType::Oneshot {
                    Role::Main
                } else {
                    Role::Control
                };
                match self.spawn(unit, &svc, &cmd, role) {
                    Ok(_) => return,
                    Err(e) => {
                        self.say(unit, &e);
                        if cmd.flags.ignore_failure {
                            continue;
                        }
                        self.phase_failed(unit, Outcome::Resources(e), now);
                        return;
                    }
                }
            }
            // The phase is over.
            match state {
                State::Condition => {
                    self.run_mut(unit).queue = svc.exec_start_pre.iter().cloned().collect();
                    self.run_mut(unit).state = State::StartPre;
                }
                State::StartPre => {
                    self.run_mut(unit).state = State::Start;
                    if svc.service_type == ServiceType::Oneshot {
                        self.run_mut(unit).queue = svc.exec_start.iter().cloned().collect();
                        if svc.exec_start.is_empty() {
                            self.enter_start_post(unit, &svc);
                        }
                        continue;
                    }
                    let Some(cmd) = svc.exec_start.first().cloned() else {
                        self.enter_start_post(unit, &svc);
                        continue;
                    };
                    let role = if svc.service_type == ServiceType::Forking { Role::Control } else { Role::Main };
                    match self.spawn(unit, &svc, &cmd, role) {
                        Ok(_) => {
                            match svc.service_type {
                                // Started once forked (simple) or once exec succeeded (exec): spawn
                                // returns after exec, so both are up now.
                                ServiceType::Simple | ServiceType::Exec => self.enter_start_post(unit, &svc),
                                _ => return,
                            }
                        }
                        Err(e) => {
                            self.say(unit, &e);
                            self.phase_failed(unit, Outcome::Resources(e), now);
                            return;
                        }
                    }
                }
                State::Start => {
                    // Oneshot: every ExecStart= done.
                    self.enter_start_post(unit, &svc);
                }
                State::StartPost => {
                    let remain = svc.service_type == ServiceType::Oneshot && svc.remain_after_exit;
                    let main_alive = self.run_mut(unit).main_pid.is_some();
                    if svc.service_type == ServiceType::Oneshot && !remain {
                        // Done, and nothing stays: straight to stopping what is left.
                        self.say(unit, "finished");
                        self.enter_stop(unit, now, Outcome::Success);
                        return;
                    }
                    let run = self.run_mut(unit);
                    run.deadline = None;
                    run.state = if main_alive { State::Running } else { State::Exited };
                    run.active_since = Some(SystemTime::now());
                    run.watchdog_at = svc.watchdog.map(|d| now + d);
                    let pid = run.main_pid;
                    let text = match pid {
                        Some(p) => format!("active (main pid {p})"),
                        None => "active".to_string(),
                    };
                    self.say(unit, &text);
                    return;
                }
                State::Reload => {
                    let run = self.run_mut(unit);
                    run.deadline = None;
                    run.state = if run.main_pid.is_some() { State::Running } else { State::Exited };
                    self.say(unit, "reloaded");
                    return;
                }
                State::Stop => {
                    self.enter_sigterm(unit, now);
                    return;
                }
                State::StopPost => {
                    self.finish(unit, now);
                    return;
                }
                _ => return,
            }
        }
    }

    fn enter_start_post(&mut self, unit: &str, svc: &Service) {
        let run = self.run_mut(unit);
        run.state = State::StartPost;
        run.queue = svc.exec_start_post.iter().cloned().collect();
    }

    fn spawn(&mut self, unit: &str, svc: &Service, cmd: &ExecCommand, role: Role) -> Result<Pid, String> {
        let (env, account, main_pid) = {
            let run = self.run_mut(unit);
            (run.env.clone(), run.account.clone(), run.main_pid)
        };
        let account = account.ok_or_else(|| format!("{unit}: not prepared"))?;
        let group = match svc.delegate {
            berth_units::service::Delegate::No => cgroup::path(unit),
            _ => cgroup::path(unit).join(cgroup::SUPERVISOR),
        };
        let ctx = exec::Context { service: svc, env: &env, account: &account, cgroup: &group };
        let output = if exec::is_null(svc) {
            Output::Null
        } else if exec::wants_journal(svc) {
            match self.journal.pipe(unit) {
                Ok(fd) => Output::Journal(fd),
                Err(e) => {
                    log::line(&format!("{unit}: {e}; output to the console"));
                    Output::Inherit
                }
            }
        } else {
            Output::Inherit
        };
        let mut extra = Vec::new();
        if let Some(p) = main_pid {
            extra.push(("MAINPID".to_string(), p.as_raw().to_string()));
        }
        let pid = exec::spawn(&ctx, cmd, &extra, output).map_err(|e| format!("line {}: {e}", cmd.line))?;
        self.journal.set_pid(unit, pid.as_raw());
        self.pids.insert(pid.as_raw(), (unit.to_string(), role));
        let run = self.run_mut(unit);
        match role {
            Role::Main => run.main_pid = Some(pid),
            Role::Control => run.control_pid = Some(pid),
        }
        // Which command failed, if it does: remembered with the pid.
        Ok(pid)
    }

    /// A process of `unit` ended.
    pub(super) fn process_exited(&mut self, unit: &str, role: Role, pid: Pid, status: &WaitStatus) {
        let now = Instant::now();
        let Some(svc) = self.service(unit) else { return };
        let outcome = outcome_of(status, &svc);
        let text = exit_text(status);
        let state = self.run_mut(unit).state;
        match role {
            Role::Control => {
                let run = self.run_mut(unit);
                if run.control_pid == Some(pid) {
                    run.control_pid = None;
                }
                let failed = outcome != Outcome::Success;
                // `-` prefix: the failure is ignored. (The command's flags are gone with it;
                // the prefix is looked up on the phase's commands by position.)
                let ignored = failed && self.last_command_ignores(unit, &svc, state);
                if failed {
                    let t = format!("control process {pid} {text}{}", if ignored { " (ignored)" } else { "" });
                    self.say(unit, &t);
                }
                match state {
                    State::Condition if failed && !ignored => {
                        if matches!(outcome, Outcome::ExitCode(c) if (1..255).contains(&c)) {
                            self.say(unit, "ExecCondition= not met; skipped");
                            self.enter_stop(unit, now, Outcome::Success);
                            self.run_mut(unit).then_start = false;
                        } else {
                            self.phase_failed(unit, outcome, now);
                        }
                    }
                    State::StartPre | State::StartPost if failed && !ignored => self.phase_failed(unit, outcome, now),
                    State::Reload if failed && !ignored => {
                        // The service keeps running with its old configuration, as with systemd.
                        let run = self.run_mut(unit);
                        run.queue.clear();
                        run.deadline = None;
                        run.state = if run.main_pid.is_some() { State::Running } else { State::Exited };
                        self.say(unit, &format!("reload failed: {}", outcome.describe()));
                    }
                    State::Start if svc.service_type == ServiceType::Forking => {
                        if failed {
                            self.phase_failed(unit, outcome, now);
                        } else {
                            // PIDFile= is the service's to write: checked as MAINPID= is.
                            let main = forking_main_pid(unit, &svc)
                                .map(|p| self.check_main_pid(unit, &p.as_raw().to_string()));
                            match main {
                                Some(Err(why)) => {
                                    let why =
                                        format!("forking: PIDFile= names a process that cannot be the main one: {why}");
                                    self.phase_failed(unit, Outcome::Resources(why), now);
                                }
                                Some(Ok(main)) => {
                                    self.pids.insert(main.as_raw(), (unit.to_string(), Role::Main));
                                    self.run_mut(unit).main_pid = Some(main);
                                    self.enter_start_post(unit, &svc);
                                    self.advance(unit, now);
                                }
                                None => {
                                    let why = "forking: no main process (PIDFile= missing and no single process left)";
                                    self.phase_failed(unit, Outcome::Resources(why.into()), now);
                                }
                            }
                        }
                    }
                    State::Stop
                    | State::StopPost
                    | State::Condition
                    | State::StartPre
                    | State::StartPost
                    | State::Reload => self.advance(unit, now),
                    State::StopSigterm | State::StopSigkill => self.check_stopped(unit, now),
                    _ => {}
                }
            }
            Role::Main => {
                let run = self.run_mut(unit);
                if run.main_pid == Some(pid) {
                    run.main_pid = None;
                }
                run.last_exit = Some(short_exit(status));
                run.watchdog_at = None;
                match state {
                    State::Start if svc.service_type == ServiceType::Oneshot => {
                        if outcome != Outcome::Success && !self.last_command_ignores(unit, &svc, state) {
                            self.say(unit, &format!("main process {pid} {text}"));
                            self.phase_failed(unit, outcome, now);
                        } else {
                            self.advance(unit, now);
                        }
                    }
                    State::Start | State::StartPost => {
                        // Exited before it was up (notify: before READY=1).
                        self.say(unit, &format!("main process {pid} {text} before the service was up"));
                        let o = if outcome == Outcome::Success {
                            Outcome::Resources("main process exited before READY=1".into())
                        } else {
                            outcome
                        };
                        self.phase_failed(unit, o, now);
                    }
                    State::Running | State::Reload => {
                        self.say(unit, &format!("main process {pid} {text}"));
                        let stopping = self.run_mut(unit).stopping;
                        if outcome == Outcome::Success && svc.remain_after_exit {
                            self.run_mut(unit).state = State::Exited;
                        } else if stopping {
                            self.enter_stop(unit, now, Outcome::Success);
                        } else {
                            self.enter_stop(unit, now, outcome);
                        }
                    }
                    State::Stop => {
                        // ExecStop= made it exit; go on once the control process ends.
                        self.say(unit, &format!("main process {pid} {text}"));
                    }
                    State::StopSigterm | State::StopSigkill => self.check_stopped(unit, now),
                    _ => {}
                }
            }
        }
    }

    /// Whether the command that just ran in `state` had the `-` prefix.
    fn last_command_ignores(&mut self, unit: &str, svc: &Service, state: State) -> bool {
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
        let left = self.run_mut(unit).queue.len();
        list.len().checked_sub(left + 1).and_then(|i| list.get(i)).is_some_and(|c| c.flags.ignore_failure)
    }

    /// Start failed: stop what runs, then failed (and maybe restart).
    fn phase_failed(&mut self, unit: &str, outcome: Outcome, now: Instant) {
        self.enter_stop(unit, now, outcome);
    }

    /// Fails without anything to stop.
    fn fail_now(&mut self, unit: &str, outcome: Outcome) {
        let text = format!("failed: {}", outcome.describe());
        self.say(unit, &text);
        let run = self.run_mut(unit);
        run.state = State::Failed;
        run.outcome = outcome;
    }

    /// `berthctl reload`: ExecReload= while the service is up.
    pub fn reload_unit(&mut self, unit: &str) -> Result<String, String> {
        self.set.load_more(&self.loader, &[unit]);
        let name = self.set.resolve(unit).map(str::to_string).ok_or_else(|| "unit not found".to_string())?;
        let svc = self.service(&name).ok_or_else(|| "not a service".to_string())?;
        if svc.exec_reload.is_empty() {
            return Err("no ExecReload= (reload is not supported by this unit)".to_string());
        }
        let state = self.runs.get(&name).map_or(State::Dead, |r| r.state);
        if state != State::Running && state != State::Exited {
            return Err(format!("not active ({}), nothing to reload", state.active()));
        }
        self.say(&name, "reloading");
        let run = self.run_mut(&name);
        run.state = State::Reload;
        run.deadline = svc.timeout_start.finite().map(|d| Instant::now() + d);
        run.queue = svc.exec_reload.iter().cloned().collect();
        self.advance(&name, Instant::now());
        Ok(name)
    }

    /// Explicit stop (berthctl, shutdown, a conflict).
    pub(super) fn stop_service(&mut self, unit: &str, now: Instant) {
        let run = self.run_mut(unit);
        run.stop_requested = true;
        if run.state == State::AutoRestart {
            run.restart_at = None;
            run.state = State::Dead;
            return;
        }
        if !run.state.is_active()
            && !matches!(run.state, State::Condition | State::StartPre | State::Start | State::StartPost)
        {
            return;
        }
        self.say(unit, "stopping");
        self.enter_stop(unit, now, Outcome::Success);
    }

    /// ExecStop= (when the service was up), then the kill sequence.
    fn enter_stop(&mut self, unit: &str, now: Instant, outcome: Outcome) {
        let Some(svc) = self.service(unit) else { return };
        let run = self.run_mut(unit);
        let was_up = run.state.is_active();
        if outcome != Outcome::Success || run.outcome == Outcome::Success {
            run.outcome = outcome;
        }
        run.queue.clear();
        run.watchdog_at = None;
        run.deadline = svc.timeout_stop.finite().map(|d| now + d);
        // A control process of the start phase is killed with the rest.
        if was_up && !svc.exec_stop.is_empty() {
            run.state = State::Stop;
            run.queue = svc.exec_stop.iter().cloned().collect();
            self.advance(unit, now);
        } else {
            self.enter_sigterm(unit, now);
        }
    }

    fn enter_sigterm(&mut self, unit: &str, now: Instant) {
        let Some(svc) = self.service(unit) else { return };
        let run = self.run_mut(unit);
        run.state = State::StopSigterm;
        run.deadline = svc.timeout_stop.finite().map(|d| now + d);
        let (main, control) = (run.main_pid, run.control_pid);
        let group = cgroup::path(unit);
        let sig = svc.kill_signal;
        match svc.kill_mode {
            KillMode::ControlGroup => {
                cgroup::signal_all(&group, sig);
            }
            KillMode::Mixed | KillMode::Process => {
                for p in [main, control].into_iter().flatten() {
                    let _ = kill(p, sig);
                    let _ = kill(p, Signal::SIGCONT);
                }
            }
            KillMode::None => {}
        }
        if svc.send_sighup && svc.kill_mode == KillMode::ControlGroup {
            cgroup::signal_all(&group, Signal::SIGHUP);
        }
        self.check_stopped(unit, now);
    }

    /// In stop-sigterm/-sigkill: moves on once what KillMode waits for is gone.
    fn check_stopped(&mut self, unit: &str, now: Instant) {
        let Some(svc) = self.service(unit) else { return };
        let run = self.run_mut(unit);
        if !matches!(run.state, State::StopSigterm | State::StopSigkill) {
            return;
        }
        let ours_gone = run.main_pid.is_none() && run.control_pid.is_none();
        let done = match svc.kill_mode {
            KillMode::ControlGroup => ours_gone && !cgroup::populated(&cgroup::path(unit)),
            KillMode::Mixed | KillMode::Process | KillMode::None => ours_gone,
        };
        if !done {
            return;
        }
        if svc.kill_mode == KillMode::Mixed {
            cgroup::signal_all(&cgroup::path(unit), Signal::SIGKILL);
        }
        let run = self.run_mut(unit);
        run.state = State::StopPost;
        run.queue = svc.exec_stop_post.iter().cloned().collect();
        self.advance(unit, now);
    }

    /// Stopped: inactive or failed, then maybe a restart.
    fn finish(&mut self, unit: &str, now: Instant) {
        let Some(svc) = self.service(unit) else { return };
        let group = cgroup::path(unit);
        if !cgroup::populated(&group) {
            cgroup::remove(&group);
        }
        if svc.runtime_directory_preserve == berth_units::service::Preserve::No {
            for dir in directories(&svc).iter().filter(|d| d.var == "RUNTIME_DIRECTORY") {
                // Walked without following links: the service may have replaced a part by one.
                if let Err(e) =
                    crate::fsat::remove_tree(std::path::Path::new(dir.base), std::path::Path::new(&dir.name))
                {
                    self.say(unit, &format!("{}{}: not removed: {e}", dir.directive, dir.name));
                }
            }
        }
        let shutting_down = self.shutting_down;
        let run = self.run_mut(unit);
        run.deadline = None;
        run.active_since = None;
        run.main_pid = None;
        run.control_pid = None;
        let outcome = run.outcome.clone();
        let failed = outcome != Outcome::Success;
        run.state = if failed { State::Failed } else { State::Dead };
        let restart = !run.stop_requested && !shutting_down && should_restart(&svc, &outcome);
        let then_start = std::mem::take(&mut run.then_start);
        if restart {
            run.state = State::AutoRestart;
            run.restart_at = Some(now + svc.restart_sec);
            let n = run.restarts + 1;
            let text = format!(
                "{}; restarting in {} (restart {n})",
                if failed { format!("failed: {}", outcome.describe()) } else { "exited".into() },
                super::fmt_duration(svc.restart_sec)
            );
            self.say(unit, &text);
            return;
        }
        if failed {
            self.say(unit, &format!("failed: {}", outcome.describe()));
        } else {
            self.say(unit, "stopped");
        }
        if then_start && !shutting_down {
            let _ = self.start(unit);
        }
    }

    /// Deadlines and restarts of one unit.
    pub(super) fn unit_tick(&mut self, unit: &str, now: Instant) {
        let Some(svc) = self.service(unit) else { return };
        let run = self.run_mut(unit);
        if let Some(at) = run.restart_at
            && now >= at
        {
            run.restart_at = None;
            run.restarting = true;
            self.start_service(unit, now);
            return;
        }
        let run = self.run_mut(unit);
        if let Some(at) = run.watchdog_at
            && now >= at
        {
            run.watchdog_at = None;
            if let Some(p) = run.main_pid {
                let _ = kill(p, Signal::SIGABRT);
            }
            self.say(unit, "watchdog timeout: no WATCHDOG=1 in time");
            self.enter_stop(unit, now, Outcome::Watchdog);
            return;
        }
        let run = self.run_mut(unit);
        let state = run.state;
        if matches!(state, State::StopSigterm | State::StopSigkill) {
            self.check_stopped(unit, now);
        }
        let run = self.run_mut(unit);
        let Some(deadline) = run.deadline else { return };
        if now < deadline {
            return;
        }
        run.deadline = None;
        match run.state {
            State::Condition | State::StartPre | State::Start | State::StartPost => {
                let t = format!("start timed out after {}", svc.timeout_start);
                self.say(unit, &t);
                self.enter_stop(unit, now, Outcome::Timeout);
            }
            State::Reload => {
                self.say(unit, "reload timed out");
                let run = self.run_mut(unit);
                if let Some(p) = run.control_pid {
                    let _ = kill(p, Signal::SIGKILL);
                }
                run.queue.clear();
                run.state = if run.main_pid.is_some() { State::Running } else { State::Exited };
            }
            State::Stop => {
                let t = format!("ExecStop= timed out after {}", svc.timeout_stop);
                self.say(unit, &t);
                self.enter_sigterm(unit, now);
            }
            State::StopSigterm => {
                let group = cgroup::path(unit);
                let t = format!("stop timed out after {}; sending SIGKILL", svc.timeout_stop);
                self.say(unit, &t);
                let run = self.run_mut(unit);
                let (main, control) = (run.main_pid, run.control_pid);
                if svc.send_sigkill {
                    match svc.kill_mode {
                        KillMode::ControlGroup | KillMode::Mixed => {
                            cgroup::signal_all(&group, Signal::SIGKILL);
                        }
                        KillMode::Process => {
                            for p in [main, control].into_iter().flatten() {
                                let _ = kill(p, Signal::SIGKILL);
                            }
                        }
                        KillMode::None => {}
                    }
                }
                let run = self.run_mut(unit);
                if run.outcome == Outcome::Success && !run.stop_requested {
                    run.outcome = Outcome::Timeout;
                }
                run.state = State::StopSigkill;
                run.deadline = Some(now + super::SIGKILL_WAIT);
            }
            State::StopSigkill => {
                self.say(unit, "processes left after SIGKILL; giving up on them");
                let run = self.run_mut(unit);
                run.main_pid = None;
                run.control_pid = None;
                run.state = State::StopPost;
                run.queue = svc.exec_stop_post.iter().cloned().collect();
                self.advance(unit, now);
            }
            State::StopPost => self.finish(unit, now),
            _ => {}
        }
    }

    /// An sd_notify message.
    pub(super) fn on_notify(&mut self, m: notify::Message) {
        let now = Instant::now();
        let by_pid = self.pids.get(&m.pid).map(|(u, r)| (u.clone(), *r));
        let (unit, role) = match by_pid {
            Some(x) => x,
            None => match cgroup::unit_of(m.pid) {
                Some(u) => (u, Role::Control),
                None => return,
            },
        };
        let Some(svc) = self.service(&unit) else { return };
        use berth_units::service::NotifyAccess;
        let allowed = match svc.notify_access {
            NotifyAccess::None => false,
            NotifyAccess::Main => role == Role::Main,
            NotifyAccess::Exec => self.pids.contains_key(&m.pid),
            NotifyAccess::All => true,
        };
        if !allowed {
            return;
        }
        if let Some(text) = m.get("STATUS") {
            self.run_mut(&unit).status_text = Some(text.to_string());
        }
        if let Some(value) = m.get("MAINPID") {
            match self.check_main_pid(&unit, value) {
                Ok(pid) => {
                    self.pids.insert(pid.as_raw(), (unit.clone(), Role::Main));
                    self.run_mut(&unit).main_pid = Some(pid);
                }
                Err(why) => self.say(&unit, &format!("MAINPID={value} from pid {} ignored: {why}", m.pid)),
            }
        }
        if m.get("WATCHDOG") == Some("1") {
            let run = self.run_mut(&unit);
            if run.watchdog_at.is_some() {
                run.watchdog_at = svc.watchdog.map(|d| now + d);
            }
        }
        if m.get("WATCHDOG") == Some("trigger") {
            self.say(&unit, "watchdog triggered by the service");
            self.enter_stop(&unit, now, Outcome::Watchdog);
            return;
        }
        if m.get("STOPPING") == Some("1") {
            let run = self.run_mut(&unit);
            run.stopping = true;
        }
        if m.get("READY") == Some("1") {
            let run = self.run_mut(&unit);
            if run.state == State::Start && svc.service_type == ServiceType::Notify {
                self.enter_start_post(&unit, &svc);
                self.advance(&unit, now);
            }
        }
    }
}

impl Manager {
    /// The pid `value` names, if it may become `unit`'s main process; else why not. Only a
    /// process in the unit's own cgroup qualifies, never PID 1 and never another unit's process:
    /// otherwise a service could have the next stop signal any process (PID 1 takes SIGTERM as
    /// a reboot).
    fn check_main_pid(&self, unit: &str, value: &str) -> Result<Pid, String> {
        let pid = match value.trim().parse::<i32>() {
            Ok(p) if p > 0 => p,
            _ => return Err("not a process id".into()),
        };
        let owner = self.pids.get(&pid).map(|(u, _)| u.as_str());
        match main_pid_refusal(unit, pid, owner, cgroup::unit_of(pid).as_deref()) {
            None => Ok(Pid::from_raw(pid)),
            Some(why) => Err(why),
        }
    }
}

/// [`Manager::main_pid_refusal`] with what it looked up: the unit the manager knows `pid` as a
/// process of, and the unit whose cgroup `pid` is in (from `/proc/PID/cgroup`).
fn main_pid_refusal(unit: &str, pid: i32, known_as: Option<&str>, in_cgroup_of: Option<&str>) -> Option<String> {
    if pid == 1 {
        return Some("pid 1 is berth-init".into());
    }
    if let Some(other) = known_as.filter(|u| *u != unit) {
        return Some(format!("pid {pid} is a process of {other}"));
    }
    match in_cgroup_of {
        Some(u) if u == unit => None,
        Some(u) => Some(format!("pid {pid} is in the cgroup of {u}, not in {}", cgroup::display(unit))),
        None => Some(format!("pid {pid} is not in {} (or no longer runs)", cgroup::display(unit))),
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

/// The main process of a forking service: from PIDFile=, else the only process left.
fn forking_main_pid(unit: &str, svc: &Service) -> Option<Pid> {
    if let Some(file) = &svc.pid_file {
        let text = std::fs::read_to_string(file).ok()?;
        return text.trim().parse::<i32>().ok().filter(|p| *p > 0).map(Pid::from_raw);
    }
    let pids = cgroup::processes(&cgroup::path(unit));
    (svc.guess_main_pid && pids.len() == 1).then(|| pids[0])
}

/// Creates or reuses a directory of `RuntimeDirectory=` and friends: walked from its base
/// without following a symlink anywhere (the service's user owns the directory and could have
/// replaced a part of a nested name by a link to `/etc`), with mode and owner set on the last
/// component's descriptor ([`crate::fsat::service_directory`]).
fn make_directory(dir: &super::ServiceDir, account: &users::Account) -> Result<(), String> {
    crate::fsat::service_directory(
        std::path::Path::new(dir.base),
        std::path::Path::new(&dir.name),
        dir.mode,
        (account.uid, account.gid),
    )
    .map_err(|e| e.to_string())
}

fn condition_env() -> condition::ConditionEnv {
    condition::ConditionEnv {
        root: "/".into(),
        kernel_cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        virtualization: String::new(),
        container: false,
        capability_bounding_set: u64::MAX,
        first_boot: false,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
        machine_id: std::fs::read_to_string("/etc/machine-id").unwrap_or_default().trim().to_string(),
        environment: Vec::new(),
    }
}

fn describe_condition(c: &berth_units::Condition) -> String {
    let kind = if c.assert { "Assert" } else { "Condition" };
    format!("{kind}{:?}={}{}", c.kind, if c.negate { "!" } else { "" }, c.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_units::service::ExitStatusSet;

    fn svc(restart: Restart) -> Service {
        Service { restart, ..Service::default() }
    }

    #[test]
    fn restart_table() {
        let exit1 = Outcome::ExitCode(1);
        let segv = Outcome::Signal(Signal::SIGSEGV, true);
        let cases = [
            (Restart::No, [false, false, false, false]),
            (Restart::Always, [true, true, true, true]),
            (Restart::OnSuccess, [true, false, false, false]),
            (Restart::OnFailure, [false, true, true, true]),
            (Restart::OnAbnormal, [false, false, true, true]),
            (Restart::OnAbort, [false, false, true, false]),
        ];
        for (restart, expect) in cases {
            let got = [Outcome::Success, exit1.clone(), segv.clone(), Outcome::Timeout]
                .map(|o| should_restart(&svc(restart), &o));
            assert_eq!(got, expect, "{restart:?}");
        }
        // RestartPreventExitStatus= wins; a start-limit failure never restarts.
        let mut s = svc(Restart::Always);
        s.restart_prevent_exit_status = ExitStatusSet { codes: vec![255], signals: vec![] };
        assert!(!should_restart(&s, &Outcome::ExitCode(255)));
        assert!(should_restart(&s, &Outcome::ExitCode(1)));
        assert!(!should_restart(&s, &Outcome::StartLimit));
    }

    /// M11: only a process in the unit's own cgroup becomes its main process.
    #[test]
    fn m11_mainpid_must_be_in_the_units_cgroup() {
        let a = "a.service";
        assert_eq!(main_pid_refusal(a, 77, None, Some(a)), None);
        assert_eq!(main_pid_refusal(a, 77, Some(a), Some(a)), None);
        assert_eq!(main_pid_refusal(a, 1, None, Some(a)).as_deref(), Some("pid 1 is berth-init"));
        assert_eq!(
            main_pid_refusal(a, 77, Some("b.service"), Some(a)).as_deref(),
            Some("pid 77 is a process of b.service")
        );
        assert_eq!(
            main_pid_refusal(a, 77, None, Some("b.service")).as_deref(),
            Some("pid 77 is in the cgroup of b.service, not in /system.slice/a.service")
        );
        assert_eq!(
            main_pid_refusal(a, 77, None, None).as_deref(),
            Some("pid 77 is not in /system.slice/a.service (or no longer runs)")
        );
    }

    /// H2: the directories of `StateDirectory=` and friends are made by walking from their
    /// base without following links; a service that replaced a nested one by a link to /etc
    /// does not get /etc (81879cc chmod'ed and chown'ed it through the link).
    #[test]
    fn h2_a_symlinked_state_directory_component_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("var/lib");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir(&etc).unwrap();
        let account = users::Account {
            name: "foo".into(),
            uid: 1001,
            gid: 1001,
            home: "/".into(),
            shell: "/bin/sh".into(),
            groups: Vec::new(),
        };
        // `StateDirectory=foo foo/sub` with `User=` uid 1001.
        let base_str: &'static str = Box::leak(base.display().to_string().into_boxed_str());
        let dirs = ["foo", "foo/sub"].map(|name| super::super::ServiceDir {
            directive: "StateDirectory=",
            base: base_str,
            name: name.into(),
            mode: 0o750,
            var: "STATE_DIRECTORY",
        });
        for d in &dirs {
            make_directory(d, &account).unwrap();
        }
        let owner = |p: &std::path::Path| {
            let m = p.symlink_metadata().unwrap();
            (m.uid(), m.mode() & 0o7777)
        };
        assert_eq!(owner(&base.join("foo/sub")), (1001, 0o750));
        // The service swaps foo/sub for a link to /etc; the next start refuses it.
        std::fs::remove_dir(base.join("foo/sub")).unwrap();
        std::os::unix::fs::symlink(&etc, base.join("foo/sub")).unwrap();
        std::os::unix::fs::lchown(base.join("foo/sub"), Some(1001), Some(1001)).unwrap();
        make_directory(&dirs[0], &account).unwrap();
        let e = make_directory(&dirs[1], &account).unwrap_err();
        assert!(e.ends_with("var/lib/foo/sub is a symbolic link; not followed"), "{e}");
        assert_eq!(owner(&etc), (0, 0o755));
    }

    #[test]
    fn clean_exits() {
        let pid = Pid::from_raw(10);
        let mut s = svc(Restart::No);
        assert_eq!(outcome_of(&WaitStatus::Exited(pid, 0), &s), Outcome::Success);
        assert_eq!(outcome_of(&WaitStatus::Exited(pid, 3), &s), Outcome::ExitCode(3));
        assert_eq!(outcome_of(&WaitStatus::Signaled(pid, Signal::SIGTERM, false), &s), Outcome::Success);
        assert_eq!(
            outcome_of(&WaitStatus::Signaled(pid, Signal::SIGKILL, false), &s),
            Outcome::Signal(Signal::SIGKILL, false)
        );
        s.success_exit_status = ExitStatusSet { codes: vec![3], signals: vec![] };
        assert_eq!(outcome_of(&WaitStatus::Exited(pid, 3), &s), Outcome::Success);
        // A oneshot killed by SIGTERM did not finish its job.
        s.service_type = ServiceType::Oneshot;
        assert_ne!(outcome_of(&WaitStatus::Signaled(pid, Signal::SIGTERM, false), &s), Outcome::Success);
        assert_eq!(short_exit(&WaitStatus::Signaled(pid, Signal::SIGKILL, false)), "signal=KILL");
        assert_eq!(super::super::fmt_duration(std::time::Duration::from_millis(100)), "100ms");
        assert_eq!(super::super::fmt_duration(std::time::Duration::from_secs(90)), "1min 30s");
    }
}
