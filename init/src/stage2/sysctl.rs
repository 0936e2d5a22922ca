//! Kernel parameters from `sysctl.d`, applied once at stage 2 before any unit starts, as
//! systemd-sysctl applies them (sysctl.d(5)):
//!
//! - `*.conf` files in `/etc/sysctl.d`, `/run/sysctl.d`, `/usr/local/lib/sysctl.d` and
//!   `/usr/lib/sysctl.d`; a file name in an earlier directory hides the same name in later ones
//!   (a symlink to `/dev/null` or an empty file masks it); all files are read in the lexical
//!   order of their names, then `/etc/sysctl.conf`; a later assignment of a key wins.
//! - `key = value` lines; `#` and `;` start comments; a key is dotted (`net.ipv4.ip_forward`)
//!   or a path below `/proc/sys` (`net/ipv4/ip_forward`); a `-` before the key ignores a
//!   failure to write it; `*`, `?` and `[…]` in a key match existing entries (an entry set by
//!   name elsewhere keeps that value).
//! - Before every file, berth-init's own [`DEFAULTS`] (any file overrides them).
//!
//! Every problem is logged with its `file:line`; nothing here stops the boot.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directories, the one whose file of a given name wins first.
pub const DIRS: [&str; 4] = ["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d"];
/// Read after every file in [`DIRS`] (procps' and Debian's systemd's convention).
pub const SYSCTL_CONF: &str = "/etc/sysctl.conf";
/// Where keys are written.
pub const PROC_SYS: &str = "/proc/sys";

/// What every Berth host gets unless a file says otherwise: the kernel's protections against
/// link and FIFO races in world-writable sticky directories (`/tmp`, `/var/tmp`), and kernel
/// addresses and the kernel log hidden from unprivileged users.
pub const DEFAULTS: &str = "\
fs.protected_symlinks = 1
fs.protected_hardlinks = 1
fs.protected_fifos = 1
fs.protected_regular = 1
kernel.kptr_restrict = 1
kernel.dmesg_restrict = 1
";
const DEFAULTS_ORIGIN: &str = "berth-init's defaults";

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The path below `/proc/sys` (`fs/protected_symlinks`), possibly a glob.
    pub key: String,
    pub value: String,
    /// `-key = value`: a failure to write is not reported.
    pub ignore_failure: bool,
    /// `file:line`.
    pub origin: String,
}

impl Assignment {
    fn is_glob(&self) -> bool {
        self.key.contains(['*', '?', '['])
    }
}

/// The files to read, in order: `*.conf` of `dirs` (earlier directories first in precedence),
/// one per name, sorted by name; masked names (a symlink to `/dev/null`) are left out.
pub fn files(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut chosen: HashMap<String, PathBuf> = HashMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && !name.starts_with('.') {
                chosen.entry(name).or_insert_with(|| e.path());
            }
        }
    }
    let mut names: Vec<(String, PathBuf)> = chosen.into_iter().collect();
    names.sort();
    let masked = |p: &Path| std::fs::read_link(p).is_ok_and(|t| t == Path::new("/dev/null"));
    names.into_iter().map(|(_, p)| p).filter(|p| !masked(p)).collect()
}

/// Parses one file's text; `origin` names it in each assignment and error.
pub fn parse(text: &str, origin: &str) -> (Vec<Assignment>, Vec<String>) {
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let at = format!("{origin}:{}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            errors.push(format!("{at}: no '=' in {line:?}; ignored"));
            continue;
        };
        let (key, ignore_failure) = match key.trim().strip_prefix('-') {
            Some(k) => (k.trim(), true),
            None => (key.trim(), false),
        };
        match normalize(key) {
            Some(key) => out.push(Assignment { key, value: value.trim().to_string(), ignore_failure, origin: at }),
            None => errors.push(format!("{at}: {key:?} is not a sysctl key; ignored")),
        }
    }
    (out, errors)
}

/// A key as a path below `/proc/sys`: dots are separators unless the key uses `/` first (then a
/// dot is part of a name, as in `net/ipv4/conf/eth0.1/rp_filter`); in dotted keys a `/` stands
/// for a dot. `None` for an empty key or one that would leave `/proc/sys`.
pub fn normalize(key: &str) -> Option<String> {
    let key = key.trim_start_matches('/');
    let slashes = key.find(['.', '/']).is_some_and(|i| key.as_bytes()[i] == b'/');
    let path: String = if slashes {
        key.to_string()
    } else {
        key.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    };
    let ok = !path.is_empty()
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && !path.contains(|c: char| c.is_whitespace() || c == '\0');
    ok.then_some(path)
}

