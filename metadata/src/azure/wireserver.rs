//! Azure's ready report: the VM tells the WireServer it is up, or Azure fails the VM's
//! creation after its provisioning timeout (`OSProvisioningTimedOut`). Sent after provisioning
//! and `boot-complete.target` (a slot that fails its health gate never reports), once per
//! instance: [`READY_MARKER`] on STATE remembers the instance id (IMDS `vmId`) it was sent for.
//!
//! The protocol (Afterburn's and WALinuxAgent's), every request with `x-ms-agent-name` and
//! `x-ms-version: 2012-11-30`:
//! 1. `GET /?comp=versions`: 2012-11-30 must be among `Versions/Supported/Version`;
//! 2. `GET /machine/?comp=goalstate`: `Incarnation`, `Container/ContainerId`,
//!    `Container/RoleInstanceList/RoleInstance/InstanceId`;
//! 3. `POST /machine/?comp=health` (`text/xml; charset=utf-8`): the health report saying
//!    `Ready` for that incarnation, container and role instance.
//!
//! Steps 2 and 3 are retried together (a report the host refuses because the goal state moved
//! on is sent again for the new one), within the retry policy and the deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_http::{Client, Error, Retry};

use crate::atomic;
use crate::provider::{ATTEMPT_TIMEOUT, Log};
use crate::record::{InstanceRecord, Outcome};
use crate::session::{Session, Step};
use crate::xml;

/// The WireServer's fixed address.
pub const WIRESERVER: &str = "http://168.63.129.16";
/// The protocol version Berth speaks.
pub const PROTOCOL_VERSION: &str = "2012-11-30";
/// The agent name every request carries.
pub const AGENT_NAME: &str = "berth";
/// Where the instance the ready report was sent for is remembered, on STATE.
pub const READY_MARKER: &str = "/var/lib/berth/azure-ready";
/// The deadline `berth-metadata report-ready` gives the report unless told otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// The goal state's parts the report names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    /// `Incarnation`.
    pub incarnation: String,
    /// `Container/ContainerId`.
    pub container_id: String,
    /// `Container/RoleInstanceList/RoleInstance/InstanceId`.
    pub role_instance_id: String,
}

/// What a report came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// The marker names this instance: nothing was sent.
    AlreadyReported {
        /// The instance.
        instance_id: String,
    },
    /// The host took the report (200).
    Reported {
        /// The goal state it was sent for.
        goal_state: GoalState,
        /// Whether the marker now names the instance (not without an instance id).
        remembered: bool,
    },
}

