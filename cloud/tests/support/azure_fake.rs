//! A strict in-tree fake of the Azure calls `berth upload azure` makes, for what Azurite does
//! not check or lacks: the Blob service's page-blob calls as the reference describes them
//! (Shared Key verified, `x-ms-version` and a fresh `x-ms-date` required, Put Page refused over
//! 4 MiB with 413 `RequestBodyTooLarge`, unaligned with 416 `InvalidPageRange`, a range that is
//! not the body's length with 400 `InvalidHeaderValue`), injected faults (500/503/429, dropped
//! connections, a service that stops taking pages), and Resource Manager's managed images (a
//! bearer token required, an expired one refused with 401 `ExpiredAuthenticationToken`; the PUT
//! checked for V2, Linux, Generalized and an existing page blob of whole MiB + 512; provisioning
//! through `Azure-AsyncOperation`, Creating → Succeeded, or → Failed).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use berth_testkit::{Reply, Request, Response, Server};
use serde_json::{Value, json};

use crate::support::lock;

/// The account the fake serves (path-style URLs: `/devstoreaccount1/CONTAINER/BLOB`).
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its key.
pub const KEY: &[u8] = b"the fake's account key";
/// [`KEY`] in base64, as a key file or AZURE_STORAGE_KEY holds it.
pub const KEY_BASE64: &str = "dGhlIGZha2UncyBhY2NvdW50IGtleQ==";
/// The container that exists.
pub const CONTAINER: &str = "images";
/// The access token Resource Manager takes.
pub const TOKEN: &str = "good-token";
/// A token that has expired.
pub const EXPIRED_TOKEN: &str = "expired-token";

/// A fault answered to the next Put Page.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// This status with an error body (503 `ServerBusy`, 500 `InternalError`, 429).
    Status(u16),
    /// The request is read, then the connection closed without an answer.
    Drop,
    /// A 201 announcing a body, cut short: the connection drops during the answer.
    Cut,
}

struct Blob {
    data: Vec<u8>,
    written: Vec<bool>,
    metadata: Vec<(String, String)>,
}

struct Image {
    body: Value,
    state: String,
    polls_left: u32,
    fail: Option<String>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Blob>,
    containers: Vec<String>,
    images: HashMap<String, Image>,
    image_puts: Vec<Value>,
    faults: VecDeque<Fault>,
    fail_pages_after: Option<u64>,
    pages_ok: u64,
    max_page: usize,
    fail_next_image: Option<String>,
    location_mode: bool,
    ranges_per_answer: Option<usize>,
    port: u16,
}

/// The running fake.
pub struct Fake {
    server: Server,
    state: Arc<Mutex<State>>,
}

impl Fake {
    /// Starts the fake with the container `images`.
    pub fn start() -> Fake {
        let state =
            Arc::new(Mutex::new(State { containers: vec![format!("/{ACCOUNT}/{CONTAINER}")], ..State::default() }));
        let s = state.clone();
        let server = Server::start(move |r| handle(&s, r)).expect("fake server");
        lock(&state).port = server.port();
        Fake { server, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }

    /// Answers the next Put Pages with `fault`, `times` times.
    pub fn fault(&self, fault: Fault, times: usize) {
        let mut s = lock(&self.state);
        for _ in 0..times {
            s.faults.push_back(fault);
        }
    }

    /// Faults not hit yet.
    pub fn faults_left(&self) -> usize {
        lock(&self.state).faults.len()
    }

    /// After `n` pages taken (counted from the start), every Put Page answers 500.
    pub fn fail_pages_after(&self, n: u64) {
        lock(&self.state).fail_pages_after = Some(n);
    }

    /// Put Pages taken so far.
    pub fn pages_written(&self) -> u64 {
        lock(&self.state).pages_ok
    }

    /// The largest Put Page taken.
    pub fn max_page_write(&self) -> usize {
        lock(&self.state).max_page
    }

    /// The blob at `path` (`/devstoreaccount1/images/x.vhd`), as Get Blob would give it.
    pub fn blob_bytes(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.state).blobs.get(path).map(|b| b.data.clone())
    }

