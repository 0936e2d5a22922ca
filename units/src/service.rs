//! The `[Service]` section as typed configuration (systemd.service(5), systemd.exec(5),
//! systemd.kill(5), systemd.resource-control(5)). Defaults are systemd 252's for the system
//! manager. Running a service is the runtime's job; this module only says what to run and how.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::command::{ExecCommand, parse_exec};
use super::env::parse_assignments;
use super::syntax::{Split, parse_bool, split_words};
use super::time::{TimeSpan, parse_size, parse_timeout, parse_timespan, parse_timespan_usec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Started as soon as the main process is forked.
    #[default]
    Simple,
    /// Started once `execve` of the main process succeeded.
    Exec,
    /// Started when the main process sends `READY=1` on `$NOTIFY_SOCKET`.
    Notify,
    /// Started when the (last) `ExecStart=` exits successfully.
    Oneshot,
    /// Started when the first process exits; the daemon it forked (see `PIDFile=`) is the main
    /// process.
    Forking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    #[default]
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
    OnWatchdog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillMode {
    /// Every process in the unit's cgroup.
    #[default]
    ControlGroup,
    /// `KillSignal=` to the main process, SIGKILL to the rest of the cgroup.
    Mixed,
    /// The main process only (containerd, sshd: their children outlive a restart).
    Process,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyAccess {
    #[default]
    None,
    Main,
    Exec,
    All,
}

/// `SuccessExitStatus=`, `RestartPreventExitStatus=`, `RestartForceExitStatus=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStatusSet {
    pub codes: Vec<u8>,
    pub signals: Vec<Signal>,
}

impl ExitStatusSet {
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.signals.is_empty()
    }
}

/// The resource of a `Limit*=` setting (setrlimit(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Cpu,
    Fsize,
    Data,
    Stack,
    Core,
    Rss,
    Nofile,
    As,
    Nproc,
    Memlock,
    Locks,
    Sigpending,
    Msgqueue,
    Nice,
    Rtprio,
    Rttime,
}

