//! The etcd host image (`images/etcd-host.toml`) in QEMU: Debian's etcd runs as a unit, answers
//! the host's `etcdctl` (Debian's etcd-client) through a port forwarded from 127.0.0.1, and its
//! data, on STATE, survives a reboot and an A→B update (same value, same member id). The test
//! images are the production definition at 1.0.0 and 1.1.0 plus an `[update]` table trusting the
//! update tests' key and the guest agent; the public listen URL comes from provisioning
//! (`/etc/default/etcd`), as an operator's would, and taking it away again leaves etcd on the
//! guest's loopback only: the image's default.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Forward, Machine, Options, free_local_port, http};
use berth_update::report::Phase;
use common::host::{BOOT_COMPLETE, run, wait_unit};
use common::updates::{
    NO_NETWORK_TIME, Repo, agent, channel_url, marked_good, provision, signing_key, slot, wait_next_boot_complete,
    wait_status, workspace,
};

/// One boot under TCG on a shared two-core machine.
const BOOT: Duration = Duration::from_secs(300);
/// Finding, downloading and writing a release into the other slot.
const STAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// etcd wants little; the update agent's staging a little more.
const MEMORY_MIB: u32 = 512;
/// The guest's hostname: etcd's member name (`ETCD_NAME=%H` in Debian's unit).
const HOSTNAME: &str = "etcd-1";
/// What provisioning writes to `/etc/default/etcd` here: clients from anywhere (the forward
/// reaches the guest's 10.0.2.15, not its loopback), plain HTTP. A test network only; a real
/// host's provisioning adds TLS and client-certificate auth (images/README.md).
const ETCD_DEFAULTS: &str =
    "ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379\\nETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379\\n";

/// `images/etcd-host.toml` at `version` as an update test image (the update tests' channel and
/// key, the guest agent), built in `scratch`; the disk.
fn etcd_host(version: &str, scratch: &Path) -> PathBuf {
    let images = workspace().join("images");
    let src = std::fs::read_to_string(images.join("etcd-host.toml")).expect("images/etcd-host.toml");
    let mut text = String::new();
    for line in src.lines() {
        match line.starts_with("version = ") {
            true => text.push_str(&format!("version = \"{version}\"")),
            false => text.push_str(line),
        }
        text.push('\n');
    }
    assert!(text.contains(&format!("version = \"{version}\"")), "no version line in images/etcd-host.toml");
    let (_, public) = signing_key();
    text.push_str(&format!("\n[update]\nchannel = {:?}\nkeys = [{public:?}]\nthreshold = 1\n", channel_url()));
    let dir = scratch.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let def = dir.join("etcd-host.toml");
    std::fs::write(&def, berth_qemu_tests::with_guest_agent(&text, &images)).unwrap();
    let started = Instant::now();
    let options = BuildOptions::for_workspace(&workspace(), def, dir.join("out")).expect("a cache directory");
    let report = build(&options).unwrap_or_else(|e| panic!("berth build etcd-host {version}: {e:#}"));
    eprintln!("built {} ({version}) in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
    report.disk
}

/// The host's `etcdctl` (v3 API) against the forwarded port.
fn etcdctl(port: u16, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{port}"))
        .args(["--dial-timeout=5s", "--command-timeout=15s"])
        .args(args)
        .output()
        .expect("running etcdctl (scripts/setup-host installs etcd-client)")
}

/// [`etcdctl`] again every 2 s until it succeeds (etcd may still be starting, or electing
/// itself leader after a restart), failing after `timeout`; its stdout.
fn etcdctl_ok(port: u16, args: &[&str], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let out = etcdctl(port, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        }
        assert!(
            start.elapsed() < timeout,
            "etcdctl {args:?} failed for {timeout:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// etcd's view of its one member: (cluster id, member id, name, client URLs), from `etcdctl
/// member list -w json`.
fn member(port: u16) -> (u64, u64, String, Vec<String>) {
    let text = etcdctl_ok(port, &["member", "list", "-w", "json"], Duration::from_secs(60));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("member list: {e}: {text}"));
    let members = json["members"].as_array().unwrap_or_else(|| panic!("no members: {text}"));
    assert_eq!(members.len(), 1, "one member: {text}");
    let m = &members[0];
    let urls = m["clientURLs"].as_array().map(|u| u.iter().filter_map(|x| x.as_str().map(String::from)).collect());
    (
        json["header"]["cluster_id"].as_u64().unwrap_or_else(|| panic!("no cluster_id: {text}")),
        m["ID"].as_u64().unwrap_or_else(|| panic!("no member ID: {text}")),
        m["name"].as_str().unwrap_or_default().to_string(),
        urls.unwrap_or_default(),
    )
}

/// etcd's raft log as `endpoint status` reports it: (term, index). A restarted member elects
/// itself in a higher term on the log it kept; a fresh data directory would start again at
/// term 2. (The member and cluster ids alone prove little: with the default initial cluster they
/// are derived from the peer URL and token, the same for a fresh directory.)
fn raft(port: u16) -> (u64, u64) {
    let text = etcdctl_ok(port, &["endpoint", "status", "-w", "json"], Duration::from_secs(60));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("endpoint status: {e}: {text}"));
    let status = &json[0]["Status"];
    match (status["raftTerm"].as_u64(), status["raftIndex"].as_u64()) {
        (Some(term), Some(index)) => (term, index),
        _ => panic!("no raftTerm/raftIndex in {text}"),
    }
}

/// Waits until etcd answers `endpoint health` through the forward.
fn healthy(port: u16) {
    let out = etcdctl_ok(port, &["endpoint", "health"], Duration::from_secs(120));
    assert!(out.contains("is healthy"), "endpoint health: {out}");
}

/// The marker's value as etcd has it now.
fn marker(port: u16) -> String {
    etcdctl_ok(port, &["get", "berth/marker", "--print-value-only"], Duration::from_secs(60)).trim().to_string()
}

/// Where the guest keeps etcd's data: each path's (device, mode, uid, gid), with `stat` from
/// perl (the image has no coreutils; etcd-server's adduser brings perl-base).
fn stat(a: &mut Agent, paths: &[&str]) -> Vec<(u64, u32, u32, u32)> {
    let script = "for (@ARGV) { my @s = stat($_) or die \"$_: $!\\n\"; printf \"%d %o %d %d\\n\", $s[0], $s[2] & 07777, $s[4], $s[5] }";
    let mut argv = vec!["perl", "-e", script];
    argv.extend_from_slice(paths);
    let r = run(a, &argv, Duration::from_secs(30));
    assert_eq!(r.status, Some(0), "stat {paths:?}: {r:?}");
    (r.stdout.lines())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let n = |i: usize, radix| u32::from_str_radix(f[i], radix).unwrap_or_else(|e| panic!("{l}: {e}"));
            (f[0].parse().unwrap_or_else(|e| panic!("{l}: {e}")), n(1, 8), n(2, 10), n(3, 10))
        })
        .collect()
}

