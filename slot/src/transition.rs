//! Slot transitions: what the update agent writes (docs/design.md §2, "Transitions").
//!
//! Each transition is a pure function from the current [`Slots`] to the next; the agent writes
//! the result to the GPT before the step that depends on it. The functions refuse, with a
//! [`TransitionError`] and nothing changed, any step that could leave the disk without a slot
//! that is marked successful, so that a machine which had a good slot keeps one whatever order
//! the agent (or an operator) calls them in.

use core::fmt;

use crate::attrs::{MAX_NIBBLE, SlotAttrs};
use crate::layout::Slot;
use crate::select::BootKind;
use crate::slots::Slots;

/// Trial boots a staged slot gets unless the configuration says otherwise.
pub const DEFAULT_TRIES: u8 = 3;

/// Priority of the slot that should boot next.
const PRIORITY_PREFERRED: u8 = 2;
/// Priority of the fallback slot.
const PRIORITY_FALLBACK: u8 = 1;

/// Why a transition was refused. The state is unchanged when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionError {
    /// Clearing or staging the other slot would leave only `active`, which is not marked
    /// successful: mark it good first.
    ActiveNotSuccessful {
        /// The slot that would be the only one left.
        active: Slot,
    },
    /// `staged` on a slot that could still be booted (eligible or successful): call
    /// `begin_write` before writing a new image into it.
    PassiveNotCleared {
        /// The slot that was to be staged.
        passive: Slot,
    },
    /// `staged` with a try count outside `1..=15` (0 would never try the slot; the field has
    /// 4 bits).
    InvalidTries {
        /// The count given.
        tries: u8,
    },
    /// Manual rollback to a slot that has never booted to health.
    RollbackTargetNotSuccessful {
        /// The slot asked for.
        target: Slot,
    },
    /// `mark_good` after an update was staged in this boot: demoting the other slot would
    /// cancel that update. The booted slot is already marked successful, so nothing is lost.
    UpdatePending {
        /// The slot holding the staged update.
        pending: Slot,
    },
}

impl fmt::Display for TransitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TransitionError::ActiveNotSuccessful { active } => write!(
                f,
                "{} is not marked successful; it would be the only slot left, so mark it good first",
                active.label()
            ),
            TransitionError::PassiveNotCleared { passive } => {
                write!(f, "{} can still be booted; clear it before writing a new image into it", passive.label())
            }
            TransitionError::InvalidTries { tries } => {
                write!(f, "tries must be between 1 and {MAX_NIBBLE}, not {tries}")
            }
            TransitionError::RollbackTargetNotSuccessful { target } => {
                write!(f, "cannot roll back to {}: it has never booted successfully", target.label())
            }
            TransitionError::UpdatePending { pending } => write!(
                f,
                "{} holds a staged update awaiting its trial boot; marking the booted slot good \
                 now would cancel it",
                pending.label()
            ),
        }
    }
}

impl core::error::Error for TransitionError {}

impl Slots {
    /// Before the first byte of a new image is written into `passive`: `passive` becomes
    /// {0, 0, 0}, so that a half-written slot can never be booted, not even as a fallback; the
    /// active slot is unchanged.
    ///
    /// Refused with [`TransitionError::ActiveNotSuccessful`] unless the other slot is marked
    /// successful, since it is then the only bootable slot.
    pub fn begin_write(self, passive: Slot) -> Result<Slots, TransitionError> {
        self.clear(passive)
    }

    /// The image, its verification and the kernel files of `passive` are done: `passive`
    /// becomes {2, `tries`, 0} and the active slot gets priority 1 (tries and successful bit
    /// kept), so the next boot tries `passive` up to `tries` times and then falls back.
    ///
    /// Refused unless `tries` is in `1..=15` ([`DEFAULT_TRIES`] is the usual value), the other
    /// slot is marked successful (it is the fallback), and `passive` cannot be booted in its
    /// current state (that is, [`Slots::begin_write`] came first).
    pub fn staged(self, passive: Slot, tries: u8) -> Result<Slots, TransitionError> {
        if tries == 0 || tries > MAX_NIBBLE {
            return Err(TransitionError::InvalidTries { tries });
        }
        let p = self.get(passive);
        if p.is_eligible() || p.successful {
            return Err(TransitionError::PassiveNotCleared { passive });
        }
        let active = passive.other();
        let a = self.get(active);
        if !a.successful {
            return Err(TransitionError::ActiveNotSuccessful { active });
        }
        Ok(self
            .with(passive, SlotAttrs { priority: PRIORITY_PREFERRED, tries, successful: false })
            .with(active, SlotAttrs { priority: PRIORITY_FALLBACK, ..a }))
    }