/// The assignments that take effect: each key's last assignment, in the order keys first
/// appeared.
pub fn effective(all: Vec<Assignment>) -> Vec<Assignment> {
    let mut order: Vec<String> = Vec::new();
    let mut last: HashMap<String, Assignment> = HashMap::new();
    for a in all {
        if !last.contains_key(&a.key) {
            order.push(a.key.clone());
        }
        last.insert(a.key.clone(), a);
    }
    order.into_iter().filter_map(|k| last.remove(&k)).collect()
}

/// Reads [`DEFAULTS`], then `files` in order; returns the effective assignments and the errors.
pub fn load(files: &[PathBuf]) -> (Vec<Assignment>, Vec<String>) {
    let (mut all, mut errors) = parse(DEFAULTS, DEFAULTS_ORIGIN);
    for f in files {
        // A masking empty file, or one that cannot be read, adds nothing.
        match std::fs::read_to_string(f) {
            Ok(text) => {
                let (a, e) = parse(&text, &f.display().to_string());
                all.extend(a);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("{}: {e}; ignored", f.display())),
        }
    }
    (effective(all), errors)
}

/// Writes the assignments below `proc_sys`; returns how many entries were written and the
/// failures (those of `-` keys left out).
pub fn apply(proc_sys: &Path, assignments: &[Assignment]) -> (usize, Vec<String>) {
    let named: std::collections::HashSet<&str> =
        assignments.iter().filter(|a| !a.is_glob()).map(|a| a.key.as_str()).collect();
    let (mut written, mut errors) = (0, Vec::new());
    for a in assignments {
        let targets = if a.is_glob() {
            let found = expand(proc_sys, &a.key);
            found.into_iter().filter(|k| !named.contains(k.as_str())).collect()
        } else {
            vec![a.key.clone()]
        };
        for key in targets {
            match write_key(proc_sys, &key, &a.value) {
                Ok(()) => written += 1,
                Err(e) if !a.ignore_failure => {
                    errors.push(format!("{}: {} = {}: {e}", a.origin, key.replace('/', "."), a.value))
                }
                Err(_) => {}
            }
        }
    }
    (written, errors)
}

fn write_key(proc_sys: &Path, key: &str, value: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = proc_sys.join(key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "no such key".to_string(),
            _ => e.to_string(),
        })?;
    f.write_all(format!("{value}\n").as_bytes()).map_err(|e| e.to_string())
}

/// The existing entries below `proc_sys` that `glob` (a path with `*`, `?`, `[…]` in any
/// component) matches, as keys, sorted.
fn expand(proc_sys: &Path, glob: &str) -> Vec<String> {
    let mut found = vec![String::new()];
    for part in glob.split('/') {
        let mut next = Vec::new();
        for prefix in &found {
            let dir = proc_sys.join(prefix);
            let join = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
            if !part.contains(['*', '?', '[']) {
                if std::fs::symlink_metadata(dir.join(part)).is_ok() {
                    next.push(join(part));
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if matches(part.as_bytes(), name.as_bytes()) {
                    next.push(join(&name));
                }
            }
        }
        found = next;
    }
    found.sort();
    found
}

/// fnmatch(3) for one path component: `*`, `?` and `[…]` (with `!` or `^` and ranges).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && matches(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some(end) = rest.iter().skip(1).position(|&c| c == b']').map(|p| p + 1) else {
                return name.first() == Some(&b'[') && matches(rest, &name[1..]);
            };
            let Some((&c, tail)) = name.split_first() else { return false };
            let (negate, set) = match rest[..end].split_first() {
                Some((b'!' | b'^', s)) => (true, s),
                _ => (false, &rest[..end]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && matches(&rest[end + 1..], tail)
        }
        Some((&p, rest)) => name.first() == Some(&p) && matches(rest, &name[1..]),
    }
}

