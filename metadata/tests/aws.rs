//! The AWS provider against a strict IMDSv2 fake: tokens only (a GET without one is 401, a PUT
//! without a TTL 400, a GET of the token path 405), retries, expiry and a service that hangs.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_metadata::aws::Aws;
use berth_metadata::provider::{self, Provider};
use berth_metadata::record::{InstanceRecord, Outcome, SshKey};
use berth_testkit::{Request, Response, Server};
use common::{Faults, Lines, client, deadline, fast_retry, silent_server};

#[derive(Default)]
struct Imds {
    /// `meta-data/…` and `user-data` paths under `/latest/` and their answers.
    fields: BTreeMap<String, Vec<u8>>,
    tokens: Mutex<HashSet<String>>,
    issued: Mutex<u32>,
    faults: Faults,
}

impl Imds {
    fn expire_tokens(&self) {
        self.tokens.lock().unwrap().clear();
    }

    fn answer(&self, r: &Request) -> Response {
        let path = r.path();
        if let Some(status) = self.faults.take(path) {
            return Response::status(status);
        }
        if r.header("x-forwarded-for").is_some() {
            return Response::status(403);
        }
        if path == "/latest/api/token" {
            if r.method != "PUT" {
                return Response::status(405);
            }
            let ttl = r.header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok());
            let Some(ttl @ 1..=21600) = ttl else { return Response::status(400) };
            let mut n = self.issued.lock().unwrap();
            *n += 1;
            let token = format!("AQAEA-token-{n}");
            self.tokens.lock().unwrap().insert(token.clone());
            return Response::ok(token).header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string());
        }
        if r.method != "GET" {
            return Response::status(405);
        }
        // IMDSv2 required: no valid token, 401 (never an IMDSv1 answer).
        if !r.header("x-aws-ec2-metadata-token").is_some_and(|t| self.tokens.lock().unwrap().contains(t)) {
            return Response::status(401);
        }
        match path.strip_prefix("/latest/").and_then(|p| self.fields.get(p)) {
            Some(body) => Response::ok(body.clone()),
            None => Response::status(404),
        }
    }
}

fn start(imds: Imds) -> (Server, Arc<Imds>) {
    let imds = Arc::new(imds);
    let fake = imds.clone();
    (Server::start(move |r| fake.answer(r).into()).unwrap(), imds)
}

