//! Signed A/B updates end to end (docs/design.md §2, §4): `container-host` images built at several
//! versions, published with `berth publish` into a repository served on 127.0.0.1, found,
//! staged and booted by the guest's `berth-update`. Machines are shared: each TCG boot costs a
//! minute or more, so one machine goes through several steps, and the next image is built
//! while it boots.
//!
//! - `a_bad_kernel_then_an_unhealthy_userspace_are_rolled_back`: one machine on 1.0.0 (two
//!   trial boots per staged slot) is offered 1.5.0, whose kernel cannot mount its root, then
//!   1.6.0, whose health check fails; each is tried in B twice, rolled back to A by bootmgr,
//!   recorded by the agent and not staged again.
//! - `bad_releases_are_refused_then_a_to_b_to_a_with_the_fleets_lock`: one machine on 1.0.0
//!   (strategy off first) refuses bad releases (signatures, unknown and revoked keys, an unset
//!   clock, expiry, replay, server errors, wrong hashes, a long root image, dropped
//!   connections) without touching its slots, rotates its key set twice, stages the good 2.0.0
//!   and (strategy immediate) boots it in B; then (strategy fleetlock) stages 3.0.0 but waits
//!   while another host holds the FleetLock slot, boots it in A once the slot is free and gives
//!   the slot back; then `berth-update rollback` takes it back to 2.0.0 for good (M1).
//! - `power_cuts_leave_a_bootable_machine` (behind `BERTH_TEST_SLOW=1`): power cuts at each
//!   step of an update.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_qemu_tests::Machine;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::fleetlock::FleetLockServer;
use berth_qemu_tests::http::Fault;
use berth_update::report::{Phase, SlotStatus, Status};
use common::host::{BOOT_COMPLETE, bash};
use common::updates::*;

const STAGE_TIMEOUT: Duration = Duration::from_secs(600);
const BOOT: Duration = Duration::from_secs(300);

fn last_error(s: &Status) -> &str {
    s.last_error.as_deref().unwrap_or("")
}

/// Prints `what` with the seconds since this test binary's first note: where the time of a
/// run goes (both tests' steps on one clock, as they run side by side).
fn note(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("[{:7.1} s] {what}", start.elapsed().as_secs_f64());
}

/// `cmd` in bash, run again while the daemon holds the agent's lock (a check every 5 s here):
/// commands say "busy" instead of waiting for it.
fn busy_retry(cmd: &str) -> String {
    format!(
        "for i in $(seq 60); do if out=$({cmd} 2>&1); then echo \"$out\"; exit 0; fi; \
         case \"$out\" in *busy*) sleep 0.5;; *) echo \"$out\" >&2; exit 1;; esac; done; exit 1"
    )
}

/// Trial boots of a new slot in the rollback test: two, so that a failed trial is seen tried
/// again before bootmgr gives up on it (the default three would add a third failed boot).
const TRIES: usize = 2;

/// bootmgr's line, once per boot of slot B.
const BOOTING_B: &str = "berth-bootmgr: -> booting B ";

/// One machine on 1.0.0 rolls back two bad releases in turn: a kernel that cannot mount its
/// root (1.5.0), then a userspace whose health check fails (1.6.0).
#[test]
fn a_bad_kernel_then_an_unhealthy_userspace_are_rolled_back() {
    note("rollbacks: start");
    let v1 = image("1.0.0", Flavour::Good);
    let repo = Repo::new();
    let mut m = boot(&v1, &repo, Some(format!("{}tries = {TRIES}\n", provision("immediate"))));
    // Built while the machine boots.
    image("1.5.0", Flavour::NoRoot);
    m.wait_for(BOOT_COMPLETE, BOOT).unwrap_or_else(|e| panic!("{e}"));
    let mut a = agent(&m);
    wait_status(&mut a, Duration::from_secs(60), "slot a marked good", marked_good);
    drop(a);
    note("rollbacks: 1.0.0 booted");
    let why = "root partition PARTUUID=";
    // 1.6.0 is built while 1.5.0 is tried.
    let next = || {
        image("1.6.0", Flavour::Unhealthy);
    };
    rolls_back(&mut m, &repo, "1.5.0", Flavour::NoRoot, why, "a kernel that cannot mount its root", next);
    let why = "is on trial, rebooting";
    rolls_back(&mut m, &repo, "1.6.0", Flavour::Unhealthy, why, "an unhealthy userspace", || ());
}

