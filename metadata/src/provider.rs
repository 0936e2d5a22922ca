//! The metadata providers behind one trait, as Afterburn has them: each cloud's service asked
//! for the instance id, the hostname, the SSH keys and the user data, with bounded retries
//! (Afterburn's backoff: 1 s, doubling, at most 5 s) inside an overall deadline. A field the
//! instance does not have (a 404) is noted and never fails the fetch; a service that never
//! answers gives an [`Outcome::Unreachable`] record, and the boot goes on with what the image
//! has.
//!
//! The clouds: [`aws`] (IMDSv2), [`gce`] (the metadata server), [`azure`] (IMDS and the
//! provisioning CD). [`fetch_for`] picks one for a platform and always gives a record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_http::{Client, Retry};
use berth_slot::platform::Platform;

use crate::record::{InstanceRecord, Outcome};
use crate::session::Session;
pub use crate::{aws, azure, gce};

/// The overall deadline `berth-metadata fetch` gives a provider unless told otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The longest one request may take (a request that hangs is tried again, within the deadline).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The user agent every request says.
pub const USER_AGENT: &str = concat!("berth-metadata/", env!("CARGO_PKG_VERSION"));

/// Most a hostname may be (`HOST_NAME_MAX` is 64 with the NUL; DNS labels are 63).
pub const HOSTNAME_MAX: usize = 63;

/// Afterburn's policy: 1 s before the first retry, doubling, at most 5 s between two, 10
/// retries (about 42 s of waiting, inside the 60 s deadline).
pub fn default_retry() -> Retry {
    Retry::new().attempts(11).backoff(Duration::from_secs(1)).max_backoff(Duration::from_secs(5))
}

/// The client the providers and the ready report use (Berth's settings, [`USER_AGENT`]). It
/// ignores the environment's proxy: the services answer only the instance itself (Azure
/// documents that IMDS must bypass proxies), and no proxy may see their tokens and user data.
pub fn client() -> Client {
    Client::builder(USER_AGENT).retry(default_retry()).no_proxy().build()
}

/// A cloud's metadata service.
pub trait Provider {
    /// The platform's word (`aws`, `gce`, `azure`), which the record carries.
    fn name(&self) -> &'static str;

    /// Asks the service for what the instance record holds, giving up at `deadline`. A field
    /// that is missing or failed is a note in the record (and an outcome other than complete),
    /// not an error; an error means the service that answered is not the one asked for.
    fn fetch(&self, deadline: Instant) -> Result<InstanceRecord, MetadataError>;
}

/// Why a fetch gave no record.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Something answered at the service's address, but not as that service does.
    #[error("{url} answered, but not as {service}'s metadata service: {why}")]
    NotTheService {
        /// The cloud.
        service: &'static str,
        /// The URL asked.
        url: String,
        /// What gave it away.
        why: String,
    },
}

/// Where a provider's log lines go (the binary: stderr, one line each).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// What every provider has: the client, the policy, the per-attempt limit and the log.
pub(crate) struct Common {
    pub client: Client,
    pub retry: Retry,
    pub attempt_timeout: Duration,
    pub log: Log,
}

impl Common {
    pub fn new(client: Client, retry: Retry) -> Common {
        Common { client, retry, attempt_timeout: ATTEMPT_TIMEOUT, log: Arc::new(|_| {}) }
    }

    pub fn session(&self, deadline: Instant) -> Session<'_> {
        Session::new(self.retry, deadline, self.attempt_timeout, &*self.log)
    }
}

/// The builder methods every provider has.
macro_rules! common_settings {
    ($t:ty) => {
        impl $t {
            /// Sends each step's line to `log` (retries, missing fields, failures).
            #[must_use]
            pub fn log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
                self.common.log = std::sync::Arc::new(log);
                self
            }

            /// The longest one request may take ([`crate::provider::ATTEMPT_TIMEOUT`] unless
            /// told otherwise); never past the deadline.
            #[must_use]
            pub fn attempt_timeout(mut self, timeout: std::time::Duration) -> Self {
                self.common.attempt_timeout = timeout;
                self
            }
        }
    };
}
pub(crate) use common_settings;

/// The provider of `platform`'s metadata service, or `None` for a platform without one.
pub fn for_platform(platform: Platform, client: Client, retry: Retry, log: Log) -> Option<Box<dyn Provider>> {
    let log2 = log.clone();
    let log = move |l: &str| log2(l);
    Some(match platform {
        Platform::Aws => Box::new(aws::Aws::new(client, retry).log(log)),
        Platform::Gce => Box::new(gce::Gce::new(client, retry).log(log)),
        Platform::Azure => Box::new(azure::Azure::new(client, retry).log(log)),
        _ => return None,
    })
}

