//! The fleet's server side (docs/design.md §9, issue 20): what `berth fleet serve`, `status`,
//! `unlock` and `slots` run on.
//!
//! - [`Store`]: the fleet's state behind one trait: each group's reboot semaphore (FleetLock's
//!   slots) and the hosts' reports. [`etcd`]'s store keeps both in etcd, so any number of
//!   stateless server replicas serve one fleet; [`memory::MemoryStore`] keeps them in a process
//!   (tests, a single-node trial);
//! - [`semaphore`]: one group's slots and holders, the pure lock and unlock every store applies;
//! - [`server`]: the HTTP server (FleetLock `POST /v1/pre-reboot` and `/v1/steady-state`, host
//!   reports), optional bearer token and TLS;
//! - [`status`]: the fleet view `berth fleet status` prints: hosts per version and state, who
//!   holds reboot slots, who rolled back, who went silent.
//!
//! The wire contract (requests, reports, error kinds, ids) is `berth_release::fleet`, shared
//! with the update agent.

#![warn(missing_docs)]

pub mod etcd;
pub mod history;
mod http1;
pub mod memory;
pub mod semaphore;
pub mod server;
pub mod status;
pub mod store;

use berth_release::fleet::{ClientParams, HostReport};
use berth_release::time::Timestamp;

/// A slot was granted (or was already held: the lock is recursive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The store's revision after the change (or at the read, when nothing changed).
    pub revision: u64,
    /// The host held a slot already; nothing was written.
    pub already_held: bool,
}

/// A slot was given back (or the host held none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// The store's revision after the change (or at the read, when nothing changed).
    pub revision: u64,
    /// The host held a slot, now freed.
    pub was_held: bool,
}

/// A holder of a reboot slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The host's id.
    pub id: String,
    /// Since when it holds the slot (absent in semaphores written by other servers).
    pub since: Option<Timestamp>,
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Every slot of the group is held by other hosts.
    #[error("all {slots} reboot slots of group {group} are held: {}", holders_text(.holders))]
    Full {
        /// The group.
        group: String,
        /// Its slots.
        slots: u32,
        /// Who holds them.
        holders: Vec<Holder>,
    },
    /// The store did not answer (names the endpoint and why).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Concurrent changes kept winning; the operation gave up.
    #[error("too many concurrent changes: {0}")]
    Conflict(String),
    /// A value in the store cannot be read; it is left as it is (names the key).
    #[error("unreadable value in the store: {0}")]
    Corrupt(String),
    /// The request is not valid (an id or group name, an oversized report).
    #[error("{0}")]
    Invalid(String),
}

fn holders_text(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| match h.since {
            Some(t) => format!("{} since {t}", h.id),
            None => h.id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fleet's state: reboot semaphores and host reports. Implementations are shared between
/// the server's threads.
pub trait Store: Send + Sync {
    /// FleetLock's RecursiveLock: a slot of `group` for `id`, granted if one is free or `id`
    /// holds one already. A group's semaphore is made on first use with the server's slot
    /// count for it (`default_slots`); afterwards the stored count is the truth.
    fn pre_reboot(&self, group: &str, id: &str, default_slots: u32, now: Timestamp) -> Result<Grant, StoreError>;
    /// FleetLock's UnlockIfHeld: frees `id`'s slot of `group`, if it holds one.
    fn steady_state(&self, group: &str, id: &str) -> Result<Released, StoreError>;
    /// Keeps `report` as `who`'s last word, received at `now`; a host that stops reporting
    /// is shown as silent once its report's deadline passes. Returns the store's revision.
    fn report(&self, who: &ClientParams, report: &HostReport, now: Timestamp) -> Result<u64, StoreError>;
    /// Whether the store answers: its current revision.
    fn health(&self) -> Result<u64, StoreError>;
    /// Everything the fleet view shows, read at one revision where the store allows it.
    fn snapshot(&self, now: Timestamp) -> Result<Snapshot, StoreError>;
    /// Sets how many slots `group` has (locksmith's `set-max`); holders beyond the new count
    /// keep their slots until they give them back.
    fn set_slots(&self, group: &str, slots: u32) -> Result<u64, StoreError>;
}

/// The fleet's state at one moment: what `berth fleet status` renders.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The store's revision it was read at.
    pub revision: u64,
    /// Each group's semaphore, by group name.
    pub groups: Vec<(String, semaphore::Semaphore)>,
    /// Every host that ever reported.
    pub hosts: Vec<HostRecord>,
}

/// A host's last report, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// Who reported.
    pub client_params: ClientParams,
    /// What it said last.
    pub report: HostReport,
    /// When the server received it.
    pub received: Timestamp,
    /// The report's deadline passed with no newer one: the host went silent.
    pub silent: bool,
}

/// How long after a report a host that has not reported again is shown as silent: two of its
/// check intervals (with their jitter) and a minute, at least 10 s and at most 7 days.
pub fn silence_deadline(report: &HostReport) -> std::time::Duration {
    let secs = report.interval_seconds.saturating_add(report.jitter_seconds).saturating_mul(2).saturating_add(60);
    std::time::Duration::from_secs(secs.clamp(10, 7 * 24 * 3600))
}

/// A group and a client id as every store takes them (the contract's checks).
pub(crate) fn valid(group: &str, id: &str) -> Result<(), StoreError> {
    berth_release::fleet::check_group(group)
        .and_then(|()| berth_release::fleet::check_id(id))
        .map_err(StoreError::Invalid)
}

/// A report as every store keeps it: its sender checked, at most
/// [`MAX_REPORT`](berth_release::fleet::MAX_REPORT) bytes, the newest
/// [`MAX_ROLLED_BACK`](berth_release::fleet::MAX_ROLLED_BACK) rollbacks.
pub(crate) fn admit_report(who: &ClientParams, report: &HostReport) -> Result<HostReport, StoreError> {
    use berth_release::fleet::{MAX_REPORT, MAX_ROLLED_BACK};
    valid(&who.group, &who.id)?;
    let size = serde_json::to_vec(report).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_REPORT {
        return Err(StoreError::Invalid(format!(
            "the report of {} is {size} bytes, over the {MAX_REPORT} allowed",
            who.id
        )));
    }
    let mut report = report.clone();
    if report.rolled_back.len() > MAX_ROLLED_BACK {
        report.rolled_back.drain(..report.rolled_back.len() - MAX_ROLLED_BACK);
    }
    Ok(report)
}