/// Publishes `version` in `flavour` over the 1.0.0 running on a and checks that the machine
/// comes back on a by itself, with the rollback recorded and `version` not tried again; `case`
/// names the release in failures. `meanwhile` runs once the release is published.
fn rolls_back(
    m: &mut Machine,
    repo: &Repo,
    version: &str,
    flavour: Flavour,
    why: &str,
    case: &str,
    meanwhile: impl FnOnce(),
) {
    let console = m.console();
    let (tried, said) = (console.matches(BOOTING_B).count(), console.matches(why).count());
    let completed = console.matches(BOOT_COMPLETE).count();
    repo.publish(&image(version, flavour));
    meanwhile();
    // Staged, rebooted into b, b fails its tries, bootmgr falls back to a.
    m.wait_for_count(BOOT_COMPLETE, completed + 1, STAGE_TIMEOUT + BOOT * TRIES as u32)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let console = m.console();
    let trials = console.matches(BOOTING_B).count() - tried;
    assert_eq!(trials, TRIES, "{case}: b was booted {trials} times, not its {TRIES} tries:\n{console}");
    assert!(console.matches(why).count() > said, "{case}: no new {why:?} on the console:\n{console}");
    let mut a = agent(m);
    let s = wait_status(&mut a, Duration::from_secs(120), &format!("{case}: the rollback recorded"), |s| {
        s.state == Phase::RolledBack && s.rolled_back.iter().any(|r| r.version == version)
    });
    assert_eq!(s.running.slot.name(), "a", "{case}: {s:#?}");
    assert!(s.rolled_back.iter().any(|r| r.version == version && !r.manual), "{case}: rolled-back versions: {s:#?}");
    assert_eq!(s.other.attrs(), Some((0, 0, false)), "{case}: the failed slot is cleared: {s:#?}");
    // Not tried again: two more checks (every 5 s) find it held back and stage nothing.
    let booted = m.console().matches("berth.slot=").count();
    let mut last = s.last_check;
    for n in 1..=2 {
        let s = wait_status(&mut a, Duration::from_secs(120), &format!("{case}: check {n} after the rollback"), |s| {
            s.last_check.is_some() && s.last_check != last
        });
        assert_eq!(s.state, Phase::RolledBack, "{case}: check {n} after the rollback: {s:#?}");
        assert_eq!(s.other.priority, Some(0), "{case}: {version} was staged again: {s:#?}");
        last = s.last_check;
    }
    assert_eq!(m.console().matches("berth.slot=").count(), booted, "{case}: the machine rebooted again");
    note(&format!("rollbacks: {version} rolled back"));
}

