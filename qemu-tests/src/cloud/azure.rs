//! Fakes of Azure's two guest endpoints, sharing one instance: the Instance Metadata Service
//! (learn.microsoft.com, "Azure Instance Metadata Service") and the WireServer's goal state and
//! health report (the protocol of WALinuxAgent and Afterburn's `boot_checkin`).
//!
//! IMDS (169.254.169.254):
//! - every request needs `Metadata: true`, else 400 ("Required metadata header not
//!   specified"); `X-Forwarded-For` is refused (400); only GET (405);
//! - `api-version` is mandatory and must be one the service knows, else 400 with the newest
//!   versions listed; a field newer than the version asked for does not exist (404);
//! - `/metadata/instance[/compute[/…]]`: JSON by default; `format=text` gives a leaf's value,
//!   and for an object or array its entries one per line (`name/` for those with children, as
//!   the real service does: `compute/`, `network/`), so a client asking a JSON array as text gets
//!   a listing, not the data; a leaf asked as JSON is 400. `compute/userData` is the user data
//!   base64-encoded (empty when unset); `compute/publicKeys` is `[{keyData, path}]`.
//!
//! WireServer (168.63.129.16):
//! - `GET /?comp=versions` answers the supported versions (no header needed);
//! - `GET /machine/?comp=goalstate` needs `x-ms-version` (a supported version), else 400, and
//!   answers the goal state: incarnation, container id, role instance id;
//! - `POST /machine/?comp=health` needs `x-ms-version` and an XML content type; its `<Health>`
//!   document must name the current incarnation, container and role instance and a state
//!   (`Ready` or `NotReady`), else 400. Every report is recorded ([`HealthReport`]) with the
//!   instance (vmId) it arrived for, so a test counts ready reports per instance.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use berth_testkit::{Request, Response};

use super::{Endpoint, Fault, Instance, Logged, lock, query};

/// The SMBIOS chassis asset tag of every Azure VM (type 3), which tells Azure from Hyper-V.
pub const CHASSIS_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// The WireServer protocol version every request names (`x-ms-version`).
pub const WIRE_VERSION: &str = "2012-11-30";

/// IMDS versions this fake knows, oldest first (the service's list of supported versions).
pub const IMDS_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
];

/// The first IMDS version with `compute/userData`.
const USER_DATA_SINCE: &str = "2021-01-01";

/// A health report the WireServer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The instance (vmId) the fake was serving when it arrived.
    pub vm_id: String,
    pub body: String,
    /// `x-ms-agent-name`, as sent.
    pub agent_name: Option<String>,
    /// `Ready` or `NotReady` when the report was valid.
    pub state: Option<String>,
    /// Whether it named the current incarnation, container and role instance (answered 200).
    pub valid: bool,
    /// Why it was refused (400).
    pub refused: Option<String>,
    pub at: Instant,
}

struct State {
    instance: Instance,
    incarnation: u32,
    reports: Vec<HealthReport>,
}

impl State {
    /// The container of the VM, derived from its vmId (a new VM is a new container).
    fn container_id(&self) -> String {
        let hex: String = self.instance.id.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_lowercase();
        let h = format!("{hex:0<32}");
        format!("{}-{}-{}-{}-{}", &h[24..32], &h[20..24], &h[16..20], &h[12..16], &h[..12])
    }

    /// The role instance, `<vmId without dashes>.<name>` as Azure forms it.
    fn role_instance_id(&self) -> String {
        format!("{}.{}", self.instance.id.replace('-', ""), self.instance.hostname)
    }

    fn admin_user(&self) -> String {
        self.instance.ssh_keys.first().map_or_else(|| "azureuser".to_string(), |(u, _)| u.clone())
    }