impl Resource {
    fn from_key(key: &str) -> Option<Resource> {
        use Resource::*;
        Some(match key {
            "LimitCPU" => Cpu,
            "LimitFSIZE" => Fsize,
            "LimitDATA" => Data,
            "LimitSTACK" => Stack,
            "LimitCORE" => Core,
            "LimitRSS" => Rss,
            "LimitNOFILE" => Nofile,
            "LimitAS" => As,
            "LimitNPROC" => Nproc,
            "LimitMEMLOCK" => Memlock,
            "LimitLOCKS" => Locks,
            "LimitSIGPENDING" => Sigpending,
            "LimitMSGQUEUE" => Msgqueue,
            "LimitNICE" => Nice,
            "LimitRTPRIO" => Rtprio,
            "LimitRTTIME" => Rttime,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitValue {
    Value(u64),
    /// RLIM_INFINITY. The kernel caps `RLIMIT_NOFILE` at `fs.nr_open`; the runtime clamps to
    /// what the kernel allows (systemd's `setrlimit_closest`).
    Infinity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RLimit {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

/// `TasksMax=` (the cgroup's `pids.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TasksMax {
    Count(u64),
    /// Per-mille of the system's `kernel.pid_max` (`15%` is 150).
    PerMille(u32),
    Infinity,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delegate {
    #[default]
    No,
    /// All controllers.
    Yes,
    Controllers(Vec<String>),
}

/// `RuntimeDirectory=` and friends: names relative to the base directory, and their mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directories {
    pub names: Vec<String>,
    pub mode: u32,
}

impl Default for Directories {
    fn default() -> Directories {
        Directories { names: Vec::new(), mode: 0o755 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preserve {
    #[default]
    No,
    Yes,
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkingDirectory {
    Path(PathBuf),
    /// `~`: the home directory of `User=`.
    Home,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentFile {
    pub path: PathBuf,
    /// `-` prefix: a missing file is not an error.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StdInput {
    #[default]
    Null,
    Tty,
    TtyForce,
    TtyFail,
    File(PathBuf),
    Socket,
    Fd(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StdOutput {
    Inherit,
    Null,
    Tty,
    /// The system log (`journal`, `syslog`; berth-init's log).
    #[default]
    Journal,
    Kmsg,
    JournalConsole,
    KmsgConsole,
    File(PathBuf),
    Append(PathBuf),
    Truncate(PathBuf),
    Socket,
    Fd(String),
}

/// A service, with systemd's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub service_type: ServiceType,
    pub remain_after_exit: bool,
    pub guess_main_pid: bool,
    /// Absolute (a relative `PIDFile=` is under /run).
    pub pid_file: Option<PathBuf>,
    pub exec_condition: Vec<ExecCommand>,
    pub exec_start_pre: Vec<ExecCommand>,
    pub exec_start: Vec<ExecCommand>,
    pub exec_start_post: Vec<ExecCommand>,
    pub exec_reload: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub exec_stop_post: Vec<ExecCommand>,
    /// `Environment=` in order; a later assignment of a name wins.
    pub environment: Vec<(String, String)>,
    /// Read in this order just before each start; their values override `Environment=`.
    pub environment_files: Vec<EnvironmentFile>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplementary_groups: Vec<String>,
    pub working_directory: Option<WorkingDirectory>,
    /// `-` prefix on `WorkingDirectory=`: a missing directory is not an error.
    pub working_directory_optional: bool,
    pub umask: u32,
    pub nice: Option<i32>,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub success_exit_status: ExitStatusSet,
    pub restart_prevent_exit_status: ExitStatusSet,
    pub restart_force_exit_status: ExitStatusSet,
    /// Default 90 s; none for `Type=oneshot`.
    pub timeout_start: TimeSpan,
    /// Default 90 s.
    pub timeout_stop: TimeSpan,
    pub watchdog: Option<Duration>,
    /// Default `main` for `Type=notify` or with `WatchdogSec=`, `none` otherwise.
    pub notify_access: NotifyAccess,
    pub kill_mode: KillMode,
    pub kill_signal: Signal,
    pub send_sigkill: bool,
    pub send_sighup: bool,
    pub limits: BTreeMap<Resource, RLimit>,
    pub tasks_max: Option<TasksMax>,
    pub oom_score_adjust: Option<i32>,
    pub runtime_directory: Directories,
    pub runtime_directory_preserve: Preserve,
    pub state_directory: Directories,
    pub cache_directory: Directories,
    pub logs_directory: Directories,
    pub configuration_directory: Directories,
    pub delegate: Delegate,
    pub standard_input: StdInput,
    pub standard_output: StdOutput,
    /// `None`: the same as standard output (systemd's `inherit` default).
    pub standard_error: Option<StdOutput>,
    pub syslog_identifier: Option<String>,
}

impl Default for Service {
    fn default() -> Service {
        Service {
            service_type: ServiceType::Simple,
            remain_after_exit: false,
            guess_main_pid: true,
            pid_file: None,
            exec_condition: Vec::new(),
            exec_start_pre: Vec::new(),
            exec_start: Vec::new(),
            exec_start_post: Vec::new(),
            exec_reload: Vec::new(),
            exec_stop: Vec::new(),
            exec_stop_post: Vec::new(),
            environment: Vec::new(),
            environment_files: Vec::new(),
            user: None,
            group: None,
            supplementary_groups: Vec::new(),
            working_directory: None,
            working_directory_optional: false,
            umask: 0o022,
            nice: None,
            restart: Restart::No,
            restart_sec: Duration::from_millis(100),
            success_exit_status: ExitStatusSet::default(),
            restart_prevent_exit_status: ExitStatusSet::default(),
            restart_force_exit_status: ExitStatusSet::default(),
            timeout_start: TimeSpan::Finite(Duration::from_secs(90)),
            timeout_stop: TimeSpan::Finite(Duration::from_secs(90)),
            watchdog: None,
            notify_access: NotifyAccess::None,
            kill_mode: KillMode::ControlGroup,
            kill_signal: Signal::SIGTERM,
            send_sigkill: true,
            send_sighup: false,
            limits: BTreeMap::new(),
            tasks_max: None,
            oom_score_adjust: None,
            runtime_directory: Directories::default(),
            runtime_directory_preserve: Preserve::No,
            state_directory: Directories::default(),
            cache_directory: Directories::default(),
            logs_directory: Directories::default(),
            configuration_directory: Directories::default(),
            delegate: Delegate::No,
            standard_input: StdInput::Null,
            standard_output: StdOutput::Journal,
            standard_error: None,
            syslog_identifier: None,
        }
    }
}

/// Accumulates `[Service]` lines (file and drop-ins, in order), then fills in the defaults
/// that depend on other settings.
#[derive(Debug, Default)]
pub(crate) struct ServiceBuilder {
    pub service: Service,
    /// Line of the last `Type=`/`TimeoutStartSec=`/`NotifyAccess=`, when set.
    type_line: Option<usize>,
    timeout_start_set: bool,
    notify_access_set: bool,
}

/// What applying one line did.
pub(crate) enum Applied {
    Done,
    /// Not a `[Service]` setting berth-init implements.
    Unknown,
}

impl ServiceBuilder {
    /// Applies one `[Service]` line. `expand` resolves specifiers.
    pub fn apply(
        &mut self,
        key: &str,
        value: &str,
        line: usize,
        expand: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Applied, String> {
        let s = &mut self.service;
        let empty = value.is_empty();
        match key {
            "Type" => {
                s.service_type = match value {
                    "simple" => ServiceType::Simple,
                    "exec" => ServiceType::Exec,
                    "notify" => ServiceType::Notify,
                    "oneshot" => ServiceType::Oneshot,
                    "forking" => ServiceType::Forking,
                    // idle only delays the start until the boot's jobs are dispatched, to keep
                    // consoles tidy: simple is the same for everything that matters.
                    "idle" => ServiceType::Simple,
                    "dbus" => return Err("Type=dbus is not supported by berth-init (there is no D-Bus)".into()),
                    _ => return Err(format!("unknown service type `{value}`")),
                };
                self.type_line = Some(line);
            }
            "RemainAfterExit" => s.remain_after_exit = parse_bool(value)?,
            "GuessMainPID" => s.guess_main_pid = parse_bool(value)?,
            "PIDFile" if empty => s.pid_file = None,
            "PIDFile" => {
                let p = expand(value)?;
                s.pid_file = Some(if p.starts_with('/') { PathBuf::from(p) } else { PathBuf::from("/run").join(p) });
            }
            "ExecCondition" | "ExecStartPre" | "ExecStart" | "ExecStartPost" | "ExecReload" | "ExecStop"
            | "ExecStopPost" => {
                let list = match key {
                    "ExecCondition" => &mut s.exec_condition,
                    "ExecStartPre" => &mut s.exec_start_pre,
                    "ExecStart" => &mut s.exec_start,
                    "ExecStartPost" => &mut s.exec_start_post,
                    "ExecReload" => &mut s.exec_reload,
                    "ExecStop" => &mut s.exec_stop,
                    _ => &mut s.exec_stop_post,
                };
                if empty {
                    list.clear();
                } else {
                    list.extend(parse_exec(value, line, expand)?);
                }
            }
            "Environment" if empty => s.environment.clear(),
            "Environment" => s.environment.extend(parse_assignments(value, expand)?),
            "EnvironmentFile" if empty => s.environment_files.clear(),
            "EnvironmentFile" => {
                let (optional, path) = match value.strip_prefix('-') {
                    Some(p) => (true, p),
                    None => (false, value),
                };
                let path = expand(path.trim())?;
                if !path.starts_with('/') {
                    return Err(format!("`{path}` is not an absolute path"));
                }
                s.environment_files.push(EnvironmentFile { path: path.into(), optional });
            }
            "User" | "Group" => {
                let name = if empty { None } else { Some(valid_user(&expand(value)?)?) };
                if key == "User" { s.user = name } else { s.group = name }
            }
            "SupplementaryGroups" if empty => s.supplementary_groups.clear(),
            "SupplementaryGroups" => {
                for word in split_words(value, Split::UNIT)? {
                    s.supplementary_groups.push(valid_user(&expand(&word)?)?);
                }
            }
            "WorkingDirectory" if empty => s.working_directory = None,
            "WorkingDirectory" => {
                let (optional, rest) = match value.strip_prefix('-') {
                    Some(r) => (true, r),
                    None => (false, value),
                };
                let dir = expand(rest)?;
                s.working_directory = Some(match dir.as_str() {
                    "~" => WorkingDirectory::Home,
                    d if d.starts_with('/') => WorkingDirectory::Path(d.into()),
                    d => return Err(format!("`{d}` is not an absolute path or ~")),
                });
                s.working_directory_optional = optional;
            }
            "UMask" => s.umask = parse_mode(value)?,
            "Nice" => s.nice = Some(parse_int_in(value, -20, 19)?),
            "Restart" => {
                s.restart = match value {
                    "no" => Restart::No,
                    "always" => Restart::Always,
                    "on-success" => Restart::OnSuccess,
                    "on-failure" => Restart::OnFailure,
                    "on-abnormal" => Restart::OnAbnormal,
                    "on-abort" => Restart::OnAbort,
                    "on-watchdog" => Restart::OnWatchdog,
                    _ => return Err(format!("unknown restart policy `{value}`")),
                }
            }
            "RestartSec" => {
                s.restart_sec = parse_timespan(value)?.finite().ok_or("RestartSec= cannot be infinity")?;
            }
            "SuccessExitStatus" => apply_exit_status(&mut s.success_exit_status, value)?,
            "RestartPreventExitStatus" => apply_exit_status(&mut s.restart_prevent_exit_status, value)?,
            "RestartForceExitStatus" => apply_exit_status(&mut s.restart_force_exit_status, value)?,
            "TimeoutStartSec" => {
                s.timeout_start = parse_timeout(value)?;
                self.timeout_start_set = true;
            }
            "TimeoutStopSec" => s.timeout_stop = parse_timeout(value)?,
            "TimeoutSec" => {
                s.timeout_start = parse_timeout(value)?;
                s.timeout_stop = s.timeout_start;
                self.timeout_start_set = true;
            }
            "WatchdogSec" => {
                s.watchdog = match parse_timespan(value)? {
                    TimeSpan::Finite(d) if d.is_zero() => None,
                    TimeSpan::Finite(d) => Some(d),
                    TimeSpan::Infinity => None,
                }
            }
            "NotifyAccess" => {
                s.notify_access = match value {
                    "none" => NotifyAccess::None,
                    "main" => NotifyAccess::Main,
                    "exec" => NotifyAccess::Exec,
                    "all" => NotifyAccess::All,
                    _ => return Err(format!("unknown NotifyAccess `{value}`")),
                };
                self.notify_access_set = true;
            }
            "KillMode" => {
                s.kill_mode = match value {
                    "control-group" => KillMode::ControlGroup,
                    "mixed" => KillMode::Mixed,
                    "process" => KillMode::Process,
                    "none" => KillMode::None,
                    _ => return Err(format!("unknown kill mode `{value}`")),
                }
            }
            "KillSignal" => s.kill_signal = parse_signal(value)?,
            "SendSIGKILL" => s.send_sigkill = parse_bool(value)?,
            "SendSIGHUP" => s.send_sighup = parse_bool(value)?,
            "TasksMax" => s.tasks_max = if empty { None } else { Some(parse_tasks_max(value)?) },
            "OOMScoreAdjust" => s.oom_score_adjust = Some(parse_int_in(value, -1000, 1000)?),
            "RuntimeDirectory" => apply_dirs(&mut s.runtime_directory, value, expand)?,
            "StateDirectory" => apply_dirs(&mut s.state_directory, value, expand)?,
            "CacheDirectory" => apply_dirs(&mut s.cache_directory, value, expand)?,
            "LogsDirectory" => apply_dirs(&mut s.logs_directory, value, expand)?,
            "ConfigurationDirectory" => apply_dirs(&mut s.configuration_directory, value, expand)?,
            "RuntimeDirectoryMode" => s.runtime_directory.mode = parse_mode(value)?,
            "StateDirectoryMode" => s.state_directory.mode = parse_mode(value)?,
            "CacheDirectoryMode" => s.cache_directory.mode = parse_mode(value)?,
            "LogsDirectoryMode" => s.logs_directory.mode = parse_mode(value)?,
            "ConfigurationDirectoryMode" => s.configuration_directory.mode = parse_mode(value)?,
            "RuntimeDirectoryPreserve" => {
                s.runtime_directory_preserve = match value {
                    "restart" => Preserve::Restart,
                    v => {
                        if parse_bool(v)? {
                            Preserve::Yes
                        } else {
                            Preserve::No
                        }
                    }
                }
            }
            "Delegate" => {
                s.delegate = match parse_bool(value) {
                    Ok(true) => Delegate::Yes,
                    Ok(false) => Delegate::No,
                    Err(_) => Delegate::Controllers(split_words(value, Split::UNIT)?),
                }
            }
            "StandardInput" => s.standard_input = parse_input(&expand(value)?)?,
            "StandardOutput" => s.standard_output = parse_output(&expand(value)?)?,
            "StandardError" => s.standard_error = Some(parse_output(&expand(value)?)?),
            "SyslogIdentifier" => s.syslog_identifier = if empty { None } else { Some(expand(value)?) },
            k if k.starts_with("Limit") => match Resource::from_key(k) {
                Some(resource) => {
                    s.limits.insert(resource, parse_rlimit(resource, value)?);
                }
                None => return Ok(Applied::Unknown),
            },
            _ => return Ok(Applied::Unknown),
        }
        Ok(Applied::Done)
    }

    /// Fills in the defaults that depend on other settings and checks that the service can be
    /// started (systemd's `service_verify`). Errors come with the line they are about.
    pub fn finish(mut self) -> (Service, Vec<(usize, String)>) {
        let mut errors = Vec::new();
        let s = &mut self.service;
        if self.type_line.is_none() && s.exec_start.is_empty() {
            s.service_type = ServiceType::Oneshot;
        }
        if s.service_type == ServiceType::Oneshot && !self.timeout_start_set {
            s.timeout_start = TimeSpan::Infinity;
        }
        if !self.notify_access_set && (s.service_type == ServiceType::Notify || s.watchdog.is_some()) {
            s.notify_access = NotifyAccess::Main;
        }
        let type_line = self.type_line.unwrap_or(0);
        if s.exec_start.is_empty() && s.exec_stop.is_empty() {
            errors.push((type_line, "the service has no ExecStart= and no ExecStop=".to_string()));
        } else if s.exec_start.is_empty() && s.service_type != ServiceType::Oneshot {
            errors.push((type_line, "the service has no ExecStart=, which only Type=oneshot allows".to_string()));
        }
        if s.exec_start.len() > 1 && s.service_type != ServiceType::Oneshot {
            let line = s.exec_start.get(1).map_or(0, |c| c.line);
            errors.push((line, "more than one ExecStart= command, which only Type=oneshot allows".to_string()));
        }
        if s.service_type == ServiceType::Oneshot && matches!(s.restart, Restart::Always | Restart::OnSuccess) {
            errors.push((type_line, "Restart=always and Restart=on-success are not allowed for Type=oneshot".into()));
        }
        (self.service, errors)
    }
}

fn parse_int_in(value: &str, min: i32, max: i32) -> Result<i32, String> {
    match value.parse::<i32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("`{value}` is not a number from {min} to {max}")),
    }
}

fn parse_mode(value: &str) -> Result<u32, String> {
    match u32::from_str_radix(value, 8) {
        Ok(m) if m <= 0o7777 && !value.is_empty() => Ok(m),
        _ => Err(format!("`{value}` is not an octal mode")),
    }
}

/// User and group names as systemd accepts them (its relaxed rules: no `/`, `:`, blanks or
/// control characters, not empty, not `.`/`..`), or a numeric id.
fn valid_user(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '/' && c != ':');
    if ok { Ok(name.to_string()) } else { Err(format!("`{name}` is not a valid user or group name")) }
}

pub fn parse_signal(value: &str) -> Result<Signal, String> {
    if let Ok(n) = value.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("`{value}` is not a signal number"));
    }
    let name = if value.starts_with("SIG") { value.to_string() } else { format!("SIG{value}") };
    Signal::from_str(&name).map_err(|_| format!("unknown signal `{value}`"))
}

/// Exit status names systemd accepts: LSB init script codes and BSD sysexits(3).
const EXIT_STATUS_NAMES: &[(&str, u8)] = &[
    ("SUCCESS", 0),
    ("FAILURE", 1),
    ("INVALIDARGUMENT", 2),
    ("NOTIMPLEMENTED", 3),
    ("NOPERMISSION", 4),
    ("NOTINSTALLED", 5),
    ("NOTCONFIGURED", 6),
    ("NOTRUNNING", 7),
    ("USAGE", 64),
    ("DATAERR", 65),
    ("NOINPUT", 66),
    ("NOUSER", 67),
    ("NOHOST", 68),
    ("UNAVAILABLE", 69),
    ("SOFTWARE", 70),
    ("OSERR", 71),
    ("OSFILE", 72),
    ("CANTCREAT", 73),
    ("IOERR", 74),
    ("TEMPFAIL", 75),
    ("PROTOCOL", 76),
    ("NOPERM", 77),
    ("CONFIG", 78),
];

fn apply_exit_status(set: &mut ExitStatusSet, value: &str) -> Result<(), String> {
    if value.is_empty() {
        *set = ExitStatusSet::default();
        return Ok(());
    }
    for word in value.split_whitespace() {
        let named = EXIT_STATUS_NAMES.iter().find(|(n, _)| *n == word).map(|(_, c)| *c);
        match word.parse::<u8>().ok().or(named).ok_or(()) {
            Ok(code) => set.codes.push(code),
            Err(_) => {
                set.signals.push(parse_signal(word).map_err(|_| format!("`{word}` is not an exit status or signal"))?)
            }
        }
    }
    Ok(())
}

fn apply_dirs(
    dirs: &mut Directories,
    value: &str,
    expand: &dyn Fn(&str) -> Result<String, String>,
) -> Result<(), String> {
    if value.is_empty() {
        dirs.names.clear();
        return Ok(());
    }
    for word in split_words(value, Split::UNIT)? {
        let name = expand(&word)?;
        // systemd 252 also knows `source:destination` symlink pairs; berth does not.
        if name.starts_with('/') || name.split('/').any(|c| c.is_empty() || c == "." || c == "..") || name.contains(':')
        {
            return Err(format!("`{name}` must be a relative path without `.`, `..` or `:`"));
        }
        dirs.names.push(name);
    }
    Ok(())
}

fn parse_tasks_max(value: &str) -> Result<TasksMax, String> {
    if value == "infinity" {
        return Ok(TasksMax::Infinity);
    }
    if let Some(p) = value.strip_suffix('%') {
        let (whole, frac) = p.split_once('.').unwrap_or((p, "0"));
        let whole: u32 = whole.parse().map_err(|_| format!("`{value}` is not a percentage"))?;
        let tenth: u32 =
            frac.get(..1).and_then(|d| d.parse().ok()).ok_or_else(|| format!("`{value}` is not a percentage"))?;
        let per_mille = whole.saturating_mul(10).saturating_add(tenth);
        if per_mille == 0 || per_mille > 1000 {
            return Err(format!("`{value}` must be above 0% and at most 100%"));
        }
        return Ok(TasksMax::PerMille(per_mille));
    }
    match value.parse::<u64>() {
        Ok(0) => Err("TasksMax=0 would forbid every process".into()),
        Ok(n) => Ok(TasksMax::Count(n)),
        Err(_) => Err(format!("`{value}` is not a number, a percentage or infinity")),
    }
}

/// `Limit*=`: `value` or `soft:hard`, each a number (with the resource's unit) or `infinity`.
fn parse_rlimit(resource: Resource, value: &str) -> Result<RLimit, String> {
    let one = |text: &str| -> Result<LimitValue, String> {
        if text == "infinity" {
            return Ok(LimitValue::Infinity);
        }
        let n = match resource {
            Resource::Cpu => parse_timespan(text)?.finite().map(|d| d.as_secs()),
            Resource::Rttime => parse_timespan_usec(text)?.finite().map(|d| d.as_micros() as u64),
            Resource::Fsize
            | Resource::Data
            | Resource::Stack
            | Resource::Core
            | Resource::Rss
            | Resource::As
            | Resource::Memlock
            | Resource::Msgqueue => Some(parse_size(text)?),
            // Nice levels are written as -20…19; the rlimit is 40…1 (20 - nice).
            Resource::Nice if text.starts_with(['-', '+']) => {
                Some((20 - i64::from(parse_int_in(text, -20, 19)?)) as u64)
            }
            _ => Some(text.parse::<u64>().map_err(|_| format!("`{text}` is not a number or infinity"))?),
        };
        Ok(n.map_or(LimitValue::Infinity, LimitValue::Value))
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => {
            let v = one(value)?;
            (v, v)
        }
    };
    if let (LimitValue::Value(s), LimitValue::Value(h)) = (soft, hard)
        && s > h
    {
        return Err(format!("soft limit {s} is above the hard limit {h}"));
    }
    if let (LimitValue::Infinity, LimitValue::Value(_)) = (soft, hard) {
        return Err("an infinite soft limit needs an infinite hard limit".into());
    }
    Ok(RLimit { soft, hard })
}

fn parse_input(value: &str) -> Result<StdInput, String> {
    Ok(match value {
        "null" => StdInput::Null,
        "tty" => StdInput::Tty,
        "tty-force" => StdInput::TtyForce,
        "tty-fail" => StdInput::TtyFail,
        "socket" => StdInput::Socket,
        v => {
            if let Some(p) = v.strip_prefix("file:") {
                StdInput::File(absolute(p)?)
            } else if let Some(n) = v.strip_prefix("fd:") {
                StdInput::Fd(n.to_string())
            } else if v == "fd" {
                StdInput::Fd(String::new())
            } else {
                return Err(format!("unknown StandardInput `{v}`"));
            }
        }
    })
}

fn parse_output(value: &str) -> Result<StdOutput, String> {
    Ok(match value {
        "inherit" => StdOutput::Inherit,
        "null" => StdOutput::Null,
        "tty" => StdOutput::Tty,
        "journal" | "syslog" => StdOutput::Journal,
        "kmsg" => StdOutput::Kmsg,
        "journal+console" | "syslog+console" => StdOutput::JournalConsole,
        "kmsg+console" => StdOutput::KmsgConsole,
        "socket" => StdOutput::Socket,
        v => {
            if let Some(p) = v.strip_prefix("file:") {
                StdOutput::File(absolute(p)?)
            } else if let Some(p) = v.strip_prefix("append:") {
                StdOutput::Append(absolute(p)?)
            } else if let Some(p) = v.strip_prefix("truncate:") {
                StdOutput::Truncate(absolute(p)?)
            } else if let Some(n) = v.strip_prefix("fd:") {
                StdOutput::Fd(n.to_string())
            } else if v == "fd" {
                StdOutput::Fd(String::new())
            } else {
                return Err(format!("unknown output `{v}`"));
            }
        }
    })
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if path.starts_with('/') { Ok(PathBuf::from(path)) } else { Err(format!("`{path}` is not an absolute path")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(lines: &[(&str, &str)]) -> Result<(Service, Vec<(usize, String)>), String> {
        let mut b = ServiceBuilder::default();
        let expand = |s: &str| Ok(s.replace("%i", "inst"));
        for (i, (k, v)) in lines.iter().enumerate() {
            match b.apply(k, v, i + 1, &expand)? {
                Applied::Done => {}
                Applied::Unknown => return Err(format!("unknown {k}")),
            }
        }
        Ok(b.finish())
    }

    fn service(lines: &[(&str, &str)]) -> Service {
        let (s, errors) = build(lines).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    #[test]
    fn defaults() {
        let s = service(&[("ExecStart", "/bin/true")]);
        assert_eq!(s.service_type, ServiceType::Simple);
        assert_eq!(s.timeout_start, TimeSpan::Finite(Duration::from_secs(90)));
        assert_eq!(s.restart, Restart::No);
        assert_eq!(s.restart_sec, Duration::from_millis(100));
        assert_eq!(s.kill_mode, KillMode::ControlGroup);
        assert_eq!(s.notify_access, NotifyAccess::None);
        let s = service(&[("ExecStop", "/bin/true")]);
        assert_eq!(s.service_type, ServiceType::Oneshot, "no ExecStart= means oneshot");
        assert_eq!(s.timeout_start, TimeSpan::Infinity);
        let s = service(&[("Type", "notify"), ("ExecStart", "/bin/x")]);
        assert_eq!(s.notify_access, NotifyAccess::Main);
    }

    #[test]
    fn validity() {
        let (_, e) = build(&[("Type", "simple"), ("ExecStop", "/bin/true")]).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, 1);
        let (_, e) = build(&[("Type", "oneshot")]).unwrap();
        assert_eq!(e.len(), 1);
        let (_, e) = build(&[("ExecStart", "/bin/a"), ("ExecStart", "/bin/b")]).unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 2);
        let (_, e) = build(&[("Type", "oneshot"), ("ExecStart", "/bin/a"), ("ExecStart", "/bin/b")]).unwrap();
        assert!(e.is_empty());
        let (_, e) = build(&[("Type", "oneshot"), ("ExecStart", "/bin/a"), ("Restart", "always")]).unwrap();
        assert_eq!(e.len(), 1);
        assert!(build(&[("Type", "dbus")]).is_err());
        assert!(build(&[("Type", "bogus")]).is_err());
    }

    #[test]
    fn empty_assignment_resets_lists() {
        let s = service(&[
            ("ExecStart", "/bin/old"),
            ("Environment", "A=1 B=2"),
            ("EnvironmentFile", "-/etc/default/x"),
            ("ExecStart", ""),
            ("ExecStart", "/bin/new --flag"),
            ("Environment", ""),
            ("Environment", "C=3"),
            ("EnvironmentFile", ""),
            ("RestartPreventExitStatus", "1"),
            ("RestartPreventExitStatus", ""),
            ("RestartPreventExitStatus", "255 SIGTERM HUP DATAERR"),
        ]);
        assert_eq!(s.exec_start.len(), 1);
        assert_eq!(s.exec_start[0].argv, vec!["/bin/new", "--flag"]);
        assert_eq!(s.environment, vec![("C".to_string(), "3".to_string())]);
        assert!(s.environment_files.is_empty());
        assert_eq!(s.restart_prevent_exit_status.codes, vec![255, 65]);
        assert_eq!(s.restart_prevent_exit_status.signals, vec![Signal::SIGTERM, Signal::SIGHUP]);
    }

    #[test]
    fn many_settings() {
        let s = service(&[
            ("Type", "forking"),
            ("PIDFile", "chrony/chronyd.pid"),
            ("ExecStart", "!/usr/sbin/chronyd $DAEMON_OPTS"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("EnvironmentFile", "-/etc/default/chrony"),
            ("User", "_chrony"),
            ("Group", "%i"),
            ("WorkingDirectory", "-~"),
            ("Restart", "on-abnormal"),
            ("RestartSec", "5"),
            ("TimeoutSec", "5min 20s"),
            ("TimeoutStopSec", "infinity"),
            ("KillMode", "mixed"),
            ("KillSignal", "SIGINT"),
            ("LimitNOFILE", "1048576"),
            ("LimitNPROC", "infinity"),
            ("LimitCORE", "0:infinity"),
            ("LimitMEMLOCK", "64K"),
            ("LimitCPU", "1h"),
            ("LimitNICE", "-5"),
            ("TasksMax", "15%"),
            ("OOMScoreAdjust", "-999"),
            ("RuntimeDirectory", "chrony chrony/sub"),
            ("RuntimeDirectoryMode", "0750"),
            ("RuntimeDirectoryPreserve", "restart"),
            ("StateDirectory", "chrony"),
            ("LogsDirectory", "chrony"),
            ("Delegate", "cpu memory"),
            ("WatchdogSec", "3min"),
            ("UMask", "0077"),
            ("StandardOutput", "append:/var/log/x.log"),
            ("StandardError", "null"),
        ]);
        assert_eq!(s.service_type, ServiceType::Forking);
        assert_eq!(s.pid_file, Some(PathBuf::from("/run/chrony/chronyd.pid")));
        assert!(s.exec_start[0].flags.no_user_switch);
        assert_eq!(s.group.as_deref(), Some("inst"));
        assert_eq!(s.working_directory, Some(WorkingDirectory::Home));
        assert!(s.working_directory_optional);
        assert_eq!(s.timeout_start, TimeSpan::Finite(Duration::from_secs(320)));
        assert_eq!(s.timeout_stop, TimeSpan::Infinity);
        assert_eq!(s.kill_signal, Signal::SIGINT);
        let v = LimitValue::Value;
        assert_eq!(s.limits[&Resource::Nofile], RLimit { soft: v(1_048_576), hard: v(1_048_576) });
        assert_eq!(s.limits[&Resource::Nproc], RLimit { soft: LimitValue::Infinity, hard: LimitValue::Infinity });
        assert_eq!(s.limits[&Resource::Core], RLimit { soft: v(0), hard: LimitValue::Infinity });
        assert_eq!(s.limits[&Resource::Memlock].soft, v(65_536));
        assert_eq!(s.limits[&Resource::Cpu].soft, v(3600));
        assert_eq!(s.limits[&Resource::Nice].soft, v(25));
        assert_eq!(s.tasks_max, Some(TasksMax::PerMille(150)));
        assert_eq!(s.oom_score_adjust, Some(-999));
        assert_eq!(s.runtime_directory, Directories { names: vec!["chrony".into(), "chrony/sub".into()], mode: 0o750 });
        assert_eq!(s.runtime_directory_preserve, Preserve::Restart);
        assert_eq!(s.delegate, Delegate::Controllers(vec!["cpu".into(), "memory".into()]));
        assert_eq!(s.watchdog, Some(Duration::from_secs(180)));
        assert_eq!(s.notify_access, NotifyAccess::Main, "WatchdogSec= implies NotifyAccess=main");
        assert_eq!(s.umask, 0o077);
        assert_eq!(s.standard_output, StdOutput::Append("/var/log/x.log".into()));
        assert_eq!(s.standard_error, Some(StdOutput::Null));
    }

    #[test]
    fn bad_values() {
        for (k, v) in [
            ("Restart", "sometimes"),
            ("KillMode", "all"),
            ("LimitNOFILE", "lots"),
            ("LimitNOFILE", "10:5"),
            ("LimitNOFILE", "infinity:5"),
            ("TasksMax", "0"),
            ("TasksMax", "150%"),
            ("TasksMax", "4294967295%"),
            ("OOMScoreAdjust", "-1001"),
            ("RuntimeDirectory", "/abs"),
            ("RuntimeDirectory", "../up"),
            ("RuntimeDirectoryMode", "999"),
            ("EnvironmentFile", "relative"),
            ("WorkingDirectory", "relative"),
            ("User", "a:b"),
            ("TimeoutStartSec", "soon"),
            ("RestartSec", "infinity"),
            ("KillSignal", "SIGNOPE"),
            ("RestartPreventExitStatus", "256x"),
            ("StandardOutput", "file:relative"),
            ("Environment", "NOT_AN_ASSIGNMENT"),
            ("RemainAfterExit", "perhaps"),
        ] {
            assert!(build(&[("ExecStart", "/bin/true"), (k, v)]).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn timeout_zero_and_tasks() {
        let s = service(&[("ExecStart", "/x"), ("TimeoutStartSec", "0"), ("TasksMax", "infinity")]);
        assert_eq!(s.timeout_start, TimeSpan::Infinity);
        assert_eq!(s.tasks_max, Some(TasksMax::Infinity));
        let s = service(&[("ExecStart", "/x"), ("TasksMax", "4096"), ("Delegate", "yes")]);
        assert_eq!(s.tasks_max, Some(TasksMax::Count(4096)));
        assert_eq!(s.delegate, Delegate::Yes);
    }

    #[test]
    fn unknown_keys_are_reported_not_failed() {
        let mut b = ServiceBuilder::default();
        let expand = |s: &str| Ok(s.to_string());
        assert!(matches!(b.apply("ProtectSystem", "strict", 1, &expand), Ok(Applied::Unknown)));
        assert!(matches!(b.apply("LimitFOO", "1", 1, &expand), Ok(Applied::Unknown)));
    }
}
