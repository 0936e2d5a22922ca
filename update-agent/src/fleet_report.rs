//! Reports to the fleet server (docs/design.md §9, the contract in berth_release::fleet): what
//! this host runs and what its agent is doing, built from the agent's own status, sent as
//! `POST <[fleetlock] url>/berth/v1/report` when `[fleetlock]` is configured with `report`
//! on (the default). The daemon reports at its start and at the end of every cycle (so a host
//! that stops is shown as silent); the agent reports each phase an update stays in: downloading,
//! staged, and rebooting just before it reboots.
//!
//! Best effort: one attempt with a short deadline, a failure is one log line, and nothing the
//! agent does waits for or depends on the answer.

use std::time::Duration;

use berth_release::Timestamp;
use berth_release::config::{FleetLock, UpdateConfig};
use berth_release::fleet::{self, ClientParams, ErrorDoc, HostReport, ReportRequest};
use berth_update::report::Status;

use crate::agent::Agent;

/// The whole of one report's request, answer included: a fleet server that does not answer
/// within this costs the agent no more.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of an error a report carries, so that a long error chain cannot push the
/// report over what a server takes (berth_release::fleet::MAX_REPORT).
pub const MAX_ERROR_BYTES: usize = 2000;

/// `s` with its control characters replaced ([`fleet::printable`]: the server would replace them,
/// and JSON writes each as 6 bytes), cut to at most [`MAX_ERROR_BYTES`] bytes at a character
/// boundary (marked with `…`).
fn cut(s: &str) -> String {
    let s = fleet::printable(s);
    if s.len() <= MAX_ERROR_BYTES {
        return s;
    }
    let mut end = MAX_ERROR_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `request` made to fit in [`fleet::MAX_REPORT`] bytes when its errors alone do not: the last
/// error goes first, then the FleetLock refusal's message, then the oldest rollbacks, so that the
/// host is still seen rather than refused whole (and shown silent).
pub fn fit(request: &mut ReportRequest) {
    let size = |r: &ReportRequest| serde_json::to_vec(r).map_or(usize::MAX, |v| v.len());
    if size(request) <= fleet::MAX_REPORT {
        return;
    }
    request.report.last_error = None;
    if size(request) <= fleet::MAX_REPORT {
        return;
    }
    if let Some(f) = &mut request.report.fleetlock {
        f.value.clear();
    }
    while size(request) > fleet::MAX_REPORT && !request.report.rolled_back.is_empty() {
        request.report.rolled_back.remove(0);
    }
}

/// The report of a host named `hostname` whose agent shows `status`, sent at `sent`.
pub fn build(status: &Status, config: &UpdateConfig, hostname: &str, sent: Timestamp) -> HostReport {
    let running = &status.running;
    // The newest ones: the server keeps at most this many.
    let skip = status.rolled_back.len().saturating_sub(fleet::MAX_ROLLED_BACK);
    HostReport {
        schema: fleet::REPORT_SCHEMA,
        hostname: fleet::as_hostname(hostname),
        version: fleet::as_field(running.version.as_deref().unwrap_or_default()),
        slot: fleet::as_field(running.slot.name()),
        state: fleet::as_field(status.state.name()),
        staged: status.staged.as_ref().map(|s| fleet::as_field(&s.version)),
        available: status.available.as_deref().map(fleet::as_field),
        last_check: status.last_check,
        last_error: status.last_error.as_deref().map(cut),
        rolled_back: status.rolled_back[skip..]
            .iter()
            .map(|r| fleet::RolledBack {
                version: fleet::as_field(&r.version),
                slot: fleet::as_field(r.slot.name()),
                at: r.at,
                manual: r.manual,
            })
            .collect(),
        fleetlock: status
            .fleetlock
            .as_ref()
            .map(|f| ErrorDoc { kind: fleet::as_field(&f.kind), value: cut(&f.message) }),
        interval_seconds: config.interval.as_secs(),
        jitter_seconds: config.jitter.as_secs(),
        sent,
    }
}

/// This host's name (the kernel's) as a server takes it, `none` when it has none.
pub fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    // The kernel's word for "no name set".
    fleet::as_hostname(name.trim().trim_start_matches("(none)"))
}

/// The server reports go to, when the configuration asks for reports.
fn server(config: &UpdateConfig) -> Option<&FleetLock> {
    config.fleet.as_ref().filter(|f| f.report)
}