/// The record for `platform`: [`Outcome::NotACloud`] for a platform without a metadata
/// service, else what its provider fetched by `deadline`. A provider's error (the wrong service
/// answered) is an unreachable record saying so: the boot goes on with what the image has.
pub fn fetch_for(platform: Platform, client: Client, retry: Retry, deadline: Instant, log: Log) -> InstanceRecord {
    let Some(provider) = for_platform(platform, client, retry, log.clone()) else {
        return InstanceRecord::empty(platform.name(), Outcome::NotACloud);
    };
    match provider.fetch(deadline) {
        Ok(record) => record,
        Err(e) => {
            let mut record = InstanceRecord::empty(provider.name(), Outcome::Unreachable);
            let line = e.to_string();
            log(&line);
            record.notes.push(line);
            record
        }
    }
}

/// The hostname as a machine can have it: trimmed, and when longer than [`HOSTNAME_MAX`]
/// bytes cut at its first dot (GCE's FQDNs, as Afterburn does), then at 63 bytes. `Err` says
/// why a name cannot be one (empty, or characters a hostname cannot have).
pub fn hostname(raw: &str) -> Result<String, String> {
    let mut name = raw.trim();
    if name.len() > HOSTNAME_MAX {
        name = name.split('.').next().unwrap_or(name);
    }
    // Checked before the cut: only ASCII is left, so the cut is on a character boundary.
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
        return Err(format!("{:?} has {c:?}, which a hostname cannot have", raw.trim()));
    }
    let name = name.get(..HOSTNAME_MAX).unwrap_or(name);
    if name.is_empty() {
        return Err("empty".into());
    }
    Ok(name.to_string())
}

/// `bytes` as text for a field, or why not.
pub(crate) fn text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())
}

/// Sets `record.hostname` from `raw`, noting (as a failure) a name that cannot be one.
pub(crate) fn set_hostname(session: &Session, record: &mut InstanceRecord, what: &str, raw: Vec<u8>) {
    match text(raw).and_then(|t| hostname(&t)) {
        Ok(name) => record.hostname = Some(name),
        Err(why) => session.fail(format!("{what}: not used as the hostname: {why}")),
    }
}

/// Sets `record.instance_id` from `raw` (trimmed, not empty).
pub(crate) fn set_instance_id(session: &Session, record: &mut InstanceRecord, what: &str, raw: Vec<u8>) {
    match text(raw) {
        Ok(id) if !id.trim().is_empty() && !id.trim().contains(char::is_control) => {
            record.instance_id = Some(id.trim().to_string())
        }
        Ok(_) => session.fail(format!("{what}: empty or not one line")),
        Err(why) => session.fail(format!("{what}: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_cut_as_afterburn_cuts_them() {
        let fqdn = "instance-with-a-rather-long-name.us-central1-a.c.my-project-123456.internal";
        assert!(fqdn.len() > 63);
        assert_eq!(hostname(fqdn).unwrap(), "instance-with-a-rather-long-name");
        let short = "node-1.c.proj.internal";
        assert_eq!(hostname(short).unwrap(), short, "63 bytes or fewer are kept whole");
        assert_eq!(hostname(&"a".repeat(70)).unwrap(), "a".repeat(63));
        assert_eq!(hostname(" ip-10-0-0-1.ec2.internal\n").unwrap(), "ip-10-0-0-1.ec2.internal");
        assert_eq!(hostname("  ").unwrap_err(), "empty");
        assert!(hostname("a b").unwrap_err().contains("which a hostname cannot have"));
        // A multi-byte character across byte 63 is refused, not cut inside (which panicked).
        let wide = format!("{}é{}", "a".repeat(62), "b".repeat(10));
        assert!(hostname(&wide).unwrap_err().contains("'é'"), "{:?}", hostname(&wide));
    }

    #[test]
    fn platforms_without_a_service_give_a_not_a_cloud_record() {
        for p in [Platform::Metal, Platform::Qemu, Platform::Virtualbox, Platform::VagrantLibvirt] {
            let r = fetch_for(p, client(), default_retry(), Instant::now(), Arc::new(|_| {}));
            assert_eq!(r, InstanceRecord::empty(p.name(), Outcome::NotACloud));
        }
        assert_eq!(default_retry().delay(1), Duration::from_secs(1));
        assert_eq!(default_retry().delay(4), Duration::from_secs(5));
    }

    #[test]
    fn the_client_never_goes_through_the_environment_s_proxy() {
        assert!(client().ignores_env_proxy(), "metadata and WireServer requests bypass proxies");
    }
}
