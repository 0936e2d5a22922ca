//! The FleetLock client (docs/design.md §4): before rebooting into a staged update a host asks the
//! fleet's lock server for a reboot slot (`POST /v1/pre-reboot`), and gives it back once the
//! new slot is marked good, or the old one is running again (`POST /v1/steady-state`). The
//! server (for example airlock, with its semaphore in etcd) decides how many hosts of a group
//! may reboot at once. Requests carry the `fleet-lock-protocol: true` header and
//! `{"client_params": {"id": …, "group": …}}`; 200 grants, any other answer refuses, with a
//! `{"kind": …, "value": …}` body saying why. The bodies are the contract's types
//! (berth_release::fleet); with `token-file` set, each request carries
//! `Authorization: Bearer <its first line>`.

use berth_release::config::FleetLock;
use berth_release::fleet::{self, ClientParams, LockRequest};

use crate::http::Http;

/// Why the server did not grant an operation: it could not be asked, or it answered with
/// another status than 200 (with the protocol's `{"kind": …, "value": …}` body when it sent
/// one). Callers and tests branch on [`FleetLockError::error_kind`], as zincati's do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetLockError {
    /// The request did not reach the server or its answer did not come back.
    #[error("{0}")]
    Transport(String),
    /// The server answered, and not with 200.
    #[error("POST {url}: {status}: {}", describe(kind, value, body))]
    Refused {
        /// The operation's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The protocol's error kind (`failed_lock`), when the body carried one.
        kind: Option<String>,
        /// The protocol's error value (the server's reason).
        value: Option<String>,
        /// The start of a body that was not the protocol's error document.
        body: String,
    },
}

fn describe(kind: &Option<String>, value: &Option<String>, body: &str) -> String {
    match kind {
        Some(k) => format!("{k}: {}", value.as_deref().unwrap_or("")),
        None => body.to_string(),
    }
}

impl FleetLockError {
    /// The protocol's error kind (`failed_lock` for a lock held by others), `http_<status>`
    /// for a refusal without one, or `transport` when the server was not reached.
    pub fn error_kind(&self) -> String {
        match self {
            FleetLockError::Transport(_) => "transport".into(),
            FleetLockError::Refused { kind: Some(k), .. } => k.clone(),
            FleetLockError::Refused { status, .. } => format!("http_{status}"),
        }
    }

    /// The HTTP status of a refusal.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            FleetLockError::Refused { status, .. } => Some(*status),
            FleetLockError::Transport(_) => None,
        }
    }
}

/// A host's client of one FleetLock server.
pub struct Client<'a> {
    http: &'a Http,
    server: &'a FleetLock,
    id: String,
}

/// The headers of every request to `server`: the protocol's, and `Authorization: Bearer …` from
/// the first line of its `token-file` when one is set (read each time: a rotated token needs
/// no restart). An unreadable or empty token file is an error naming it.
pub fn headers(server: &FleetLock) -> Result<Vec<(&'static str, String)>, String> {
    let mut h = vec![(fleet::PROTOCOL_HEADER, "true".to_string())];
    if let Some(path) = &server.token_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("fleetlock.token-file {}: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!(
                "fleetlock.token-file {}: the first line is empty (it holds the token)",
                path.display()
            ));
        }
        h.push(("authorization", format!("Bearer {token}")));
    }
    Ok(h)
}

