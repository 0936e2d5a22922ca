//! A fleet in QEMU (issue 20's Must-show): three `minimal` hosts (1 vCPU, 512 MiB each, TCG) with
//! strategy `fleetlock` in group `workers` of one slot, the real FleetLock server
//! (`berth_fleet::server`, what `berth fleet serve` runs) in this process over a test etcd on
//! 127.0.0.1, and their channel in a bucket of moto's S3 server on 127.0.0.1 (published with
//! `berth publish --repo s3://…`'s code, read by the guests over plain HTTP through a guestfwd).
//!
//! 1. **Converge**: 1.1.0 published; all three hosts stage it, reboot one at a time, end on it
//!    marked good, and give the slot back. etcd's own revision history of the semaphore
//!    (`berth_fleet::history`) shows never two holders and one held interval per host; each
//!    console shows one more boot; the fleet view shows 3 hosts on 1.1.0, idle, no holder, none
//!    silent.
//! 2. **Wave**: 1.2.0 published with a `--rollout` whose start and duration are chosen from the
//!    hosts' positions (`berth_release::rollout::position` of each machine-id), so that the first
//!    host's position has come and the second's comes only T2 seconds later: only the first
//!    host stages 1.2.0 and takes the slot; the others keep 1.1.0, nothing staged, while they
//!    keep checking.
//! 3. **Pull-back**: once the first host holds the slot, `--pull-back 1.2.0`; past the second
//!    host's turn (and two more checks), the others are still on 1.1.0 and never staged 1.2.0;
//!    the first host keeps 1.2.0.
//!
//! Three VMs at once on two cores under TCG take long: behind `BERTH_TEST_SLOW=1`.

mod common;
#[path = "common/fleet.rs"]
mod fleet_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_builder::publish::PublishOptions;
use berth_fleet::history;
use berth_fleet::status::FleetStatus;
use berth_qemu_tests::Machine;
use berth_release::Timestamp;
use berth_release::rollout::position;
use common::host::BOOT_COMPLETE;
use common::updates::{agent, marked_good, status, wait_status};
use fleet_common::*;

/// A boot under TCG with three guests on two cores.
const BOOT: Duration = Duration::from_secs(900);
/// All three hosts staged, rebooted one by one and back.
const CONVERGE: Duration = Duration::from_secs(3600);
/// Between two samples of the fleet view.
const SAMPLE: Duration = Duration::from_secs(2);

struct Host {
    name: String,
    machine: Machine,
    machine_id: String,
    /// The id it asks the FleetLock server with.
    id: String,
}

/// The host's report in `s`.
fn report<'a>(s: &'a FleetStatus, h: &Host) -> Option<&'a berth_fleet::status::HostStatus> {
    s.hosts.iter().find(|x| x.id == h.id)
}

fn holders(s: &FleetStatus) -> Vec<String> {
    s.groups.iter().filter(|g| g.group == GROUP).flat_map(|g| g.holders.iter().map(|h| h.id.clone())).collect()
}

fn boots(m: &Machine) -> usize {
    m.console().matches(BOOT_COMPLETE).count()
}

/// Samples the fleet view until `done` holds, calling `each` on every sample (its invariants),
/// and logs every change of what the hosts report (version, state, staged) and of the holder.
fn watch(
    fleet: &FleetServer,
    hosts: &[Host],
    timeout: Duration,
    what: &str,
    mut each: impl FnMut(&FleetStatus),
    done: impl Fn(&FleetStatus) -> bool,
) -> FleetStatus {
    let start = Instant::now();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let s = fleet.status();
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        for h in hosts {
            let line = report(&s, h).map_or("no report".to_string(), |r| {
                format!("{} {} staged {:?} slot {}", r.version, r.state, r.staged, r.slot)
            });
            now.insert(h.name.clone(), line);
        }
        let who: Vec<String> = holders(&s)
            .iter()
            .map(|id| hosts.iter().find(|h| &h.id == id).map_or(id.clone(), |h| h.name.clone()))
            .collect();
        now.insert("holder".into(), format!("{who:?}"));
        for (k, v) in &now {
            if last.get(k) != Some(v) {
                eprintln!("[{what} +{:.0} s] {k}: {v}", secs(start));
            }
        }
        last = now;
        each(&s);
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; the fleet view:\n{}", s.human());
        std::thread::sleep(SAMPLE);
    }
}

/// Each host's agent: running `version`, marked good; its status.
fn check_host(h: &Host, version: &str) -> berth_update::report::Status {
    let mut a = agent(&h.machine);
    wait_status(&mut a, Duration::from_secs(300), &format!("{} on {version}, marked good", h.name), |s| {
        s.running.version.as_deref() == Some(version) && marked_good(s)
    })
}

