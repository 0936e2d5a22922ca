//! The fleet's wire contract (docs/design.md §9), defined once for the update agent (the client),
//! `berth fleet serve` (the server, crate `fleet/`) and `berth fleet status`:
//!
//! - FleetLock (Zincati's protocol, which airlock serves): `POST /v1/pre-reboot` and
//!   `POST /v1/steady-state` with the header `fleet-lock-protocol: true` and
//!   `{"client_params": {"id", "group"}}`; 200 grants, any other status refuses with an
//!   [`ErrorDoc`] whose `kind` is one of [`kind`];
//! - host reports: `POST /berth/v1/report` with the same header, the same client params and a
//!   [`HostReport`]: what the host runs and what its agent is doing, so the fleet view can show
//!   hosts per version and state, who rolled back and who went silent;
//! - the id a host gives (derived from its machine-id, [`node_id`]) and the checks on ids and
//!   group names both sides apply ([`check_id`], [`check_group`]), and on a report's text
//!   ([`check_report`], [`printable`]).

use serde::{Deserialize, Serialize};

use crate::artifact::Sha256;
use crate::time::Timestamp;

/// The header every FleetLock and report request carries, with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
/// Asks for a reboot slot (recursive: a holder asking again is granted).
pub const PRE_REBOOT_PATH: &str = "/v1/pre-reboot";
/// Gives back the slot the host holds, if any.
pub const STEADY_STATE_PATH: &str = "/v1/steady-state";
/// A host's report of itself.
pub const REPORT_PATH: &str = "/berth/v1/report";
/// The largest report body a server takes.
pub const MAX_REPORT: usize = 16 << 10;
/// The most rolled-back versions a report carries (the newest).
pub const MAX_ROLLED_BACK: usize = 16;
/// The version of [`HostReport`]'s schema.
pub const REPORT_SCHEMA: u32 = 1;

/// The error kinds a Berth fleet server answers with (stable: scripts and metrics key on them).
pub mod kind {
    /// Every reboot slot of the group is held by other hosts (409).
    pub const FAILED_LOCK: &str = "failed_lock";
    /// The header, the body, the id or the group is not what the protocol asks for (400).
    pub const INVALID_CLIENT_IDENTITY: &str = "invalid_client_identity";
    /// A bearer token is required and was missing or wrong (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The store behind the server (etcd) did not answer (503).
    pub const ETCD_UNAVAILABLE: &str = "etcd_unavailable";
    /// Too many concurrent changes of one group: the server gave up retrying (503).
    pub const ETCD_CONFLICT: &str = "etcd_conflict";
    /// A group's semaphore in the store is not one the server can read; it is never overwritten (500).
    pub const CORRUPT_SEMAPHORE: &str = "corrupt_semaphore";
    /// No such path (404).
    pub const NOT_FOUND: &str = "not_found";
    /// A path that takes another method (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// A body larger than the server takes (413).
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
}

/// Who asks: the host's id and its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// The host's id ([`node_id`] for Berth hosts; any [`check_id`]-valid string for others).
    pub id: String,
    /// The group whose reboot slots it asks for ([`check_group`]).
    pub group: String,
}

/// The body of a FleetLock request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// Who asks.
    pub client_params: ClientParams,
}

/// The body of a refusal: the protocol's error document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDoc {
    /// One of [`kind`].
    pub kind: String,
    /// Why, for people.
    pub value: String,
}

/// The body of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Who reports.
    pub client_params: ClientParams,
    /// What it says.
    pub report: HostReport,
}

/// What a host tells the fleet server about itself, on each change of its agent's state and
/// periodically (so that a host that stops reporting can be shown as silent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// The host's name.
    pub hostname: String,
    /// The version running.
    pub version: String,
    /// The slot running (`a` or `b`).
    pub slot: String,
    /// What the agent is doing (`idle`, `checking`, `downloading`, `staged`, `rebooting`, …).
    pub state: String,
    /// The version staged for the next boot, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
    /// The newest version the channel offers this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// The last check that reached a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Timestamp>,
    /// The agent's last error, if the last check did not clear it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Versions that rolled back on this host (at most [`MAX_ROLLED_BACK`], newest last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<RolledBack>,
    /// How the last FleetLock request was refused, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleetlock: Option<ErrorDoc>,
    /// Seconds between two checks (and so two periodic reports), for the server's silence
    /// deadline.
    pub interval_seconds: u64,
    /// The most random delay added to the interval.
    #[serde(default)]
    pub jitter_seconds: u64,
    /// When the host sent it (its own clock).
    pub sent: Timestamp,
}

