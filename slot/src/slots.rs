//! Both slots' attribute words, read from and written back to the GPT together.

use core::fmt;

use crate::attrs::SlotAttrs;
use crate::layout::Slot;

/// The GPT attribute words of `ROOT-A` and `ROOT-B`.
///
/// The whole 64-bit words are kept, not just the decoded [`SlotAttrs`], so that writing a new
/// state back changes only the slot bits and leaves every other attribute bit as it was
/// (docs/design.md §2). Selection and transitions are pure functions from one `Slots` to the next; the
/// caller reads the words from the partition entries and writes [`Slots::raw`] back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slots {
    /// Indexed by [`index`]: A, then B.
    raw: [u64; 2],
}

/// Array index of a slot; a function rather than `as usize` so the order is stated once.
const fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Slots {
    /// A fresh image: A = [`SlotAttrs::FRESH_ACTIVE`], B = [`SlotAttrs::EMPTY`], no other bits set.
    pub const FRESH: Slots = Slots::new(SlotAttrs::FRESH_ACTIVE, SlotAttrs::EMPTY);

    /// Both slots from decoded attributes, every other attribute bit zero (what the image builder
    /// writes).
    pub const fn new(a: SlotAttrs, b: SlotAttrs) -> Slots {
        Slots { raw: [a.apply_to(0), b.apply_to(0)] }
    }

    /// Both slots from the attribute words of the `ROOT-A` and `ROOT-B` partition entries.
    pub const fn from_raw(raw_a: u64, raw_b: u64) -> Slots {
        Slots { raw: [raw_a, raw_b] }
    }

    /// The full attribute word to write back into `slot`'s partition entry.
    pub const fn raw(self, slot: Slot) -> u64 {
        self.raw[index(slot)]
    }

    /// The decoded boot state of `slot`.
    pub const fn get(self, slot: Slot) -> SlotAttrs {
        SlotAttrs::from_raw(self.raw(slot))
    }

    /// A copy with `slot`'s boot state replaced; its other attribute bits and the other slot are
    /// kept.
    pub const fn with(self, slot: Slot, attrs: SlotAttrs) -> Slots {
        let mut raw = self.raw;
        raw[index(slot)] = attrs.apply_to(raw[index(slot)]);
        Slots { raw }
    }
}

impl Default for Slots {
    /// [`Slots::FRESH`].
    fn default() -> Slots {
        Slots::FRESH
    }
}

impl fmt::Display for Slots {
    /// `A: <attrs>; B: <attrs>`, for status output and console messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "A: {}; B: {}", self.get(Slot::A), self.get(Slot::B))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn fresh_matches_design() {
        assert_eq!(Slots::FRESH.get(Slot::A), SlotAttrs { priority: 1, tries: 0, successful: true });
        assert_eq!(Slots::FRESH.get(Slot::B), SlotAttrs { priority: 0, tries: 0, successful: false });
        assert_eq!(Slots::default(), Slots::FRESH);
    }

    #[test]
    fn with_touches_only_its_slot_bits() {
        let s = Slots::from_raw(0x0000_0000_0000_0001, 0x8000_0000_0000_0004);
        let t = s.with(Slot::B, SlotAttrs { priority: 2, tries: 3, successful: false });
        assert_eq!(t.raw(Slot::A), s.raw(Slot::A));
        assert_eq!(t.raw(Slot::B), 0x8000_0000_0000_0004 | (2 << 48) | (3 << 52));
        assert_eq!(t.get(Slot::B), SlotAttrs { priority: 2, tries: 3, successful: false });
    }

    #[test]
    fn display_names_both_slots() {
        let text = Slots::FRESH.to_string();
        assert_eq!(text, "A: priority 1, tries 0, successful; B: priority 0, tries 0, not successful");
    }
}