    /// The running slot `booted` reached health: it becomes {2, 0, 1}; the other slot's priority
    /// drops to 1 (its tries and successful bit kept) so that `booted` outranks it.
    ///
    /// A slot at priority 0 stays at 0: it is empty, being written or cleared, and raising it
    /// would undo [`Slots::begin_write`] or make a cleared failed update look like a new failure
    /// to [`Slots::detect_failed_update`].
    ///
    /// Refused with [`TransitionError::UpdatePending`] when `booted` is already successful and
    /// the other slot would be tried on the next boot (an update staged since this boot): marking
    /// good again would cancel the update.
    pub fn mark_good(self, booted: Slot) -> Result<Slots, TransitionError> {
        let other = booted.other();
        if self.get(booted).successful
            && let Ok(d) = self.select()
            && d.slot == other
            && matches!(d.kind, BootKind::Trial { .. })
        {
            return Err(TransitionError::UpdatePending { pending: other });
        }
        let o = self.get(other);
        Ok(self
            .with(booted, SlotAttrs { priority: PRIORITY_PREFERRED, tries: 0, successful: true })
            .with(other, SlotAttrs { priority: o.priority.min(PRIORITY_FALLBACK), ..o }))
    }

    /// Manual rollback: `to` (normally the passive slot) gets priority 2 and the other slot
    /// priority 1; tries and successful bits are kept.
    ///
    /// Refused with [`TransitionError::RollbackTargetNotSuccessful`] unless `to` is marked
    /// successful: only a slot known to boot may be preferred without a trial.
    pub fn rollback(self, to: Slot) -> Result<Slots, TransitionError> {
        let t = self.get(to);
        if !t.successful {
            return Err(TransitionError::RollbackTargetNotSuccessful { target: to });
        }
        let other = to.other();
        let o = self.get(other);
        Ok(self
            .with(to, SlotAttrs { priority: PRIORITY_PREFERRED, ..t })
            .with(other, SlotAttrs { priority: PRIORITY_FALLBACK, ..o }))
    }

    /// After a boot, the slot whose update failed, if any: the slot other than `booted` was
    /// staged (priority > 0), spent all its tries and was never marked successful, so bootmgr
    /// fell back to `booted`. The agent records the rollback, does not offer that version again
    /// unless told to, and calls [`Slots::clear`] on the returned slot.
    pub fn detect_failed_update(self, booted: Slot) -> Option<Slot> {
        let other = booted.other();
        let o = self.get(other);
        (o.priority > 0 && o.tries == 0 && !o.successful).then_some(other)
    }

