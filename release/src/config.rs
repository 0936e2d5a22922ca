//! `update.toml`: the agent's configuration (docs/design.md §4). The image carries
//! `/usr/lib/berth/update.toml` (channel and trusted keys from its definition); an operator's
//! `/etc/berth/update.toml` (written by first-boot provisioning, or by hand) overrides it key by
//! key. berth-init reads `health-timeout` from the same files.
//!
//! ```toml
//! channel = "https://releases.example/channels/stable.json"
//! keys = ["<64 hex digits>"]        # the root keys (ed25519): they sign the repository's key
//!                                   # sets (crate::keyset), or without key sets the index itself
//! threshold = 1                     # root signatures required
//! strategy = "window"               # immediate | window | fleetlock | off
//! interval = "1h"                   # between checks
//! jitter = "10m"                    # a random delay added to each, so a fleet does not ask at once
//! tries = 3                         # trial boots of a new slot before bootmgr returns to the old one
//! health-timeout = "10m"            # boot-complete.target must be reached within this
//! tls-ca = "/etc/berth/ca.pem"      # optional: the CA certificate(s) (PEM) trusted instead of the
//!                                   # public roots for all the agent's HTTPS (a company CA)
//!
//! [window]                          # strategy = "window": when reboots may happen (UTC)
//! days = ["sat", "sun"]
//! start = "02:00"
//! length = "3h"
//!
//! [fleetlock]                       # the fleet server: with strategy = "fleetlock" a reboot takes
//! url = "http://fleetlock.example:8080" # one of its group's reboot slots; any strategy reports to it
//! group = "default"                 # hosts of one group share the lock's slots
//! token-file = "/etc/berth/fleet.token" # optional: its first line is sent as `Authorization: Bearer`
//! report = true                     # report this host's state (berth_release::fleet); default true
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::time::{Timestamp, format_duration, parse_duration};

/// The image's file.
pub const IMAGE_CONFIG: &str = "/usr/lib/berth/update.toml";
/// The operator's file, which overrides it.
pub const ADMIN_CONFIG: &str = "/etc/berth/update.toml";

/// When the agent reboots into a staged update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// As soon as it is staged.
    Immediate,
    /// In the next maintenance window.
    Window(Window),
    /// When a FleetLock server gives this host the reboot lock.
    FleetLock(FleetLock),
    /// Never by itself: the operator reboots.
    Off,
}

impl Strategy {
    /// The name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Window(_) => "window",
            Strategy::FleetLock(_) => "fleetlock",
            Strategy::Off => "off",
        }
    }
}

/// The fleet server of `[fleetlock]` (docs/design.md §4, §9): a FleetLock server
/// (`POST /v1/pre-reboot`, `POST /v1/steady-state`) that may also take host reports
/// (`POST /berth/v1/report`, crate::fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLock {
    /// The server's base URL (the protocol's paths are under it).
    pub url: String,
    /// The group whose hosts share the lock.
    pub group: String,
    /// A file whose first line is the bearer token every request carries; `None`: no token.
    /// Read at each request, so a rotated token needs no restart.
    pub token_file: Option<PathBuf>,
    /// Whether the agent reports its state to the server (`report`, default true).
    pub report: bool,
}

/// A weekly maintenance window, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days it opens on; bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Seconds after midnight it opens.
    pub start: u32,
    /// How long it stays open.
    pub length: Duration,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    /// Whether `now` is inside a window.
    pub fn contains(&self, now: Timestamp) -> bool {
        self.next_open(now) <= now
    }

    /// `now` if a window is open, else when the next one opens.
    pub fn next_open(&self, now: Timestamp) -> Timestamp {
        let day0 = now.0.div_euclid(86_400);
        // A window that opened up to a week ago may still be open.
        for d in (day0 - 7)..=(day0 + 7) {
            // 1970-01-01 was a Thursday (index 3).
            let weekday = (d + 3).rem_euclid(7) as u32;
            if self.days & (1 << weekday) == 0 {
                continue;
            }
            let open = d * 86_400 + i64::from(self.start);
            let close = open + self.length.as_secs() as i64;
            if close > now.0 {
                return Timestamp(open.max(now.0));
            }
        }
        Timestamp(i64::MAX)
    }

    /// As written in the file (`sat,sun 02:00 for 3h`).
    pub fn describe(&self) -> String {
        let days: Vec<&str> = (0..7).filter(|i| self.days & (1 << i) != 0).map(|i| DAYS[i]).collect();
        format!(
            "{} {:02}:{:02} for {}",
            days.join(","),
            self.start / 3600,
            self.start / 60 % 60,
            format_duration(self.length)
        )
    }
}

