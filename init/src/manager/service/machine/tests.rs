//! The machine driven without a process: each test plays the manager (prepare and spawn
//! answered at once, pids counted from 100) and checks the effects and the states.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use berth_units::command::{ExecCommand, ExecFlags};
use berth_units::service::{ExitStatusSet, KillMode, Restart, ServiceType};
use berth_units::time::TimeSpan;

use super::*;

/// The world the machine asks about.
#[derive(Default)]
struct World {
    populated: bool,
    forking: Option<Result<Pid, String>>,
}

impl Probe for World {
    fn group_populated(&self) -> bool {
        self.populated
    }

    fn forking_main_pid(&self, _: &Service) -> Option<Result<Pid, String>> {
        self.forking.clone()
    }
}

/// One service, its run, and what was spawned.
struct Sim {
    svc: Service,
    run: ServiceRun,
    world: World,
    t0: Instant,
    next_pid: i32,
    /// (program, role, pid) of every spawn.
    spawned: Vec<(String, Role, Pid)>,
    /// Spawns of this program fail.
    broken: Option<String>,
}

fn cmd(path: &str) -> ExecCommand {
    ExecCommand { path: path.into(), argv: vec![path.into()], flags: ExecFlags::default(), line: 1 }
}

fn ignoring(path: &str) -> ExecCommand {
    ExecCommand { flags: ExecFlags { ignore_failure: true, ..ExecFlags::default() }, ..cmd(path) }
}

fn service(kind: ServiceType, start: &[&str]) -> Service {
    Service { service_type: kind, exec_start: start.iter().map(|p| cmd(p)).collect(), ..Service::default() }
}

fn says(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Say(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn kills(fx: &[Effect]) -> Vec<(KillTarget, Signal)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Kill { whom, signal } => Some((*whom, *signal)),
            _ => None,
        })
        .collect()
}

fn exited(pid: Pid, code: i32) -> WaitStatus {
    WaitStatus::Exited(pid, code)
}

fn killed(pid: Pid, signal: Signal) -> WaitStatus {
    WaitStatus::Signaled(pid, signal, false)
}