    /// `/metadata/instance` as JSON.
    fn document(&self, version: &str) -> serde_json::Value {
        let i = &self.instance;
        let keys: Vec<serde_json::Value> = (i.ssh_keys.iter())
            .map(|(user, key)| serde_json::json!({ "keyData": key, "path": format!("/home/{user}/.ssh/authorized_keys") }))
            .collect();
        let mut compute = serde_json::json!({
            "azEnvironment": "AzurePublicCloud",
            "location": "westeurope",
            "name": i.hostname,
            "osType": "Linux",
            "osProfile": { "adminUsername": self.admin_user(), "computerName": i.hostname, "disablePasswordAuthentication": "true" },
            "provider": "Microsoft.Compute",
            "publicKeys": keys,
            "resourceGroupName": "berth-test",
            "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
            "vmId": i.id,
            "vmSize": "Standard_D2s_v3",
        });
        if version >= USER_DATA_SINCE {
            let data = i.user_data.as_deref().map(|d| base64::engine::general_purpose::STANDARD.encode(d));
            compute["userData"] = serde_json::Value::String(data.unwrap_or_default());
        }
        serde_json::json!({
            "compute": compute,
            "network": { "interface": [{
                "ipv4": { "ipAddress": [{ "privateIpAddress": "10.1.0.4", "publicIpAddress": "" }],
                          "subnet": [{ "address": "10.1.0.0", "prefix": "24" }] },
                "macAddress": "000D3A5B6C7D",
            }]},
        })
    }
}

/// Azure's IMDS and WireServer, each on a free port of 127.0.0.1.
pub struct Azure {
    imds: Endpoint,
    wire: Endpoint,
    state: Arc<Mutex<State>>,
}

impl Azure {
    /// Serves `instance` (its `id` is the vmId, a UUID); the goal state starts at incarnation 1.
    pub fn start(instance: Instance) -> std::io::Result<Azure> {
        let state = Arc::new(Mutex::new(State { instance, incarnation: 1, reports: Vec::new() }));
        let imds = {
            let state = state.clone();
            Endpoint::start(move |r| imds(r, &state))?
        };
        let wire = {
            let state = state.clone();
            Endpoint::start(move |r| wire(r, &state))?
        };
        Ok(Azure { imds, wire, state })
    }

    pub fn imds_port(&self) -> u16 {
        self.imds.port()
    }

    pub fn wire_port(&self) -> u16 {
        self.wire.port()
    }

    /// A new VM from the same disk: another vmId, so another container and role instance;
    /// its goal state starts at incarnation 1 again.
    pub fn set_instance(&self, instance: Instance) {
        let mut s = lock(&self.state);
        s.instance = instance;
        s.incarnation = 1;
    }

    /// A new goal state for the same VM (what the fabric does when, e.g., an extension is
    /// added).
    pub fn bump_incarnation(&self) {
        lock(&self.state).incarnation += 1;
    }

    pub fn set_imds_fault(&self, prefix: &str, fault: Fault) {
        self.imds.set_fault(prefix, fault);
    }

    pub fn set_wire_fault(&self, prefix: &str, fault: Fault) {
        self.wire.set_fault(prefix, fault);
    }

    pub fn clear_faults(&self) {
        self.imds.clear_faults();
        self.wire.clear_faults();
    }

    pub fn imds_requests(&self) -> Vec<Logged> {
        self.imds.requests()
    }

    pub fn wire_requests(&self) -> Vec<Logged> {
        self.wire.requests()
    }

    /// Every health report received, valid or not, in order.
    pub fn health_reports(&self) -> Vec<HealthReport> {
        lock(&self.state).reports.clone()
    }

    /// How many valid `Ready` reports arrived for the VM `vm_id`.
    pub fn ready_reports(&self, vm_id: &str) -> usize {
        (lock(&self.state).reports.iter())
            .filter(|r| r.valid && r.vm_id == vm_id && r.state.as_deref() == Some("Ready"))
            .count()
    }

    /// The current goal state's (incarnation, container id, role instance id).
    pub fn goal_state(&self) -> (u32, String, String) {
        let s = lock(&self.state);
        (s.incarnation, s.container_id(), s.role_instance_id())
    }
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::status(status)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Server", "Microsoft-IIS/10.0")
        .body(body.to_string())
}