/// The configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// The image's own version (from the image's file only).
    pub version: Option<String>,
    /// The channel's index URL; `None`: the image has no update channel.
    pub channel: Option<String>,
    /// The root keys (ed25519 public keys, hex): the trust anchor the agent walks the
    /// repository's key sets from (berth_release::keyset).
    pub keys: Vec<String>,
    /// Root signatures required.
    pub threshold: u32,
    /// When to reboot.
    pub strategy: Strategy,
    /// Between checks.
    pub interval: Duration,
    /// Up to this much is added to each interval.
    pub jitter: Duration,
    /// Trial boots of a staged slot.
    pub tries: u8,
    /// boot-complete.target must be reached within this on a slot on trial.
    pub health_timeout: Duration,
    /// The fleet server (`[fleetlock]`), whatever the strategy: reports go to it.
    pub fleet: Option<FleetLock>,
    /// `tls-ca`: a PEM file of the CA certificates the agent trusts **instead of** the public
    /// roots for every HTTPS request (channel, artifacts, key sets, the fleet server); `None`:
    /// the public roots. Only the path is checked here (absolute); the agent reads the file
    /// when it starts and refuses to run without a certificate from it.
    pub tls_ca: Option<PathBuf>,
    /// The files read, in order.
    pub sources: Vec<PathBuf>,
}

