//! `container-host` booted as an AWS, a GCE and an Azure machine, each against a strict fake of
//! its cloud's metadata service (`berth_qemu_tests::cloud`): QEMU gives the guest that cloud's
//! SMBIOS strings and disk controller, and a user network that covers the cloud's fixed
//! addresses (169.254.169.254, and Azure's WireServer 168.63.129.16), whose port 80 QEMU hands
//! to the fakes on 127.0.0.1 through `berth-guestfwd-relay`: nothing leaves this machine. No
//! provisioning document comes over fw_cfg or the ESP; everything the guest gets is the
//! metadata's: the hostname, `core`'s SSH key, and the user data (a provisioning document with
//! a file and a unit that copies it).
//!
//! - AWS: the `berth export --platform aws` artifact (its ESP says `aws`) on NVMe; IMDSv2 only
//!   (every GET carries a token), and the user data answered 500 twice before 200 (retried).
//! - GCE: the disk without an ESP word, so the platform comes from SMBIOS, on virtio-scsi; an
//!   FQDN longer than a hostname cut at its first dot; an instance and a project key. First
//!   malformed user data (a clear error naming the source, nothing of the record applied), then
//!   the operator fixes it and reboots: applied.
//! - Azure: SMBIOS again; exactly one ready report per instance across a reboot, and a new
//!   instance id (a new VM from the same disk) provisions again and reports ready once more.
//! - A metadata service that never answers: the boot goes on within the fetch's deadline, says
//!   so on the console, and nothing is provisioned.
//!
//! Each boot's time is printed (`TIMING` lines). CI runs three boots (AWS; Azure and its
//! reboot); the rest is in the slow suite (`BERTH_TEST_SLOW=1`): GCE's two boots, Azure's new
//! instance, and the service that never answers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_builder::export::{ExportOptions, export};
use berth_builder::platform::Platform;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::cloud::{self, Cloud, Fault, Instance, METADATA_ADDR, WIRESERVER_ADDR, aws, azure, gce};
use berth_qemu_tests::{DiskBus, Options};
use common::host::{
    BOOT_COMPLETE, Host, boot_host_on, container_host, container_host_partitions, keygen, run, ssh, ssh_retry,
};
use common::{BOOT_TIMEOUT, SERIAL, line_with};

/// The file the user data writes.
const FILE: &str = "/etc/berth-test/cloud.conf";

/// The unit the user data of `tag` enables, and the file it copies [`FILE`] to: proof that the
/// unit the document enabled was started after the file was written. Each instance's user data
/// has its own (a unit enabled by an earlier instance's document stays enabled and starts with
/// the boot, before the new instance's metadata is applied).
fn unit(tag: &str) -> (String, String) {
    (format!("berth-cloud-{tag}.service"), format!("/run/berth-cloud-{tag}.ran"))
}

/// What `core` runs over SSH to show what the metadata of `tag` gave the machine.
fn show(tag: &str) -> String {
    format!("id -un; hostname; cat {FILE} {}", unit(tag).1)
}

/// The provisioning document given as user data: [`FILE`] with `content`, and the enabled
/// oneshot unit of `tag` that copies it.
fn user_data(tag: &str, content: &str) -> Vec<u8> {
    let (name, ran) = unit(tag);
    format!(
        r#"[[files]]
path = "{FILE}"
content = "{content}\n"

[[units]]
name = "{name}"
enable = true
content = """
[Unit]
Description=Berth cloud test: a unit from the user data
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/cp {FILE} {ran}
[Install]
WantedBy=multi-user.target
"""
"#
    )
    .into_bytes()
}