impl Sim {
    fn new(svc: Service) -> Sim {
        Sim {
            svc,
            run: ServiceRun::default(),
            world: World::default(),
            t0: Instant::now(),
            next_pid: 100,
            spawned: Vec::new(),
            broken: None,
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// Answers prepares and spawns as the manager would; returns every effect in order.
    fn carry(&mut self, fx: Vec<Effect>, now: Instant) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut fx: VecDeque<Effect> = fx.into();
        while let Some(e) = fx.pop_front() {
            match &e {
                Effect::Prepare => fx.extend(self.run.prepared(&self.svc, &self.world, Prepared::Ready, now)),
                Effect::Spawn { cmd, role } => {
                    let result = if self.broken.as_deref() == Some(cmd.path.as_str()) {
                        Err(format!("line 1: {}: No such file or directory", cmd.path))
                    } else {
                        let pid = Pid::from_raw(self.next_pid);
                        self.next_pid += 1;
                        self.spawned.push((cmd.path.clone(), *role, pid));
                        Ok(pid)
                    };
                    fx.extend(self.run.spawned(&self.svc, &self.world, result, now));
                }
                _ => {}
            }
            all.push(e);
        }
        all
    }

    fn start(&mut self, secs: u64) -> Vec<Effect> {
        let limit = StartLimit { interval: Some(Duration::from_secs(10)), burst: 5 };
        let fx = self.run.start(&self.svc, limit, self.at(secs));
        self.carry(fx, self.at(secs))
    }

    fn stop(&mut self, secs: u64) -> Vec<Effect> {
        let fx = self.run.stop(&self.svc, &self.world, self.at(secs));
        self.carry(fx, self.at(secs))
    }

    fn exit(&mut self, role: Role, status: WaitStatus, secs: u64) -> Vec<Effect> {
        let pid = status.pid().unwrap_or(Pid::from_raw(0));
        let exit = Exit::of(&status, &self.svc);
        let fx = self.run.on_exit(&self.svc, &self.world, role, pid, &exit, self.at(secs));
        self.carry(fx, self.at(secs))
    }

    fn notify(&mut self, notice: Notice, secs: u64) -> Vec<Effect> {
        let fx = self.run.on_notify(&self.svc, &self.world, notice, self.at(secs));
        self.carry(fx, self.at(secs))
    }

    fn tick(&mut self, secs: u64) -> Vec<Effect> {
        let fx = self.run.on_timeout(&self.svc, &self.world, self.at(secs));
        self.carry(fx, self.at(secs))
    }

    /// The pid of the last spawn of `path`.
    fn pid(&self, path: &str) -> Pid {
        self.spawned.iter().rev().find(|(p, _, _)| p == path).map(|(_, _, pid)| *pid).expect("spawned")
    }

    fn roles(&self) -> Vec<(&str, Role)> {
        self.spawned.iter().map(|(p, r, _)| (p.as_str(), *r)).collect()
    }
}

// Type=

#[test]
fn a_simple_service_is_running_as_soon_as_its_main_process_is_forked() {
    let mut s = Sim::new(service(ServiceType::Simple, &["/bin/daemon"]));
    let fx = s.start(0);
    let main = Pid::from_raw(100);
    assert_eq!(
        fx,
        [
            Effect::Prepare,
            Effect::Say("starting".into()),
            Effect::Spawn { cmd: cmd("/bin/daemon"), role: Role::Main },
            Effect::Say("active (main pid 100)".into()),
        ]
    );
    assert_eq!((s.run.state(), s.run.main_pid), (State::Running, Some(main)));
    assert_eq!(s.run.active_at, Some(s.at(0)));
}

#[test]
fn an_exec_service_whose_program_cannot_be_run_fails_at_once() {
    let mut s = Sim::new(service(ServiceType::Exec, &["/bin/missing"]));
    s.broken = Some("/bin/missing".into());
    let fx = s.start(0);
    assert_eq!(
        says(&fx),
        [
            "starting",
            "line 1: /bin/missing: No such file or directory",
            "failed: line 1: /bin/missing: No such file or directory"
        ]
    );
    assert!(fx.contains(&Effect::Cleanup { runtime_directories: true }), "{fx:?}");
    assert_eq!(s.run.state(), State::Failed);
    assert!(matches!(s.run.outcome, Outcome::Resources(_)));
}

#[test]
fn a_notify_service_is_activating_until_it_sends_ready() {
    let mut s = Sim::new(service(ServiceType::Notify, &["/bin/daemon"]));
    let fx = s.start(0);
    assert_eq!(says(&fx), ["starting"]);
    assert_eq!(s.run.state(), State::Start);
    let fx = s.notify(Notice { status: Some("warming up".into()), ..Notice::default() }, 1);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!((s.run.state(), s.run.status_text.as_deref()), (State::Start, Some("warming up")));
    let fx = s.notify(Notice { ready: true, ..Notice::default() }, 2);
    assert_eq!(says(&fx), ["active (main pid 100)"]);
    assert_eq!(s.run.state(), State::Running);
}

#[test]
fn a_notify_service_whose_main_process_exits_before_ready_fails() {
    let mut s = Sim::new(service(ServiceType::Notify, &["/bin/daemon"]));
    s.start(0);
    let main = s.pid("/bin/daemon");
    let fx = s.exit(Role::Main, exited(main, 0), 1);
    assert_eq!(
        says(&fx),
        ["main process 100 exited, status=0 before the service was up", "failed: main process exited before READY=1"]
    );
    assert_eq!(s.run.state(), State::Failed);
    assert_eq!(s.run.last_exit.as_deref(), Some("status=0"));
}

#[test]
fn a_forking_service_adopts_the_daemon_once_its_first_process_exited() {
    let mut s = Sim::new(service(ServiceType::Forking, &["/sbin/forks"]));
    s.start(0);
    assert_eq!(s.roles(), [("/sbin/forks", Role::Control)]);
    assert_eq!(s.run.state(), State::Start);
    let daemon = Pid::from_raw(555);
    s.world.forking = Some(Ok(daemon));
    let parent = s.pid("/sbin/forks");
    let fx = s.exit(Role::Control, exited(parent, 0), 1);
    assert_eq!(fx, [Effect::Adopt(daemon), Effect::Say("active (main pid 555)".into())]);
    assert_eq!((s.run.state(), s.run.main_pid, s.run.control_pid), (State::Running, Some(daemon), None));
}

#[test]
fn a_forking_service_without_a_main_process_fails() {
    let mut s = Sim::new(service(ServiceType::Forking, &["/sbin/forks"]));
    s.start(0);
    let parent = s.pid("/sbin/forks");
    let fx = s.exit(Role::Control, exited(parent, 0), 1);
    assert_eq!(
        says(&fx).last(),
        Some(&"failed: forking: no main process (PIDFile= missing and no single process left)")
    );
    assert_eq!(s.run.state(), State::Failed);
    // A PIDFile= naming another unit's process is refused the same way.
    s.start(2);
    s.world.forking = Some(Err("pid 77 is a process of b.service".into()));
    let fx = s.exit(Role::Control, exited(s.pid("/sbin/forks"), 0), 3);
    assert!(says(&fx).last().is_some_and(|t| t.ends_with("pid 77 is a process of b.service")), "{fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Adopt(_))));
}

#[test]
fn a_oneshot_runs_each_exec_start_in_turn_as_its_main_process_and_ends_inactive() {
    let mut s = Sim::new(service(ServiceType::Oneshot, &["/bin/one", "/bin/two"]));
    s.start(0);
    assert_eq!((s.run.state(), s.run.state().active()), (State::Start, "activating"));
    assert_eq!(s.roles(), [("/bin/one", Role::Main)]);
    s.exit(Role::Main, exited(s.pid("/bin/one"), 0), 1);
    assert_eq!(s.roles(), [("/bin/one", Role::Main), ("/bin/two", Role::Main)]);
    let fx = s.exit(Role::Main, exited(s.pid("/bin/two"), 0), 2);
    assert_eq!(says(&fx), ["finished", "stopped"]);
    assert_eq!(s.run.state(), State::Dead);
}

#[test]
fn a_oneshot_fails_on_the_first_failing_command_unless_it_has_the_dash_prefix() {
    let mut svc = service(ServiceType::Oneshot, &["/bin/one"]);
    svc.exec_start.insert(0, ignoring("/bin/may-fail"));
    let mut s = Sim::new(svc);
    s.start(0);
    s.exit(Role::Main, exited(s.pid("/bin/may-fail"), 3), 1);
    assert_eq!(s.run.state(), State::Start, "the - prefix ignores status 3");
    let fx = s.exit(Role::Main, exited(s.pid("/bin/one"), 2), 2);
    assert_eq!(says(&fx), ["main process 101 exited, status=2", "failed: exit status 2"]);
    assert_eq!((s.run.state(), &s.run.outcome), (State::Failed, &Outcome::ExitCode(2)));
}

#[test]
fn a_oneshot_with_remain_after_exit_stays_active_as_exited() {
    let svc = Service { remain_after_exit: true, ..service(ServiceType::Oneshot, &["/bin/setup"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.exit(Role::Main, exited(s.pid("/bin/setup"), 0), 1);
    assert_eq!(says(&fx), ["active"]);
    assert_eq!((s.run.state(), s.run.state().active()), (State::Exited, "active"));
    // Stopping it runs no kill of a main process (there is none) and ends inactive.
    let fx = s.stop(2);
    assert_eq!(says(&fx), ["stopping", "stopped"]);
    assert_eq!(s.run.state(), State::Dead);
}

#[test]
fn a_simple_service_with_remain_after_exit_is_exited_after_a_clean_exit() {
    let svc = Service { remain_after_exit: true, ..service(ServiceType::Simple, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.exit(Role::Main, exited(s.pid("/bin/daemon"), 0), 5);
    assert_eq!(says(&fx), ["main process 100 exited, status=0"]);
    assert_eq!((s.run.state(), s.run.main_pid), (State::Exited, None));
}

#[test]
fn exec_start_pre_and_post_run_as_control_processes_around_the_main_one() {
    let mut svc = service(ServiceType::Simple, &["/bin/daemon"]);
    svc.exec_start_pre = vec![cmd("/bin/pre")];
    svc.exec_start_post = vec![cmd("/bin/post")];
    let mut s = Sim::new(svc);
    s.start(0);
    assert_eq!(s.run.state(), State::StartPre);
    s.exit(Role::Control, exited(s.pid("/bin/pre"), 0), 1);
    assert_eq!(s.run.state(), State::StartPost);
    let fx = s.exit(Role::Control, exited(s.pid("/bin/post"), 0), 2);
    assert_eq!(says(&fx), ["active (main pid 101)"]);
    assert_eq!(s.roles(), [("/bin/pre", Role::Control), ("/bin/daemon", Role::Main), ("/bin/post", Role::Control)]);
}

#[test]
fn exec_condition_exiting_1_skips_the_unit_without_failing_it() {
    let mut svc = service(ServiceType::Simple, &["/bin/daemon"]);
    svc.exec_condition = vec![cmd("/bin/check")];
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.exit(Role::Control, exited(s.pid("/bin/check"), 1), 1);
    assert_eq!(says(&fx), ["control process 100 exited, status=1", "ExecCondition= not met; skipped", "stopped"]);
    assert_eq!(s.run.state(), State::Dead);
    assert_eq!(s.roles(), [("/bin/check", Role::Control)], "ExecStart= never ran");
}

#[test]
fn an_unmet_condition_skips_and_a_failed_preparation_fails() {
    let mut s = Sim::new(service(ServiceType::Simple, &["/bin/daemon"]));
    let fx = s.run.start(&s.svc, StartLimit::default(), s.at(0));
    assert_eq!(fx, [Effect::Prepare]);
    let fx = s.run.prepared(&s.svc, &s.world, Prepared::Skipped("ConditionPathExists=/x".into()), s.at(0));
    assert_eq!(says(&fx), ["condition not met: ConditionPathExists=/x; skipped"]);
    assert_eq!(s.run.state(), State::Dead);
    s.run.start(&s.svc, StartLimit::default(), s.at(1));
    let fx = s.run.prepared(&s.svc, &s.world, Prepared::Failed("User=/Group=: no user bob".into()), s.at(1));
    assert_eq!(says(&fx), ["failed: User=/Group=: no user bob"]);
    assert_eq!(s.run.state(), State::Failed);
}

// Stop and the timeouts.

#[test]
fn a_stop_signals_the_cgroup_and_ends_once_it_is_empty() {
    let mut s = Sim::new(service(ServiceType::Simple, &["/bin/daemon"]));
    s.start(0);
    s.world.populated = true;
    let fx = s.stop(10);
    assert_eq!(says(&fx), ["stopping"]);
    assert_eq!(kills(&fx), [(KillTarget::Group, Signal::SIGTERM)]);
    assert_eq!(s.run.state(), State::StopSigterm);
    assert!(s.run.awaits_processes());
    s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 11);
    assert_eq!(s.run.state(), State::StopSigterm, "a process is left in the cgroup");
    s.world.populated = false;
    let fx = s.tick(11);
    assert_eq!(says(&fx), ["stopped"]);
    assert_eq!((s.run.state(), &s.run.outcome), (State::Dead, &Outcome::Success));
}

#[test]
fn kill_mode_process_signals_only_the_main_process_and_mixed_kills_the_rest() {
    let svc = Service { kill_mode: KillMode::Process, ..service(ServiceType::Simple, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    let main = s.pid("/bin/daemon");
    let fx = s.stop(1);
    assert_eq!(
        kills(&fx),
        [(KillTarget::Process(main), Signal::SIGTERM), (KillTarget::Process(main), Signal::SIGCONT)]
    );
    let fx = s.exit(Role::Main, killed(main, Signal::SIGTERM), 2);
    assert_eq!((says(&fx), kills(&fx)), (vec!["stopped"], vec![]));

    let svc = Service { kill_mode: KillMode::Mixed, ..service(ServiceType::Simple, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    s.stop(1);
    let fx = s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 2);
    assert_eq!(kills(&fx), [(KillTarget::Group, Signal::SIGKILL)]);
    assert_eq!(s.run.state(), State::Dead);
}

#[test]
fn exec_stop_runs_before_the_kill_sequence_and_exec_stop_post_after_it() {
    let mut svc = service(ServiceType::Simple, &["/bin/daemon"]);
    svc.exec_stop = vec![cmd("/bin/ask-to-stop")];
    svc.exec_stop_post = vec![cmd("/bin/clean")];
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.stop(1);
    assert!(kills(&fx).is_empty(), "{fx:?}");
    assert_eq!(s.run.state(), State::Stop);
    let fx = s.exit(Role::Main, exited(s.pid("/bin/daemon"), 0), 2);
    assert_eq!(says(&fx), ["main process 100 exited, status=0"]);
    let fx = s.exit(Role::Control, exited(s.pid("/bin/ask-to-stop"), 0), 2);
    assert_eq!(s.run.state(), State::StopPost, "{fx:?}");
    let fx = s.exit(Role::Control, exited(s.pid("/bin/clean"), 0), 3);
    assert_eq!(says(&fx), ["stopped"]);
    assert_eq!(
        s.roles().iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        ["/bin/daemon", "/bin/ask-to-stop", "/bin/clean"]
    );
}

#[test]
fn the_start_timeout_fails_the_start_with_sigterm() {
    let mut s = Sim::new(service(ServiceType::Notify, &["/bin/slow"]));
    s.world.populated = true;
    s.start(0);
    assert_eq!(s.run.deadline(), Some(s.at(90)));
    assert!(s.tick(89).is_empty());
    let fx = s.tick(91);
    assert_eq!(
        fx,
        [
            Effect::Say("start timed out after 90s".into()),
            Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGTERM }
        ]
    );
    assert_eq!((s.run.state(), &s.run.outcome), (State::StopSigterm, &Outcome::Timeout));
    s.world.populated = false;
    let fx = s.exit(Role::Main, killed(s.pid("/bin/slow"), Signal::SIGTERM), 92);
    assert_eq!(says(&fx), ["failed: timed out"]);
    assert_eq!(s.run.state(), State::Failed);
}

#[test]
fn the_stop_timeout_sends_sigkill_and_then_gives_up_on_what_is_left() {
    let svc = Service {
        timeout_stop: TimeSpan::Finite(Duration::from_secs(3)),
        ..service(ServiceType::Simple, &["/bin/stubborn"])
    };
    let mut s = Sim::new(svc);
    s.start(0);
    s.world.populated = true;
    s.stop(10);
    assert!(s.tick(12).is_empty());
    let fx = s.tick(13);
    assert_eq!(
        fx,
        [
            Effect::Say("stop timed out after 3s; sending SIGKILL".into()),
            Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGKILL }
        ]
    );
    assert_eq!(s.run.state(), State::StopSigkill);
    // An explicit stop that needed SIGKILL is not a failure.
    assert_eq!(s.run.outcome, Outcome::Success);
    let fx = s.tick(13 + SIGKILL_WAIT.as_secs());
    assert_eq!(says(&fx), ["processes left after SIGKILL; giving up on them", "stopped"]);
    assert_eq!((s.run.state(), s.run.main_pid), (State::Dead, None));
}

#[test]
fn the_watchdog_aborts_a_service_that_stopped_pinging() {
    let svc = Service { watchdog: Some(Duration::from_secs(10)), ..service(ServiceType::Notify, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    s.notify(Notice { ready: true, ..Notice::default() }, 1);
    assert_eq!(s.run.deadline(), Some(s.at(11)));
    s.notify(Notice { watchdog_ping: true, ..Notice::default() }, 5);
    assert!(s.tick(12).is_empty(), "WATCHDOG=1 at 5 s moved the deadline to 15 s");
    s.world.populated = true;
    let main = s.pid("/bin/daemon");
    let fx = s.tick(15);
    assert_eq!(
        fx,
        [
            Effect::Kill { whom: KillTarget::Process(main), signal: Signal::SIGABRT },
            Effect::Say("watchdog timeout: no WATCHDOG=1 in time".into()),
            Effect::Kill { whom: KillTarget::Group, signal: Signal::SIGTERM },
        ]
    );
    assert_eq!((s.run.state(), &s.run.outcome), (State::StopSigterm, &Outcome::Watchdog));
}

#[test]
fn watchdog_trigger_from_the_service_stops_it_as_a_watchdog_failure() {
    let svc = Service { watchdog: Some(Duration::from_secs(10)), ..service(ServiceType::Notify, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    s.notify(Notice { ready: true, ..Notice::default() }, 1);
    let fx = s.notify(Notice { watchdog_trigger: true, ..Notice::default() }, 2);
    assert_eq!(says(&fx), ["watchdog triggered by the service"]);
    assert_eq!(kills(&fx), [(KillTarget::Group, Signal::SIGTERM)]);
    assert_eq!((s.run.state(), &s.run.outcome), (State::StopSigterm, &Outcome::Watchdog));
    let fx = s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 3);
    assert_eq!(says(&fx), ["failed: watchdog timeout"]);
    assert_eq!(s.run.state(), State::Failed);
}

// Notify.

#[test]
fn mainpid_is_adopted_and_stopping_makes_the_next_exit_clean() {
    let svc = Service { restart: Restart::OnFailure, ..service(ServiceType::Notify, &["/bin/launcher"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    let real = Pid::from_raw(4242);
    let fx = s.notify(Notice { main_pid: Some(Ok(real)), ready: true, ..Notice::default() }, 1);
    assert_eq!(fx, [Effect::Adopt(real), Effect::Say("active (main pid 4242)".into())]);
    let fx = s.notify(
        Notice {
            main_pid: Some(Err("MAINPID=1 from pid 4242 ignored: pid 1 is berth-init".into())),
            ..Notice::default()
        },
        2,
    );
    assert_eq!(says(&fx), ["MAINPID=1 from pid 4242 ignored: pid 1 is berth-init"]);
    assert_eq!(s.run.main_pid, Some(real));
    s.notify(Notice { stopping: true, ..Notice::default() }, 3);
    let fx = s.exit(Role::Main, exited(real, 1), 4);
    assert_eq!(says(&fx), ["main process 4242 exited, status=1", "stopped"]);
    assert_eq!(s.run.state(), State::Dead, "STOPPING=1: the exit is a stop, not a failure to restart");
}

#[test]
fn notify_access_decides_who_may_send() {
    assert!(!notify_allowed(NotifyAccess::None, Some(Role::Main)));
    assert!(notify_allowed(NotifyAccess::Main, Some(Role::Main)));
    assert!(!notify_allowed(NotifyAccess::Main, Some(Role::Control)));
    assert!(notify_allowed(NotifyAccess::Exec, Some(Role::Control)));
    assert!(!notify_allowed(NotifyAccess::Exec, None));
    assert!(notify_allowed(NotifyAccess::All, None));
}

// Restarts.

#[test]
fn restart_on_failure_starts_again_after_restart_sec() {
    let svc = Service {
        restart: Restart::OnFailure,
        restart_sec: Duration::from_secs(2),
        ..service(ServiceType::Simple, &["/bin/crashy"])
    };
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.exit(Role::Main, killed(s.pid("/bin/crashy"), Signal::SIGKILL), 5);
    assert_eq!(says(&fx)[1], "failed: killed by SIGKILL; restarting in 2s (restart 1)");
    assert_eq!((s.run.state(), s.run.state().active()), (State::AutoRestart, "activating"));
    assert_eq!(s.run.deadline(), Some(s.at(7)));
    assert!(s.tick(6).is_empty());
    let fx = s.tick(7);
    assert_eq!(fx.first(), Some(&Effect::Prepare));
    assert_eq!((s.run.state(), s.run.restarts), (State::Running, 1));
    assert_ne!(s.pid("/bin/crashy"), Pid::from_raw(100));
}

#[test]
fn restart_on_failure_leaves_a_clean_exit_down() {
    let svc = Service { restart: Restart::OnFailure, ..service(ServiceType::Simple, &["/bin/job"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.exit(Role::Main, exited(s.pid("/bin/job"), 0), 1);
    assert_eq!(says(&fx), ["main process 100 exited, status=0", "stopped"]);
    assert_eq!((s.run.state(), s.run.deadline()), (State::Dead, None));
}

#[test]
fn an_explicit_stop_is_never_followed_by_a_restart() {
    let svc = Service { restart: Restart::Always, ..service(ServiceType::Simple, &["/bin/daemon"]) };
    let mut s = Sim::new(svc);
    s.start(0);
    s.stop(1);
    assert_eq!(s.run.state(), State::StopSigterm, "the main process still runs");
    let fx = s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 2);
    assert_eq!(says(&fx), ["stopped"]);
    assert_eq!((s.run.state(), s.run.restart_at), (State::Dead, None));
    // A stop while waiting for the restart cancels it.
    s.start(2);
    s.exit(Role::Main, exited(s.pid("/bin/daemon"), 0), 3);
    assert_eq!(s.run.state(), State::AutoRestart);
    assert!(s.stop(3).is_empty());
    assert_eq!((s.run.state(), s.run.deadline()), (State::Dead, None));
}

#[test]
fn the_start_limit_fails_the_unit_once_the_burst_is_spent() {
    let svc = Service {
        restart: Restart::Always,
        restart_sec: Duration::from_secs(1),
        ..service(ServiceType::Simple, &["/bin/flaky"])
    };
    let mut s = Sim::new(svc);
    let limit = StartLimit { interval: Some(Duration::from_secs(10)), burst: 3 };
    let fx = s.run.start(&s.svc, limit, s.at(0));
    s.carry(fx, s.at(0));
    for t in [1, 3] {
        s.exit(Role::Main, exited(s.pid("/bin/flaky"), 1), t);
        let fx = s.tick(t + 1);
        assert_eq!(s.run.state(), State::Running, "{fx:?}");
    }
    s.exit(Role::Main, exited(s.pid("/bin/flaky"), 1), 5);
    let fx = s.tick(6);
    assert_eq!(says(&fx), ["start limit hit (3 starts within 10s); failed, not starting again"]);
    assert_eq!((s.run.state(), &s.run.outcome, s.run.restarts), (State::Failed, &Outcome::StartLimit, 2));
    assert_eq!(s.run.deadline(), None);
    // A manual start forgets the limit.
    s.run.reset_start_limit();
    let fx = s.run.start(&s.svc, limit, s.at(7));
    assert_eq!(fx, [Effect::Prepare]);
}

#[test]
fn a_restart_stops_then_asks_for_a_start() {
    let mut s = Sim::new(service(ServiceType::Simple, &["/bin/daemon"]));
    s.start(0);
    s.run.restart_after_stop();
    let fx = s.stop(1);
    assert_eq!(says(&fx), ["stopping"]);
    let fx = s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 1);
    assert_eq!(says(&fx), ["stopped"]);
    assert_eq!(fx.last(), Some(&Effect::StartAgain));
    // Shutting down cancels it.
    s.start(2);
    s.run.restart_after_stop();
    s.run.shutdown();
    s.stop(3);
    let fx = s.exit(Role::Main, killed(s.pid("/bin/daemon"), Signal::SIGTERM), 3);
    assert_eq!(says(&fx), ["stopped"]);
    assert!(!fx.contains(&Effect::StartAgain), "{fx:?}");
}

// Reload.

#[test]
fn a_reload_runs_exec_reload_and_a_failed_or_slow_one_keeps_the_service_running() {
    let mut svc = service(ServiceType::Simple, &["/bin/daemon"]);
    svc.exec_reload = vec![cmd("/bin/reload")];
    let mut s = Sim::new(svc);
    s.start(0);
    let fx = s.run.reload(&s.svc, &s.world, s.at(1));
    let fx = s.carry(fx, s.at(1));
    assert_eq!(says(&fx), ["reloading"]);
    assert_eq!((s.run.state(), s.run.state().active()), (State::Reload, "reloading"));
    let fx = s.exit(Role::Control, exited(s.pid("/bin/reload"), 0), 2);
    assert_eq!((says(&fx), s.run.state()), (vec!["reloaded"], State::Running));

    let fx = s.run.reload(&s.svc, &s.world, s.at(3));
    s.carry(fx, s.at(3));
    let fx = s.exit(Role::Control, exited(s.pid("/bin/reload"), 1), 4);
    assert_eq!(says(&fx), ["control process 102 exited, status=1", "reload failed: exit status 1"]);
    assert_eq!(s.run.state(), State::Running);

    let fx = s.run.reload(&s.svc, &s.world, s.at(5));
    s.carry(fx, s.at(5));
    let fx = s.tick(5 + 91);
    assert_eq!(
        fx,
        [
            Effect::Say("reload timed out".into()),
            Effect::Kill { whom: KillTarget::Process(s.pid("/bin/reload")), signal: Signal::SIGKILL }
        ]
    );
    assert_eq!(s.run.state(), State::Running);
}

// How an exit is judged.

#[test]
fn restart_follows_systemds_table() {
    let svc = |restart| Service { restart, ..Service::default() };
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

#[test]
fn sigterm_is_a_clean_exit_except_for_a_oneshot() {
    let pid = Pid::from_raw(10);
    let mut s = Service::default();
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
}