/// Why the report was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// A step failed for good, or every attempt did.
    #[error("the ready report to the WireServer failed: {0}")]
    Failed(String),
    /// The WireServer does not speak 2012-11-30.
    #[error("the WireServer does not support protocol version {PROTOCOL_VERSION} (it supports: {0})")]
    Unsupported(String),
    /// The marker cannot be read or written.
    #[error("{}: {source}", path.display())]
    Marker {
        /// The marker.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The WireServer client.
pub struct WireServer {
    client: Client,
    retry: Retry,
    attempt_timeout: Duration,
    marker: PathBuf,
    log: Log,
}

impl WireServer {
    /// The client on `client` (whose base URL tests point at a fake) with `retry`, remembering
    /// in [`READY_MARKER`].
    pub fn new(client: Client, retry: Retry) -> WireServer {
        WireServer {
            client,
            retry,
            attempt_timeout: ATTEMPT_TIMEOUT,
            marker: PathBuf::from(READY_MARKER),
            log: Arc::new(|_| {}),
        }
    }

    /// Remembers in `path` instead of [`READY_MARKER`].
    #[must_use]
    pub fn marker(mut self, path: impl Into<PathBuf>) -> Self {
        self.marker = path.into();
        self
    }

    /// Sends each step's line to `log`.
    #[must_use]
    pub fn log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Arc::new(log);
        self
    }

    /// The longest one request may take.
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The instance the marker names, if any. A link in the marker's place is not followed (an
    /// error), nor is anything but a regular file read (a FIFO would hang the unit).
    pub fn reported_for(&self) -> Result<Option<String>, ReadyError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let read = || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open(&self.marker)?;
            if !file.metadata()?.is_file() {
                return Err(std::io::Error::other("not a regular file; not read"));
            }
            let mut text = String::new();
            file.take(4096).read_to_string(&mut text)?;
            Ok(text)
        };
        match read() {
            Ok(text) => Ok(text.lines().next().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ReadyError::Marker { path: self.marker.clone(), source }),
        }
    }

    /// Reports ready for `instance_id` (IMDS `vmId`, from the instance record) unless the
    /// marker says it was done for that instance; then remembers it. Without an instance id the
    /// report is sent and nothing is remembered (it is sent again next boot, which the host
    /// accepts).
    pub fn report_ready(&self, instance_id: Option<&str>, deadline: Instant) -> Result<Ready, ReadyError> {
        if let Some(id) = instance_id
            && self.reported_for()?.as_deref() == Some(id)
        {
            (self.log)(&format!("azure: ready was reported for instance {id} already ({})", self.marker.display()));
            return Ok(Ready::AlreadyReported { instance_id: id.to_string() });
        }
        let s = Session::new(self.retry, deadline, self.attempt_timeout, &*self.log);
        let failed = |s: Session| {
            let r = s.finish(InstanceRecord::empty("azure", Outcome::Complete));
            ReadyError::Failed(r.notes.join("; "))
        };

        (self.log)("azure: asking the WireServer for its protocol versions");
        let versions = s.run("GET /?comp=versions", |t| match self.get("/?comp=versions", t) {
            Ok(body) => Step::Done(body),
            Err(e) => s.step_of(e),
        });
        let versions = match versions {
            Ok(Some(v)) => v,
            Ok(None) => {
                s.fail("GET /?comp=versions: the server answered 404".into());
                return Err(failed(s));
            }
            Err(_) => return Err(failed(s)),
        };
        let supported = supported_versions(&versions).map_err(|e| ReadyError::Failed(format!("versions: {e}")))?;
        if !supported.iter().any(|v| v == PROTOCOL_VERSION) {
            return Err(ReadyError::Unsupported(supported.join(", ")));
        }

        let sent = s.run("ready report", |t| {
            let goal = match self.get("/machine/?comp=goalstate", t) {
                Ok(body) => match parse_goal_state(&body) {
                    Ok(goal) => goal,
                    // The host may answer before the goal state is whole: ask again.
                    Err(e) => return Step::Retry(format!("the goal state: {e}")),
                },
                Err(e) => return s.step_of(e).map_missing("GET /machine/?comp=goalstate answered 404"),
            };
            (self.log)(&format!(
                "azure: goal state incarnation {}, container {}, role instance {}: reporting Ready",
                goal.incarnation, goal.container_id, goal.role_instance_id
            ));
            match self
                .client
                .post(&format!("{WIRESERVER}/machine/?comp=health"))
                .header("x-ms-agent-name", AGENT_NAME)
                .header("x-ms-version", PROTOCOL_VERSION)
                .body("text/xml; charset=utf-8", health_report(&goal))
                .timeout(t)
                .send()
            {
                Ok(_) => Step::Done(goal),
                // 410 Gone: the goal state moved on; the next attempt reports for the new one.
                Err(Error::Status(410)) => Step::Retry("the host answered 410: the goal state changed".into()),
                Err(e) => s.step_of(e).map_missing("POST /machine/?comp=health answered 404"),
            }
        });
        let goal_state = match sent {
            Ok(Some(goal)) => goal,
            _ => return Err(failed(s)),
        };
        let remembered = match instance_id {
            Some(id) => {
                atomic::write(&self.marker, format!("{id}\n").as_bytes(), 0o644, atomic::Dir::Shared)
                    .map_err(|source| ReadyError::Marker { path: self.marker.clone(), source })?;
                (self.log)(&format!(
                    "azure: reported ready for instance {id}; remembered in {}",
                    self.marker.display()
                ));
                true
            }
            None => {
                (self.log)("azure: reported ready; no instance id to remember it by");
                false
            }
        };
        Ok(Ready::Reported { goal_state, remembered })
    }

    fn get(&self, path: &str, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.client
            .get(&format!("{WIRESERVER}{path}"))
            .header("x-ms-agent-name", AGENT_NAME)
            .header("x-ms-version", PROTOCOL_VERSION)
            .timeout(timeout)
            .send()?
            .read_to_vec(1 << 20)
    }
}

impl<T> Step<T> {
    /// A 404 is no missing field here: the step fails for good, saying so.
    fn map_missing(self, why: &str) -> Step<T> {
        match self {
            Step::Missing => Step::Final(why.to_string()),
            other => other,
        }
    }
}

/// The versions `GET /?comp=versions` lists as supported.
pub fn supported_versions(body: &[u8]) -> Result<Vec<String>, String> {
    let root = xml::parse(&String::from_utf8_lossy(body))?;
    if root.name != "Versions" {
        return Err(format!("the root element is <{}>, not <Versions>", root.name));
    }
    let supported = root.child("Supported").ok_or("no <Supported>")?;
    Ok(supported.children_named("Version").map(|v| v.text.trim().to_string()).collect())
}

