//! A FleetLock server on 127.0.0.1 (the protocol of docs/design.md §4, as airlock serves it): one
//! reboot slot per group. `POST /v1/pre-reboot` gives the slot to the asking id when it is
//! free or already that id's, and answers 409 `{"kind": "failed_lock", …}` when another id
//! holds it; `POST /v1/steady-state` frees the asking id's slot. Requests without the
//! `fleet-lock-protocol: true` header are refused, as the protocol says. Every request is
//! recorded. Guests reach it through a `guestfwd` at [`GUEST_ADDR`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_testkit::{Request, Response, Server};

/// Where guests reach a [`FleetLockServer`]: http://10.0.2.101/ in QEMU's user network.
pub const GUEST_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 101);

/// A request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    /// `pre-reboot` or `steady-state` (or the path, for anything else).
    pub operation: String,
    pub id: String,
    pub group: String,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    /// Group → the id holding its slot.
    holders: HashMap<String, String>,
    log: Vec<LockRequest>,
}

/// A running server; stopped when dropped.
pub struct FleetLockServer {
    server: Server,
    shared: Arc<Mutex<Shared>>,
}

impl FleetLockServer {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<FleetLockServer> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let server = Server::start(move |r| answer(r, &s).into())?;
        Ok(FleetLockServer { server, shared })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The `guestfwd` that connects [`GUEST_ADDR`]:80 to this server (`relay`: the
    /// `berth-guestfwd-relay` binary).
    pub fn guest_forward(&self, relay: &Path) -> crate::GuestForward {
        crate::http::guest_forward_at(GUEST_ADDR, relay, self.port())
    }

    /// `id` takes `group`'s slot, as another host would.
    pub fn hold(&self, group: &str, id: &str) {
        self.lock().holders.insert(group.into(), id.into());
    }

    /// Frees `group`'s slot, as its holder's steady-state would.
    pub fn free(&self, group: &str) {
        self.lock().holders.remove(group);
    }

    /// Who holds `group`'s slot.
    pub fn holder(&self, group: &str) -> Option<String> {
        self.lock().holders.get(group).cloned()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<LockRequest> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn answer(r: &Request, shared: &Mutex<Shared>) -> Response {
    let protocol = r.header("fleet-lock-protocol").is_some_and(|v| v == "true");
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let params = &body["client_params"];
    let (id, group) = (params["id"].as_str().unwrap_or(""), params["group"].as_str().unwrap_or(""));
    let (method, path) = (r.method.as_str(), r.target.as_str());
    let operation = path.strip_prefix("/v1/").unwrap_or(path).to_string();

    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    let (status, reply) = if method != "POST" || !protocol || id.is_empty() || group.is_empty() {
        (400, error("bad_request", "POST with fleet-lock-protocol: true and client_params id and group"))
    } else {
        match operation.as_str() {
            "pre-reboot" => match s.holders.get(group) {
                Some(h) if h != id => (409, error("failed_lock", &format!("group {group}'s one slot is held by {h}"))),
                _ => {
                    s.holders.insert(group.into(), id.into());
                    (200, String::new())
                }
            },
            "steady-state" => {
                if s.holders.get(group).is_some_and(|h| h == id) {
                    s.holders.remove(group);
                }
                (200, String::new())
            }
            _ => (404, error("not_found", path)),
        }
    };
    s.log.push(LockRequest { operation, id: id.into(), group: group.into(), status });
    drop(s);
    Response::json(status, reply)
}

fn error(kind: &str, value: &str) -> String {
    serde_json::json!({"kind": kind, "value": value}).to_string()
}
