//! The `container-host` image end to end under TCG: it boots to `boot-complete.target` with
//! containerd started by berth-init's service manager (Type=notify: active only once containerd
//! said READY=1, in its own cgroup), and a busybox container built here runs under containerd
//! with its processes in containerd's delegated cgroup tree.
//!
//! The SSH boot is VirtualBox's: the disk inside the OVA `berth export` writes, booted with
//! VirtualBox's device set (q35, OVMF, virtio-scsi, virtio-net) and provisioned from its ESP; it
//! also carries the checks of drivers (coldplug, hot-add), `/dev/disk` links, `shutdown -r` and
//! the ACPI power button, so that they cost CI no boot of their own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_builder::export::{ExportOptions, export};
use berth_builder::platform::Platform;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{DiskBus, HOTPLUG_PORT_ID, Options, oci};
use common::host::{
    BOOT_COMPLETE, Host, bash, boot_host, boot_host_on, container_host, container_host_initramfs_modules,
    container_host_partitions, e2fsck_at, keygen, run, ssh, ssh_retry, ssh_spawn, unit_status, wait_exit_timed,
    wait_unit,
};
use common::{BOOT_TIMEOUT, SERIAL, line_with};

const CONTAINERD: &str = "containerd.service";
const DEVD: &str = "berth-devd.service";
/// A device present from power-on whose driver only the root's modules have (stage 1 never
/// loads it), and that driver.
const COLDPLUG_DEVICE: &str = "virtio-rng-pci";
const COLDPLUG_MODULE: &str = "virtio_rng";
/// A device hot-added through QMP, and its driver (also only in the root).
const HOTPLUG_DEVICE: &str = "virtio-balloon-pci";
const HOTPLUG_MODULE: &str = "virtio_balloon";
/// The line berth-init logs when it applied the ESP's provisioning document.
const ESP_SOURCE_LINE: &str = "provisioning: applied ESP berth/provision.toml";

/// containerd active, with a main pid, in `system.slice/containerd.service`.
fn containerd_active(h: &Host, a: &mut berth_qemu_tests::agent::Agent) -> u32 {
    let s = wait_unit(a, CONTAINERD, Duration::from_secs(120), |s| s.active == "active" || s.active == "failed");
    if s.active != "active" {
        h.fail(format!("containerd failed: {}", s.json));
    }
    s.main_pid.unwrap_or_else(|| h.fail(format!("containerd active without a main pid: {}", s.json)))
}

/// The two checks of a plain boot share it (a container-host boot costs CI minutes under TCG).
#[test]
fn boots_with_containerd_ready_and_runs_a_busybox_container_in_its_delegated_cgroup() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = oci::busybox_image(REFERENCE).unwrap_or_else(|e| panic!("building the busybox image: {e}"));
    let started = Instant::now();
    let mut h = boot_host(None, false);
    h.wait_boot_complete();
    eprintln!("boot-complete.target {:.1} s after power-on", started.elapsed().as_secs_f64());
    let mut a = h.agent();
    boots_to_boot_complete_with_containerd_active_after_ready(&h, &mut a);
    busybox_container_runs_in_containerds_delegated_cgroup(&h, &mut a, &image);
}

fn boots_to_boot_complete_with_containerd_active_after_ready(h: &Host, a: &mut Agent) {
    eprintln!("--- containerd active only after READY=1");
    let pid = containerd_active(h, a);
    // Type=notify: "active" only after READY=1, which containerd sends once it serves its API;
    // so the API answers at once, with no retry.
    let r = run(a, &["ctr", "version"], Duration::from_secs(60));
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
    let logs = run(a, &["berthctl", "logs", CONTAINERD, "-n", "1000"], Duration::from_secs(30));
    let at = |needle: &str| {
        (logs.stdout.lines()).position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {logs:?}"))
    };
    let (starting, active) = (at("msg=\"starting containerd\""), at(&format!("{CONTAINERD}: active (main pid")));
    assert!(starting < active, "containerd was active before it said anything:\n{}", logs.stdout);

    let human = run(a, &["berthctl", "status", CONTAINERD], Duration::from_secs(30));
    assert!(human.stdout.contains("active (running)"), "berthctl status containerd: {human:?}");
    assert_eq!(unit_status(a, CONTAINERD).main_pid, Some(pid), "containerd's main pid changed");
    eprintln!("berthctl status containerd:\n{}", human.stdout);
}