/// Slow (five cuts, each a TCG boot): behind `BERTH_TEST_SLOW=1`.
#[test]
fn power_cuts_leave_a_bootable_machine() {
    if !berth_qemu_tests::slow_enabled("power_cuts_leave_a_bootable_machine") {
        return;
    }
    // The first image's agent is a failpoints build (step 2 stops it at one); the releases it
    // stages are as shipped.
    let v1 = image("1.0.0", Flavour::Failpoints);
    let v2 = image("2.0.0", Flavour::Good);
    let repo = Repo::new();
    let mut m = boot(&v1, &repo, Some(provision("off")));
    m.wait_for(BOOT_COMPLETE, BOOT).unwrap_or_else(|e| panic!("{e}"));
    let mut a = agent(&m);
    wait_status(&mut a, Duration::from_secs(60), "slot a marked good", marked_good);
    let marker = write_var_marker(&mut a, "power");

    let after_cut = |m: &mut Machine, point: &str| {
        m.restart().unwrap_or_else(|e| panic!("{e}"));
        wait_next_boot_complete(m, BOOT * 2);
        let mut a = agent(m);
        let kept = bash(&mut a, "cat /var/lib/update-test/power", Duration::from_secs(30));
        assert_eq!(kept.trim(), marker, "after the cut {point}");
        let s = wait_status(&mut a, Duration::from_secs(120), "a slot marked good", marked_good);
        eprintln!("after the cut {point}: {s:?}");
        s
    };

    // 1. Mid-download.
    repo.publish(&v2);
    let root = "/releases/2.0.0/root.img.zst";
    repo.server.set_fault(root, Fault::Throttle { bytes_per_sec: 512 << 10 });
    wait_status(&mut a, STAGE_TIMEOUT, "downloading", |s| s.state == Phase::Downloading);
    std::thread::sleep(Duration::from_secs(3));
    m.kill();
    drop(a);
    // The throttle stays: the agent of the next boot starts over, slowly, until step 2 stops it.
    let s = after_cut(&mut m, "mid-download");
    assert_eq!(s.running.slot.name(), "a", "{s:#?}");
    assert_eq!(s.other.priority, Some(0), "the half-written slot is not bootable: {s:#?}");

    // 2. After the image is written, before the attributes change: the agent pauses at its
    //    failpoint "verified" when /run/berth-update.failpoints arms it (failpoints builds only).
    let mut a = agent(&m);
    bash(
        &mut a,
        "echo verified=pause > /run/berth-update.failpoints && berthctl restart berth-update.service",
        Duration::from_secs(60),
    );
    repo.server.clear_faults();
    wait_status(&mut a, STAGE_TIMEOUT, "paused after the write", |s| s.paused.as_deref() == Some("verified"));
    let before = status(&mut a);
    assert_eq!(before.other.priority, Some(0), "attributes changed before the pause: {before:#?}");
    m.kill();
    drop(a);
    let s = after_cut(&mut m, "after the write, before the attribute change");
    assert_eq!(s.running.slot.name(), "a", "{s:#?}");

    // 3. Right after the attribute change (strategy off: staged, no reboot).
    // /run went with the cut, and the failpoint with it: the agent of this boot stages again.
    let mut a = agent(&m);
    let s = wait_status(&mut a, STAGE_TIMEOUT, "staged", |s| s.state == Phase::Staged);
    assert_eq!(s.other.priority, Some(2), "{s:#?}");
    m.kill();
    drop(a);
    // The staged slot is tried on the next power-on and reaches health.
    let s = after_cut(&mut m, "right after the attribute change");
    assert_eq!((slot(&s.running).0, slot(&s.running).1), ("b", "2.0.0"), "{s:#?}");

    // 4. During the first boot of a new slot: 3.0.0 goes to a; the cut comes in its stage 1.
    let mut a = agent(&m);
    repo.publish(&image("3.0.0", Flavour::Good));
    wait_status(&mut a, STAGE_TIMEOUT, "3.0.0 staged", |s| s.state == Phase::Staged);
    let n = m.console().matches("berth.slot=a").count();
    bash(&mut a, "berthctl reboot", Duration::from_secs(30));
    m.wait_for_count("berth.slot=a", n + 1, BOOT).unwrap_or_else(|e| panic!("{e}"));
    m.kill();
    drop(a);
    let s = after_cut(&mut m, "during the first boot of the new slot");
    // a had tries left: it is tried again and makes it.
    assert_eq!((slot(&s.running).0, slot(&s.running).1), ("a", "3.0.0"), "{s:#?}");
}

/// What a rejected check or apply must leave: the same slot attributes, and (unless the stream
/// had begun) the same bytes in the passive slot.
struct Unchanged {
    running: SlotStatus,
    other: SlotStatus,
}

impl Unchanged {
    fn now(a: &mut Agent) -> Unchanged {
        let s = status(a);
        Unchanged { running: s.running, other: s.other }
    }

    fn check(&self, a: &mut Agent, case: &str) -> Status {
        let s = status(a);
        assert_eq!(slot(&s.running), slot(&self.running), "{case}: running slot changed: {s:#?}");
        assert_eq!(slot(&s.other), slot(&self.other), "{case}: passive slot's attributes changed: {s:#?}");
        s
    }
}

