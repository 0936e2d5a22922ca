//! A fake of EC2's instance metadata service with IMDSv2 required (`HttpTokens=required`, what
//! AMIs registered with `ImdsSupport=v2.0` get), after AWS's "Use the Instance Metadata Service
//! to access instance metadata" and "Retrieve instance metadata" pages:
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1…21600` answers a
//!   token (and the TTL in a response header); without the header or with another value, 400; a
//!   request through a proxy (`X-Forwarded-For`), 403; the token API under a dated version, 403
//!   (it exists only under `latest`, as Afterburn notes).
//! - Every `GET` needs `X-aws-ec2-metadata-token` with a token this server issued whose TTL has
//!   not run out; otherwise 401 (no IMDSv1 fallback exists on such an instance).
//! - `GET /{version}/meta-data/…` (`latest` or a dated version): `instance-id`, `hostname`,
//!   `local-hostname`, `instance-type`, `public-keys/` (lines `N=name`), `public-keys/N/`
//!   (`openssh-key`), `public-keys/N/openssh-key`; `GET /{version}/user-data` (404 when the
//!   instance has none); `dynamic/instance-identity/document`. Anything else 404; methods other
//!   than GET and PUT 405.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::{Request, Response};
use sha2::{Digest, Sha256};

use super::{Endpoint, Fault, Instance, Logged, lock};

/// The largest token TTL IMDS accepts (6 hours).
pub const MAX_TTL_SECS: u64 = 21_600;

/// The metadata versions this fake serves besides `latest` (a few of the dated ones the real
/// service lists at `/`, including those Afterburn, Ignition and cloud-init ask for).
pub const VERSIONS: &[&str] = &["2009-04-04", "2016-09-02", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03"];

struct State {
    instance: Instance,
    /// Token → when it stops being valid.
    tokens: HashMap<String, Instant>,
}

/// EC2's IMDS, IMDSv2 only, on 127.0.0.1.
pub struct Imds {
    endpoint: Endpoint,
    state: Arc<Mutex<State>>,
}

impl Imds {
    /// Serves `instance` on a free port of 127.0.0.1.
    pub fn start(instance: Instance) -> std::io::Result<Imds> {
        let state = Arc::new(Mutex::new(State { instance, tokens: HashMap::new() }));
        let counter = AtomicU64::new(0);
        let endpoint = {
            let state = state.clone();
            Endpoint::start(move |r| answer(r, &state, &counter))?
        };
        Ok(Imds { endpoint, state })
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port()
    }

    /// What the service says from now on (a new instance booted from the same disk). Tokens
    /// already issued stay valid, as they would not on a new instance: a client keeps none
    /// across boots.
    pub fn set_instance(&self, instance: Instance) {
        lock(&self.state).instance = instance;
    }

    /// Sets `fault` for requests whose path starts with `prefix` (e.g. `/latest/user-data`).
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

    /// Ends every token's life now (as a TTL running out would).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        lock(&self.state).tokens.values_mut().for_each(|t| *t = now);
    }
}

fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response::status(status).header("Content-Type", "text/plain").header("Server", "EC2ws").body(body)
}

fn not_found() -> Response {
    text(404, "404 - Not Found\n")
}

fn answer(r: &Request, state: &Mutex<State>, counter: &AtomicU64) -> Response {
    let path = r.path();
    match r.method.as_str() {
        "PUT" => token(r, state, counter),
        "GET" => {
            let valid = r
                .header("x-aws-ec2-metadata-token")
                .is_some_and(|t| lock(state).tokens.get(t).is_some_and(|until| Instant::now() < *until));
            if !valid {
                return text(401, "401 - Unauthorized\n");
            }
            if path == "/" {
                let mut versions: Vec<&str> = VERSIONS.to_vec();
                versions.push("latest");
                return text(200, versions.join("\n"));
            }
            let Some((version, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
                return not_found();
            };
            if version != "latest" && !VERSIONS.contains(&version) {
                return not_found();
            }
            if rest == "api/token" {
                return text(405, "405 - Method Not Allowed\n");
            }
            metadata(rest, &lock(state).instance)
        }
        _ => text(405, "405 - Method Not Allowed\n"),
    }
}

/// `PUT /latest/api/token`.
fn token(r: &Request, state: &Mutex<State>, counter: &AtomicU64) -> Response {
    let path = r.path();
    if path != "/latest/api/token" {
        return if path.ends_with("/api/token") { text(403, "403 - Forbidden\n") } else { not_found() };
    }
    if r.header("x-forwarded-for").is_some() {
        return text(403, "403 - Forbidden\n");
    }
    let ttl = r.header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=MAX_TTL_SECS).contains(t)) else {
        return text(400, "400 - Bad Request\n");
    };
    let n = counter.fetch_add(1, Ordering::SeqCst);
    let seed = format!("{n} {:?} {:?}", Instant::now(), std::thread::current().id());
    // Base64-looking like the real ones (56 characters); what matters is that it is unguessable
    // enough that only a client that asked has it.
    let digest = Sha256::digest(seed.as_bytes());
    let token: String = format!("AQAEA{}", hex(&digest)).chars().take(56).collect();
    lock(state).tokens.insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    text(200, token.clone()).header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `GET` under a version, `rest` being the path after `/{version}/`.
fn metadata(rest: &str, i: &Instance) -> Response {
    let keys = &i.ssh_keys;
    let listing = |items: &[&str]| text(200, items.join("\n"));
    match rest.trim_end_matches('/') {
        "" => listing(&["dynamic", "meta-data", "user-data"]),
        "meta-data" => {
            let mut items = vec!["ami-id", "hostname", "instance-id", "instance-type", "local-hostname"];
            if !keys.is_empty() {
                items.push("public-keys/");
            }
            listing(&items)
        }
        "meta-data/ami-id" => text(200, "ami-0b5e1c0d1e2f3a4b5"),
        "meta-data/instance-id" => text(200, i.id.clone()),
        "meta-data/instance-type" => text(200, "m5.large"),
        "meta-data/hostname" | "meta-data/local-hostname" => text(200, i.hostname.clone()),
        "meta-data/public-keys" if !keys.is_empty() => {
            let lines: Vec<String> = keys.iter().enumerate().map(|(n, (name, _))| format!("{n}={name}")).collect();
            text(200, lines.join("\n"))
        }
        "user-data" => match &i.user_data {
            Some(bytes) => Response::status(200)
                .header("Content-Type", "application/octet-stream")
                .header("Server", "EC2ws")
                .body(bytes.clone()),
            None => not_found(),
        },
        "dynamic" => listing(&["instance-identity/"]),
        "dynamic/instance-identity/document" => {
            let doc = serde_json::json!({
                "instanceId": i.id,
                "instanceType": "m5.large",
                "region": "eu-west-1",
                "availabilityZone": "eu-west-1a",
                "architecture": "x86_64",
                "imageId": "ami-0b5e1c0d1e2f3a4b5",
            });
            Response::status(200)
                .header("Content-Type", "application/json")
                .header("Server", "EC2ws")
                .body(doc.to_string())
        }
        other => {
            // meta-data/public-keys/N/ and meta-data/public-keys/N/openssh-key.
            let Some(rest) = other.strip_prefix("meta-data/public-keys/") else { return not_found() };
            let (n, leaf) = rest.split_once('/').unwrap_or((rest, ""));
            let Some((_, key)) = n.parse::<usize>().ok().and_then(|n| keys.get(n)) else { return not_found() };
            match leaf {
                "" => text(200, "openssh-key"),
                // The key as imported, with its newline: clients trim it.
                "openssh-key" => text(200, format!("{key}\n")),
                _ => not_found(),
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
            id: "i-0123456789abcdef0".into(),
            hostname: "ip-172-31-7-9.eu-west-1.compute.internal".into(),
            ssh_keys: vec![("berth-test".into(), "ssh-ed25519 AAAAC3Nza berth-test".into())],
            user_data: Some(b"hostname = \"x\"\n".to_vec()),
        }
    }

    #[test]
    fn imdsv2_only_tokens_with_a_ttl_and_the_instances_metadata() {
        let imds = Imds::start(instance()).unwrap();
        let p = imds.port();
        // IMDSv1 is refused.
        assert_eq!(ask(p, "GET", "/latest/meta-data/instance-id", &[], b"").status, 401);
        // A token needs its TTL, in range, not through a proxy, and only under latest.
        assert_eq!(ask(p, "PUT", "/latest/api/token", &[], b"").status, 400);
        for bad in ["0", "21601", "ten"] {
            let a = ask(p, "PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", bad)], b"");
            assert_eq!(a.status, 400, "TTL {bad}");
        }
        let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "21600");
        let proxied = ask(p, "PUT", "/latest/api/token", &[ttl, ("X-Forwarded-For", "10.0.0.1")], b"");
        assert_eq!(proxied.status, 403);
        assert_eq!(ask(p, "PUT", "/2021-01-03/api/token", &[ttl], b"").status, 403);
        assert_eq!(ask(p, "GET", "/latest/api/token", &[ttl], b"").status, 401);

        let t = ask(p, "PUT", "/latest/api/token", &[ttl], b"");
        assert_eq!(t.status, 200);
        assert_eq!(t.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
        let token = t.text();
        assert_eq!(token.len(), 56);
        let auth = [("X-aws-ec2-metadata-token", token.as_str())];
        let get = |path: &str| ask(p, "GET", path, &auth, b"");
        assert_eq!(get("/latest/meta-data/instance-id").text(), "i-0123456789abcdef0");
        assert_eq!(get("/2021-01-03/meta-data/hostname").text(), "ip-172-31-7-9.eu-west-1.compute.internal");
        assert_eq!(get("/latest/meta-data/public-keys").text(), "0=berth-test");
        assert_eq!(get("/latest/meta-data/public-keys/0/").text(), "openssh-key");
        assert_eq!(get("/latest/meta-data/public-keys/0/openssh-key").text(), "ssh-ed25519 AAAAC3Nza berth-test\n");
        assert_eq!(get("/latest/meta-data/public-keys/1/openssh-key").status, 404);
        assert_eq!(get("/latest/user-data").body, b"hostname = \"x\"\n");
        assert!(
            get("/latest/dynamic/instance-identity/document").text().contains("\"instanceId\":\"i-0123456789abcdef0\"")
        );
        assert_eq!(get("/1999-01-01/meta-data/instance-id").status, 404);
        assert_eq!(get("/latest/meta-data/nothing").status, 404);
        assert!(get("/").text().ends_with("\nlatest"));
        // A wrong token, another method.
        let wrong = [("X-aws-ec2-metadata-token", "AQAEAnot-a-token")];
        assert_eq!(ask(p, "GET", "/latest/meta-data/instance-id", &wrong, b"").status, 401);
        assert_eq!(ask(p, "POST", "/latest/meta-data/instance-id", &auth, b"").status, 405);

        // No user data, no keys: 404, and no public-keys in the listing.
        imds.set_instance(Instance { user_data: None, ssh_keys: vec![], ..instance() });
        assert_eq!(get("/latest/user-data").status, 404);
        assert_eq!(get("/latest/meta-data/public-keys/").status, 404);
        assert!(!get("/latest/meta-data/").text().contains("public-keys"));

        // Tokens die with their TTL.
        let short = ask(p, "PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "1")], b"").text();
        let auth_short = [("X-aws-ec2-metadata-token", short.as_str())];
        assert_eq!(ask(p, "GET", "/latest/meta-data/instance-id", &auth_short, b"").status, 200);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(ask(p, "GET", "/latest/meta-data/instance-id", &auth_short, b"").status, 401);
        assert_eq!(get("/latest/meta-data/instance-id").status, 200);
        imds.expire_tokens();
        assert_eq!(get("/latest/meta-data/instance-id").status, 401);

        // Faults apply before the rules; the log has everything.
        imds.set_fault("/latest/api/token", Fault::Status { code: 500, times: 1 });
        assert_eq!(ask(p, "PUT", "/latest/api/token", &[ttl], b"").status, 500);
        assert_eq!(ask(p, "PUT", "/latest/api/token", &[ttl], b"").status, 200);
        let log = imds.requests();
        assert_eq!(log[0].status, Some(401));
        assert_eq!(log.last().unwrap().header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    }
}
