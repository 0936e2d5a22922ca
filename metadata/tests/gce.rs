//! The GCE provider against a strict metadata server fake: `Metadata-Flavor: Google` both ways
//! (403 without it), the SSH keys in Afterburn's order, `block-project-ssh-keys`, retries, an
//! answer from something that is not the metadata server, and a server that hangs.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_metadata::gce::Gce;
use berth_metadata::platform::Platform;
use berth_metadata::provider::{self, MetadataError, Provider};
use berth_metadata::record::{InstanceRecord, Outcome, SshKey};
use berth_testkit::{Request, Response, Server};
use common::{Faults, client, deadline, fast_retry, silent_server};

const ROOT: &str = "/computeMetadata/v1/";

#[derive(Default)]
struct Metadata {
    /// Paths under `/computeMetadata/v1/` and their values.
    values: BTreeMap<String, String>,
    faults: Faults,
}

impl Metadata {
    fn answer(&self, r: &Request) -> Response {
        let reply = |status| Response::status(status).header("Metadata-Flavor", "Google");
        if r.header("metadata-flavor") != Some("Google") || r.header("x-forwarded-for").is_some() {
            return reply(403).body("Missing Metadata-Flavor:Google header.");
        }
        if r.method != "GET" {
            return reply(405);
        }
        if let Some(status) = self.faults.take(r.path()) {
            return reply(status);
        }
        match r.path().strip_prefix(ROOT).and_then(|p| self.values.get(p)) {
            Some(v) => reply(200).header("Content-Type", "application/text").body(v.clone()),
            None => reply(404),
        }
    }
}

fn instance(extra: &[(&str, &str)]) -> Metadata {
    let mut values: BTreeMap<String, String> = [
        ("instance/id", "4281239478129304728"),
        ("instance/hostname", "berth-1.us-central1-a.c.my-project.internal"),
        ("instance/attributes/user-data", "hostname = \"from-user-data\"\n"),
        ("instance/attributes/ssh-keys", "alice:ssh-ed25519 AAAAC3Nza alice@laptop\n\nbob:ssh-rsa AAAAB3Nza bob\n"),
        ("project/attributes/ssh-keys", "ops:ssh-ed25519 AAAAC3Nzb ops@bastion"),
        ("project/attributes/sshKeys", "legacy:ssh-rsa AAAAB3Nzc old"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        values.insert(k.to_string(), v.to_string());
    }
    Metadata { values, ..Metadata::default() }
}

fn start(md: Metadata) -> (Server, Arc<Metadata>) {
    let md = Arc::new(md);
    let fake = md.clone();
    (Server::start(move |r| fake.answer(r).into()).unwrap(), md)
}

fn key(user: &str, key: &str) -> SshKey {
    SshKey { user: Some(user.into()), key: key.into() }
}

fn asked(server: &Server) -> Vec<String> {
    server.requests().iter().map(|r| r.path().trim_start_matches(ROOT).to_string()).collect()
}

#[test]
fn the_whole_record_with_instance_then_project_keys() {
    let (server, _md) = start(instance(&[]));
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(
        record,
        InstanceRecord {
            platform: "gce".into(),
            outcome: Outcome::Complete,
            instance_id: Some("4281239478129304728".into()),
            hostname: Some("berth-1.us-central1-a.c.my-project.internal".into()),
            user_data: Some(b"hostname = \"from-user-data\"\n".to_vec()),
            ssh_keys: vec![
                key("alice", "ssh-ed25519 AAAAC3Nza alice@laptop"),
                key("bob", "ssh-rsa AAAAB3Nza bob"),
                key("ops", "ssh-ed25519 AAAAC3Nzb ops@bastion"),
                key("legacy", "ssh-rsa AAAAB3Nzc old"),
            ],
            notes: vec![],
        }
    );
    assert_eq!(
        asked(&server),
        [
            "instance/id",
            "instance/hostname",
            "instance/attributes/sshKeys",
            "instance/attributes/ssh-keys",
            "instance/attributes/block-project-ssh-keys",
            "project/attributes/ssh-keys",
            "project/attributes/sshKeys",
            "instance/attributes/user-data",
        ]
    );
    assert!(server.requests().iter().all(|r| r.header("Metadata-Flavor") == Some("Google")));
}

#[test]
fn the_legacy_instance_keys_alone_and_blocked_project_keys() {
    // Deprecated instance `sshKeys` with keys: the only list used; nothing else is asked.
    let (server, _md) = start(instance(&[("instance/attributes/sshKeys", "old:ssh-rsa AAAAB3Nzd old@host\n")]));
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(record.ssh_keys, [key("old", "ssh-rsa AAAAB3Nzd old@host")]);
    assert!(!asked(&server).iter().any(|p| p.contains("ssh-keys")), "{:?}", asked(&server));

    // An empty legacy list does not count.
    let (server, _md) = start(instance(&[("instance/attributes/sshKeys", "\n")]));
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(record.ssh_keys.len(), 4);

    // block-project-ssh-keys: the instance's keys only, the project's not even asked for.
    let (server, _md) = start(instance(&[("instance/attributes/block-project-ssh-keys", "true")]));
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(
        record.ssh_keys,
        [key("alice", "ssh-ed25519 AAAAC3Nza alice@laptop"), key("bob", "ssh-rsa AAAAB3Nza bob")]
    );
    assert_eq!(record.notes, ["block-project-ssh-keys is true: the project's keys are not used"]);
    assert_eq!(record.outcome, Outcome::Complete);
    assert!(!asked(&server).iter().any(|p| p.starts_with("project/")), "{:?}", asked(&server));
}

#[test]
fn an_fqdn_over_63_bytes_is_cut_and_missing_fields_are_notes() {
    let long = "berth-node-with-a-long-name.europe-west4-b.c.a-project-with-a-long-id.internal";
    assert!(long.len() > 63);
    let mut md = instance(&[("instance/hostname", long), ("project/attributes/ssh-keys", "nocolon-line\n")]);
    md.values.remove("instance/attributes/user-data");
    md.values.remove("project/attributes/sshKeys");
    let (server, _md) = start(md);
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(record.hostname.as_deref(), Some("berth-node-with-a-long-name"));
    assert_eq!(record.user_data, None);
    assert_eq!(record.outcome, Outcome::Partial, "a key line that is not user:key is a failure: {record:?}");
    assert_eq!(
        record.notes,
        [
            "project/attributes/ssh-keys: the line \"nocolon-line\" is not `user:key`; skipped",
            "instance/attributes/user-data: none (404)"
        ]
    );
}

#[test]
fn server_errors_are_retried() {
    let (server, md) = start(instance(&[]));
    md.faults.set("/computeMetadata/v1/instance/id", 500, 2);
    md.faults.set("/computeMetadata/v1/instance/attributes/user-data", 503, 2);
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!((record.outcome, record.notes.len()), (Outcome::Complete, 0), "{record:?}");
    assert!(record.instance_id.is_some() && record.user_data.is_some());
    let ids = asked(&server).iter().filter(|p| *p == "instance/id").count();
    assert_eq!(ids, 3);

    // Always 500: bounded, the field noted, the rest of the record kept.
    let (server, md) = start(instance(&[]));
    md.faults.set("/computeMetadata/v1/instance/attributes/user-data", 500, 100);
    let record = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Partial);
    assert_eq!(record.notes, ["instance/attributes/user-data: the server answered 500; gave up after 4 attempts"]);
    assert_eq!((record.user_data, record.ssh_keys.len()), (None, 4));
}

