//! The Azure provider against a strict IMDS fake (400 without `Metadata: true` or an
//! `api-version`), the provisioning CD's files, and the ready report against a strict
//! WireServer fake: sent once per instance across runs, retried, refused versions.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use berth_metadata::azure::Azure;
use berth_metadata::azure::ovf::CdSource;
use berth_metadata::azure::wireserver::{GoalState, Ready, ReadyError, WireServer};
use berth_metadata::provider::Provider;
use berth_metadata::record::{InstanceRecord, Outcome, SshKey};
use berth_testkit::{Request, Response, Server};
use common::{Faults, client, deadline, fast_retry, query};

const VM_ID: &str = "02aab8a4-74ef-476e-8182-f6d2ba4166a6";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAzure azureuser@laptop";

struct Imds {
    user_data: Option<String>,
    faults: Faults,
}

impl Imds {
    fn answer(&self, r: &Request) -> Response {
        if r.header("metadata") != Some("true") {
            return Response::json(400, r#"{"error":"Bad request. Required metadata header not specified"}"#);
        }
        let Some(version) = query(&r.target, "api-version") else {
            return Response::json(400, r#"{"error":"Bad request. api-version was not specified in the request"}"#);
        };
        if r.method != "GET" {
            return Response::status(405);
        }
        if let Some(status) = self.faults.take(r.path()) {
            return Response::status(status);
        }
        let text = query(&r.target, "format") == Some("text");
        let field = r.path().strip_prefix("/metadata/instance/compute/").unwrap_or("");
        let plain = |v: &str| Response::ok(v.to_string()).header("Content-Type", "text/plain; charset=utf-8");
        // Each field exists from the version Azure added it in; a leaf asked as JSON is 400.
        match (field, text) {
            ("vmId", true) if version >= "2017-04-02" => plain(VM_ID),
            ("name", true) => plain("berth-azure-vm"),
            ("osProfile/adminUsername", true) if version >= "2021-02-01" => plain("azureuser"),
            ("publicKeys", false) if version >= "2021-02-01" => Response::json(
                200,
                format!(r#"[{{"keyData":"{}\r\n","path":"/home/azureuser/.ssh/authorized_keys"}}]"#, KEY),
            ),
            ("userData", true) if version >= "2021-01-01" => {
                plain(&self.user_data.as_deref().map(|d| STANDARD.encode(d)).unwrap_or_default())
            }
            (_, false) => Response::json(400, r#"{"error":"Bad request. format is invalid"}"#),
            _ => Response::status(404),
        }
    }
}

fn imds(user_data: Option<&str>) -> (Server, Arc<Imds>) {
    let fake = Arc::new(Imds { user_data: user_data.map(str::to_string), faults: Faults::default() });
    let f = fake.clone();
    (Server::start(move |r| f.answer(r).into()).unwrap(), fake)
}

fn azure(server: &Server, cd: CdSource) -> Azure {
    Azure::new(client(&server.url()), fast_retry()).cd(cd)
}

const OVF_ENV: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
  <wa:ProvisioningSection>
    <wa:Version>1.0</wa:Version>
    <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
      <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
      <HostName>berth-computer</HostName>
      <UserName>azureuser</UserName>
      <CustomData>aG9zdG5hbWUgPSAiZnJvbS10aGUtY2QiCg==</CustomData>
    </LinuxProvisioningConfigurationSet>
  </wa:ProvisioningSection>
</Environment>
"#;

fn cd_dir(ovf_env: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ovf-env.xml"), ovf_env).unwrap();
    dir
}

#[test]
fn imds_alone_gives_the_whole_record() {
    let (server, _fake) = imds(Some("hostname = \"from-imds\"\n"));
    let record = azure(&server, CdSource::None).fetch(deadline(10)).unwrap();
    assert_eq!(
        record,
        InstanceRecord {
            platform: "azure".into(),
            outcome: Outcome::Complete,
            instance_id: Some(VM_ID.into()),
            hostname: Some("berth-azure-vm".into()),
            user_data: Some(b"hostname = \"from-imds\"\n".to_vec()),
            ssh_keys: vec![SshKey { user: Some("azureuser".into()), key: KEY.into() }],
            notes: vec![],
        }
    );
    let targets: Vec<String> = server.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(
        targets,
        [
            "/metadata/instance/compute/vmId?api-version=2017-08-01&format=text",
            "/metadata/instance/compute/name?api-version=2017-08-01&format=text",
            "/metadata/instance/compute/osProfile/adminUsername?api-version=2021-02-01&format=text",
            "/metadata/instance/compute/publicKeys?api-version=2021-02-01",
            "/metadata/instance/compute/userData?api-version=2021-01-01&format=text",
        ]
    );

    // No user data: IMDS answers an empty string, which is none.
    let (server, _fake) = imds(None);
    let record = azure(&server, CdSource::None).fetch(deadline(10)).unwrap();
    assert_eq!(
        (record.outcome, record.user_data, record.notes),
        (Outcome::Complete, None, vec!["userData: none".into()])
    );
}

#[test]
fn the_cd_s_custom_data_and_hostname_win_over_imds() {
    let (server, _fake) = imds(Some("hostname = \"from-imds\"\n"));
    let cd = cd_dir(OVF_ENV);
    let record = azure(&server, CdSource::Dir(cd.path().to_path_buf())).fetch(deadline(10)).unwrap();
    assert_eq!(record.user_data.as_deref(), Some(&b"hostname = \"from-the-cd\"\n"[..]));
    assert_eq!(record.hostname.as_deref(), Some("berth-computer"));
    assert_eq!(record.instance_id.as_deref(), Some(VM_ID));
    assert_eq!(record.outcome, Outcome::Complete);
    assert_eq!(record.notes, ["user data: the provisioning CD's CustomData"]);
    assert!(!server.requests().iter().any(|r| r.path().ends_with("/userData") || r.path().ends_with("/name")));

    // A CD whose ovf-env.xml is broken: noted, IMDS still used.
    let broken = cd_dir("<Environment><x></Environment>");
    let record = azure(&server, CdSource::Dir(broken.path().to_path_buf())).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Partial);
    assert!(
        record.notes[0].starts_with("provisioning CD: ovf-env.xml: line 1: </Environment> closes <x>"),
        "{:?}",
        record.notes
    );
    assert_eq!(record.user_data.as_deref(), Some(&b"hostname = \"from-imds\"\n"[..]));
}

#[test]
fn imds_unreachable_with_and_without_the_cd() {
    let dead = format!("http://127.0.0.1:{}", berth_testkit::dead_port());
    let provider = Azure::new(client(&dead), fast_retry()).cd(CdSource::None);
    let record = provider.fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Unreachable);
    assert_eq!(record.notes.len(), 1, "{:?}", record.notes);

    // The CD alone still provisions: partial, not unreachable.
    let cd = cd_dir(OVF_ENV);
    let record =
        Azure::new(client(&dead), fast_retry()).cd(CdSource::Dir(cd.path().to_path_buf())).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Partial);
    assert_eq!((record.hostname.as_deref(), record.instance_id.as_deref()), (Some("berth-computer"), None));
    assert!(record.user_data.is_some());
}

#[test]
fn server_errors_are_retried_and_bad_user_data_is_a_failure() {
    let (server, fake) = imds(Some("x = 1\n"));
    fake.faults.set("/metadata/instance/compute/vmId", 500, 2);
    // 410 Gone: IMDS is not ready yet early in boot; Azure says to retry.
    fake.faults.set("/metadata/instance/compute/userData", 410, 1);
    let record = azure(&server, CdSource::None).fetch(deadline(10)).unwrap();
    assert_eq!((record.outcome, record.instance_id.as_deref()), (Outcome::Complete, Some(VM_ID)));
    assert_eq!(record.user_data.as_deref(), Some(&b"x = 1\n"[..]));
    assert_eq!(server.requests().iter().filter(|r| r.path().ends_with("/vmId")).count(), 3);
    assert_eq!(server.requests().iter().filter(|r| r.path().ends_with("/userData")).count(), 2);

    let bad = Server::start(|r| {
        if r.path().ends_with("/userData") {
            Response::ok("%%% not base64").into()
        } else {
            Response::status(404).into()
        }
    })
    .unwrap();
    let record = azure(&bad, CdSource::None).fetch(deadline(10)).unwrap();
    assert_eq!(record.outcome, Outcome::Partial);
    assert!(record.notes.iter().any(|n| n.starts_with("userData: not base64")), "{:?}", record.notes);
}

#[test]
fn the_fake_refuses_what_imds_refuses() {
    let (server, _fake) = imds(None);
    let http = client(&server.url());
    let url = "http://169.254.169.254/metadata/instance/compute/vmId";
    for get in
        [http.get(&format!("{url}?api-version=2017-08-01&format=text")), http.get(url).header("Metadata", "true")]
    {
        match get.send() {
            Err(berth_http::Error::Status(400)) => {}
            other => panic!("{other:?}"),
        }
    }
}

// The WireServer.

struct Wire {
    incarnation: Mutex<u32>,
    /// Health reports taken (their bodies).
    reports: Mutex<Vec<String>>,
    faults: Faults,
    versions: &'static str,
}

const CONTAINER: &str = "c6d5fd3c-1a4b-4c1e-b4e3-1d1a3a8b1e7c";
const ROLE: &str = "896b1b2a-2b84-4e2b-9d39-b05d1a6c6d25.berth-vm";

impl Wire {
    fn new() -> Wire {
        Wire {
            incarnation: Mutex::new(1),
            reports: Mutex::new(Vec::new()),
            faults: Faults::default(),
            versions: "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Versions><Preferred><Version>2015-04-05</Version>\
                       </Preferred><Supported><Version>2015-04-05</Version><Version>2012-11-30</Version></Supported></Versions>",
        }
    }