/// The OVA `berth export --platform virtualbox --provision FILE` writes from the test image, and
/// the qcow2 file QEMU boots it through: an empty overlay whose backing file is the VMDK member
/// of the OVA, read in place (QEMU's vmdk driver over the member's bytes, found with the tar
/// crate), so that the guest boots exactly the disk VirtualBox would import. `provision` goes
/// to the ESP's `berth/provision.toml`, the only provisioning document the guest gets.
fn ova_disk(provision: &str, work: &Path) -> PathBuf {
    let started = Instant::now();
    let document = work.join("provision.toml");
    std::fs::write(&document, provision).unwrap();
    let options = ExportOptions {
        platforms: vec![Platform::Virtualbox],
        out_dir: work.join("out"),
        provision: Some(document),
        source_date_epoch: None,
        progress: false,
    };
    let artifacts = export(container_host(), &options).unwrap_or_else(|e| panic!("berth export (virtualbox): {e}"));
    let ova = &artifacts.iter().find(|a| a.platform == Platform::Virtualbox).expect("an OVA among the artifacts").path;
    let ova = std::fs::canonicalize(ova).unwrap();

    let mut archive = tar::Archive::new(std::fs::File::open(&ova).unwrap());
    let mut members = Vec::new();
    let mut vmdk = None;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", ova.display()));
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".vmdk") {
            vmdk = Some((entry.raw_file_position(), entry.size()));
        }
        members.push(name);
    }
    // OVF 1.x: the descriptor first.
    assert!(members.first().is_some_and(|m| m.ends_with(".ovf")), "OVA members: {members:?}");
    let (offset, size) = vmdk.unwrap_or_else(|| panic!("no .vmdk in the OVA: {members:?}"));
    let backing = serde_json::json!({
        "driver": "vmdk",
        "file": { "driver": "raw", "offset": offset, "size": size, "file": { "driver": "file", "filename": ova } },
    });

    let disk = work.join("ova-disk.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", &format!("json:{backing}")])
        .arg(&disk)
        .output()
        .expect("running qemu-img (install qemu-utils)");
    assert!(out.status.success(), "qemu-img create over the OVA's VMDK: {out:?}");
    eprintln!(
        "exported {} ({} MiB, members {members:?}) in {:.1} s",
        ova.display(),
        std::fs::metadata(&ova).unwrap().len() >> 20,
        started.elapsed().as_secs_f64()
    );
    disk
}

