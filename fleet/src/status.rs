//! The fleet view `berth fleet status` shows, made from a [`Snapshot`]: hosts per version and
//! state, who holds each group's reboot slots (and since when), which hosts rolled back and
//! from what, which went silent. [`FleetStatus`] is the `--json` form (stable field names);
//! [`FleetStatus::human`] the terminal's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_release::fleet::{ErrorDoc, RolledBack};
use berth_release::time::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Snapshot;

/// The state counted for a silent host in [`FleetStatus::versions`]: what it last said may no
/// longer be true.
pub const SILENT: &str = "silent";

/// The fleet at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The store's revision it was read at.
    pub revision: u64,
    /// When it was read.
    pub at: Timestamp,
    /// Each group's reboot slots.
    pub groups: Vec<GroupStatus>,
    /// Hosts per version, then per state (silent hosts under `silent`).
    pub versions: BTreeMap<String, BTreeMap<String, u32>>,
    /// Every host that ever reported (until forgotten), by group and id.
    pub hosts: Vec<HostStatus>,
    /// Every rollback the hosts report, per host, oldest first.
    pub rolled_back: Vec<RollbackStatus>,
}

/// One group's reboot slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub group: String,
    /// Its slots.
    pub total_slots: u32,
    /// Who holds them.
    pub holders: Vec<HolderStatus>,
}

/// A holder of a slot, with what its last report said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderStatus {
    /// Its id.
    pub id: String,
    /// Its hostname (when it reported).
    pub hostname: Option<String>,
    /// Since when it holds the slot (when the semaphore says).
    pub since: Option<Timestamp>,
    /// The version it runs (when it reported).
    pub version: Option<String>,
    /// What its agent is doing (when it reported).
    pub state: Option<String>,
    /// Whether it went silent (false when it never reported).
    pub silent: bool,
}

/// A host's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Its id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its hostname.
    pub hostname: String,
    /// The version it runs.
    pub version: String,
    /// The slot it runs from.
    pub slot: String,
    /// What its agent is doing.
    pub state: String,
    /// The version staged for its next boot.
    pub staged: Option<String>,
    /// The newest version its channel offers it.
    pub available: Option<String>,
    /// Its last check with a verdict.
    pub last_check: Option<Timestamp>,
    /// Its agent's last error.
    pub last_error: Option<String>,
    /// How its last FleetLock request was refused.
    pub fleetlock: Option<ErrorDoc>,
    /// Versions that rolled back on it.
    pub rolled_back: Vec<RolledBack>,
    /// When the report was received.
    pub received: Timestamp,
    /// Its report's deadline passed with no newer one.
    pub silent: bool,
}

/// A rollback on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStatus {
    /// The host's id.
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// The version that rolled back.
    pub version: String,
    /// The slot it was tried in.
    pub slot: String,
    /// When.
    pub at: Timestamp,
    /// The operator chose it.
    pub manual: bool,
    /// The version the host runs now.
    pub running: String,
}

