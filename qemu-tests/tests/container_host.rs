//! The `container-host` image end to end under TCG: it boots to `boot-complete.target` with
//! containerd started by berth-init's service manager (Type=notify: active only once containerd
//! said READY=1, in its own cgroup), a user provisioned on first boot logs in over SSH with
//! their key, and a busybox container built here runs under containerd with its processes in
//! containerd's delegated cgroup tree.

mod common;

use std::time::{Duration, Instant};

use berth_qemu_tests::oci;
use common::SERIAL;
use common::host::{Host, bash, boot_host, keygen, run, ssh, unit_status, wait_unit};

const CONTAINERD: &str = "containerd.service";

/// containerd active, with a main pid, in `system.slice/containerd.service`.
fn containerd_active(h: &Host, a: &mut berth_qemu_tests::agent::Agent) -> u32 {
    let s = wait_unit(a, CONTAINERD, Duration::from_secs(120), |s| s.active == "active" || s.active == "failed");
    if s.active != "active" {
        h.fail(format!("containerd failed: {}", s.json));
    }
    s.main_pid.unwrap_or_else(|| h.fail(format!("containerd active without a main pid: {}", s.json)))
}

#[test]
fn boots_to_boot_complete_with_containerd_active_after_ready() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut h = boot_host(None, false);
    h.wait_boot_complete();
    eprintln!("boot-complete.target {:.1} s after power-on", started.elapsed().as_secs_f64());
    let mut a = h.agent();

    let pid = containerd_active(&h, &mut a);
    // Type=notify: "active" only after READY=1, which containerd sends once it serves its API;
    // so the API answers at once, with no retry.
    let r = run(&mut a, &["ctr", "version"], Duration::from_secs(60));
    assert!(r.status == Some(0) && r.stdout.contains("Server:"), "ctr version right after active: {r:?}");
    let comm = a.read(&format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "containerd", "main pid {pid} is {comm:?}");
    // Its unit's group, or a group below it (containerd's delegated tree).
    let cgroup = a.read(&format!("/proc/{pid}/cgroup")).unwrap();
    let rest = cgroup.strip_prefix("0::/system.slice/containerd.service").unwrap_or_default();
    assert!(rest == "\n" || rest.starts_with('/'), "containerd's cgroup: {cgroup:?}");

    // With Type=simple the unit would be active at fork, before containerd logged a word; with
    // notify the manager's "active" comes after containerd's first line, which it writes long
    // before READY=1 (plugins load in between).
    let logs = run(&mut a, &["berthctl", "logs", CONTAINERD, "-n", "1000"], Duration::from_secs(30));
    let at = |needle: &str| {
        (logs.stdout.lines()).position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {logs:?}"))
    };
    let (starting, active) = (at("msg=\"starting containerd\""), at(&format!("{CONTAINERD}: active (main pid")));
    assert!(starting < active, "containerd was active before it said anything:\n{}", logs.stdout);

    let human = run(&mut a, &["berthctl", "status", CONTAINERD], Duration::from_secs(30));
    assert!(human.stdout.contains("active (running)"), "berthctl status containerd: {human:?}");
    assert_eq!(unit_status(&mut a, CONTAINERD).main_pid, Some(pid), "containerd's main pid changed");
    eprintln!("berthctl status containerd:\n{}", human.stdout);
}

#[test]
fn provisioned_user_logs_in_over_ssh_with_their_key() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_ed25519");
    let public = keygen(&key);
    let stranger = keys.path().join("other_ed25519");
    keygen(&stranger);
    let provision = format!("[[users]]\nname = \"core\"\nssh_authorized_keys = [\"{public}\"]\n");
    let mut h = boot_host(Some(provision), true);
    let port = h.ssh_port.expect("an SSH forward");
    h.wait_boot_complete();

    // sshd starts once its host keys exist: retry for a while.
    let started = Instant::now();
    let out = loop {
        let out = ssh(&key, port, "id -un");
        if out.status.success() || started.elapsed() > Duration::from_secs(180) {
            break out;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    if !out.status.success() {
        let mut a = h.agent();
        let status = run(&mut a, &["berthctl", "status", "ssh.service"], Duration::from_secs(30));
        h.fail(format!("ssh core@127.0.0.1 -p {port} id -un: {out:?}\nberthctl status ssh.service: {status:?}"));
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), "core\n");
    eprintln!("logged in as core over SSH {:.1} s after boot-complete", started.elapsed().as_secs_f64());

    // Only the provisioned key opens the door.
    let refused = ssh(&stranger, port, "id -un");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("Permission denied"), "another key: {refused:?}");
}

const REFERENCE: &str = "localhost/berth/busybox:test";
const TARBALL: &str = "/var/tmp/busybox-oci.tar";
const RUN_OUTPUT: &str = "/var/tmp/ctr-run.out";
/// The container's cgroup, inside containerd's delegated tree (ctr would otherwise place it at
/// /<namespace>/<id> under the root).
const CONTAINER_CGROUP: &str = "/system.slice/containerd.service/berth-test";

