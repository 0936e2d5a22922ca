//! The agent's decisions without a disk, a network or QEMU: which release it takes from an
//! index, how it notices a rollback and marks a boot good against slot attributes in memory,
//! and when each reboot strategy reboots.

use std::cell::Cell;
use std::path::Path;

use berth_release::config::FleetLock;
use berth_release::index::Rollout;
use berth_release::signature::{public_key_hex, secret_key_from_seed};
use berth_release::{IndexError, Signatures};
use berth_slot::{DEFAULT_TRIES, Slot, SlotAttrs, Slots};

use super::tests::release;
use super::*;
use crate::disk::MemorySlots;
use crate::state::{Phase, PhaseError};

const GOOD: SlotAttrs = SlotAttrs { priority: 2, tries: 0, successful: true };
const FALLBACK: SlotAttrs = SlotAttrs { priority: 1, tries: 0, successful: true };
/// A slot whose update spent its tries without reaching health.
const FAILED: SlotAttrs = SlotAttrs { priority: 2, tries: 0, successful: false };
/// A slot booted for its trial, not yet marked good.
const ON_TRIAL: SlotAttrs = SlotAttrs { priority: 2, tries: 1, successful: false };

/// An agent booted from `booted`, running `version`, with `slots` in memory and its state in a
/// fresh directory (kept as long as the returned guard).
fn host(booted: Slot, version: &str, slots: Slots) -> (Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let disk = BootDisk::image(dir.path().join("no-disk.img"), booted);
    let store = Box::new(MemorySlots(Cell::new(slots)));
    let agent = Agent::for_test_with(store, disk, version, &dir.path().join("state"));
    (agent, dir)
}

/// A (1.0.0, good) host on A with B empty.
fn on_a(version: &str) -> (Agent, tempfile::TempDir) {
    host(Slot::A, version, Slots::new(GOOD, SlotAttrs::EMPTY))
}

fn index_of(releases: Vec<Release>) -> Index {
    Index {
        schema: berth_release::index::SCHEMA,
        channel: "stable".into(),
        sequence: 5,
        issued: Timestamp(1_800_000_000),
        expires: Timestamp(1_800_086_400),
        releases,
    }
}

fn index(versions: &[&str]) -> Index {
    index_of(versions.iter().map(|v| release(v)).collect())
}

/// Within the index's validity.
const NOW: Timestamp = Timestamp(1_800_000_100);

fn chosen(agent: &Agent, index: &Index, now: Timestamp, force: bool) -> String {
    match agent.choose(index, now, force) {
        Found::Update(r) => format!("update {}", r.version),
        Found::Later { version, from } => format!("later {version} at {}", from.0),
        Found::UpToDate => "up to date".into(),
    }
}

#[test]
fn the_newest_release_above_the_running_version_is_chosen() {
    let (agent, _d) = on_a("1.0.0");
    assert_eq!(chosen(&agent, &index(&["0.9.0", "1.0.0", "1.2.0", "1.1.0"]), NOW, false), "update 1.2.0");
    // Versions compare by their numbers, not as text.
    let (agent, _d) = on_a("1.9.0");
    assert_eq!(chosen(&agent, &index(&["1.10.0", "1.8.0"]), NOW, false), "update 1.10.0");
}

#[test]
fn the_same_or_an_older_version_is_not_offered() {
    let (agent, _d) = on_a("1.2.0");
    assert_eq!(chosen(&agent, &index(&["1.2.0"]), NOW, false), "up to date");
    assert_eq!(chosen(&agent, &index(&["1.0.0", "1.1.9"]), NOW, false), "up to date");
    assert_eq!(chosen(&agent, &index(&[]), NOW, false), "up to date");
    // Not even forced: force takes what is held back or not yet rolled out, never a downgrade.
    assert_eq!(chosen(&agent, &index(&["1.0.0", "1.2.0"]), NOW, true), "up to date");
}

#[test]
fn a_pulled_release_is_passed_over_for_the_next_newest() {
    let (agent, _d) = on_a("1.0.0");
    let mut releases = vec![release("1.1.0"), release("1.2.0")];
    releases[1].pulled = true;
    assert_eq!(chosen(&agent, &index_of(releases.clone()), NOW, false), "update 1.1.0");
    releases[0].pulled = true;
    assert_eq!(chosen(&agent, &index_of(releases), NOW, true), "up to date", "pulled is pulled, forced or not");
}

