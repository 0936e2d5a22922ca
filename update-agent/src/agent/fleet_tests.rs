//! The agent's reports to the fleet server around a reboot (crate::fleet_report): the host says
//! "rebooting" before the reboot command runs, and a fleet server that fails or is not there
//! never stops the reboot.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use berth_release::config::FleetLock;
use berth_release::fleet::{ReportRequest, node_id};
use berth_slot::{DEFAULT_TRIES, Slot, Slots};
use berth_testkit::{Response, Server};

use super::*;
use crate::disk::MemorySlots;
use crate::state::Phase;

/// A host on A (1.0.0, good) with 2.0.0 staged in B, strategy immediate, reporting to `url`;
/// its reboot command creates the returned marker.
fn staged_host(url: &str) -> (Agent, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let slots = Slots::FRESH.mark_good(Slot::A).unwrap().begin_write(Slot::B).unwrap();
    let store = Box::new(MemorySlots(Cell::new(slots.staged(Slot::B, DEFAULT_TRIES).unwrap())));
    let disk = BootDisk::image(dir.path().join("no-disk.img"), Slot::A);
    let mut agent = Agent::for_test_with(store, disk, "1.0.0", &dir.path().join("state"));
    agent.state.staged = Some(Staged { slot: Slot::B, version: "2.0.0".into(), at: Timestamp(0) });
    agent.state.slots.insert("b".into(), "2.0.0".into());
    agent.state.rest();
    agent.config.strategy = Strategy::Immediate;
    agent.config.fleet = Some(FleetLock { url: url.into(), group: "workers".into(), token_file: None, report: true });
    let marker = dir.path().join("rebooted");
    agent.reboot_command = vec!["touch".into(), marker.display().to_string()];
    (agent, dir, marker)
}

#[test]
fn the_fleet_hears_rebooting_before_the_reboot() {
    // What the server saw, and whether the reboot had happened when it saw it.
    let seen: Arc<Mutex<Vec<(ReportRequest, bool)>>> = Arc::default();
    let marker_at: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let server = {
        let (seen, marker_at) = (seen.clone(), marker_at.clone());
        Server::start(move |r| {
            let rebooted = marker_at.lock().unwrap().as_ref().is_some_and(|m| m.exists());
            seen.lock().unwrap().push((serde_json::from_slice(&r.body).unwrap(), rebooted));
            Response::status(200).into()
        })
        .unwrap()
    };
    let (mut agent, _d, marker) = staged_host(&server.url());
    *marker_at.lock().unwrap() = Some(marker.clone());
    assert_eq!(agent.maybe_reboot(Timestamp::now()).unwrap(), "rebooting into 2.0.0");
    assert!(marker.exists());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one report");
    let (r, rebooted) = &seen[0];
    assert!(!rebooted, "reported after the reboot command ran");
    assert_eq!(r.client_params.id, node_id(&agent.machine_id));
    assert_eq!(r.client_params.group, "workers");
    let rep = &r.report;
    assert_eq!(
        (rep.state.as_str(), rep.version.as_str(), rep.slot.as_str(), rep.staged.as_deref()),
        ("rebooting", "1.0.0", "a", Some("2.0.0"))
    );
    assert_eq!(rep.hostname, crate::fleet_report::hostname());
    assert_eq!((rep.interval_seconds, rep.jitter_seconds), (3600, 600));
    assert_eq!(server.requests()[0].path(), "/berth/v1/report");
}

#[test]
fn a_failing_fleet_server_never_stops_the_reboot() {
    let failing = Server::start(|_| Response::status(500).body("etcd is down").into()).unwrap();
    let dead = format!("http://127.0.0.1:{}", berth_testkit::dead_port());
    for url in [failing.url(), dead] {
        let (mut agent, _d, marker) = staged_host(&url);
        assert_eq!(agent.maybe_reboot(Timestamp::now()).unwrap(), "rebooting into 2.0.0", "{url}");
        assert!(marker.exists(), "{url}: no reboot");
        assert_eq!(agent.state.phase(), Phase::Rebooting);
    }
    assert_eq!(failing.requests().len(), 1, "asked once, not retried");
}

#[test]
fn no_report_unless_asked_for() {
    let server = Server::start(|_| Response::status(200).into()).unwrap();
    let (mut agent, _d, marker) = staged_host(&server.url());
    if let Some(f) = agent.config.fleet.as_mut() {
        f.report = false;
    }
    agent.maybe_reboot(Timestamp::now()).unwrap();
    assert!(marker.exists());
    let (mut agent, _d, _) = staged_host(&server.url());
    agent.config.fleet = None;
    agent.maybe_reboot(Timestamp::now()).unwrap();
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}
