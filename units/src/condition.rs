//! `Condition*=` and `Assert*=` (systemd.unit(5)): parsed at load time, evaluated by the
//! runtime right before a start. A failed condition skips the unit (not a failure); a failed
//! assertion fails the start.

use std::path::{Path, PathBuf};

use super::syntax::parse_bool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKind {
    PathExists,
    PathExistsGlob,
    PathIsDirectory,
    PathIsSymbolicLink,
    PathIsMountPoint,
    PathIsReadWrite,
    DirectoryNotEmpty,
    FileNotEmpty,
    FileIsExecutable,
    KernelCommandLine,
    Virtualization,
    Capability,
    FirstBoot,
    Host,
    Architecture,
    Environment,
}

impl ConditionKind {
    /// The kind for a directive name without its `Condition`/`Assert` prefix.
    pub fn from_suffix(suffix: &str) -> Option<ConditionKind> {
        use ConditionKind::*;
        Some(match suffix {
            "PathExists" => PathExists,
            "PathExistsGlob" => PathExistsGlob,
            "PathIsDirectory" => PathIsDirectory,
            "PathIsSymbolicLink" => PathIsSymbolicLink,
            "PathIsMountPoint" => PathIsMountPoint,
            "PathIsReadWrite" => PathIsReadWrite,
            "DirectoryNotEmpty" => DirectoryNotEmpty,
            "FileNotEmpty" => FileNotEmpty,
            "FileIsExecutable" => FileIsExecutable,
            "KernelCommandLine" => KernelCommandLine,
            "Virtualization" => Virtualization,
            "Capability" => Capability,
            "FirstBoot" => FirstBoot,
            "Host" => Host,
            "Architecture" => Architecture,
            "Environment" => Environment,
            _ => return None,
        })
    }

    fn takes_path(self) -> bool {
        use ConditionKind::*;
        matches!(
            self,
            PathExists
                | PathExistsGlob
                | PathIsDirectory
                | PathIsSymbolicLink
                | PathIsMountPoint
                | PathIsReadWrite
                | DirectoryNotEmpty
                | FileNotEmpty
                | FileIsExecutable
        )
    }
}

/// One condition or assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: ConditionKind,
    /// `Assert…=` rather than `Condition…=`.
    pub assert: bool,
    /// `|`: a triggering condition; the unit runs if any triggering one holds (and all others).
    pub trigger: bool,
    /// `!`: the test is inverted.
    pub negate: bool,
    /// The argument, specifiers resolved, `|`/`!` removed.
    pub value: String,
    pub line: usize,
}

impl Condition {
    /// Parses the value of `Condition<suffix>=`. `expand` resolves specifiers.
    pub fn parse(
        kind: ConditionKind,
        assert: bool,
        value: &str,
        line: usize,
        expand: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Condition, String> {
        let mut rest = value.trim();
        let trigger = rest.starts_with('|');
        if trigger {
            rest = rest[1..].trim_start();
        }
        let negate = rest.starts_with('!');
        if negate {
            rest = rest[1..].trim_start();
        }
        let value = expand(rest)?;
        if kind.takes_path() && !value.starts_with('/') {
            return Err(format!("`{value}` is not an absolute path"));
        }
        match kind {
            ConditionKind::FirstBoot => {
                parse_bool(&value)?;
            }
            ConditionKind::Capability if capability_number(&value).is_none() => {
                return Err(format!("unknown capability `{value}`"));
            }
            _ if value.is_empty() => return Err("empty argument".into()),
            _ => {}
        }
        Ok(Condition { kind, assert, trigger, negate, value, line })
    }
}

/// What the runtime knows about the machine when it checks conditions.
#[derive(Debug, Clone, Default)]
pub struct ConditionEnv {
    /// Paths in conditions are looked up under this root (`/` on the running system).
    pub root: PathBuf,
    pub kernel_cmdline: String,
    /// systemd-detect-virt's answer (`none`, `kvm`, `qemu`, `docker`, …) and whether it is a
    /// container.
    pub virtualization: String,
    pub container: bool,
    /// PID 1's capability bounding set (`CapBnd` in /proc/self/status).
    pub capability_bounding_set: u64,
    pub first_boot: bool,
    pub hostname: String,
    pub machine_id: String,
    /// The manager's own environment, for `ConditionEnvironment=`.
    pub environment: Vec<(String, String)>,
}

/// Checks a unit's conditions (or assertions: pass only those). Returns the first one that
/// decides the failure: a failing non-triggering one, or the last triggering one when none of
/// them held.
pub fn check<'a>(conditions: &'a [Condition], env: &ConditionEnv) -> Result<(), &'a Condition> {
    let mut last_trigger: Option<&Condition> = None;
    let mut any_trigger_held = false;
    for c in conditions {
        let held = holds(c, env) != c.negate;
        if c.trigger {
            last_trigger = Some(c);
            any_trigger_held |= held;
        } else if !held {
            return Err(c);
        }
    }
    match last_trigger {
        Some(c) if !any_trigger_held => Err(c),
        _ => Ok(()),
    }
}

