//! The A/B slot contract of DESIGN.md §2, defined once for every Berth binary.
//!
//! This crate owns the partition layout (labels, type GUIDs, default sizes) and the boot state
//! kept in the GPT attribute bits of `ROOT-A` and `ROOT-B` (ChromeOS layout): how it is encoded,
//! how bootmgr selects a slot, and how the update agent moves between states. It is `no_std` +
//! `alloc` so that the UEFI boot manager links the very same logic as the agent and the builder.
#![no_std]

extern crate alloc;

pub mod attrs;
pub mod layout;

pub use attrs::SlotAttrs;
pub use layout::Slot;
