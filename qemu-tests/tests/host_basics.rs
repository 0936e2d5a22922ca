//! What every host is expected to do for users other than root, checked on ONE boot of
//! `container-host`:
//!
//! - as uid 65534: `/etc/resolv.conf` (a link into `/run/berth`) is readable and names resolve
//!   through `/etc/hosts` (localhost and the provisioned hostname); `logger` reaches the journal;
//!   STATE's mount under `/run/berth/private` stays out of reach;
//! - a `Type=notify` service with `User=nobody` reaches active (its READY=1 reaches the socket);
//! - `sysctl.d` is applied: berth-init's defaults, a same-named `/etc/sysctl.d` file hiding the
//!   image's `/usr/lib/sysctl.d` one;
//! - `hostname` exists, `sudo` says nothing about resolving the host, and `ctr run --net-host`
//!   of a local image works (containerd bind-mounts the host's `/etc/hosts`);
//! - the image boots from an NVMe disk (STATE is an NVMe namespace's partition), and
//!   `sudo poweroff` typed over SSH by the provisioned user powers the machine off (QEMU exits
//!   by itself).

mod common;

use std::time::{Duration, Instant};

use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{DiskBus, Options, oci};
use common::host::{
    Host, bash, boot_host_on, container_host, install_unit, keygen, run, ssh_retry, ssh_spawn, wait_unit,
};
use common::{SERIAL, line_with};

const HOSTNAME: &str = "berth-basics";
const NOTIFY_UNIT: &str = "berth-notify-nobody.service";
const REFERENCE: &str = "localhost/berth/busybox:basics";
const TARBALL: &str = "/var/tmp/busybox-basics.tar";

/// The first-boot document: the hostname, an `/etc/sysctl.d` file named as the one procps
/// ships in `/usr/lib/sysctl.d` (which sets `fs.protected_regular = 2`), so that it hides it,
/// and `core`'s SSH key.
fn provision(public_key: &str) -> String {
    format!(
        "hostname = \"{HOSTNAME}\"\n\n[[files]]\npath = \"/etc/sysctl.d/99-protect-links.conf\"\n\
         content = \"fs.protected_fifos = 2\\n\"\n\n\
         [[users]]\nname = \"core\"\nssh_authorized_keys = [\"{public_key}\"]\n"
    )
}

/// `argv` as uid/gid 65534 (nobody/nogroup) with no supplementary groups.
fn as_nobody(a: &mut Agent, script: &str) -> berth_guest_agent::ExecResult {
    let argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/bin/bash", "-c", script];
    run(a, &argv, Duration::from_secs(60))
}

fn check(h: &Host, ok: bool, what: impl std::fmt::Display) {
    if !ok {
        h.fail(what);
    }
}

