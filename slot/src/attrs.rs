//! Encoding of the boot state into a GPT partition entry's 64-bit attribute field.

use core::fmt;

/// Bits 48–51: priority (0 = never boot).
const PRIORITY_SHIFT: u32 = 48;
/// Bits 52–55: tries left.
const TRIES_SHIFT: u32 = 52;
/// Bit 56: successful.
const SUCCESSFUL_SHIFT: u32 = 56;
const NIBBLE: u64 = 0xF;
/// Every bit this crate owns; all others are preserved untouched.
pub const SLOT_BITS_MASK: u64 = (NIBBLE << PRIORITY_SHIFT) | (NIBBLE << TRIES_SHIFT) | (1 << SUCCESSFUL_SHIFT);

/// Highest value the 4-bit priority and tries fields can hold.
pub const MAX_NIBBLE: u8 = 15;

/// The boot state of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SlotAttrs {
    /// 0 means never boot; the highest wins.
    pub priority: u8,
    /// Boot attempts left before a not-yet-successful slot stops being eligible.
    pub tries: u8,
    /// Set once the slot booted to health.
    pub successful: bool,
}

impl SlotAttrs {
    /// Slot A of a fresh image: {priority 1, tries 0, successful}.
    pub const FRESH_ACTIVE: SlotAttrs = SlotAttrs { priority: 1, tries: 0, successful: true };
    /// Slot B of a fresh image, and any slot being rewritten: {0, 0, 0}.
    pub const EMPTY: SlotAttrs = SlotAttrs { priority: 0, tries: 0, successful: false };

    /// Decodes the slot fields from a GPT attribute word.
    pub const fn from_raw(raw: u64) -> SlotAttrs {
        SlotAttrs {
            priority: ((raw >> PRIORITY_SHIFT) & NIBBLE) as u8,
            tries: ((raw >> TRIES_SHIFT) & NIBBLE) as u8,
            successful: (raw >> SUCCESSFUL_SHIFT) & 1 == 1,
        }
    }

    /// Writes these fields into `raw`, keeping every bit outside [`SLOT_BITS_MASK`].
    /// Priority and tries are saturated to 4 bits.
    pub const fn apply_to(self, raw: u64) -> u64 {
        let p = if self.priority > MAX_NIBBLE { MAX_NIBBLE } else { self.priority } as u64;
        let t = if self.tries > MAX_NIBBLE { MAX_NIBBLE } else { self.tries } as u64;
        (raw & !SLOT_BITS_MASK)
            | (p << PRIORITY_SHIFT)
            | (t << TRIES_SHIFT)
            | ((self.successful as u64) << SUCCESSFUL_SHIFT)
    }

    /// Whether bootmgr may boot this slot: priority > 0 and (successful or tries left).
    pub const fn is_eligible(self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }
}

impl fmt::Display for SlotAttrs {
    /// `priority 2, tries 3, not successful`: for status output and console messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let successful = if self.successful { "successful" } else { "not successful" };
        write!(f, "priority {}, tries {}, {successful}", self.priority, self.tries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_other_bits() {
        let other = 0x8000_0000_0000_0001u64 | (0xF << 57);
        let a = SlotAttrs { priority: 2, tries: 3, successful: true };
        let raw = a.apply_to(other);
        assert_eq!(SlotAttrs::from_raw(raw), a);
        assert_eq!(raw & !SLOT_BITS_MASK, other & !SLOT_BITS_MASK);
    }
}