/// Runs `berth-update <verb>` in the guest, expecting a failure whose message and
/// `status`'s last error both contain `needle` (case-insensitive).
fn refused(a: &mut Agent, verb: &str, needle: &str, unchanged: &Unchanged, case: &str) {
    let r = common::host::run(a, &["berth-update", verb], Duration::from_secs(600));
    assert_ne!(r.status, Some(0), "{case}: berth-update {verb} succeeded: {r:?}");
    let said = format!("{}{}", r.stdout, r.stderr).to_lowercase();
    assert!(said.contains(needle), "{case}: berth-update {verb} said {said:?}, not {needle:?}");
    let s = unchanged.check(a, case);
    let e = last_error(&s).to_lowercase();
    assert!(e.contains(needle), "{case}: status's last error is {e:?}, not {needle:?}: {s:#?}");
    eprintln!("{case}: refused: {}", last_error(&s));
}

/// One machine on 1.0.0, first with updates only when asked (strategy off, a check every 12 h):
/// the refusals of [`refuse_bad_releases`] leave its slots as they were (each checks), so the
/// good 2.0.0 staged after them is the first step of [`a_to_b_to_a`], which then switches the
/// daemon to strategy immediate and later to fleetlock (the first-boot document's FleetLock
/// settings). Failures name their part: `bad releases: …`, the version of A to B to A, or
/// `rollback: …`.
#[test]
fn bad_releases_are_refused_then_a_to_b_to_a_with_the_fleets_lock() {
    note("a to b to a: start");
    let lock = FleetLockServer::start().expect("FleetLock server");
    let v1 = image("1.0.0", Flavour::Good);
    let repo = Repo::new();
    let settings = format!(
        "[update]\n{}[update.fleetlock]\nurl = \"http://{}\"\ngroup = \"workers\"\n",
        update_settings("off", "12h"),
        berth_qemu_tests::fleetlock::GUEST_ADDR
    );
    let mut m = boot_with(&v1, &repo, Some(settings), 1, Some(&lock));
    // Built while the machine boots.
    let v2 = image("2.0.0", Flavour::Good);
    m.wait_for(BOOT_COMPLETE, BOOT).unwrap_or_else(|e| panic!("{e}"));
    let mut a = agent(&m);
    let s = wait_status(&mut a, Duration::from_secs(60), "slot a marked good", marked_good);
    assert_eq!(slot(&s.running), ("a", "1.0.0", Some((2, 0, true))), "1.0.0: {s:#?}");
    let marker = write_var_marker(&mut a, "before-updates");
    note("a to b to a: 1.0.0 booted");

    let signer = refuse_bad_releases(&mut a, &repo, &v2);
    // And after all that, the good release still goes in.
    let r = common::host::run(&mut a, &["berth-update", "apply"], Duration::from_secs(900));
    assert_eq!(r.status, Some(0), "bad releases: the good 2.0.0 after them: {r:?}");
    let s = status(&mut a);
    assert_eq!(s.state, Phase::Staged, "bad releases: the good 2.0.0 after them: {s:#?}");
    assert_eq!(s.other.priority, Some(2), "bad releases: the good 2.0.0 after them: {s:#?}");
    note("a to b to a: bad releases refused, 2.0.0 staged");

    // Strategy immediate from now on: the restarted daemon finds the staged 2.0.0 on its first
    // check and reboots into it.
    let booted = m.console().matches(BOOT_COMPLETE).count();
    switch_strategy(&mut a, "immediate");
    drop(a);
    // Built while the machine reboots into 2.0.0.
    image("3.0.0", Flavour::Good);
    a_to_b_to_a(&mut m, &repo, &lock, booted, &signer, &marker);
}

/// Switches the daemon to `strategy`, checking every 5 s: those two keys of the provisioned
/// /etc/berth/update.toml edited in place (the rest, [fleetlock] included, stays as first-boot
/// provisioning wrote it), read back by `berth-update status` (which reads the same files), and
/// the service restarted (last: with a release staged, strategy immediate reboots at once).
fn switch_strategy(a: &mut Agent, strategy: &str) {
    let file = "/etc/berth/update.toml";
    let edit = format!("s/^strategy = .*/strategy = \"{strategy}\"/; s/^interval = .*/interval = \"5s\"/");
    bash(a, &format!("sed -i '{edit}' {file}"), Duration::from_secs(60));
    let s = status(a);
    assert_eq!(s.strategy, strategy, "{file} edited for strategy {strategy}: {s:#?}");
    bash(a, "berthctl restart berth-update.service", Duration::from_secs(60));
}