/// The request `agent` sends now, when it reports at all.
pub fn request(agent: &Agent) -> Option<ReportRequest> {
    let server = server(&agent.config)?;
    let status = crate::status::status(agent, None);
    let mut request = ReportRequest {
        client_params: ClientParams { id: fleet::node_id(&agent.machine_id), group: server.group.clone() },
        report: build(&status, &agent.config, &hostname(), Timestamp::now()),
    };
    fit(&mut request);
    Some(request)
}

/// Sends `agent`'s report, if it reports; a failure is printed (one line) and otherwise ignored.
pub fn send(agent: &Agent) {
    let (Some(server), Some(request)) = (server(&agent.config), request(agent)) else { return };
    if let Err(why) = post(agent.http().client(), server, &request) {
        println!("fleet report: {why} (not retried until the next report; updates go on)");
    }
}

/// One `POST` of `request` to `server`'s report path with `client` (the agent's: it trusts what
/// `tls-ca` says).
fn post(client: &berth_http::Client, server: &FleetLock, request: &ReportRequest) -> Result<(), String> {
    let url = format!("{}{}", server.url, fleet::REPORT_PATH);
    let body = serde_json::to_vec(request).map_err(|e| format!("POST {url}: {e}"))?;
    if body.len() > fleet::MAX_REPORT {
        return Err(format!(
            "POST {url}: the report is {} bytes, more than a server takes ({})",
            body.len(),
            fleet::MAX_REPORT
        ));
    }
    let headers = crate::fleetlock::headers(server).map_err(|e| format!("POST {url}: {e}"))?;
    let mut call = client
        .call("POST", &url)
        .header("content-type", "application/json")
        .body(body)
        .timeout(REPORT_TIMEOUT)
        .limit(64 << 10);
    for (name, value) in &headers {
        call = call.header(name, value);
    }
    let reply = call.send().map_err(|e| format!("POST {url}: {e}"))?;
    if reply.is_success() {
        return Ok(());
    }
    let why = match serde_json::from_slice::<ErrorDoc>(&reply.body) {
        Ok(doc) => format!("{}: {}", doc.kind, doc.value),
        Err(_) => reply.text().trim().chars().take(200).collect(),
    };
    Err(format!("POST {url}: {}: {why}", reply.status))
}

#[cfg(test)]
mod tests {
    use berth_slot::Slot;
    use berth_testkit::{Response, Server};
    use berth_update::report::{FleetLockRefusal, Phase, RolledBack, SlotStatus, Staged};

    use super::*;

    fn slot(slot: Slot, version: Option<&str>) -> SlotStatus {
        SlotStatus {
            slot,
            label: slot.label().into(),
            device: "/dev/vda3".into(),
            version: version.map(String::from),
            priority: Some(2),
            tries: Some(0),
            successful: Some(true),
        }
    }

    fn status() -> Status {
        Status {
            state: Phase::Staged,
            running: slot(Slot::B, Some("1.1.0")),
            other: slot(Slot::A, Some("1.2.0")),
            channel: Some("http://h/channels/stable.json".into()),
            strategy: "fleetlock".into(),
            last_check: Timestamp::parse("2026-12-07T16:30:00Z"),
            last_error: Some("fleetlock: held".into()),
            available: Some("1.2.0".into()),
            staged: Some(Staged { slot: Slot::A, version: "1.2.0".into(), at: Timestamp(0) }),
            rolled_back: (0..20)
                .map(|i| RolledBack { version: format!("1.0.{i}"), slot: Slot::A, at: Timestamp(i), manual: i == 19 })
                .collect(),
            busy: None,
            sequence: Some(7),
            download: None,
            paused: None,
            last_staging: None,
            gpt_error: None,
            fleetlock: Some(FleetLockRefusal {
                kind: "failed_lock".into(),
                status: Some(409),
                message: "POST x: 409: failed_lock: held".into(),
            }),
        }
    }