    fn answer(&self, r: &Request) -> Response {
        let target = r.target.as_str();
        if let Some(status) = self.faults.take(target) {
            return Response::status(status);
        }
        if target == "/?comp=versions" && r.method == "GET" {
            return Response::ok(self.versions).header("Content-Type", "text/xml; charset=utf-8");
        }
        if r.header("x-ms-version") != Some("2012-11-30") || r.header("x-ms-agent-name").is_none() {
            return Response::status(400).body("An HTTP header that's mandatory for this request is not specified");
        }
        let incarnation = *self.incarnation.lock().unwrap();
        match (r.method.as_str(), target) {
            ("GET", "/machine/?comp=goalstate") => Response::ok(format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState><Version>2012-11-30</Version>\
                 <Incarnation>{incarnation}</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine>\
                 <Container><ContainerId>{CONTAINER}</ContainerId><RoleInstanceList><RoleInstance>\
                 <InstanceId>{ROLE}</InstanceId><State>Started</State></RoleInstance></RoleInstanceList></Container>\
                 </GoalState>"
            ))
            .header("Content-Type", "text/xml; charset=utf-8"),
            ("POST", "/machine/?comp=health") => {
                if r.header("content-type") != Some("text/xml; charset=utf-8") {
                    return Response::status(400);
                }
                let body = String::from_utf8_lossy(&r.body).into_owned();
                let want = format!(
                    "<GoalStateIncarnation>{incarnation}</GoalStateIncarnation><Container><ContainerId>{CONTAINER}\
                     </ContainerId><RoleInstanceList><Role><InstanceId>{ROLE}</InstanceId><Health><State>Ready</State>\
                     </Health></Role></RoleInstanceList></Container></Health>"
                );
                if !body.contains(&want) {
                    // A report for another incarnation: the goal state moved on.
                    return Response::status(410);
                }
                self.reports.lock().unwrap().push(body);
                Response::ok("")
            }
            _ => Response::status(405),
        }
    }
}