#[test]
fn a_version_that_rolled_back_here_is_held_back_unless_forced() {
    let (mut agent, _d) = on_a("1.0.0");
    let at = Timestamp(0);
    agent.state.rolled_back.push(RolledBack { version: "1.2.0".into(), slot: Slot::B, at, manual: false });
    assert_eq!(chosen(&agent, &index(&["1.2.0"]), NOW, false), "up to date");
    // The next newest is still taken; a newer one still is; `apply --force` takes it again.
    assert_eq!(chosen(&agent, &index(&["1.1.0", "1.2.0"]), NOW, false), "update 1.1.0");
    assert_eq!(chosen(&agent, &index(&["1.2.0", "1.3.0"]), NOW, false), "update 1.3.0");
    assert_eq!(chosen(&agent, &index(&["1.2.0"]), NOW, true), "update 1.2.0");
}

#[test]
fn a_rollout_not_yet_at_this_host_says_when_it_comes_and_force_takes_it_now() {
    let (agent, _d) = on_a("1.0.0");
    let mut r = release("1.1.0");
    // A wave that starts in an hour, all at once.
    r.rollout = Rollout { start: Timestamp(NOW.0 + 3600), duration_seconds: 0 };
    let idx = index_of(vec![r.clone()]);
    assert_eq!(chosen(&agent, &idx, NOW, false), format!("later 1.1.0 at {}", NOW.0 + 3600));
    assert_eq!(chosen(&agent, &idx, Timestamp(NOW.0 + 3600), false), "update 1.1.0");
    assert_eq!(chosen(&agent, &idx, NOW, true), "update 1.1.0");
    // Meanwhile an older release that reached every host is taken.
    let idx = index_of(vec![release("1.0.5"), r.clone()]);
    assert_eq!(chosen(&agent, &idx, NOW, false), "update 1.0.5");
    // A wave halfway through 1000 s: this host's place in it (fixed by its machine-id) decides.
    r.rollout = Rollout { start: Timestamp(NOW.0 - 500), duration_seconds: 1000 };
    let pos = rollout::position(&agent.machine_id, "1.1.0");
    let want = if pos < 0.5 {
        "update 1.1.0".to_string()
    } else {
        format!("later 1.1.0 at {}", NOW.0 - 500 + (pos * 1000.0).ceil() as i64)
    };
    assert_eq!(chosen(&agent, &index_of(vec![r.clone()]), NOW, false), want, "position {pos}");
    assert_eq!(chosen(&agent, &index_of(vec![r]), Timestamp(NOW.0 + 500), false), "update 1.1.0");
}

/// The repository's signing key in these tests, and the keys a host trusts with it.
fn key() -> (berth_release::signature::SigningKey, TrustedKeys) {
    let key = secret_key_from_seed([7; 32]);
    let trusted = TrustedKeys::new(&[public_key_hex(&key)], 1).unwrap();
    (key, trusted)
}

/// `index` as published, and its signature file by `key`.
fn signed(index: &Index, key: &berth_release::signature::SigningKey) -> (Vec<u8>, Vec<u8>) {
    let bytes = index.to_bytes();
    let sig = Signatures::sign_all(&bytes, std::slice::from_ref(key)).to_bytes();
    (bytes, sig)
}

#[test]
fn a_signed_index_for_this_channel_is_accepted_and_its_floor_returned() {
    let (agent, _d) = on_a("1.0.0");
    let (key, trusted) = key();
    let (bytes, sig) = signed(&index(&["1.1.0"]), &key);
    let (idx, floor, found) = agent.judge(&bytes, &sig, &trusted, "stable", NOW, false).unwrap();
    assert_eq!((idx.sequence, floor.sequence), (5, 5));
    assert_eq!(floor.index_sha256, Some(berth_release::artifact::sha256(&bytes)));
    assert!(matches!(found, Found::Update(r) if r.version == "1.1.0"));
}

