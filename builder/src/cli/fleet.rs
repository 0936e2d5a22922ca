//! `berth fleet serve|status|unlock|slots|forget`: the FleetLock and report server, and the
//! operator's view and levers over the fleet's state in etcd. The work is `berth_fleet`'s
//! (server, EtcdStore, FleetStatus); this module reads the options and prints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_fleet::etcd::{Credentials, Etcd};
use berth_fleet::memory::MemoryStore;
use berth_fleet::server::{self, Config, Tls, Token};
use berth_fleet::status::FleetStatus;
use berth_fleet::store::{DEFAULT_PREFIX, EtcdStore};
use berth_fleet::{Store, StoreError};
use berth_release::fleet::check_group;
use berth_release::time::{Timestamp, parse_duration};

/// etcd's own default client URL.
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

const STORE_HELP: &str = "\
etcd:
  --etcd takes the client URLs of one cluster's members (http:// or https://). On https, berth
  trusts its built-in Mozilla roots, or with --etcd-ca FILE etcd's own CA instead of them; an
  etcd run with --client-cert-auth gets --etcd-cert FILE --etcd-key FILE (PEM). A call that
  cannot reach one member goes to the next. etcd 3.4 or later, its v3 API through the JSON gateway it serves by default. With
  etcd's auth enabled, --etcd-user and --etcd-password-file (the password alone in the file, a
  final newline ignored; keep it mode 0600). The fleet's keys live under --prefix:
    PREFIX/groups/GROUP/semaphore   a group's slots and holders (airlock's field names)
    PREFIX/hosts/GROUP/ID           a host's last report
    PREFIX/alive/GROUP/ID           present while the host reports (under a lease)";