/// Stage 2: applies [`DEFAULTS`] and every file; returns the lines to log.
pub fn run() -> Vec<String> {
    let dirs: Vec<&Path> = DIRS.iter().map(Path::new).collect();
    let mut files = files(&dirs);
    if Path::new(SYSCTL_CONF).is_file() {
        files.push(PathBuf::from(SYSCTL_CONF));
    }
    let (assignments, mut errors) = load(&files);
    let (written, failed) = apply(Path::new(PROC_SYS), &assignments);
    errors.extend(failed);
    let mut lines = vec![format!("sysctl: {written} settings written (built-in defaults and {} files)", files.len())];
    lines.extend(errors.into_iter().map(|e| format!("sysctl: {e}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn m9_sysctl_d_files_override_by_name_and_apply_in_lexical_order() {
        let t = tempfile::tempdir().unwrap();
        let (etc, run, lib) = (t.path().join("etc"), t.path().join("run"), t.path().join("lib"));
        write(&lib.join("10-a.conf"), "fs.protected_regular = 2\nkernel.x = lib\n");
        write(&lib.join("50-b.conf"), "kernel.y = lib-b\n");
        write(&lib.join("90-c.conf"), "kernel.z = masked\n");
        write(&lib.join("README"), "not = read\n");
        write(&run.join("50-b.conf"), "kernel.y = run-b\n");
        write(&etc.join("50-b.conf"), "kernel.y = etc-b\n");
        write(&etc.join("20-admin.conf"), "kernel.x = admin\n");
        std::fs::create_dir_all(&etc).unwrap();
        std::os::unix::fs::symlink("/dev/null", etc.join("90-c.conf")).unwrap();
        let found = files(&[etc.as_path(), run.as_path(), lib.as_path()]);
        assert_eq!(found, [lib.join("10-a.conf"), etc.join("20-admin.conf"), etc.join("50-b.conf")]);

        let (a, errors) = load(&found);
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<(&str, &str)> = a.iter().map(|a| (a.key.as_str(), a.value.as_str())).collect();
        assert_eq!(
            got,
            [
                ("fs/protected_symlinks", "1"),
                ("fs/protected_hardlinks", "1"),
                ("fs/protected_fifos", "1"),
                ("fs/protected_regular", "2"),
                ("kernel/kptr_restrict", "1"),
                ("kernel/dmesg_restrict", "1"),
                ("kernel/x", "admin"),
                ("kernel/y", "etc-b"),
            ]
        );
        assert_eq!(a[6].origin, format!("{}:1", etc.join("20-admin.conf").display()));
    }

    #[test]
    fn m9_sysctl_defaults_protect_links_fifos_and_kernel_pointers() {
        let (a, errors) = load(&[]);
        assert!(errors.is_empty());
        for key in ["fs/protected_symlinks", "fs/protected_hardlinks", "fs/protected_fifos", "fs/protected_regular"] {
            assert!(a.iter().any(|a| a.key == key && a.value == "1"), "{key} not set to 1 by default: {a:?}");
        }
        assert!(a.iter().any(|a| a.key == "kernel/kptr_restrict" && a.value == "1"));
        assert!(a.iter().any(|a| a.key == "kernel/dmesg_restrict" && a.value == "1"));
    }

    #[test]
    fn m9_sysctl_lines_keys_and_errors_carry_file_and_line() {
        let text = "# comment\n; also\n\n  net.ipv4.conf.eth0/1.rp_filter=2 \nnet/ipv4/conf/eth0.1/x = a b\n\
                    -kernel.missing = 1\nbroken line\n../../etc/passwd = x\n";
        let (a, errors) = parse(text, "f.conf");
        assert_eq!(a.len(), 3);
        assert_eq!(
            (a[0].key.as_str(), a[0].value.as_str(), a[0].origin.as_str()),
            ("net/ipv4/conf/eth0.1/rp_filter", "2", "f.conf:4")
        );
        assert_eq!((a[1].key.as_str(), a[1].value.as_str()), ("net/ipv4/conf/eth0.1/x", "a b"));
        assert!(a[2].ignore_failure && a[2].key == "kernel/missing");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("f.conf:7: no '='"), "{errors:?}");
        assert!(errors[1].starts_with("f.conf:8: "), "{errors:?}");
    }

    #[test]
    fn m9_sysctl_writes_globs_spare_named_keys_and_dash_hides_failures() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        for k in ["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/eth0/rp_filter", "net/ipv4/conf/lo/rp_filter"] {
            write(&sys.join(k), "0\n");
        }
        let (a, _) = parse(
            "net.ipv4.conf.*.rp_filter = 2\nnet.ipv4.conf.lo.rp_filter = 0\n-kernel.gone = 1\nkernel.absent = 1\n",
            "g.conf",
        );
        let (written, errors) = apply(sys, &effective(a));
        let read = |k: &str| std::fs::read_to_string(sys.join(k)).unwrap();
        assert_eq!(read("net/ipv4/conf/all/rp_filter"), "2\n");
        assert_eq!(read("net/ipv4/conf/eth0/rp_filter"), "2\n");
        assert_eq!(read("net/ipv4/conf/lo/rp_filter"), "0\n");
        assert_eq!(written, 3);
        assert_eq!(errors, ["g.conf:4: kernel.absent = 1: no such key"]);
    }

    #[test]
    fn glob_matching() {
        assert!(matches(b"e*", b"eth0") && matches(b"*", b"") && matches(b"eth?", b"eth1"));
        assert!(matches(b"eth[0-2]", b"eth2") && !matches(b"eth[!0-2]", b"eth2") && !matches(b"e*x", b"eth0"));
    }
}