fn wire(w: Wire) -> (Server, Arc<Wire>) {
    let w = Arc::new(w);
    let f = w.clone();
    (Server::start(move |r| f.answer(r).into()).unwrap(), w)
}

#[test]
fn ready_is_reported_once_per_instance() {
    let (server, w) = wire(Wire::new());
    let state = tempfile::tempdir().unwrap();
    let marker = state.path().join("var/lib/berth/azure-ready");
    let ws = || WireServer::new(client(&server.url()), fast_retry()).marker(&marker);

    let goal = GoalState { incarnation: "1".into(), container_id: CONTAINER.into(), role_instance_id: ROLE.into() };
    assert_eq!(
        ws().report_ready(Some(VM_ID), deadline(10)).unwrap(),
        Ready::Reported { goal_state: goal, remembered: true }
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("{VM_ID}\n"));
    // The second run (a reboot) sends nothing.
    assert_eq!(
        ws().report_ready(Some(VM_ID), deadline(10)).unwrap(),
        Ready::AlreadyReported { instance_id: VM_ID.into() }
    );
    assert_eq!(w.reports.lock().unwrap().len(), 1, "exactly one report across two runs");
    let seen = server.requests();
    let asked: Vec<(&str, &str)> = seen.iter().map(|r| (r.method.as_str(), r.target.as_str())).collect();
    assert_eq!(
        asked,
        [("GET", "/?comp=versions"), ("GET", "/machine/?comp=goalstate"), ("POST", "/machine/?comp=health")]
    );
    assert!(
        seen.iter()
            .all(|r| r.header("x-ms-agent-name") == Some("berth") && r.header("x-ms-version") == Some("2012-11-30"))
    );

    // A new instance from the same disk reports again.
    let other = "9d3c5ad2-0000-4000-8000-000000000001";
    assert!(matches!(ws().report_ready(Some(other), deadline(10)).unwrap(), Ready::Reported { remembered: true, .. }));
    assert_eq!(w.reports.lock().unwrap().len(), 2);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("{other}\n"));

    // Without an instance id it reports and remembers nothing.
    std::fs::remove_file(&marker).unwrap();
    assert!(matches!(ws().report_ready(None, deadline(10)).unwrap(), Ready::Reported { remembered: false, .. }));
    assert!(!marker.exists());
}