/// Printed after `berth fleet serve --help`.
const SERVE_HELP: &str = "\
What it serves (plain HTTP/1.1, or HTTPS with --tls-cert and --tls-key):
  POST /v1/pre-reboot     FleetLock: a reboot slot of the client's group (recursive: a holder
                          asking again is granted). 200, or 409 failed_lock naming the holders.
  POST /v1/steady-state   FleetLock: gives the client's slot back (200 whether or not it held one;
                          the header berth-fleet-released says which).
  POST /berth/v1/report   A Berth host's report (version, state, rollbacks) for berth fleet status.
  GET  /berth/v1/health   200 {\"status\":\"ok\",\"revision\":N} while etcd answers; no token needed.
  The POSTs need the header fleet-lock-protocol: true and {\"client_params\":{\"id\",\"group\"}}
  (ids: 1-128 of A-Z a-z 0-9 . _ : -; groups: 1-64 of A-Z a-z 0-9 . _ -), bodies up to 64 KiB.
  Errors are {\"kind\",\"value\"}: 400 invalid_client_identity, 401 unauthorized, 409 failed_lock,
  413 request_too_large, 404 not_found, 405 method_not_allowed, 500 corrupt_semaphore,
  503 etcd_unavailable or etcd_conflict (with Retry-After; clients ask again).
  A 200 carries berth-fleet-revision: the etcd revision of the change (or of the read).

Slots: a group's semaphore is made in etcd on first use with --slots GROUP=N, else
  --default-slots. Afterwards etcd holds the count: change it with berth fleet slots (replicas
  started with other flags do not overwrite it). Slots have no lease: a host that takes one and
  never comes back keeps it until berth fleet unlock frees it (berth fleet status shows since when).

Replicas: the server keeps nothing itself; run as many as you like against one etcd, behind a
  load balancer or one DNS name. Every change is an etcd transaction on the value read.

Credentials and files:
  --token-file F    the bearer token: one line of visible ASCII, no spaces (surrounding
                    whitespace ignored; keep the file mode 0600). Clients send
                    Authorization: Bearer TOKEN (Berth hosts: token-file in update.toml's
                    [fleetlock], the same one line).
                    Without --token-file anyone who reaches the port may take and free slots.
  --tls-cert F      PEM: the server's certificate first, then intermediates.
  --tls-key F       PEM: its private key (PKCS#8, PKCS#1 or SEC1), matching the certificate.
  Files are read once at start: restart the server (or one replica at a time) to rotate them.

Stopping: SIGTERM or SIGINT stops accepting connections, finishes the requests in flight (up to
  30 s) and exits 0.

Examples:
  One replica of several, two slots for the workers group, a token and TLS:
      berth fleet serve --etcd http://10.0.0.5:2379,http://10.0.0.6:2379 --listen 0.0.0.0:3333 \\
        --slots workers=2 --token-file /etc/berth/fleet.token \\
        --tls-cert /etc/berth/fleet.crt --tls-key /etc/berth/fleet.key
  A trial on one machine, no etcd (state lost when it stops):
      berth fleet serve --store memory --listen 127.0.0.1:3333
  What a client sends:
      curl -H 'fleet-lock-protocol: true' -d '{\"client_params\":{\"id\":\"node-1\",\"group\":\"default\"}}' \\
        http://127.0.0.1:3333/v1/pre-reboot";

const STATUS_HELP: &str = "\
Shows: hosts per version and state (hosts whose reports stopped count as silent: their report's
deadline, two check intervals with jitter and a minute, passed); each group's slots with who
holds them and since when; hosts that rolled back and from what; hosts that went silent. With
--json, the same as one document (berth_fleet::status::FleetStatus) read at one etcd revision.

Examples:
  berth fleet status --etcd http://10.0.0.5:2379
  berth fleet status --json | jq '.groups[] | select(.holders != [])'";

const UNLOCK_HELP: &str = "\
Frees a reboot slot that a host took and never gave back (it died, or was removed mid-update):
the next host waiting for the group is then granted. WHO is the holder's id (berth fleet status
shows it) or the hostname its reports give; an error lists the holders when WHO holds none. If
the host was only slow, it asks again after rebooting and is granted a slot anew (or waits).

Example:
  berth fleet unlock --group workers node-7";

const SLOTS_HELP: &str = "\
Sets how many hosts of a group may reboot at once (locksmith's set-max), in etcd, for every
replica. Lowering it frees nobody: holders keep their slots until they give them back. 0 stops
the group's reboots until raised again. The group's semaphore is made if it does not exist.

Example:
  berth fleet slots --group workers 3";

const FORGET_HELP: &str = "\
Deletes what the store keeps of a host (its last report in every group): a decommissioned host
then no longer shows as silent. It does not free a slot the host holds (berth fleet unlock does).

Example:
  berth fleet forget 3f2a9c0e5b1d4f6a8c7e9b0d2f4a6c8e";

/// The fleet commands.
#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Serve FleetLock (reboot slots) and host reports, keeping the state in etcd.
    ///
    /// A FleetLock server (Zincati's protocol, as airlock serves it) whose semaphores live in etcd:
    /// one per group, with a configurable number of slots, taken and freed with etcd
    /// transactions, so any number of stateless replicas serve one fleet. Berth hosts with
    /// strategy = "fleetlock" ask it before rebooting into an update and tell it when they are
    /// back; they also report their state to it, which berth fleet status shows.
    #[command(after_help = format!("{SERVE_HELP}\n\n{STORE_HELP}"))]
    Serve(ServeArgs),
    /// Show the fleet: hosts per version and state, reboot slot holders, rollbacks, silent hosts.
    #[command(after_help = format!("{STATUS_HELP}\n\n{STORE_HELP}"))]
    Status(StatusArgs),
    /// Free a reboot slot held by a host that never gave it back.
    #[command(after_help = format!("{UNLOCK_HELP}\n\n{STORE_HELP}"))]
    Unlock(UnlockArgs),
    /// Set how many hosts of a group may reboot at once.
    #[command(after_help = format!("{SLOTS_HELP}\n\n{STORE_HELP}"))]
    Slots(SlotsArgs),
    /// Forget a host's reports (a decommissioned host).
    #[command(after_help = format!("{FORGET_HELP}\n\n{STORE_HELP}"))]
    Forget(ForgetArgs),
}

/// Where the fleet's state is.
#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs of one cluster's members, comma-separated or repeated.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',', default_value = DEFAULT_ETCD)]
    etcd: Vec<String>,
    /// The key prefix of this fleet's state in etcd (several fleets can share one etcd).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    prefix: String,
    /// etcd user, when etcd's auth is enabled (with --etcd-password-file).
    #[arg(long, value_name = "USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// CA certificate(s), PEM, that signed etcd's server certificate: trusted instead of the
    /// public roots on https:// endpoints.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate, PEM, presented to an etcd run with --client-cert-auth (with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key, PEM (with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Show every host as silent this long after its last report, whatever its interval
    /// (e.g. 10m) [default: two of the host's check intervals with jitter, and a minute].
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    silent_after: Option<Duration>,
}