/// Whether the test holds (before `!` is applied).
fn holds(c: &Condition, env: &ConditionEnv) -> bool {
    let in_root = |p: &str| env.root.join(p.trim_start_matches('/'));
    match c.kind {
        ConditionKind::PathExists => in_root(&c.value).exists(),
        ConditionKind::PathExistsGlob => glob_exists(&env.root, &c.value),
        ConditionKind::PathIsDirectory => in_root(&c.value).is_dir(),
        ConditionKind::PathIsSymbolicLink => {
            in_root(&c.value).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())
        }
        ConditionKind::PathIsMountPoint => is_mount_point(&in_root(&c.value)),
        ConditionKind::PathIsReadWrite => nix::sys::statvfs::statvfs(&in_root(&c.value))
            .is_ok_and(|s| !s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)),
        ConditionKind::DirectoryNotEmpty => std::fs::read_dir(in_root(&c.value)).is_ok_and(|mut d| d.next().is_some()),
        ConditionKind::FileNotEmpty => in_root(&c.value).metadata().is_ok_and(|m| m.is_file() && m.len() > 0),
        ConditionKind::FileIsExecutable => {
            use std::os::unix::fs::PermissionsExt;
            in_root(&c.value).metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        ConditionKind::KernelCommandLine => env.kernel_cmdline.split_whitespace().any(|word| {
            if c.value.contains('=') {
                word == c.value
            } else {
                word == c.value || word.split_once('=').is_some_and(|(k, _)| k == c.value)
            }
        }),
        ConditionKind::Virtualization => {
            let virt = env.virtualization.as_str();
            let virtualized = !virt.is_empty() && virt != "none";
            match (c.value.as_str(), parse_bool(&c.value)) {
                (_, Ok(b)) => virtualized == b,
                ("vm", _) => virtualized && !env.container,
                ("container", _) => virtualized && env.container,
                (name, _) => name == virt,
            }
        }
        ConditionKind::Capability => {
            capability_number(&c.value).is_some_and(|n| env.capability_bounding_set & (1u64 << n) != 0)
        }
        ConditionKind::FirstBoot => parse_bool(&c.value).is_ok_and(|b| b == env.first_boot),
        ConditionKind::Host => {
            let id = c.value.replace('-', "").to_ascii_lowercase();
            (!env.machine_id.is_empty() && id == env.machine_id) || glob_match(&c.value, &env.hostname)
        }
        ConditionKind::Architecture => c.value == "native" || c.value == super::specifiers::architecture(),
        ConditionKind::Environment => match c.value.split_once('=') {
            Some((k, v)) => env.environment.iter().any(|(ek, ev)| ek == k && ev == v),
            None => env.environment.iter().any(|(ek, _)| *ek == c.value),
        },
    }
}

/// A mount point: its device differs from its parent's, or it is the root.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = path.symlink_metadata() else { return false };
    if !meta.is_dir() {
        // File bind mounts: compare with the directory that holds it.
        return path.parent().and_then(|p| p.metadata().ok()).is_some_and(|p| p.dev() != meta.dev());
    }
    match path.join("..").metadata() {
        Ok(parent) => parent.dev() != meta.dev() || parent.ino() == meta.ino(),
        Err(_) => false,
    }
}

/// `ConditionPathExistsGlob=`: whether any path matches (`*`, `?`, `[…]` per component).
fn glob_exists(root: &Path, pattern: &str) -> bool {
    fn walk(dir: &Path, parts: &[&str]) -> bool {
        let Some((first, rest)) = parts.split_first() else { return true };
        if !first.contains(['*', '?', '[']) {
            let next = dir.join(first);
            return if rest.is_empty() { next.symlink_metadata().is_ok() } else { next.is_dir() && walk(&next, rest) };
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return false };
        entries.flatten().any(|e| {
            let name = e.file_name();
            let Some(name) = name.to_str() else { return false };
            // As in the shell, a wildcard does not match a leading dot.
            if name.starts_with('.') && !first.starts_with('.') {
                return false;
            }
            glob_match(first, name) && (rest.is_empty() || (e.path().is_dir() && walk(&e.path(), rest)))
        })
    }
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    walk(root, &parts)
}

/// fnmatch(3) without flags: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`, `\` escapes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match_class(&p, pi, t[ti]),
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; the index after `]` if it does.
fn match_class(p: &[char], start: usize, c: char) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while let Some(&pc) = p.get(i) {
        if pc == ']' && !first {
            return (matched != negate).then_some(i + 1);
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let end = p[i + 2];
            matched |= pc <= c && c <= end;
            i += 3;
        } else {
            matched |= pc == c;
            i += 1;
        }
    }
    // No closing `]`: treat `[` literally.
    (c == '[').then_some(start + 1)
}

