//! `berth.slot=` on the kernel command line: the slot bootmgr started, read the same way by
//! every binary (init, the update agent).
//!
//! bootmgr appends `root=PARTUUID=… berth.slot=<a|b>` after the release's own command line, so
//! the last `berth.slot=` is the one bootmgr wrote: the last one wins, as for the kernel's own
//! parameters. Words after `--` are init's arguments, not kernel parameters, and are not read.

use crate::layout::Slot;

/// The kernel parameter naming the booted slot.
pub const SLOT_PARAM: &str = "berth.slot";

/// The value of the last `berth.slot=` before `--`, as written (`None` without one).
pub fn slot_arg(cmdline: &str) -> Option<&str> {
    let mut found = None;
    for word in cmdline.split_ascii_whitespace() {
        if word == "--" {
            break;
        }
        if let Some(v) = word.strip_prefix(SLOT_PARAM).and_then(|w| w.strip_prefix('=')) {
            found = Some(v);
        }
    }
    found
}

/// The slot the last `berth.slot=` names; `None` without one or with a value that is no slot.
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    slot_arg(cmdline).and_then(Slot::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m2_the_last_berth_slot_wins_and_init_arguments_are_not_read() {
        // What bootmgr makes of a release command line that names a slot itself.
        assert_eq!(booted_slot("console=ttyS0 berth.slot=a root=PARTUUID=x berth.slot=b"), Some(Slot::B));
        assert_eq!(booted_slot("berth.slot=a -- berth.slot=b"), Some(Slot::A));
        assert_eq!(booted_slot("-- berth.slot=b"), None);
        assert_eq!(booted_slot("quiet"), None);
        assert_eq!(slot_arg("berth.slot=c"), Some("c"));
        assert_eq!(booted_slot("berth.slot=c"), None);
        assert_eq!(slot_arg("berth.slot=a berth.slotx=c\tberth.slot=b\n"), Some("b"));
    }
}