/// A copy of [`container_host`] with no `berth/platform` on its ESP: a disk that declares no
/// platform, so the guest decides it from SMBIOS. A copy beside it, not the disk itself: other
/// tests of this binary boot the built image at the same time, its ESP saying `metal` (a
/// cloud's SMBIOS wins over that, with a warning: the Azure test boots it as built).
fn wordless() -> &'static Path {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let built = container_host();
        let disk = built.with_file_name("container-host-wordless.img");
        let cp = std::process::Command::new("cp").arg("--sparse=always").arg(built).arg(&disk).status();
        assert!(cp.expect("running cp").success(), "copying {} to {}", built.display(), disk.display());
        let esp = container_host_partitions().into_iter().find(|p| p.number == 1).expect("the ESP in the manifest");
        let target = format!("{}@@{}", disk.display(), esp.offset);
        let del = std::process::Command::new("mdel").args(["-i", &target, "::/berth/platform"]).output();
        let del = del.expect("running mdel (install mtools)");
        let left = std::process::Command::new("mtype").args(["-i", &target, "::/berth/platform"]).output().unwrap();
        assert!(!left.status.success(), "berth/platform still on the ESP: {del:?} {left:?}");
        let kept = std::process::Command::new("mtype")
            .args(["-i", &format!("{}@@{}", built.display(), esp.offset), "::/berth/platform"])
            .output()
            .unwrap();
        assert!(kept.status.success(), "the built image lost its berth/platform");
        disk
    })
}

/// `berth export --platform aws` of [`container_host`] into `dir`: the raw disk (whole GiB)
/// whose ESP says `aws`.
fn aws_artifact(dir: &Path) -> PathBuf {
    let source = container_host();
    let started = Instant::now();
    let options = ExportOptions {
        platforms: vec![Platform::Aws],
        out_dir: dir.to_path_buf(),
        provision: None,
        source_date_epoch: None,
        progress: false,
    };
    let artifacts = export(source, &options).unwrap_or_else(|e| panic!("berth export --platform aws: {e}"));
    let a = artifacts.into_iter().find(|a| a.platform == Platform::Aws).expect("the aws artifact");
    eprintln!(
        "TIMING exported {} ({} MiB) in {:.1} s",
        a.path.display(),
        a.bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    a.path
}

/// The relay QEMU runs for each guest connection to a fake.
fn relay() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth-guestfwd-relay"))
}

/// Boots `disk` as a machine of `cloud` with an SSH forward: its SMBIOS strings, its disk
/// controller, its user network, and `targets` (guest address → fake's port) forwarded. No
/// provisioning document over fw_cfg unless `fw_cfg` gives one.
fn boot(
    cloud: Cloud,
    disk: &Path,
    instance_id: &str,
    targets: &[(std::net::Ipv4Addr, u16)],
    fw_cfg: Option<String>,
) -> Host {
    let platform = match cloud {
        Cloud::Aws => Platform::Aws,
        Cloud::Gce => Platform::Gce,
        Cloud::Azure => Platform::Azure,
    };
    let extra = Options {
        disk_bus: DiskBus::for_platform(platform),
        smbios: cloud.smbios(instance_id),
        user_subnet: Some(cloud.subnet()),
        guest_forwards: cloud::guest_forwards(relay(), targets),
        ..Options::default()
    };
    let format = if disk.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
    boot_host_on(disk, format, fw_cfg, true, extra)
}

/// Waits for boot number `n` of the machine to reach `boot-complete.target` and prints how
/// long it took since `since`.
fn wait_boot(h: &mut Host, n: usize, what: &str, since: Instant) {
    h.machine.wait_for_count(BOOT_COMPLETE, n, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!("TIMING {what}: boot-complete.target {:.1} s after power-on/reboot", since.elapsed().as_secs_f64());
}

/// The console since byte `from` (what one boot printed).
fn console_since(h: &Host, from: usize) -> String {
    h.machine.console().get(from..).unwrap_or_default().to_string()
}

/// `berthctl logs berth-metadata.service` and `berth-azure-ready.service` in the guest.
fn metadata_logs(a: &mut Agent) -> String {
    let mut out = String::new();
    for unit in ["berth-metadata.service", "berth-azure-ready.service"] {
        let r = run(a, &["berthctl", "logs", unit, "-n", "300"], Duration::from_secs(30));
        out += &format!("--- berthctl logs {unit}:\n{}{}", r.stdout, r.stderr);
    }
    out
}

/// Logs in as `core` with `key` and waits (the unit the user data enabled may still be
/// starting) until [`show`] of `tag` prints `core`, `hostname` and `content` twice (the file
/// and the unit's copy). Fails with the guest's metadata logs.
fn provisioned(h: &Host, key: &Path, hostname: &str, tag: &str, content: &str) {
    let port = h.ssh_port.expect("an SSH forward");
    let (name, show) = (unit(tag).0, show(tag));
    let want = format!("core\n{hostname}\n{content}\n{content}\n");
    let started = Instant::now();
    let mut out = ssh_retry(key, port, &show, Duration::from_secs(180));
    while String::from_utf8_lossy(&out.stdout) != want && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(2));
        out = ssh(key, port, &show);
    }
    if String::from_utf8_lossy(&out.stdout) != want {
        let mut a = h.agent();
        let status = run(&mut a, &["berthctl", "status", &name], Duration::from_secs(30));
        h.fail(format!(
            "ssh core@127.0.0.1 -p {port} '{show}': {out:?}\nwanted {want:?}\nberthctl status {name}: {status:?}\n{}",
            metadata_logs(&mut a)
        ));
    }
}