#[test]
fn an_answer_without_the_flavor_is_not_the_metadata_server() {
    let server = Server::start(|_| Response::ok("4281239478129304728").into()).unwrap();
    let e = Gce::new(client(&server.url()), fast_retry()).fetch(deadline(10)).unwrap_err();
    let MetadataError::NotTheService { service, why, .. } = &e;
    assert_eq!(*service, "GCE");
    assert!(why.ends_with("instance/id: the answer has no `Metadata-Flavor: Google`"), "{e}");
    assert_eq!(server.requests().len(), 1, "nothing more is asked");

    let record =
        provider::fetch_for(Platform::Gce, client(&server.url()), fast_retry(), deadline(10), Arc::new(|_| {}));
    assert_eq!(record.outcome, Outcome::Unreachable);
    assert!(record.notes[0].contains("answered, but not as GCE's metadata service"), "{:?}", record.notes);
}

#[test]
fn a_server_that_never_answers_ends_at_the_deadline() {
    let silent = silent_server();
    let start = Instant::now();
    let record = Gce::new(client(&silent), provider::default_retry()).fetch(start + Duration::from_secs(1)).unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(record.outcome, Outcome::Unreachable);
    assert_eq!(record.notes.len(), 1, "after the first field nothing more is tried: {:?}", record.notes);
}

#[test]
fn the_fake_refuses_a_request_without_the_flavor() {
    let (server, _md) = start(instance(&[]));
    match client(&server.url()).get("http://169.254.169.254/computeMetadata/v1/instance/id").send() {
        Err(berth_http::Error::Status(403)) => {}
        other => panic!("{other:?}"),
    }
}
