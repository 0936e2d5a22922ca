//! The cloud metadata source (docs/provisioning.md, "The cloud's metadata service"). PID 1 parses
//! no packet from the network: `berth-metadata.service` fetches what AWS, GCE or Azure offer
//! (`berth-metadata fetch`, its own process) into [`RECORD_PATH`], then asks PID 1 with
//! `berthctl provision-metadata` to apply it. That is this module: the record becomes the one
//! provisioning document ([`merge`]):
//!
//! - the user data *is* the document, parsed as fw_cfg's and the ESP's are
//!   ([`Source::Metadata`]); none is an empty document;
//! - the metadata's hostname applies unless the document sets one;
//! - each SSH key goes to `core`, unless the key names a user (GCE's `user:key`, Azure's
//!   admin user) that the document lists in `[[users]]`: then to that user.
//!
//! and it is applied all or nothing by [`super::apply`]. Malformed user data applies nothing
//! from the record (neither its keys nor its hostname) and is recorded in [`super::FAILED`].
//!
//! Once per instance ([`decide`]): the marker keeps the instance id with the document's
//! SHA-256, so a reboot applies nothing and a new instance from the same image (or from a
//! snapshot of this one) provisions again.

use std::collections::BTreeSet;
use std::path::Path;

use berth_metadata::record::{InstanceRecord, Outcome};
pub use berth_metadata::record::{MAX_RECORD, RECORD_PATH};

use super::{
    Config, Failure, Hostname, MAX_DOCUMENT, Marker, Name, OneLine, ProvisionError, Record, Source, User, apply,
    failed, marker, parse_from, recorded_name, sha256_hex,
};

/// Who gets the SSH keys that name no user of the document: the image's login user.
pub const DEFAULT_USER: &str = "core";

/// Whether the metadata is applied on this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply it; why, for the log.
    Apply(String),
    /// Applied already for this instance (a reboot); the log line.
    Done(String),
}

/// The first-boot decision: `marker` is what [`super::MARKER`] says, `instance_id` and
/// `digest` (the user data's SHA-256) describe the record. A marker of another source (fw_cfg,
/// the ESP) does not stand for the metadata; one of the metadata for another instance id is a
/// new instance; without instance ids to compare, the digest decides.
pub fn decide(marker: Option<&Marker>, instance_id: Option<&str>, digest: &str) -> Decision {
    let Some(m) = marker else {
        return Decision::Apply("first boot".into());
    };
    if m.source != Some(Source::Metadata) {
        return Decision::Apply(format!(
            "first boot of this instance (the marker names {} only)",
            recorded_name(m.source)
        ));
    }
    match (m.instance_id.as_deref(), instance_id) {
        (Some(was), Some(now)) if was == now => Decision::Done(format!("already applied on instance {now}")),
        (Some(was), Some(now)) => Decision::Apply(format!("a new instance {now} (applied before on instance {was})")),
        _ if m.digest == digest => {
            Decision::Done("already applied (the same user data; no instance id to compare)".into())
        }
        _ => Decision::Apply("the user data changed (no instance id to compare)".into()),
    }
}

/// The metadata's hostname as `/etc/hostname` takes it: as given, else (a GCE FQDN longer than
/// 64 bytes) its first label.
fn hostname(offered: &str) -> Option<Hostname> {
    let offered = offered.trim();
    Hostname::try_from(offered.to_string())
        .ok()
        .or_else(|| offered.split_once('.').and_then(|(first, _)| Hostname::try_from(first.to_string()).ok()))
}