    /// Every field of the report comes from the status and the configuration; at most the 16
    /// newest rollbacks go.
    #[test]
    fn the_report_says_what_the_status_says() {
        let config = UpdateConfig {
            interval: Duration::from_secs(3600),
            jitter: Duration::from_secs(600),
            ..UpdateConfig::default()
        };
        let r = build(&status(), &config, "node-2", Timestamp::parse("2026-12-07T16:30:01Z").unwrap());
        let json = serde_json::to_value(&r).unwrap();
        let rolled: Vec<_> = (4..20)
            .map(|i| {
                let mut v = serde_json::json!({"version": format!("1.0.{i}"), "slot": "a",
                    "at": Timestamp(i).to_string()});
                if i == 19 {
                    v["manual"] = true.into();
                }
                v
            })
            .collect();
        assert_eq!(
            json,
            serde_json::json!({
                "schema": 1, "hostname": "node-2", "version": "1.1.0", "slot": "b", "state": "staged",
                "staged": "1.2.0", "available": "1.2.0", "last_check": "2026-12-07T16:30:00Z",
                "last_error": "fleetlock: held", "rolled_back": rolled,
                "fleetlock": {"kind": "failed_lock", "value": "POST x: 409: failed_lock: held"},
                "interval_seconds": 3600, "jitter_seconds": 600, "sent": "2026-12-07T16:30:01Z"
            })
        );
    }

    /// The longest errors and 16 rollbacks still make a report a server takes: errors are cut
    /// by bytes, whatever their characters (control characters, which JSON writes as 6 bytes,
    /// are replaced; 4-byte characters are not split).
    #[test]
    fn long_errors_are_cut_so_the_report_fits() {
        for (error, message) in [
            ("é".repeat(20_000), "x".repeat(20_000)),
            ("\u{1b}".repeat(20_000), "\u{1}".repeat(20_000)),
            ("🦀".repeat(20_000), "a🦀".repeat(20_000)),
        ] {
            let mut st = status();
            st.last_error = Some(error);
            st.fleetlock.as_mut().unwrap().message = message;
            for r in &mut st.rolled_back {
                r.version = "9".repeat(128);
            }
            let r = build(&st, &UpdateConfig::default(), &"h".repeat(253), Timestamp(0));
            fleet::check_report(&r).unwrap();
            for e in [r.last_error.clone().unwrap(), r.fleetlock.clone().unwrap().value] {
                assert!(e.len() <= MAX_ERROR_BYTES + '…'.len_utf8() && e.len() > MAX_ERROR_BYTES - 4, "{}", e.len());
                assert!(e.ends_with('…') && !e.chars().any(char::is_control), "{e:?}");
            }
            let mut request =
                ReportRequest { client_params: ClientParams { id: "x".repeat(128), group: "g".repeat(64) }, report: r };
            let before = request.clone();
            fit(&mut request);
            assert_eq!(request, before, "it fits as it is");
            let size = serde_json::to_vec(&request).unwrap().len();
            assert!(size <= fleet::MAX_REPORT, "{size} bytes");
        }
        assert!(build(&status(), &UpdateConfig::default(), "a\u{1b}b c_d", Timestamp(0)).hostname == "a-b-c-d");
    }

    /// A report still over the limit loses its last error, then the refusal's message, then its
    /// oldest rollbacks, rather than being refused whole.
    #[test]
    fn a_report_too_large_sheds_errors_then_old_rollbacks() {
        let mut st = status();
        st.last_error = Some("e".repeat(1000));
        let report = build(&st, &UpdateConfig::default(), "node-2", Timestamp(0));
        let request = ReportRequest { client_params: ClientParams { id: "x".into(), group: "g".into() }, report };
        let size = |r: &ReportRequest| serde_json::to_vec(r).unwrap().len();

        // Over by less than the last error: only it goes.
        let mut r = request.clone();
        r.report.fleetlock.as_mut().unwrap().value = "f".repeat(fleet::MAX_REPORT - size(&request) + 500);
        fit(&mut r);
        assert!(size(&r) <= fleet::MAX_REPORT && r.report.last_error.is_none());
        assert!(!r.report.fleetlock.as_ref().unwrap().value.is_empty() && r.report.rolled_back.len() == 16);

        // Over by more than both errors: the oldest rollbacks go, the newest stay.
        let mut r = request.clone();
        for rb in &mut r.report.rolled_back {
            rb.version = "9".repeat(1100);
        }
        fit(&mut r);
        assert!(size(&r) <= fleet::MAX_REPORT, "{}", size(&r));
        assert!(r.report.last_error.is_none() && r.report.fleetlock.as_ref().unwrap().value.is_empty());
        let kept: Vec<_> = r.report.rolled_back.iter().map(|rb| rb.at).collect();
        assert!(!kept.is_empty() && kept.len() < 16, "{kept:?}");
        assert_eq!(kept.last(), Some(&Timestamp(19)), "the newest kept");
    }

