//! The A/B slot contract of docs/design.md §2, defined once for every Berth binary.
//!
//! This crate owns the partition layout (labels, type GUIDs, default sizes) and the boot state
//! kept in the GPT attribute bits of `ROOT-A` and `ROOT-B` (ChromeOS layout): how it is encoded,
//! how bootmgr selects a slot, and how the update agent moves between states. It is `no_std` +
//! `alloc` so that the UEFI boot manager links the very same logic as the agent and the builder.
//!
//! - [`layout`]: partitions, labels, GUIDs, [`Slot`].
//! - [`platform`]: the platform words (`metal`, `aws`, …) and the ESP files that carry them
//!   (`berth/platform`) and the provisioning document (`berth/provision.toml`).
//! - [`cmdline`]: the booted slot from the kernel command line (`berth.slot=`, the last one).
//! - [`attrs`]: one slot's {priority, tries, successful} and its bits in the attribute word.
//! - [`Slots`]: both attribute words, kept whole so that other attribute bits survive a write.
//! - `device` (feature `std`): a disk's GPT read from a file, with the backup as fallback.
//! - [`Slots::select`]: bootmgr's choice, as a [`Decision`] (with whether the GPT must be
//!   rewritten before the kernel starts) or [`NoBootableSlot`] with the reason for each slot.
//! - [`Slots::begin_write`], [`Slots::staged`], [`Slots::mark_good`], [`Slots::rollback`],
//!   [`Slots::detect_failed_update`], [`Slots::clear`]: the agent's transitions, pure functions
//!   that refuse ([`TransitionError`]) any step that would leave no slot marked successful.
//!
//! An update from A to B, as the agent and bootmgr drive it:
//!
//! ```
//! use berth_slot::{BootKind, Slot, Slots, DEFAULT_TRIES};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = Slots::FRESH.mark_good(Slot::A)?; // first boot reached health
//! let disk = disk.begin_write(Slot::B)?; // before writing the new image
//! let disk = disk.staged(Slot::B, DEFAULT_TRIES)?; // image and kernel files written
//! let boot = disk.select()?; // bootmgr, next boot
//! assert_eq!((boot.slot, boot.kind), (Slot::B, BootKind::Trial { tries_left: 2 }));
//! assert!(boot.must_write); // write boot.slots_after to the GPT before starting the kernel
//! let disk = boot.slots_after.mark_good(Slot::B)?; // B reached health
//! assert_eq!(disk.select()?.slot, Slot::B);
//! # Ok(())
//! # }
//! ```
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod attrs;
pub mod cmdline;
#[cfg(feature = "std")]
pub mod device;
pub mod gpt;
pub mod layout;
pub mod platform;
mod select;
mod slots;
mod transition;

pub use attrs::SlotAttrs;
pub use layout::Slot;
pub use select::{BootKind, Decision, NoBootableSlot, Unbootable};
pub use slots::Slots;
pub use transition::{DEFAULT_TRIES, TransitionError};