/// The provisioning document the record makes (see the module docs), with a note for each
/// thing merged into it or left out. Errors only when the user data is not a document.
pub fn merge(record: &InstanceRecord) -> Result<(Config, Vec<String>), ProvisionError> {
    let mut config = match &record.user_data {
        None => Config::default(),
        Some(bytes) => {
            if bytes.len() as u64 > MAX_DOCUMENT {
                return Err(ProvisionError::TooLarge(Source::Metadata));
            }
            let text =
                std::str::from_utf8(bytes).map_err(|why| ProvisionError::NotUtf8 { from: Source::Metadata, why })?;
            parse_from(Source::Metadata, text)?
        }
    };
    let mut notes = Vec::new();
    match (&config.hostname, record.hostname.as_deref()) {
        (Some(doc), Some(offered)) => {
            let offered = offered.escape_default();
            notes.push(format!("hostname {} from the user data (the metadata's {offered} is not used)", doc.0))
        }
        (None, Some(offered)) => match hostname(offered) {
            Some(h) => {
                notes.push(format!("hostname {} from the metadata", h.0));
                config.hostname = Some(h);
            }
            None => {
                let offered = offered.trim().escape_default();
                notes.push(format!("the metadata's hostname `{offered}` is not a valid hostname; not used"))
            }
        },
        (_, None) => {}
    }
    let listed: BTreeSet<String> = config.users.iter().map(|u| u.name.0.clone()).collect();
    let mut unlisted = BTreeSet::new();
    for (i, k) in record.ssh_keys.iter().enumerate() {
        let Ok(key) = OneLine::try_from(k.key.trim().to_string()) else {
            notes.push(format!("SSH key {i} of the metadata is not one non-empty line; not used"));
            continue;
        };
        let to = match k.user.as_deref().map(str::trim) {
            Some(u) if listed.contains(u) => u.to_string(),
            Some(u) if !u.is_empty() && u != DEFAULT_USER => {
                unlisted.insert(u.to_string());
                DEFAULT_USER.to_string()
            }
            _ => DEFAULT_USER.to_string(),
        };
        if !config.users.iter().any(|u| u.name.0 == to) {
            config.users.push(User {
                name: Name(to.clone()),
                uid: None,
                groups: Vec::new(),
                shell: None,
                ssh_authorized_keys: Vec::new(),
                password_hash: None,
            });
        }
        let Some(user) = config.users.iter_mut().find(|u| u.name.0 == to) else { continue };
        let keys = &mut user.ssh_authorized_keys;
        if !keys.iter().any(|have| have.0.trim() == key.0) {
            keys.push(key);
        }
    }
    if !unlisted.is_empty() {
        // Names the cloud gave: escaped, so that none can start a console line of its own.
        let names: Vec<String> = unlisted.iter().map(|n| n.escape_default().to_string()).collect();
        notes.push(format!("SSH keys of {} go to {DEFAULT_USER} (the user data lists no such user)", names.join(", ")));
    }
    let keyed: Vec<String> = config
        .users
        .iter()
        .filter(|u| !u.ssh_authorized_keys.is_empty())
        .map(|u| format!("{} ({})", u.name.0, u.ssh_authorized_keys.len()))
        .collect();
    if !record.ssh_keys.is_empty() {
        notes.push(format!("SSH keys for {}", keyed.join(", ")));
    }
    Ok((config, notes))
}

/// What [`provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// Whether `berthctl provision-metadata` succeeds: nothing to do counts, a document that
    /// failed (now or on an earlier boot) does not.
    pub ok: bool,
    /// What to log on the console, each line `provisioning: …`.
    pub lines: Vec<String>,
    /// The one-line reply berthctl prints.
    pub summary: String,
    /// Something was written: PID 1 sets the hostname again, re-reads the unit files and starts
    /// what the default target wants now.
    pub changed: bool,
}

impl Provisioned {
    fn nothing(mut lines: Vec<String>, summary: String) -> Provisioned {
        lines.push(format!("provisioning: {summary}"));
        Provisioned { ok: true, lines, summary, changed: false }
    }
}