#[test]
fn an_index_for_another_channel_expired_or_signed_by_a_stranger_is_refused() {
    let (agent, _d) = on_a("1.0.0");
    let (key, trusted) = key();
    let (bytes, sig) = signed(&index(&["1.1.0"]), &key);
    let e = agent.judge(&bytes, &sig, &trusted, "beta", NOW, false).unwrap_err();
    assert!(matches!(&e, Rejected::Channel { expected, found } if expected == "beta" && found == "stable"), "{e}");
    let e = agent.judge(&bytes, &sig, &trusted, "stable", Timestamp(1_800_086_400), false).unwrap_err();
    assert!(matches!(e, Rejected::Expired { .. }), "{e}");
    let stranger = secret_key_from_seed([8; 32]);
    let (_, other_sig) = signed(&index(&["1.1.0"]), &stranger);
    let e = agent.judge(&bytes, &other_sig, &trusted, "stable", NOW, false).unwrap_err();
    assert!(matches!(e, Rejected::Signature(_)), "{e}");
    // Signed, but not an index.
    let junk = b"{}".to_vec();
    let junk_sig = Signatures::sign_all(&junk, &[key]).to_bytes();
    let e = agent.judge(&junk, &junk_sig, &trusted, "stable", NOW, false).unwrap_err();
    assert!(matches!(e, Rejected::Index(IndexError::Syntax(_))), "{e}");
}

#[test]
fn an_index_below_the_replay_floor_is_refused_and_an_equal_one_only_with_the_same_bytes() {
    let (mut agent, _d) = on_a("1.0.0");
    let (key, trusted) = key();
    let (bytes, sig) = signed(&index(&["1.1.0"]), &key);
    agent.state.last_sequence = Some(6);
    let e = agent.judge(&bytes, &sig, &trusted, "stable", NOW, false).unwrap_err();
    assert!(matches!(e, Rejected::Replayed { got: 5, last: 6 }), "{e}");
    // The floor of floor.json counts when state.json lost it.
    agent.state.last_sequence = None;
    trust::save_floor(&agent.state_dir, Floor { sequence: 6, index_sha256: None }).unwrap();
    let e = agent.judge(&bytes, &sig, &trusted, "stable", NOW, false).unwrap_err();
    assert!(matches!(e, Rejected::Replayed { got: 5, last: 6 }), "{e}");
    // The same sequence: the very bytes accepted before pass, other bytes do not.
    let (_, floor, _) = {
        trust::save_floor(&agent.state_dir, Floor { sequence: 1, index_sha256: None }).unwrap();
        agent.judge(&bytes, &sig, &trusted, "stable", NOW, false).unwrap()
    };
    agent.state.set_floor(floor);
    agent.judge(&bytes, &sig, &trusted, "stable", NOW, false).unwrap();
    let (other, other_sig) = signed(&index(&["1.1.0", "1.2.0"]), &key);
    let e = agent.judge(&other, &other_sig, &trusted, "stable", NOW, false).unwrap_err();
    assert!(matches!(e, Rejected::SameSequence { sequence: 5, .. }), "{e}");
}

/// Staged `version` in `slot` as the state records it, at rest (staged).
fn record_staged(agent: &mut Agent, slot: Slot, version: &str) {
    agent.state.staged = Some(Staged { slot, version: version.into(), at: Timestamp(0) });
    agent.state.slots.insert(slot.name().into(), version.into());
    agent.state.rest();
}

#[test]
fn a_failed_trial_in_the_other_slot_is_recorded_then_the_slot_cleared() {
    let (mut agent, _d) = host(Slot::A, "1.0.0", Slots::new(FALLBACK, FAILED));
    record_staged(&mut agent, Slot::B, "1.1.0");
    agent.notice_rollback().unwrap();
    assert_eq!(agent.slots().unwrap().get(Slot::B), SlotAttrs::EMPTY, "cleared");
    assert_eq!(agent.slots().unwrap().get(Slot::A), FALLBACK, "the running slot is left alone");
    let st = &agent.state;
    assert_eq!(st.phase(), Phase::RolledBack);
    assert_eq!(st.staged, None);
    assert_eq!(st.slots.get("b"), None);
    assert!(st.rolled_back.iter().any(|r| r.version == "1.1.0" && r.slot == Slot::B && !r.manual), "{st:?}");
    let e = st.last_error.as_deref().unwrap_or("");
    assert!(e.starts_with("rolled back: 1.1.0 in ROOT-B did not boot to health"), "{e}");
    // Saved before the slot was cleared.
    let saved = State::load(&agent.state_dir);
    assert!(saved.rolled_back("1.1.0") && saved.phase() == Phase::RolledBack, "{saved:?}");
    // Noticed once: the next look finds nothing.
    agent.notice_rollback().unwrap();
    assert_eq!(agent.state.rolled_back.len(), 1);
    // It is not offered again.
    assert_eq!(chosen(&agent, &index(&["1.1.0"]), NOW, false), "up to date");
}

