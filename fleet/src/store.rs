//! [`EtcdStore`]: the fleet's state in etcd, so that any number of stateless `berth fleet serve`
//! replicas serve one fleet. Key layout under a prefix (default [`DEFAULT_PREFIX`]):
//!
//! ```text
//! <prefix>/groups/<group>/semaphore   a group's reboot semaphore (semaphore::Semaphore's JSON), no lease
//! <prefix>/hosts/<group>/<id>         a host's last report (HostEntry's JSON), no lease: it stays
//! <prefix>/alive/<group>/<id>         {"received":…} under a lease of the report's silence deadline
//! ```
//!
//! Every change of a semaphore is read → change in memory → a transaction that writes only if the
//! key's `mod_revision` is still the one read (mod_revision is global and monotonic, so a key
//! deleted and made again cannot pass for the one read); a lost race answers with the current
//! value from the transaction's failure branch, and the change is tried again on it, a bounded
//! number of times with a random pause. A semaphore that cannot be read is never overwritten.
//! A host that stops reporting loses its `alive` key when the lease runs out, and is shown as
//! silent from its `hosts` key.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use berth_release::fleet::{ClientParams, HostReport, check_group, check_id};
use berth_release::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::etcd::{Compare, Etcd, EtcdError, KeyValue, Op, Txn, code};
use crate::semaphore::Semaphore;
use crate::{Grant, HostRecord, Released, Snapshot, Store, StoreError, silence_deadline, valid};

/// The key prefix unless told otherwise.
pub const DEFAULT_PREFIX: &str = "berth.fleet/v1";
/// Compare-and-swap attempts before giving up with [`StoreError::Conflict`].
pub const CAS_ATTEMPTS: u32 = 16;
/// Keys read per call when listing.
const PAGE: u64 = 500;

/// What the store keeps of a host under `<prefix>/hosts/<group>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// 1.
    pub schema: u32,
    /// The host's id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// When the server received the report.
    pub received: Timestamp,
    /// After this, with no newer report, the host is silent.
    pub deadline: Timestamp,
    /// The lease of its `alive` key (decimal, as the gateway writes lease ids).
    pub lease: String,
    /// The lease's TTL, seconds.
    pub ttl: u64,
    /// The report.
    pub report: HostReport,
}

/// A slot freed by the operator ([`EtcdStore::unlock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlocked {
    /// The holder's id.
    pub id: String,
    /// Its hostname, when it reported one.
    pub hostname: Option<String>,
    /// Since when it held the slot.
    pub since: Option<Timestamp>,
    /// The revision of the change.
    pub revision: u64,
}

/// The fleet's state in one etcd cluster.
#[derive(Debug)]
pub struct EtcdStore {
    etcd: Etcd,
    prefix: String,
    silent_after: Option<Duration>,
}