/// A version that rolled back on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The version.
    pub version: String,
    /// The slot it was tried in (`a` or `b`).
    pub slot: String,
    /// When the agent noticed.
    pub at: Timestamp,
    /// The operator left it (`berth-update rollback`) rather than its trial boots failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
}

/// The id a host gives the fleet server: derived from its machine-id (stable across reboots
/// and updates) without disclosing it; 32 hex digits.
pub fn node_id(machine_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"berth fleetlock v1\0");
    h.update(machine_id.trim().as_bytes());
    crate::encode_hex(&h.finish().0[..16])
}

/// A group name: 1 to 64 letters, digits, `.`, `_` or `-` (the protocol's `[a-zA-Z0-9.-]`
/// and the `_` Berth's configuration has always allowed).
pub fn check_group(group: &str) -> Result<(), String> {
    let ok = !group.is_empty()
        && group.len() <= 64
        && group.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(format!("group {group:?} must be 1 to 64 letters, digits, '.', '_' or '-'")) }
}

/// A host id: 1 to 128 letters, digits, `.`, `_`, `:` or `-` (what goes into a store key).
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok { Ok(()) } else { Err(format!("id {id:?} must be 1 to 128 letters, digits, '.', '_', ':' or '-'")) }
}

/// The most bytes of a report's short fields (version, slot, state, a rolled-back version…).
pub const MAX_FIELD: usize = 128;

/// The longest reported hostname (DNS's limit).
pub const MAX_HOSTNAME: usize = 253;

fn hostname_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-')
}

