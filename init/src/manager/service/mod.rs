//! Services: the manager runs each unit's [`machine::ServiceRun`] and carries out the effects it
//! returns (fork and exec, signals, the journal, cgroups, directories). Every decision is in
//! [`machine`]; what is here does I/O.

pub mod machine;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Instant;

use berth_units::command::ExecCommand;
use berth_units::service::{Delegate, ServiceType, TasksMax};
use berth_units::{Service, Unit, condition};
use nix::sys::signal::kill;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use self::machine::{Effect, Exit, KillTarget, Notice, Prepared, Probe, Role, ServiceRun, StartLimit, State};
use super::exec::{self, Output};
use super::{JobError, Manager, cgroup, directories, notify, users};
use crate::manager::journal::Journal;
use crate::sys::log;

/// Why a start could not be prepared (after its conditions were met).
#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    #[error("User=/Group=: {0}")]
    Account(#[from] users::AccountError),
    #[error("{directive}{name}: {source}")]
    Directory { directive: &'static str, name: String, source: crate::sys::fsat::FsError },
    #[error("EnvironmentFile={}: {source}", path.display())]
    EnvironmentFile { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// What every command of one start of a service shares (made by [`Effect::Prepare`]).
pub(super) struct Launch {
    env: Vec<(String, String)>,
    account: users::Account,
}

impl Manager {
    /// Runs `step` on the machine of the service `unit` and carries out what it returns.
    fn drive(
        &mut self,
        unit: &str,
        now: Instant,
        step: impl FnOnce(&mut ServiceRun, &Service, &dyn Probe) -> Vec<Effect>,
    ) {
        let Some(def) = self.set.get(unit) else { return };
        let Some(svc) = def.service.as_ref() else { return };
        let run = self.runs.entry(unit.to_string()).or_default();
        let mut host =
            Host { name: unit, def, journal: &mut self.journal, pids: &mut self.pids, launches: &mut self.launches };
        let fx = step(run, svc, &host);
        let again = host.carry_out(run, svc, fx, now);
        if again && !self.shutting_down {
            let _ = self.start(unit);
        }
    }

    pub(super) fn start_service(&mut self, unit: &str, now: Instant) {
        let limit = self
            .set
            .get(unit)
            .map(|u| StartLimit { interval: u.start_limit_interval.finite(), burst: u.start_limit_burst });
        let limit = limit.unwrap_or_default();
        self.drive(unit, now, |run, svc, _| run.start(svc, limit, now));
    }

    /// Explicit stop (berthctl, shutdown, a conflict).
    pub(super) fn stop_service(&mut self, unit: &str, now: Instant) {
        self.drive(unit, now, |run, svc, probe| run.stop(svc, probe, now));
    }

    /// Deadlines and restarts of one unit.
    pub(super) fn unit_tick(&mut self, unit: &str, now: Instant) {
        self.drive(unit, now, |run, svc, probe| run.on_timeout(svc, probe, now));
    }

    /// A process of `unit` ended.
    pub(super) fn process_exited(&mut self, unit: &str, role: Role, pid: Pid, status: &WaitStatus) {
        let now = Instant::now();
        self.drive(unit, now, |run, svc, probe| run.on_exit(svc, probe, role, pid, &Exit::of(status, svc), now));
    }

    /// `berthctl reload`: ExecReload= while the service is up.
    pub fn reload_unit(&mut self, unit: &str) -> Result<String, JobError> {
        self.set.load_more(&self.loader, &[unit]);
        let name = self.set.resolve(unit).map(str::to_string).ok_or_else(|| JobError::not_found(unit))?;
        let svc = self.set.get(&name).and_then(|u| u.service.as_ref());
        let svc = svc.ok_or_else(|| JobError::NotAService { unit: name.clone() })?;
        if svc.exec_reload.is_empty() {
            return Err(JobError::NoReload { unit: name });
        }
        let state = self.runs.get(&name).map_or(State::Dead, ServiceRun::state);
        if state != State::Running && state != State::Exited {
            return Err(JobError::NotActive { unit: name, state: state.active() });
        }
        let now = Instant::now();
        self.drive(&name, now, |run, svc, probe| run.reload(svc, probe, now));
        Ok(name)
    }

    /// An sd_notify message.
    pub(super) fn on_notify(&mut self, m: notify::Message) {
        let now = Instant::now();
        let (unit, role) = match self.pids.get(&m.pid) {
            Some((u, r)) => (u.clone(), Some(*r)),
            None => match cgroup::unit_of(m.pid) {
                Some(u) => (u, None),
                None => return,
            },
        };
        let Some(svc) = self.set.get(&unit).and_then(|u| u.service.as_ref()) else { return };
        if !machine::notify_allowed(svc.notify_access, role) {
            return;
        }
        let notice = Notice {
            status: m.get("STATUS").map(str::to_string),
            main_pid: m.get("MAINPID").map(|value| {
                check_main_pid(&self.pids, &unit, value)
                    .map_err(|why| format!("MAINPID={value} from pid {} ignored: {why}", m.pid))
            }),
            ready: m.get("READY") == Some("1"),
            stopping: m.get("STOPPING") == Some("1"),
            watchdog_ping: m.get("WATCHDOG") == Some("1"),
            watchdog_trigger: m.get("WATCHDOG") == Some("trigger"),
        };
        self.drive(&unit, now, |run, svc, probe| run.on_notify(svc, probe, notice, now));
    }
}

/// The manager's hands for one unit while its machine runs.
struct Host<'a> {
    name: &'a str,
    def: &'a Unit,
    journal: &'a mut Journal,
    pids: &'a mut BTreeMap<i32, (String, Role)>,
    launches: &'a mut BTreeMap<String, Launch>,
}

impl Probe for Host<'_> {
    fn group_populated(&self) -> bool {
        cgroup::populated(&cgroup::path(self.name))
    }

    fn forking_main_pid(&self, svc: &Service) -> Option<Result<Pid, String>> {
        let pid = forking_main_pid(self.name, svc)?;
        Some(check_main_pid(self.pids, self.name, &pid.as_raw().to_string()))
    }
}

impl Host<'_> {
    /// Carries out `fx` in order, and what the machine answers to a prepare or a spawn. Returns
    /// whether the unit is to be started again ([`Effect::StartAgain`]).
    fn carry_out(&mut self, run: &mut ServiceRun, svc: &Service, fx: Vec<Effect>, now: Instant) -> bool {
        let mut fx: VecDeque<Effect> = fx.into();
        let mut again = false;
        while let Some(effect) = fx.pop_front() {
            match effect {
                Effect::Say(text) => self.say(&text),
                Effect::Prepare => {
                    let result = self.prepare(svc);
                    fx.extend(run.prepared(svc, &*self, result, now));
                }
                Effect::Spawn { cmd, role } => {
                    let result = self.spawn(svc, &cmd, role, run.main_pid);
                    fx.extend(run.spawned(svc, &*self, result, now));
                }
                Effect::Kill { whom: KillTarget::Process(pid), signal } => {
                    let _ = kill(pid, signal);
                }
                Effect::Kill { whom: KillTarget::Group, signal } => {
                    cgroup::signal_all(&cgroup::path(self.name), signal);
                }
                Effect::Adopt(pid) => {
                    self.pids.insert(pid.as_raw(), (self.name.to_string(), Role::Main));
                }
                Effect::Cleanup { runtime_directories } => self.cleanup(svc, runtime_directories),
                Effect::StartAgain => again = true,
            }
        }
        again
    }

    /// Logs a line about the unit on the console and in its log.
    fn say(&mut self, text: &str) {
        say(self.journal, self.name, text);
    }

    /// Conditions, assertions, then environment, account, directories and cgroup for a start.
    fn prepare(&mut self, svc: &Service) -> Prepared {
        let env = condition_env();
        if let Err(c) = condition::check(&self.def.conditions, &env) {
            return Prepared::Skipped(describe_condition(c));
        }
        if let Err(c) = condition::check(&self.def.asserts, &env) {
            return Prepared::Failed(format!("assertion failed: {}", describe_condition(c)));
        }
        match self.launch(svc) {
            Ok(launch) => {
                self.launches.insert(self.name.to_string(), launch);
                Prepared::Ready
            }
            Err(e) => Prepared::Failed(e.to_string()),
        }
    }

    fn launch(&mut self, svc: &Service) -> Result<Launch, PrepareError> {
        let account =
            users::resolve(Path::new("/"), svc.user.as_deref(), svc.group.as_deref(), &svc.supplementary_groups)?;
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
            make_directory(&dir, &account).map_err(|source| PrepareError::Directory {
                directive: dir.directive,
                name: dir.name.clone(),
                source,
            })?;
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
                Err(source) => return Err(PrepareError::EnvironmentFile { path: f.path.clone(), source }),
            }
        }
        let group = cgroup::create(self.name)?;
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
                self.say(&format!("TasksMax: {e}"));
            }
        }
        if svc.delegate != Delegate::No {
            let supervisor = cgroup::delegate(self.name)?;
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
        Ok(Launch { env, account })
    }

    fn spawn(&mut self, svc: &Service, cmd: &ExecCommand, role: Role, main_pid: Option<Pid>) -> Result<Pid, String> {
        let unit = self.name;
        let launch = self.launches.get(unit).ok_or_else(|| format!("{unit}: not prepared"))?;
        let group = match svc.delegate {
            Delegate::No => cgroup::path(unit),
            _ => cgroup::path(unit).join(cgroup::SUPERVISOR),
        };
        let ctx = exec::Context { service: svc, env: &launch.env, account: &launch.account, cgroup: &group };
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
        Ok(pid)
    }

    /// The run is over: its cgroup goes once empty, and `RuntimeDirectory=` unless preserved.
    fn cleanup(&mut self, svc: &Service, runtime_directories: bool) {
        let group = cgroup::path(self.name);
        if !cgroup::populated(&group) {
            cgroup::remove(&group);
        }
        if !runtime_directories {
            return;
        }
        for dir in directories(svc).iter().filter(|d| d.var == "RUNTIME_DIRECTORY") {
            // Walked without following links: the service may have replaced a part by one.
            if let Err(e) = crate::sys::fsat::remove_tree(Path::new(dir.base), Path::new(&dir.name)) {
                self.say(&format!("{}{}: not removed: {e}", dir.directive, dir.name));
            }
        }
    }
}

