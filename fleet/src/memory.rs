//! A [`Store`] in the process's memory: for tests of the server and a single-node trial. Its
//! state goes with the process; a fleet that must survive a restart uses etcd.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use berth_release::fleet::{ClientParams, HostReport, check_group};
use berth_release::time::Timestamp;

use crate::semaphore::Semaphore;
use crate::{Grant, HostRecord, Released, Snapshot, Store, StoreError, silence_deadline, valid};

#[derive(Default)]
struct State {
    revision: u64,
    groups: BTreeMap<String, Semaphore>,
    hosts: BTreeMap<(String, String), (ClientParams, HostReport, Timestamp)>,
}

/// Semaphores and reports in memory, one lock around them; a revision counts every change.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn pre_reboot(&self, group: &str, id: &str, default_slots: u32, now: Timestamp) -> Result<Grant, StoreError> {
        valid(group, id)?;
        let mut st = self.state();
        let sem = st.groups.entry(group.to_string()).or_insert_with(|| Semaphore::new(default_slots)).clone();
        let mut changed = sem.clone();
        match changed.lock(id, now) {
            Ok(true) => {
                st.revision += 1;
                st.groups.insert(group.to_string(), changed);
                Ok(Grant { revision: st.revision, already_held: false })
            }
            Ok(false) => Ok(Grant { revision: st.revision, already_held: true }),
            Err(full) => Err(StoreError::Full { group: group.to_string(), slots: full.slots, holders: full.holders }),
        }
    }

    fn steady_state(&self, group: &str, id: &str) -> Result<Released, StoreError> {
        valid(group, id)?;
        let mut st = self.state();
        let was_held = st.groups.get_mut(group).is_some_and(|s| s.unlock(id));
        if was_held {
            st.revision += 1;
        }
        Ok(Released { revision: st.revision, was_held })
    }

    fn report(&self, who: &ClientParams, report: &HostReport, now: Timestamp) -> Result<u64, StoreError> {
        let report = crate::admit_report(who, report)?;
        let mut st = self.state();
        st.revision += 1;
        st.hosts.insert((who.group.clone(), who.id.clone()), (who.clone(), report, now));
        Ok(st.revision)
    }

    fn health(&self) -> Result<u64, StoreError> {
        Ok(self.state().revision)
    }

    fn snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError> {
        let st = self.state();
        let hosts = st
            .hosts
            .values()
            .map(|(who, report, received)| HostRecord {
                client_params: who.clone(),
                report: report.clone(),
                received: *received,
                silent: now > received.plus(silence_deadline(report)),
            })
            .collect();
        let groups = st.groups.iter().map(|(g, s)| (g.clone(), s.clone())).collect();
        Ok(Snapshot { revision: st.revision, groups, hosts })
    }

    fn set_slots(&self, group: &str, slots: u32) -> Result<u64, StoreError> {
        check_group(group).map_err(StoreError::Invalid)?;
        let mut st = self.state();
        st.groups.entry(group.to_string()).or_insert_with(|| Semaphore::new(slots)).total_slots = slots;
        st.revision += 1;
        Ok(st.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_store_keeps_the_slot_rules() {
        let s = MemoryStore::new();
        let g = s.pre_reboot("workers", "a", 1, Timestamp(10)).unwrap();
        assert!(!g.already_held);
        assert!(s.pre_reboot("workers", "a", 1, Timestamp(11)).unwrap().already_held);
        match s.pre_reboot("workers", "b", 1, Timestamp(12)) {
            Err(StoreError::Full { slots: 1, holders, .. }) => assert_eq!(holders[0].since, Some(Timestamp(10))),
            other => panic!("{other:?}"),
        }
        assert!(s.steady_state("workers", "a").unwrap().was_held);
        assert!(!s.steady_state("workers", "a").unwrap().was_held);
        assert!(!s.pre_reboot("workers", "b", 1, Timestamp(13)).unwrap().already_held);
        assert!(matches!(s.pre_reboot("a b", "x", 1, Timestamp(0)), Err(StoreError::Invalid(_))));
        s.set_slots("workers", 2).unwrap();
        s.pre_reboot("workers", "c", 1, Timestamp(14)).unwrap();
        let snap = s.snapshot(Timestamp(15)).unwrap();
        assert_eq!(snap.groups[0].1.holders, ["b", "c"]);
    }
}