/// Whether `key` is refused for `core` (and not for another reason).
fn refused(key: &Path, port: u16) -> (bool, Output) {
    let out = ssh(key, port, "id -un");
    (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Permission denied"), out)
}

/// `berthctl status --json` in the guest: the hostname and the platform word.
fn status(a: &mut Agent) -> (String, String) {
    let r = run(a, &["berthctl", "status", "--json"], Duration::from_secs(30));
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("berthctl status --json: {e}: {r:?}"));
    (v["hostname"].as_str().unwrap_or_default().to_string(), v["platform"].as_str().unwrap_or_default().to_string())
}

/// Reboots through the agent and waits for boot number `n`; returns where its console starts.
fn reboot(h: &mut Host, n: usize, what: &str) -> usize {
    let from = h.machine.console().len();
    let mut a = h.agent();
    a.spawn(&["/usr/sbin/reboot"]).unwrap_or_else(|e| h.fail(e));
    drop(a);
    wait_boot(h, n, what, Instant::now());
    from
}

/// The AWS artifact on NVMe: IMDSv2 gives the hostname, `core`'s key and the user data, which
/// the fake answers 500 twice before it answers 200 (the client retries; provisioning completes).
/// Every GET carries a token; the platform is the ESP's `aws`, in agreement with SMBIOS.
#[test]
fn aws_imdsv2_provisions_the_exported_artifact_retrying_user_data_after_two_500s() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let public = keygen(&key);
    let stranger = work.path().join("stranger_ed25519");
    keygen(&stranger);
    let disk = aws_artifact(work.path());
    let instance = Instance {
        id: "i-0b4e2d6c8a1f3e5d7".into(),
        hostname: "ip-172-31-7-9.eu-west-1.compute.internal".into(),
        ssh_keys: vec![("berth-test-key".into(), public)],
        user_data: Some(user_data("aws", "from AWS user data")),
    };
    let imds = aws::Imds::start(instance.clone()).unwrap();
    imds.set_fault("/latest/user-data", Fault::Status { code: 500, times: 2 });

    let started = Instant::now();
    let mut h = boot(Cloud::Aws, &disk, &instance.id, &[(METADATA_ADDR, imds.port())], None);
    wait_boot(&mut h, 1, "aws boot 1", started);
    provisioned(&h, &key, &instance.hostname, "aws", "from AWS user data");
    eprintln!("TIMING aws: provisioned and logged in {:.1} s after power-on", started.elapsed().as_secs_f64());
    let port = h.ssh_port.expect("an SSH forward");
    let (no, out) = refused(&stranger, port);
    assert!(no, "a key the metadata does not give: {out:?}");

    let console = h.machine.console();
    eprintln!("{}", line_with(&console, "platform: aws (ESP berth/platform)"));
    assert!(!console.contains("platform: WARNING"), "the ESP word and SMBIOS disagreed:\n{console}");
    eprintln!("{}", line_with(&console, "provisioning: aws metadata: first boot"));
    eprintln!(
        "{}",
        line_with(&console, "provisioning: hostname ip-172-31-7-9.eu-west-1.compute.internal from the metadata")
    );
    let mut a = h.agent();
    assert_eq!(status(&mut a), (instance.hostname.clone(), "aws".to_string()));
    let logs = metadata_logs(&mut a);
    eprintln!("{logs}");

    // IMDSv2 only: the token first, every GET with one, none refused; the user data retried.
    let log = imds.requests();
    let first = &log[0];
    assert_eq!((first.method.as_str(), first.path()), ("PUT", "/latest/api/token"), "{log:#?}");
    assert_eq!(first.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    for r in &log {
        assert!(r.status != Some(401) && r.status != Some(400), "refused: {r:?}");
        if r.method == "GET" {
            assert!(r.header("x-aws-ec2-metadata-token").is_some(), "an IMDSv1 GET: {r:?}");
        }
    }
    let user_data: Vec<Option<u16>> =
        log.iter().filter(|r| r.path() == "/latest/user-data").map(|r| r.status).collect();
    assert_eq!(user_data, [Some(500), Some(500), Some(200)], "{log:#?}");
    let gaps: Vec<String> = (log.windows(2))
        .filter(|w| w[0].path() == "/latest/user-data")
        .map(|w| format!("{:.1} s", w[1].at.duration_since(w[0].at).as_secs_f64()))
        .collect();
    eprintln!("IMDS: {} requests; user data 500, 500, 200; waits after each: {gaps:?}", log.len());
}