    /// Clears `slot` to {0, 0, 0} (after a failed update, or to retire it); the other slot is
    /// unchanged.
    ///
    /// Refused with [`TransitionError::ActiveNotSuccessful`] unless the other slot is marked
    /// successful, since it is then the only bootable slot.
    pub fn clear(self, slot: Slot) -> Result<Slots, TransitionError> {
        let active = slot.other();
        if !self.get(active).successful {
            return Err(TransitionError::ActiveNotSuccessful { active });
        }
        Ok(self.with(slot, SlotAttrs::EMPTY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::SLOT_BITS_MASK;
    use alloc::string::ToString;

    const fn at(priority: u8, tries: u8, successful: bool) -> SlotAttrs {
        SlotAttrs { priority, tries, successful }
    }

    /// Slots with distinct non-slot bits in each word, to catch anything that clobbers them.
    fn slots(a: SlotAttrs, b: SlotAttrs) -> Slots {
        Slots::from_raw(a.apply_to(0x0000_0000_0000_00A1), b.apply_to(0x8000_0000_0000_00B2))
    }

    fn assert_other_bits_kept(before: Slots, after: Slots) {
        for s in Slot::ALL {
            assert_eq!(after.raw(s) & !SLOT_BITS_MASK, before.raw(s) & !SLOT_BITS_MASK, "slot {s:?}");
        }
    }

    #[test]
    fn begin_write_empties_passive_only() {
        let before = slots(at(2, 0, true), at(1, 0, true));
        let after = before.begin_write(Slot::B);
        assert_eq!(after, Ok(before.with(Slot::B, SlotAttrs::EMPTY)));
        let after = after.unwrap_or(before);
        assert_eq!(after.get(Slot::A), at(2, 0, true));
        assert_eq!(after.get(Slot::B), SlotAttrs::EMPTY);
        assert_other_bits_kept(before, after);
    }

    #[test]
    fn begin_write_refuses_to_leave_only_an_unproven_slot() {
        // Running B on trial: clearing A would leave nothing known to boot.
        let s = slots(at(1, 0, true), at(2, 2, false));
        assert_eq!(s.begin_write(Slot::A), Err(TransitionError::ActiveNotSuccessful { active: Slot::B }));
    }

    #[test]
    fn staged_sets_passive_trial_and_demotes_active() {
        let before = slots(at(2, 0, true), SlotAttrs::EMPTY);
        let after = before.staged(Slot::B, DEFAULT_TRIES);
        let Ok(after) = after else { panic!("{after:?}") };
        assert_eq!(after.get(Slot::B), at(2, 3, false));
        assert_eq!(after.get(Slot::A), at(1, 0, true));
        assert_other_bits_kept(before, after);
        // And bootmgr tries B next.
        assert_eq!(after.select().map(|d| (d.slot, d.kind)), Ok((Slot::B, BootKind::Trial { tries_left: 2 })));
    }

    #[test]
    fn staged_takes_custom_tries_and_works_for_a() {
        let s = slots(SlotAttrs::EMPTY, at(2, 0, true)).staged(Slot::A, 7);
        assert_eq!(s.map(|s| (s.get(Slot::A), s.get(Slot::B))), Ok((at(2, 7, false), at(1, 0, true))));
    }

    #[test]
    fn staged_rejects_bad_tries() {
        let s = slots(at(2, 0, true), SlotAttrs::EMPTY);
        assert_eq!(s.staged(Slot::B, 0), Err(TransitionError::InvalidTries { tries: 0 }));
        assert_eq!(s.staged(Slot::B, 16), Err(TransitionError::InvalidTries { tries: 16 }));
        assert!(s.staged(Slot::B, 15).is_ok());
    }

    #[test]
    fn staged_requires_begin_write() {
        // Passive still successful (old image) or still staged: must be cleared first.
        let s = slots(at(2, 0, true), at(1, 0, true));
        assert_eq!(s.staged(Slot::B, 3), Err(TransitionError::PassiveNotCleared { passive: Slot::B }));
        let s = slots(at(1, 0, true), at(2, 2, false));
        assert_eq!(s.staged(Slot::B, 3), Err(TransitionError::PassiveNotCleared { passive: Slot::B }));
        // A failed update (tries spent) cannot boot, so it may be overwritten directly.
        let s = slots(at(1, 0, true), at(2, 0, false));
        assert!(s.staged(Slot::B, 3).is_ok());
    }

    #[test]
    fn staged_requires_successful_active() {
        let s = slots(at(1, 2, false), SlotAttrs::EMPTY);
        assert_eq!(s.staged(Slot::B, 3), Err(TransitionError::ActiveNotSuccessful { active: Slot::A }));
    }

    #[test]
    fn mark_good_promotes_booted_and_demotes_other() {
        // B booted on trial after an update.
        let before = slots(at(1, 0, true), at(2, 2, false));
        let after = before.mark_good(Slot::B);
        let Ok(after) = after else { panic!("{after:?}") };
        assert_eq!(after.get(Slot::B), at(2, 0, true));
        assert_eq!(after.get(Slot::A), at(1, 0, true));
        assert_other_bits_kept(before, after);
    }

    #[test]
    fn mark_good_keeps_other_successful_bit_and_tries() {
        let after = slots(at(3, 0, false), at(2, 4, true)).mark_good(Slot::B);
        assert_eq!(after.map(|s| s.get(Slot::A)), Ok(at(1, 0, false)));
        let after = slots(at(2, 0, true), at(5, 0, true)).mark_good(Slot::A);
        assert_eq!(after.map(|s| s.get(Slot::B)), Ok(at(1, 0, true)));
    }

    #[test]
    fn mark_good_leaves_priority_zero_alone() {
        // Fresh image, first boot: B stays empty and is not mistaken for a failed update later.
        let after = Slots::FRESH.mark_good(Slot::A);
        let Ok(after) = after else { panic!("{after:?}") };
        assert_eq!(after.get(Slot::A), at(2, 0, true));
        assert_eq!(after.get(Slot::B), SlotAttrs::EMPTY);
        assert_eq!(after.detect_failed_update(Slot::A), None);
    }

    #[test]
    fn mark_good_does_not_cancel_a_staged_update() {
        let staged = slots(at(1, 0, true), at(2, 3, false));
        assert_eq!(staged.mark_good(Slot::A), Err(TransitionError::UpdatePending { pending: Slot::B }));
        // But marking the trial slot itself good is the normal path.
        assert!(staged.mark_good(Slot::B).is_ok());
        // A lower-priority slot with tries left (rolled back mid-trial) is not pending.
        let rolled_back = slots(at(2, 0, true), at(1, 2, false));
        assert_eq!(rolled_back.mark_good(Slot::A).map(|s| s.get(Slot::B)), Ok(at(1, 2, false)));
    }

    #[test]
    fn rollback_swaps_priorities() {
        let before = slots(at(1, 0, true), at(2, 0, true));
        let after = before.rollback(Slot::A);
        let Ok(after) = after else { panic!("{after:?}") };
        assert_eq!(after.get(Slot::A), at(2, 0, true));
        assert_eq!(after.get(Slot::B), at(1, 0, true));
        assert_other_bits_kept(before, after);
        assert_eq!(after.select().map(|d| (d.slot, d.kind)), Ok((Slot::A, BootKind::Normal)));
    }

    #[test]
    fn rollback_requires_successful_target() {
        let s = slots(at(2, 0, true), at(1, 3, false));
        assert_eq!(s.rollback(Slot::B), Err(TransitionError::RollbackTargetNotSuccessful { target: Slot::B }));
        assert_eq!(
            Slots::FRESH.rollback(Slot::B),
            Err(TransitionError::RollbackTargetNotSuccessful { target: Slot::B })
        );
    }

    #[test]
    fn detect_failed_update_after_fallback() {
        // B was staged, spent its tries, bootmgr fell back to A.
        let s = slots(at(1, 0, true), at(2, 0, false));
        assert_eq!(s.select().map(|d| d.slot), Ok(Slot::A));
        assert_eq!(s.detect_failed_update(Slot::A), Some(Slot::B));
        // Still detected if A was marked good before the agent looked.
        let s = s.mark_good(Slot::A).unwrap_or(s);
        assert_eq!(s.get(Slot::B), at(1, 0, false));
        assert_eq!(s.detect_failed_update(Slot::A), Some(Slot::B));
        // Once cleared it is gone.
        let s = s.clear(Slot::B).unwrap_or(s);
        assert_eq!(s.get(Slot::B), SlotAttrs::EMPTY);
        assert_eq!(s.detect_failed_update(Slot::A), None);
    }

    #[test]
    fn detect_failed_update_ignores_healthy_states() {
        // Pending trial, successful other, empty other, and the booted slot itself.
        assert_eq!(slots(at(1, 0, true), at(2, 2, false)).detect_failed_update(Slot::A), None);
        assert_eq!(slots(at(1, 0, true), at(2, 0, true)).detect_failed_update(Slot::A), None);
        assert_eq!(Slots::FRESH.detect_failed_update(Slot::A), None);
        assert_eq!(slots(at(2, 0, false), at(1, 0, true)).detect_failed_update(Slot::A), None);
    }

    #[test]
    fn clear_guards_the_last_good_slot() {
        assert_eq!(Slots::FRESH.clear(Slot::A), Err(TransitionError::ActiveNotSuccessful { active: Slot::B }));
        let before = slots(at(1, 0, true), at(2, 0, false));
        assert_eq!(before.clear(Slot::B).map(|s| s.get(Slot::B)), Ok(SlotAttrs::EMPTY));
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            TransitionError::RollbackTargetNotSuccessful { target: Slot::B }.to_string(),
            "cannot roll back to ROOT-B: it has never booted successfully"
        );
        assert_eq!(TransitionError::InvalidTries { tries: 0 }.to_string(), "tries must be between 1 and 15, not 0");
        assert!(TransitionError::ActiveNotSuccessful { active: Slot::A }.to_string().starts_with("ROOT-A "));
        assert!(TransitionError::PassiveNotCleared { passive: Slot::B }.to_string().starts_with("ROOT-B "));
        assert!(TransitionError::UpdatePending { pending: Slot::A }.to_string().starts_with("ROOT-A "));
    }
}