impl Default for UpdateConfig {
    fn default() -> UpdateConfig {
        UpdateConfig {
            version: None,
            channel: None,
            keys: Vec::new(),
            threshold: 1,
            strategy: Strategy::Immediate,
            interval: Duration::from_secs(3600),
            jitter: Duration::from_secs(600),
            tries: 3,
            health_timeout: Duration::from_secs(600),
            fleet: None,
            tls_ca: None,
            sources: Vec::new(),
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {why}")]
pub struct ConfigError {
    /// The file (with `:line:column` where known).
    pub path: String,
    /// What is wrong.
    pub why: String,
}

/// One file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Layer {
    version: Option<String>,
    channel: Option<String>,
    keys: Option<Vec<String>>,
    threshold: Option<u32>,
    strategy: Option<String>,
    interval: Option<String>,
    jitter: Option<String>,
    tries: Option<u8>,
    health_timeout: Option<String>,
    tls_ca: Option<String>,
    window: Option<WindowLayer>,
    fleetlock: Option<FleetLockLayer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FleetLockLayer {
    url: String,
    group: Option<String>,
    token_file: Option<String>,
    report: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowLayer {
    days: Vec<String>,
    start: String,
    length: String,
}

impl UpdateConfig {
    /// Reads the image's file and then the operator's, each if it exists, under `root`
    /// (`/` on a host).
    pub fn load(root: &Path) -> Result<UpdateConfig, ConfigError> {
        let files = [IMAGE_CONFIG, ADMIN_CONFIG].map(|p| root.join(p.trim_start_matches('/')));
        let mut layers = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => layers.push((f, text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ConfigError { path: f.display().to_string(), why: e.to_string() }),
            }
        }
        UpdateConfig::from_texts(&layers)
    }

    /// From file texts, later ones overriding earlier ones key by key.
    pub fn from_texts(layers: &[(PathBuf, String)]) -> Result<UpdateConfig, ConfigError> {
        let mut c = UpdateConfig::default();
        let mut window: Option<(String, WindowLayer)> = None;
        let mut fleetlock: Option<(String, FleetLockLayer)> = None;
        let mut strategy = ("(default)".to_string(), "immediate".to_string());
        for (n, (path, text)) in layers.iter().enumerate() {
            let name = path.display().to_string();
            let l: Layer = toml::from_str(text).map_err(|e| {
                let at = e.span().map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    (before.matches('\n').count() + 1, before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1)
                });
                let path = match at {
                    Some((l, col)) => format!("{name}:{l}:{col}"),
                    None => name.clone(),
                };
                ConfigError { path, why: e.message().to_string() }
            })?;
            let err = |why: String| ConfigError { path: name.clone(), why };
            let duration = |key: &str, v: &str| {
                parse_duration(v).ok_or_else(|| err(format!("{key} {v:?} is not a duration (such as 90s, 10m, 1h30m)")))
            };
            if let Some(v) = l.version {
                if n > 0 {
                    return Err(err("version is the image's own and cannot be overridden".into()));
                }
                c.version = Some(v);
            }
            if let Some(ch) = l.channel {
                if !(ch.starts_with("http://") || ch.starts_with("https://"))
                    || crate::repo::split_index_url(&ch).is_none()
                {
                    return Err(err(format!("channel {ch:?} is not an http(s) URL ending in /channels/<name>.json")));
                }
                c.channel = Some(ch);
            }
            if let Some(k) = l.keys {
                c.keys = k;
            }
            if let Some(t) = l.threshold {
                c.threshold = t;
            }
            if let Some(s) = l.strategy {
                strategy = (name.clone(), s);
            }
            if let Some(v) = l.interval {
                c.interval = duration("interval", &v)?;
                if c.interval < Duration::from_secs(1) {
                    return Err(err("interval must be at least 1s".into()));
                }
            }
            if let Some(v) = l.jitter {
                c.jitter = duration("jitter", &v)?;
            }
            if let Some(t) = l.tries {
                if !(1..=15).contains(&t) {
                    return Err(err(format!("tries {t} must be between 1 and 15")));
                }
                c.tries = t;
            }
            if let Some(v) = l.health_timeout {
                c.health_timeout = duration("health-timeout", &v)?;
            }
            if let Some(t) = l.tls_ca {
                if !t.starts_with('/') || t.ends_with('/') {
                    return Err(err(format!("tls-ca {t:?} must be an absolute path to a PEM file")));
                }
                c.tls_ca = Some(PathBuf::from(t));
            }
            if let Some(w) = l.window {
                window = Some((name.clone(), w));
            }
            if let Some(f) = l.fleetlock {
                fleetlock = Some((name.clone(), f));
            }
            c.sources.push(path.clone());
        }
        // The table is checked whatever the strategy: reports use it too.
        if let Some((ffrom, f)) = fleetlock {
            c.fleet = Some(parse_fleetlock(f).map_err(|why| ConfigError { path: ffrom, why })?);
        }
        let (from, s) = strategy;
        c.strategy = match s.as_str() {
            "immediate" => Strategy::Immediate,
            "off" => Strategy::Off,
            "fleetlock" => {
                let Some(f) = c.fleet.clone() else {
                    return Err(ConfigError {
                        path: from,
                        why: "strategy \"fleetlock\" needs a [fleetlock] table".into(),
                    });
                };
                Strategy::FleetLock(f)
            }
            "window" => {
                let Some((wfrom, w)) = window else {
                    return Err(ConfigError { path: from, why: "strategy \"window\" needs a [window] table".into() });
                };
                Strategy::Window(parse_window(&w).map_err(|why| ConfigError { path: wfrom, why })?)
            }
            other => {
                return Err(ConfigError {
                    path: from,
                    why: format!("strategy {other:?} is not one of immediate, window, fleetlock, off"),
                });
            }
        };
        if c.channel.is_some() && c.keys.is_empty() {
            return Err(ConfigError {
                path: c.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                why: "a channel is set but no trusted keys are".into(),
            });
        }
        Ok(c)
    }
}

fn parse_fleetlock(f: FleetLockLayer) -> Result<FleetLock, String> {
    let url = f.url.trim_end_matches('/').to_string();
    let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.is_empty()) {
        return Err(format!("fleetlock.url {:?} is not an http(s) URL", f.url));
    }
    let group = f.group.unwrap_or_else(|| "default".into());
    crate::fleet::check_group(&group).map_err(|why| format!("fleetlock.group: {why}"))?;
    let token_file = match f.token_file {
        None => None,
        Some(t) if t.starts_with('/') && !t.ends_with('/') => Some(PathBuf::from(t)),
        Some(t) => return Err(format!("fleetlock.token-file {t:?} must be an absolute path to a file")),
    };
    Ok(FleetLock { url, group, token_file, report: f.report.unwrap_or(true) })
}

