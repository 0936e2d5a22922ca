//! `timesync.toml`: the image's `/usr/lib/berth/timesync.toml`, overridden key by key by the
//! host's `/etc/berth/timesync.toml`; both optional.
//!
//! ```toml
//! servers = ["0.pool.ntp.org", "time.example:123", "[2001:db8::1]:123"]   # host or host:port
//! interval = "1h"     # between synchronisations once the clock is set
//! samples = 4         # exchanges per server address per synchronisation
//! ```
//!
//! `servers = []` turns network time off: the clock is taken as the hardware clock set it (an
//! air-gapped host, or a hypervisor that keeps the clock), and berth-timesync records that.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_release::time::parse_duration;
use serde::Deserialize;

/// The image's settings, relative to the root.
pub const IMAGE_CONFIG: &str = "usr/lib/berth/timesync.toml";
/// The host's settings, relative to the root; they override the image's key by key.
pub const HOST_CONFIG: &str = "etc/berth/timesync.toml";

/// The servers when neither file names any: the NTP pool project's generic zones.
pub const DEFAULT_SERVERS: [&str; 4] = ["0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org", "3.pool.ntp.org"];

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `host` or `host:port` (port 123 by default); empty: no network time.
    pub servers: Vec<String>,
    /// Between synchronisations once the clock is set.
    pub interval: Duration,
    /// Exchanges per server address per synchronisation.
    pub samples: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            servers: DEFAULT_SERVERS.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(3600),
            samples: 4,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    servers: Option<Vec<String>>,
    interval: Option<String>,
    samples: Option<u32>,
}

/// A settings file that cannot be used, by path and reason.
#[derive(Debug, thiserror::Error)]
#[error("{}:{why}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub why: String,
}

impl Config {
    /// Reads the image's and the host's file under `root`.
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        let mut texts = Vec::new();
        for rel in [IMAGE_CONFIG, HOST_CONFIG] {
            let path = root.join(rel);
            match std::fs::read_to_string(&path) {
                Ok(t) => texts.push((path, t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ConfigError { path, why: e.to_string() }),
            }
        }
        Config::from_texts(&texts)
    }

    /// The settings from file texts, later ones overriding earlier ones key by key.
    pub fn from_texts(texts: &[(PathBuf, String)]) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for (path, text) in texts {
            let err = |why: String| ConfigError { path: path.clone(), why: format!(" {why}") };
            let raw: Raw = toml::from_str(text).map_err(|e| {
                // `file:line:column: message`, on one line.
                let at = e.span().map_or(0, |s| s.start).min(text.len());
                let before = text.get(..at).unwrap_or_default();
                let line = before.matches('\n').count() + 1;
                let column = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                ConfigError { path: path.clone(), why: format!("{line}:{column}: {}", e.message()) }
            })?;
            if let Some(s) = raw.servers {
                if let Some(bad) = s.iter().find(|s| s.trim().is_empty() || s.contains(char::is_whitespace)) {
                    return Err(err(format!("servers: {bad:?} is not a host name or address")));
                }
                c.servers = s;
            }
            if let Some(i) = raw.interval {
                c.interval = parse_duration(&i)
                    .filter(|d| *d >= Duration::from_secs(60))
                    .ok_or_else(|| err(format!("interval: {i:?} is not a duration of a minute or more (\"1h\")")))?;
            }
            if let Some(n) = raw.samples {
                if !(1..=16).contains(&n) {
                    return Err(err(format!("samples: {n} is not between 1 and 16")));
                }
                c.samples = n;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(texts: &[&str]) -> Result<Config, ConfigError> {
        let t: Vec<(PathBuf, String)> =
            texts.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("f{i}.toml")), t.to_string())).collect();
        Config::from_texts(&t)
    }

    #[test]
    fn defaults_overrides_and_errors() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
        let c = parse(&["servers = [\"a.example\"]\nsamples = 2\n", "interval = \"30m\"\n"]).unwrap();
        assert_eq!(c.servers, vec!["a.example"]);
        assert_eq!((c.samples, c.interval), (2, Duration::from_secs(1800)));
        assert!(parse(&["servers = []"]).unwrap().servers.is_empty());
        for (bad, says) in [
            ("interval = \"5s\"", "f0.toml: interval"),
            ("samples = 0", "f0.toml: samples: 0"),
            ("servers = [\"a b\"]", "f0.toml: servers"),
            ("server = []", "f0.toml:1:1: unknown field `server`"),
        ] {
            let e = parse(&[bad]).unwrap_err().to_string();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
    }
}
