//! Who this machine is: its machine-id (generated on first boot, kept in `/etc` on STATE) and
//! its hostname.

use std::io::{Read, Write};
use std::path::Path;

use crate::log;

const MACHINE_ID: &str = "/etc/machine-id";

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

/// 16 random bytes ([`crate::random::bytes16`], else /dev/urandom on kernels before 5.6).
fn random_bytes() -> Result<[u8; 16], String> {
    if let Some(b) = crate::random::bytes16() {
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

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("berth-tmp");
    let mut f = std::fs::File::create(&tmp)?;
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
    fn hostnames() {
        assert!(valid_hostname("node-1.example"));
        assert!(!valid_hostname("-x") && !valid_hostname("a..b") && !valid_hostname("a_b") && !valid_hostname(""));
    }
}
