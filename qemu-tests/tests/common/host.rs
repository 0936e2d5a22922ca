//! What the container-host tests (and the boot benchmark) share: `images/container-host.toml`
//! built once per test binary, a boot with the guest agent, a network and optionally an SSH
//! forward and a provisioning document (on this disk or another one made from it, with the
//! devices a test adds), `berthctl` driven through the agent, and the host's `ssh` client.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, build};
use berth_guest_agent::{ExecResult, PORT_NAME};
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::{Boot, Forward, Machine, Options, free_local_port};

/// The console line of PID 1's service manager once `boot-complete.target` is reached.
pub const BOOT_COMPLETE: &str = "reached boot-complete.target";

/// Guest memory: containerd, its shim and runc want more than the minimal image's 768 MiB.
pub const MEMORY_MIB: u32 = 1024;

/// `images/container-host.toml` as a test image (plus the guest agent,
/// [`berth_qemu_tests::test_definition`]), built on first use in this process (binaries from this
/// workspace, packages from the user's cache) under the target directory, one copy per test
/// binary. Tests boot it through overlays only, so one build serves them all.
pub fn container_host() -> &'static Path {
    static DISK: OnceLock<PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let exe = std::env::current_exe().ok();
        let who = exe.as_deref().and_then(Path::file_stem).map(|s| s.to_string_lossy().into_owned());
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("container-host").join(who.unwrap_or("tests".into()));
        let started = Instant::now();
        let def = berth_qemu_tests::test_definition("container-host", &out.join("definition"));
        let options = BuildOptions::for_workspace(&root, def, out).expect("a cache directory");
        let report = build(&options).unwrap_or_else(|e| panic!("berth build images/container-host.toml: {e:#}"));
        eprintln!("built {} in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
        report.disk
    })
}

/// A booted container host.
pub struct Host {
    pub machine: Machine,
    /// The host port forwarded to the guest's port 22, when asked for.
    pub ssh_port: Option<u16>,
}

/// One partition of [`container_host`] as its build manifest lists it.
#[derive(Debug, Clone)]
pub struct Partition {
    pub number: u32,
    /// The GPT partition name (`EFI-SYSTEM`, `ROOT-A`, `ROOT-B`, `STATE`).
    pub label: String,
    /// The unique partition GUID, lower case (what `/dev/disk/by-partuuid/` names).
    pub guid: String,
    pub offset: u64,
}

