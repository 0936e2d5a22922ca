//! What the fleet test (tests/fleet.rs) uses: `minimal` images at several versions with an
//! `[update]` table that follows a channel on S3 and trusts the update tests' signing key (plus
//! the guest agent); a release repository in a bucket of moto's server on 127.0.0.1, published
//! with `berth publish --repo s3://…`'s code and read anonymously by the guests at
//! http://10.0.2.102/<bucket>/<prefix>/; the real FleetLock server (`berth_fleet::server`, the
//! one `berth fleet serve` runs) in this process over a test etcd, reached by the guests at
//! http://10.0.2.101/; and the boots of the fleet's hosts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use berth_builder::build::{BuildOptions, build};
use berth_builder::publish::PublishOptions;
use berth_builder::publish_s3::{S3PublishReport, S3Repo, S3Target, publish_s3};
use berth_fleet::Store;
use berth_fleet::history::{self, Version};
use berth_fleet::server::{self, Config, Running};
use berth_fleet::status::FleetStatus;
use berth_fleet::store::{DEFAULT_PREFIX, EtcdStore};
use berth_guest_agent::PORT_NAME;
use berth_qemu_tests::moto::{self, Moto};
use berth_qemu_tests::{Boot, Machine, Options};
use berth_release::Timestamp;
use berth_testkit::etcd::Etcd;

use crate::common::updates::{CHANNEL, NO_NETWORK_TIME, signing_key, workspace};

/// The hosts' group; it has one reboot slot.
pub const GROUP: &str = "workers";
/// The bucket and the repository's prefix in it.
pub const BUCKET: &str = "berth-fleet";
pub const PREFIX: &str = "fleet";
/// Guest memory: the minimal image boots and stages in this.
pub const MEMORY_MIB: u32 = 512;

/// The channel's index as the guests see it.
pub fn channel_url() -> String {
    format!("http://{}/{BUCKET}/{PREFIX}/channels/{CHANNEL}.json", moto::GUEST_ADDR)
}

/// Scratch space of this process (definitions and builds); those of processes that are gone are
/// removed (each holds gigabytes of images).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet");
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok();
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// `images/minimal.toml` at `version`, following the S3 channel and trusting the test key, with
/// the guest agent.
fn definition(version: &str) -> String {
    let src = std::fs::read_to_string(workspace().join("images/minimal.toml")).expect("minimal.toml");
    let mut out = String::new();
    for line in src.lines() {
        if line.starts_with("version = ") {
            out.push_str(&format!("version = \"{version}\""));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let (_, public) = signing_key();
    out.push_str(&format!("\n[update]\nchannel = {:?}\nkeys = [{public:?}]\nthreshold = 1\n", channel_url()));
    berth_qemu_tests::with_guest_agent(&out, &workspace().join("images"))
}

/// The `minimal` test image at `version`, built now; the disk image path.
pub fn image(version: &str) -> PathBuf {
    let dir = scratch().join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let def = dir.join("minimal.toml");
    std::fs::write(&def, definition(version)).unwrap();
    let started = Instant::now();
    let options = BuildOptions::for_workspace(&workspace(), def, dir.join("out")).expect("a cache directory");
    let report = build(&options).unwrap_or_else(|e| panic!("berth build (minimal {version}): {e:#}"));
    eprintln!("built {} (minimal {version}) in {:.1} s", report.disk.display(), started.elapsed().as_secs_f64());
    report.disk
}

/// The release repository: a public-read bucket of moto's server.
pub struct S3Repository {
    pub moto: Moto,
}

const ENV: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "AKIDMOTO"), ("AWS_SECRET_ACCESS_KEY", "moto"), ("AWS_DEFAULT_REGION", "us-east-1")];

impl S3Repository {
    /// moto started, the bucket made.
    pub fn start() -> S3Repository {
        let moto = Moto::start().unwrap_or_else(|e| panic!("{e}"));
        moto.create_bucket(BUCKET).unwrap_or_else(|e| panic!("{e}\n{}", moto.log()));
        S3Repository { moto }
    }

