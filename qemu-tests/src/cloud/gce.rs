//! A fake of the Compute Engine metadata server, after Google's "About VM metadata" and "Access
//! VM metadata" pages:
//!
//! - Every request needs `Metadata-Flavor: Google`, else 403; a request with `X-Forwarded-For`
//!   (one relayed by a proxy) is refused with 403 too. Every answer carries
//!   `Metadata-Flavor: Google` (how clients tell the real server from something else).
//! - `GET /computeMetadata/v1/…`: `instance/id` (numeric), `instance/hostname` (the FQDN,
//!   `name.zone.c.project.internal`), `instance/name`, `instance/zone`,
//!   `instance/attributes/KEY` (`user-data`, `ssh-keys`, the deprecated `sshKeys`,
//!   `block-project-ssh-keys`, …), `project/project-id`, `project/numeric-project-id`,
//!   `project/attributes/KEY`. A missing key is 404. A directory ends with `/` and lists its
//!   entries one per line (`?recursive=true` gives it as JSON); without the `/` it is a 301 to
//!   it. `?alt=json` gives a leaf as a JSON string. Methods other than GET 405.
//!
//! SSH keys are `USERNAME:KEY` lines in `instance/attributes/ssh-keys`, made from
//! [`Instance::ssh_keys`]; project keys and the legacy attributes are set with
//! [`MetadataServer::set_project_attribute`] and [`MetadataServer::set_instance_attribute`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_testkit::{Request, Response};

use super::{Endpoint, Fault, Instance, Logged, lock, query};

/// The base of every metadata path.
pub const BASE: &str = "/computeMetadata/v1/";
pub const PROJECT_ID: &str = "berth-test-project";
pub const NUMERIC_PROJECT_ID: &str = "123456789012";
pub const ZONE: &str = "europe-west1-b";

struct State {
    instance: Instance,
    /// Set by the test, over what the instance gives (`None`: removed).
    instance_attributes: BTreeMap<String, Option<String>>,
    project_attributes: BTreeMap<String, String>,
}

impl State {
    fn instance_attributes(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        if !self.instance.ssh_keys.is_empty() {
            let lines: Vec<String> = self.instance.ssh_keys.iter().map(|(u, k)| format!("{u}:{k}")).collect();
            out.insert("ssh-keys".to_string(), lines.join("\n").into_bytes());
        }
        if let Some(data) = &self.instance.user_data {
            out.insert("user-data".to_string(), data.clone());
        }
        for (k, v) in &self.instance_attributes {
            match v {
                Some(v) => out.insert(k.clone(), v.clone().into_bytes()),
                None => out.remove(k),
            };
        }
        out
    }
}

/// The GCE metadata server on 127.0.0.1.
pub struct MetadataServer {
    endpoint: Endpoint,
    state: Arc<Mutex<State>>,
}

impl MetadataServer {
    /// Serves `instance` on a free port of 127.0.0.1.
    pub fn start(instance: Instance) -> std::io::Result<MetadataServer> {
        let state = Arc::new(Mutex::new(State {
            instance,
            instance_attributes: BTreeMap::new(),
            project_attributes: BTreeMap::new(),
        }));
        let endpoint = {
            let state = state.clone();
            Endpoint::start(move |r| answer(r, &state))?
        };
        Ok(MetadataServer { endpoint, state })
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port()
    }

    /// What the server says from now on (a new instance from the same disk, or the operator
    /// editing its metadata).
    pub fn set_instance(&self, instance: Instance) {
        lock(&self.state).instance = instance;
    }

    /// Sets (`Some`) or removes (`None`) the instance attribute `key`, over what the instance
    /// gives (e.g. `sshKeys`, `block-project-ssh-keys`).
    pub fn set_instance_attribute(&self, key: &str, value: Option<&str>) {
        lock(&self.state).instance_attributes.insert(key.to_string(), value.map(str::to_string));
    }

    /// Sets (`Some`) or removes (`None`) the project attribute `key` (e.g. `ssh-keys`).
    pub fn set_project_attribute(&self, key: &str, value: Option<&str>) {
        let mut s = lock(&self.state);
        match value {
            Some(v) => s.project_attributes.insert(key.to_string(), v.to_string()),
            None => s.project_attributes.remove(key),
        };
    }