impl FleetStatus {
    /// The view of `snapshot`, read at `at`.
    pub fn new(snapshot: &Snapshot, at: Timestamp) -> FleetStatus {
        let mut hosts: Vec<HostStatus> = snapshot
            .hosts
            .iter()
            .map(|h| HostStatus {
                id: h.client_params.id.clone(),
                group: h.client_params.group.clone(),
                hostname: h.report.hostname.clone(),
                version: h.report.version.clone(),
                slot: h.report.slot.clone(),
                state: h.report.state.clone(),
                staged: h.report.staged.clone(),
                available: h.report.available.clone(),
                last_check: h.report.last_check,
                last_error: h.report.last_error.clone(),
                fleetlock: h.report.fleetlock.clone(),
                rolled_back: h.report.rolled_back.clone(),
                received: h.received,
                silent: h.silent,
            })
            .collect();
        hosts.sort_by(|a, b| (&a.group, &a.id).cmp(&(&b.group, &b.id)));
        let mut versions: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for h in &hosts {
            let state = if h.silent { SILENT.to_string() } else { h.state.clone() };
            *versions.entry(h.version.clone()).or_default().entry(state).or_default() += 1;
        }
        let mut groups: Vec<GroupStatus> = snapshot
            .groups
            .iter()
            .map(|(group, sem)| GroupStatus {
                group: group.clone(),
                total_slots: sem.total_slots,
                holders: sem
                    .holder_list()
                    .into_iter()
                    .map(|holder| {
                        // Its report in this group, else in any.
                        let h = hosts
                            .iter()
                            .find(|h| h.id == holder.id && &h.group == group)
                            .or_else(|| hosts.iter().find(|h| h.id == holder.id));
                        HolderStatus {
                            hostname: h.map(|h| h.hostname.clone()),
                            since: holder.since,
                            version: h.map(|h| h.version.clone()),
                            state: h.map(|h| h.state.clone()),
                            silent: h.is_some_and(|h| h.silent),
                            id: holder.id,
                        }
                    })
                    .collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let rolled_back = hosts
            .iter()
            .flat_map(|h| {
                h.rolled_back.iter().map(|r| RollbackStatus {
                    id: h.id.clone(),
                    hostname: h.hostname.clone(),
                    version: r.version.clone(),
                    slot: r.slot.clone(),
                    at: r.at,
                    manual: r.manual,
                    running: h.version.clone(),
                })
            })
            .collect();
        FleetStatus { revision: snapshot.revision, at, groups, versions, hosts, rolled_back }
    }

    /// Hosts that went silent.
    pub fn silent(&self) -> impl Iterator<Item = &HostStatus> {
        self.hosts.iter().filter(|h| h.silent)
    }

    /// For a terminal:
    ///
    /// ```text
    /// fleet at revision 418 (2026-12-07T16:25:00Z): 3 hosts, 1 silent
    ///
    /// VERSION  STATE   HOSTS
    /// 1.1.0    idle    2
    /// 1.0.0    silent  1
    ///
    /// REBOOT SLOTS
    /// workers  1/1  node-2 (3f2a…) since 2026-12-07T16:20:01Z (5m ago), 1.1.0 rebooting
    ///
    /// SILENT
    /// node-9 (a1b2…) workers 1.0.0 idle, last report 2026-12-07T15:01:00Z (1h24m ago)
    ///
    /// ROLLED BACK
    /// node-3 (c3d4…) 1.2.0 in slot b at 2026-12-07T16:30:00Z, running 1.1.0
    /// ```
    ///
    /// Control characters a host put in its report (an old server's store may hold some) are
    /// shown escaped (`\u{1b}`, `\n`): they can neither drive the terminal nor forge a line.
    pub fn human(&self) -> String {
        self.escaped().render()
    }

    /// This view with every control character of its text escaped.
    fn escaped(&self) -> FleetStatus {
        let opt = |s: &Option<String>| s.as_deref().map(shown);
        FleetStatus {
            revision: self.revision,
            at: self.at,
            groups: self
                .groups
                .iter()
                .map(|g| GroupStatus {
                    group: shown(&g.group),
                    total_slots: g.total_slots,
                    holders: g
                        .holders
                        .iter()
                        .map(|h| HolderStatus {
                            id: shown(&h.id),
                            hostname: opt(&h.hostname),
                            since: h.since,
                            version: opt(&h.version),
                            state: opt(&h.state),
                            silent: h.silent,
                        })
                        .collect(),
                })
                .collect(),
            versions: self
                .versions
                .iter()
                .map(|(v, states)| (shown(v), states.iter().map(|(s, n)| (shown(s), *n)).collect()))
                .collect(),
            hosts: self
                .hosts
                .iter()
                .map(|h| HostStatus {
                    id: shown(&h.id),
                    group: shown(&h.group),
                    hostname: shown(&h.hostname),
                    version: shown(&h.version),
                    slot: shown(&h.slot),
                    state: shown(&h.state),
                    staged: opt(&h.staged),
                    available: opt(&h.available),
                    last_error: opt(&h.last_error),
                    fleetlock: h.fleetlock.as_ref().map(|f| ErrorDoc { kind: shown(&f.kind), value: shown(&f.value) }),
                    rolled_back: h
                        .rolled_back
                        .iter()
                        .map(|r| RolledBack { version: shown(&r.version), slot: shown(&r.slot), ..r.clone() })
                        .collect(),
                    ..h.clone()
                })
                .collect(),
            rolled_back: self
                .rolled_back
                .iter()
                .map(|r| RollbackStatus {
                    id: shown(&r.id),
                    hostname: shown(&r.hostname),
                    version: shown(&r.version),
                    slot: shown(&r.slot),
                    running: shown(&r.running),
                    ..r.clone()
                })
                .collect(),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let silent = self.silent().count();
        let _ = writeln!(
            out,
            "fleet at revision {} ({}): {} host{}, {silent} silent",
            self.revision,
            self.at,
            self.hosts.len(),
            if self.hosts.len() == 1 { "" } else { "s" }
        );
        if !self.versions.is_empty() {
            // Newest first, 1.10.0 above 1.9.0.
            let mut versions: Vec<_> = self.versions.iter().collect();
            versions.sort_by_key(|(v, _)| std::cmp::Reverse(version_key(v)));
            let rows: Vec<(&str, &str, u32)> = versions
                .into_iter()
                .flat_map(|(v, states)| states.iter().map(move |(s, n)| (v.as_str(), s.as_str(), *n)))
                .collect();
            let vw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max("VERSION".len());
            let sw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("STATE".len());
            let _ = writeln!(out, "\n{:vw$}  {:sw$}  HOSTS", "VERSION", "STATE");
            for (v, s, n) in rows {
                let _ = writeln!(out, "{v:vw$}  {s:sw$}  {n}");
            }
        }
        if !self.groups.is_empty() {
            let gw = self.groups.iter().map(|g| g.group.len()).max().unwrap_or(0);
            let _ = writeln!(out, "\nREBOOT SLOTS");
            for g in &self.groups {
                let used = format!("{}/{}", g.holders.len(), g.total_slots);
                let holders: Vec<String> = g
                    .holders
                    .iter()
                    .map(|h| {
                        let mut s = match &h.hostname {
                            Some(name) => format!("{name} ({})", h.id),
                            None => h.id.clone(),
                        };
                        if let Some(since) = h.since {
                            let _ = write!(s, " since {since} ({} ago)", ago(self.at, since));
                        }
                        if let (Some(v), Some(st)) = (&h.version, &h.state) {
                            let _ = write!(s, ", {v} {st}");
                        }
                        if h.silent {
                            s.push_str(", SILENT");
                        }
                        s
                    })
                    .collect();
                let _ = writeln!(out, "{:gw$}  {used:5}  {}", g.group, holders.join("; ")).map(|_| ());
            }
        }
        if silent > 0 {
            let _ = writeln!(out, "\nSILENT");
            for h in self.silent() {
                let _ = writeln!(
                    out,
                    "{} ({}) {} {} {}, last report {} ({} ago)",
                    h.hostname,
                    short(&h.id),
                    h.group,
                    h.version,
                    h.state,
                    h.received,
                    ago(self.at, h.received)
                );
            }
        }
        if !self.rolled_back.is_empty() {
            let _ = writeln!(out, "\nROLLED BACK");
            for r in &self.rolled_back {
                let _ = writeln!(
                    out,
                    "{} ({}) {} in slot {} at {}{}, running {}",
                    r.hostname,
                    short(&r.id),
                    r.version,
                    r.slot,
                    r.at,
                    if r.manual { " (by the operator)" } else { "" },
                    r.running
                );
            }
        }
        out.lines().map(str::trim_end).collect::<Vec<_>>().join("\n") + "\n"
    }
}

/// `s` with its control characters escaped (`\u{1b}`, `\n`), everything else as it is.
fn shown(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// A version's dotted parts, numbers compared as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+']).map(|p| (p.parse().unwrap_or(0), p.to_string())).collect()
}

/// An id cut to 8 characters for lines about a host whose hostname is shown too.
fn short(id: &str) -> String {
    if id.chars().count() > 8 { format!("{}…", id.chars().take(8).collect::<String>()) } else { id.to_string() }
}

/// `then` before `now`: `45s`, `5m`, `1h24m`, `3d2h`.
fn ago(now: Timestamp, then: Timestamp) -> String {
    let s = (now.0 - then.0).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostRecord;
    use crate::semaphore::Semaphore;
    use berth_release::fleet::{ClientParams, HostReport};

    fn report(hostname: &str, version: &str, state: &str) -> HostReport {
        HostReport {
            schema: 1,
            hostname: hostname.into(),
            version: version.into(),
            slot: "a".into(),
            state: state.into(),
            staged: None,
            available: None,
            last_check: None,
            last_error: None,
            rolled_back: vec![],
            fleetlock: None,
            interval_seconds: 3600,
            jitter_seconds: 600,
            sent: Timestamp(0),
        }
    }

    fn host(id: &str, group: &str, r: HostReport, received: i64, silent: bool) -> HostRecord {
        HostRecord {
            client_params: ClientParams { id: id.into(), group: group.into() },
            report: r,
            received: Timestamp(received),
            silent,
        }
    }

    fn snapshot() -> Snapshot {
        let t0 = Timestamp::parse("2026-12-07T16:20:01Z").unwrap().0;
        let mut workers = Semaphore::new(1);
        workers.lock("3f2a1b2c3d4e5f60", Timestamp(t0)).unwrap();
        let mut rolled = report("node-3", "1.1.0", "idle");
        rolled.slot = "a".into();
        rolled.rolled_back =
            vec![RolledBack { version: "1.2.0".into(), slot: "b".into(), at: Timestamp(t0 + 600), manual: false }];
        Snapshot {
            revision: 418,
            groups: vec![("workers".into(), workers), ("default".into(), Semaphore::new(2))],
            hosts: vec![
                host("3f2a1b2c3d4e5f60", "workers", report("node-2", "1.1.0", "rebooting"), t0, false),
                host("c3d4e5f6a7b8c9d0", "workers", rolled, t0 + 700, false),
                host("a1b2c3d4e5f6a7b8", "workers", report("node-9", "1.0.0", "idle"), t0 - 4800, true),
            ],
        }
    }

    #[test]
    fn the_view_counts_versions_holders_rollbacks_and_silence() {
        let at = Timestamp::parse("2026-12-07T16:25:01Z").unwrap();
        let st = FleetStatus::new(&snapshot(), at);
        assert_eq!(st.versions["1.1.0"]["rebooting"], 1);
        assert_eq!(st.versions["1.1.0"]["idle"], 1);
        assert_eq!(st.versions["1.0.0"][SILENT], 1, "a silent host's stale state is not counted");
        assert_eq!(st.groups.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(), ["default", "workers"]);
        let holder = &st.groups[1].holders[0];
        assert_eq!(holder.hostname.as_deref(), Some("node-2"));
        assert_eq!(holder.state.as_deref(), Some("rebooting"));
        assert_eq!(st.rolled_back.len(), 1);
        assert_eq!((st.rolled_back[0].version.as_str(), st.rolled_back[0].running.as_str()), ("1.2.0", "1.1.0"));
        assert_eq!(st.silent().map(|h| h.hostname.as_str()).collect::<Vec<_>>(), ["node-9"]);

        // --json: stable names, and it reads back.
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["revision"], 418);
        assert_eq!(json["at"], "2026-12-07T16:25:01Z");
        assert_eq!(json["groups"][1]["holders"][0]["since"], "2026-12-07T16:20:01Z");
        assert_eq!(json["versions"]["1.0.0"]["silent"], 1);
        assert_eq!(json["hosts"][0]["hostname"], "node-2");
        assert_eq!(json["rolled_back"][0]["running"], "1.1.0");
        assert_eq!(serde_json::from_value::<FleetStatus>(json).unwrap(), st);

        let text = st.human();
        let expected = "\
fleet at revision 418 (2026-12-07T16:25:01Z): 3 hosts, 1 silent

VERSION  STATE      HOSTS
1.1.0    idle       1
1.1.0    rebooting  1
1.0.0    silent     1

REBOOT SLOTS
default  0/2
workers  1/1    node-2 (3f2a1b2c3d4e5f60) since 2026-12-07T16:20:01Z (5m ago), 1.1.0 rebooting

SILENT
node-9 (a1b2c3d4…) workers 1.0.0 idle, last report 2026-12-07T15:00:01Z (1h25m ago)

ROLLED BACK
node-3 (c3d4e5f6…) 1.2.0 in slot b at 2026-12-07T16:30:01Z, running 1.1.0
";
        assert_eq!(text, expected, "{text}");
    }

    /// Whatever a store holds, a report cannot write an escape to the terminal nor a line of
    /// its own.
    #[test]
    fn control_characters_are_printed_escaped() {
        let at = Timestamp::parse("2026-12-07T16:25:01Z").unwrap();
        let mut snap = snapshot();
        snap.hosts[0].report.hostname = "node-2\u{1b}]0;owned\u{7}".into();
        snap.hosts[1].report.rolled_back[0].version = "1.2.0\nREBOOT SLOTS".into();
        snap.hosts[2].report.state = "idle\u{1b}[2J\r".into();
        snap.hosts[2].report.version = "1.0.0\u{9b}".into();
        let text = FleetStatus::new(&snap, at).human();
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert_eq!(text.matches("REBOOT SLOTS").count(), 2, "{text}");
        assert!(text.contains("node-2\\u{1b}]0;owned\\u{7} (3f2a1b2c3d4e5f60)"), "{text}");
        assert!(text.contains("1.2.0\\nREBOOT SLOTS in slot b"), "{text}");
        assert!(text.contains("1.0.0\\u{9b} idle\\u{1b}[2J\\r, last report"), "{text}");
        // --json keeps the text as stored (JSON escapes it).
        let json = serde_json::to_string(&FleetStatus::new(&snap, at)).unwrap();
        assert!(json.contains(r#""hostname":"node-2\u001b]0;owned\u0007""#), "{json}");
    }

    #[test]
    fn an_empty_fleet_says_so() {
        let st = FleetStatus::new(&Snapshot::default(), Timestamp(0));
        assert_eq!(st.human(), "fleet at revision 0 (1970-01-01T00:00:00Z): 0 hosts, 0 silent\n");
        assert_eq!(ago(Timestamp(100_000), Timestamp(0)), "1d3h");
    }
}
