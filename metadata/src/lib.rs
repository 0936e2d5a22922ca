//! Berth's cloud metadata client (docs/design.md §8, issue 18), run once per boot as
//! `berth-metadata.service`, a oneshot ordered before provisioning, as Afterburn is: PID 1 parses
//! no packet from the network.
//!
//! - [`platform`]: which platform this machine is (the ESP's `berth/platform` word, else SMBIOS,
//!   else `metal`), and the run file PID 1 leaves the answer in;
//! - [`record`]: the instance record (`/run/berth/metadata/instance.toml`): what the metadata
//!   service said (instance id, hostname, user data, SSH keys) and how complete it is. PID 1
//!   reads it and maps it onto the provisioning document;
//! - [`provider`] (feature `providers`): one trait, [`provider::Provider`], and the clouds:
//!   [`aws`] (IMDSv2 only), [`gce`] (the metadata server), [`azure`] (IMDS and the provisioning
//!   CD), each with bounded retries and an overall deadline;
//! - [`azure::wireserver`] (feature `providers`): Azure's ready report, once per instance.
//!
//! PID 1 depends on this crate without the default feature `providers`, so it gets the record
//! and detection and no HTTP client.

#![warn(missing_docs)]

mod atomic;
pub mod platform;
pub mod record;

#[cfg(feature = "providers")]
pub mod aws;
#[cfg(feature = "providers")]
pub mod azure;
#[cfg(feature = "providers")]
pub mod gce;
#[cfg(feature = "providers")]
pub mod provider;
#[cfg(feature = "providers")]
mod session;
#[cfg(feature = "providers")]
mod xml;

pub use platform::{Detected, How, PLATFORM_RUN_FILE, detect};
pub use record::{InstanceRecord, Outcome, RECORD_PATH, RecordError, SshKey};
