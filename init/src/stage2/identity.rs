//! Who this machine is: its machine-id (generated on first boot, kept in `/etc` on STATE), its
//! hostname, and `/etc/hosts` naming it.

use std::io::{Read, Write};
use std::path::Path;

use crate::sys::log;

const MACHINE_ID: &str = "/etc/machine-id";
pub const HOSTS: &str = "/etc/hosts";
/// The first line of an `/etc/hosts` berth-init wrote: only such a file is rewritten (when the
/// hostname changes); any other `/etc/hosts` is the admin's and left alone.
const HOSTS_MARKER: &str = "# Written by berth-init for the hostname. Delete this line to keep your own edits.";

/// The machine-id, and whether it was generated now (and stored, because `/etc/machine-id` held
/// none).
pub fn machine_id() -> Result<(String, bool), String> {
    if let Ok(text) = std::fs::read_to_string(MACHINE_ID)
        && let Some(id) = valid_machine_id(&text)
    {
        return Ok((id, false));
    }
    let bytes = random_bytes()?;
    let id = format_machine_id(bytes);
    write_atomically(Path::new(MACHINE_ID), format!("{id}\n").as_bytes())
        .map_err(|e| format!("writing {MACHINE_ID}: {e}"))?;
    Ok((id, true))
}

/// 16 random bytes ([`crate::sys::random::bytes16`], else /dev/urandom on kernels before 5.6).
fn random_bytes() -> Result<[u8; 16], String> {
    if let Some(b) = crate::sys::random::bytes16() {
        return Ok(b);
    }
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(b)
}

/// 32 lower-case hex digits, as machine-id(5) requires; `None` for anything else.
fn valid_machine_id(text: &str) -> Option<String> {
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// A random (version 4, RFC 4122 variant) UUID in machine-id form, as systemd generates them.
fn format_machine_id(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Replaces `path` (world-readable, 0644) through a new file and a rename.
pub(super) fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("berth-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Sets the hostname from `/etc/hostname`, or `localhost`; returns it.
pub fn hostname() -> String {
    let configured = std::fs::read_to_string("/etc/hostname").ok().and_then(|t| {
        let name = t.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))?.to_string();
        if valid_hostname(&name) {
            Some(name)
        } else {
            log::line(&format!("/etc/hostname: `{name}` is not a valid hostname; using localhost"));
            None
        }
    });
    let name = configured.unwrap_or_else(|| "localhost".into());
    if let Err(e) = nix::unistd::sethostname(&name) {
        log::line(&format!("setting the hostname to {name}: {e}"));
    }
    name
}

/// `/etc/hosts` for `hostname`: localhost on both loopback addresses, and the hostname (with
/// its first label when it has a domain) on 127.0.1.1 as Debian does, so that programs that
/// resolve their own name (sudo, `hostname -f`) find it without DNS.
pub fn hosts_file(hostname: &str) -> String {
    let mut text = format!("{HOSTS_MARKER}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if hostname != "localhost" {
        match hostname.split_once('.') {
            Some((short, _)) => text.push_str(&format!("127.0.1.1\t{hostname} {short}\n")),
            None => text.push_str(&format!("127.0.1.1\t{hostname}\n")),
        }
    }
    text
}

/// Writes [`hosts_file`] to `path` unless a file there is not berth-init's; returns what it did.
pub fn write_hosts(path: &Path, hostname: &str) -> Result<&'static str, String> {
    let text = hosts_file(hostname);
    match std::fs::read_to_string(path) {
        Ok(old) if old == text => return Ok("up to date"),
        Ok(old) if old.lines().next() != Some(HOSTS_MARKER) => return Ok("the admin's, left alone"),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("reading {}: {e}; left alone", path.display()));
        }
        _ => {}
    }
    write_atomically(path, text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok("written")
}

/// RFC 1123 labels: letters, digits and hyphens, 1–63 each, 253 in all (the kernel keeps 64).
fn valid_hostname(name: &str) -> bool {
    name.len() <= 64
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids() {
        let id = format_machine_id([0xff; 16]);
        assert_eq!(id, "ffffffffffff4fffbfffffffffffffff");
        assert_eq!(valid_machine_id(&format!("{id}\n")), Some(id));
        assert_eq!(valid_machine_id(""), None);
        assert_eq!(valid_machine_id("uninitialized\n"), None);
    }

    #[test]
    fn issue15_9_hosts_names_localhost_and_the_hostname() {
        assert_eq!(
            hosts_file("node-1"),
            format!(
                "{HOSTS_MARKER}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tnode-1\n"
            )
        );
        assert!(hosts_file("node-1.example.org").ends_with("\n127.0.1.1\tnode-1.example.org node-1\n"));
        assert!(!hosts_file("localhost").contains("127.0.1.1"));
    }

    #[test]
    fn issue15_9_hosts_is_rewritten_only_when_it_is_berth_inits() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("hosts");
        assert_eq!(write_hosts(&path, "a"), Ok("written"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), hosts_file("a"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(write_hosts(&path, "a"), Ok("up to date"));
        assert_eq!(write_hosts(&path, "b"), Ok("written"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), hosts_file("b"));
        std::fs::write(&path, "127.0.0.1 localhost mine\n").unwrap();
        assert_eq!(write_hosts(&path, "c"), Ok("the admin's, left alone"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1 localhost mine\n");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1, "a temporary file was left");
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("node-1.example"));
        assert!(!valid_hostname("-x") && !valid_hostname("a..b") && !valid_hostname("a_b") && !valid_hostname(""));
    }
}
