//! The release contract of docs/design.md §4, defined once for `berth publish` and `berth-update`.
//!
//! A release repository is a tree of static files:
//!
//! ```text
//! keys/<N>.json                  key set N: the signing keys, signed by the root keys
//! channels/<channel>.json        the index (Index): releases, sequence, expiry
//! channels/<channel>.json.sig    detached ed25519 signatures over the index's exact bytes
//! releases/<version>/…           root.img.zst, vmlinuz, initrd.img
//! ```
//!
//! This crate owns:
//! - [`repo`]: where each file of a repository lives;
//! - [`index`]: the index schema and its checked parser (never panics on any input);
//! - [`signature`]: the signature file, signing, and threshold verification against trusted keys;
//! - [`keyset`]: key sets, the root keys' document naming the signing keys, and the walk along them;
//! - [`accept`]: everything an agent checks before it believes an index (signatures, expiry,
//!   sequence), in that order;
//! - [`artifact`]: the size and SHA-256 check of a downloaded artifact, fed as bytes arrive;
//! - [`rollout`]: a host's position in a staged rollout;
//! - [`config`]: `update.toml`, the agent's configuration (and the boot health deadline);
//! - [`fleet`]: the fleet's wire contract: FleetLock requests and errors, host reports, host ids;
//! - [`time`]: the RFC 3339 timestamps and durations the index and configuration use.

#![warn(missing_docs)]

pub mod accept;
pub mod artifact;
pub mod config;
pub mod fleet;
mod hex;
pub mod index;
pub mod keyset;
pub mod repo;
pub mod rollout;
pub mod signature;
pub mod time;

pub use accept::{Floor, Rejected, accept};
pub use artifact::{ArtifactCheck, ArtifactError};
pub use config::{Strategy, UpdateConfig};
pub use hex::{decode_hex, encode_hex};
pub use index::{Artifact, Index, IndexError, Release, Rollout};
pub use signature::{SignatureError, Signatures, TrustedKeys};
pub use time::Timestamp;