#[test]
fn a_failed_slot_whose_version_the_state_lost_is_recorded_as_unknown() {
    let (mut agent, _d) = host(Slot::B, "2.0.0", Slots::new(FAILED, GOOD));
    agent.notice_rollback().unwrap();
    assert!(agent.state.rolled_back("an unknown version"), "{:?}", agent.state);
    assert_eq!(agent.slots().unwrap().get(Slot::A), SlotAttrs::EMPTY);
}

#[test]
fn nothing_is_noticed_while_the_running_slot_is_on_trial() {
    // B runs its trial; A is the fallback; nothing failed.
    let slots = Slots::new(FALLBACK, ON_TRIAL);
    let (mut agent, _d) = host(Slot::B, "2.0.0", slots);
    record_staged(&mut agent, Slot::B, "2.0.0");
    agent.notice_rollback().unwrap();
    assert_eq!(agent.slots().unwrap(), slots);
    assert_eq!((agent.state.phase(), agent.state.rolled_back.len()), (Phase::Staged, 0));
}

#[test]
fn a_staged_record_the_attributes_do_not_back_is_forgotten() {
    // A cut between clearing B and setting its attributes: the state says staged, B says no.
    let (mut agent, _d) = on_a("1.0.0");
    record_staged(&mut agent, Slot::B, "1.1.0");
    agent.notice_rollback().unwrap();
    assert_eq!((agent.state.phase(), agent.state.staged.as_ref()), (Phase::Idle, None));
    assert!(agent.state.rolled_back.is_empty());
}

#[test]
fn mark_good_marks_the_trial_slot_and_forgets_it_as_staged() {
    let (mut agent, _d) = host(Slot::B, "2.0.0", Slots::new(FALLBACK, ON_TRIAL));
    record_staged(&mut agent, Slot::B, "2.0.0");
    agent.state.available = Some("2.0.0".into());
    let msg = agent.mark_good().unwrap();
    assert_eq!(msg, "marked ROOT-B (2.0.0) good");
    let slots = agent.slots().unwrap();
    assert!(slots.get(Slot::B).successful && slots.get(Slot::B).priority > slots.get(Slot::A).priority);
    assert_eq!(slots.get(Slot::A), FALLBACK, "the old slot stays the fallback");
    let st = &agent.state;
    assert_eq!((st.phase(), st.staged.as_ref(), st.available.as_ref()), (Phase::Idle, None, None));
    assert_eq!(st.slots.get("b").map(String::as_str), Some("2.0.0"));
    assert_eq!(agent.mark_good().unwrap(), "ROOT-B (2.0.0) was already marked good");
}

#[test]
fn mark_good_with_an_update_waiting_in_the_other_slot_leaves_it_staged() {
    let slots = Slots::FRESH.mark_good(Slot::A).unwrap().begin_write(Slot::B).unwrap();
    let slots = slots.staged(Slot::B, DEFAULT_TRIES).unwrap();
    let (mut agent, _d) = host(Slot::A, "1.0.0", slots);
    record_staged(&mut agent, Slot::B, "1.1.0");
    let msg = agent.mark_good().unwrap();
    assert_eq!(msg, "ROOT-A (1.0.0) is good; an update waits in ROOT-B");
    assert_eq!(agent.slots().unwrap(), slots, "nothing written");
    assert_eq!(agent.state.phase(), Phase::Staged);
    assert!(agent.state.staged.is_some());
}

#[test]
fn mark_good_then_notices_a_rollback_of_the_other_slot() {
    // Back on A after B failed; A's own mark-good run is where the rollback is noticed.
    let (mut agent, _d) = host(Slot::A, "1.0.0", Slots::new(FALLBACK, FAILED));
    record_staged(&mut agent, Slot::B, "1.1.0");
    agent.mark_good().unwrap();
    assert_eq!(agent.state.phase(), Phase::RolledBack);
    assert!(agent.state.rolled_back("1.1.0"));
    assert_eq!(agent.slots().unwrap().get(Slot::B), SlotAttrs::EMPTY);
}

/// A reboot command that leaves `marker` behind (so the test sees whether it ran).
fn rebooter(agent: &mut Agent, marker: &Path) {
    agent.reboot_command = vec!["touch".into(), marker.display().to_string()];
}

fn staged_host(strategy: Strategy) -> (Agent, tempfile::TempDir, std::path::PathBuf) {
    let slots = Slots::FRESH.mark_good(Slot::A).unwrap().begin_write(Slot::B).unwrap();
    let (mut agent, dir) = host(Slot::A, "1.0.0", slots.staged(Slot::B, DEFAULT_TRIES).unwrap());
    record_staged(&mut agent, Slot::B, "2.0.0");
    agent.config.strategy = strategy;
    let marker = dir.path().join("rebooted");
    rebooter(&mut agent, &marker);
    (agent, dir, marker)
}

