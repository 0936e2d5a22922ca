//! The clouds' APIs as the build host speaks them (docs/design.md §8, issue 19): credentials and
//! request signing, and the flows of `berth upload`, each from a built artifact to a bootable
//! cloud image:
//!
//! - [`aws`]: the raw disk as an EBS snapshot (EBS direct APIs: 512 KiB blocks, zero blocks
//!   skipped, SHA-256 checksums, a linear aggregate), then an AMI (EC2 `RegisterImage`: x86_64,
//!   UEFI, ENA, IMDSv2 required), signed with SigV4, credentials found as the AWS CLI finds them;
//! - [`gce`]: the image tarball into a GCS bucket (resumable upload, CRC32C checked), then a
//!   Compute Engine image (`images.insert`, UEFI, gVNIC, multi-queue SCSI), with a
//!   service-account key or an access token;
//! - [`azure`]: the fixed VHD into a page blob (Put Page ≤ 4 MiB, zero ranges skipped), Shared
//!   Key or SAS, then a Generation 2 managed image through Azure Resource Manager.
//!
//! What the three share lives here: one error type naming the call, URL and credential source
//! ([`Error`]); requests sent through `berth-http` with one retry policy for 408, 429, 5xx and
//! dropped connections ([`api`]); a file's data found without reading its holes ([`blocks`]);
//! work spread over threads ([`parallel`]); and progress reported to the caller ([`Progress`]).
//!
//! Every flow is idempotent: run again after an interruption it finishes the upload and finds
//! the image it registered, never registering a second.

#![warn(missing_docs)]

pub mod api;
pub mod aws;
pub mod azure;
pub mod blocks;
mod error;
pub mod gce;
pub mod parallel;
pub mod percent;
mod progress;
pub mod time;

pub use error::Error;
pub use progress::{Progress, Silent};