#[test]
fn a_fleet_converges_one_reboot_at_a_time() {
    if !berth_qemu_tests::slow_enabled("a_fleet_converges_one_reboot_at_a_time") {
        return;
    }
    let t0 = Instant::now();
    let fleet = FleetServer::start();
    let repo = S3Repository::start();
    let v1 = image("1.0.0");
    let v11 = image("1.1.0");
    let v12 = image("1.2.0");
    eprintln!("FIGURE builds: {:.0} s", secs(t0));

    // Three hosts on 1.0.0, each with a machine-id of its own (made on first boot).
    let booted = Instant::now();
    let machines: Vec<(String, Machine)> =
        (1..=3).map(|n| format!("fleet-{n}")).map(|name| (name.clone(), boot(&v1, &name, &repo, &fleet))).collect();
    let mut hosts = Vec::new();
    for (name, mut machine) in machines {
        machine.wait_for(BOOT_COMPLETE, BOOT).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut a = agent(&machine);
        wait_status(&mut a, Duration::from_secs(300), "slot a marked good", marked_good);
        let machine_id = a.read("/etc/machine-id").unwrap_or_else(|e| panic!("{name}: {e}")).trim().to_string();
        drop(a);
        let id = berth_release::fleet::node_id(&machine_id);
        eprintln!("{name}: machine-id {machine_id}, FleetLock id {id}");
        hosts.push(Host { name, machine, machine_id, id });
    }
    let ids: std::collections::BTreeSet<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three machine-ids");
    eprintln!("FIGURE boot of three hosts: {:.0} s", secs(booted));

    // 1. Converge on 1.1.0.
    let phase1 = Instant::now();
    let boots_before: Vec<usize> = hosts.iter().map(|h| boots(&h.machine)).collect();
    repo.publish(PublishOptions { image: Some(v11.clone()), ..PublishOptions::default() });
    let mut staged_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut most = 0;
    let s = watch(
        &fleet,
        &hosts,
        CONVERGE,
        "converge",
        |s| {
            let n = holders(s).len();
            most = most.max(n);
            assert!(n <= 1, "two holders of one slot: {}", s.human());
            for h in &hosts {
                if report(s, h).is_some_and(|r| r.staged.as_deref() == Some("1.1.0") || r.version == "1.1.0") {
                    staged_at.entry(h.name.clone()).or_insert_with(|| secs(phase1));
                }
            }
        },
        |s| {
            holders(s).is_empty()
                && hosts.iter().all(|h| report(s, h).is_some_and(|r| r.version == "1.1.0" && r.state == "idle"))
        },
    );
    let converged = secs(phase1);
    eprintln!("FIGURE converge: {converged:.0} s; staged (first seen) at {staged_at:?}; most holders sampled {most}");
    for (h, before) in hosts.iter().zip(&boots_before) {
        let st = check_host(h, "1.1.0");
        assert_eq!(st.running.slot.name(), "b", "{}: {st:#?}", h.name);
        assert_eq!(boots(&h.machine), before + 1, "{}: one more boot", h.name);
    }
    // The fleet view: 3 hosts on 1.1.0, idle, no holder, none silent.
    assert_eq!(s.hosts.len(), 3, "{}", s.human());
    assert!(s.hosts.iter().all(|r| r.version == "1.1.0" && r.state == "idle" && !r.silent), "{}", s.human());
    assert_eq!(s.silent().count(), 0, "{}", s.human());
    assert!(holders(&s).is_empty(), "{}", s.human());
    eprintln!("fleet status after converging:\n{}", s.human());
    // etcd's history: never two holders; each host held the slot once and gave it back.
    let versions = fleet.history();
    assert!(history::overfull(&versions).is_empty(), "{:?}", history::overfull(&versions));
    let (max, at) = history::max_holders(&versions);
    assert_eq!(max, 1, "most holders at once (revision {at})");
    let holds = history::holds(&versions);
    for h in &hosts {
        let mine: Vec<_> = holds.iter().filter(|x| x.id == h.id).collect();
        assert_eq!(mine.len(), 1, "{}: {holds:?}", h.name);
        assert!(mine[0].freed.is_some(), "{} still holds: {holds:?}", h.name);
    }
    let mut order: Vec<_> = holds.iter().map(|x| (x.taken, x.freed)).collect();
    order.sort();
    assert!(order.windows(2).all(|w| w[0].1.is_some_and(|f| f <= w[1].0)), "overlapping holds: {holds:?}");
    eprintln!(
        "FIGURE phase 1: {:.0} s; semaphore versions {}; max holders {max}; holds {holds:?}",
        secs(phase1),
        versions.len()
    );

    // 2. A wave: hosts sorted by their positions in 1.2.0's rollout.
    let phase2 = Instant::now();
    let mut by_pos: Vec<(f64, usize)> =
        hosts.iter().enumerate().map(|(i, h)| (position(&h.machine_id, "1.2.0"), i)).collect();
    by_pos.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (p1, p2) = (by_pos[0].0, by_pos[1].0);
    let (first, rest) = (by_pos[0].1, [by_pos[1].1, by_pos[2].1]);
    // Host 2's turn comes T2 after the publish: long enough for host 1 to stage (phase 1's slowest
    // staging, twice, plus two minutes), at least 240 s.
    let slowest = staged_at.values().copied().fold(0.0, f64::max);
    let t2 = (2.0 * slowest + 120.0).clamp(240.0, 1200.0);
    // progress(t) = θ + t/D: host 1 (p1 < θ) may take it at once, host 2 at t = (p2 − θ)·D = T2.
    let theta = (p1 + p2) / 2.0;
    let d = t2 / (p2 - theta);
    assert!(d <= 365.0 * 86_400.0, "positions {p1} and {p2} too close for a rollout of at most a year");
    let back = (theta * d).round() as i64;
    let now = Timestamp::now();
    eprintln!(
        "wave: positions {:?}; θ {theta:.6}, D {d:.0} s, start now − {back} s; {}'s turn came {:.0} s ago, \
         {}'s comes in {t2:.0} s",
        by_pos.iter().map(|(p, i)| (hosts[*i].name.as_str(), *p)).collect::<Vec<_>>(),
        hosts[first].name,
        (theta - p1) * d,
        hosts[rest[0]].name
    );
    repo.publish(PublishOptions {
        image: Some(v12.clone()),
        rollout: Some(Duration::from_secs(d.round() as u64)),
        now: Some(Timestamp(now.0 - back)),
        expires: Duration::from_secs(back as u64 + 30 * 86_400),
        ..PublishOptions::default()
    });
    let published = Instant::now();
    let published_at = Timestamp::now();
    let never_staged = |s: &FleetStatus| {
        for &i in &rest {
            if let Some(r) = report(s, &hosts[i]) {
                assert_eq!(r.version, "1.1.0", "{} updated before its turn: {}", hosts[i].name, s.human());
                assert_ne!(r.staged.as_deref(), Some("1.2.0"), "{} staged 1.2.0: {}", hosts[i].name, s.human());
            }
        }
    };
    let s = watch(
        &fleet,
        &hosts,
        Duration::from_secs_f64(t2 - 20.0),
        "wave: the first host takes the slot",
        never_staged,
        |s| holders(s) == [hosts[first].id.clone()],
    );
    eprintln!("FIGURE wave: {} took the slot {:.0} s after the publish", hosts[first].name, secs(published));
    // The others keep checking, with nothing staged.
    for &i in &rest {
        let r = report(&s, &hosts[i]).expect("a report");
        assert!(r.last_check.is_some_and(|c| c >= published_at), "{} has not checked since: {r:?}", hosts[i].name);
        assert_eq!(r.staged, None, "{r:?}");
    }

    // 3. Pull 1.2.0 back while host 1 holds the slot.
    repo.publish(PublishOptions { pull_back: vec!["1.2.0".into()], ..PublishOptions::default() });
    eprintln!("pulled back 1.2.0 {:.0} s after its publish", secs(published));
    let until = Duration::from_secs_f64(t2 + 30.0);
    watch(
        &fleet,
        &hosts,
        until + Duration::from_secs(60),
        "pull-back: past the second host's turn",
        never_staged,
        |_| published.elapsed() > until,
    );
    let s = watch(&fleet, &hosts, BOOT, "pull-back: the first host back on 1.2.0", never_staged, |s| {
        holders(s).is_empty() && report(s, &hosts[first]).is_some_and(|r| r.version == "1.2.0" && r.state == "idle")
    });
    eprintln!("fleet status after the pull-back:\n{}", s.human());
    let st = check_host(&hosts[first], "1.2.0");
    eprintln!("{}: {:?} on {}", hosts[first].name, st.running.version, st.running.slot.name());
    for &i in &rest {
        let h = &hosts[i];
        let st = check_host(h, "1.1.0");
        assert_ne!(st.other.version.as_deref(), Some("1.2.0"), "{} wrote 1.2.0: {st:#?}", h.name);
        assert!(st.staged.is_none(), "{}: {st:#?}", h.name);
        assert!(st.last_check.is_some(), "{}: {st:#?}", h.name);
        // It went on checking past the second host's turn (the guest's clock is QEMU's RTC, the host's time).
        let mut a = agent(&h.machine);
        let later = status(&mut a);
        drop(a);
        let turn = published_at.0 + t2 as i64;
        eprintln!(
            "{}: last check {:?} ({} s after the second host's turn)",
            h.name,
            later.last_check,
            later.last_check.map_or(0, |c| c.0 - turn)
        );
        assert!(
            later.last_check.is_some_and(|c| c.0 > turn),
            "{} stopped checking before the second host's turn: {later:#?}",
            h.name
        );
    }
    let versions = fleet.history();
    let (max, _) = history::max_holders(&versions);
    assert_eq!(max, 1);
    let holds = history::holds(&versions);
    assert_eq!(holds.iter().filter(|x| x.id == hosts[first].id).count(), 2, "{holds:?}");
    for &i in &rest {
        assert_eq!(holds.iter().filter(|x| x.id == hosts[i].id).count(), 1, "{holds:?}");
    }
    eprintln!("FIGURE phases 2+3: {:.0} s; semaphore versions {}; max holders {max}", secs(phase2), versions.len());
    eprintln!("FIGURE total: {:.0} s", secs(t0));
}