#[test]
fn host_basics_for_non_root_users_sysctl_hosts_sudo_and_ctr_net_host() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = oci::busybox_image(REFERENCE).unwrap_or_else(|e| panic!("building the busybox image: {e}"));
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let public = keygen(&key);
    let started = Instant::now();
    let nvme = Options { disk_bus: DiskBus::Nvme, ..Options::default() };
    let mut h = boot_host_on(container_host(), "raw", Some(provision(&public)), true, nvme);
    let port = h.ssh_port.expect("an SSH forward");
    h.wait_boot_complete();
    eprintln!("boot-complete.target {:.1} s after power-on", started.elapsed().as_secs_f64());
    let mut a = h.agent();

    // H5: the modes, and STATE where only root reaches it.
    let modes = bash(
        &mut a,
        "stat -c '%a %U %n' /run/berth /run/berth/private /run/berth/notify /run/berth/syslog /run/berth/control.sock",
        Duration::from_secs(30),
    );
    eprintln!("{modes}");
    let want = [
        "755 root /run/berth",
        "700 root /run/berth/private",
        "777 root /run/berth/notify",
        "666 root /run/berth/syslog",
    ];
    check(
        &h,
        want.iter().all(|w| modes.contains(w)) && modes.contains("600 root /run/berth/control.sock"),
        format!("modes: {modes}"),
    );
    // STATE is the 4th partition of the NVMe disk the machine booted from.
    let mounts = a.read("/proc/self/mounts").unwrap_or_default();
    check(
        &h,
        (mounts.lines()).any(|l| l.split(' ').take(2).eq(["/dev/nvme0n1p4", "/run/berth/private/state"])),
        format!("STATE not /dev/nvme0n1p4 on /run/berth/private/state:\n{mounts}"),
    );
    let private = as_nobody(&mut a, "ls /run/berth/private/state");
    check(&h, private.status != Some(0), format!("uid 65534 listed STATE's mount: {private:?}"));

    // resolv.conf as nobody, once DHCP has written it.
    let waited = Instant::now();
    let resolv = loop {
        let r = as_nobody(&mut a, "cat /etc/resolv.conf");
        // restrict=on: QEMU's DHCP names no DNS server, so the file may say just that.
        if r.status == Some(0) && r.stdout.starts_with("# Written by berth-netd from DHCP") {
            break r;
        }
        if waited.elapsed() > Duration::from_secs(90) {
            h.fail(format!("uid 65534 cannot read /etc/resolv.conf as DHCP wrote it: {r:?}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("/etc/resolv.conf as uid 65534:\n{}", resolv.stdout);

    // Names through /etc/hosts (nsswitch: files first), as nobody.
    let hosts = as_nobody(&mut a, &format!("getent hosts localhost && getent hosts {HOSTNAME}"));
    check(
        &h,
        hosts.status == Some(0)
            && hosts.stdout.lines().any(|l| l.starts_with("127.0.0.1") || l.starts_with("::1"))
            && hosts.stdout.lines().any(|l| l.starts_with("127.0.1.1") && l.contains(HOSTNAME)),
        format!("getent hosts as uid 65534: {hosts:?}\n/etc/hosts: {:?}", a.read("/etc/hosts")),
    );
    eprintln!("getent hosts as uid 65534:\n{}", hosts.stdout);

    // syslog(3) from nobody lands in the journal, under the unit whose cgroup the sender is in
    // (the guest agent's, which runs it; a process outside any unit goes to `syslog`).
    let logged = as_nobody(&mut a, "logger --socket-errors=on -t berth-basics 'hello from nobody'");
    check(&h, logged.status == Some(0) && logged.stderr.is_empty(), format!("logger as uid 65534: {logged:?}"));
    let waited = Instant::now();
    loop {
        let logs = run(
            &mut a,
            &["/bin/bash", "-c", "cat /var/log/berth/berth-guest-agent.service.log /var/log/berth/syslog.log"],
            Duration::from_secs(30),
        );
        if logs.stdout.contains("berth-basics") && logs.stdout.contains("hello from nobody") {
            break;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            h.fail(format!("logger's line never reached the journal: {logs:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // A Type=notify service as nobody: READY=1 sent with util-linux's logger to $NOTIFY_SOCKET
    // (a datagram whose first line is logger's syslog header, then READY=1). The sender is
    // logger, not the main pid, hence NotifyAccess=all.
    a.write(
        "/etc/berth-basics-notify.sh",
        "logger -d --socket-errors=on -u \"$NOTIFY_SOCKET\" \"$(printf 'berth-basics\\nREADY=1')\" || exit 1\n\
         exec sleep infinity\n",
    )
    .unwrap_or_else(|e| h.fail(e));
    install_unit(
        &mut a,
        NOTIFY_UNIT,
        "[Service]\nType=notify\nNotifyAccess=all\nUser=nobody\nTimeoutStartSec=60\n\
         ExecStart=/bin/bash /etc/berth-basics-notify.sh\n",
    );
    let start = run(&mut a, &["berthctl", "start", NOTIFY_UNIT], Duration::from_secs(90));
    let s = wait_unit(&mut a, NOTIFY_UNIT, Duration::from_secs(60), |s| s.active == "active" || s.active == "failed");
    if s.active != "active" {
        let logs = run(&mut a, &["berthctl", "logs", NOTIFY_UNIT], Duration::from_secs(30));
        h.fail(format!("{NOTIFY_UNIT}: {start:?}\n{}\n{logs:?}", s.json));
    }
    let pid = s.main_pid.unwrap_or_else(|| h.fail(format!("no main pid: {}", s.json)));
    let status = a.read(&format!("/proc/{pid}/status")).unwrap_or_default();
    check(
        &h,
        status.lines().any(|l| l.starts_with("Uid:\t65534\t")),
        format!("main pid {pid} is not nobody's:\n{status}"),
    );

    // M9: sysctl.d at boot.
    let sysctl = bash(
        &mut a,
        "cd /proc/sys && grep -H . fs/protected_symlinks fs/protected_hardlinks fs/protected_fifos \
         fs/protected_regular kernel/kptr_restrict kernel/dmesg_restrict",
        Duration::from_secs(30),
    );
    eprintln!("{sysctl}");
    for want in [
        "fs/protected_symlinks:1",
        "fs/protected_hardlinks:1",
        // /etc/sysctl.d/99-protect-links.conf hides /usr/lib's (which says 2 for regular).
        "fs/protected_fifos:2",
        "fs/protected_regular:1",
        "kernel/kptr_restrict:1",
        "kernel/dmesg_restrict:1",
    ] {
        check(&h, sysctl.lines().any(|l| l == want), format!("no {want} in:\n{sysctl}"));
    }

    // Point 9: hostname, sudo, ctr run --net-host.
    let name = run(&mut a, &["hostname"], Duration::from_secs(30));
    check(&h, name.status == Some(0) && name.stdout.trim() == HOSTNAME, format!("hostname: {name:?}"));
    let sudo = run(&mut a, &["sudo", "-u", "core", "true"], Duration::from_secs(60));
    check(&h, sudo.status == Some(0) && sudo.stderr.is_empty(), format!("sudo -u core true: {sudo:?}"));

    let s = wait_unit(&mut a, "containerd.service", Duration::from_secs(120), |s| {
        s.active == "active" || s.active == "failed"
    });
    check(&h, s.active == "active", format!("containerd: {}", s.json));
    bash(&mut a, "mkdir -p /var/tmp", Duration::from_secs(30));
    a.write_bytes(TARBALL, &image.archive, Duration::from_secs(120)).unwrap_or_else(|e| h.fail(e));
    let r = run(&mut a, &["ctr", "image", "import", TARBALL], Duration::from_secs(300));
    check(&h, r.status == Some(0), format!("ctr image import: {r:?}"));
    let argv = ["ctr", "run", "--rm", "--net-host", REFERENCE, "basics", "/bin/busybox", "cat", "/etc/hosts"];
    let r = run(&mut a, &argv, Duration::from_secs(180));
    check(
        &h,
        r.status == Some(0) && r.stdout.contains(&format!("127.0.1.1\t{HOSTNAME}")),
        format!("ctr run --net-host: {r:?}"),
    );
    eprintln!("/etc/hosts in a --net-host container:\n{}", r.stdout);
    drop(a);

    // `sudo poweroff` as the provisioned user types it over SSH: QEMU exits by itself.
    let out = ssh_retry(&key, port, "id -un", Duration::from_secs(180));
    check(&h, out.status.success(), format!("ssh core@127.0.0.1 -p {port} id -un: {out:?}"));
    let asked = Instant::now();
    let mut session = ssh_spawn(&key, port, "sudo poweroff");
    let exited = h.machine.wait_exit(Duration::from_secs(90));
    let _ = session.kill();
    let answer = session.wait_with_output().unwrap();
    let status = exited.unwrap_or_else(|e| h.fail(format!("{e}\nssh core@ sudo poweroff: {answer:?}")));
    let console = h.machine.console();
    assert!(status.success(), "QEMU exited with {status} after sudo poweroff ({answer:?}):\n{console}");
    line_with(&console, "shutdown: filesystems unmounted; powering off");
    eprintln!("`sudo poweroff` over SSH to QEMU's exit: {:.1} s", asked.elapsed().as_secs_f64());
    eprintln!("all checks {:.1} s after power-on", started.elapsed().as_secs_f64());
}