fn field_char(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// `name` made a hostname [`check_hostname`] takes (what an agent sends): other characters
/// become `-`, at most [`MAX_HOSTNAME`]; `none` when empty.
pub fn as_hostname(name: &str) -> String {
    let name: String = name.chars().map(|c| if hostname_char(c) { c } else { '-' }).take(MAX_HOSTNAME).collect();
    if name.is_empty() { "none".to_string() } else { name }
}

/// `s` made a short field [`check_report`] takes: printable ASCII, anything else `?`, at most
/// [`MAX_FIELD`] bytes.
pub fn as_field(s: &str) -> String {
    s.chars().map(|c| if field_char(c) { c } else { '?' }).take(MAX_FIELD).collect()
}

/// A reported hostname: 1 to 253 letters, digits, `.` or `-` (what DNS takes), so that it can
/// neither hide a terminal escape nor pose as a line of `berth fleet status`.
pub fn check_hostname(hostname: &str) -> Result<(), String> {
    let ok = !hostname.is_empty() && hostname.len() <= MAX_HOSTNAME && hostname.chars().all(hostname_char);
    if ok {
        Ok(())
    } else {
        Err(format!("hostname {:?} must be 1 to 253 letters, digits, '.' or '-'", cut_for_message(hostname)))
    }
}

/// What a server takes of a report's text (both sides check it): the hostname as
/// [`check_hostname`]; version, slot, state, the staged and available versions, the FleetLock
/// refusal's kind and each rolled-back version and slot at most [`MAX_FIELD`] bytes of printable
/// ASCII. The free text (`last_error`, the refusal's `value`) is not checked here: the server
/// stores it with control characters replaced ([`printable`]).
pub fn check_report(report: &HostReport) -> Result<(), String> {
    check_hostname(&report.hostname)?;
    let mut fields = vec![("version", &report.version), ("slot", &report.slot), ("state", &report.state)];
    fields.extend(report.staged.iter().map(|v| ("staged", v)));
    fields.extend(report.available.iter().map(|v| ("available", v)));
    fields.extend(report.fleetlock.iter().map(|f| ("fleetlock.kind", &f.kind)));
    for r in &report.rolled_back {
        fields.extend([("rolled_back.version", &r.version), ("rolled_back.slot", &r.slot)]);
    }
    for (name, value) in fields {
        if value.len() > MAX_FIELD || !value.chars().all(field_char) {
            return Err(format!(
                "{name} {:?} must be at most {MAX_FIELD} printable ASCII characters",
                cut_for_message(value)
            ));
        }
    }
    Ok(())
}

/// `text` with every control character (a terminal escape, a newline that would forge a line)
/// replaced: tabs and line ends by a space, the others by U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// The start of a refused value, for the error that names it.
fn cut_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_agent_sends_is_what_the_server_takes() {
        for raw in ["", "web-1.example", "a b\u{1b}[31m\nc", &"x".repeat(300), "é—\u{7f}"] {
            let h = as_hostname(raw);
            assert!(check_hostname(&h).is_ok(), "{raw:?} -> {h:?}");
            let f = as_field(raw);
            assert!(f.len() <= MAX_FIELD && f.chars().all(field_char), "{raw:?} -> {f:?}");
        }
        assert_eq!((as_hostname(""), as_hostname("a_b")), ("none".to_string(), "a-b".to_string()));
        assert_eq!(as_field("1.0\u{1b}"), "1.0?");
    }

    #[test]
    fn node_ids_are_stable_hex_and_hide_the_machine_id() {
        let id = node_id("0123456789abcdef0123456789abcdef\n");
        assert_eq!(id, node_id("0123456789abcdef0123456789abcdef"));
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, node_id("fedcba9876543210fedcba9876543210"));
        assert!(!id.contains("0123456789abcdef"));
        check_id(&id).unwrap();
    }

    #[test]
    fn names_are_checked() {
        for ok in ["workers", "eu-west.1", "a_b", &"x".repeat(64)] {
            check_group(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(check_group(bad).is_err(), "{bad:?}");
        }
        check_id("node-2:a.b_c").unwrap();
        assert!(check_id("a/b").is_err() && check_id("").is_err() && check_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn report_text_is_checked_and_control_characters_replaced() {
        let good = || HostReport {
            schema: REPORT_SCHEMA,
            hostname: "node-2.example".into(),
            version: "1.1.0".into(),
            slot: "b".into(),
            state: "idle".into(),
            staged: None,
            available: Some("1.2.0+build.7".into()),
            last_check: None,
            last_error: Some("anything\u{1b}[31m goes here, replaced when stored".into()),
            rolled_back: vec![RolledBack {
                version: "1.0.5".into(),
                slot: "a".into(),
                at: Timestamp(0),
                manual: false,
            }],
            fleetlock: Some(ErrorDoc { kind: "failed_lock".into(), value: "held\nREBOOT SLOTS".into() }),
            interval_seconds: 60,
            jitter_seconds: 0,
            sent: Timestamp(0),
        };
        check_report(&good()).unwrap();
        check_hostname(&"a".repeat(253)).unwrap();
        for bad in ["", "a b", "node_2", "n\u{1b}]0;x\u{7}", "a\nb", "ü", &"a".repeat(254)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
            assert!(check_report(&HostReport { hostname: bad.into(), ..good() }).is_err(), "{bad:?}");
        }
        let bad_text = ["1.0\u{1b}[2J", "idle\nSILENT", "é", &"9".repeat(129)];
        for bad in bad_text {
            let e = check_report(&HostReport { version: bad.into(), ..good() }).unwrap_err();
            assert!(e.starts_with("version "), "{e}");
            assert!(check_report(&HostReport { state: bad.into(), ..good() }).is_err());
            assert!(check_report(&HostReport { slot: bad.into(), ..good() }).is_err());
            assert!(check_report(&HostReport { staged: Some(bad.into()), ..good() }).is_err());
            let mut r = good();
            r.rolled_back[0].version = bad.into();
            assert!(check_report(&r).is_err());
            let mut r = good();
            r.fleetlock.as_mut().unwrap().kind = bad.into();
            assert!(check_report(&r).is_err());
        }
        check_report(&HostReport { version: String::new(), ..good() }).unwrap();
        assert_eq!(printable("a\u{1b}[31mb\nc\td\u{9b}é"), "a\u{fffd}[31mb c d\u{fffd}é");
    }

    #[test]
    fn a_report_round_trips_and_omits_what_is_empty() {
        let r = ReportRequest {
            client_params: ClientParams { id: "3f2a".into(), group: "workers".into() },
            report: HostReport {
                schema: REPORT_SCHEMA,
                hostname: "node-2".into(),
                version: "1.1.0".into(),
                slot: "b".into(),
                state: "idle".into(),
                staged: None,
                available: Some("1.1.0".into()),
                last_check: Timestamp::parse("2026-12-07T16:30:00Z"),
                last_error: None,
                rolled_back: vec![RolledBack {
                    version: "1.0.5".into(),
                    slot: "a".into(),
                    at: Timestamp(0),
                    manual: false,
                }],
                fleetlock: None,
                interval_seconds: 3600,
                jitter_seconds: 600,
                sent: Timestamp(1_796_000_000),
            },
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("staged") && !json.contains("last_error") && !json.contains("manual"), "{json}");
        assert!(json.contains(r#""last_check":"2026-12-07T16:30:00Z""#), "{json}");
        assert_eq!(serde_json::from_str::<ReportRequest>(&json).unwrap(), r);
    }
}
