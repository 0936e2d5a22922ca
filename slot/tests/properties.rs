//! Property tests of the slot contract.
//!
//! The issue's requirement: "over any sequence of boot attempts, failures and transitions, a disk
//! that had a successful slot always keeps a bootable slot, and a slot never marked good is never
//! chosen after its tries are spent." The machine model below checks selection against a ghost
//! record of what happened (which slots were marked good, how many trial boots each staging
//! granted), not against the attribute bits selection itself reads.

use berth_slot::attrs::{MAX_NIBBLE, SLOT_BITS_MASK};
use berth_slot::{BootKind, Slot, SlotAttrs, Slots, TransitionError};
use proptest::prelude::*;

fn any_slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::A), Just(Slot::B)]
}

/// Any value the fields can be given, including out-of-range ones `apply_to` must saturate.
fn any_attrs() -> impl Strategy<Value = SlotAttrs> {
    (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(priority, tries, successful)| SlotAttrs {
        priority,
        tries,
        successful,
    })
}

/// Attributes that fit the 4-bit fields.
fn valid_attrs() -> impl Strategy<Value = SlotAttrs> {
    (0..=MAX_NIBBLE, 0..=MAX_NIBBLE, any::<bool>()).prop_map(|(priority, tries, successful)| SlotAttrs {
        priority,
        tries,
        successful,
    })
}

/// A disk to start from: a fresh image, or any state at all, with random other bits.
fn any_disk() -> impl Strategy<Value = Slots> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(a, b)| Slots::from_raw(SlotAttrs::FRESH_ACTIVE.apply_to(a), SlotAttrs::EMPTY.apply_to(b))),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Slots::from_raw(a, b)),
    ]
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// One step of the life of a machine.
#[derive(Debug, Clone)]
enum Op {
    /// Power on or reboot: bootmgr selects, writes the GPT if told to, starts the kernel.
    Boot,
    /// The running system crashes or is powered off before reaching health (no mark good).
    Fail,
    /// The running system reaches `boot-complete.target`: the agent marks the booted slot good.
    Healthy,
    /// The agent clears the passive slot before writing an image into it.
    BeginWrite,
    /// The agent has written and verified the image: it stages the passive slot.
    Staged(u8),
    /// An operator asks for a manual rollback to the passive slot.
    Rollback,
    /// The agent looks for a failed update and clears it.
    DetectAndClear,
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Boot),
        2 => Just(Op::Fail),
        3 => Just(Op::Healthy),
        2 => Just(Op::BeginWrite),
        // Mostly valid counts, sometimes the out-of-range ones the transition must refuse.
        2 => prop_oneof![4 => 1..=5u8, 1 => Just(0u8), 1 => 14..=20u8].prop_map(Op::Staged),
        1 => Just(Op::Rollback),
        1 => Just(Op::DetectAndClear),
    ]
}

/// The machine, plus the ghost record the properties are checked against.
struct Machine {
    disk: Slots,
    /// The running slot, if the machine is up.
    booted: Option<Slot>,
    /// Whether the slot was marked good since it was last cleared (or was successful at start).
    good: [bool; 2],
    /// Trial boots the slot was granted by its last staging (or had at start) and not yet used.
    trials: [u8; 2],
    had_successful: bool,
}

impl Machine {
    fn new(disk: Slots) -> Machine {
        let (a, b) = (disk.get(Slot::A), disk.get(Slot::B));
        Machine {
            disk,
            booted: None,
            good: [a.successful, b.successful],
            trials: [a.tries, b.tries],
            had_successful: a.successful || b.successful,
        }
    }