/// Polls `/sys/module/NAME/initstate` through the agent until the module is live (loaded and
/// initialised) or `timeout` passes; how long it took.
fn wait_module(h: &Host, a: &mut Agent, name: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let state = a.read(&format!("/sys/module/{name}/initstate")).unwrap_or_default();
        if state.trim() == "live" {
            return started.elapsed();
        }
        if started.elapsed() > timeout {
            let devd = run(a, &["berthctl", "logs", DEVD, "-n", "200"], Duration::from_secs(30));
            let lsmod = run(a, &["cat", "/proc/modules"], Duration::from_secs(30));
            h.fail(format!("module {name} not loaded after {timeout:?}: {state:?}\n{devd:?}\n{}", lsmod.stdout));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The disk of the OVA boots under QEMU with VirtualBox's device set (q35, OVMF, a virtio-scsi
/// disk, virtio-net) and no fw_cfg: the provisioned user logs in over SSH with the key from the
/// ESP's `berth/provision.toml`, and only with that key. On the same boot: berth-devd loaded the
/// driver of a device present at power-on and of one hot-added through QMP, both only in the
/// root's modules (not the initramfs's); `/dev/disk/by-partuuid` and `/dev/disk/by-label` name
/// the right partitions; `sudo shutdown -r now` over SSH reboots (both drivers loaded again, the
/// key still accepted); after the second boot the ACPI power button (QMP `system_powerdown`)
/// stops every unit in order and QEMU exits within 60 s, leaving STATE clean for `e2fsck -fn`.
#[test]
fn ova_disk_on_virtualbox_devices_ssh_key_from_the_esp_drivers_reboot_and_power_button() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let public = keygen(&key);
    let stranger = work.path().join("other_ed25519");
    keygen(&stranger);
    let provision = format!("[[users]]\nname = \"core\"\nssh_authorized_keys = [\"{public}\"]\n");
    let disk = ova_disk(&provision, work.path());
    let parts = container_host_partitions();
    let initramfs_modules = container_host_initramfs_modules();
    for module in [COLDPLUG_MODULE, HOTPLUG_MODULE] {
        assert!(!initramfs_modules.iter().any(|m| m == module), "{module} is in the initramfs: {initramfs_modules:?}");
    }

    let virtualbox = Options {
        disk_bus: DiskBus::VirtioScsi,
        devices: vec![COLDPLUG_DEVICE.into()],
        hotplug_port: true,
        ..Options::default()
    };
    let started = Instant::now();
    let mut h = boot_host_on(&disk, "qcow2", None, true, virtualbox);
    let port = h.ssh_port.expect("an SSH forward");
    h.wait_boot_complete();
    eprintln!("boot-complete.target {:.1} s after power-on", started.elapsed().as_secs_f64());

    // SSH with the key that only the ESP's document carries.
    let waited = Instant::now();
    let out = ssh_retry(&key, port, "id -un", Duration::from_secs(180));
    if !out.status.success() {
        let mut a = h.agent();
        let status = run(&mut a, &["berthctl", "status", "ssh.service"], Duration::from_secs(30));
        h.fail(format!("ssh core@127.0.0.1 -p {port} id -un: {out:?}\nberthctl status ssh.service: {status:?}"));
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), "core\n");
    eprintln!("logged in as core over SSH {:.1} s after boot-complete", waited.elapsed().as_secs_f64());
    let refused = ssh(&stranger, port, "id -un");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("Permission denied"), "another key: {refused:?}");
    let console = h.machine.console();
    let source = line_with(&console, ESP_SOURCE_LINE);
    eprintln!("{source}");

    // Coldplug: the driver of a device present at power-on, from the root's modules.
    let mut a = h.agent();
    let took = wait_module(&h, &mut a, COLDPLUG_MODULE, Duration::from_secs(60));
    eprintln!("{COLDPLUG_MODULE} live {:.1} s after the first look", took.as_secs_f64());

    // Hotplug: a device plugged into the empty root port; its driver loaded within a bound.
    let before = a.read(&format!("/sys/module/{HOTPLUG_MODULE}/initstate")).unwrap_or_default();
    assert!(before.is_empty(), "{HOTPLUG_MODULE} loaded before its device was plugged in: {before:?}");
    h.machine.device_add(&format!("{HOTPLUG_DEVICE},id=hot0,bus={HOTPLUG_PORT_ID}")).unwrap_or_else(|e| h.fail(e));
    let took = wait_module(&h, &mut a, HOTPLUG_MODULE, Duration::from_secs(60));
    eprintln!("{HOTPLUG_MODULE} live {:.1} s after device_add", took.as_secs_f64());

    // /dev/disk links: each partition's PARTUUID names it; each filesystem label that blkid
    // (util-linux, probing the device itself) finds on one partition only names that partition.
    let mut script = String::from("set -e\n");
    for p in &parts {
        script.push_str(&format!(
            "t=$(readlink -f /dev/disk/by-partuuid/{g}); echo \"uuid {g} $(cat /sys/class/block/${{t#/dev/}}/partition)\"\n",
            g = p.guid
        ));
    }
    script.push_str(
        "for d in /sys/class/block/*/partition; do d=${d%/partition}; n=${d##*/}; \
         l=$(blkid -p -s LABEL -o value /dev/$n || true); [ -n \"$l\" ] && echo \"fs $(cat $d/partition) $l\"; done; \
         for l in /dev/disk/by-label/*; do t=$(readlink -f \"$l\"); \
         echo \"link ${l##*/} $(cat /sys/class/block/${t#/dev/}/partition)\"; done\n",
    );
    let links = bash(&mut a, &script, Duration::from_secs(60));
    eprintln!("{links}");
    for p in &parts {
        let want = format!("uuid {} {}", p.guid, p.number);
        assert!(links.lines().any(|l| l == want), "no {want:?} (/dev/disk/by-partuuid) in:\n{links}");
    }
    let labels: Vec<(&str, &str)> = links.lines().filter_map(|l| l.strip_prefix("fs ")?.split_once(' ')).collect();
    assert!(labels.iter().any(|(n, _)| *n == "1") && labels.iter().any(|(n, _)| *n == "4"), "labels: {links}");
    for (number, label) in &labels {
        if labels.iter().filter(|(_, l)| l == label).count() > 1 {
            continue;
        }
        let want = format!("link {label} {number}");
        assert!(links.lines().any(|l| l == want), "no {want:?} (/dev/disk/by-label) in:\n{links}");
    }
    drop(a);

    // `sudo shutdown -r now` as a person types it: the machine comes back.
    let asked = Instant::now();
    let mut session = ssh_spawn(&key, port, "sudo shutdown -r now");
    let rebooted = h.machine.wait_for_count(BOOT_COMPLETE, 2, BOOT_TIMEOUT);
    let _ = session.kill();
    let answer = session.wait_with_output().unwrap();
    if let Err(e) = rebooted {
        panic!("{e}\nssh core@127.0.0.1 -p {port} sudo shutdown -r now: {answer:?}");
    }
    eprintln!(
        "rebooted to boot-complete.target in {:.1} s after `sudo shutdown -r now` ({:?})",
        asked.elapsed().as_secs_f64(),
        answer.status
    );
    let console = h.machine.console();
    line_with(&console, "shutdown: filesystems unmounted; rebooting");
    // Still core's key; and both drivers coldplugged again (the hot-added device stays plugged in).
    let modules = format!("cat /sys/module/{COLDPLUG_MODULE}/initstate /sys/module/{HOTPLUG_MODULE}/initstate");
    let out = ssh_retry(&key, port, &format!("id -un && {modules}"), Duration::from_secs(180));
    assert_eq!(
        (out.status.success(), String::from_utf8_lossy(&out.stdout).as_ref()),
        (true, "core\nlive\nlive\n"),
        "ssh after the reboot: {out:?}"
    );

    // The ACPI power button: every unit stopped in order, QEMU gone within 60 s.
    let pressed = Instant::now();
    h.machine.system_powerdown().unwrap_or_else(|e| h.fail(e));
    let status = wait_exit_timed(&mut h.machine, Duration::from_secs(60));
    let took = pressed.elapsed();
    let console = h.machine.console();
    assert!(status.success(), "QEMU exited with {status} after system_powerdown:\n{console}");
    let begun = (console.match_indices("berth-init[1]: stopping "))
        .filter(|(i, _)| console[*i..].lines().next().is_some_and(|l| l.ends_with(" units")))
        .last()
        .unwrap_or_else(|| panic!("no \"stopping N units\" after the power button:\n{console}"));
    let shutdown = &console[begun.0..];
    eprintln!("power button to QEMU's exit: {:.1} s\n{shutdown}", took.as_secs_f64());
    let at = |needle: &str| {
        shutdown.find(needle).unwrap_or_else(|| panic!("no {needle:?} after the power button:\n{shutdown}"))
    };
    // berth-devd (of the second boot) saw KEY_POWER and asked PID 1 to power off.
    let devd = (console.rsplit_once(&format!("{DEVD}: active (main pid ")))
        .and_then(|(_, rest)| rest.split(')').next())
        .unwrap_or_else(|| panic!("berth-devd never active:\n{console}"));
    eprintln!("{}", line_with(&console, &format!("SIGUSR2 (from pid {devd}): powering off")));
    let off = at("shutdown: powering off");
    assert!(at("all units stopped") < off, "the power-off began before every unit stopped:\n{shutdown}");
    for unit in ["containerd.service", "ssh.service", "berth-update.service", "berth-timesync.service"] {
        assert!(at(&format!("{unit}: stopped")) < off, "{unit} stopped after the power-off began:\n{shutdown}");
    }
    // In reverse order of start: the update agent (After=berth-timesync.service) is down before
    // the clock is asked to stop, and the clock (After=network-online.target, which berth-netd
    // is Before=) before berth-netd is: an ordering through a target that stops nothing itself.
    assert!(
        at("berth-update.service: stopped") < at("berth-timesync.service: stopping"),
        "berth-timesync stopped before the update agent, which is ordered after it:\n{shutdown}"
    );
    assert!(
        at("berth-timesync.service: stopped") < at("berth-netd.service: stopping"),
        "berth-netd stopped before the clock, ordered after it through network-online.target:\n{shutdown}"
    );
    at("shutdown: filesystems unmounted; powering off");

    let overlay = h.machine.overlay().expect("the machine's overlay").to_path_buf();
    let state = parts.iter().find(|p| p.label == "STATE").expect("STATE in the manifest");
    let (clean, report) = e2fsck_at(&overlay, "qcow2", state.offset, work.path());
    assert!(clean, "e2fsck -fn STATE after the power button:\n{report}");
    eprintln!(
        "STATE after the power button: e2fsck -fn clean; all checks {:.1} s after power-on",
        started.elapsed().as_secs_f64()
    );
}

