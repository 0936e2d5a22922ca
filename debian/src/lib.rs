//! Debian packages as the source of a Berth root filesystem.
//!
//! This crate owns everything between the host's apt configuration and files in a
//! [`berth_fstree::Tree`]: reading apt sources, fetching and verifying the signed `InRelease`,
//! parsing `Packages` indexes, resolving dependencies, downloading `.deb`s into a cache keyed by
//! SHA-256, and unpacking a `.deb`'s data archive into the tree (merged-/usr, owners, modes,
//! links and extended attributes as the tar headers say). No maintainer script ever runs.

pub mod deb;

pub mod archive;
pub use archive::{Archive, ArchiveConfig, ArchiveError, FetchedDeb, PackageRef};