    /// `berth publish --repo s3://BUCKET/PREFIX --endpoint … --acl public-read` with `o` (its
    /// repo and keys filled in here).
    pub fn publish(&self, mut o: PublishOptions) -> S3PublishReport {
        let (key, _) = signing_key();
        let url = format!("s3://{BUCKET}/{PREFIX}");
        o.repo = PathBuf::from(&url);
        o.channel = CHANNEL.to_string();
        o.keys = vec![key.clone()];
        let target = S3Target {
            repo: S3Repo::parse(&url).unwrap(),
            endpoint: Some(self.moto.url()),
            region: None,
            profile: None,
            // The agents read anonymously.
            acl: Some("public-read".into()),
        };
        let env = |name: &str| ENV.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let started = Instant::now();
        let r = publish_s3(&o, &target, &env, &berth_cloud::Silent)
            .unwrap_or_else(|e| panic!("berth publish {url}: {e:#}\nmoto:\n{}", self.moto.log()));
        let bytes: u64 = r.uploaded.iter().map(|(_, n)| n).sum();
        eprintln!(
            "published to {url} in {:.1} s: {} objects, {bytes} bytes",
            started.elapsed().as_secs_f64(),
            r.uploaded.len()
        );
        r
    }
}

/// The fleet's server: a test etcd, the store on it, and `berth fleet serve`'s server in this
/// process on 127.0.0.1 (group [`GROUP`] made with one slot). Dropped in this order: the server
/// stops before etcd does.
pub struct FleetServer {
    pub server: Running,
    pub store: Arc<EtcdStore>,
    /// Runs until dropped, after the server.
    _etcd: Etcd,
}

impl FleetServer {
    pub fn start() -> FleetServer {
        let etcd = Etcd::start();
        let client = berth_fleet::etcd::Etcd::new(&[etcd.url()]).expect("an etcd client");
        let store = Arc::new(EtcdStore::new(client, DEFAULT_PREFIX).expect("a store"));
        let mut config = Config::new("127.0.0.1:0".parse().unwrap());
        config.slots.insert(GROUP.into(), 1);
        let server = server::start(config, store.clone() as Arc<dyn Store>).expect("the fleet server");
        eprintln!("fleet server on {} over etcd {}", server.local_addr(), etcd.url());
        FleetServer { server, store, _etcd: etcd }
    }

    pub fn port(&self) -> u16 {
        self.server.local_addr().port()
    }

    /// What `berth fleet status --json` shows now.
    pub fn status(&self) -> FleetStatus {
        let now = Timestamp::now();
        let snapshot = self.store.snapshot(now).unwrap_or_else(|e| panic!("the fleet's snapshot: {e}"));
        FleetStatus::new(&snapshot, now)
    }

    /// Every version of the group's semaphore, from etcd's revision history.
    pub fn history(&self) -> Vec<Version> {
        let key = self.store.semaphore_key(GROUP);
        history::versions(self.store.etcd(), &key).unwrap_or_else(|e| panic!("history of {key}: {e}"))
    }
}

/// The first-boot document of host `name`: strategy fleetlock on the fleet server, checks every
/// 5 s, no jitter.
pub fn provision(name: &str) -> String {
    format!(
        "hostname = {name:?}\n\n[update]\nstrategy = \"fleetlock\"\ninterval = \"5s\"\njitter = \"0s\"\n\n\
         [update.fleetlock]\nurl = \"http://{}\"\ngroup = \"{GROUP}\"\n{NO_NETWORK_TIME}",
        berth_qemu_tests::fleetlock::GUEST_ADDR
    )
}

/// Boots `disk` (on an overlay), 1 vCPU, [`MEMORY_MIB`], with the guest agent's port, the
/// bucket at http://10.0.2.102/ and the fleet server at http://10.0.2.101/.
pub fn boot(disk: &Path, name: &str, repo: &S3Repository, fleet: &FleetServer) -> Machine {
    let relay = Path::new(env!("CARGO_BIN_EXE_berth-guestfwd-relay"));
    let guest_forwards = vec![
        repo.moto.guest_forward(relay),
        berth_qemu_tests::http::guest_forward_at(berth_qemu_tests::fleetlock::GUEST_ADDR, relay, fleet.port()),
    ];
    let options = Options {
        overlay: true,
        network: true,
        serial_ports: vec![PORT_NAME.into()],
        guest_forwards,
        provision: Some(provision(name)),
        cpus: Some(1),
        ..Options::default()
    };
    Machine::start_with(&Boot { disk, format: "raw", memory_mib: MEMORY_MIB }, &options)
        .unwrap_or_else(|e| panic!("starting QEMU ({name}): {e}"))
}

/// Seconds since `t`, for the figures.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
