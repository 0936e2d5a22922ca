//! Slot selection: what bootmgr decides on every boot (docs/design.md §2, "Selection").

use core::fmt;

use crate::attrs::SlotAttrs;
use crate::layout::Slot;
use crate::slots::Slots;

/// How the chosen slot is booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootKind {
    /// The highest-priority eligible slot is marked successful: an ordinary boot, nothing to
    /// write.
    Normal,
    /// The highest-priority eligible slot has not booted to health yet: this boot spends one of
    /// its tries. `tries_left` is what remains after this boot.
    Trial {
        /// Tries left once this boot's try has been recorded.
        tries_left: u8,
    },
    /// No slot is eligible, but this one is marked successful (its priority is 0): booted anyway
    /// so that the machine never bricks. Nothing is written; the agent repairs the priorities
    /// when it marks the slot good.
    Fallback,
}

/// A slot to boot, and the attribute words that must be on disk before its kernel starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The slot to boot.
    pub slot: Slot,
    /// Why this slot, and whether the boot is a trial.
    pub kind: BootKind,
    /// Both slots' attribute words after this boot. Equal to the input unless `must_write`.
    pub slots_after: Slots,
    /// The GPT must be rewritten with `slots_after` (backup copy first, then primary) *before*
    /// the kernel starts: otherwise a kernel that crashes would not spend its try and the
    /// machine would retry the bad slot forever. If the write fails, do not boot a trial.
    pub must_write: bool,
}

impl Decision {
    /// The chosen slot's boot state after this boot.
    pub const fn attrs_after(&self) -> SlotAttrs {
        self.slots_after.get(self.slot)
    }

    /// Whether this boot is a fallback to a successful but ineligible slot.
    pub const fn is_fallback(&self) -> bool {
        matches!(self.kind, BootKind::Fallback)
    }
}

/// Why one slot cannot be booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unbootable {
    /// Priority 0 ("never boot") and not marked successful: empty, being written, or cleared.
    NeverBoot,
    /// Priority above 0 but every try was spent without the slot being marked successful.
    TriesSpent,
}

impl Unbootable {
    /// Why `attrs` cannot be booted, or `None` if it can (eligible, or successful for the
    /// fallback).
    pub const fn of(attrs: SlotAttrs) -> Option<Unbootable> {
        if attrs.is_eligible() || attrs.successful {
            None
        } else if attrs.priority == 0 {
            Some(Unbootable::NeverBoot)
        } else {
            Some(Unbootable::TriesSpent)
        }
    }
}

impl fmt::Display for Unbootable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unbootable::NeverBoot => "priority 0 (never boot) and never marked successful",
            Unbootable::TriesSpent => "all boot tries spent without being marked successful",
        })
    }
}

/// Neither slot can be booted; bootmgr prints this on the console and retries after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NoBootableSlot {
    /// Indexed A, then B; read through [`NoBootableSlot::reason`].
    reasons: [Unbootable; 2],
}

impl NoBootableSlot {
    /// Why `slot` cannot be booted.
    pub const fn reason(&self, slot: Slot) -> Unbootable {
        match slot {
            Slot::A => self.reasons[0],
            Slot::B => self.reasons[1],
        }
    }
}

impl fmt::Display for NoBootableSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no bootable slot: {}: {}; {}: {}",
            Slot::A.label(),
            self.reason(Slot::A),
            Slot::B.label(),
            self.reason(Slot::B)
        )
    }
}

impl core::error::Error for NoBootableSlot {}