#[test]
fn busybox_container_runs_in_containerds_delegated_cgroup() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = oci::busybox_image(REFERENCE).unwrap_or_else(|e| panic!("building the busybox image: {e}"));
    let mut h = boot_host(None, false);
    h.wait_boot_complete();
    let mut a = h.agent();
    containerd_active(&h, &mut a);

    // /var/tmp is not in the image (/var is STATE's, and nothing applies tmpfiles.d yet).
    bash(&mut a, "mkdir -p /var/tmp", Duration::from_secs(30));
    let copied = Instant::now();
    a.write_bytes(TARBALL, &image.archive, Duration::from_secs(120)).unwrap_or_else(|e| h.fail(e));
    let sum = bash(&mut a, &format!("sha256sum {TARBALL}"), Duration::from_secs(60));
    assert_eq!(format!("sha256:{}", sum.split_whitespace().next().unwrap_or("")), oci::digest(&image.archive));
    eprintln!("copied {} KiB into the guest in {:.1} s", image.archive.len() >> 10, copied.elapsed().as_secs_f64());

    let r = run(&mut a, &["ctr", "image", "import", TARBALL], Duration::from_secs(300));
    assert_eq!(r.status, Some(0), "ctr image import: {r:?}");
    let images = run(&mut a, &["ctr", "image", "ls", "-q"], Duration::from_secs(60));
    assert!(images.stdout.lines().any(|l| l == REFERENCE), "{REFERENCE} not among the images: {images:?}");

    let script = "echo hello from busybox; cat /proc/self/cgroup; echo end of cgroup; sleep 30";
    let argv = [
        "ctr",
        "run",
        "--rm",
        "--cgroup",
        CONTAINER_CGROUP,
        REFERENCE,
        "berth-test",
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ];
    a.spawn_detached(&argv, RUN_OUTPUT).unwrap_or_else(|e| h.fail(e));

    // The container's output, and its process in the cgroup it was given.
    let procs_file = format!("/sys/fs/cgroup{CONTAINER_CGROUP}/cgroup.procs");
    let started = Instant::now();
    let (output, procs) = loop {
        let output = a.read(RUN_OUTPUT).unwrap_or_default();
        let procs = a.read(&procs_file).unwrap_or_default();
        // The end marker, not the greeting: the file is read while the container still writes it.
        if output.contains("hello from busybox") && output.contains("end of cgroup") && !procs.trim().is_empty() {
            break (output, procs);
        }
        if started.elapsed() > Duration::from_secs(120) {
            // runc cannot create a domain cgroup under containerd.service while containerd's
            // own processes sit in it (cgroup v2's no-internal-processes rule: runc's enabling
            // of threaded controllers there makes it "domain threaded", the new child "domain
            // invalid"); the manager has to place them in a sub-cgroup.
            let types = run(
                &mut a,
                &["/bin/bash", "-c", "grep . /sys/fs/cgroup/system.slice/containerd.service/{,*/}cgroup.{type,procs}"],
                Duration::from_secs(30),
            );
            let tasks = run(&mut a, &["ctr", "task", "ls"], Duration::from_secs(30));
            h.fail(format!(
                "no container output or process: {output:?}, {procs_file}: {procs:?}; {tasks:?}\n{}",
                types.stdout
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("container output:\n{output}");
    assert!(output.lines().any(|l| l.starts_with("0::/")), "no cgroup v2 line in the container's output: {output}");

    let tasks = run(&mut a, &["ctr", "task", "ls"], Duration::from_secs(30));
    let task_pid: u32 = (tasks.stdout.lines())
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["berth-test", pid, "RUNNING"] => pid.parse().ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("berth-test not RUNNING: {tasks:?}"));
    let procs: Vec<u32> = procs.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(procs.contains(&task_pid), "the task's pid {task_pid} is not in {procs_file}: {procs:?}");
    for pid in procs {
        let cgroup = a.read(&format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(
            cgroup.starts_with("0::/system.slice/containerd.service/"),
            "pid {pid} of the container is in {cgroup:?}"
        );
    }
    let ps = run(&mut a, &["ctr", "task", "ps", "berth-test"], Duration::from_secs(30));
    assert!(ps.stdout.contains(&task_pid.to_string()), "ctr task ps: {ps:?}");

    // Killed, the task ends and `--rm` removes the container.
    let r = run(&mut a, &["ctr", "task", "kill", "-s", "SIGKILL", "berth-test"], Duration::from_secs(30));
    assert_eq!(r.status, Some(0), "ctr task kill: {r:?}");
    let started = Instant::now();
    loop {
        let containers = run(&mut a, &["ctr", "container", "ls", "-q"], Duration::from_secs(30));
        if !containers.stdout.lines().any(|l| l == "berth-test") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "berth-test not removed: {containers:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