/// The guest's TCP sockets listening on port 2379 (local addresses in /proc/net/tcp{,6} hex).
fn listening_2379(a: &mut Agent) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = a.read(table).unwrap_or_else(|e| panic!("{table}: {e}"));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[1].ends_with(":094B") && f[3] == "0A" {
                out.push(f[1].to_string());
            }
        }
    }
    out
}

fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn etcd_answers_and_keeps_its_data() {
    // Two builds, three boots and an update under TCG: 4.3 minutes on two quiet cores, 10 under
    // load; too long for every CI run.
    if !berth_qemu_tests::slow_enabled("etcd_host::etcd_answers_and_keeps_its_data") {
        return;
    }
    let started = Instant::now();
    let scratch =
        tempfile::Builder::new().prefix("etcd-host-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch");
    let v1 = etcd_host("1.0.0", scratch.path());
    let repo = Repo::new();
    let port = free_local_port().expect("a free port on 127.0.0.1");
    let document = format!(
        "hostname = {HOSTNAME:?}\n{}\n[[files]]\npath = \"/etc/default/etcd\"\ncontent = \"{ETCD_DEFAULTS}\"\n{NO_NETWORK_TIME}",
        provision("immediate")
    );
    let relay = Path::new(env!("CARGO_BIN_EXE_berth-guestfwd-relay"));
    let options = Options {
        overlay: true,
        network: true,
        forwards: vec![Forward { host: port, guest: 2379 }],
        guest_forwards: vec![http::guest_forward(relay, repo.server.port())],
        serial_ports: vec![PORT_NAME.into()],
        provision: Some(document),
        cpus: Some(1),
        ..Options::default()
    };
    let mut m = Machine::start_with(&Boot { disk: &v1, format: "raw", memory_mib: MEMORY_MIB }, &options)
        .unwrap_or_else(|e| panic!("starting QEMU: {e}"));
    m.wait_for(BOOT_COMPLETE, BOOT).unwrap_or_else(|e| panic!("{e}"));
    let booted = started.elapsed();

    // etcd runs as Debian's unit, as the etcd user, its data on STATE.
    let mut a = agent(&m);
    wait_unit(&mut a, "etcd.service", Duration::from_secs(120), |s| s.active == "active");
    let mounts = a.read("/proc/self/mountinfo").unwrap();
    let var = (mounts.lines().map(|l| l.split(' ').collect::<Vec<_>>()))
        .find(|f| f.get(4) == Some(&"/var"))
        .unwrap_or_else(|| panic!("/var not mounted:\n{mounts}"));
    let source = var.iter().skip_while(|f| **f != "-").nth(2).copied().unwrap_or_default();
    assert!(source.ends_with("vda4"), "/var is not STATE (partition 4): {var:?}");
    let st = stat(&mut a, &["/var", "/var/lib/etcd", "/var/lib/etcd/default/member/wal"]);
    assert_eq!((st[1].1, st[1].2, st[1].3), (0o700, 120, 120), "/var/lib/etcd: mode, uid, gid {st:?}");
    assert!(st.iter().all(|s| s.0 == st[0].0), "etcd's data is not on /var's filesystem: {st:?}");
    // Go listens on 0.0.0.0 with a dual-stack IPv6 socket: [::]:2379 in tcp6.
    let listening = listening_2379(&mut a);
    assert!(listening.iter().any(|l| l.trim_start_matches('0') == ":094B"), "provisioned: 0.0.0.0:2379, {listening:?}");
    let s = wait_status(&mut a, Duration::from_secs(60), "slot a marked good", marked_good);
    assert_eq!(slot(&s.running), ("a", "1.0.0", Some((2, 0, true))), "{s:#?}");

    // From the host, through the forward.
    healthy(port);
    let value = random_hex();
    etcdctl_ok(port, &["put", "berth/marker", &value], Duration::from_secs(60));
    assert_eq!(marker(port), value);
    let (cluster, id, name, urls) = member(port);
    assert_eq!(name, HOSTNAME, "ETCD_NAME=%H");
    assert_eq!(urls, ["http://127.0.0.1:2379"], "the advertise URL of /etc/default/etcd");
    let log = raft(port);
    eprintln!("boot 1: etcd healthy, member {id:x} of cluster {cluster:x}, after {:.0} s", booted.as_secs_f64());

    // A reboot.
    let before = Instant::now();
    a.spawn(&["berthctl", "reboot"]).unwrap();
    // The agent's port takes one connection at a time.
    drop(a);
    wait_next_boot_complete(&mut m, BOOT);
    healthy(port);
    assert_eq!(marker(port), value, "the value after a reboot");
    assert_eq!(member(port), (cluster, id, name.clone(), urls.clone()), "the member after a reboot");
    let after = raft(port);
    assert!(after.0 > log.0 && after.1 > log.1, "raft (term, index) {log:?} before the reboot, {after:?} after");
    let log = after;
    eprintln!("reboot: value and member kept, {:.0} s", before.elapsed().as_secs_f64());

    // An A→B update to 1.1.0.
    let v2 = etcd_host("1.1.0", scratch.path());
    let before = Instant::now();
    repo.publish(&v2);
    wait_next_boot_complete(&mut m, STAGE_TIMEOUT + BOOT);
    let mut a = agent(&m);
    let s = wait_status(&mut a, Duration::from_secs(120), "1.1.0 on b, marked good", |s| {
        s.running.slot.name() == "b" && marked_good(s) && s.state == Phase::Idle
    });
    assert_eq!(slot(&s.running), ("b", "1.1.0", Some((2, 0, true))), "{s:#?}");
    healthy(port);
    assert_eq!(marker(port), value, "the value after the update");
    assert_eq!(member(port), (cluster, id, name, urls), "the member after the update");
    let after = raft(port);
    assert!(after.0 > log.0 && after.1 > log.1, "raft (term, index) {log:?} before the update, {after:?} after");
    eprintln!("update to 1.1.0 on b: value and member kept, {:.0} s", before.elapsed().as_secs_f64());

    // The image's own default, once provisioning's URLs are gone: the guest's loopback only,
    // nothing on the network (the forward finds no listener).
    a.write("/etc/default/etcd", "# provisioning's URLs removed: the image's defaults\n").unwrap();
    let r = run(&mut a, &["berthctl", "restart", "etcd.service"], Duration::from_secs(120));
    assert_eq!(r.status, Some(0), "berthctl restart etcd.service: {r:?}");
    wait_unit(&mut a, "etcd.service", Duration::from_secs(120), |s| s.active == "active");
    let listening = listening_2379(&mut a);
    assert_eq!(listening, ["0100007F:094B"], "the default listens on 127.0.0.1:2379 only");
    let out = etcdctl(port, &["endpoint", "health"]);
    assert!(!out.status.success(), "etcd answered from outside the guest by default: {out:?}");
    eprintln!("etcd-host: passed in {:.0} s", started.elapsed().as_secs_f64());
}