impl Slots {
    /// Chooses the slot to boot (docs/design.md §2).
    ///
    /// Eligible slots have priority > 0 and (successful or tries > 0); the highest priority wins
    /// and a tie goes to A. A winner that is not yet successful is booted as a
    /// [`BootKind::Trial`] with one try spent, and the result says the GPT must be rewritten.
    /// With no eligible slot, a successful slot is booted as a [`BootKind::Fallback`] (higher
    /// priority first, then A). Only when neither slot is eligible nor successful is there
    /// nothing to boot; the error says why for each slot. Never panics.
    pub fn select(self) -> Result<Decision, NoBootableSlot> {
        let (a, b) = (self.get(Slot::A), self.get(Slot::B));
        if let Some(slot) = preferred(a, b, SlotAttrs::is_eligible) {
            let attrs = self.get(slot);
            if attrs.successful {
                return Ok(Decision { slot, kind: BootKind::Normal, slots_after: self, must_write: false });
            }
            // Eligible and not successful implies tries > 0, so this cannot underflow; saturate
            // anyway so a future change to eligibility cannot turn into a panic in firmware.
            let tries_left = attrs.tries.saturating_sub(1);
            return Ok(Decision {
                slot,
                kind: BootKind::Trial { tries_left },
                slots_after: self.with(slot, SlotAttrs { tries: tries_left, ..attrs }),
                must_write: true,
            });
        }
        if let Some(slot) = preferred(a, b, |s| s.successful) {
            return Ok(Decision { slot, kind: BootKind::Fallback, slots_after: self, must_write: false });
        }
        Err(NoBootableSlot {
            // Both are neither eligible nor successful here, so `of` names a reason; the
            // `TriesSpent` default only keeps this total.
            reasons: [
                Unbootable::of(a).unwrap_or(Unbootable::TriesSpent),
                Unbootable::of(b).unwrap_or(Unbootable::TriesSpent),
            ],
        })
    }
}

impl Slots {
    /// What to boot when the GPT cannot be written (a trial's spent try cannot be recorded):
    /// never a trial, since a kernel that crashed would retry it forever, but a slot marked
    /// successful, as [`BootKind::Normal`] if it is eligible and [`BootKind::Fallback`]
    /// otherwise, with nothing to write. Neither slot successful: nothing to boot.
    pub fn select_without_writing(self) -> Result<Decision, NoBootableSlot> {
        let (a, b) = (self.get(Slot::A), self.get(Slot::B));
        let Some(slot) = preferred(a, b, |s| s.successful) else {
            let why = |s: SlotAttrs| if s.priority == 0 { Unbootable::NeverBoot } else { Unbootable::TriesSpent };
            return Err(NoBootableSlot { reasons: [why(a), why(b)] });
        };
        let kind = if self.get(slot).is_eligible() { BootKind::Normal } else { BootKind::Fallback };
        Ok(Decision { slot, kind, slots_after: self, must_write: false })
    }
}