    fn client() -> berth_http::Client {
        berth_http::Client::builder("berth-update-test").build()
    }

    fn fleet(url: &str, token_file: Option<std::path::PathBuf>) -> FleetLock {
        FleetLock { url: url.into(), group: "workers".into(), token_file, report: true }
    }

    /// The server receives the contract's request, with the protocol header and the bearer
    /// token; without a token file there is no Authorization header.
    #[test]
    fn the_server_receives_the_contract_s_request_with_the_token() {
        let server = Server::start(|_| Response::status(200).into()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let request = ReportRequest {
            client_params: ClientParams { id: fleet::node_id("m"), group: "workers".into() },
            report: build(&status(), &UpdateConfig::default(), "node-2", Timestamp(1_796_000_000)),
        };
        post(&client(), &fleet(&server.url(), Some(token)), &request).unwrap();
        post(&client(), &fleet(&server.url(), None), &request).unwrap();
        let seen = server.requests();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            assert_eq!((r.method.as_str(), r.path()), ("POST", "/berth/v1/report"));
            assert_eq!(r.header("fleet-lock-protocol"), Some("true"));
            assert_eq!(r.header("content-type"), Some("application/json"));
            let got: ReportRequest = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(got, request);
        }
        assert_eq!(seen[0].header("authorization"), Some("Bearer t0ken"));
        assert_eq!(seen[1].header("authorization"), None);
    }

    /// A server that refuses (500, with or without the error document) or is not there is an
    /// error saying so, soon.
    #[test]
    fn a_failed_report_says_why() {
        let request = ReportRequest {
            client_params: ClientParams { id: "x".into(), group: "workers".into() },
            report: build(&status(), &UpdateConfig::default(), "n", Timestamp(0)),
        };
        let s = Server::start(|r| {
            if r.header("authorization").is_some() {
                Response::status(500).body("boom").into()
            } else {
                Response::json(401, r#"{"kind":"unauthorized","value":"a bearer token is required"}"#).into()
            }
        })
        .unwrap();
        let e = post(&client(), &fleet(&s.url(), None), &request).unwrap_err();
        assert_eq!(e, format!("POST {}/berth/v1/report: 401: unauthorized: a bearer token is required", s.url()));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t"), "t").unwrap();
        let e = post(&client(), &fleet(&s.url(), Some(dir.path().join("t"))), &request).unwrap_err();
        assert_eq!(e, format!("POST {}/berth/v1/report: 500: boom", s.url()));
        let started = std::time::Instant::now();
        let dead = format!("http://127.0.0.1:{}", berth_testkit::dead_port());
        let e = post(&client(), &fleet(&dead, None), &request).unwrap_err();
        assert!(e.starts_with(&format!("POST {dead}/berth/v1/report: ")), "{e}");
        assert!(started.elapsed() < REPORT_TIMEOUT, "not retried");
    }

    /// With `tls-ca`, the report goes to a fleet server of the private CA through the agent's
    /// client (a real TLS server: openssl s_server), and is refused by one with public roots.
    #[test]
    fn a_report_reaches_a_fleet_server_of_a_private_ca() {
        use crate::http::tests::{private_ca, s_server};
        let certs = tempfile::tempdir().unwrap();
        private_ca(certs.path());
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let server = s_server(certs.path(), certs.path(), Some(answer));
        let url = format!("https://127.0.0.1:{}", server.port);
        let request = ReportRequest {
            client_params: ClientParams { id: "x".into(), group: "workers".into() },
            report: build(&status(), &UpdateConfig::default(), "n", Timestamp(0)),
        };
        let config = UpdateConfig::from_texts(&[(
            "/etc/berth/update.toml".into(),
            format!("tls-ca = {:?}\n", certs.path().join("ca.pem").to_str().unwrap()),
        )])
        .unwrap();
        let http = crate::http::Http::new(crate::http::tls(&config).unwrap());
        post(http.client(), &fleet(&url, None), &request).unwrap();
        assert!(server.printed("POST /berth/v1/report HTTP/1.1"), "{}", server.output());
        // That s_server has given its one answer: another, the same certificate; the handshake fails before any answer is needed.
        let server = s_server(certs.path(), certs.path(), None);
        let url = format!("https://127.0.0.1:{}", server.port);
        let e = post(&client(), &fleet(&url, None), &request).unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
    }
}