    /// Sets `fault` for requests whose path starts with `prefix` (e.g.
    /// `/computeMetadata/v1/instance/attributes/user-data`).
    pub fn set_fault(&self, prefix: &str, fault: Fault) {
        self.endpoint.set_fault(prefix, fault);
    }

    pub fn clear_faults(&self) {
        self.endpoint.clear_faults();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.endpoint.requests()
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
    Response::status(status)
        .header("Metadata-Flavor", "Google")
        .header("Content-Type", content_type)
        .header("Server", "Metadata Server for VM")
        .body(body)
}

fn text(body: impl Into<Vec<u8>>) -> Response {
    reply(200, "application/text", body)
}

fn not_found(path: &str) -> Response {
    reply(404, "text/html; charset=UTF-8", format!("Error 404 (Not Found): {path} was not found on this server.\n"))
}

fn answer(r: &Request, state: &Mutex<State>) -> Response {
    let path = r.path();
    if r.header("Metadata-Flavor") != Some("Google") || r.header("X-Forwarded-For").is_some() {
        let why = if r.header("X-Forwarded-For").is_some() {
            "Request contains an X-Forwarded-For header."
        } else {
            "Missing Metadata-Flavor:Google header."
        };
        let body = format!("Your client does not have permission to get URL {path} from this server. {why}\n");
        return reply(403, "text/html; charset=UTF-8", body);
    }
    if r.method != "GET" {
        return reply(405, "text/html; charset=UTF-8", "Method Not Allowed\n");
    }
    let listing = |items: &[&str]| text(items.join("\n") + "\n");
    match path {
        "/" => return listing(&["computeMetadata/"]),
        "/computeMetadata/" => return listing(&["v1/"]),
        "/computeMetadata" | "/computeMetadata/v1" => {
            return reply(301, "text/html; charset=UTF-8", "").header("Location", format!("{path}/"));
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix(BASE) else { return not_found(path) };
    let s = lock(state);
    let json = query(&r.target, "alt") == Some("json");
    let leaf = |value: &[u8]| {
        if json {
            reply(200, "application/json", serde_json::Value::String(String::from_utf8_lossy(value).into()).to_string())
        } else {
            text(value.to_vec())
        }
    };
    let attributes = |attrs: BTreeMap<String, Vec<u8>>, key: &str| {
        if key.is_empty() {
            if query(&r.target, "recursive") == Some("true") {
                let map: serde_json::Map<String, serde_json::Value> = (attrs.iter())
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(String::from_utf8_lossy(v).into())))
                    .collect();
                return reply(200, "application/json", serde_json::Value::Object(map).to_string());
            }
            let keys: Vec<&str> = attrs.keys().map(String::as_str).collect();
            return listing(&keys);
        }
        match attrs.get(key) {
            Some(v) => leaf(v),
            None => not_found(path),
        }
    };
    let name = s.instance.hostname.split('.').next().unwrap_or("").to_string();
    let directories = ["", "instance", "instance/attributes", "project", "project/attributes"];
    if directories.contains(&rest) && !rest.is_empty() {
        return reply(301, "text/html; charset=UTF-8", "").header("Location", format!("{path}/"));
    }
    match rest {
        "" => listing(&["instance/", "project/"]),
        "instance/" => listing(&["attributes/", "hostname", "id", "name", "zone"]),
        "instance/id" => leaf(s.instance.id.as_bytes()),
        "instance/hostname" => leaf(s.instance.hostname.as_bytes()),
        "instance/name" => leaf(name.as_bytes()),
        "instance/zone" => leaf(format!("projects/{NUMERIC_PROJECT_ID}/zones/{ZONE}").as_bytes()),
        "project/" => listing(&["attributes/", "numeric-project-id", "project-id"]),
        "project/project-id" => leaf(PROJECT_ID.as_bytes()),
        "project/numeric-project-id" => leaf(NUMERIC_PROJECT_ID.as_bytes()),
        other => {
            if let Some(key) = other.strip_prefix("instance/attributes/") {
                attributes(s.instance_attributes(), key)
            } else if let Some(key) = other.strip_prefix("project/attributes/") {
                let project = (s.project_attributes.iter()).map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
                attributes(project, key)
            } else {
                not_found(path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::ask;
    use super::*;

    fn instance() -> Instance {
        Instance {
            id: "4520031799277581759".into(),
            hostname: "berth-gce-1.europe-west1-b.c.berth-test-project.internal".into(),
            ssh_keys: vec![("core".into(), "ssh-ed25519 AAAAC3Nza core@test".into())],
            user_data: Some(b"[[files]]\n".to_vec()),
        }
    }

    #[test]
    fn only_with_the_flavor_header_and_always_answering_with_it() {
        let m = MetadataServer::start(instance()).unwrap();
        let p = m.port();
        let flavor = ("Metadata-Flavor", "Google");
        let no = ask(p, "GET", "/computeMetadata/v1/instance/id", &[], b"");
        assert_eq!((no.status, no.header("metadata-flavor")), (403, Some("Google")));
        assert!(no.text().contains("Missing Metadata-Flavor:Google header"), "{}", no.text());
        assert_eq!(ask(p, "GET", "/computeMetadata/v1/instance/id", &[("Metadata-Flavor", "google")], b"").status, 403);
        let proxied = ask(p, "GET", "/computeMetadata/v1/instance/id", &[flavor, ("X-Forwarded-For", "1.2.3.4")], b"");
        assert_eq!(proxied.status, 403);
        assert_eq!(ask(p, "POST", "/computeMetadata/v1/instance/id", &[flavor], b"").status, 405);

        let get = |path: &str| ask(p, "GET", path, &[flavor], b"");
        let id = get("/computeMetadata/v1/instance/id");
        assert_eq!(
            (id.status, id.text().as_str(), id.header("metadata-flavor")),
            (200, "4520031799277581759", Some("Google"))
        );
        assert_eq!(get("/computeMetadata/v1/instance/hostname").text(), instance().hostname);
        assert_eq!(get("/computeMetadata/v1/instance/name").text(), "berth-gce-1");
        assert_eq!(
            get("/computeMetadata/v1/instance/attributes/ssh-keys").text(),
            "core:ssh-ed25519 AAAAC3Nza core@test"
        );
        assert_eq!(get("/computeMetadata/v1/instance/attributes/user-data").body, b"[[files]]\n");
        assert_eq!(get("/computeMetadata/v1/instance/attributes/sshKeys").status, 404);
        assert_eq!(get("/computeMetadata/v1/project/attributes/ssh-keys").status, 404);
        assert_eq!(get("/computeMetadata/v1/instance/attributes/").text(), "ssh-keys\nuser-data\n");
        let moved = get("/computeMetadata/v1/instance/attributes");
        assert_eq!((moved.status, moved.header("location")), (301, Some("/computeMetadata/v1/instance/attributes/")));
        assert_eq!(get("/computeMetadata/v1/instance/id?alt=json").text(), "\"4520031799277581759\"");
        assert_eq!(get("/computeMetadata/v1beta1/instance/id").status, 404);

        m.set_project_attribute("ssh-keys", Some("alice:ssh-rsa AAAAB3 alice"));
        m.set_instance_attribute("block-project-ssh-keys", Some("true"));
        m.set_instance_attribute("user-data", None);
        assert_eq!(get("/computeMetadata/v1/project/attributes/ssh-keys").text(), "alice:ssh-rsa AAAAB3 alice");
        assert_eq!(get("/computeMetadata/v1/instance/attributes/block-project-ssh-keys").text(), "true");
        assert_eq!(get("/computeMetadata/v1/instance/attributes/user-data").status, 404);
        let all = get("/computeMetadata/v1/instance/attributes/?recursive=true").text();
        let all: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!(all["block-project-ssh-keys"], "true");
        assert!(all.get("user-data").is_none());
        assert_eq!(m.requests().len(), 19);
    }
}
