//! Starting one command of a unit (systemd.exec(5)): the environment, the account, the unit's
//! cgroup, resource limits, OOM score, working directory and output, all applied in the child
//! between fork and exec. The parent prepares everything that allocates; the child only makes
//! system calls.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use berth_units::command::{EXEC_SEARCH_PATH, ExecCommand};
use berth_units::service::{LimitValue, Resource, Service, StdOutput, WorkingDirectory};
use nix::fcntl::{OFlag, open};
use nix::sys::resource::{Resource as Rlim, setrlimit};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Pid, Uid};

use super::users::Account;

/// The default `PATH` of services (systemd's).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What every command of one start of a unit shares.
pub struct Context<'a> {
    pub service: &'a Service,
    pub env: &'a [(String, String)],
    pub account: &'a Account,
    pub cgroup: &'a Path,
}

/// Where a command's standard output and error go.
pub enum Output {
    /// The write end of a journal pipe.
    Journal(OwnedFd),
    Inherit,
    Null,
}

/// Forks and execs `cmd`; returns the child's PID once exec succeeded.
pub fn spawn(ctx: &Context, cmd: &ExecCommand, extra_env: &[(String, String)], output: Output) -> Result<Pid, String> {
    let mut env: Vec<(String, String)> = ctx.env.to_vec();
    for (k, v) in extra_env {
        berth_units::env::set_var(&mut env, k, v);
    }
    let argv = cmd.argv_with_env(&env);
    let program = find_program(&cmd.path).ok_or_else(|| format!("{}: no such executable", cmd.path))?;
    let mut command = crate::sys::child::command(&program);
    if let Some(arg0) = argv.first() {
        command.arg0(arg0);
    }
    command.args(argv.iter().skip(1));
    command.env_clear();
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.stdin(Stdio::null());
    match output {
        Output::Journal(fd) => {
            let err = fd.try_clone().map_err(|e| format!("duplicating the log pipe: {e}"))?;
            command.stdout(Stdio::from(fd));
            command.stderr(Stdio::from(err));
        }
        Output::Null => {
            command.stdout(Stdio::null());
            command.stderr(Stdio::null());
        }
        Output::Inherit => {}
    }
    if let Some(dir) = working_directory(ctx) {
        command.current_dir(dir);
    }

    // Prepared here, used in the child: nothing below may allocate after fork.
    let procs = open(&ctx.cgroup.join("cgroup.procs"), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("opening {}/cgroup.procs: {e}", ctx.cgroup.display()))?;
    let procs_fd = procs.as_raw_fd();
    let limits = limits(ctx.service);
    let oom: Option<Vec<u8>> = ctx.service.oom_score_adjust.map(|v| v.to_string().into_bytes());
    let umask = Mode::from_bits_truncate(ctx.service.umask);
    let nice = ctx.service.nice;
    let (uid, gid) = (Uid::from_raw(ctx.account.uid), Gid::from_raw(ctx.account.gid));
    let groups: Vec<Gid> = ctx.account.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // `+`/`!` prefixes run the command with full privileges.
    let drop_privileges = (ctx.service.user.is_some() || ctx.service.group.is_some())
        && !(cmd.flags.full_privileges || cmd.flags.no_user_switch);

    // SAFETY: the closure only makes system calls (setsid, write, open, setrlimit, umask,
    // setpriority, setgroups, setgid, setuid) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(procs_fd), b"0")?;
            if let Some(v) = &oom
                && let Ok(fd) = open("/proc/self/oom_score_adj", OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
            {
                let _ = nix::unistd::write(&fd, v);
            }
            for (resource, soft, hard) in &limits {
                setrlimit(*resource, *soft, *hard)?;
            }
            nix::sys::stat::umask(umask);
            if let Some(n) = nice {
                nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, n);
            }
            if drop_privileges {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| format!("starting {}: {e}", program.display()))?;
    drop(procs);
    Ok(Pid::from_raw(child.id() as i32))
}

fn find_program(path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if path.starts_with('/') {
        vec![PathBuf::from(path)]
    } else {
        EXEC_SEARCH_PATH.iter().map(|d| Path::new(d).join(path)).collect()
    };
    candidates.into_iter().find(|c| c.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn working_directory(ctx: &Context) -> Option<PathBuf> {
    let dir = match &ctx.service.working_directory {
        None => return None,
        Some(WorkingDirectory::Home) => ctx.account.home.clone(),
        Some(WorkingDirectory::Path(p)) => p.clone(),
    };
    // `-`: a missing directory is not an error (the command starts in /).
    if ctx.service.working_directory_optional && !dir.is_dir() {
        return None;
    }
    Some(dir)
}

/// `Limit*=` as setrlimit arguments; `infinity` for `LimitNOFILE=` is clamped to `fs.nr_open`
/// as systemd does (the kernel refuses more).
fn limits(service: &Service) -> Vec<(Rlim, u64, u64)> {
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let mut out = Vec::new();
    for (resource, limit) in &service.limits {
        let Some(r) = rlimit_of(*resource) else { continue };
        let value = |v: LimitValue| match (v, r) {
            (LimitValue::Infinity, Rlim::RLIMIT_NOFILE) => nr_open,
            (LimitValue::Infinity, _) => nix::libc::RLIM_INFINITY,
            (LimitValue::Value(n), _) => n,
        };
        out.push((r, value(limit.soft), value(limit.hard)));
    }
    out
}

fn rlimit_of(r: Resource) -> Option<Rlim> {
    Some(match r {
        Resource::Cpu => Rlim::RLIMIT_CPU,
        Resource::Fsize => Rlim::RLIMIT_FSIZE,
        Resource::Data => Rlim::RLIMIT_DATA,
        Resource::Stack => Rlim::RLIMIT_STACK,
        Resource::Core => Rlim::RLIMIT_CORE,
        Resource::Rss => Rlim::RLIMIT_RSS,
        Resource::Nofile => Rlim::RLIMIT_NOFILE,
        Resource::As => Rlim::RLIMIT_AS,
        Resource::Nproc => Rlim::RLIMIT_NPROC,
        Resource::Memlock => Rlim::RLIMIT_MEMLOCK,
        Resource::Locks => Rlim::RLIMIT_LOCKS,
        Resource::Sigpending => Rlim::RLIMIT_SIGPENDING,
        Resource::Msgqueue => Rlim::RLIMIT_MSGQUEUE,
        Resource::Nice => Rlim::RLIMIT_NICE,
        Resource::Rtprio => Rlim::RLIMIT_RTPRIO,
        Resource::Rttime => Rlim::RLIMIT_RTTIME,
    })
}

/// Where `StandardOutput=` sends a command's output.
pub fn wants_journal(service: &Service) -> bool {
    matches!(
        service.standard_output,
        StdOutput::Journal | StdOutput::JournalConsole | StdOutput::Kmsg | StdOutput::KmsgConsole | StdOutput::Socket
    )
}

pub fn is_null(service: &Service) -> bool {
    matches!(service.standard_output, StdOutput::Null)
}