fn error(status: u16, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

fn version_error(message: &str) -> Response {
    let newest: Vec<&str> = IMDS_VERSIONS.iter().rev().take(3).copied().collect();
    json(400, serde_json::json!({ "error": message, "newest-versions": newest }))
}

fn imds(r: &Request, state: &Mutex<State>) -> Response {
    if !r.header("Metadata").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return error(400, "Bad request. Required metadata header not specified");
    }
    if r.header("X-Forwarded-For").is_some() {
        return error(400, "Bad request. Requests with an X-Forwarded-For header are rejected");
    }
    if r.method != "GET" {
        return error(405, "Method not allowed. Only GET requests are supported");
    }
    let Some(version) = query(&r.target, "api-version") else {
        return version_error(
            "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
        );
    };
    if !IMDS_VERSIONS.contains(&version) {
        return version_error("Bad request. api-version is invalid or was not specified in the request");
    }
    let path = r.path().trim_end_matches('/');
    let Some(rest) = path.strip_prefix("/metadata/instance") else { return error(404, "Not found") };
    let doc = lock(state).document(version);
    let mut node = &doc;
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        let next = match node {
            serde_json::Value::Object(m) => m.get(part),
            serde_json::Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return error(404, "Not found"),
        }
    }
    let text = match query(&r.target, "format") {
        Some("text") => true,
        Some("json") | None => false,
        Some(_) => return error(400, "Bad request. Query parameter format is invalid; use json or text"),
    };
    let has_children = |v: &serde_json::Value| v.is_object() || v.is_array();
    match (text, node) {
        (true, serde_json::Value::Object(m)) => {
            let lines: Vec<String> =
                m.iter().map(|(k, v)| if has_children(v) { format!("{k}/") } else { k.clone() }).collect();
            plain(lines.join("\n"))
        }
        (true, serde_json::Value::Array(a)) => {
            let lines: Vec<String> = a
                .iter()
                .enumerate()
                .map(|(i, v)| if has_children(v) { format!("{i}/") } else { i.to_string() })
                .collect();
            plain(lines.join("\n"))
        }
        (true, serde_json::Value::String(s)) => plain(s.clone()),
        (true, leaf) => plain(leaf.to_string()),
        (false, n) if has_children(n) => json(200, n.clone()),
        (false, _) => {
            error(400, "Bad request. Query parameter format=json is not supported for a leaf node; use format=text")
        }
    }
}

fn plain(body: String) -> Response {
    Response::status(200)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Server", "Microsoft-IIS/10.0")
        .body(body)
}

fn xml(status: u16, body: String) -> Response {
    Response::status(status)
        .header("Content-Type", "text/xml; charset=utf-8")
        .header("x-ms-version", WIRE_VERSION)
        .body(body)
}

fn wire_error(status: u16, code: &str, message: &str) -> Response {
    xml(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>\n"
        ),
    )
}

const VERSIONS_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<Versions>
  <Preferred>
    <Version>2015-04-05</Version>
  </Preferred>
  <Supported>
    <Version>2015-04-05</Version>
    <Version>2012-11-30</Version>
    <Version>2012-09-15</Version>
    <Version>2012-05-15</Version>
    <Version>2011-12-31</Version>
  </Supported>
</Versions>
"#;