/// Where the server keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// etcd (--etcd): survives restarts, shared by replicas.
    Etcd,
    /// This process's memory: one replica, lost when it stops (a trial, a test).
    Memory,
}

/// Options of `berth fleet serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:3333")]
    listen: SocketAddr,
    /// Where the state is kept.
    #[arg(long, value_enum, default_value = "etcd")]
    store: StoreKind,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Require this bearer token (a file holding it) on every FleetLock and report request.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Slots of a group when its semaphore is made (repeatable), e.g. workers=2.
    #[arg(long = "slots", value_name = "GROUP=N", value_parser = group_slots)]
    slots: Vec<(String, u32)>,
    /// Slots of any other group when its semaphore is made.
    #[arg(long, value_name = "N", default_value_t = 1)]
    default_slots: u32,
    /// The most connections served at once (more wait).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// No line per request on stderr (answers of 500 and above, the store's failures, are still
    /// logged).
    #[arg(long)]
    quiet: bool,
}

/// Options of `berth fleet status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Print the fleet view as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `berth fleet unlock`.
#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// The group whose slot is held.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The holder: its id, or its hostname.
    #[arg(value_name = "ID|HOSTNAME")]
    who: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Options of `berth fleet slots`.
#[derive(Debug, clap::Args)]
pub struct SlotsArgs {
    /// The group.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// How many of its hosts may reboot at once (0: none).
    #[arg(value_name = "N")]
    slots: u32,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Options of `berth fleet forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The host's id.
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (30s, 10m, 2h, 1d)"))
}

fn group_slots(s: &str) -> Result<(String, u32), String> {
    let (group, n) = s.split_once('=').ok_or_else(|| format!("{s:?} is not GROUP=N"))?;
    check_group(group)?;
    let n = n.parse().map_err(|_| format!("{n:?} in {s:?} is not a number of slots"))?;
    Ok((group.to_string(), n))
}

/// Runs a fleet command.
pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Serve(a) => serve(a),
        FleetCommand::Status(a) => status(a),
        FleetCommand::Unlock(a) => unlock(a),
        FleetCommand::Slots(a) => slots(a),
        FleetCommand::Forget(a) => forget(a),
    }
}

impl EtcdArgs {
    fn store(&self) -> anyhow::Result<EtcdStore> {
        let mut etcd = Etcd::new(&self.etcd).map_err(anyhow::Error::msg)?;
        let mut tls = berth_http::Tls::default();
        if let Some(ca) = &self.etcd_ca {
            tls = tls.with_ca_file(ca).context("--etcd-ca")?;
        }
        if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
            tls = tls.with_client_cert(cert, key).context("--etcd-cert/--etcd-key")?;
        }
        if !tls.is_default() {
            if let Some(plain) = self.etcd.iter().find(|e| e.starts_with("http://")) {
                bail!("--etcd-ca/--etcd-cert are for https:// endpoints; {plain} is plain HTTP");
            }
            etcd = etcd.with_tls(tls);
        }
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            etcd = etcd.with_credentials(Credentials { user: user.clone(), password: read_secret(file)? });
        }
        let store = EtcdStore::new(etcd, &self.prefix).map_err(anyhow::Error::msg)?;
        Ok(match self.silent_after {
            Some(after) => store.with_silent_after(after),
            None => store,
        })
    }

    fn describe(&self) -> String {
        format!("etcd {} under {}", self.etcd.join(","), self.prefix)
    }
}

/// A password file's content without its final newline.
fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let secret = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if secret.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(secret.to_string())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};

    let mut config = Config::new(a.listen);
    config.token = a.token_file.as_deref().map(Token::from_file).transpose()?;
    config.tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    config.slots = a.slots.iter().cloned().collect::<BTreeMap<_, _>>();
    config.default_slots = a.default_slots;
    config.max_connections = a.max_connections.max(1);
    config.log = !a.quiet;
    let (store, what): (Arc<dyn Store>, String) = match a.store {
        StoreKind::Etcd => (Arc::new(a.etcd.store()?), a.etcd.describe()),
        StoreKind::Memory => (Arc::new(MemoryStore::new()), "memory (lost when this process stops)".into()),
    };
    // Signals are caught before the first connection, so none can end the process mid-request.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).context("catching SIGTERM and SIGINT")?;
    match store.health() {
        Ok(rev) => eprintln!("berth fleet: store {what} answers at revision {rev}"),
        // Replicas may start before etcd: requests get 503 etcd_unavailable until it answers.
        Err(e) => eprintln!("berth fleet: warning: store {what}: {e}; serving anyway (503 until it answers)"),
    }
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let slots = std::iter::once(format!("default {}", config.default_slots))
        .chain(config.slots.iter().map(|(g, n)| format!("{g}={n}")))
        .collect::<Vec<_>>()
        .join(", ");
    let token = if config.token.is_some() { "required" } else { "none" };
    let running = server::start(config, store)?;
    eprintln!(
        "berth fleet: serving FleetLock and reports on {scheme}://{} (slots: {slots}; token: {token})",
        running.local_addr()
    );
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    eprintln!(
        "berth fleet: {}: no new connections; finishing {} in flight",
        if signal == SIGINT { "SIGINT" } else { "SIGTERM" },
        running.in_flight()
    );
    let left = running.stop();
    if left > 0 {
        eprintln!("berth fleet: stopped with {left} connections unfinished after 30 s");
    } else {
        eprintln!("berth fleet: stopped");
    }
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let store = a.etcd.store()?;
    let now = Timestamp::now();
    let snapshot = store.snapshot(now).map_err(|e| store_failed(&a.etcd, e))?;
    let view = FleetStatus::new(&snapshot, now);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", view.human());
    }
    Ok(())
}

fn unlock(a: UnlockArgs) -> anyhow::Result<()> {
    check_group(&a.group).map_err(anyhow::Error::msg)?;
    let store = a.etcd.store()?;
    let done = store.unlock(&a.group, &a.who).map_err(|e| store_failed(&a.etcd, e))?;
    let name = done.hostname.as_deref().map_or(String::new(), |h| format!(" ({h})"));
    let since = done.since.map_or(String::new(), |t| format!(" since {t}"));
    println!(
        "freed the reboot slot of group {} held by {}{name}{since} (etcd revision {})",
        a.group, done.id, done.revision
    );
    Ok(())
}

fn slots(a: SlotsArgs) -> anyhow::Result<()> {
    check_group(&a.group).map_err(anyhow::Error::msg)?;
    let store = a.etcd.store()?;
    let revision = store.set_slots(&a.group, a.slots).map_err(|e| store_failed(&a.etcd, e))?;
    println!("group {} has {} reboot slots (etcd revision {revision})", a.group, a.slots);
    Ok(())
}

fn forget(a: ForgetArgs) -> anyhow::Result<()> {
    let store = a.etcd.store()?;
    let (groups, revision) = store.forget(&a.id).map_err(|e| store_failed(&a.etcd, e))?;
    if groups.is_empty() {
        println!("no reports of {} were kept (etcd revision {revision})", a.id);
    } else {
        println!("forgot {} in group {} (etcd revision {revision})", a.id, groups.join(", "));
    }
    Ok(())
}

fn store_failed(etcd: &EtcdArgs, e: StoreError) -> anyhow::Error {
    match e {
        StoreError::Invalid(why) => anyhow::Error::msg(why),
        other => anyhow::Error::new(other).context(etcd.describe()),
    }
}
