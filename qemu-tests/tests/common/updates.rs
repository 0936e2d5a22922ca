//! What the update tests share: a signing key made for this test binary, `container-host`
//! definitions at several versions that trust it, their builds, a release repository published
//! with `berth publish`'s code and served on 127.0.0.1 (the guests reach it as
//! http://10.0.2.100/ through a guestfwd), and `berth-update status --json` read through the
//! guest agent as the agent's own [`Status`] type.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_builder::build::{BuildOptions, OwnBinaries, build};
use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::agent::Agent;
use berth_qemu_tests::fleetlock::FleetLockServer;
use berth_qemu_tests::http::{self, RepoServer};
use berth_qemu_tests::{Boot, Machine, Options};
use berth_update::report::{SlotStatus, Status};

use super::host::{BOOT_COMPLETE, MEMORY_MIB, bash, run};

/// The channel every test image follows.
pub const CHANNEL: &str = "stable";

/// The index URL as the guests see it.
pub fn channel_url() -> String {
    format!("http://{}/channels/{CHANNEL}.json", http::GUEST_ADDR)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Scratch space for this test binary: keys, definitions, builds.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().ok();
        let who = exe.as_deref().and_then(Path::file_stem).map(|s| s.to_string_lossy().into_owned());
        // One directory per process: two runs of the same test binary must not share builds.
        // Those of processes that are gone are removed (each holds gigabytes of images).
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("updates");
        let who = who.unwrap_or("tests".into());
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(&format!("{who}-")).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = parent.join(format!("{who}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// The release signing key of this test binary: (secret key file, public key hex).
pub fn signing_key() -> &'static (PathBuf, String) {
    static KEY: OnceLock<(PathBuf, String)> = OnceLock::new();
    KEY.get_or_init(|| {
        let base = scratch().join("release");
        let public = berth_builder::publish::keygen(&base).unwrap_or_else(|e| panic!("berth keygen: {e:#}"));
        (base.with_extension("key"), public)
    })
}

/// How a test image differs from `images/container-host.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// As shipped.
    Good,
    /// Its kernel command line keeps the disk driver out, so stage 1 never finds the root.
    NoRoot,
    /// A unit required by `boot-complete.target` fails.
    Unhealthy,
    /// As shipped, with 512 MiB root slots (the staging benchmark's image).
    Root512,
    /// As shipped, but its berth-update built with the `failpoints` feature (the power-cut
    /// test's fault-injection points; no shipped image has them).
    Failpoints,
}

/// Unit file of [`Flavour::Unhealthy`].
const UNHEALTHY_UNIT: &str = "[Unit]
Description=A health check that fails (update test)

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo health check failed; exit 3'

[Install]
RequiredBy=boot-complete.target
";

/// The definition text of `version` in `flavour`.
fn definition(version: &str, flavour: Flavour, overlay: &Path) -> String {
    let src = std::fs::read_to_string(workspace().join("images/container-host.toml")).expect("container-host.toml");
    let mut out = String::new();
    for line in src.lines() {
        let line = if line.starts_with("version = ") {
            format!("version = \"{version}\"")
        } else if line.starts_with("overlay = ") {
            format!("overlay = {:?}", overlay.display().to_string())
        } else if line.starts_with("cmdline = ") && flavour == Flavour::NoRoot {
            "cmdline = \"console=ttyS0 module_blacklist=virtio_blk berth.rootwait=3\"".to_string()
        } else if line.starts_with("root = ") && flavour == Flavour::Root512 {
            "root = \"512M\"".to_string()
        } else if line.starts_with("enable = [") && flavour == Flavour::Unhealthy {
            line.replacen("enable = [", "enable = [\"berth-test-health.service\", ", 1)
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let (_, public) = signing_key();
    out.push_str(&format!("\n[update]\nchannel = {:?}\nkeys = [{public:?}]\nthreshold = 1\n", channel_url()));
    // The test image: the guest agent drives the updates.
    berth_qemu_tests::with_guest_agent(&out, &workspace().join("images"))
}

/// Copies the directory tree `from` into `to` (files, directories and symlinks).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type().unwrap();
        if ty.is_dir() {
            copy_tree(&src, &dst);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `container-host` at `version` in `flavour`, built once per test binary; the disk image path.
pub fn image(version: &str, flavour: Flavour) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, Flavour), PathBuf>>> = OnceLock::new();
    // One build at a time: they share the package cache and the two cores.
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(&(version.to_string(), flavour)) {
        return p.clone();
    }
    let dir = scratch().join(format!("{version}-{flavour:?}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut overlay = workspace().join("images/container-host.overlay");
    if flavour == Flavour::Unhealthy {
        let copy = dir.join("overlay");
        copy_tree(&overlay, &copy);
        let units = copy.join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("berth-test-health.service"), UNHEALTHY_UNIT).unwrap();
        overlay = copy;
    }
    let def = dir.join("container-host.toml");
    std::fs::write(&def, definition(version, flavour, &overlay)).unwrap();
    let started = Instant::now();
    let mut options = BuildOptions::for_workspace(&workspace(), def, dir.join("out")).expect("a cache directory");
    if flavour == Flavour::Failpoints {
        options.prebuilt = Some(failpoint_binaries());
    }
    let report = build(&options).unwrap_or_else(|e| panic!("berth build ({version}, {flavour:?}): {e:#}"));
    eprintln!("built {} ({version}, {flavour:?}) in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
    built.insert((version.to_string(), flavour), report.disk.clone());
    report.disk
}

/// A `--prebuilt` directory: the binaries `berth build` builds, but berth-update built with the
/// `failpoints` feature. That build goes to a target directory of its own, so the production
/// binary (target/x86_64-unknown-linux-musl/release/berth-update) is never a failpoints one.
fn failpoint_binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shipped = OwnBinaries::build(&workspace()).unwrap_or_else(|e| panic!("building berth's binaries: {e:#}"));
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("failpoints-target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let started = Instant::now();
        let status = std::process::Command::new(cargo)
            .current_dir(workspace())
            .args(["build", "-q", "--release", "--target", "x86_64-unknown-linux-musl", "-p", "berth-update"])
            .args(["--features", "failpoints", "--target-dir"])
            .arg(&target)
            .status()
            .expect("running cargo");
        assert!(status.success(), "cargo build -p berth-update --features failpoints: {status}");
        eprintln!("built berth-update with failpoints in {:.1} s", started.elapsed().as_secs_f64());
        let dir = scratch().join("failpoints-bin");
        let to = shipped.copy_to(&dir).unwrap_or_else(|e| panic!("{e:#}"));
        let built = target.join("x86_64-unknown-linux-musl/release/berth-update");
        std::fs::copy(&built, &to.update).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
        dir
    })
    .clone()
}

/// A release repository on disk and the server that serves it.
pub struct Repo {
    pub dir: tempfile::TempDir,
    pub server: RepoServer,
}

impl Repo {
    pub fn new() -> Repo {
        let dir = tempfile::Builder::new().prefix("berth-repo-").tempdir_in(scratch()).unwrap();
        let server = RepoServer::start(dir.path()).expect("starting the repository server");
        Repo { dir, server }
    }

    /// `berth publish --repo DIR --channel stable --image IMAGE --key KEY`.
    pub fn publish(&self, image: &Path) {
        self.publish_with(image, None);
    }

    /// `berth publish … --expires EXPIRES`.
    pub fn publish_expiring(&self, image: &Path, expires: &str) {
        self.publish_with(image, Some(berth_release::time::parse_duration(expires).expect("a duration")));
    }

    /// `berth publish … --key KEY` (with a key set in the repository, its signing keys sign).
    pub fn publish_signed(&self, image: &Path, key: &Path) {
        self.publish_as(Some(image), None, key);
    }

    fn publish_with(&self, image: &Path, expires: Option<Duration>) {
        let (key, _) = signing_key();
        self.publish_as(Some(image), expires, key);
    }

    /// `berth publish --repo DIR --channel stable --key KEY [--expires EXPIRES]` without an
    /// image: the index refreshed, a new sequence and expiry over the same releases, signed by
    /// `key` (the test binary's key when `None`). What re-publishing the same image gives the
    /// hosts, without compressing its root again.
    pub fn refresh(&self, key: Option<&Path>, expires: Option<&str>) {
        let (own, _) = signing_key();
        let expires = expires.map(|e| berth_release::time::parse_duration(e).expect("a duration"));
        self.publish_as(None, expires, key.unwrap_or(own));
    }

    fn publish_as(&self, image: Option<&Path>, expires: Option<Duration>, key: &Path) {
        let started = Instant::now();
        let mut options = berth_builder::publish::PublishOptions {
            repo: self.dir.path().to_path_buf(),
            channel: CHANNEL.to_string(),
            image: image.map(Path::to_path_buf),
            keys: vec![key.to_path_buf()],
            ..berth_builder::publish::PublishOptions::default()
        };
        if let Some(e) = expires {
            options.expires = e;
        }
        let what = image.map_or("(the index refreshed)".into(), |i| i.display().to_string());
        berth_builder::publish::publish(&options).unwrap_or_else(|e| panic!("berth publish {what}: {e:#}"));
        eprintln!("published {what} in {:.1} s", started.elapsed().as_secs_f64());
    }

    /// `berth keys sign --root-key <the images' key> --signing-key …`: the next key set, whose
    /// signing keys are `signing` (any signing key left out is revoked).
    pub fn sign_keyset(&self, signing: &[&str]) -> u64 {
        let (root, _) = signing_key();
        let r = berth_builder::keys::sign_keyset(&berth_builder::keys::KeysOptions {
            repo: self.dir.path().to_path_buf(),
            root_keys: vec![root.clone()],
            signing: signing.iter().map(|s| s.to_string()).collect(),
            expires: Duration::from_secs(30 * 86_400),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("berth keys sign: {e:#}"));
        r.keyset.version
    }

    /// A file of the repository.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// Appended to every update test's first-boot document: `servers = []` for berth-timesync.
pub const NO_NETWORK_TIME: &str = "
[[files]]
path = \"/etc/berth/timesync.toml\"
content = \"servers = []\\n\"
";

/// Settings for the guest's agent: check every few seconds, no jitter.
pub fn provision(strategy: &str) -> String {
    format!("[update]\nstrategy = {strategy:?}\ninterval = \"5s\"\njitter = \"0s\"\n")
}

/// Boots `disk` (on an overlay) with the guest agent's port and the repository reachable at
/// http://10.0.2.100/, handing it `provision` as its first-boot document.
pub fn boot(disk: &Path, repo: &Repo, provision: Option<String>) -> Machine {
    boot_on(disk, repo, provision, 1)
}

/// [`boot`] with `cpus` vCPUs.
pub fn boot_on(disk: &Path, repo: &Repo, provision: Option<String>, cpus: u32) -> Machine {
    boot_with(disk, repo, provision, cpus, None)
}

/// [`boot_on`], with a FleetLock server reachable at http://10.0.2.101/ too.
pub fn boot_with(
    disk: &Path,
    repo: &Repo,
    provision: Option<String>,
    cpus: u32,
    fleetlock: Option<&FleetLockServer>,
) -> Machine {
    // The guests reach no NTP server (their network ends at the test's own servers): the clock
    // is trusted as QEMU's RTC sets it, which berth-timesync records at once.
    let provision = Some(format!("{}{NO_NETWORK_TIME}", provision.unwrap_or_default()));
    let relay = Path::new(env!("CARGO_BIN_EXE_berth-guestfwd-relay"));
    let mut guest_forwards = vec![http::guest_forward(relay, repo.server.port())];
    guest_forwards.extend(fleetlock.map(|f| f.guest_forward(relay)));
    let options = Options {
        overlay: true,
        network: true,
        serial_ports: vec![PORT_NAME.into()],
        guest_forwards,
        provision,
        cpus: Some(cpus),
        ..Options::default()
    };
    Machine::start_with(&Boot { disk, format: "raw", memory_mib: MEMORY_MIB }, &options)
        .unwrap_or_else(|e| panic!("starting QEMU: {e}"))
}

/// Waits for one more "reached boot-complete.target" than the console holds now.
pub fn wait_next_boot_complete(m: &mut Machine, timeout: Duration) {
    let n = m.console().matches(BOOT_COMPLETE).count();
    m.wait_for_count(BOOT_COMPLETE, n + 1, timeout).unwrap_or_else(|e| panic!("{e}"));
}

/// A connection to the guest agent of `m`.
pub fn agent(m: &Machine) -> Agent {
    let port = m.serial_port(PORT_NAME).expect("agent port");
    Agent::connect(port, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", m.console()))
}

/// `berth-update status --json` in the guest.
pub fn status(a: &mut Agent) -> Status {
    let r = run(a, &["berth-update", "status", "--json"], Duration::from_secs(60));
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("berth-update status --json: {e}: {r:?}"))
}

/// Polls [`status`] every second until `done` holds, failing after `timeout` with the last one.
pub fn wait_status(a: &mut Agent, timeout: Duration, what: &str, done: impl Fn(&Status) -> bool) -> Status {
    let start = Instant::now();
    loop {
        let s = status(a);
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}; last status: {s:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A slot as the tests compare it: which, the version it holds, (priority, tries, successful).
pub fn slot(x: &SlotStatus) -> (&'static str, &str, Option<(u8, u8, bool)>) {
    (x.slot.name(), x.version.as_deref().unwrap_or(""), x.attrs())
}

/// The running slot is marked good: {priority 2, tries 0, successful} (a fresh image's A is
/// successful already, with priority 1).
pub fn marked_good(s: &Status) -> bool {
    s.running.attrs() == Some((2, 0, true))
}

/// Writes a marker file under /var and returns its content, to check after power cuts.
pub fn write_var_marker(a: &mut Agent, name: &str) -> String {
    let content = format!("written before the cut: {name}");
    bash(
        a,
        &format!("mkdir -p /var/lib/update-test && echo '{content}' > /var/lib/update-test/{name} && sync"),
        Duration::from_secs(30),
    );
    content
}

/// A key pair made for this test binary: (secret key file, public key hex).
pub fn new_key(name: &str) -> (PathBuf, String) {
    let base = scratch().join(name);
    let public = berth_builder::publish::keygen(&base).unwrap_or_else(|e| panic!("berth keygen: {e:#}"));
    (base.with_extension("key"), public)
}

/// A signature file over `index` by the secret key in `key`.
pub fn sign_with(index: &[u8], key: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(key).expect("a key file");
    let key = berth_release::signature::parse_secret_key_file(&text).expect("a secret key");
    berth_release::Signatures::sign_all(index, &[key]).to_bytes()
}

/// A signature file over `index` by a key made now, one no image trusts.
pub fn sign_with_new_key(index: &[u8]) -> Vec<u8> {
    let key = berth_release::signature::secret_key_from_seed(rand_seed());
    berth_release::Signatures::sign_all(index, &[key]).to_bytes()
}

fn rand_seed() -> [u8; 32] {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).expect("/dev/urandom");
    seed
}