fn wire(r: &Request, state: &Mutex<State>) -> Response {
    let comp = query(&r.target, "comp");
    let path = r.path();
    match (r.method.as_str(), path, comp) {
        ("GET", "/", Some("versions")) => return xml(200, VERSIONS_XML.to_string()),
        (_, "/machine" | "/machine/", Some("goalstate" | "health")) => {}
        (_, "/", _) | (_, "/machine" | "/machine/", _) => return wire_error(400, "InvalidQuery", "Unknown comp"),
        _ => return wire_error(404, "ResourceNotFound", "The specified resource does not exist."),
    }
    let version_ok = r.header("x-ms-version").is_some_and(|v| ["2012-11-30", "2015-04-05"].contains(&v));
    let mut s = lock(state);
    match (r.method.as_str(), comp) {
        ("GET", Some("goalstate")) if version_ok => {
            let body = format!(
                r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>{WIRE_VERSION}</Version>
  <Incarnation>{}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts>
      <Port>16001</Port>
    </LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{}</InstanceId>
        <State>Started</State>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
                s.incarnation,
                s.container_id(),
                s.role_instance_id()
            );
            xml(200, body)
        }
        ("POST", Some("health")) => {
            let body = String::from_utf8_lossy(&r.body).into_owned();
            let judged = if !version_ok {
                Err("the x-ms-version header is missing or not a supported version".to_string())
            } else if !r.header("Content-Type").is_some_and(|t| t.contains("xml")) {
                Err(format!("Content-Type {:?} is not text/xml", r.header("Content-Type")))
            } else {
                judge_health(&body, s.incarnation, &s.container_id(), &s.role_instance_id())
            };
            let report = HealthReport {
                vm_id: s.instance.id.clone(),
                body,
                agent_name: r.header("x-ms-agent-name").map(str::to_string),
                state: judged.as_ref().ok().cloned(),
                valid: judged.is_ok(),
                refused: judged.as_ref().err().cloned(),
                at: Instant::now(),
            };
            s.reports.push(report);
            match judged {
                Ok(_) => Response::status(200).header("x-ms-version", WIRE_VERSION),
                Err(why) => wire_error(400, "InvalidHealthReport", &why),
            }
        }
        ("GET", Some("goalstate")) => wire_error(
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-version",
        ),
        _ => wire_error(405, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb."),
    }
}

/// The content of the first `<tag>` element (with or without attributes) in `xml`, up to its
/// matching `</tag>` (the same name nests: a role's `<Health>` inside the report's).
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    // Where an opening tag of this name starts at or after `from`, and where it ends.
    let next_open = |from: usize| -> Option<(usize, usize)> {
        let mut at = from;
        loop {
            let i = at + xml[at..].find(&open)?;
            let rest = &xml[i + open.len()..];
            if rest.starts_with('>') || rest.starts_with(char::is_whitespace) {
                return Some((i, i + open.len() + rest.find('>')? + 1));
            }
            at = i + 1;
        }
    };
    let (_, content) = next_open(0)?;
    let (mut depth, mut at) = (1, content);
    loop {
        let c = at + xml[at..].find(&close)?;
        match next_open(at) {
            Some((o, end)) if o < c => {
                depth += 1;
                at = end;
            }
            _ => {
                depth -= 1;
                if depth == 0 {
                    return Some(&xml[content..c]);
                }
                at = c + close.len();
            }
        }
    }
}

/// The state a `<Health>` document reports, or why it is refused.
fn judge_health(body: &str, incarnation: u32, container_id: &str, instance_id: &str) -> Result<String, String> {
    let missing = |what: &str| format!("no {what} in the health report");
    let root = element(body, "Health").ok_or_else(|| missing("<Health>"))?;
    let got = element(root, "GoalStateIncarnation").ok_or_else(|| missing("<GoalStateIncarnation>"))?;
    if got.trim() != incarnation.to_string() {
        return Err(format!("incarnation {got:?}, the goal state's is {incarnation}"));
    }
    let container = element(root, "Container").ok_or_else(|| missing("<Container>"))?;
    let got = element(container, "ContainerId").ok_or_else(|| missing("<ContainerId>"))?;
    if got.trim() != container_id {
        return Err(format!("container {got:?}, the goal state's is {container_id}"));
    }
    let list = element(container, "RoleInstanceList").ok_or_else(|| missing("<RoleInstanceList>"))?;
    let role = element(list, "Role").ok_or_else(|| missing("<Role>"))?;
    let got = element(role, "InstanceId").ok_or_else(|| missing("<InstanceId>"))?;
    if got.trim() != instance_id {
        return Err(format!("role instance {got:?}, the goal state's is {instance_id}"));
    }
    let health = element(role, "Health").ok_or_else(|| missing("the role's <Health>"))?;
    let state = element(health, "State").ok_or_else(|| missing("<State>"))?.trim();
    match state {
        "Ready" | "NotReady" => Ok(state.to_string()),
        other => Err(format!("state {other:?} is neither Ready nor NotReady")),
    }
}