#[test]
fn failures_are_retried_and_a_moved_goal_state_is_reported_afresh() {
    let (server, w) = wire(Wire::new());
    w.faults.set("/machine/?comp=health", 500, 2);
    let state = tempfile::tempdir().unwrap();
    let marker = state.path().join("azure-ready");
    let ws = WireServer::new(client(&server.url()), fast_retry()).marker(&marker);
    assert!(matches!(ws.report_ready(Some(VM_ID), deadline(10)).unwrap(), Ready::Reported { .. }));
    assert_eq!(w.reports.lock().unwrap().len(), 1);
    let posts = server.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 3, "500 twice, then 200");

    // The incarnation changes between the goal state and the report: 410, asked again.
    let (server, w) = wire(Wire::new());
    let w2 = w.clone();
    let bumping = Server::start(move |r| {
        let answer = w2.answer(r);
        if r.target == "/machine/?comp=goalstate" && r.index == 1 {
            *w2.incarnation.lock().unwrap() = 2;
        }
        answer.into()
    })
    .unwrap();
    drop(server);
    std::fs::remove_file(&marker).ok();
    let ws = WireServer::new(client(&bumping.url()), fast_retry()).marker(&marker);
    let Ready::Reported { goal_state, .. } = ws.report_ready(Some(VM_ID), deadline(10)).unwrap() else { panic!() };
    assert_eq!(goal_state.incarnation, "2");
    assert_eq!(w.reports.lock().unwrap().len(), 1);
    assert!(w.reports.lock().unwrap()[0].contains("<GoalStateIncarnation>2</GoalStateIncarnation>"));
}

#[test]
fn a_wireserver_without_the_version_or_always_failing_is_an_error() {
    let mut old = Wire::new();
    old.versions = "<Versions><Preferred><Version>2099-01-01</Version></Preferred><Supported><Version>2099-01-01</Version>\
                    </Supported></Versions>";
    let (server, _w) = wire(old);
    let state = tempfile::tempdir().unwrap();
    let marker = state.path().join("azure-ready");
    let e =
        WireServer::new(client(&server.url()), fast_retry()).marker(&marker).report_ready(Some(VM_ID), deadline(10));
    assert!(matches!(&e, Err(ReadyError::Unsupported(v)) if v == "2099-01-01"), "{e:?}");
    assert_eq!(server.requests().len(), 1);

    let (server, w) = wire(Wire::new());
    w.faults.set("/machine/?comp=health", 503, 100);
    let e = WireServer::new(client(&server.url()), fast_retry())
        .marker(&marker)
        .report_ready(Some(VM_ID), deadline(10))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the ready report to the WireServer failed: ready report: the server answered 503; gave up after 4 attempts"
    );
    assert!(!marker.exists(), "a report not taken is not remembered");

    // Nothing answers: bounded by the deadline.
    let silent = common::silent_server();
    let start = std::time::Instant::now();
    let e = WireServer::new(client(&silent), fast_retry())
        .marker(&marker)
        .report_ready(Some(VM_ID), start + Duration::from_millis(800))
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(2000), "{:?}", start.elapsed());
    assert!(e.to_string().contains("GET /?comp=versions: connection failed"), "{e}");
}