/// After the reboot into `version` in slot `to`: it is marked good with the old slot as the
/// fallback, /usr and the command line are the new slot's, /var kept `marker`, and nothing
/// stale is offered. The status.
fn updated(a: &mut Agent, version: &str, to: &str, marker: &str) -> Status {
    let s = wait_status(a, Duration::from_secs(120), &format!("{version} on {to}, marked good"), |s| {
        s.running.slot.name() == to && marked_good(s) && s.state == Phase::Idle
    });
    assert_eq!(slot(&s.running), (to, version, Some((2, 0, true))), "{version}: {s:#?}");
    let other = &s.other;
    assert_eq!(
        (other.priority, other.successful),
        (Some(1), Some(true)),
        "{version}: the old slot stays as the fallback: {s:#?}"
    );
    assert_eq!(s.state, Phase::Idle, "{version}: {s:#?}");
    let os = bash(a, "grep ^VERSION_ID= /usr/lib/os-release", Duration::from_secs(30));
    assert!(os.contains(version), "{version}: {os}");
    let cmdline = bash(a, "cat /proc/cmdline", Duration::from_secs(30));
    assert!(cmdline.contains(&format!("berth.slot={to}")), "{version}: {cmdline}");
    let kept = bash(a, "cat /var/lib/update-test/before-updates", Duration::from_secs(30));
    assert_eq!(kept.trim(), marker, "{version}: /var");
    // The version that was available before the reboot is the one running now.
    assert_eq!(s.available, None, "{version}: a stale available: {s:#?}");
    s
}

/// The keys of a first-boot document's `[update]` table (provisioning writes them to
/// /etc/berth/update.toml): `strategy`, a check every `interval`, no jitter, and the image's
/// root key.
fn update_settings(strategy: &str, interval: &str) -> String {
    let (_, root_pub) = signing_key();
    format!("strategy = {strategy:?}\ninterval = {interval:?}\njitter = \"0s\"\nkeys = [{root_pub:?}]\nthreshold = 1\n")
}