    /// Applies a transition the way the agent does: a refusal changes nothing.
    fn apply(&mut self, r: Result<Slots, TransitionError>) -> bool {
        match r {
            Ok(d) => {
                self.disk = d;
                true
            }
            Err(_) => false,
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match (op, self.booted) {
            (Op::Boot, _) => self.boot()?,
            (Op::Fail, _) => self.booted = None,
            (Op::Healthy, Some(s)) => {
                if self.apply(self.disk.mark_good(s)) {
                    self.good[idx(s)] = true;
                }
            }
            (Op::BeginWrite, Some(s)) => {
                if self.apply(self.disk.begin_write(s.other())) {
                    self.cleared(s.other());
                }
            }
            (Op::Staged(tries), Some(s)) => {
                let before = self.disk;
                if self.apply(self.disk.staged(s.other(), *tries)) {
                    prop_assert!((1..=MAX_NIBBLE).contains(tries), "accepted tries {}", tries);
                    prop_assert!(!before.get(s.other()).successful, "staged over a successful slot");
                    self.good[idx(s.other())] = false;
                    self.trials[idx(s.other())] = *tries;
                }
            }
            (Op::Rollback, Some(s)) => {
                let before = self.disk;
                if self.apply(self.disk.rollback(s.other())) {
                    prop_assert!(self.good[idx(s.other())], "rolled back to a slot never marked good");
                    prop_assert_eq!(self.disk.select().map(|d| d.slot), Ok(s.other()));
                    prop_assert_eq!(self.disk.get(s), SlotAttrs { priority: 1, ..before.get(s) });
                }
            }
            (Op::DetectAndClear, Some(s)) => {
                if let Some(failed) = self.disk.detect_failed_update(s) {
                    prop_assert_eq!(failed, s.other());
                    prop_assert!(!self.good[idx(failed)], "a good slot reported as failed");
                    if self.apply(self.disk.clear(failed)) {
                        self.cleared(failed);
                    }
                }
            }
            // The agent only runs on a running system.
            (_, None) => {}
        }
        self.check_invariants()
    }

    fn cleared(&mut self, slot: Slot) {
        self.good[idx(slot)] = false;
        self.trials[idx(slot)] = 0;
    }

    fn boot(&mut self) -> Result<(), TestCaseError> {
        let before = self.disk;
        match before.select() {
            Ok(d) => {
                let s = d.slot;
                if !self.good[idx(s)] {
                    // The heart of the second property: an unproven slot only boots while the
                    // ghost still has trials for it, and each boot uses one.
                    prop_assert!(
                        self.trials[idx(s)] > 0,
                        "slot {:?} never marked good chosen after its tries were spent; disk {}",
                        s,
                        before
                    );
                    self.trials[idx(s)] -= 1;
                    prop_assert_eq!(d.kind, BootKind::Trial { tries_left: self.trials[idx(s)] });
                    prop_assert!(d.must_write, "a trial boot must be recorded before the kernel starts");
                }
                prop_assert_eq!(d.must_write, d.slots_after != before);
                prop_assert_eq!(d.slots_after.get(s.other()), before.get(s.other()));
                for slot in Slot::ALL {
                    prop_assert_eq!(d.slots_after.raw(slot) & !SLOT_BITS_MASK, before.raw(slot) & !SLOT_BITS_MASK);
                }
                self.disk = d.slots_after;
                self.booted = Some(s);
            }
            Err(e) => {
                prop_assert!(!self.had_successful, "disk that had a successful slot bricked: {} ({})", before, e);
                self.booted = None;
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), TestCaseError> {
        for s in Slot::ALL {
            // The successful bit is set by mark_good alone.
            prop_assert_eq!(self.disk.get(s).successful, self.good[idx(s)], "slot {:?}", s);
        }
        if self.had_successful {
            prop_assert!(self.disk.select().is_ok(), "no bootable slot left: {}", self.disk);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// `from_raw` ∘ `apply_to` is the identity on in-range fields and never touches other bits.
    #[test]
    fn attrs_round_trip(raw in any::<u64>(), attrs in valid_attrs()) {
        let written = attrs.apply_to(raw);
        prop_assert_eq!(SlotAttrs::from_raw(written), attrs);
        prop_assert_eq!(written & !SLOT_BITS_MASK, raw & !SLOT_BITS_MASK);
        // Decoding then re-encoding any word gives the word back.
        prop_assert_eq!(SlotAttrs::from_raw(raw).apply_to(raw), raw);
    }

    /// Out-of-range fields saturate at 15 and still never touch other bits.
    #[test]
    fn apply_to_saturates(raw in any::<u64>(), attrs in any_attrs()) {
        let written = attrs.apply_to(raw);
        let back = SlotAttrs::from_raw(written);
        prop_assert_eq!(back.priority, attrs.priority.min(MAX_NIBBLE));
        prop_assert_eq!(back.tries, attrs.tries.min(MAX_NIBBLE));
        prop_assert_eq!(back.successful, attrs.successful);
        prop_assert_eq!(written & !SLOT_BITS_MASK, raw & !SLOT_BITS_MASK);
    }

    /// `Slots::with` changes only the named slot's slot bits.
    #[test]
    fn slots_with_is_local(a in any::<u64>(), b in any::<u64>(), slot in any_slot(), attrs in valid_attrs()) {
        let before = Slots::from_raw(a, b);
        let after = before.with(slot, attrs);
        prop_assert_eq!(after.get(slot), attrs);
        prop_assert_eq!(after.raw(slot.other()), before.raw(slot.other()));
        prop_assert_eq!(after.raw(slot) & !SLOT_BITS_MASK, before.raw(slot) & !SLOT_BITS_MASK);
    }

    /// Selection follows the rules of docs/design.md §2 on any disk, checked from a direct restatement.
    #[test]
    fn select_follows_the_rules(a in any::<u64>(), b in any::<u64>()) {
        let disk = Slots::from_raw(a, b);
        let (sa, sb) = (disk.get(Slot::A), disk.get(Slot::B));
        let eligible = |s: SlotAttrs| s.priority > 0 && (s.successful || s.tries > 0);
        let expected = match (eligible(sa), eligible(sb)) {
            (true, true) => Some(if sb.priority > sa.priority { Slot::B } else { Slot::A }),
            (true, false) => Some(Slot::A),
            (false, true) => Some(Slot::B),
            (false, false) if sa.successful => Some(Slot::A),
            (false, false) if sb.successful => Some(Slot::B),
            (false, false) => None,
        };
        match disk.select() {
            Ok(d) => {
                prop_assert_eq!(Some(d.slot), expected);
                let s = disk.get(d.slot);
                if !eligible(s) {
                    prop_assert_eq!(d.kind, BootKind::Fallback);
                    prop_assert!(s.successful);
                    prop_assert_eq!(d.slots_after, disk);
                } else if s.successful {
                    prop_assert_eq!(d.kind, BootKind::Normal);
                    prop_assert_eq!(d.slots_after, disk);
                } else {
                    prop_assert_eq!(d.kind, BootKind::Trial { tries_left: s.tries - 1 });
                    prop_assert_eq!(d.slots_after, disk.with(d.slot, SlotAttrs { tries: s.tries - 1, ..s }));
                }
                prop_assert_eq!(d.must_write, d.slots_after != disk);
            }
            Err(e) => {
                prop_assert_eq!(expected, None);
                prop_assert!(!sa.successful && !sb.successful);
                for slot in Slot::ALL {
                    prop_assert!(!eligible(disk.get(slot)));
                    prop_assert_eq!(Some(e.reason(slot)), berth_slot::Unbootable::of(disk.get(slot)));
                }
            }
        }
    }

    /// Rebooting over and over without ever reaching health: every unproven slot is booted at
    /// most as many times as it had tries, and a disk with a successful slot always boots.
    #[test]
    fn crash_loop_spends_tries_then_falls_back(disk in any_disk(), boots in 1..40usize) {
        let mut m = Machine::new(disk);
        for _ in 0..boots {
            m.boot()?;
        }
    }

    /// The property, over any sequence of boots, failures and agent/operator actions.
    #[test]
    fn machine_keeps_a_bootable_slot(disk in any_disk(), ops in proptest::collection::vec(any_op(), 0..80)) {
        let mut m = Machine::new(disk);
        m.check_invariants()?;
        for op in &ops {
            m.step(op)?;
        }
    }

    /// Even transitions on arbitrary slots (not just the passive one, in any order) cannot take
    /// away the last successful slot: the guards, not the agent's discipline, keep the disk
    /// bootable.
    #[test]
    fn misused_transitions_cannot_brick(
        disk in any_disk(),
        ops in proptest::collection::vec((0..6u8, any_slot(), 0..=16u8), 0..60),
    ) {
        let had_successful = Slot::ALL.iter().any(|&s| disk.get(s).successful);
        let mut disk = disk;
        for (kind, slot, tries) in ops {
            let next = match kind {
                0 => disk.begin_write(slot),
                1 => disk.staged(slot, tries),
                2 => disk.mark_good(slot),
                3 => disk.rollback(slot),
                4 => disk.clear(slot),
                _ => disk.select().map(|d| d.slots_after).or(Ok(disk)),
            };
            if let Ok(next) = next {
                disk = next;
            }
            if had_successful {
                prop_assert!(disk.select().is_ok(), "no bootable slot after op {} on {:?}: {}", kind, slot, disk);
                prop_assert!(Slot::ALL.iter().any(|&s| disk.get(s).successful), "lost every successful slot: {}", disk);
            }
        }
    }

    /// The agent's happy path and its automatic rollback, from any good state: a staged update
    /// is tried exactly `tries` times, then the old slot boots and the failure is detected.
    #[test]
    fn failed_update_rolls_back(active in any_slot(), tries in 1..=MAX_NIBBLE, other_bits in any::<u64>()) {
        let passive = active.other();
        let disk = Slots::from_raw(other_bits, other_bits.rotate_left(7))
            .with(active, SlotAttrs { priority: 2, tries: 0, successful: true })
            .with(passive, SlotAttrs { priority: 1, tries: 0, successful: true });
        let disk = disk.begin_write(passive).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut disk = disk.staged(passive, tries).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for n in (0..tries).rev() {
            let d = disk.select().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!((d.slot, d.kind), (passive, BootKind::Trial { tries_left: n }));
            disk = d.slots_after;
        }
        let d = disk.select().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((d.slot, d.kind), (active, BootKind::Normal));
        prop_assert_eq!(disk.detect_failed_update(active), Some(passive));
        let disk = disk.clear(passive).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(disk.detect_failed_update(active), None);
        prop_assert_eq!(disk.select().map(|d| d.slot), Ok(active));
    }
}