fn parse_window(w: &WindowLayer) -> Result<Window, String> {
    let mut days = 0u8;
    for d in &w.days {
        let lower = d.to_ascii_lowercase();
        let i = DAYS
            .iter()
            .position(|n| lower.starts_with(n))
            .ok_or_else(|| format!("window.days: {d:?} is not a day (mon … sun)"))?;
        days |= 1 << i;
    }
    if days == 0 {
        return Err("window.days is empty".into());
    }
    let (h, m) = w.start.split_once(':').ok_or_else(|| format!("window.start {:?} is not HH:MM", w.start))?;
    let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 => (h, m),
        _ => return Err(format!("window.start {:?} is not HH:MM", w.start)),
    };
    let length = parse_duration(&w.length)
        .filter(|l| !l.is_zero() && *l <= Duration::from_secs(7 * 86_400))
        .ok_or_else(|| format!("window.length {:?} is not a duration up to 7d", w.length))?;
    Ok(Window { days, start: h * 3600 + m * 60, length })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(layers: &[&str]) -> Result<UpdateConfig, ConfigError> {
        let l: Vec<(PathBuf, String)> =
            layers.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("/f{i}")), t.to_string())).collect();
        UpdateConfig::from_texts(&l)
    }

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn later_files_override_key_by_key() {
        let image = format!("channel = \"http://h/channels/stable.json\"\nkeys = [\"{KEY}\"]\ninterval = \"2h\"\n");
        let c = load(&[
            &format!("version = \"1.0.0\"\n{image}"),
            "strategy = \"off\"\ninterval = \"5s\"\njitter = \"0s\"\n",
        ])
        .unwrap();
        assert_eq!(c.channel.as_deref(), Some("http://h/channels/stable.json"));
        assert_eq!((c.strategy, c.interval, c.jitter), (Strategy::Off, Duration::from_secs(5), Duration::ZERO));
        assert_eq!(c.health_timeout, Duration::from_secs(600));
        assert_eq!(c.version.as_deref(), Some("1.0.0"));
        assert!(load(&["", "version = \"9.9.9\""]).is_err());
        assert_eq!(load(&[]).unwrap().channel, None);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = load(&["strategy = \"off\"\nbogus = 1\n"]).unwrap_err();
        assert!(e.path.starts_with("/f0:2:"), "{e}");
        let e = load(&["interval = \"soon\""]).unwrap_err();
        assert!(e.to_string().contains("interval \"soon\""), "{e}");
        let e = load(&["strategy = \"window\""]).unwrap_err();
        assert!(e.to_string().contains("[window]"), "{e}");
        assert!(load(&["channel = \"http://h/x.json\""]).is_err());
        assert!(load(&["channel = \"http://h/channels/s.json\""]).is_err(), "no keys");
    }

    #[test]
    fn fleetlock() {
        let c = load(&["strategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://10.0.2.101/\"\n"]).unwrap();
        let fl =
            |url: &str, group: &str| FleetLock { url: url.into(), group: group.into(), token_file: None, report: true };
        assert_eq!(c.strategy, Strategy::FleetLock(fl("http://10.0.2.101", "default")));
        assert_eq!(c.fleet, Some(fl("http://10.0.2.101", "default")));
        // The table may come from the operator's file, the strategy from the image's.
        let c =
            load(&["strategy = \"fleetlock\"", "[fleetlock]\nurl = \"https://fl\"\ngroup = \"workers\"\n"]).unwrap();
        assert_eq!(c.strategy, Strategy::FleetLock(fl("https://fl", "workers")));
        let e = load(&["strategy = \"fleetlock\""]).unwrap_err();
        assert!(e.to_string().contains("needs a [fleetlock] table"), "{e}");
        let e = load(&["strategy = \"fleetlock\"\n[fleetlock]\nurl = \"fl:8080\"\n"]).unwrap_err();
        assert!(e.to_string().contains("fleetlock.url \"fl:8080\""), "{e}");
        let e = load(&["strategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://fl\"\ngroup = \"a b\"\n"]).unwrap_err();
        assert!(e.to_string().contains("fleetlock.group: group \"a b\" must be"), "{e}");
        // The protocol's '.' is a group name's too.
        let c = load(&["strategy = \"fleetlock\"\n[fleetlock]\nurl = \"http://fl\"\ngroup = \"eu-west.1\"\n"]).unwrap();
        assert_eq!(c.fleet.map(|f| f.group).as_deref(), Some("eu-west.1"));
    }

    #[test]
    fn the_fleet_server_takes_a_token_file_and_reports_by_default() {
        // Any strategy: the table is the fleet server reports go to.
        let c = load(&[
            "strategy = \"window\"\n[window]\ndays = [\"sat\"]\nstart = \"02:00\"\nlength = \"1h\"\n",
            "[fleetlock]\nurl = \"https://fleet:8080/\"\ngroup = \"workers\"\ntoken-file = \"/etc/berth/fleet.token\"\n",
        ])
        .unwrap();
        assert_eq!(c.strategy.name(), "window");
        let f = c.fleet.unwrap();
        assert_eq!(f.url, "https://fleet:8080");
        assert_eq!(f.token_file.as_deref(), Some(Path::new("/etc/berth/fleet.token")));
        assert!(f.report, "report defaults to true");
        let c = load(&["[fleetlock]\nurl = \"http://fl\"\nreport = false\n"]).unwrap();
        assert_eq!((c.strategy, c.fleet.map(|f| (f.report, f.token_file))), (Strategy::Immediate, Some((false, None))));
        assert_eq!(load(&["strategy = \"off\""]).unwrap().fleet, None, "no table, no reports");

        // Clear errors, naming the file and the key.
        let e = load(&["[fleetlock]\nurl = \"http://fl\"\ntoken-file = \"fleet.token\"\n"]).unwrap_err();
        assert_eq!(e.to_string(), "/f0: fleetlock.token-file \"fleet.token\" must be an absolute path to a file");
        let e = load(&["[fleetlock]\nurl = \"http://fl\"\nreport = \"yes\"\n"]).unwrap_err();
        assert!(e.path.starts_with("/f0:3:") && e.why.contains("bool"), "{e}");
        let e = load(&["[fleetlock]\nurl = \"http://fl\"\ntoken = \"abc\"\n"]).unwrap_err();
        assert!(e.path.starts_with("/f0:3:") && e.why.contains("unknown field `token`"), "{e}");
        // A bad table is refused even when the strategy is not fleetlock.
        let e = load(&["strategy = \"off\"\n[fleetlock]\nurl = \"http://fl\"\ngroup = \"a/b\"\n"]).unwrap_err();
        assert!(e.to_string().contains("fleetlock.group"), "{e}");
    }

    #[test]
    fn a_private_ca_is_a_path_overridden_key_by_key() {
        assert_eq!(load(&[""]).unwrap().tls_ca, None, "the public roots unless told");
        let c = load(&["tls-ca = \"/usr/lib/berth/ca.pem\"\n"]).unwrap();
        assert_eq!(c.tls_ca.as_deref(), Some(Path::new("/usr/lib/berth/ca.pem")));
        // The operator's file overrides the image's; a file without the key keeps it.
        let c = load(&["tls-ca = \"/usr/lib/berth/ca.pem\"", "tls-ca = \"/etc/berth/ca.pem\""]).unwrap();
        assert_eq!(c.tls_ca.as_deref(), Some(Path::new("/etc/berth/ca.pem")));
        let c = load(&["tls-ca = \"/usr/lib/berth/ca.pem\"", "strategy = \"off\""]).unwrap();
        assert_eq!(c.tls_ca.as_deref(), Some(Path::new("/usr/lib/berth/ca.pem")));
        let e = load(&["", "tls-ca = \"ca.pem\""]).unwrap_err();
        assert_eq!(e.to_string(), "/f1: tls-ca \"ca.pem\" must be an absolute path to a PEM file");
        assert!(load(&["tls-ca = \"/etc/berth/\""]).is_err());
        let e = load(&["tls-ca = [\"/a.pem\"]"]).unwrap_err();
        assert!(e.path.starts_with("/f0:1:"), "{e}");
    }

    #[test]
    fn windows() {
        let c = load(&[
            "strategy = \"window\"\n[window]\ndays = [\"sat\", \"sunday\"]\nstart = \"02:00\"\nlength = \"3h\"\n",
        ])
        .unwrap();
        let Strategy::Window(w) = c.strategy else { panic!() };
        // 2026-12-05 is a Saturday.
        let sat_0300 = Timestamp::parse("2026-12-05T03:00:00Z").unwrap();
        assert!(w.contains(sat_0300));
        let sat_0600 = Timestamp::parse("2026-12-05T06:00:00Z").unwrap();
        assert!(!w.contains(sat_0600));
        assert_eq!(w.next_open(sat_0600), Timestamp::parse("2026-12-06T02:00:00Z").unwrap());
        let mon = Timestamp::parse("2026-12-07T12:00:00Z").unwrap();
        assert_eq!(w.next_open(mon), Timestamp::parse("2026-12-12T02:00:00Z").unwrap());
        assert_eq!(w.describe(), "sat,sun 02:00 for 3h");
    }
}