/// The disk without an ESP word on GCE's SMBIOS and virtio-scsi: the platform comes from SMBIOS.
/// The user data is first malformed: the console names the source and the place, nothing of
/// the record is applied (not the hostname, not the keys), and the unit fails. The operator
/// fixes it and reboots: the same instance now provisions: the FQDN's first label as hostname,
/// the instance's and the project's keys for `core`, the file and the unit.
#[test]
fn gce_from_smbios_malformed_user_data_applies_nothing_then_the_fixed_one_applies() {
    if !berth_qemu_tests::slow_enabled("clouds: GCE, malformed then fixed user data") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let public = keygen(&key);
    let project_key = work.path().join("project_ed25519");
    let project_public = keygen(&project_key);
    let fqdn = "berth-gce-1.europe-west1-b.c.berth-test-project-with-a-long-name.internal";
    assert!(fqdn.len() > 63);
    let malformed =
        b"[[files]]\npath = \"/etc/berth-test/half.conf\"\ncontent = \"x\"\n\n[[files]]\npath = 5\n".to_vec();
    let instance = Instance {
        id: "4520031799277581759".into(),
        hostname: fqdn.into(),
        ssh_keys: vec![("core".into(), public)],
        user_data: Some(malformed),
    };
    let server = gce::MetadataServer::start(instance.clone()).unwrap();
    server.set_project_attribute("ssh-keys", Some(&format!("core:{project_public}")));

    let disk = wordless();
    let started = Instant::now();
    let mut h = boot(Cloud::Gce, disk, &instance.id, &[(METADATA_ADDR, server.port())], None);
    wait_boot(&mut h, 1, "gce boot 1 (malformed user data)", started);
    let port = h.ssh_port.expect("an SSH forward");
    let mut a = h.agent();
    // berth-metadata.service is done by boot-complete.target: the record was judged.
    let console = h.machine.console();
    eprintln!("{}", line_with(&console, "platform: gce (SMBIOS)"));
    let error = line_with(&console, "provisioning config cloud metadata user data:6:8: invalid type");
    eprintln!("{error}");
    assert!(error.contains("nothing applied"), "{error}");
    let (hostname, platform) = status(&mut a);
    assert_eq!(platform, "gce");
    assert_ne!(hostname, "berth-gce-1", "the hostname of malformed user data's record was applied");
    assert!(a.read("/etc/berth-test/half.conf").is_err(), "a file of malformed user data was written");
    for k in [&key, &project_key] {
        let (no, out) = refused(k, port);
        assert!(no, "a key of malformed user data's record: {out:?}");
    }
    let r = run(&mut a, &["berthctl", "provision-status"], Duration::from_secs(30));
    assert!(r.stdout.contains("failed: cloud metadata user data"), "{r:?}");
    let unit = run(&mut a, &["berthctl", "status", "berth-metadata.service"], Duration::from_secs(30));
    assert_ne!(unit.status, Some(0), "berth-metadata.service did not fail: {unit:?}");
    eprintln!("{}", metadata_logs(&mut a));
    drop(a);

    // The operator fixes the user data and reboots: the same instance provisions now.
    server.set_instance(Instance { user_data: Some(user_data("gce", "from GCE user data")), ..instance.clone() });
    let from = reboot(&mut h, 2, "gce boot 2 (fixed user data)");
    provisioned(&h, &key, "berth-gce-1", "gce", "from GCE user data");
    let out = ssh_retry(&project_key, port, "id -un", Duration::from_secs(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "core\n", "the project's key: {out:?}");
    let console = console_since(&h, from);
    eprintln!("{}", line_with(&console, "provisioning: hostname berth-gce-1 from the metadata"));
    eprintln!(
        "{}",
        line_with(&console, "provisioning: applied cloud metadata user data (gce, instance 4520031799277581759)")
    );

    // Every request said Metadata-Flavor: Google and none was refused.
    let log = server.requests();
    assert!(!log.is_empty());
    for r in &log {
        assert_eq!(r.header("metadata-flavor"), Some("Google"), "{r:?}");
        assert!(r.status != Some(403), "refused: {r:?}");
    }
    let asked: Vec<&str> = log.iter().map(|r| r.path()).collect();
    for path in ["instance/id", "instance/hostname", "instance/attributes/ssh-keys", "project/attributes/ssh-keys"] {
        assert!(asked.iter().any(|p| p.ends_with(path)), "{path} never asked: {asked:?}");
    }
    eprintln!("GCE metadata server: {} requests over two boots", log.len());
}

fn azure_instance(id: &str, name: &str, public: &str, tag: &str, content: &str) -> Instance {
    Instance {
        id: id.into(),
        hostname: name.into(),
        ssh_keys: vec![("core".into(), public.to_string())],
        user_data: Some(user_data(tag, content)),
    }
}

/// Waits until the WireServer has `n` valid ready reports for `vm_id` (or fails).
fn wait_ready(h: &Host, fake: &azure::Azure, vm_id: &str, n: usize) -> Duration {
    let started = Instant::now();
    while fake.ready_reports(vm_id) < n {
        if started.elapsed() > Duration::from_secs(180) {
            let mut a = h.agent();
            h.fail(format!("no ready report for {vm_id}: {:#?}\n{}", fake.health_reports(), metadata_logs(&mut a)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    started.elapsed()
}

/// Waits for `berth-azure-ready.service` to be done on this boot (active after its oneshot ran,
/// or failed).
fn wait_ready_unit(h: &Host) {
    let mut a = h.agent();
    let s = common::host::wait_unit(&mut a, "berth-azure-ready.service", Duration::from_secs(180), |s| {
        s.active == "active" || s.active == "failed"
    });
    if s.active != "active" {
        h.fail(format!("berth-azure-ready.service: {}\n{}", s.json, metadata_logs(&mut a)));
    }
}

/// Azure from SMBIOS: IMDS gives the hostname, `core`'s key and the user data (base64); after
/// the health gate the WireServer gets one ready report. A reboot provisions nothing and reports
/// nothing. A new VM from the same disk (another vmId, container and role instance) provisions
/// again (new hostname, new file) and reports ready once for itself.
#[test]
fn azure_reports_ready_once_per_instance_across_a_reboot_and_a_new_instance() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let public = keygen(&key);
    let first =
        azure_instance("1d3c6b0e-9c6f-4a1e-8b8e-2f5c3a7d9e01", "berth-azure-1", &public, "vm1", "from Azure VM 1");
    let fake = azure::Azure::start(first.clone()).unwrap();

    let disk = container_host(); // its ESP says metal: Azure's SMBIOS must win over that
    let started = Instant::now();
    let targets = [(METADATA_ADDR, fake.imds_port()), (WIRESERVER_ADDR, fake.wire_port())];
    let mut h = boot(Cloud::Azure, disk, &first.id, &targets, None);
    wait_boot(&mut h, 1, "azure boot 1", started);
    provisioned(&h, &key, "berth-azure-1", "vm1", "from Azure VM 1");
    let took = wait_ready(&h, &fake, &first.id, 1);
    eprintln!(
        "TIMING azure: ready report {:.1} s after power-on ({:.1} s after the login)",
        started.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    wait_ready_unit(&h);
    // Only after the health gate: the report came after the console said boot-complete.target.
    let gate = (h.machine.timeline().into_iter())
        .find(|(_, l)| l.contains(BOOT_COMPLETE))
        .map(|(at, _)| at)
        .expect("boot-complete.target on the console");
    let report = fake.health_reports()[0].at.duration_since(started);
    assert!(
        report + Duration::from_millis(500) >= gate,
        "the ready report came {report:?} after power-on, before boot-complete.target ({gate:?})"
    );
    let console = h.machine.console();
    eprintln!("{}", line_with(&console, "platform: azure (SMBIOS)"));
    eprintln!("{}", line_with(&console, "berth/platform says metal but SMBIOS says this machine is on azure"));
    let mut a = h.agent();
    assert_eq!(status(&mut a), ("berth-azure-1".to_string(), "azure".to_string()));
    eprintln!("{}", metadata_logs(&mut a));
    drop(a);

    // A reboot: the same VM; nothing provisioned again, no second report.
    let from = reboot(&mut h, 2, "azure boot 2 (reboot)");
    wait_ready_unit(&h);
    let console = console_since(&h, from);
    eprintln!(
        "{}",
        line_with(
            &console,
            "provisioning: azure metadata: already applied on instance 1d3c6b0e-9c6f-4a1e-8b8e-2f5c3a7d9e01"
        )
    );
    provisioned(&h, &key, "berth-azure-1", "vm1", "from Azure VM 1");
    assert_eq!(fake.ready_reports(&first.id), 1, "{:#?}", fake.health_reports());

    if berth_qemu_tests::slow_enabled("clouds: azure, a new VM from the same disk") {
        // A new VM from this disk: another vmId, so another container and role instance.
        let second =
            azure_instance("6a0f1e2d-3c4b-4a59-8e7d-6c5b4a392817", "berth-azure-2", &public, "vm2", "from Azure VM 2");
        fake.set_instance(second.clone());
        let from = reboot(&mut h, 3, "azure boot 3 (a new instance)");
        provisioned(&h, &key, "berth-azure-2", "vm2", "from Azure VM 2");
        wait_ready(&h, &fake, &second.id, 1);
        wait_ready_unit(&h);
        let console = console_since(&h, from);
        eprintln!(
            "{}",
            line_with(&console, "provisioning: azure metadata: a new instance 6a0f1e2d-3c4b-4a59-8e7d-6c5b4a392817")
        );
        assert_eq!(
            (fake.ready_reports(&first.id), fake.ready_reports(&second.id)),
            (1, 1),
            "{:#?}",
            fake.health_reports()
        );
    }

    // Every report was valid and named the agent; IMDS refused nothing.
    let reports = fake.health_reports();
    for r in &reports {
        assert!(r.valid && r.agent_name.is_some(), "{r:#?}");
    }
    eprintln!("WireServer: {} health report(s), each valid; first:\n{}", reports.len(), reports[0].body);
    for r in fake.imds_requests() {
        assert!(r.status.is_some_and(|s| s < 400), "IMDS refused: {r:?}");
        assert_eq!(r.header("metadata").map(str::to_ascii_lowercase).as_deref(), Some("true"), "{r:?}");
    }
    for r in fake.wire_requests() {
        assert!(r.status.is_some_and(|s| s < 400), "the WireServer refused: {r:?}");
    }
}

/// The fetch's deadline in [`short_deadline`].
const DEADLINE_SECS: u64 = 20;

/// A fw_cfg document (read at stage 2, before any unit starts) with a drop-in that gives
/// `berth-metadata fetch` a deadline of [`DEADLINE_SECS`] instead of its default 60 s: the
/// unit's own command lines, with `--deadline`.
fn short_deadline() -> String {
    let unit = berth_builder::service_units::METADATA_SERVICE;
    let exec: Vec<String> = (unit.lines())
        .filter(|l| l.starts_with("ExecStart="))
        .map(|l| l.replace("berth-metadata fetch", &format!("berth-metadata fetch --deadline {DEADLINE_SECS}")))
        .collect();
    assert!(exec.iter().any(|l| l.contains("--deadline")), "no `berth-metadata fetch` in the unit:\n{unit}");
    let drop_in = format!("[Service]\nExecStart=\n{}\n", exec.join("\n"));
    format!(
        "[[files]]\npath = \"/etc/systemd/system/berth-metadata.service.d/deadline.conf\"\ncontent = {}\n",
        serde_json::to_string(&drop_in).unwrap()
    )
}

/// A metadata service that accepts connections and never answers: the fetch gives up at its
/// deadline (shortened to 20 s for the test, [`short_deadline`]; each attempt is held until its
/// 10 s timeout, then tried again), the console says so, the boot reaches
/// `boot-complete.target`, and nothing is provisioned. The disk has no ESP word: AWS is
/// detected from SMBIOS here.
#[test]
fn a_metadata_service_that_never_answers_holds_the_boot_no_longer_than_the_deadline() {
    if !berth_qemu_tests::slow_enabled("clouds: a metadata service that never answers") {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let instance = Instance {
        id: "i-0hangs0000000000".into(),
        hostname: "never-applied".into(),
        ssh_keys: vec![],
        user_data: Some(user_data("hang", "never applied")),
    };
    let imds = aws::Imds::start(instance.clone()).unwrap();
    imds.set_fault("/", Fault::Hang);
    let disk = wordless();
    // The machine's timeline counts from about here.
    let started = Instant::now();
    let mut h = boot(Cloud::Aws, disk, &instance.id, &[(METADATA_ADDR, imds.port())], Some(short_deadline()));
    wait_boot(&mut h, 1, "aws boot (a metadata service that never answers)", started);
    let timeline = h.machine.timeline();
    let console = h.machine.console();
    eprintln!("{}", line_with(&console, "platform: aws (SMBIOS)"));
    let gave_up = "provisioning: aws metadata service did not answer; going on with the image's configuration";
    let (at, line) = (timeline.iter())
        .find(|(_, l)| l.contains(gave_up))
        .cloned()
        .unwrap_or_else(|| panic!("no {gave_up:?} on the console:\n{console}"));
    eprintln!("{line}");
    let log = imds.requests();
    assert!(!log.is_empty() && log.iter().all(|r| r.status.is_none()), "{log:#?}");
    let first_request = log[0].at.duration_since(started);
    let held = at.saturating_sub(first_request);
    eprintln!(
        "TIMING never answers: first request {:.1} s after power-on, given up {:.1} s later; {} attempts held",
        first_request.as_secs_f64(),
        held.as_secs_f64(),
        log.len()
    );
    // It kept trying until its deadline (each attempt held 10 s, then retried), no longer.
    assert!(log.len() >= 2, "never retried: {log:#?}");
    let deadline = Duration::from_secs(DEADLINE_SECS);
    assert!(
        (deadline - Duration::from_secs(5)..=deadline + Duration::from_secs(15)).contains(&held),
        "the fetch gave up {held:?} after its first request; its deadline is {deadline:?}"
    );
    let mut a = h.agent();
    let (hostname, platform) = status(&mut a);
    assert_eq!(platform, "aws");
    assert_ne!(hostname, "never-applied");
    assert!(a.read(FILE).is_err(), "{FILE} exists without any metadata");
    let logs = metadata_logs(&mut a);
    eprintln!("{logs}");
    assert!(logs.contains(&format!("(deadline {DEADLINE_SECS} s)")), "the drop-in's deadline was not used:\n{logs}");
}
