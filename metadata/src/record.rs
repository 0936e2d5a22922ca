//! The instance record: what `berth-metadata fetch` learnt from the cloud's metadata service,
//! written to [`RECORD_PATH`] for PID 1, which maps it onto the provisioning document
//! (docs/provisioning.md): the user data is the document, the SSH keys go to `core` unless the
//! document names users, the hostname is used unless the document sets one, and the instance id
//! decides whether this is a first boot.
//!
//! TOML, one file, written whole (temporary file, fsync, rename) in a directory only root can
//! read, because user data may carry secrets:
//!
//! ```toml
//! platform = "gce"
//! outcome = "complete"
//! instance_id = "4281239478129"
//! hostname = "node-1"
//! user_data_base64 = "aG9zdG5hbWUgPSAibm9kZS0xIgo="
//! notes = ["instance/attributes/sshKeys: not set (404)"]
//!
//! [[ssh_keys]]
//! user = "alice"
//! key = "ssh-ed25519 AAAA... alice@laptop"
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::atomic;

/// The directory `RECORD_DIR` and `RECORD_PATH` are built from (`concat!` takes literals only).
macro_rules! record_dir {
    () => {
        "/run/berth/metadata"
    };
}

/// `berth-metadata`'s run directory, 0700, root's: the record, and the provisioning CD's mount
/// point while it is read.
pub const RECORD_DIR: &str = record_dir!();

/// Where `berth-metadata fetch` leaves the record, in [`RECORD_DIR`].
pub const RECORD_PATH: &str = concat!(record_dir!(), "/instance.toml");

/// The most of a record that is read (user data is at most 1 MiB, as a provisioning document).
pub const MAX_RECORD: u64 = 4 << 20;

/// What the metadata service said about this instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    /// The platform's word (`aws`, `gce`, `azure`; `metal`, `qemu`… with [`Outcome::NotACloud`]).
    pub platform: String,
    /// How complete the record is.
    pub outcome: Outcome,
    /// The cloud's id of this instance (AWS `instance-id`, GCE `instance/id`, Azure `vmId`): a new
    /// one means a new instance from the same image, which provisions again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The hostname the cloud gives the instance (at most 63 bytes: an FQDN longer than that is
    /// cut at its first dot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The user data, as given (the provisioning document); `user_data_base64` in the file.
    #[serde(
        default,
        rename = "user_data_base64",
        serialize_with = "to_base64",
        deserialize_with = "from_base64",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_data: Option<Vec<u8>>,
    /// The SSH keys the cloud gives, in the cloud's order.
    #[serde(default)]
    pub ssh_keys: Vec<SshKey>,
    /// What was missing, retried or failed, one line each, for the log.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One SSH public key from the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshKey {
    /// The user the cloud names for it: GCE's `user:key` user, Azure's `adminUsername`. None on
    /// AWS (the key goes to `core`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The key, one `authorized_keys` line (`ssh-ed25519 AAAA… comment`).
    pub key: String,
}

/// How complete a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every field was asked for and answered (a field the instance does not have, such as
    /// absent user data, is complete too).
    Complete,
    /// The service answered, but asking for something failed (see `notes`); what is there is
    /// right.
    Partial,
    /// The service never answered within the deadline; the boot goes on with what the image has.
    Unreachable,
    /// The platform has no metadata service (metal, QEMU, VirtualBox, Vagrant).
    #[serde(rename = "notacloud")]
    NotACloud,
}

impl Outcome {
    /// The word the record uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Partial => "partial",
            Outcome::Unreachable => "unreachable",
            Outcome::NotACloud => "notacloud",
        }
    }
}