    /// The next image created ends `Failed` with `message`.
    pub fn fail_next_image(&self, message: &str) {
        lock(&self.state).fail_next_image = Some(message.to_string());
    }

    /// Get Page Ranges answers at most `n` ranges at a time, with a `NextMarker` for the rest.
    pub fn page_ranges_per_answer(&self, n: usize) {
        lock(&self.state).ranges_per_answer = Some(n);
    }

    /// Image PUTs answer 202 with a `Location` to poll (the other long-running pattern) instead
    /// of 201 with `Azure-AsyncOperation`.
    pub fn answer_with_location(&self) {
        lock(&self.state).location_mode = true;
    }

    /// The bodies of every image PUT accepted.
    pub fn image_put_bodies(&self) -> Vec<Value> {
        lock(&self.state).image_puts.clone()
    }

    /// Whether an image `name` exists.
    pub fn image_exists(&self, name: &str) -> bool {
        lock(&self.state).images.contains_key(name)
    }
}

fn storage_error(status: u16, code: &str, message: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    Response::status(status).header("x-ms-error-code", code).header("Content-Type", "application/xml").body(body).into()
}

fn query<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    let q = r.target.split_once('?')?.1;
    q.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

fn handle(state: &Mutex<State>, r: &Request) -> Reply {
    if r.path().starts_with("/subscriptions/") {
        return arm(state, r);
    }
    blob_service(state, r)
}

/// Shared Key as the Blob service checks it: the account, a date at most 15 minutes off, the
/// version header, and the signature over the string-to-sign.
fn authorize(state: &Mutex<State>, r: &Request) -> Result<(), Reply> {
    if r.header("x-ms-version").is_none() {
        return Err(storage_error(
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified.",
        ));
    }
    let Some(auth) = r.header("authorization") else {
        return Err(storage_error(401, "NoAuthenticationInformation", "Server failed to authenticate the request."));
    };
    let fail = || {
        storage_error(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        )
    };
    let Some(rest) = auth.strip_prefix("SharedKey ") else { return Err(fail()) };
    let Some((account, _)) = rest.split_once(':') else { return Err(fail()) };
    if account != ACCOUNT {
        return Err(fail());
    }
    let date = r.header("x-ms-date").and_then(berth_cloud::time::parse_rfc1123);
    let now = berth_cloud::time::now();
    if date.is_none_or(|d| (d - now).abs() > 15 * 60) {
        return Err(fail());
    }
    let port = lock(state).port;
    let url = format!("http://127.0.0.1:{port}{}", r.target);
    let length = r.body.len();
    let want = berth_cloud::azure::auth::shared_key_authorization(ACCOUNT, KEY, &r.method, &url, &r.headers, length);
    if want != auth { Err(fail()) } else { Ok(()) }
}