/// Among the slots that pass `accept`, the one with the higher priority; a tie goes to A.
fn preferred(a: SlotAttrs, b: SlotAttrs, accept: fn(SlotAttrs) -> bool) -> Option<Slot> {
    match (accept(a), accept(b)) {
        (true, true) if b.priority > a.priority => Some(Slot::B),
        (true, _) => Some(Slot::A),
        (false, true) => Some(Slot::B),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const fn at(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
        SlotAttrs { priority, tries, successful }
    }

    fn pick(a: SlotAttrs, b: SlotAttrs) -> Result<Decision, NoBootableSlot> {
        Slots::new(a, b).select()
    }

    #[test]
    fn fresh_image_boots_a_without_writing() {
        let d = Slots::FRESH.select();
        assert_eq!(
            d,
            Ok(Decision { slot: Slot::A, kind: BootKind::Normal, slots_after: Slots::FRESH, must_write: false })
        );
    }

    #[test]
    fn highest_priority_wins() {
        assert_eq!(pick(at(1, 0, true), at(2, 0, true)).map(|d| d.slot), Ok(Slot::B));
        assert_eq!(pick(at(3, 0, true), at(2, 0, true)).map(|d| d.slot), Ok(Slot::A));
    }

    #[test]
    fn without_writing_boots_the_successful_slot_never_a_trial() {
        let d = Slots::new(at(1, 0, true), at(2, 3, false)).select_without_writing().unwrap();
        assert_eq!((d.slot, d.kind, d.must_write), (Slot::A, BootKind::Normal, false));
        let d = Slots::new(at(0, 0, true), at(2, 3, false)).select_without_writing().unwrap();
        assert_eq!((d.slot, d.kind), (Slot::A, BootKind::Fallback));
        assert!(Slots::new(at(0, 0, false), at(2, 3, false)).select_without_writing().is_err());
    }

    #[test]
    fn tie_goes_to_a() {
        assert_eq!(pick(at(2, 0, true), at(2, 0, true)).map(|d| d.slot), Ok(Slot::A));
        assert_eq!(pick(at(2, 1, false), at(2, 5, false)).map(|d| d.slot), Ok(Slot::A));
    }

    #[test]
    fn ineligible_higher_priority_loses() {
        // B has the higher priority but no tries and no success: A must win.
        assert_eq!(pick(at(1, 0, true), at(2, 0, false)).map(|d| d.slot), Ok(Slot::A));
        // Priority 0 never boots normally, even with tries.
        assert_eq!(pick(at(1, 0, true), at(0, 5, false)).map(|d| d.slot), Ok(Slot::A));
    }

    #[test]
    fn trial_spends_one_try_and_must_write() {
        let before = Slots::from_raw(0xABCD | SlotAttrs::FRESH_ACTIVE.apply_to(0), 0x10).with(Slot::B, at(2, 3, false));
        let d = before.select();
        let Ok(d) = d else { panic!("expected a decision, got {d:?}") };
        assert_eq!(d.slot, Slot::B);
        assert_eq!(d.kind, BootKind::Trial { tries_left: 2 });
        assert!(d.must_write);
        assert!(!d.is_fallback());
        assert_eq!(d.attrs_after(), at(2, 2, false));
        // A and every non-slot bit are untouched.
        assert_eq!(d.slots_after.raw(Slot::A), before.raw(Slot::A));
        assert_eq!(d.slots_after.raw(Slot::B) & !crate::attrs::SLOT_BITS_MASK, 0x10);
    }

    #[test]
    fn last_try_goes_to_zero() {
        let d = pick(at(1, 0, true), at(2, 1, false));
        assert_eq!(
            d.map(|d| (d.slot, d.kind, d.attrs_after())),
            Ok((Slot::B, BootKind::Trial { tries_left: 0 }, at(2, 0, false)))
        );
    }

    #[test]
    fn successful_slot_with_tries_is_not_decremented() {
        let d = pick(at(2, 4, true), at(1, 0, true));
        assert_eq!(
            d.map(|d| (d.slot, d.kind, d.must_write, d.attrs_after())),
            Ok((Slot::A, BootKind::Normal, false, at(2, 4, true)))
        );
    }

    #[test]
    fn fallback_boots_a_successful_slot() {
        // Nothing eligible; B is successful (priority 0), A has spent its tries.
        let d = pick(at(2, 0, false), at(0, 0, true));
        let Ok(d) = d else { panic!("expected a fallback, got {d:?}") };
        assert_eq!((d.slot, d.kind, d.must_write), (Slot::B, BootKind::Fallback, false));
        assert!(d.is_fallback());
        assert_eq!(d.slots_after, Slots::new(at(2, 0, false), at(0, 0, true)));
        // Both successful at priority 0: tie goes to A.
        assert_eq!(pick(at(0, 0, true), at(0, 0, true)).map(|d| (d.slot, d.kind)), Ok((Slot::A, BootKind::Fallback)));
    }

    #[test]
    fn nothing_bootable_says_why() {
        let e = pick(at(0, 3, false), at(2, 0, false));
        let Err(e) = e else { panic!("expected no bootable slot, got {e:?}") };
        assert_eq!(e.reason(Slot::A), Unbootable::NeverBoot);
        assert_eq!(e.reason(Slot::B), Unbootable::TriesSpent);
        assert_eq!(
            e.to_string(),
            "no bootable slot: ROOT-A: priority 0 (never boot) and never marked successful; \
             ROOT-B: all boot tries spent without being marked successful"
        );
    }

    #[test]
    fn unbootable_of() {
        assert_eq!(Unbootable::of(at(1, 0, true)), None);
        assert_eq!(Unbootable::of(at(0, 0, true)), None);
        assert_eq!(Unbootable::of(at(1, 1, false)), None);
        assert_eq!(Unbootable::of(at(0, 1, false)), Some(Unbootable::NeverBoot));
        assert_eq!(Unbootable::of(at(15, 0, false)), Some(Unbootable::TriesSpent));
    }
}
