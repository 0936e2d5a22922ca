//! berth-init's service manager on the `container-host` image (it has bash and coreutils for
//! the units' scripts), units written through the guest agent into `/etc/systemd/system` and
//! started with `berthctl`: `Restart=` waits `RestartSec=` and counts, `StartLimitBurst=` stops
//! a unit that keeps failing, PID 1 reaps the orphans a unit leaves, and poweroff stops units in
//! reverse dependency order, killing one that ignores SIGTERM after its `TimeoutStopSec=`.
//!
//! All four on ONE boot (each boot of the container host costs CI minutes under TCG), in an
//! order where one check cannot disturb the next: the restarted unit is stopped before the
//! orphan count, and the poweroff comes last.

mod common;

use std::time::{Duration, Instant};

use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::timing::kernel_stamp;
use common::SERIAL;
use common::host::{Host, bash, boot_host, first_line, install_unit, run, unit_status, wait_exit_timed, wait_unit};

#[test]
fn service_manager_restarts_limits_reaps_and_stops_in_order() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = boot_host(None, false);
    h.wait_boot_complete();
    let mut a = h.agent();
    restart_always_waits_restart_sec_and_counts(&h, &mut a);
    start_limit_burst_leaves_a_failing_unit_failed(&mut a);
    orphans_of_a_unit_are_reaped(&mut a);
    poweroff_stops_units_in_reverse_order_and_kills_what_ignores_term(h, a);
}

/// `berthctl start UNIT`, whatever it answers (a failing unit's start may report the failure).
fn start(a: &mut Agent, unit: &str) -> berth_guest_agent::ExecResult {
    run(a, &["berthctl", "start", unit], Duration::from_secs(60))
}