/// A health report as Afterburn and WALinuxAgent write it.
pub fn health_report(incarnation: u32, container_id: &str, instance_id: &str, state: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><GoalStateIncarnation>{incarnation}</GoalStateIncarnation>\
         <Container><ContainerId>{container_id}</ContainerId><RoleInstanceList><Role><InstanceId>{instance_id}</InstanceId>\
         <Health><State>{state}</State></Health></Role></RoleInstanceList></Container></Health>"
    )
}

#[cfg(test)]
mod tests {
    use super::super::client::ask;
    use super::*;

    const VM_ID: &str = "1d3c6b0e-9c6f-4a1e-8b8e-2f5c3a7d9e01";

    fn instance() -> Instance {
        Instance {
            id: VM_ID.into(),
            hostname: "berth-azure-1".into(),
            ssh_keys: vec![("core".into(), "ssh-ed25519 AAAAC3Nza core@test".into())],
            user_data: Some(b"hostname = \"x\"\n".to_vec()),
        }
    }

    #[test]
    fn imds_needs_the_header_and_a_version_and_speaks_text_only_for_leaves() {
        let a = Azure::start(instance()).unwrap();
        let p = a.imds_port();
        let md = ("Metadata", "true");
        let no = ask(p, "GET", "/metadata/instance/compute/name?api-version=2021-02-01&format=text", &[], b"");
        assert_eq!(no.status, 400);
        assert!(no.text().contains("Required metadata header not specified"), "{}", no.text());
        let nover = ask(p, "GET", "/metadata/instance/compute/name?format=text", &[md], b"");
        assert_eq!(nover.status, 400);
        assert!(nover.text().contains("api-version was not specified") && nover.text().contains("newest-versions"));
        assert_eq!(
            ask(p, "GET", "/metadata/instance/compute/name?api-version=2099-01-01&format=text", &[md], b"").status,
            400
        );
        let proxied = [md, ("X-Forwarded-For", "10.0.0.9")];
        assert_eq!(ask(p, "GET", "/metadata/instance?api-version=2021-02-01", &proxied, b"").status, 400);
        assert_eq!(ask(p, "POST", "/metadata/instance?api-version=2021-02-01", &[md], b"").status, 405);

        let get = |t: &str| ask(p, "GET", t, &[md], b"");
        assert_eq!(get("/metadata/instance/compute/name?api-version=2017-08-01&format=text").text(), "berth-azure-1");
        assert_eq!(get("/metadata/instance/compute/vmId?api-version=2021-02-01&format=text").text(), VM_ID);
        assert_eq!(
            get("/metadata/instance/compute/osProfile/adminUsername?api-version=2021-02-01&format=text").text(),
            "core"
        );
        let keys = get("/metadata/instance/compute/publicKeys?api-version=2021-02-01");
        let keys: serde_json::Value = serde_json::from_slice(&keys.body).unwrap();
        assert_eq!(keys[0]["keyData"], "ssh-ed25519 AAAAC3Nza core@test");
        assert_eq!(keys[0]["path"], "/home/core/.ssh/authorized_keys");
        // An array as text is a listing; a leaf as JSON is refused; text of the root lists it.
        assert_eq!(get("/metadata/instance/compute/publicKeys?api-version=2021-02-01&format=text").text(), "0/");
        assert_eq!(
            get("/metadata/instance/compute/publicKeys/0/keyData?api-version=2021-02-01&format=text").text(),
            keys[0]["keyData"]
        );
        assert_eq!(get("/metadata/instance/compute/name?api-version=2021-02-01").status, 400);
        assert_eq!(get("/metadata/instance?api-version=2021-02-01&format=text").text(), "compute/\nnetwork/");
        let user_data = get("/metadata/instance/compute/userData?api-version=2021-01-01&format=text").text();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(user_data).unwrap(), b"hostname = \"x\"\n");
        assert_eq!(get("/metadata/instance/compute/userData?api-version=2020-12-01&format=text").status, 404);
        assert_eq!(get("/metadata/instance/compute/nothing?api-version=2021-02-01&format=text").status, 404);
        a.set_instance(Instance { user_data: None, ..instance() });
        let empty = get("/metadata/instance/compute/userData?api-version=2021-01-01&format=text");
        assert_eq!((empty.status, empty.text().as_str()), (200, ""));
    }

    #[test]
    fn wireserver_goal_state_and_health_reports_per_instance() {
        let a = Azure::start(instance()).unwrap();
        let p = a.wire_port();
        let versions = ask(p, "GET", "/?comp=versions", &[], b"");
        assert!(versions.status == 200 && versions.text().contains("<Version>2012-11-30</Version>"));
        assert_eq!(ask(p, "GET", "/machine/?comp=goalstate", &[], b"").status, 400);
        let v = ("x-ms-version", WIRE_VERSION);
        let agent = ("x-ms-agent-name", "berth-metadata");
        let gs = ask(p, "GET", "/machine/?comp=goalstate", &[v, agent], b"").text();
        let (incarnation, container, role) = a.goal_state();
        assert_eq!(element(&gs, "Incarnation"), Some("1"));
        assert_eq!(element(&gs, "ContainerId"), Some(container.as_str()));
        assert_eq!(element(&gs, "InstanceId"), Some(role.as_str()));
        assert_eq!(container, "3a7d9e01-2f5c-8b8e-4a1e-1d3c6b0e9c6f");
        assert_eq!(role, "1d3c6b0e9c6f4a1e8b8e2f5c3a7d9e01.berth-azure-1");

        let xml_type = ("Content-Type", "text/xml; charset=utf-8");
        let ready = health_report(incarnation, &container, &role, "Ready");
        let post = |headers: &[(&str, &str)], body: &str| {
            ask(p, "POST", "/machine/?comp=health", headers, body.as_bytes()).status
        };
        assert_eq!(post(&[xml_type, agent], &ready), 400, "without x-ms-version");
        assert_eq!(post(&[v, agent], &ready), 400, "without a content type");
        assert_eq!(post(&[v, xml_type], &health_report(2, &container, &role, "Ready")), 400, "stale incarnation");
        assert_eq!(post(&[v, xml_type], &health_report(1, "other", &role, "Ready")), 400);
        assert_eq!(post(&[v, xml_type], &health_report(1, &container, &role, "Fine")), 400);
        assert_eq!(post(&[v, xml_type], "<Health>"), 400);
        assert_eq!(post(&[v, xml_type, agent], &ready), 200);
        assert_eq!(a.ready_reports(VM_ID), 1);
        let reports = a.health_reports();
        assert_eq!(reports.len(), 7);
        assert_eq!(
            reports[0].refused.as_deref(),
            Some("the x-ms-version header is missing or not a supported version")
        );
        assert!(reports[2].refused.as_deref().unwrap().contains("incarnation \"2\""), "{reports:?}");
        assert_eq!(
            (reports[6].agent_name.as_deref(), reports[6].state.as_deref()),
            (Some("berth-metadata"), Some("Ready"))
        );

        // A new VM: another container, incarnation 1 again; the old report does not count for it.
        let new_id = "6a0f1e2d-3c4b-4a59-8e7d-6c5b4a392817";
        a.set_instance(Instance { id: new_id.into(), hostname: "berth-azure-2".into(), ..instance() });
        assert_eq!(a.ready_reports(new_id), 0);
        assert_eq!(post(&[v, xml_type], &ready), 400, "the old VM's report");
        let (i2, c2, r2) = a.goal_state();
        assert_ne!(c2, container);
        assert_eq!(post(&[v, xml_type], &health_report(i2, &c2, &r2, "Ready")), 200);
        assert_eq!((a.ready_reports(VM_ID), a.ready_reports(new_id)), (1, 1));
        assert_eq!(ask(p, "GET", "/machine/?comp=certificates", &[v], b"").status, 400);
        assert_eq!(ask(p, "GET", "/elsewhere", &[v], b"").status, 404);
        assert_eq!(ask(p, "DELETE", "/machine/?comp=health", &[v], b"").status, 405);

        a.set_wire_fault("/machine", Fault::Status { code: 500, times: 1 });
        assert_eq!(post(&[v, xml_type], &health_report(i2, &c2, &r2, "Ready")), 500);
        assert_eq!(a.ready_reports(new_id), 1, "a report answered 500 was not received");
    }
}