const REFERENCE: &str = "localhost/berth/busybox:test";
const TARBALL: &str = "/var/tmp/busybox-oci.tar";
const RUN_OUTPUT: &str = "/var/tmp/ctr-run.out";
/// The container's cgroup, inside containerd's delegated tree (ctr would otherwise place it at
/// /<namespace>/<id> under the root).
const CONTAINER_CGROUP: &str = "/system.slice/containerd.service/berth-test";

fn busybox_container_runs_in_containerds_delegated_cgroup(h: &Host, a: &mut Agent, image: &oci::OciImage) {
    eprintln!("--- a busybox container in containerd's delegated cgroup");

    // /var/tmp is not in the image (/var is STATE's, and nothing applies tmpfiles.d yet).
    bash(a, "mkdir -p /var/tmp", Duration::from_secs(30));
    let copied = Instant::now();
    a.write_bytes(TARBALL, &image.archive, Duration::from_secs(120)).unwrap_or_else(|e| h.fail(e));
    let sum = bash(a, &format!("sha256sum {TARBALL}"), Duration::from_secs(60));
    assert_eq!(format!("sha256:{}", sum.split_whitespace().next().unwrap_or("")), oci::digest(&image.archive));
    eprintln!("copied {} KiB into the guest in {:.1} s", image.archive.len() >> 10, copied.elapsed().as_secs_f64());

    let r = run(a, &["ctr", "image", "import", TARBALL], Duration::from_secs(300));
    assert_eq!(r.status, Some(0), "ctr image import: {r:?}");
    let images = run(a, &["ctr", "image", "ls", "-q"], Duration::from_secs(60));
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
                a,
                &["/bin/bash", "-c", "grep . /sys/fs/cgroup/system.slice/containerd.service/{,*/}cgroup.{type,procs}"],
                Duration::from_secs(30),
            );
            let tasks = run(a, &["ctr", "task", "ls"], Duration::from_secs(30));
            h.fail(format!(
                "no container output or process: {output:?}, {procs_file}: {procs:?}; {tasks:?}\n{}",
                types.stdout
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("container output:\n{output}");
    assert!(output.lines().any(|l| l.starts_with("0::/")), "no cgroup v2 line in the container's output: {output}");

    let tasks = run(a, &["ctr", "task", "ls"], Duration::from_secs(30));
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
    let ps = run(a, &["ctr", "task", "ps", "berth-test"], Duration::from_secs(30));
    assert!(ps.stdout.contains(&task_pid.to_string()), "ctr task ps: {ps:?}");

    // Killed, the task ends and `--rm` removes the container.
    let r = run(a, &["ctr", "task", "kill", "-s", "SIGKILL", "berth-test"], Duration::from_secs(30));
    assert_eq!(r.status, Some(0), "ctr task kill: {r:?}");
    let started = Instant::now();
    loop {
        let containers = run(a, &["ctr", "container", "ls", "-q"], Duration::from_secs(30));
        if !containers.stdout.lines().any(|l| l == "berth-test") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "berth-test not removed: {containers:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