impl EtcdStore {
    /// A store under `prefix` (no leading or trailing `/` needed; [`DEFAULT_PREFIX`] usually).
    pub fn new(etcd: Etcd, prefix: &str) -> Result<EtcdStore, String> {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() || prefix.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!("etcd key prefix {prefix:?} must be non-empty, without spaces"));
        }
        Ok(EtcdStore { etcd, prefix: prefix.to_string(), silent_after: None })
    }

    /// Every host is shown silent `after` its last report, whatever its interval
    /// (`--silent-after`); at least 2 s (etcd's shortest lease).
    #[must_use]
    pub fn with_silent_after(mut self, after: Duration) -> EtcdStore {
        self.silent_after = Some(after.max(Duration::from_secs(2)));
        self
    }

    /// The etcd client.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `group`'s semaphore.
    pub fn semaphore_key(&self, group: &str) -> String {
        format!("{}/groups/{group}/semaphore", self.prefix)
    }

    /// The key of a host's last report.
    pub fn host_key(&self, group: &str, id: &str) -> String {
        format!("{}/hosts/{group}/{id}", self.prefix)
    }

    /// The key that exists while a host is not silent.
    pub fn alive_key(&self, group: &str, id: &str) -> String {
        format!("{}/alive/{group}/{id}", self.prefix)
    }

    /// Changes `group`'s semaphore with `change` (given the stored one, or `None`), in a
    /// compare-and-swap loop. `change` answers `Ok(Some(new))` to write `new`, `Ok(None)` to
    /// leave it; the answer is `(revision, whether written, the value decided on)`.
    fn change_semaphore<T>(
        &self,
        group: &str,
        mut change: impl FnMut(Option<&Semaphore>) -> Result<(Option<Semaphore>, T), StoreError>,
    ) -> Result<(u64, T), StoreError> {
        let key = self.semaphore_key(group);
        let (mut current, mut revision) = self.etcd.get(key.as_bytes()).map_err(store_error)?;
        for attempt in 1..=CAS_ATTEMPTS {
            let parsed = match &current {
                Some(kv) => Some(parse_semaphore(&key, kv)?),
                None => None,
            };
            let (new, out) = change(parsed.as_ref())?;
            let Some(new) = new else { return Ok((revision, out)) };
            let compare = match &current {
                Some(kv) => Compare::ModRevision(key.as_bytes().to_vec(), kv.mod_revision),
                None => Compare::Absent(key.as_bytes().to_vec()),
            };
            let txn = Txn {
                compare: vec![compare],
                success: vec![Op::Put { key: key.as_bytes().to_vec(), value: new.to_bytes(), lease: 0 }],
                failure: vec![Op::Get(key.as_bytes().to_vec())],
            };
            let answer = self.etcd.txn(&txn).map_err(store_error)?;
            if answer.succeeded {
                return Ok((answer.header.revision, out));
            }
            // Lost the race: the failure branch read what won it.
            current = answer.first_read().cloned();
            revision = answer.header.revision;
            if attempt < CAS_ATTEMPTS {
                std::thread::sleep(jitter(attempt));
            }
        }
        Err(StoreError::Conflict(format!(
            "{key} changed under each of {CAS_ATTEMPTS} attempts at {}",
            self.etcd.endpoint()
        )))
    }

    /// Frees the slot of `group` that `who` (a holder's id, or the hostname of a host whose
    /// report names it) holds: `berth fleet unlock`. An error names the holders when `who`
    /// holds none.
    pub fn unlock(&self, group: &str, who: &str) -> Result<Unlocked, StoreError> {
        check_group(group).map_err(StoreError::Invalid)?;
        // Hostnames come from the group's reports.
        let (hosts, _) = self.hosts_of(Some(group), 0)?;
        let hostname_of = |id: &str| hosts.iter().find(|h| h.id == id).map(|h| h.report.hostname.clone());
        let mut found: Option<(String, Option<Timestamp>)> = None;
        let (revision, ()) = self.change_semaphore(group, |sem| {
            // An earlier attempt chose a holder to free and it no longer holds: that attempt's
            // write went through though its answer was lost (or the holder let go meanwhile).
            // Freed either way, by this call as far as the operator can tell.
            if let Some((id, _)) = &found
                && !sem.is_some_and(|s| s.holders.iter().any(|h| h == id))
            {
                return Ok((None, ()));
            }
            let Some(sem) = sem else {
                return Err(StoreError::Invalid(format!("group {group} has no semaphore: nobody holds a slot")));
            };
            let id = if sem.holders.iter().any(|h| h == who) {
                who.to_string()
            } else {
                let named: Vec<&String> = sem
                    .holders
                    .iter()
                    .filter(|id| hosts.iter().any(|h| &h.id == *id && h.report.hostname == who))
                    .collect();
                match named.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(StoreError::Invalid(format!(
                            "{who} holds no reboot slot of group {group}; holders: {}",
                            holders_named(sem, &hosts)
                        )));
                    }
                    many => {
                        return Err(StoreError::Invalid(format!(
                            "hostname {who} names several holders of group {group} ({}): give the id",
                            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
            };
            let mut new = sem.clone();
            new.unlock(&id);
            found = Some((id.clone(), sem.since.get(&id).copied()));
            Ok((Some(new), ()))
        })?;
        let (id, since) = found.ok_or_else(|| StoreError::Invalid(format!("{who} holds no slot of {group}")))?;
        Ok(Unlocked { hostname: hostname_of(&id), id, since, revision })
    }

    /// Deletes everything kept of host `id` (its reports in every group; `berth fleet forget`):
    /// the groups it was in, and the revision after.
    pub fn forget(&self, id: &str) -> Result<(Vec<String>, u64), StoreError> {
        check_id(id).map_err(StoreError::Invalid)?;
        let (hosts, mut revision) = self.hosts_of(None, 0)?;
        let mut groups = Vec::new();
        for h in hosts.iter().filter(|h| h.id == id) {
            let txn = Txn {
                compare: vec![],
                success: vec![
                    Op::Delete(self.host_key(&h.group, id).into_bytes()),
                    Op::Delete(self.alive_key(&h.group, id).into_bytes()),
                ],
                failure: vec![],
            };
            revision = self.etcd.txn(&txn).map_err(store_error)?.header.revision;
            if let Ok(lease) = h.lease.parse::<i64>() {
                // Its alive key is gone already; the lease would only expire.
                let _ = self.etcd.lease_revoke(lease);
            }
            groups.push(h.group.clone());
        }
        Ok((groups, revision))
    }

    /// Every host entry (of one group, or all), at `revision` (0: the latest), and the revision
    /// read at.
    fn hosts_of(&self, group: Option<&str>, revision: u64) -> Result<(Vec<HostEntry>, u64), StoreError> {
        let prefix = match group {
            Some(g) => format!("{}/hosts/{g}/", self.prefix),
            None => format!("{}/hosts/", self.prefix),
        };
        let (kvs, rev) = self.etcd.get_prefix(prefix.as_bytes(), revision, PAGE).map_err(store_error)?;
        let hosts = kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<HostEntry>(&kv.value).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "{} at revision {}: {e}",
                        String::from_utf8_lossy(&kv.key),
                        kv.mod_revision
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((hosts, rev))
    }

    /// The lease of the stored entry `old`, kept alive, when it has the TTL wanted and is still
    /// there.
    fn live_lease(&self, old: Option<&HostEntry>, ttl: u64) -> Result<Option<i64>, StoreError> {
        if let Some(old) = old.filter(|o| o.ttl == ttl)
            && let Ok(id) = old.lease.parse::<i64>()
            && self.etcd.lease_keepalive(id).map_err(store_error)?.is_some()
        {
            return Ok(Some(id));
        }
        Ok(None)
    }
}

fn holders_named(sem: &Semaphore, hosts: &[HostEntry]) -> String {
    if sem.holders.is_empty() {
        return "none".into();
    }
    sem.holders
        .iter()
        .map(|id| match hosts.iter().find(|h| &h.id == id) {
            Some(h) => format!("{} ({id})", h.report.hostname),
            None => id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_semaphore(key: &str, kv: &KeyValue) -> Result<Semaphore, StoreError> {
    Semaphore::parse(&kv.value).map_err(|e| {
        StoreError::Corrupt(format!(
            "{key} at revision {} is not a semaphore ({e}); it is left as it is: fix or delete it with etcdctl",
            kv.mod_revision
        ))
    })
}

/// etcd's errors as the store's: no answer (or no leader) is [`StoreError::Unavailable`]
/// naming the endpoint; anything else etcd said is too, with its message.
fn store_error(e: EtcdError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// 5–50 ms, random: racing replicas fall out of step.
fn jitter(attempt: u32) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    Duration::from_millis(5 + h.finish() % 46)
}

impl Store for EtcdStore {
    fn pre_reboot(&self, group: &str, id: &str, default_slots: u32, now: Timestamp) -> Result<Grant, StoreError> {
        valid(group, id)?;
        let mut already = false;
        let (revision, ()) = self.change_semaphore(group, |sem| {
            let mut new = sem.cloned().unwrap_or_else(|| Semaphore::new(default_slots));
            match new.lock(id, now) {
                Ok(true) => {
                    already = false;
                    Ok((Some(new), ()))
                }
                Ok(false) => {
                    already = true;
                    Ok((None, ()))
                }
                Err(full) => {
                    Err(StoreError::Full { group: group.to_string(), slots: full.slots, holders: full.holders })
                }
            }
        })?;
        Ok(Grant { revision, already_held: already })
    }

    fn steady_state(&self, group: &str, id: &str) -> Result<Released, StoreError> {
        valid(group, id)?;
        let mut held = false;
        let (revision, ()) = self.change_semaphore(group, |sem| {
            let Some(sem) = sem else {
                held = false;
                return Ok((None, ()));
            };
            let mut new = sem.clone();
            held = new.unlock(id);
            Ok((held.then_some(new), ()))
        })?;
        Ok(Released { revision, was_held: held })
    }

    fn report(&self, who: &ClientParams, report: &HostReport, now: Timestamp) -> Result<u64, StoreError> {
        let report = crate::admit_report(who, report)?;
        let ttl_d = self.silent_after.unwrap_or_else(|| silence_deadline(&report));
        let ttl = ttl_d.as_secs().max(2);
        let key = self.host_key(&who.group, &who.id);
        let alive = self.alive_key(&who.group, &who.id);
        let (mut current, _) = self.etcd.get(key.as_bytes()).map_err(store_error)?;
        // A lease this call granted: every attempt that needs a new one takes it, and it is
        // revoked at the end unless the write that went through holds it (no lease is left with
        // nothing attached for its whole TTL).
        let mut granted: Option<i64> = None;
        let mut kept = None;
        let outcome = (|| {
            for attempt in 1..=CAS_ATTEMPTS {
                // A record that cannot be read is replaced: the host's new word supersedes it.
                let old: Option<HostEntry> = current.as_ref().and_then(|kv| serde_json::from_slice(&kv.value).ok());
                let lease = match (self.live_lease(old.as_ref(), ttl)?, granted) {
                    (Some(id), _) | (None, Some(id)) => id,
                    (None, None) => {
                        let (id, _) = self.etcd.lease_grant(ttl).map_err(store_error)?;
                        granted = Some(id);
                        id
                    }
                };
                let entry = HostEntry {
                    schema: 1,
                    id: who.id.clone(),
                    group: who.group.clone(),
                    received: now,
                    deadline: now.plus(Duration::from_secs(ttl)),
                    lease: lease.to_string(),
                    ttl,
                    report: report.clone(),
                };
                let value = serde_json::to_vec(&entry).map_err(|e| StoreError::Invalid(e.to_string()))?;
                let compare = match &current {
                    Some(kv) => Compare::ModRevision(key.as_bytes().to_vec(), kv.mod_revision),
                    None => Compare::Absent(key.as_bytes().to_vec()),
                };
                let alive_value = format!("{{\"received\":\"{now}\"}}").into_bytes();
                let txn = Txn {
                    compare: vec![compare],
                    success: vec![
                        Op::Put { key: key.as_bytes().to_vec(), value, lease: 0 },
                        Op::Put { key: alive.as_bytes().to_vec(), value: alive_value, lease },
                    ],
                    failure: vec![Op::Get(key.as_bytes().to_vec())],
                };
                match self.etcd.txn(&txn) {
                    Ok(a) if a.succeeded => {
                        kept = Some(lease);
                        if let Some(old_lease) = old.and_then(|o| o.lease.parse::<i64>().ok()).filter(|l| *l != lease) {
                            // Nothing is attached to it any more.
                            let _ = self.etcd.lease_revoke(old_lease);
                        }
                        return Ok(a.header.revision);
                    }
                    Ok(a) => current = a.first_read().cloned(),
                    // The lease ran out between the keepalive (or the grant) and the write.
                    Err(e) if e.code() == Some(code::NOT_FOUND) => {
                        if granted == Some(lease) {
                            granted = None;
                        }
                        current = current.map(|mut kv| {
                            kv.value.clear();
                            kv
                        })
                    }
                    Err(e) => return Err(store_error(e)),
                }
                if attempt < CAS_ATTEMPTS {
                    std::thread::sleep(jitter(attempt));
                }
            }
            Err(StoreError::Conflict(format!("{key} changed under each of {CAS_ATTEMPTS} attempts")))
        })();
        if let Some(unused) = granted.filter(|g| kept != Some(*g)) {
            let _ = self.etcd.lease_revoke(unused);
        }
        outcome
    }

    fn health(&self) -> Result<u64, StoreError> {
        self.etcd.revision(format!("{}/health", self.prefix).as_bytes()).map_err(store_error)
    }

    fn snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError> {
        // Three ranges at one revision: one consistent view.
        let (hosts, revision) = self.hosts_of(None, 0)?;
        let groups_prefix = format!("{}/groups/", self.prefix);
        let (sems, _) = self.etcd.get_prefix(groups_prefix.as_bytes(), revision, PAGE).map_err(store_error)?;
        let alive_prefix = format!("{}/alive/", self.prefix);
        let (alive, _) = self.etcd.get_prefix(alive_prefix.as_bytes(), revision, PAGE).map_err(store_error)?;
        let alive: std::collections::BTreeSet<Vec<u8>> = alive.into_iter().map(|kv| kv.key).collect();
        let mut groups = Vec::new();
        for kv in &sems {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let Some(group) = key.strip_prefix(&groups_prefix).and_then(|r| r.strip_suffix("/semaphore")) else {
                continue;
            };
            groups.push((group.to_string(), parse_semaphore(&key, kv)?));
        }
        let hosts = hosts
            .into_iter()
            .map(|h| {
                let is_alive = alive.contains(self.alive_key(&h.group, &h.id).as_bytes());
                HostRecord {
                    silent: !is_alive || now > h.deadline,
                    client_params: ClientParams { id: h.id, group: h.group },
                    report: h.report,
                    received: h.received,
                }
            })
            .collect();
        Ok(Snapshot { revision, groups, hosts })
    }

    fn set_slots(&self, group: &str, slots: u32) -> Result<u64, StoreError> {
        check_group(group).map_err(StoreError::Invalid)?;
        let (revision, ()) = self.change_semaphore(group, |sem| {
            let mut new = sem.cloned().unwrap_or_else(|| Semaphore::new(slots));
            if sem.is_some() && new.total_slots == slots {
                return Ok((None, ()));
            }
            new.total_slots = slots;
            Ok((Some(new), ()))
        })?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let s = EtcdStore::new(Etcd::new(&["http://127.0.0.1:1".into()]).unwrap(), "berth.fleet/v1/").unwrap();
        assert_eq!(s.semaphore_key("workers"), "berth.fleet/v1/groups/workers/semaphore");
        assert_eq!(s.host_key("workers", "3f2a"), "berth.fleet/v1/hosts/workers/3f2a");
        assert_eq!(s.alive_key("workers", "3f2a"), "berth.fleet/v1/alive/workers/3f2a");
        assert!(EtcdStore::new(Etcd::new(&["http://127.0.0.1:1".into()]).unwrap(), "/").is_err());
        for n in 1..50 {
            let j = jitter(n);
            assert!(j >= Duration::from_millis(5) && j <= Duration::from_millis(50));
        }
    }
}