/// The parts of a goal state the report names.
pub fn parse_goal_state(body: &[u8]) -> Result<GoalState, String> {
    let root = xml::parse(&String::from_utf8_lossy(body))?;
    if root.name != "GoalState" {
        return Err(format!("the root element is <{}>, not <GoalState>", root.name));
    }
    let field = |path: &[&str]| root.text_at(path).map(str::to_string).ok_or_else(|| format!("no {}", path.join("/")));
    Ok(GoalState {
        incarnation: field(&["Incarnation"])?,
        container_id: field(&["Container", "ContainerId"])?,
        role_instance_id: field(&["Container", "RoleInstanceList", "RoleInstance", "InstanceId"])?,
    })
}

/// The health report saying `Ready` for `goal`.
pub fn health_report(goal: &GoalState) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><GoalStateIncarnation>{}</GoalStateIncarnation><Container>\
         <ContainerId>{}</ContainerId><RoleInstanceList><Role><InstanceId>{}</InstanceId><Health><State>Ready</State>\
         </Health></Role></RoleInstanceList></Container></Health>\n",
        xml::escape(&goal.incarnation),
        xml::escape(&goal.container_id),
        xml::escape(&goal.role_instance_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_read_only_as_a_regular_file_not_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = |path: &std::path::Path| WireServer::new(crate::provider::client(), Retry::new()).marker(path);
        let marker = tmp.path().join("azure-ready");
        assert_eq!(ws(&marker).reported_for().unwrap(), None, "no marker: not reported");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::write(&elsewhere, "vm-1\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &marker).unwrap();
        let e = ws(&marker).reported_for().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", marker.display())), "{e}");
        std::fs::remove_file(&marker).unwrap();
        nix::unistd::mkfifo(&marker, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(ws(&marker).reported_for().unwrap_err().to_string().contains("not a regular file"));
        std::fs::remove_file(&marker).unwrap();
        std::fs::write(&marker, "vm-1\n").unwrap();
        assert_eq!(ws(&marker).reported_for().unwrap().as_deref(), Some("vm-1"));
    }

    #[test]
    fn goal_state_versions_and_the_report() {
        let goal = parse_goal_state(GOAL_STATE.as_bytes()).unwrap();
        assert_eq!(
            goal,
            GoalState {
                incarnation: "42".into(),
                container_id: "c6d5fd3c-1a4b-4c1e-b4e3-1d1a3a8b1e7c".into(),
                role_instance_id: "896b1b2a-2b84-4e2b-9d39-b05d1a6c6d25.berth-vm".into(),
            }
        );
        let report = health_report(&goal);
        let parsed = xml::parse(&report).unwrap();
        assert_eq!(parsed.text_at(&["GoalStateIncarnation"]), Some("42"));
        assert_eq!(parsed.text_at(&["Container", "RoleInstanceList", "Role", "Health", "State"]), Some("Ready"));
        assert!(report.contains(
            "<GoalStateIncarnation>42</GoalStateIncarnation><Container><ContainerId>c6d5fd3c-1a4b-4c1e-b4e3-1d1a3a8b1e7c\
             </ContainerId><RoleInstanceList><Role><InstanceId>896b1b2a-2b84-4e2b-9d39-b05d1a6c6d25.berth-vm</InstanceId>\
             <Health><State>Ready</State></Health></Role></RoleInstanceList></Container></Health>"
        ));
        let versions = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Versions><Preferred><Version>2015-04-05</Version>\
                        </Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version></Supported>\
                        </Versions>";
        assert_eq!(supported_versions(versions.as_bytes()).unwrap(), ["2015-04-05", "2012-11-30"]);
        assert!(
            parse_goal_state(b"<GoalState><Incarnation>1</Incarnation></GoalState>")
                .unwrap_err()
                .contains("no Container/ContainerId")
        );
    }

    /// The shape of Afterburn's fixture (providers/microsoft/azure mock tests).
    const GOAL_STATE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>2012-11-30</Version>
  <Incarnation>42</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>c6d5fd3c-1a4b-4c1e-b4e3-1d1a3a8b1e7c</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>896b1b2a-2b84-4e2b-9d39-b05d1a6c6d25.berth-vm</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>http://168.63.129.16:80/machine/?comp=config&amp;type=hostingEnvironmentConfig&amp;incarnation=42</HostingEnvironmentConfig>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#;
}