fn instance() -> Imds {
    let mut fields = BTreeMap::new();
    for (path, value) in [
        ("meta-data/instance-id", &b"i-0123456789abcdef0"[..]),
        ("meta-data/hostname", b"ip-10-0-1-23.eu-west-1.compute.internal"),
        ("meta-data/public-keys", b"0=ops\n1=laptop"),
        ("meta-data/public-keys/0/openssh-key", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops\n"),
        ("meta-data/public-keys/1/openssh-key", b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ laptop\n"),
        ("user-data", b"hostname = \"from-user-data\"\n"),
    ] {
        fields.insert(path.to_string(), value.to_vec());
    }
    Imds { fields, ..Imds::default() }
}

fn aws(server: &Server) -> Aws {
    Aws::new(client(&server.url()), fast_retry())
}

#[test]
fn the_whole_record_with_a_token_on_every_request() {
    let (server, _imds) = start(instance());
    let record = aws(&server).fetch(deadline(10)).unwrap();
    assert_eq!(
        record,
        InstanceRecord {
            platform: "aws".into(),
            outcome: Outcome::Complete,
            instance_id: Some("i-0123456789abcdef0".into()),
            hostname: Some("ip-10-0-1-23.eu-west-1.compute.internal".into()),
            user_data: Some(b"hostname = \"from-user-data\"\n".to_vec()),
            ssh_keys: vec![
                SshKey { user: None, key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops".into() },
                SshKey { user: None, key: "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ laptop".into() },
            ],
            notes: vec![],
        }
    );
    let seen = server.requests();
    let asked: Vec<(&str, &str)> = seen.iter().map(|r| (r.method.as_str(), r.target.as_str())).collect();
    assert_eq!(
        asked,
        [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/instance-id"),
            ("GET", "/latest/meta-data/hostname"),
            ("GET", "/latest/meta-data/public-keys"),
            ("GET", "/latest/meta-data/public-keys/0/openssh-key"),
            ("GET", "/latest/meta-data/public-keys/1/openssh-key"),
            ("GET", "/latest/user-data"),
        ]
    );
    assert_eq!(seen[0].header("x-aws-ec2-metadata-token-ttl-seconds"), Some("21600"));
    assert!(seen[1..].iter().all(|r| r.header("x-aws-ec2-metadata-token") == Some("AQAEA-token-1")), "{seen:?}");
    assert!(seen.iter().all(|r| r.header("user-agent").is_some_and(|u| u.starts_with("berth-metadata"))));
}

#[test]
fn missing_fields_are_notes_and_a_long_hostname_is_cut_at_its_first_dot() {
    let mut imds = instance();
    imds.fields.retain(|k, _| !k.starts_with("meta-data/public-keys") && k != "user-data");
    let long = format!("ip-10-0-1-23.{}.compute.internal", "a-very-long-region-name".repeat(3));
    assert!(long.len() > 63);
    imds.fields.insert("meta-data/hostname".into(), long.into_bytes());
    let (server, _imds) = start(imds);
    let record = aws(&server).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Complete, "{record:?}");
    assert_eq!(record.hostname.as_deref(), Some("ip-10-0-1-23"));
    assert_eq!((record.user_data, record.ssh_keys.len()), (None, 0));
    assert_eq!(record.notes, ["public-keys: none (404)", "user-data: none (404)"]);
}

#[test]
fn server_errors_are_retried_and_an_expired_token_is_renewed() {
    let (server, imds) = start(instance());
    imds.faults.set("/latest/api/token", 500, 2);
    imds.faults.set("/latest/meta-data/hostname", 503, 2);
    let lines = Lines::default();
    let provider = aws(&server).log(lines.sink());

    let record = provider.fetch(deadline(10)).unwrap();
    assert_eq!((record.outcome, record.notes.len()), (Outcome::Complete, 0), "{record:?}");
    assert_eq!(record.hostname.as_deref(), Some("ip-10-0-1-23.eu-west-1.compute.internal"));
    let seen = server.take_requests();
    assert_eq!(seen.iter().filter(|r| r.method == "PUT").count(), 3, "two 500s, then the token");
    assert_eq!(seen.iter().filter(|r| r.path() == "/latest/meta-data/hostname").count(), 3);
    assert!(seen.iter().all(|r| r.method == "PUT" || r.header("x-aws-ec2-metadata-token").is_some()), "never IMDSv1");
    assert!(
        lines
            .all()
            .iter()
            .any(|l| l == "/latest/api/token: the server answered 500; trying again in 10 ms (attempt 2)")
    );

    // The token expires between two fields: a 401, a new token, the same field again.
    let imds2 = imds.clone();
    let expiring = Server::start(move |r| {
        if r.path() == "/latest/meta-data/hostname" && *imds2.issued.lock().unwrap() == 2 {
            imds2.expire_tokens();
        }
        imds2.answer(r).into()
    })
    .unwrap();
    let record = aws(&expiring).fetch(deadline(10)).unwrap();
    assert_eq!((record.outcome, record.hostname.is_some()), (Outcome::Complete, true), "{record:?}");
    let seen = expiring.requests();
    let statuses: Vec<(&str, &str)> = seen.iter().map(|r| (r.method.as_str(), r.path())).collect();
    assert_eq!(
        &statuses[..5],
        [
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/instance-id"),
            ("GET", "/latest/meta-data/hostname"),
            ("PUT", "/latest/api/token"),
            ("GET", "/latest/meta-data/hostname"),
        ]
    );
    assert_eq!(seen[4].header("x-aws-ec2-metadata-token"), Some("AQAEA-token-3"));
}

#[test]
fn without_a_token_nothing_is_asked_imdsv1_is_never_used() {
    let (server, imds) = start(instance());
    imds.faults.set("/latest/api/token", 500, 100);
    let record = aws(&server).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Partial, "the service answered, but gave nothing");
    assert_eq!(record.instance_id, None);
    assert_eq!(record.notes, ["/latest/api/token: the server answered 500; gave up after 4 attempts"]);
    let seen = server.requests();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.method == "PUT"), "no tokenless GET: {seen:?}");

    // A service refusing the token request for good (403: the token API is off) is not retried.
    let (server, imds) = start(instance());
    imds.faults.set("/latest/api/token", 403, 100);
    let record = aws(&server).fetch(deadline(10)).unwrap();
    assert_eq!(record.notes, ["/latest/api/token: the server answered 403"]);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_service_that_never_answers_is_unreachable_within_the_deadline() {
    // Nothing listens: refused, retried by the policy, unreachable.
    let dead = format!("http://127.0.0.1:{}", berth_testkit::dead_port());
    let record = Aws::new(client(&dead), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Unreachable);
    assert!(record.notes[0].starts_with("/latest/api/token: connection failed"), "{:?}", record.notes);

    // Accepts and never answers: the deadline ends it (the binary then writes this record).
    let silent = silent_server();
    let start = Instant::now();
    let record = provider::fetch_for(
        berth_metadata::platform::Platform::Aws,
        client(&silent),
        provider::default_retry(),
        start + Duration::from_millis(1500),
        Arc::new(|_| {}),
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_millis(3000), "{took:?}");
    assert_eq!(record.outcome, Outcome::Unreachable, "{record:?}");
    assert_eq!(record.notes.len(), 1, "{:?}", record.notes);
    assert!(record.notes[0].starts_with("/latest/api/token: connection failed"), "{:?}", record.notes);
}

#[test]
fn the_fake_refuses_what_imds_refuses() {
    // The client's correctness above means something only if the fake is strict.
    let (server, _imds) = start(instance());
    let http = client(&server.url());
    let status = |r: Result<berth_http::Response, berth_http::Error>| match r {
        Ok(r) => r.status(),
        Err(berth_http::Error::Status(s)) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status(http.get("http://169.254.169.254/latest/meta-data/instance-id").send()), 401);
    assert_eq!(status(http.put("http://169.254.169.254/latest/api/token").send()), 400);
    let ttl = ("X-aws-ec2-metadata-token-ttl-seconds", "21601");
    assert_eq!(status(http.put("http://169.254.169.254/latest/api/token").header(ttl.0, ttl.1).send()), 400);
    assert_eq!(status(http.get("http://169.254.169.254/latest/api/token").send()), 405);
}