/// Linux capability names (capability(7)) and their bit numbers.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit number of a capability name (case-insensitive, `CAP_` optional).
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    CAPABILITIES.iter().position(|c| *c == full).and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(kind: ConditionKind, value: &str) -> Condition {
        Condition::parse(kind, false, value, 1, |s| Ok(s.to_string())).unwrap()
    }

    #[test]
    fn parse_prefixes() {
        let c = cond(ConditionKind::PathExists, "|!/etc/ssh/sshd_not_to_be_run");
        assert!(c.trigger && c.negate && !c.assert);
        assert_eq!(c.value, "/etc/ssh/sshd_not_to_be_run");
        let id = |s: &str| Ok(s.to_string());
        assert!(Condition::parse(ConditionKind::PathExists, false, "relative", 1, id).is_err());
        assert!(Condition::parse(ConditionKind::Capability, false, "CAP_NOPE", 1, id).is_err());
        assert!(Condition::parse(ConditionKind::FirstBoot, false, "maybe", 1, id).is_err());
        assert!(Condition::parse(ConditionKind::KernelCommandLine, false, "!", 1, id).is_err());
    }

    #[test]
    fn path_conditions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        std::fs::write(dir.path().join("etc/ssh/sshd_config"), "x").unwrap();
        std::fs::write(dir.path().join("etc/empty"), "").unwrap();
        std::os::unix::fs::symlink("sshd_config", dir.path().join("etc/ssh/link")).unwrap();
        let env = ConditionEnv { root: dir.path().to_path_buf(), ..Default::default() };
        let ok = |kind, v: &str| check(&[cond(kind, v)], &env).is_ok();
        use ConditionKind::*;
        assert!(ok(PathExists, "!/etc/ssh/sshd_not_to_be_run"));
        assert!(!ok(PathExists, "/etc/ssh/sshd_not_to_be_run"));
        assert!(ok(PathIsDirectory, "/etc/ssh"));
        assert!(ok(PathIsSymbolicLink, "/etc/ssh/link"));
        assert!(ok(FileNotEmpty, "/etc/ssh/sshd_config"));
        assert!(!ok(FileNotEmpty, "/etc/empty"));
        assert!(ok(DirectoryNotEmpty, "/etc/ssh"));
        assert!(ok(PathExistsGlob, "/etc/ss?/*_config"));
        assert!(!ok(PathExistsGlob, "/etc/*/nothing*"));
        assert!(ok(PathIsMountPoint, "/") || !ok(PathIsMountPoint, "/etc"));
        assert!(!ok(FileIsExecutable, "/etc/ssh/sshd_config"));
    }

    #[test]
    fn triggers() {
        let env = ConditionEnv { kernel_cmdline: "quiet berth.debug root=PARTUUID=x".into(), ..Default::default() };
        use ConditionKind::KernelCommandLine as K;
        let t = |v: &str| Condition { trigger: true, ..cond(K, v) };
        assert!(check(&[t("nope"), t("quiet")], &env).is_ok());
        assert_eq!(check(&[t("nope"), t("nada")], &env).unwrap_err().value, "nada");
        assert!(check(&[cond(K, "root"), cond(K, "root=PARTUUID=x"), cond(K, "!root=y")], &env).is_ok());
        assert!(check(&[t("quiet"), cond(K, "missing")], &env).is_err());
    }

    #[test]
    fn machine_conditions() {
        let env = ConditionEnv {
            virtualization: "kvm".into(),
            capability_bounding_set: 1 << 25,
            first_boot: true,
            hostname: "node-7".into(),
            machine_id: "abcd".into(),
            environment: vec![("A".into(), "1".into())],
            ..Default::default()
        };
        use ConditionKind::*;
        let ok = |kind, v: &str| check(&[cond(kind, v)], &env).is_ok();
        assert!(ok(Virtualization, "yes") && ok(Virtualization, "vm") && ok(Virtualization, "kvm"));
        assert!(!ok(Virtualization, "container") && ok(Virtualization, "!container"));
        assert!(ok(Capability, "CAP_SYS_TIME") && ok(Capability, "sys_time") && !ok(Capability, "CAP_SYS_ADMIN"));
        assert!(ok(FirstBoot, "yes") && !ok(FirstBoot, "no"));
        assert!(ok(Host, "node-*") && ok(Host, "abcd") && !ok(Host, "other"));
        assert!(ok(Architecture, "native"));
        assert!(ok(Environment, "A") && ok(Environment, "A=1") && !ok(Environment, "A=2"));
    }

    #[test]
    fn globbing() {
        assert!(glob_match("*.conf", "a.conf") && !glob_match("*.conf", "a.confx"));
        assert!(glob_match("a?c", "abc") && glob_match("[a-c]x", "bx") && !glob_match("[!a-c]x", "bx"));
        assert!(glob_match("*a*b*", "xxaxxbxx") && !glob_match("*a*b", "ba"));
        assert!(glob_match("\\*", "*") && !glob_match("\\*", "x"));
        assert!(glob_match("[]x]", "]") && glob_match("[", "["));
    }
}