fn blob_service(state: &Mutex<State>, r: &Request) -> Reply {
    if let Err(reply) = authorize(state, r) {
        return reply;
    }
    let path = r.path().to_string();
    let comp = query(r, "comp");
    if query(r, "restype") == Some("container") && r.method == "PUT" {
        let mut s = lock(state);
        if s.containers.contains(&path) {
            return storage_error(409, "ContainerAlreadyExists", "The specified container already exists.");
        }
        s.containers.push(path);
        return Response::status(201).into();
    }
    // /ACCOUNT/CONTAINER/BLOB…: the container is the second segment.
    let container = format!("/{ACCOUNT}/{}", path.split('/').nth(2).unwrap_or(""));
    match (r.method.as_str(), comp) {
        ("HEAD", None) => {
            let s = lock(state);
            let Some(b) = s.blobs.get(&path) else {
                // A HEAD's error has no body: only its code header.
                return Response::status(404).header("x-ms-error-code", "BlobNotFound").into();
            };
            let mut resp = Response::status(200).header("x-ms-blob-type", "PageBlob");
            for (n, v) in &b.metadata {
                resp = resp.header(&format!("x-ms-meta-{n}"), v.clone());
            }
            resp.announce(b.data.len() as u64).into()
        }
        ("PUT", None) => {
            let mut s = lock(state);
            if !s.containers.contains(&container) {
                return storage_error(404, "ContainerNotFound", "The specified container does not exist.");
            }
            if r.header("x-ms-blob-type") != Some("PageBlob") {
                return storage_error(400, "InvalidHeaderValue", "Only page blobs here.");
            }
            if r.header("content-length") != Some("0") || !r.body.is_empty() {
                return storage_error(
                    400,
                    "InvalidHeaderValue",
                    "Content-Length must be 0 for Create Page Blob request.",
                );
            }
            let Some(len) = r.header("x-ms-blob-content-length").and_then(|v| v.parse::<usize>().ok()) else {
                return storage_error(400, "MissingRequiredHeader", "x-ms-blob-content-length");
            };
            if len % 512 != 0 {
                return storage_error(
                    400,
                    "InvalidHeaderValue",
                    "x-ms-blob-content-length must be aligned to a 512-byte boundary.",
                );
            }
            let metadata = meta_headers(r);
            s.blobs.insert(path, Blob { data: vec![0; len], written: vec![false; len / 512], metadata });
            Response::status(201).into()
        }
        ("PUT", Some("page")) => put_page(state, r, &path),
        ("PUT", Some("metadata")) => {
            let mut s = lock(state);
            let Some(b) = s.blobs.get_mut(&path) else {
                return storage_error(404, "BlobNotFound", "The specified blob does not exist.");
            };
            b.metadata = meta_headers(r);
            Response::status(200).into()
        }
        ("GET", Some("pagelist")) => {
            let s = lock(state);
            let Some(b) = s.blobs.get(&path) else {
                return storage_error(404, "BlobNotFound", "The specified blob does not exist.");
            };
            let mut ranges = Vec::new();
            let mut i = 0;
            while i < b.written.len() {
                if b.written[i] {
                    let start = i;
                    while i < b.written.len() && b.written[i] {
                        i += 1;
                    }
                    ranges.push((start * 512, i * 512 - 1));
                } else {
                    i += 1;
                }
            }
            // An opaque marker, as the service's are: "1!N!" then the index of the next range.
            let from = match query(r, "marker").map(berth_cloud::percent::decode_query) {
                Some(m) => match m.strip_prefix("1!N!").and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => n,
                    None => return storage_error(400, "InvalidQueryParameterValue", "The marker is not valid."),
                },
                None => 0,
            };
            let per = s.ranges_per_answer.unwrap_or(usize::MAX);
            let to = from.saturating_add(per).min(ranges.len());
            let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>");
            for (a, b) in &ranges[from.min(to)..to] {
                xml += &format!("<PageRange><Start>{a}</Start><End>{b}</End></PageRange>");
            }
            if to < ranges.len() {
                xml += &format!("<NextMarker>1!N!{to}</NextMarker>");
            } else {
                xml += "<NextMarker />";
            }
            xml += "</PageList>";
            Response::ok(xml).header("Content-Type", "application/xml").into()
        }
        ("GET", None) => {
            let s = lock(state);
            match s.blobs.get(&path) {
                Some(b) => Response::ok(b.data.clone()).into(),
                None => storage_error(404, "BlobNotFound", "The specified blob does not exist."),
            }
        }
        _ => storage_error(400, "UnsupportedHttpVerb", "The fake does not serve this."),
    }
}

fn meta_headers(r: &Request) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter_map(|(n, v)| Some((n.to_ascii_lowercase().strip_prefix("x-ms-meta-")?.to_string(), v.clone())))
        .collect()
}

