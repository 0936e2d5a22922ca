//! The firmware-independent part of bootmgr: the kernel command line and the console text of a
//! decision.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use berth_slot::{BootKind, Decision, Slot, Slots, Unbootable};

/// `<cmdline, whitespace collapsed> root=PARTUUID=<guid> berth.slot=<a|b>`.
pub fn kernel_cmdline(cmdline: &str, partuuid: &str, slot: Slot) -> String {
    let mut words: Vec<&str> = cmdline.split_whitespace().collect();
    let root = format!("root=PARTUUID={partuuid}");
    let which = format!("berth.slot={}", slot.name());
    words.push(&root);
    words.push(&which);
    words.join(" ")
}

/// One line per slot with its state, for the console.
pub fn slot_lines(slots: Slots) -> [String; 2] {
    Slot::ALL.map(|s| format!("slot {}: {}", name(s), slots.get(s)))
}

/// The decision, with why the other slot was not chosen.
pub fn decision_line(before: Slots, d: &Decision) -> String {
    let other = d.slot.other();
    let why_not = match Unbootable::of(before.get(other)) {
        Some(reason) => format!("{reason}"),
        None if before.get(other).is_eligible() => String::from("eligible, not preferred"),
        None => String::from("successful but not eligible"),
    };
    let kind = match d.kind {
        BootKind::Normal => String::from("normal"),
        BootKind::Trial { tries_left } => format!("trial, {tries_left} tries left after this boot"),
        BootKind::Fallback => String::from("fallback: no slot eligible, booting a successful slot"),
    };
    format!("-> booting {} ({kind}); slot {} not chosen: {why_not}", name(d.slot), name(other))
}

/// `A` or `B`.
pub fn name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "A",
        Slot::B => "B",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_slot::SlotAttrs;

    #[test]
    fn cmdline_is_trimmed_and_extended() {
        assert_eq!(
            kernel_cmdline("  console=ttyS0\tquiet\n", "401e59cf-92cb-4eb2-a1e8-1084cd6a2e2d", Slot::B),
            "console=ttyS0 quiet root=PARTUUID=401e59cf-92cb-4eb2-a1e8-1084cd6a2e2d berth.slot=b"
        );
        assert_eq!(kernel_cmdline("", "x", Slot::A), "root=PARTUUID=x berth.slot=a");
    }

    #[test]
    fn decision_lines_say_why() {
        let fresh = Slots::FRESH;
        let d = fresh.select().unwrap();
        assert_eq!(
            decision_line(fresh, &d),
            "-> booting A (normal); slot B not chosen: priority 0 (never boot) and never marked successful"
        );
        assert_eq!(slot_lines(fresh)[0], "slot A: priority 1, tries 0, successful");
        let trial = fresh.with(Slot::B, SlotAttrs { priority: 2, tries: 3, successful: false });
        let d = trial.select().unwrap();
        assert_eq!(
            decision_line(trial, &d),
            "-> booting B (trial, 2 tries left after this boot); slot A not chosen: eligible, not preferred"
        );
        let fallback = Slots::new(
            SlotAttrs { priority: 0, tries: 0, successful: true },
            SlotAttrs { priority: 2, tries: 0, successful: false },
        );
        let d = fallback.select().unwrap();
        assert_eq!(
            decision_line(fallback, &d),
            "-> booting A (fallback: no slot eligible, booting a successful slot); slot B not chosen: all boot \
             tries spent without being marked successful"
        );
    }
}
