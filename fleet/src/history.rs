//! A group's semaphore through time, from etcd's own revision history (not any server's word):
//! every version of the key, read back one revision at a time (the key at its latest
//! `mod_revision` m, then as of m-1, which is the version before, …, down to its creation). From
//! the versions, [`holds`] gives each host's held intervals and [`max_holders`] the most holders
//! any version had: how the tests (and an operator in doubt) check that no group ever had more
//! holders than slots. History that etcd compacted away cannot be read: the walk then fails
//! rather than check less than it says.

use crate::etcd::{Etcd, EtcdError, Range, code};
use crate::semaphore::Semaphore;

/// One version of the semaphore key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The revision that wrote it.
    pub revision: u64,
    /// What it held.
    pub semaphore: Semaphore,
}

/// A host's slot from the revision that took it to the one that freed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The host.
    pub id: String,
    /// The revision that added it to the holders.
    pub taken: u64,
    /// The revision that removed it (`None`: it still holds).
    pub freed: Option<u64>,
}

/// Why the history could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// etcd compacted revisions the walk needs.
    #[error("etcd compacted the history of {key} before revision {revision}: {message}")]
    Compacted {
        /// The key.
        key: String,
        /// The revision asked for.
        revision: u64,
        /// etcd's words.
        message: String,
    },
    /// A version is not a semaphore.
    #[error("{key} at revision {revision} is not a semaphore: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// The version's revision.
        revision: u64,
        /// Why.
        reason: String,
    },
    /// etcd did not answer.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Every version of `key` in its current life (since it was last created), oldest first; empty
/// when the key does not exist.
pub fn versions(etcd: &Etcd, key: &str) -> Result<Vec<Version>, HistoryError> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let r = match etcd.range(&Range::key(key.as_bytes()).at(at)) {
            Ok(r) => r,
            Err(e) if e.code() == Some(code::OUT_OF_RANGE) => {
                let message = match &e {
                    EtcdError::Api { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                return Err(HistoryError::Compacted { key: key.to_string(), revision: at, message });
            }
            Err(e) => return Err(e.into()),
        };
        let Some(kv) = r.kvs.into_iter().next() else { break };
        let semaphore = Semaphore::parse(&kv.value).map_err(|reason| HistoryError::Corrupt {
            key: key.to_string(),
            revision: kv.mod_revision,
            reason,
        })?;
        out.push(Version { revision: kv.mod_revision, semaphore });
        if kv.version <= 1 || kv.mod_revision <= kv.create_revision {
            break;
        }
        at = kv.mod_revision - 1;
    }
    out.reverse();
    Ok(out)
}

/// The most holders any version had, and the first revision that had them (0 with none).
pub fn max_holders(versions: &[Version]) -> (usize, u64) {
    versions.iter().fold((0, 0), |(n, r), v| {
        if v.semaphore.holders.len() > n { (v.semaphore.holders.len(), v.revision) } else { (n, r) }
    })
}

/// Versions with more holders than their slots: `(revision, holders, slots)`.
pub fn overfull(versions: &[Version]) -> Vec<(u64, usize, u32)> {
    versions
        .iter()
        .filter(|v| v.semaphore.holders.len() > v.semaphore.total_slots as usize)
        .map(|v| (v.revision, v.semaphore.holders.len(), v.semaphore.total_slots))
        .collect()
}

/// Each host's held intervals, in the order they began.
pub fn holds(versions: &[Version]) -> Vec<Held> {
    let mut out: Vec<Held> = Vec::new();
    let mut open: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for v in versions {
        for id in &v.semaphore.holders {
            if !open.contains_key(id.as_str()) {
                open.insert(id, out.len());
                out.push(Held { id: id.clone(), taken: v.revision, freed: None });
            }
        }
        let gone: Vec<&str> = open.keys().copied().filter(|id| !v.semaphore.holders.iter().any(|h| h == id)).collect();
        for id in gone {
            if let Some(i) = open.remove(id) {
                out[i].freed = Some(v.revision);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(revision: u64, holders: &[&str]) -> Version {
        let mut semaphore = Semaphore::new(2);
        semaphore.holders = holders.iter().map(|h| h.to_string()).collect();
        Version { revision, semaphore }
    }

    #[test]
    fn intervals_and_the_most_holders_come_from_the_versions() {
        let vs = [
            v(2, &[]),
            v(3, &["a"]),
            v(4, &["a", "b"]),
            v(5, &["b"]),
            v(6, &["a", "b"]),
            v(7, &[]),
            v(8, &["a", "b", "c"]),
        ];
        assert_eq!(max_holders(&vs), (3, 8));
        assert_eq!(overfull(&vs), [(8, 3, 2)]);
        let h = holds(&vs);
        let a: Vec<_> = h.iter().filter(|x| x.id == "a").map(|x| (x.taken, x.freed)).collect();
        assert_eq!(a, [(3, Some(5)), (6, Some(7)), (8, None)]);
        let b: Vec<_> = h.iter().filter(|x| x.id == "b").map(|x| (x.taken, x.freed)).collect();
        assert_eq!(b, [(4, Some(7)), (8, None)]);
    }
}