/// Applies `record` to the tree at `root` (`/` on the machine) once per instance (see the
/// module docs). Never panics; every outcome is in the answer.
pub fn provision(root: &Path, record: &InstanceRecord) -> Provisioned {
    let platform = record.platform.as_str();
    let mut lines: Vec<String> =
        record.notes.iter().map(|n| format!("provisioning: {platform} metadata: {n}")).collect();
    match record.outcome {
        Outcome::NotACloud => {
            return Provisioned::nothing(
                lines,
                format!("platform {platform} has no metadata service: nothing to provision"),
            );
        }
        Outcome::Unreachable => {
            return Provisioned::nothing(
                lines,
                format!("{platform} metadata service did not answer; going on with the image's configuration"),
            );
        }
        Outcome::Complete | Outcome::Partial => {}
    }
    if record.user_data.is_none() && record.hostname.is_none() && record.ssh_keys.is_empty() {
        return Provisioned::nothing(
            lines,
            format!("the {platform} metadata has no user data, hostname or SSH key: nothing to provision"),
        );
    }
    let digest = sha256_hex(record.user_data.as_deref().unwrap_or_default());
    let instance_id = record.instance_id.clone();
    let why = match decide(marker(root).as_ref(), instance_id.as_deref(), &digest) {
        Decision::Done(why) => return Provisioned::nothing(lines, format!("{platform} metadata: {why}")),
        Decision::Apply(why) => why,
    };
    let state = Record {
        digest: digest.clone(),
        source: Source::Metadata,
        instance_id: instance_id.clone(),
        platform: Some(platform.to_string()),
    };
    let whose = state.whose();
    if let Some(f) = failed(root)
        .filter(|f| f.source == Some(Source::Metadata) && f.digest == digest && f.instance_id == instance_id)
    {
        let summary = format!(
            "{}{whose} (sha256 {digest}) failed on an earlier boot: {}; not tried again (to retry it: rm /{}, then \
             reboot)",
            Source::Metadata.name(),
            f.reason,
            super::FAILED
        );
        lines.push(format!("provisioning: {summary}"));
        return Provisioned { ok: false, lines, summary, changed: false };
    }
    lines.push(format!("provisioning: {platform} metadata: {why}"));
    let merged = merge(record).map_err(Failure::before);
    let outcome = merged.and_then(|(config, notes)| {
        lines.extend(notes.iter().map(|n| format!("provisioning: {n}")));
        apply(&config, root)
    });
    match outcome {
        Ok(report) => {
            lines.extend(report.actions.iter().map(|a| format!("provisioning: {a}")));
            lines.extend(state.applied(root));
            let summary = format!(
                "applied the {}{whose} (sha256 {digest}): {} change(s)",
                Source::Metadata.name(),
                report.actions.len()
            );
            Provisioned { ok: true, lines, summary, changed: true }
        }
        Err(f) => {
            let otherwise = "nothing applied from the metadata, going on with the image's configuration";
            lines.extend(state.failed(root, &f, otherwise));
            let what = if f.partly_applied { "applied only in part" } else { "nothing applied" };
            let summary = format!("{}; {what}", f.reason);
            Provisioned { ok: false, lines, summary, changed: f.partly_applied }
        }
    }
}

/// Reads the record `berth-metadata fetch` wrote at `path`: a regular file of root's, not
/// followed if it is a symbolic link, at most [`MAX_RECORD`] bytes. Opened non-blocking and
/// checked before it is read (rather than with `InstanceRecord::read`): PID 1 must not hang on a
/// FIFO or a device there; the text is the record's own parser's.
pub fn read_record(path: &Path) -> Result<InstanceRecord, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let at = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => format!("{at} is a symbolic link; not followed"),
            _ if e.kind() == std::io::ErrorKind::NotFound => {
                format!("{at}: no record (`berth-metadata fetch` writes it first)")
            }
            _ => format!("opening {at}: {e}"),
        })?;
    let meta = file.metadata().map_err(|e| format!("{at}: {e}"))?;
    if !meta.is_file() || meta.uid() != 0 {
        return Err(format!("{at} is not a regular file of root's; not read"));
    }
    let mut text = String::new();
    file.take(MAX_RECORD + 1).read_to_string(&mut text).map_err(|e| format!("reading {at}: {e}"))?;
    if text.len() as u64 > MAX_RECORD {
        return Err(format!("{at} is larger than {} MiB; not read", MAX_RECORD >> 20));
    }
    InstanceRecord::parse(&text).map_err(|e| format!("{at}: {e}"))
}
