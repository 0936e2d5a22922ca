//! One group's reboot semaphore: how many hosts may reboot at once and who does. Stored whole as
//! one JSON value (airlock's field names, so either server reads the other's), changed only by
//! [`Semaphore::lock`] and [`Semaphore::unlock`], which every store applies inside its own
//! compare-and-swap.

use std::collections::BTreeMap;

use berth_release::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Holder;

/// A group's slots and their holders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// How many hosts may hold a slot at once.
    pub total_slots: u32,
    /// The ids holding a slot, sorted.
    #[serde(default)]
    pub holders: Vec<String>,
    /// When each holder took its slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub since: BTreeMap<String, Timestamp>,
}

/// Every slot is held by others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// The slots.
    pub slots: u32,
    /// Who holds them.
    pub holders: Vec<Holder>,
}

impl Semaphore {
    /// A semaphore of `slots` slots, none held.
    pub fn new(slots: u32) -> Semaphore {
        Semaphore { total_slots: slots, holders: Vec::new(), since: BTreeMap::new() }
    }

    /// Reads a stored value.
    pub fn parse(bytes: &[u8]) -> Result<Semaphore, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// The value to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The holders, with when they took their slot.
    pub fn holder_list(&self) -> Vec<Holder> {
        self.holders.iter().map(|id| Holder { id: id.clone(), since: self.since.get(id).copied() }).collect()
    }

    /// Takes a slot for `id` at `now`: `Ok(true)` when it was taken (the value changed),
    /// `Ok(false)` when `id` held one already, `Err` when every slot is held by others.
    pub fn lock(&mut self, id: &str, now: Timestamp) -> Result<bool, Full> {
        if self.holders.iter().any(|h| h == id) {
            return Ok(false);
        }
        if self.holders.len() >= self.total_slots as usize {
            return Err(Full { slots: self.total_slots, holders: self.holder_list() });
        }
        self.holders.push(id.to_string());
        self.holders.sort();
        self.since.insert(id.to_string(), now);
        Ok(true)
    }

    /// Frees `id`'s slot: whether it held one (the value changed).
    pub fn unlock(&mut self, id: &str) -> bool {
        let before = self.holders.len();
        self.holders.retain(|h| h != id);
        self.since.remove(id);
        self.holders.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_granted_up_to_the_limit_recursively_and_freed() {
        let mut s = Semaphore::new(2);
        assert_eq!(s.lock("b", Timestamp(1)), Ok(true));
        assert_eq!(s.lock("a", Timestamp(2)), Ok(true));
        assert_eq!(s.lock("a", Timestamp(3)), Ok(false), "recursive");
        let full = s.lock("c", Timestamp(4)).unwrap_err();
        assert_eq!(full.slots, 2);
        assert_eq!(full.holders.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(full.holders[0].since, Some(Timestamp(2)));
        assert!(s.unlock("a"));
        assert!(!s.unlock("a"));
        assert_eq!(s.lock("c", Timestamp(5)), Ok(true));
        assert_eq!(s.holders, ["b", "c"]);
    }

    #[test]
    fn the_stored_form_reads_airlocks_and_round_trips() {
        // airlock writes total_slots and holders only.
        let airlock = Semaphore::parse(br#"{"total_slots":1,"holders":["x"]}"#).unwrap();
        assert_eq!(airlock.holder_list(), [Holder { id: "x".into(), since: None }]);
        let mut s = Semaphore::new(3);
        s.lock("h", Timestamp(1_796_000_000)).unwrap();
        assert_eq!(Semaphore::parse(&s.to_bytes()).unwrap(), s);
        assert!(Semaphore::parse(b"{not json").is_err());
    }
}