/// Why a record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The record's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("{}: not an instance record: {why}", path.display())]
    Parse {
        /// The record's path.
        path: PathBuf,
        /// What is wrong, with the line.
        why: String,
    },
    /// The record cannot be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The record's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl InstanceRecord {
    /// A record with nothing but the platform and the outcome.
    pub fn empty(platform: &str, outcome: Outcome) -> InstanceRecord {
        InstanceRecord {
            platform: platform.to_string(),
            outcome,
            instance_id: None,
            hostname: None,
            user_data: None,
            ssh_keys: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Reads the record at `path` (without following a link there).
    pub fn read(path: impl AsRef<Path>) -> Result<InstanceRecord, RecordError> {
        let path = path.as_ref();
        let read_error = |source| RecordError::Read { path: path.to_path_buf(), source };
        let file = nofollow_open(path).map_err(read_error)?;
        let mut text = String::new();
        file.take(MAX_RECORD + 1).read_to_string(&mut text).map_err(read_error)?;
        if text.len() as u64 > MAX_RECORD {
            return Err(RecordError::Parse {
                path: path.to_path_buf(),
                why: format!("larger than {MAX_RECORD} bytes"),
            });
        }
        InstanceRecord::parse(&text).map_err(|why| RecordError::Parse { path: path.to_path_buf(), why })
    }

    /// The record in `text` (the file's format).
    pub fn parse(text: &str) -> Result<InstanceRecord, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        // Every field serialises (strings, byte strings as base64, tables of strings).
        toml::to_string(self).unwrap_or_else(|e| format!("# not serialisable: {e}\n"))
    }

    /// Writes the record to `path` whole: a temporary file in the same directory, fsync,
    /// rename; the file 0600, the directory made 0700 when absent and opened without following
    /// a link.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<(), RecordError> {
        let path = path.as_ref();
        let text = toml::to_string(self)
            .map_err(|e| RecordError::Write { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
        atomic::write(path, text.as_bytes(), 0o600, atomic::Dir::Private)
            .map_err(|source| RecordError::Write { path: path.to_path_buf(), source })
    }
}

fn nofollow_open(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::{OFlag, open};
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    Ok(std::fs::File::from(fd))
}

fn to_base64<S: Serializer>(data: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match data {
        Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
        None => s.serialize_none(),
    }
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    let text = String::deserialize(d)?;
    STANDARD.decode(text.as_bytes()).map(Some).map_err(|e| serde::de::Error::custom(format!("user_data_base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InstanceRecord {
        InstanceRecord {
            platform: "gce".into(),
            outcome: Outcome::Partial,
            instance_id: Some("4281239478129".into()),
            hostname: Some("node-1".into()),
            user_data: Some(b"hostname = \"node-1\"\n\x00\xff".to_vec()),
            ssh_keys: vec![
                SshKey { user: Some("alice".into()), key: "ssh-ed25519 AAAAC3 alice@laptop".into() },
                SshKey { user: None, key: "ssh-rsa AAAAB3 ops".into() },
            ],
            notes: vec!["project/attributes/ssh-keys: the server answered 500".into()],
        }
    }

    #[test]
    fn a_record_survives_the_round_trip_through_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metadata/instance.toml");
        sample().write_atomic(&path).unwrap();
        assert_eq!(InstanceRecord::read(&path).unwrap(), sample());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("outcome = \"partial\"\n"), "{text}");
        assert!(text.contains("user_data_base64 = \"aG9zdG5hbWUgPSAibm9kZS0xIgoA/w==\"\n"), "{text}");
        assert!(text.contains("[[ssh_keys]]\nuser = \"alice\"\n"), "{text}");

        let bare = InstanceRecord::empty("metal", Outcome::NotACloud);
        bare.write_atomic(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "platform = \"metal\"\noutcome = \"notacloud\"\nssh_keys = []\nnotes = []\n"
        );
        assert_eq!(InstanceRecord::read(&path).unwrap(), bare);
        assert_eq!(
            InstanceRecord::parse("platform = \"aws\"\noutcome = \"unreachable\"\n").unwrap().outcome,
            Outcome::Unreachable
        );
    }

    #[test]
    fn what_is_not_a_record_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("instance.toml");
        std::fs::write(&path, "platform = \"aws\"\noutcome = \"maybe\"\n").unwrap();
        let e = InstanceRecord::read(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: not an instance record: ", path.display())) && e.contains("maybe"), "{e}");
        std::fs::write(&path, "platform = \"aws\"\noutcome = \"complete\"\nuser_data_base64 = \"!!\"\n").unwrap();
        let e = InstanceRecord::read(&path).unwrap_err().to_string();
        assert!(e.contains("user_data_base64: Invalid"), "{e}");
        std::fs::write(&path, "platform = \"aws\"\noutcome = \"complete\"\nextra = 1\n").unwrap();
        assert!(InstanceRecord::read(&path).unwrap_err().to_string().contains("unknown field `extra`"));

        let link = tmp.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(InstanceRecord::read(&link), Err(RecordError::Read { .. })), "a link is not followed");
        assert!(matches!(InstanceRecord::read(tmp.path().join("none")), Err(RecordError::Read { .. })));
    }
}