/// Logs a line about `unit` on the console and in its log.
pub(super) fn say(journal: &mut Journal, unit: &str, text: &str) {
    log::line(&format!("{unit}: {text}"));
    journal.record(unit, None, text);
}

/// The pid `value` names, if it may become `unit`'s main process; else why not. Only a
/// process in the unit's own cgroup qualifies, never PID 1 and never another unit's process:
/// otherwise a service could have the next stop signal any process (PID 1 takes SIGTERM as
/// a reboot).
fn check_main_pid(pids: &BTreeMap<i32, (String, Role)>, unit: &str, value: &str) -> Result<Pid, String> {
    let pid = match value.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        _ => return Err("not a process id".into()),
    };
    let owner = pids.get(&pid).map(|(u, _)| u.as_str());
    match main_pid_refusal(unit, pid, owner, cgroup::unit_of(pid).as_deref()) {
        None => Ok(Pid::from_raw(pid)),
        Some(why) => Err(why),
    }
}

/// [`check_main_pid`] with what it looked up: the unit the manager knows `pid` as a process
/// of, and the unit whose cgroup `pid` is in (from `/proc/PID/cgroup`).
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

/// The main process of a forking service: from PIDFile=, else the only process left.
fn forking_main_pid(unit: &str, svc: &Service) -> Option<Pid> {
    if let Some(file) = &svc.pid_file {
        let text = std::fs::read_to_string(file).ok()?;
        return text.trim().parse::<i32>().ok().filter(|p| *p > 0).map(Pid::from_raw);
    }
    let pids = cgroup::processes(&cgroup::path(unit));
    match pids[..] {
        [only] if svc.guess_main_pid => Some(only),
        _ => None,
    }
}

/// Creates or reuses a directory of `RuntimeDirectory=` and friends: walked from its base
/// without following a symlink anywhere (the service's user owns the directory and could have
/// replaced a part of a nested name by a link to `/etc`), with mode and owner set on the last
/// component's descriptor ([`crate::sys::fsat::service_directory`]).
fn make_directory(dir: &super::ServiceDir, account: &users::Account) -> Result<(), crate::sys::fsat::FsError> {
    crate::sys::fsat::service_directory(Path::new(dir.base), Path::new(&dir.name), dir.mode, (account.uid, account.gid))
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
        let e = make_directory(&dirs[1], &account).unwrap_err().to_string();
        assert!(e.ends_with("var/lib/foo/sub is a symbolic link; not followed"), "{e}");
        assert_eq!(owner(&etc), (0, 0o755));
    }
}