fn put_page(state: &Mutex<State>, r: &Request, path: &str) -> Reply {
    let mut s = lock(state);
    if let Some(fault) = s.faults.pop_front() {
        return match fault {
            Fault::Status(503) => storage_error(
                503,
                "ServerBusy",
                "The server is currently unable to receive requests. Please retry your request.",
            ),
            Fault::Status(429) => storage_error(429, "ServerBusy", "Ingress is over the account limit."),
            Fault::Status(code) => storage_error(
                code,
                "InternalError",
                "The server encountered an internal error. Please retry the request.",
            ),
            Fault::Drop => Reply::Raw(Vec::new()),
            Fault::Cut => Reply::Raw(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\npartial".to_vec()),
        };
    }
    if s.fail_pages_after.is_some_and(|n| s.pages_ok >= n) {
        return storage_error(
            500,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        );
    }
    if r.header("x-ms-page-write") != Some("update") {
        return storage_error(400, "InvalidHeaderValue", "x-ms-page-write must be update here.");
    }
    let range = r.header("x-ms-range").or_else(|| r.header("range")).and_then(|v| {
        let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
    });
    let Some((start, end)) = range else { return storage_error(400, "MissingRequiredHeader", "x-ms-range") };
    if end < start || start % 512 != 0 || (end + 1) % 512 != 0 {
        return storage_error(416, "InvalidPageRange", "The page range specified is invalid.");
    }
    let len = end + 1 - start;
    if len > 4 << 20 || r.body.len() > 4 << 20 {
        return storage_error(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
        );
    }
    if len != r.body.len() {
        return storage_error(
            400,
            "InvalidHeaderValue",
            "The value for one of the HTTP headers is not in the correct format.",
        );
    }
    let Some(b) = s.blobs.get_mut(path) else {
        return storage_error(404, "BlobNotFound", "The specified blob does not exist.");
    };
    if end >= b.data.len() {
        return storage_error(416, "InvalidPageRange", "The page range specified is invalid.");
    }
    b.data[start..=end].copy_from_slice(&r.body);
    for w in &mut b.written[start / 512..=end / 512] {
        *w = true;
    }
    s.pages_ok += 1;
    s.max_page = s.max_page.max(len);
    Response::status(201).into()
}

// ----- Resource Manager -----

fn arm_error(status: u16, code: &str, message: &str) -> Reply {
    Response::json(status, json!({"error": {"code": code, "message": message}}).to_string()).into()
}

fn arm(state: &Mutex<State>, r: &Request) -> Reply {
    match r.header("authorization") {
        Some(a) if a == format!("Bearer {TOKEN}") => {}
        Some(a) if a == format!("Bearer {EXPIRED_TOKEN}") => {
            return arm_error(
                401,
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time '12/7/2026 1:00:00 PM' is earlier than current UTC time.",
            );
        }
        Some(_) => return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid."),
        None => {
            return arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
    }
    if query(r, "api-version").is_none() {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let parts: Vec<&str> = r.path().split('/').collect();
    // /subscriptions/S/providers/Microsoft.Compute/locations/L/operations/NAME
    if parts.len() == 9 && parts[5] == "locations" && parts[7] == "operations" {
        let mut s = lock(state);
        let Some(img) = s.images.get_mut(parts[8]) else { return arm_error(404, "NotFound", "no such operation") };
        advance(img);
        return match img.state.as_str() {
            // Resource Manager says when to ask again; the fake says "now".
            "Creating" => Response::json(200, json!({"status": "InProgress"}).to_string()).header("Retry-After", "0").into(),
            "Succeeded" => Response::json(200, json!({"status": "Succeeded"}).to_string()).into(),
            _ => Response::json(
                200,
                json!({"status": "Failed", "error": {"code": "InternalOperationError", "message": img.fail.clone().unwrap_or_default()}}).to_string(),
            )
            .into(),
        };
    }
    // /subscriptions/S/providers/Microsoft.Compute/locations/L/operationresults/NAME: 202 until done.
    if parts.len() == 9 && parts[5] == "locations" && parts[7] == "operationresults" {
        let mut s = lock(state);
        let Some(img) = s.images.get_mut(parts[8]) else { return arm_error(404, "NotFound", "no such operation") };
        advance(img);
        return match img.state.as_str() {
            "Creating" => Response::status(202).header("Retry-After", "0").into(),
            _ => Response::status(200).into(),
        };
    }
    // /subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/images/NAME
    if parts.len() != 9
        || parts[3] != "resourceGroups"
        || parts[5] != "providers"
        || parts[6] != "Microsoft.Compute"
        || parts[7] != "images"
    {
        return arm_error(404, "InvalidResourceType", "The resource type could not be found.");
    }
    let (sub, name) = (parts[2].to_string(), parts[8].to_string());
    let id = r.path().to_string();
    let mut s = lock(state);
    match r.method.as_str() {
        "GET" => match s.images.get_mut(&name) {
            Some(img) => {
                advance(img);
                Response::json(200, image_json(&id, img).to_string()).into()
            }
            None => arm_error(
                404,
                "ResourceNotFound",
                &format!("The Resource 'Microsoft.Compute/images/{name}' was not found."),
            ),
        },
        "DELETE" => {
            s.images.remove(&name);
            Response::status(200).into()
        }
        "PUT" => {
            let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
                return arm_error(400, "InvalidRequestContent", "not JSON");
            };
            let p = &body["properties"];
            let disk = &p["storageProfile"]["osDisk"];
            if body["location"].as_str().is_none_or(str::is_empty) {
                return arm_error(400, "LocationRequired", "The location property is required for this definition.");
            }
            if p["hyperVGeneration"] != "V2" {
                return arm_error(
                    400,
                    "InvalidParameter",
                    "hyperVGeneration must be V2 for a UEFI image (the fake's rule).",
                );
            }
            if disk["osType"] != "Linux" || disk["osState"] != "Generalized" {
                return arm_error(400, "InvalidParameter", "osType Linux and osState Generalized expected.");
            }
            let uri = disk["blobUri"].as_str().unwrap_or("");
            let prefix = format!("http://127.0.0.1:{}", s.port);
            let blob_path = uri.strip_prefix(&prefix).unwrap_or("");
            match s.blobs.get(blob_path) {
                Some(b) if (b.data.len() - 512) % (1 << 20) == 0 && b.data.len() > 512 => {}
                Some(b) => {
                    return arm_error(
                        400,
                        "InvalidParameter",
                        &format!(
                            "The VHD {uri} has an unsupported virtual size of {} bytes. The size must be a whole number (in MBs).",
                            b.data.len() - 512
                        ),
                    );
                }
                None => return arm_error(400, "InvalidParameter", &format!("The blob {uri} does not exist.")),
            }
            if let Some(existing) = s.images.get(&name)
                && existing.body["properties"]["storageProfile"]["osDisk"]["blobUri"] != disk["blobUri"]
            {
                return arm_error(409, "PropertyChangeNotAllowed", "Changing property 'blobUri' is not allowed.");
            }
            let fail = s.fail_next_image.take();
            s.image_puts.push(body.clone());
            let img = Image { body, state: "Creating".to_string(), polls_left: 2, fail };
            let json = image_json(&id, &img);
            s.images.insert(name.clone(), img);
            let location = json["location"].as_str().unwrap_or("").to_string();
            let op = format!(
                "{prefix}/subscriptions/{sub}/providers/Microsoft.Compute/locations/{location}/operations/{name}?api-version=2023-09-01"
            );
            if s.location_mode {
                let results = op.replace("/operations/", "/operationresults/");
                return Response::status(202).header("Location", results).into();
            }
            Response::json(201, json.to_string()).header("Azure-AsyncOperation", op).into()
        }
        _ => arm_error(405, "MethodNotAllowed", "not served"),
    }
}

/// A poll moves a creating image on; after its polls it is Succeeded, or Failed when told.
fn advance(img: &mut Image) {
    if img.state == "Creating" {
        if img.polls_left == 0 {
            img.state = if img.fail.is_some() { "Failed".to_string() } else { "Succeeded".to_string() };
        } else {
            img.polls_left -= 1;
        }
    }
}

fn image_json(id: &str, img: &Image) -> Value {
    let mut v = img.body.clone();
    v["id"] = json!(id);
    v["name"] = json!(id.rsplit('/').next().unwrap_or(""));
    v["type"] = json!("Microsoft.Compute/images");
    v["properties"]["provisioningState"] = json!(img.state);
    if let Some(m) = &img.fail
        && img.state == "Failed"
    {
        v["properties"]["error"] = json!({"code": "InternalOperationError", "message": m});
    }
    v
}