/// Releases the agent must refuse, over `v2` published on `repo`, asked for with
/// `berth-update check` and `apply` (the daemon checks every 12 h: after boot, only when asked);
/// each leaves the slots' attributes as they were, and none writes into the passive slot before
/// its stream begins. Ends with the key set rotated twice and the index (of `v2`) signed by the
/// current signing key, which it returns.
fn refuse_bad_releases(a: &mut Agent, repo: &Repo, v2: &Path) -> PathBuf {
    // md5sum reads as fast as the guest's disk (sha256sum takes twice as long under TCG); any
    // change would show.
    let passive_sum = || "md5sum /dev/vda3 | cut -d' ' -f1";
    let passive_before = bash(a, passive_sum(), Duration::from_secs(300));
    let unchanged = Unchanged::now(a);

    repo.publish(v2);
    let index = repo.path(&format!("channels/{CHANNEL}.json"));
    let sig = repo.path(&format!("channels/{CHANNEL}.json.sig"));
    let (good_index, good_sig) = (std::fs::read(&index).unwrap(), std::fs::read(&sig).unwrap());
    let restore = |i: &[u8], s: &[u8]| {
        std::fs::write(&index, i).unwrap();
        std::fs::write(&sig, s).unwrap();
    };

    // A signature that does not verify: one hex digit of it changed.
    let text = String::from_utf8(good_sig.clone()).unwrap();
    let at = text.find("\"signature\"").unwrap() + "\"signature\": \"".len() + 10;
    let mut bad = text.clone().into_bytes();
    bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
    restore(&good_index, &bad);
    refused(a, "check", "signature", &unchanged, "bad signature");

    // Signed by a key the image does not trust.
    restore(&good_index, &sign_with_new_key(&good_index));
    refused(a, "check", "unknown key", &unchanged, "unknown key");

    // The good pair is accepted (and its sequence remembered).
    restore(&good_index, &good_sig);
    let r = common::host::run(a, &["berth-update", "check"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "bad releases: the good index: {r:?}");
    let accepted = (std::fs::read(&index).unwrap(), std::fs::read(&sig).unwrap());

    // M5: nothing is judged before berth-timesync has set the clock this boot.
    bash(a, "rm /run/berth/timesync/synchronized", Duration::from_secs(60));
    refused(a, "check", "clock not synchronised yet", &unchanged, "m5 clock not set");
    let record = bash(
        a,
        "berthctl restart berth-timesync.service && cat /run/berth/timesync/synchronized",
        Duration::from_secs(120),
    );
    assert!(record.contains("\"server\": \"none\""), "bad releases: m5 clock set again: {record}");
    let r = common::host::run(a, &["berth-update", "check"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "bad releases: m5 check once the clock is set: {r:?}");

    // An index past its expiry (the releases stay; each refresh is a new sequence).
    repo.refresh(None, Some("1s"));
    std::thread::sleep(Duration::from_secs(2));
    refused(a, "check", "expired", &unchanged, "expired index");

    // A newer index is accepted; then the older one comes back (replay).
    repo.refresh(None, None);
    let r = common::host::run(a, &["berth-update", "check"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "bad releases: a newer index: {r:?}");
    let newest = (std::fs::read(&index).unwrap(), std::fs::read(&sig).unwrap());
    restore(&accepted.0, &accepted.1);
    refused(a, "check", "sequence", &unchanged, "replayed older index");
    restore(&newest.0, &newest.1);

    // The server answers 500 to everything about the index: retried, then an error.
    let index_path = format!("/channels/{CHANNEL}.json");
    repo.server.set_fault(&index_path, Fault::Status { code: 500, times: 1000 });
    let before = repo.server.requests().len();
    refused(a, "check", "500", &unchanged, "server error");
    let tries = repo.server.requests()[before..].iter().filter(|r| r.path == index_path).count();
    assert!(tries >= 3, "bad releases: server error: the index was asked for {tries} times; retries expected");
    repo.server.clear_faults();

    // A kernel whose bytes are not the ones signed: refused before the disk is touched.
    let vmlinuz = repo.path("releases/2.0.0/vmlinuz");
    let good_kernel = std::fs::read(&vmlinuz).unwrap();
    let mut k = good_kernel.clone();
    k[4096] ^= 0xff;
    std::fs::write(&vmlinuz, &k).unwrap();
    refused(a, "apply", "sha-256", &unchanged, "kernel hash mismatch");
    std::fs::write(&vmlinuz, &good_kernel).unwrap();

    // The root image longer than announced: the agent stops at the announced size.
    let root = repo.path("releases/2.0.0/root.img.zst");
    let good_root = std::fs::read(&root).unwrap();
    let mut longer = good_root.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&root, &longer).unwrap();
    refused(a, "apply", "more", &unchanged, "root image longer than announced");
    std::fs::write(&root, &good_root).unwrap();

    // Nothing so far wrote a byte into the passive slot.
    assert_eq!(bash(a, passive_sum(), Duration::from_secs(300)), passive_before, "bad releases: ROOT-B changed");

    // Connections dropped over and over in the middle of the root image: resumed with Range
    // requests, then given up on; the slot is left cleared, never bootable.
    let root_path = "/releases/2.0.0/root.img.zst";
    repo.server.set_fault(root_path, Fault::DropAfter { bytes: 1 << 20, times: 1000 });
    let before = repo.server.requests().len();
    refused(a, "apply", "connection", &unchanged, "dropped connections");
    let asked: Vec<_> = repo.server.requests()[before..].iter().filter(|r| r.path == root_path).cloned().collect();
    assert!(
        asked.len() >= 3 && asked.iter().skip(1).any(|r| r.range.is_some()),
        "bad releases: dropped connections: {asked:?}"
    );
    repo.server.clear_faults();

    // A root image whose bytes differ from the signed hash: found at the end of the stream;
    // the slot stays cleared.
    let mut flipped = good_root.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&root, &flipped).unwrap();
    refused(a, "apply", "sha-256", &unchanged, "root image hash mismatch");
    std::fs::write(&root, &good_root).unwrap();

    // H6: key rotation. Key set 1: the provisioned (root) key names s1 as the signing key.
    let (s1, s1_pub) = new_key("signing-1");
    let (s2, s2_pub) = new_key("signing-2");
    assert_eq!(repo.sign_keyset(&[&s1_pub]), 1);
    repo.refresh(Some(&s1), None);
    let r = common::host::run(a, &["berth-update", "check"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "bad releases: key set 1: {r:?}");
    assert!(r.stdout.contains("key set 1 accepted"), "bad releases: key set 1: {r:?}");
    // Key set 2: s1 revoked, s2 signs.
    assert_eq!(repo.sign_keyset(&[&s2_pub]), 2);
    repo.refresh(Some(&s2), None);
    let r = common::host::run(a, &["berth-update", "check"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "bad releases: key set 2: {r:?}");
    assert!(r.stdout.contains("key set 2 accepted"), "bad releases: key set 2: {r:?}");
    let kept = bash(a, "cat /var/lib/berth/update/keyset.json", Duration::from_secs(30));
    assert!(
        kept.contains("\\\"version\\\": 2") && kept.contains(&s2_pub) && !kept.contains(&s1_pub),
        "bad releases: key set 2 kept: {kept}"
    );
    // An index signed only by the revoked key (the current index's bytes, re-signed by s1):
    // refused.
    let rotated = (std::fs::read(&index).unwrap(), std::fs::read(&sig).unwrap());
    restore(&rotated.0, &sign_with(&rotated.0, &s1));
    refused(a, "check", "unknown key", &unchanged, "index signed by a revoked key");
    // Nor does the root key sign channels any more.
    let (root, _) = signing_key();
    restore(&rotated.0, &sign_with(&rotated.0, root));
    refused(a, "check", "unknown key", &unchanged, "index signed by the root key");
    restore(&rotated.0, &rotated.1);

    s2
}

/// From 1.0.0 in a with 2.0.0 staged in b and strategy immediate: the daemon reboots into 2.0.0,
/// which is marked good. Then, with strategy fleetlock while another host holds the group's
/// reboot slot, 3.0.0 (published signed by `signer`) is found and staged but waits, reboots into
/// a once the slot is free, and gives the slot back once marked good. `berth-update rollback`
/// takes the machine back to 2.0.0 in b for good. `marker` (in /var) survives every step.
/// `booted`: the boots completed before the daemon was switched to strategy immediate.
fn a_to_b_to_a(m: &mut Machine, repo: &Repo, lock: &FleetLockServer, booted: usize, signer: &Path, marker: &str) {
    m.wait_for_count(BOOT_COMPLETE, booted + 1, BOOT).unwrap_or_else(|e| panic!("2.0.0 on b: {e}"));
    let mut a = agent(m);
    updated(&mut a, "2.0.0", "b", marker);
    note("a to b to a: 2.0.0 booted in b");

    // Staged, but the slot is taken: no reboot, and status says why (the protocol's kind).
    lock.hold("workers", "another-host");
    switch_strategy(&mut a, "fleetlock");
    let booted = m.console().matches(BOOT_COMPLETE).count();
    repo.publish_signed(&image("3.0.0", Flavour::Good), signer);
    let s = wait_status(&mut a, STAGE_TIMEOUT, "3.0.0 staged, waiting for the lock", |s| {
        s.state == Phase::Staged && s.fleetlock.is_some()
    });
    let refused = s.fleetlock.clone().unwrap_or_else(|| panic!("{s:#?}"));
    assert_eq!((refused.kind.as_str(), refused.status), ("failed_lock", Some(409)), "fleetlock: {s:#?}");
    assert!(refused.message.contains("held by another-host"), "fleetlock: {refused:?}");
    assert!(last_error(&s).contains("reboot lock was not given"), "fleetlock: {s:#?}");
    let asked: Vec<_> = lock.requests().into_iter().filter(|r| r.operation == "pre-reboot").collect();
    let me = asked.first().unwrap_or_else(|| panic!("fleetlock: no pre-reboot: {:?}", lock.requests())).id.clone();
    assert!(asked.iter().all(|r| r.status == 409 && r.group == "workers" && r.id == me), "fleetlock: {asked:?}");
    assert_eq!(me.len(), 32, "fleetlock: {me}");
    assert_eq!(m.console().matches(BOOT_COMPLETE).count(), booted, "fleetlock: rebooted without the lock");
    drop(a);

    // The other host is done: this one takes the slot, reboots into a, and once a is marked
    // good gives the slot back.
    note("a to b to a: 3.0.0 staged, waiting for the lock");
    lock.free("workers");
    m.wait_for_count(BOOT_COMPLETE, booted + 1, BOOT).unwrap_or_else(|e| panic!("3.0.0 on a: {e}"));
    let mut a = agent(m);
    let s = updated(&mut a, "3.0.0", "a", marker);
    note("a to b to a: 3.0.0 booted in a");
    assert_eq!(s.fleetlock, None, "fleetlock: the refusal is cleared once the lock was given: {s:#?}");
    let start = std::time::Instant::now();
    while lock.holder("workers").is_some() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let reqs = lock.requests();
    assert_eq!(lock.holder("workers"), None, "fleetlock: the slot was not given back: {reqs:?}");
    let granted = reqs.iter().position(|r| r.operation == "pre-reboot" && r.status == 200);
    let released = reqs.iter().rposition(|r| r.operation == "steady-state" && r.status == 200 && r.id == me);
    assert!(matches!((granted, released), (Some(g), Some(r)) if g < r), "fleetlock: {reqs:?}");
    drop(a);

    // Every download came through the server, and the agent never asked for a file twice in full.
    let reqs = repo.server.requests();
    assert!(reqs.iter().any(|r| r.path.ends_with("/3.0.0/root.img.zst") && r.status == 200), "3.0.0: {reqs:?}");

    // M1: `berth-update rollback` back to 2.0.0 in b survives the next checks: 3.0.0 is held
    // back, a (3.0.0, good) is neither cleared nor written, and nothing reboots.
    let asked = repo.server.requests().len();
    let mut a = agent(m);
    let out = bash(&mut a, &busy_retry("berth-update rollback"), Duration::from_secs(120));
    assert!(out.contains("ROOT-B (2.0.0) boots next") && out.contains("3.0.0 is held back"), "rollback: {out}");
    bash(&mut a, "berthctl reboot", Duration::from_secs(30));
    drop(a);
    wait_next_boot_complete(m, BOOT);
    note("a to b to a: rolled back to 2.0.0 in b");
    let mut a = agent(m);
    let first = wait_status(&mut a, Duration::from_secs(120), "rollback: a check on b", |s| {
        s.running.slot.name() == "b" && s.last_check.is_some()
    });
    // Two more checks (every 5 s), so that one ran with b good and idle.
    for n in 0..2 {
        let before = first.last_check;
        wait_status(&mut a, Duration::from_secs(120), &format!("rollback: check {n} after it"), |s| {
            s.last_check != before
        });
    }
    let s = status(&mut a);
    assert_eq!(slot(&s.running), ("b", "2.0.0", Some((2, 0, true))), "rollback: {s:#?}");
    assert_eq!(slot(&s.other), ("a", "3.0.0", Some((1, 0, true))), "rollback: a was touched: {s:#?}");
    assert_eq!(s.state, Phase::Idle, "rollback: {s:#?}");
    assert!(last_error(&s).is_empty(), "rollback: {s:#?}");
    assert!(s.rolled_back.iter().any(|r| r.version == "3.0.0" && r.manual), "rollback: {s:#?}");
    let check = bash(&mut a, &busy_retry("berth-update check"), Duration::from_secs(120));
    assert!(check.contains("up to date: 2.0.0"), "rollback: {check}");
    let human = bash(&mut a, "berth-update status", Duration::from_secs(30));
    assert!(human.contains("Held back: 3.0.0"), "rollback: {human}");
    let reqs = repo.server.requests();
    assert!(!reqs[asked..].iter().any(|r| r.path.ends_with("root.img.zst")), "rollback: downloaded again: {reqs:?}");
    note("a to b to a: done");
}
