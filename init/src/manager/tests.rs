//! The boot transaction with targets only (no process is started): boot-complete.target waits
//! for the boot, units ordered after it start once it is reached and never when it failed.

use std::path::Path;

use super::*;

const MARK_GOOD: &str = "mark-good.target";
const UNITS: &str = "usr/lib/systemd/system";

/// A root with a stand-in for berth-mark-good.service (a target, so nothing is forked),
/// enabled as the builder enables the real one.
fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        MARK_GOOD,
        "[Unit]\nDescription=Mark the booted slot good\nRequires=boot-complete.target\nAfter=boot-complete.target\n\
         [Install]\nWantedBy=boot-complete.target\n",
    );
    link(dir.path(), "boot-complete.target.wants", MARK_GOOD);
    dir
}

fn write(root: &Path, name: &str, text: &str) {
    let dir = root.join(UNITS);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn link(root: &Path, wants: &str, name: &str) {
    let dir = root.join(UNITS).join(wants);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(format!("../{name}"), dir.join(name)).unwrap();
}

fn manager(root: &Path) -> Manager {
    let loader = Loader::new(root, HostInfo::detect(root));
    Manager::with_parts(loader, Instant::now(), None, None, None)
}

fn state(m: &Manager, unit: &str) -> &'static str {
    m.runs.get(unit).map_or("inactive", |r| r.state.active())
}

/// The job of `unit` waits (directly) for `other`'s.
fn waits_for(m: &Manager, unit: &str, other: &str) -> bool {
    m.jobs.iter().any(|j| j.unit == unit && j.after.iter().any(|a| a == other))
}

#[test]
fn units_after_boot_complete_start_once_it_is_reached() {
    let dir = root();
    let mut m = manager(dir.path());
    m.boot();
    assert!(waits_for(&m, MARK_GOOD, BOOT_COMPLETE));
    assert!(waits_for(&m, BOOT_COMPLETE, "multi-user.target"));
    assert!(!waits_for(&m, BOOT_COMPLETE, MARK_GOOD), "would deadlock");
    assert_eq!(m.boot_health(), BootHealth::Pending);
    m.tick();
    assert_eq!(m.boot_health(), BootHealth::Reached);
    assert_eq!(state(&m, BOOT_COMPLETE), "active");
    assert_eq!(state(&m, MARK_GOOD), "active");
    assert!(m.jobs.is_empty(), "{:?}", m.jobs);
}

/// Enabled in multi-user.target as well (part of default.target's transaction, which
/// boot-complete.target waits for): still no deadlock.
#[test]
fn no_deadlock_when_the_boot_itself_pulls_in_a_unit_ordered_after_boot_complete() {
    let dir = root();
    link(dir.path(), "multi-user.target.wants", MARK_GOOD);
    write(dir.path(), "later.target", "[Unit]\nAfter=mark-good.target\n");
    link(dir.path(), "multi-user.target.wants", "later.target");
    let mut m = manager(dir.path());
    m.boot();
    assert!(!waits_for(&m, BOOT_COMPLETE, MARK_GOOD));
    assert!(!waits_for(&m, BOOT_COMPLETE, "later.target"), "transitively after it");
    m.tick();
    assert_eq!(m.boot_health(), BootHealth::Reached);
    assert_eq!(state(&m, MARK_GOOD), "active");
    assert_eq!(state(&m, "later.target"), "active");
    assert!(m.jobs.is_empty(), "{:?}", m.jobs);
}

/// A health check boot-complete.target requires fails: boot-complete.target fails with the
/// reason, and the unit ordered after it is not started. Here the check needs
/// network-online.target, which requires berth-netd.service (the link its `RequiredBy=` makes),
/// and berth-netd's start fails (an `Assert…=` that does not hold stands for a netd that got
/// no lease within its `TimeoutStartSec=`: the start job fails either way, here without a process).
#[test]
fn a_failed_requirement_fails_boot_complete_and_nothing_after_it_starts() {
    let dir = root();
    write(
        dir.path(),
        "health-check.target",
        "[Unit]\nRequires=network-online.target\nAfter=network-online.target\n\
         [Install]\nRequiredBy=boot-complete.target\n",
    );
    link(dir.path(), "boot-complete.target.requires", "health-check.target");
    write(
        dir.path(),
        "berth-netd.service",
        "[Unit]\nBefore=network-online.target\nAssertPathExists=/no/lease\n\
         [Service]\nType=notify\nExecStart=/usr/bin/berth-netd\n",
    );
    link(dir.path(), "network-online.target.requires", "berth-netd.service");
    let mut m = manager(dir.path());
    m.boot();
    m.tick();
    assert_eq!(
        m.boot_health(),
        BootHealth::Failed("health-check.target failed (dependency network-online.target failed)".into())
    );
    assert_eq!(state(&m, "berth-netd.service"), "failed");
    assert_eq!(state(&m, "network-online.target"), "failed");
    assert_eq!(state(&m, BOOT_COMPLETE), "failed");
    assert_eq!(state(&m, MARK_GOOD), "failed");
    assert_eq!(m.outcome(MARK_GOOD).1.as_deref(), Some("dependency boot-complete.target failed"));
    assert!(m.jobs.is_empty(), "{:?}", m.jobs);
}

/// boot-complete.target cannot even be planned (it requires a unit that does not exist).
#[test]
fn boot_complete_that_cannot_start_is_a_failure() {
    let dir = root();
    std::fs::create_dir_all(dir.path().join(UNITS).join("boot-complete.target.requires")).unwrap();
    std::os::unix::fs::symlink("/nowhere", dir.path().join(UNITS).join("boot-complete.target.requires/gone.service"))
        .unwrap();
    let mut m = manager(dir.path());
    m.boot();
    assert!(matches!(m.boot_health(), BootHealth::Failed(_)), "{:?}", m.boot_health());
    m.tick();
    assert_eq!(state(&m, MARK_GOOD), "inactive");
}