impl<'a> Client<'a> {
    /// For the host with `machine_id`.
    pub fn new(http: &'a Http, server: &'a FleetLock, machine_id: &str) -> Client<'a> {
        Client { http, server, id: fleet::node_id(machine_id) }
    }

    /// Asks for the reboot lock; `Err` says why it was not given.
    pub fn pre_reboot(&self) -> Result<(), FleetLockError> {
        self.call(fleet::PRE_REBOOT_PATH)
    }

    /// Gives back any lock this host holds.
    pub fn steady_state(&self) -> Result<(), FleetLockError> {
        self.call(fleet::STEADY_STATE_PATH)
    }

    fn call(&self, path: &str) -> Result<(), FleetLockError> {
        let url = format!("{}{path}", self.server.url);
        let request =
            LockRequest { client_params: ClientParams { id: self.id.clone(), group: self.server.group.clone() } };
        let body =
            serde_json::to_string(&request).map_err(|e| FleetLockError::Transport(format!("POST {url}: {e}")))?;
        let headers = headers(self.server).map_err(|e| FleetLockError::Transport(format!("POST {url}: {e}")))?;
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, answer) = self.http.post_json(&url, &headers, &body).map_err(FleetLockError::Transport)?;
        if status == 200 {
            return Ok(());
        }
        let doc = serde_json::from_str::<serde_json::Value>(&answer).ok();
        let field = |name: &str| doc.as_ref().and_then(|v| v.get(name)?.as_str().map(String::from));
        let kind = field("kind");
        let value = kind.as_ref().map(|_| field("value").unwrap_or_default());
        let body = if kind.is_some() { String::new() } else { answer.trim().chars().take(200).collect() };
        Err(FleetLockError::Refused { url, status, kind, value, body })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use berth_testkit::{Response, Server};

    use super::*;

    use berth_release::fleet::node_id;

    /// A request the test server saw: path, whether the protocol header was there, body.
    type Seen = (String, bool, serde_json::Value);

    fn fleet(url: &str, group: &str) -> FleetLock {
        FleetLock { url: url.into(), group: group.into(), token_file: None, report: true }
    }

    /// A FleetLock server on 127.0.0.1 with one reboot slot: a lock held by another id is
    /// refused; steady-state frees the holder's.
    fn lock_server(holder: Option<&str>) -> Server {
        let holder = Mutex::new(holder.map(String::from));
        Server::start(move |r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let id = body["client_params"]["id"].as_str().unwrap_or("").to_string();
            let mut holder = holder.lock().unwrap();
            match r.path() {
                "/v1/pre-reboot" if holder.as_ref().is_none_or(|h| *h == id) => {
                    *holder = Some(id);
                    Response::status(200)
                }
                "/v1/pre-reboot" => Response::json(409, r#"{"kind":"failed_lock","value":"all 1 slots are taken"}"#),
                "/v1/steady-state" => {
                    if holder.as_ref() == Some(&id) {
                        *holder = None;
                    }
                    Response::status(200)
                }
                _ => Response::status(404).body("no such operation"),
            }
            .into()
        })
        .unwrap()
    }

    /// The requests `server` saw: path, the protocol header, body.
    fn seen(server: &Server) -> Vec<Seen> {
        server
            .requests()
            .iter()
            .map(|r| {
                let body = serde_json::from_slice(&r.body).unwrap_or_default();
                (r.path().to_string(), r.header("fleet-lock-protocol") == Some("true"), body)
            })
            .collect()
    }

    #[test]
    fn the_lock_is_asked_for_refused_while_taken_and_given_back() {
        let http = Http::new(berth_http::Tls::default());
        let lock = lock_server(Some("someone else"));
        let url = lock.url();
        let server = fleet(&url, "workers");
        let c = Client::new(&http, &server, "0123456789abcdef0123456789abcdef\n");
        let e = c.pre_reboot().unwrap_err();
        assert_eq!((e.error_kind().as_str(), e.status_code()), ("failed_lock", Some(409)), "{e:?}");
        assert_eq!(e.to_string(), format!("POST {url}/v1/pre-reboot: 409: failed_lock: all 1 slots are taken"));
        c.steady_state().unwrap();
        let seen = seen(&lock);
        assert_eq!(seen.len(), 2);
        for ((path, protocol, body), want) in seen.iter().zip(["/v1/pre-reboot", "/v1/steady-state"]) {
            assert_eq!(path, want);
            assert!(protocol, "the fleet-lock-protocol header");
            assert_eq!(body["client_params"]["group"], "workers");
            assert_eq!(body["client_params"]["id"], node_id("0123456789abcdef0123456789abcdef"));
        }

        // A free lock is given; the same host asking again keeps it; another host waits until
        // steady-state gives it back.
        let lock = lock_server(None);
        let server = fleet(&lock.url(), "default");
        let (a, b) = (Client::new(&http, &server, "aaaa"), Client::new(&http, &server, "bbbb"));
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        a.pre_reboot().unwrap();
        a.pre_reboot().unwrap();
        assert_eq!(b.pre_reboot().map_err(|e| e.error_kind()), Err("failed_lock".into()));
        a.steady_state().unwrap();
        b.pre_reboot().unwrap();
    }

    #[test]
    fn an_unreachable_server_is_an_error_that_names_it() {
        let http = Http::new(berth_http::Tls::default());
        let port = berth_testkit::dead_port();
        let server = fleet(&format!("http://127.0.0.1:{port}"), "default");
        let e = Client::new(&http, &server, "m").pre_reboot().unwrap_err();
        assert_eq!((e.error_kind().as_str(), e.status_code()), ("transport", None), "{e:?}");
        assert!(e.to_string().starts_with(&format!("POST http://127.0.0.1:{port}/v1/pre-reboot: ")), "{e}");
    }

    /// With `token-file`, both operations carry `Authorization: Bearer <first line>` (the line
    /// read at each request); without it, no Authorization header at all. A token file that
    /// cannot be read is an error naming it, and nothing is sent.
    #[test]
    fn the_token_file_s_first_line_is_the_bearer_token() {
        let http = Http::new(berth_http::Tls::default());
        let lock = lock_server(None);
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("fleet.token");
        std::fs::write(&token, "s3cret-1\nsecond line is not sent\n").unwrap();
        let mut with = fleet(&lock.url(), "workers");
        with.token_file = Some(token.clone());
        let c = Client::new(&http, &with, "m");
        c.pre_reboot().unwrap();
        std::fs::write(&token, "  s3cret-2  \n").unwrap();
        c.steady_state().unwrap();
        let seen = lock.take_requests();
        let auth: Vec<_> = seen.iter().map(|r| r.header("authorization").map(String::from)).collect();
        assert_eq!(auth, [Some("Bearer s3cret-1".to_string()), Some("Bearer s3cret-2".to_string())]);
        assert!(seen.iter().all(|r| r.header("fleet-lock-protocol") == Some("true")));

        let without = fleet(&lock.url(), "workers");
        Client::new(&http, &without, "m").pre_reboot().unwrap();
        let seen = lock.take_requests();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].headers.iter().all(|(n, _)| !n.eq_ignore_ascii_case("authorization")), "{:?}", seen[0]);

        std::fs::write(&token, "\n").unwrap();
        let e = Client::new(&http, &with, "m").pre_reboot().unwrap_err();
        assert_eq!(e.error_kind(), "transport");
        assert!(
            e.to_string().contains(&format!("fleetlock.token-file {}: the first line is empty", token.display())),
            "{e}"
        );
        std::fs::remove_file(&token).unwrap();
        let e = Client::new(&http, &with, "m").pre_reboot().unwrap_err();
        assert!(e.to_string().contains(&format!("fleetlock.token-file {}: ", token.display())), "{e}");
        assert!(lock.requests().is_empty(), "sent without its token");
    }
}
