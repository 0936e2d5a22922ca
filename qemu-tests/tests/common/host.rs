//! What the container-host tests (and the boot benchmark) share: `images/container-host.toml`
//! built once per test binary, a boot with the guest agent, a network and optionally an SSH
//! forward and a provisioning document, and `berthctl` driven through the agent.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
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

/// Boots [`container_host`] on an overlay with the guest agent's port and a network (with
/// `ssh`: 127.0.0.1:<free port> forwarded to port 22), handing it `provision` (TOML) as its
/// first-boot provisioning document.
pub fn boot_host(provision: Option<String>, ssh: bool) -> Host {
    let disk = container_host();
    let ssh_port = ssh.then(|| free_local_port().expect("a free port on 127.0.0.1"));
    let options = Options {
        overlay: true,
        network: true,
        forwards: ssh_port.map(|host| Forward { host, guest: 22 }).into_iter().collect(),
        serial_ports: vec![PORT_NAME.into()],
        provision,
        ..Options::default()
    };
    let machine = Machine::start_with(&Boot { disk, format: "raw", memory_mib: MEMORY_MIB }, &options)
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
