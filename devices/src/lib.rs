//! Berth's device handling (docs/design.md §3, §8), what udev and kmod would do on another
//! system, reduced to what a Berth host needs:
//! - [`alias`]: `modules.alias` and kmod's `modalias` matching;
//! - [`modules`]: `modules.dep` closures and loading with `finit_module(2)`, shared with stage 1
//!   of `berth-init` (the one loader of both);
//! - [`coldplug`]: the modules of the devices present, rescanning until a bus reveals no more;
//! - [`uevent`]: kernel uevents from the `NETLINK_KOBJECT_UEVENT` socket;
//! - [`links`]: `/dev/disk/by-partuuid` and `/dev/disk/by-label`;
//! - [`input`]: finding input devices with a power key and reading their events.
//!
//! The daemon `berth-devd` (src/main.rs) puts them together as a unit of the root.

#![warn(missing_docs)]

pub mod alias;
pub mod coldplug;
pub mod input;
pub mod links;
pub mod modules;
pub mod uevent;