fn restart_always_waits_restart_sec_and_counts(h: &Host, a: &mut Agent) {
    eprintln!("--- Restart= waits RestartSec= and counts");
    let unit = "berth-restart.service";
    install_unit(
        a,
        unit,
        "[Unit]\nDescription=restarted after RestartSec\n\n\
         [Service]\nExecStart=/bin/sleep infinity\nRestart=always\nRestartSec=2\n",
    );
    let r = start(a, unit);
    assert_eq!(r.status, Some(0), "berthctl start {unit}: {r:?}");
    let first = wait_unit(a, unit, Duration::from_secs(30), |s| s.active == "active" && s.main_pid.is_some());
    let old = first.main_pid.unwrap_or_default();
    assert_eq!(first.restarts.unwrap_or(0), 0, "{}", first.json);
    assert_eq!(a.read(&format!("/proc/{old}/comm")).unwrap().trim(), "sleep");

    // Timed from before the kill is sent, so the time to the new pid is at least RestartSec
    // however long the agent took.
    let killed = Instant::now();
    bash(a, &format!("kill -9 {old}"), Duration::from_secs(30));
    let mut seen_waiting = None;
    let next = loop {
        let s = unit_status(a, unit);
        if s.main_pid.is_some_and(|pid| pid != old) && s.active == "active" {
            break s;
        }
        if seen_waiting.is_none() {
            seen_waiting = Some(s.json.clone());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            h.fail(format!("{unit}: no new main pid 30 s after kill -9 {old}; last {}", s.json));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = killed.elapsed();
    eprintln!("{unit}: pid {old} killed, new main pid {:?} after {took:.2?}", next.main_pid);
    eprintln!("{unit} while waiting to restart: {}", seen_waiting.unwrap_or_default());
    assert!(took >= Duration::from_secs(2), "restarted {took:?} after the kill, before RestartSec=2");
    assert!(took < Duration::from_secs(10), "restarted only {took:?} after the kill");
    assert_eq!(next.restarts, Some(1), "{}", next.json);
    let pid = next.main_pid.unwrap_or_default();
    assert_eq!(a.read(&format!("/proc/{pid}/comm")).unwrap().trim(), "sleep");
    let cgroup = a.read(&format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(cgroup, format!("0::/system.slice/{unit}\n"));
    // Its `sleep` would count as a leftover in the orphan check.
    let r = run(a, &["berthctl", "stop", unit], Duration::from_secs(60));
    assert_eq!(r.status, Some(0), "berthctl stop {unit}: {r:?}");
}

fn start_limit_burst_leaves_a_failing_unit_failed(a: &mut Agent) {
    eprintln!("--- StartLimitBurst= leaves a failing unit failed");
    let unit = "berth-flaky.service";
    install_unit(
        a,
        unit,
        "[Unit]\nDescription=fails at once, always restarted\nStartLimitBurst=3\nStartLimitIntervalSec=10\n\n\
         [Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=100ms\n",
    );
    let r = start(a, unit);
    eprintln!("berthctl start {unit}: {r:?}");
    let failed = wait_unit(a, unit, Duration::from_secs(20), |s| s.active == "failed");
    eprintln!("{unit}: {}", failed.json);
    let human = run(a, &["berthctl", "status", unit], Duration::from_secs(30));
    assert!(human.stdout.contains("failed"), "berthctl status {unit}: {human:?}");
    let restarts = failed.restarts.unwrap_or_else(|| panic!("no restart count: {}", failed.json));
    assert!((2..=3).contains(&restarts), "3 starts allowed in 10 s, yet {restarts} restarts: {}", failed.json);

    // It stays down: no further start within the interval or after it.
    std::thread::sleep(Duration::from_secs(3));
    let later = unit_status(a, unit);
    assert_eq!((later.active.as_str(), later.restarts), ("failed", Some(restarts)), "{}", later.json);
    assert_eq!(later.main_pid, None, "{}", later.json);
}

/// The state letter of each `/proc/<pid>/stat` line (after the last `)`: names may hold
/// anything), with the line.
fn states(stat_lines: &str) -> Vec<(char, &str)> {
    (stat_lines.lines()).filter_map(|l| Some((l.rsplit_once(") ")?.1.chars().next()?, l))).collect()
}

fn orphans_of_a_unit_are_reaped(a: &mut Agent) {
    eprintln!("--- the orphans of a unit are reaped");
    let unit = "berth-orphans.service";
    // Each subshell exits at once, leaving its `sleep` an orphan for PID 1 to inherit and reap.
    install_unit(
        a,
        unit,
        "[Unit]\nDescription=leaves 1000 orphans\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/bash -c 'for i in $(seq 1000); do (sleep 0.2 &) ; done'\n",
    );
    let started = Instant::now();
    let r = run(a, &["berthctl", "start", unit], Duration::from_secs(300));
    assert_eq!(r.status, Some(0), "berthctl start {unit}: {r:?}");
    let done = wait_unit(a, unit, Duration::from_secs(300), |s| s.active == "active" || s.active == "failed");
    assert_eq!(done.active, "active", "{}", done.json);
    eprintln!("{unit}: 1000 orphans made in {:.1} s", started.elapsed().as_secs_f64());

    // The last sleeps end 0.2 s after the unit; one second after that, none is left over.
    std::thread::sleep(Duration::from_millis(1200));
    let stat = bash(
        a,
        "for f in /proc/[0-9]*/stat; do read -r l < \"$f\" 2>/dev/null && printf '%s\\n' \"$l\"; done",
        Duration::from_secs(60),
    );
    let all = states(&stat);
    assert!(all.len() > 10, "read too few processes: {stat}");
    let zombies: Vec<&str> = all.iter().filter(|(s, _)| *s == 'Z').map(|(_, l)| *l).collect();
    assert!(zombies.is_empty(), "zombies 1.2 s after the orphans' sleeps ended:\n{}", zombies.join("\n"));
    let sleeping: Vec<&str> = all.iter().map(|(_, l)| *l).filter(|l| l.contains(" (sleep) ")).collect();
    assert!(sleeping.is_empty(), "sleeps still there:\n{}", sleeping.join("\n"));
}

/// A unit whose bash traps SIGTERM, says so on the console, and exits a second later. It says
/// "<name> up" once the trap is set: the manager calls a simple service active at exec, and
/// bash under TCG takes a while to get that far.
fn graceful(name: &str, extra: &str) -> String {
    format!(
        "[Unit]\nDescription=stops in a second\n{extra}\n\
         [Service]\nTimeoutStopSec=5\n\
         ExecStart=/bin/bash -c 'trap \"echo {name} got TERM; echo {name} got TERM > /dev/console; sleep 1; exit 0\" TERM; \
         echo {name} up > /dev/console; sleep infinity & wait'\n"
    )
}

fn poweroff_stops_units_in_reverse_order_and_kills_what_ignores_term(mut h: Host, mut a: Agent) {
    eprintln!("--- poweroff stops units in reverse order and kills what ignores SIGTERM");
    install_unit(&mut a, "shut-a.service", &graceful("shut-a", ""));
    install_unit(&mut a, "shut-b.service", &graceful("shut-b", "After=shut-a.service\nRequires=shut-a.service\n"));
    // SIG_IGN is inherited, so its sleep ignores SIGTERM too.
    install_unit(
        &mut a,
        "stubborn.service",
        "[Unit]\nDescription=ignores SIGTERM\n\n\
         [Service]\nTimeoutStopSec=3\n\
         ExecStart=/bin/bash -c 'trap \"\" TERM; echo stubborn up > /dev/console; sleep infinity'\n",
    );
    for unit in ["shut-b.service", "stubborn.service"] {
        let r = start(&mut a, unit);
        assert_eq!(r.status, Some(0), "berthctl start {unit}: {r:?}");
    }
    for unit in ["shut-a.service", "shut-b.service", "stubborn.service"] {
        wait_unit(&mut a, unit, Duration::from_secs(30), |s| s.active == "active" && s.main_pid.is_some());
    }
    for up in ["shut-a up", "shut-b up", "stubborn up"] {
        h.machine.wait_for(up, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    }

    let asked = h.machine.timeline().last().map(|(t, _)| *t).unwrap_or_default();
    let clock = Instant::now();
    a.spawn(&["berthctl", "poweroff"]).unwrap_or_else(|e| h.fail(e));
    drop(a);
    // Stops: b (1 s), then a (1 s); stubborn in parallel (3 s, then SIGKILL); plus the margin
    // TCG and unmounting need. The sum of the timeouts (5 + 5 + 3 s) bounds it.
    let status = wait_exit_timed(&mut h.machine, Duration::from_secs(13 + 60));
    let took = clock.elapsed();
    let timeline = h.machine.timeline();
    let console = h.machine.console();
    assert!(status.success(), "QEMU exited with {status}:\n{console}");
    eprintln!("poweroff took {took:.1?}");
    for l in console.lines().filter(|l| l.contains("shutdown:") || l.contains("stop timed out")) {
        eprintln!("  {l}");
    }

    let line = |needles: &[&str]| {
        first_line(&timeline, needles).unwrap_or_else(|| panic!("no console line with {needles:?}:\n{console}"))
    };
    // b is stopped before a is asked to stop, so a's TERM comes at least b's second later.
    let (b_term, _) = line(&["shut-b got TERM"]);
    let (a_term, _) = line(&["shut-a got TERM"]);
    assert!(b_term >= asked && a_term > b_term, "b got TERM at {b_term:?}, a at {a_term:?}:\n{console}");
    assert!(a_term - b_term >= Duration::from_millis(800), "a stopped {:?} after b's TERM", a_term - b_term);
    let (b_stopped, b_line) = line(&["shut-b.service", "stopped"]);
    let (a_stopping, a_line) = line(&["shut-a.service", "stopping"]);
    assert!(b_stopped <= a_stopping, "{b_line:?} after {a_line:?}");
    assert!(
        console.find(&b_line).unwrap_or(usize::MAX) < console.find(&a_line).unwrap_or(0),
        "{b_line:?} is not before {a_line:?} on the console"
    );

    // The one that ignores SIGTERM is killed once its 3 s are up (by PID 1's own clock: its
    // console lines carry the kernel's timestamps), and only then does the machine go down.
    let stamp = |needles: &[&str]| {
        let (_, l) = line(needles);
        kernel_stamp(&l).unwrap_or_else(|| panic!("no kernel timestamp on {l:?}"))
    };
    let stopping = stamp(&["stubborn.service: stopping"]);
    let timed_out = stamp(&["stubborn.service: stop timed out"]);
    let off = stamp(&["shutdown: powering off"]);
    let waited = timed_out.saturating_sub(stopping);
    eprintln!("stubborn.service: SIGKILL {waited:.2?} after SIGTERM");
    // The deadline counts from the manager's tick, the line is stamped when printed: a few ms.
    assert!(waited >= Duration::from_millis(2900), "stubborn.service timed out after {waited:?}, TimeoutStopSec=3");
    assert!(waited < Duration::from_secs(5), "stubborn.service timed out only after {waited:?}");
    assert!(off >= timed_out, "powered off before stubborn.service was killed:\n{console}");
    assert!(took < Duration::from_secs(13 + 60), "poweroff took {took:?}");
}