#[test]
fn boot_complete_waits_for_everything_but_what_is_ordered_after_it() {
    let job = |u: &str, after: &[&str]| (u.to_string(), after.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let jobs = [
        job("basic.target", &[]),
        job("multi-user.target", &["basic.target"]),
        job("health.service", &[]),
        job(BOOT_COMPLETE, &["health.service"]),
        job("mark-good.service", &[BOOT_COMPLETE]),
        job("after-mark.service", &["mark-good.service", "basic.target"]),
    ];
    assert_eq!(boot_complete_waits(&jobs), ["basic.target", "multi-user.target", "health.service"]);
}

/// M11: `MAINPID=` names a process outside the unit's cgroup (PID 1, another unit's main
/// process, this test's own process, a pid that does not run): logged and ignored, the unit's
/// main process and the other unit's entry stay as they were.
#[test]
fn m11_mainpid_outside_the_units_cgroup_is_ignored() {
    let dir = root();
    for name in ["a.service", "b.service"] {
        write(dir.path(), name, "[Service]\nType=notify\nNotifyAccess=all\nExecStart=/bin/true\n");
    }
    let mut m = manager(dir.path());
    m.set.load_more(&m.loader, &["a.service", "b.service"]);
    let (a_main, b_main) = (4_000_001, 4_000_002);
    m.pids.insert(a_main, ("a.service".into(), Role::Main));
    m.pids.insert(b_main, ("b.service".into(), Role::Main));
    m.run_mut("a.service").main_pid = Some(Pid::from_raw(a_main));
    m.run_mut("b.service").main_pid = Some(Pid::from_raw(b_main));
    let own = std::process::id().to_string();
    for value in ["1", &b_main.to_string(), &own, "4000003", "-5", "x"] {
        let fields = notify::parse(&format!("MAINPID={value}\nSTATUS=sent {value}\n"));
        m.on_notify(notify::Message { pid: a_main, fields });
        assert_eq!(m.runs["a.service"].main_pid, Some(Pid::from_raw(a_main)), "MAINPID={value} was taken");
        // The rest of the message still counts.
        assert_eq!(m.runs["a.service"].status_text.as_deref(), Some(format!("sent {value}").as_str()));
    }
    assert_eq!(m.pids.get(&b_main), Some(&("b.service".to_string(), Role::Main)));
    assert_eq!(m.runs["b.service"].main_pid, Some(Pid::from_raw(b_main)));
    assert!(!m.pids.contains_key(&1));
    assert_eq!(m.pids.len(), 2, "{:?}", m.pids);
}

/// As systemd's shutdown.target: a unit with `DefaultDependencies=no` (the guest agent, which must
/// answer the request that began the shutdown) is not stopped in order; it goes with the final
/// SIGTERM to every process, and the ordered stop is done without it.
#[test]
fn the_shutdown_stops_what_conflicts_with_it_and_leaves_default_dependencies_no_to_the_end() {
    let dir = root();
    write(
        dir.path(),
        "early.target",
        "[Unit]\nDescription=Early\nDefaultDependencies=no\n[Install]\nWantedBy=sysinit.target\n",
    );
    link(dir.path(), "sysinit.target.wants", "early.target");
    let mut m = manager(dir.path());
    m.boot();
    for _ in 0..10 {
        m.tick();
    }
    assert_eq!(state(&m, "early.target"), "active");
    assert_eq!(state(&m, "multi-user.target"), "active");
    m.shutdown();
    assert!(!m.jobs.iter().any(|j| j.unit == "early.target"), "early.target queued to stop");
    assert!(m.jobs.iter().any(|j| j.unit == "multi-user.target"), "multi-user.target not queued to stop");
    for _ in 0..10 {
        m.tick();
    }
    assert_eq!(state(&m, "multi-user.target"), "inactive");
    assert_eq!(state(&m, "early.target"), "active");
    assert!(m.stopped(), "the ordered stop waits for a unit it does not stop");
}

/// What first-boot provisioning from the cloud metadata does after applying a document: the
/// units the default target wants after the reload, less those it wanted before, are the ones
/// the document enabled; started, they run although the boot is under way.
#[test]
fn a_reload_shows_the_units_a_document_enabled_and_they_start() {
    let dir = root();
    let r = dir.path();
    write(r, "image.target", "[Unit]\nDescription=in the image\n[Install]\nWantedBy=multi-user.target\n");
    link(r, "multi-user.target.wants", "image.target");
    let mut m = manager(r);
    m.boot();
    m.tick();
    let before = m.default_wants();
    assert!(before.contains("image.target") && before.contains("multi-user.target"), "{before:?}");
    // What provisioning writes: the unit in /etc/systemd/system and its .wants link.
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(etc.join("multi-user.target.wants")).unwrap();
    std::fs::write(etc.join("doc.target"), "[Unit]\nDescription=from the document\n").unwrap();
    std::os::unix::fs::symlink("../doc.target", etc.join("multi-user.target.wants/doc.target")).unwrap();
    assert!(!m.default_wants().contains("doc.target"), "seen before the reload");
    m.reload();
    let new: Vec<String> = m.default_wants().difference(&before).cloned().collect();
    assert_eq!(new, ["doc.target"]);
    assert_eq!(m.start("doc.target").unwrap(), "doc.target");
    m.tick();
    assert_eq!(state(&m, "doc.target"), "active");
    assert_eq!(state(&m, "image.target"), "active");
}