#[test]
fn strategy_off_stages_and_never_reboots() {
    let (mut agent, _d, marker) = staged_host(Strategy::Off);
    let msg = agent.maybe_reboot(NOW).unwrap();
    assert_eq!(msg, "2.0.0 staged; strategy off: reboot to switch (berthctl reboot)");
    assert!(!marker.exists(), "rebooted");
    assert_eq!(agent.state.phase(), Phase::Staged);
}

#[test]
fn strategy_immediate_reboots_at_once_and_a_reboot_that_fails_stays_staged() {
    let (mut agent, _d, marker) = staged_host(Strategy::Immediate);
    assert_eq!(agent.maybe_reboot(NOW).unwrap(), "rebooting into 2.0.0");
    assert!(marker.exists(), "the reboot command did not run");
    assert_eq!(agent.state.phase(), Phase::Rebooting);
    assert_eq!(State::load(&agent.state_dir).phase(), Phase::Rebooting, "saved before the reboot");
    // The next run of the lock's holder finds it still staged (the reboot never came).
    agent.reload_locked();
    assert_eq!(agent.state.phase(), Phase::Staged);
    agent.reboot_command = vec!["false".into()];
    let e = agent.maybe_reboot(NOW).unwrap_err();
    assert!(format!("{e:#}").starts_with("false: exit status: 1"), "{e:#}");
    assert_eq!(agent.state.phase(), Phase::Staged);
}

#[test]
fn nothing_staged_means_nothing_to_reboot() {
    let (mut agent, _d) = on_a("1.0.0");
    agent.config.strategy = Strategy::Immediate;
    let marker = _d.path().join("rebooted");
    rebooter(&mut agent, &marker);
    assert_eq!(agent.maybe_reboot(NOW).unwrap(), "nothing staged");
    assert!(!marker.exists());
}

#[test]
fn a_reboot_is_refused_unless_the_agent_is_at_staged() {
    let (mut agent, _d, marker) = staged_host(Strategy::Immediate);
    // Mid-check (an already staged update found again): the check must come to rest first.
    agent.state.begin_check().unwrap();
    let e = agent.maybe_reboot(NOW).unwrap_err();
    assert_eq!(e.downcast_ref::<PhaseError>(), Some(&PhaseError { from: Phase::Checking, to: Phase::Rebooting }));
    assert!(!marker.exists(), "rebooted from the wrong phase");
}

#[test]
fn strategy_fleetlock_reboots_only_with_the_lock_and_records_why_not() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let free = Arc::new(AtomicBool::new(false));
    let lock_free = free.clone();
    let server = berth_testkit::Server::start(move |r| {
        let granted = r.path() == "/v1/pre-reboot" && lock_free.load(Ordering::SeqCst);
        if granted {
            berth_testkit::Response::status(200).into()
        } else {
            berth_testkit::Response::json(409, r#"{"kind":"failed_lock","value":"held by another-host"}"#).into()
        }
    })
    .unwrap();
    let f = FleetLock { url: server.url(), group: "workers".into(), token_file: None, report: false };
    let (mut agent, _d, marker) = staged_host(Strategy::FleetLock(f));
    let e = agent.maybe_reboot(NOW).unwrap_err();
    assert!(format!("{e:#}").contains("reboot lock was not given"), "{e:#}");
    let refusal = agent.state.fleetlock.clone().unwrap();
    assert_eq!((refusal.kind.as_str(), refusal.status), ("failed_lock", Some(409)));
    assert!(refusal.message.ends_with("409: failed_lock: held by another-host"), "{}", refusal.message);
    assert!(!marker.exists(), "rebooted without the lock");
    assert_eq!(agent.state.phase(), Phase::Staged);
    // The status shows the refusal's kind.
    let s = crate::status::status(&agent, None);
    assert_eq!(s.fleetlock.as_ref().map(|f| f.kind.as_str()), Some("failed_lock"));

    free.store(true, Ordering::SeqCst);
    assert_eq!(agent.maybe_reboot(NOW).unwrap(), "rebooting into 2.0.0");
    assert!(marker.exists());
    assert_eq!(agent.state.fleetlock, None, "the refusal is cleared once the lock is given");
}