/// The build manifest `berth build` wrote next to [`container_host`].
fn container_host_manifest() -> serde_json::Value {
    let manifest = container_host().with_extension("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()))
}

/// The kernel modules [`container_host`]'s initramfs carries (what stage 1 can load), by name as
/// `/sys/module` spells it (`kernel/drivers/char/hw_random/virtio-rng.ko` is `virtio_rng`).
pub fn container_host_initramfs_modules() -> Vec<String> {
    let json = container_host_manifest();
    let modules = json["initramfs_modules"].as_array().expect("initramfs_modules in the manifest");
    (modules.iter())
        .map(|m| {
            let path = m.as_str().expect("a module path");
            let file = path.rsplit('/').next().unwrap_or(path);
            file.split(".ko").next().unwrap_or(file).replace('-', "_")
        })
        .collect()
}

/// The partitions of [`container_host`], from its build manifest.
pub fn container_host_partitions() -> Vec<Partition> {
    let json = container_host_manifest();
    let parts = json["partitions"].as_array().expect("partitions in the manifest");
    (parts.iter())
        .map(|p| Partition {
            number: p["number"].as_u64().expect("partition number") as u32,
            label: p["label"].as_str().expect("partition label").to_string(),
            guid: p["guid"].as_str().expect("partition guid").to_lowercase(),
            offset: p["offset"].as_u64().expect("partition offset"),
        })
        .collect()
}

/// Boots [`container_host`] on an overlay with the guest agent's port and a network (with
/// `ssh`: 127.0.0.1:<free port> forwarded to port 22), handing it `provision` (TOML) as its
/// first-boot provisioning document.
pub fn boot_host(provision: Option<String>, ssh: bool) -> Host {
    boot_host_on(container_host(), "raw", provision, ssh, Options::default())
}

/// Boots `disk` (`raw` or `qcow2`: [`container_host`] or one made from it) as [`boot_host`]
/// does, with what `extra` adds (a disk bus, devices, QMP); its overlay, network, forwards,
/// ports and provisioning document are the ones [`boot_host`] gives (`provision: None` and no
/// fw_cfg document: the guest finds its own, e.g. on the ESP).
pub fn boot_host_on(disk: &Path, format: &str, provision: Option<String>, ssh: bool, extra: Options) -> Host {
    let ssh_port = ssh.then(|| free_local_port().expect("a free port on 127.0.0.1"));
    let options = Options {
        overlay: true,
        network: true,
        forwards: ssh_port.map(|host| Forward { host, guest: 22 }).into_iter().collect(),
        serial_ports: vec![PORT_NAME.into()],
        provision,
        ..extra
    };
    let machine = Machine::start_with(&Boot { disk, format, memory_mib: MEMORY_MIB }, &options)
        .unwrap_or_else(|e| panic!("starting QEMU: {e}"));
    Host { machine, ssh_port }
}

impl Host {
    /// Waits for [`BOOT_COMPLETE`] on the console.
    pub fn wait_boot_complete(&mut self) -> String {
        self.machine.wait_for(BOOT_COMPLETE, super::BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A connection to the guest agent (it answers once stage 2 has started it).
    pub fn agent(&self) -> Agent {
        let port = self.machine.serial_port(PORT_NAME).expect("agent port");
        Agent::connect(port, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", self.machine.console()))
    }

    /// Fails the test with `what`, the console and QEMU's stderr.
    pub fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\n--- console:\n{}\n--- QEMU stderr:\n{}", self.machine.console(), self.machine.qemu_stderr())
    }
}

/// Runs `argv` in the guest (bounded by `timeout`) and returns what it did, whatever its exit.
pub fn run(a: &mut Agent, argv: &[&str], timeout: Duration) -> ExecResult {
    a.exec(argv, timeout).unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")))
}

/// Runs `script` with bash in the guest and returns its stdout; fails the test unless it
/// exits 0.
pub fn bash(a: &mut Agent, script: &str, timeout: Duration) -> String {
    let r = run(a, &["/bin/bash", "-c", script], timeout);
    assert_eq!(r.status, Some(0), "bash -c {script:?}: {r:?}");
    r.stdout
}

/// One unit as `berthctl status UNIT --json` reports it (one JSON object per unit), with the
/// fields the tests read pulled out and the whole object kept for messages.
#[derive(Debug, Clone)]
pub struct UnitStatus {
    /// `active`, `activating`, `deactivating`, `inactive`, `failed`.
    pub active: String,
    pub main_pid: Option<u32>,
    pub restarts: Option<u64>,
    pub json: serde_json::Value,
}

/// `berthctl status UNIT --json` through the agent (its exit status says whether the unit is
/// active, so only the JSON is judged).
pub fn unit_status(a: &mut Agent, unit: &str) -> UnitStatus {
    let r = run(a, &["berthctl", "status", unit, "--json"], Duration::from_secs(30));
    let json: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("berthctl status {unit} --json: {e}: {r:?}"));
    UnitStatus {
        active: json["active"].as_str().unwrap_or_else(|| panic!("no \"active\" in {json}")).to_string(),
        main_pid: json["main_pid"].as_u64().filter(|&p| p > 0).map(|p| p as u32),
        restarts: json["restarts"].as_u64(),
        json,
    }
}

/// Polls [`unit_status`] every 200 ms until `done` holds (returning that status) or `timeout`
/// passes (failing the test with the last status).
pub fn wait_unit(a: &mut Agent, unit: &str, timeout: Duration, done: impl Fn(&UnitStatus) -> bool) -> UnitStatus {
    let start = Instant::now();
    loop {
        let s = unit_status(a, unit);
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < timeout, "{unit}: waited {timeout:?}; last status {}", s.json);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes the unit file `/etc/systemd/system/NAME` in the guest.
pub fn install_unit(a: &mut Agent, name: &str, content: &str) {
    a.write(&format!("/etc/systemd/system/{name}"), content).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

/// The arrival time (since power-on) of the first console line containing every one of
/// `needles`, with the line.
pub fn first_line(timeline: &[(Duration, String)], needles: &[&str]) -> Option<(Duration, String)> {
    timeline.iter().find(|(_, l)| needles.iter().all(|n| l.contains(n))).cloned()
}

/// Waits for QEMU to exit as [`Machine::wait_exit`] does, reading the console into the
/// machine's timeline every 50 ms meanwhile: `wait_exit` alone leaves the lines that arrive
/// while it waits to be stamped together afterwards.
pub fn wait_exit_timed(m: &mut Machine, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        m.timeline();
        match m.wait_exit(Duration::ZERO) {
            Ok(status) => {
                m.timeline();
                return status;
            }
            Err(e) if start.elapsed() >= timeout => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The `ssh` client's arguments up to the destination: the key, the forwarded port, nothing
/// from the user's configuration or known hosts, and a dead connection noticed within 15 s
/// (a guest that reboots or powers off under it).
fn ssh_command(key: &Path, port: u16) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
        .arg("core@127.0.0.1");
    cmd
}

/// Runs `command` as `core` over SSH on 127.0.0.1:`port` with `key`.
pub fn ssh(key: &Path, port: u16, command: &str) -> Output {
    ssh_command(key, port).arg(command).output().expect("running ssh (install openssh-client)")
}

/// [`ssh`] again every 2 s until it succeeds or `timeout` passes (sshd starts once its host keys
/// exist); the last answer.
pub fn ssh_retry(key: &Path, port: u16, command: &str, timeout: Duration) -> Output {
    let started = Instant::now();
    loop {
        let out = ssh(key, port, command);
        if out.status.success() || started.elapsed() > timeout {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs `command` as `core` over SSH without waiting for it (one that takes the machine down
/// may never get its connection closed cleanly); the caller reaps or kills it.
pub fn ssh_spawn(key: &Path, port: u16, command: &str) -> std::process::Child {
    (ssh_command(key, port).arg(command))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ssh (install openssh-client)")
}

/// A fresh ed25519 key pair at `path` (and `path.pub`); the public key's line.
pub fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen (install openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string()
}

/// `e2fsck -fn` on the ext4 filesystem that starts `offset` bytes into `disk` (`raw` or
/// `qcow2`, with its backing chain), from a sparse raw copy in `work`: QEMU's raw driver reads
/// from the offset to the end of the disk (a filesystem smaller than its device is fine for
/// e2fsck). Whether it found it clean, with what it printed.
pub fn e2fsck_at(disk: &Path, format: &str, offset: u64, work: &Path) -> (bool, String) {
    let spec = serde_json::json!({
        "driver": "raw",
        "offset": offset,
        "file": { "driver": format, "file": { "driver": "file", "filename": disk } },
    });
    let part = work.join(format!("part-{offset}.raw"));
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw", &format!("json:{spec}")])
        .arg(&part)
        .output()
        .expect("running qemu-img (install qemu-utils)");
    assert!(out.status.success(), "qemu-img convert {spec}: {}", String::from_utf8_lossy(&out.stderr));
    let fsck = Command::new("e2fsck").arg("-fn").arg(&part).output().expect("running e2fsck (install e2fsprogs)");
    let _ = std::fs::remove_file(&part);
    let report = String::from_utf8_lossy(&fsck.stdout).into_owned() + &String::from_utf8_lossy(&fsck.stderr);
    (fsck.status.success(), report)
}
