//! A strict fake of the Google APIs `berth upload gce` calls, for what no local emulator covers
//! (the token endpoint, Compute Engine images and operations) and for the faults no emulator
//! makes (a connection dropped mid-chunk, a server failing from some chunk on). Written from the
//! API references, refusing what the services refuse:
//!
//! - OAuth 2.0 token endpoint (developers.google.com/identity/protocols/oauth2/service-account,
//!   RFC 7523): `grant_type` jwt-bearer, the assertion's RS256 signature verified with the test
//!   key's public key, `iss`, `aud` (this endpoint), `scope` (storage read-write and compute),
//!   `iat`/`exp` at most an hour apart and now inside them; else `400 invalid_grant`.
//! - Cloud Storage JSON API: `objects.get` (and `alt=media`), the resumable upload
//!   (cloud.google.com/storage/docs/performing-resumable-uploads): a chunk must start where the
//!   persisted bytes end and, unless last, be a multiple of 256 KiB; `bytes */TOTAL` status
//!   queries answered `308` with `Range` (none when nothing is persisted) or the finished object;
//!   a CRC32C given with the metadata checked against the bytes.
//! - Compute Engine: `images.get`, `images.insert` (a valid name, `rawDisk.source` an object that
//!   exists, `409 alreadyExists` for a name taken, `requestId` honoured), `images.delete`,
//!   `globalOperations.get` (PENDING, RUNNING, then DONE, with an error when told to fail).
//! - Every call but the token endpoint needs `Authorization: Bearer` with a token it issued
//!   (401 otherwise).
//!
//! [`TestKey`] makes the RSA key the tests sign with (`openssl genpkey`, at test time: no key is
//! committed) and the service-account key file around it.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_testkit::{Reply, Request, Response, Server};
use serde_json::{Value, json};

use crate::support::{form, lock, percent_decode};

/// The project the fake knows.
pub const PROJECT: &str = "berth-test";
/// The service account of the test key.
pub const CLIENT_EMAIL: &str = "uploader@berth-test.iam.gserviceaccount.com";
/// What every intermediate chunk must be a multiple of.
pub const GRANULE: usize = 256 << 10;
const SCOPE_STORAGE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
const SCOPE_COMPUTE: &str = "https://www.googleapis.com/auth/compute";

/// An RSA key made for the test, and its public half as the fake verifies with it.
pub struct TestKey {
    /// The private key, PEM PKCS #8.
    pub pem: String,
    /// The public key, DER RSAPublicKey (what ring verifies with).
    pub public_der: Vec<u8>,
}

impl TestKey {
    /// A fresh 2048-bit key from `openssl genpkey`, made in `dir`.
    pub fn generate(dir: &Path) -> TestKey {
        let path = dir.join(format!("rsa-{}.pem", std::process::id() as u64 * 1000 + next_serial()));
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&path)
            .output()
            .expect("openssl (scripts/setup-host installs it)");
        assert!(out.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&out.stderr));
        let pem = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body).unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("openssl's key in PKCS #8");
        use ring::signature::KeyPair;
        TestKey { pem, public_der: pair.public_key().as_ref().to_vec() }
    }

    /// A service-account key file at `path` for this key, its token endpoint `token_uri`.
    pub fn write_key_file(&self, path: &Path, token_uri: &str) -> PathBuf {
        let key = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": self.pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        std::fs::write(path, serde_json::to_string_pretty(&key).unwrap()).unwrap();
        path.to_path_buf()
    }
}

fn next_serial() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Faults the fake injects when told to.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// `(method, path fragment, status, times)`: the next `times` requests with that method
    /// whose path contains the fragment are answered `status`.
    pub fail: Vec<(String, String, u16, u32)>,
    /// After this many chunks are accepted, every request to an upload session is answered
    /// 503 (a server that stays down).
    pub fail_uploads_after_chunks: Option<usize>,
    /// The Nth chunk (from 1): its first `keep` bytes are persisted and the connection is then
    /// closed without an answer.
    pub drop_chunk: Option<(usize, usize)>,
    /// The Nth chunk (from 1) is persisted, but its answer never comes (the connection stays
    /// silent for a minute): the client process can be killed mid-upload.
    pub stall_chunk: Option<usize>,
    /// The images.insert operation ends with this error.
    pub insert_error: Option<String>,
    /// A failed insert leaves its image in FAILED (else it leaves none).
    pub failed_image_stays: bool,
    /// The finished object is reported with a wrong CRC32C.
    pub lie_crc32c: bool,
    /// The lifetime (`expires_in`) of the tokens issued; 3599 s without it.
    pub token_lifetime: Option<u64>,
    /// The token endpoint's clock is this many seconds ahead.
    pub clock_skew: i64,
}

/// What the fake saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Tokens issued.
    pub tokens_issued: usize,
    /// Token requests refused.
    pub tokens_refused: usize,
    /// Upload sessions started.
    pub sessions_started: usize,
    /// Chunks received (accepted or not).
    pub chunks: usize,
    /// Bytes of chunk bodies received.
    pub chunk_bytes: u64,
    /// `Content-Range` of every chunk, in order.
    pub chunk_ranges: Vec<String>,
    /// Status queries answered.
    pub status_queries: usize,
    /// Bodies of images.insert requests that were accepted.
    pub inserts: Vec<Value>,
    /// images.insert requests refused (400 or 409).
    pub inserts_refused: usize,
    /// Images deleted.
    pub deletes: usize,
    /// Requests answered 401.
    pub unauthorized: usize,
}

#[derive(Debug, Clone)]
struct Object {
    data: Vec<u8>,
    content_type: String,
    generation: u64,
}

#[derive(Debug)]
struct Session {
    bucket: String,
    name: String,
    total: u64,
    data: Vec<u8>,
    crc32c: Option<String>,
    content_type: String,
    done: Option<Value>,
}

#[derive(Debug)]
enum OnDone {
    Insert(String),
    Nothing,
}

#[derive(Debug)]
struct Operation {
    json: Value,
    polls_left: u32,
    on_done: OnDone,
}

#[derive(Default)]
struct State {
    url: String,
    public_key: Vec<u8>,
    tokens: HashSet<String>,
    buckets: HashMap<String, HashMap<String, Object>>,
    sessions: HashMap<String, Session>,
    images: HashMap<String, Value>,
    operations: HashMap<String, Operation>,
    request_ids: HashMap<String, String>,
    faults: Faults,
    stats: Stats,
    serial: u64,
    /// Polls an operation stays unfinished.
    op_polls: u32,
}

/// The running fake.
pub struct GceFake {
    server: Server,
    state: Arc<Mutex<State>>,
}

impl GceFake {
    /// A fake that trusts `public_der` (a [`TestKey`]'s) for [`CLIENT_EMAIL`], with `buckets`.
    pub fn start(public_der: &[u8], buckets: &[&str]) -> GceFake {
        let state = Arc::new(Mutex::new(State { public_key: public_der.to_vec(), op_polls: 2, ..State::default() }));
        for b in buckets {
            lock(&state).buckets.insert(b.to_string(), HashMap::new());
        }
        let handler_state = state.clone();
        let server = Server::start(move |r| handle(&handler_state, r)).expect("fake server");
        lock(&state).url = server.url();
        GceFake { server, state }
    }

    /// `http://127.0.0.1:PORT`: every API's endpoint.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The token endpoint (a key file's `token_uri`).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.url())
    }

    /// A token the fake takes, as if given by `gcloud auth print-access-token`.
    pub fn issue_token(&self) -> String {
        let mut s = lock(&self.state);
        s.serial += 1;
        let t = format!("ya29.given-{}", s.serial);
        s.tokens.insert(t.clone());
        t
    }

    /// Every upload session is forgotten (as GCS forgets one after a week): asked, it is 404.
    pub fn forget_sessions(&self) {
        lock(&self.state).sessions.clear();
    }

    /// Every token issued so far stops being accepted.
    pub fn expire_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    /// Changes the faults.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.state).faults);
    }

    /// New operations stay unfinished for this many calls to Compute Engine.
    pub fn set_op_polls(&self, n: u32) {
        lock(&self.state).op_polls = n;
    }

    /// Every unfinished operation finishes within `n` more calls.
    pub fn finish_operations_within(&self, n: u32) {
        for op in lock(&self.state).operations.values_mut() {
            op.polls_left = op.polls_left.min(n);
        }
    }

    /// What the fake saw.
    pub fn stats(&self) -> Stats {
        lock(&self.state).stats.clone()
    }

    /// The object's bytes.
    pub fn object(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        lock(&self.state).buckets.get(bucket)?.get(name).map(|o| o.data.clone())
    }

    /// Puts an object as if uploaded before.
    pub fn put_object(&self, bucket: &str, name: &str, data: Vec<u8>) {
        let mut s = lock(&self.state);
        s.serial += 1;
        let generation = s.serial;
        s.buckets
            .entry(bucket.into())
            .or_default()
            .insert(name.into(), Object { data, content_type: "application/gzip".into(), generation });
    }

    /// The images there are, by name.
    pub fn images(&self) -> HashMap<String, Value> {
        lock(&self.state).images.clone()
    }

    /// Every request seen.
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

fn now(skew: i64) -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64) + skew
}

/// A Google API error answer.
fn google_error(status: u16, reason: &str, message: &str) -> Reply {
    Response::json(
        status,
        json!({"error": {"code": status, "message": message, "errors": [{"domain": "global", "reason": reason, "message": message}]}})
            .to_string(),
    )
    .into()
}

/// The query's parameters, decoded.
fn query(target: &str) -> HashMap<String, String> {
    let q = target.split_once('?').map_or("", |(_, q)| q);
    form(q)
}

fn crc32c_b64(data: &[u8]) -> String {
    STANDARD.encode(crc32c::crc32c(data).to_be_bytes())
}

fn handle(state: &Mutex<State>, r: &Request) -> Reply {
    let mut s = lock(state);
    let path = r.path().to_string();
    // Injected failures (a server having a bad moment).
    let hit = s
        .faults
        .fail
        .iter_mut()
        .find(|(m, frag, _, times)| *m == r.method && path.contains(frag.as_str()) && *times > 0);
    if let Some((_, _, status, times)) = hit {
        *times -= 1;
        let status = *status;
        return google_error(status, "backendError", "injected failure");
    }
    if r.method == "POST" && path == "/token" {
        return token(&mut s, r);
    }
    let authorized =
        r.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).is_some_and(|t| s.tokens.contains(t));
    if !authorized {
        s.stats.unauthorized += 1;
        return google_error(
            401,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    if let Some(rest) = path.strip_prefix("/upload/storage/v1/b/") {
        let Some(bucket) = rest.strip_suffix("/o") else { return google_error(404, "notFound", "Not Found") };
        let bucket = percent_decode(bucket);
        let q = query(&r.target);
        return match (r.method.as_str(), q.get("upload_id")) {
            ("POST", None) => start_session(&mut s, r, &bucket, &q),
            ("PUT", Some(id)) => session_put(&mut s, r, id),
            _ => google_error(400, "invalid", "unsupported upload request"),
        };
    }
    if let Some(rest) = path.strip_prefix("/storage/v1/b/") {
        let Some((bucket, name)) = rest.split_once("/o/") else { return google_error(404, "notFound", "Not Found") };
        let (bucket, name) = (percent_decode(bucket), percent_decode(name));
        if r.method != "GET" {
            return google_error(405, "methodNotAllowed", "only GET here");
        }
        let Some(b) = s.buckets.get(&bucket) else {
            return google_error(404, "notFound", "The specified bucket does not exist.");
        };
        let Some(o) = b.get(&name) else {
            return google_error(404, "notFound", &format!("No such object: {bucket}/{name}"));
        };
        if query(&r.target).get("alt").map(String::as_str) == Some("media") {
            return Response::ok(o.data.clone()).into();
        }
        let url = s.url.clone();
        return Response::json(200, object_json(&url, &bucket, &name, o, false).to_string()).into();
    }
    if let Some(rest) = path.strip_prefix("/compute/v1/projects/") {
        let Some((project, rest)) = rest.split_once("/global/") else {
            return google_error(404, "notFound", "Not Found");
        };
        if project != PROJECT {
            return google_error(404, "notFound", &format!("The resource 'projects/{project}' was not found"));
        }
        // Time passes in the cloud: each call to it moves every unfinished operation on a step.
        advance_operations(&mut s);
        return match (r.method.as_str(), rest.split_once('/')) {
            ("POST", None) if rest == "images" => insert_image(&mut s, r),
            ("GET", Some(("images", name))) => get_image(&s, name),
            ("DELETE", Some(("images", name))) => delete_image(&mut s, name),
            ("GET", Some(("operations", name))) => poll_operation(&mut s, name),
            _ => google_error(404, "notFound", "Not Found"),
        };
    }
    google_error(404, "notFound", "Not Found")
}

fn object_json(url: &str, bucket: &str, name: &str, o: &Object, lie: bool) -> Value {
    let crc = if lie { crc32c_b64(b"not these bytes") } else { crc32c_b64(&o.data) };
    json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{name}/{}", o.generation),
        "selfLink": format!("{url}/storage/v1/b/{bucket}/o/{name}"),
        "name": name,
        "bucket": bucket,
        "generation": o.generation.to_string(),
        "contentType": o.content_type,
        "size": o.data.len().to_string(),
        "crc32c": crc,
    })
}

fn invalid_grant(s: &mut State, description: &str) -> Reply {
    s.stats.tokens_refused += 1;
    Response::json(400, json!({"error": "invalid_grant", "error_description": description}).to_string()).into()
}

fn token(s: &mut State, r: &Request) -> Reply {
    if !r.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        return Response::json(400, json!({"error": "invalid_request"}).to_string()).into();
    }
    let f: HashMap<String, String> = form(&String::from_utf8_lossy(&r.body));
    if f.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Response::json(
            400,
            json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}).to_string(),
        )
        .into();
    }
    let Some(jwt) = f.get("assertion") else { return invalid_grant(s, "Invalid JWT: no assertion") };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return invalid_grant(s, "Invalid JWT: not three parts");
    }
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).ok();
    let (Some(h), Some(c), Some(sig)) = (decode(parts[0]), decode(parts[1]), decode(parts[2])) else {
        return invalid_grant(s, "Invalid JWT: not base64url");
    };
    let (Ok(header), Ok(claims)) = (serde_json::from_slice::<Value>(&h), serde_json::from_slice::<Value>(&c)) else {
        return invalid_grant(s, "Invalid JWT: not JSON");
    };
    if header["alg"] != "RS256" {
        return invalid_grant(s, "Invalid JWT: alg must be RS256");
    }
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &s.public_key);
    let signed = format!("{}.{}", parts[0], parts[1]);
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return invalid_grant(s, "Invalid JWT Signature.");
    }
    if claims["iss"] != CLIENT_EMAIL {
        return invalid_grant(s, "Invalid JWT: unknown issuer");
    }
    if claims["aud"] != format!("{}/token", s.url) {
        return invalid_grant(s, "Invalid JWT: aud is not the token endpoint");
    }
    let scopes: HashSet<&str> = claims["scope"].as_str().unwrap_or("").split(' ').collect();
    if !scopes.contains(SCOPE_STORAGE) || !scopes.contains(SCOPE_COMPUTE) {
        return invalid_grant(s, "Invalid JWT: scope must include devstorage.read_write and compute");
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return invalid_grant(s, "Invalid JWT: iat and exp must be numbers");
    };
    let t = now(s.faults.clock_skew);
    if exp - iat > 3600 || exp <= t || iat > t + 60 {
        return invalid_grant(
            s,
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    s.serial += 1;
    let token = format!("ya29.fake-{}", s.serial);
    s.tokens.insert(token.clone());
    s.stats.tokens_issued += 1;
    let lifetime = s.faults.token_lifetime.unwrap_or(3599);
    Response::json(200, json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}).to_string())
        .into()
}

fn start_session(s: &mut State, r: &Request, bucket: &str, q: &HashMap<String, String>) -> Reply {
    if q.get("uploadType").map(String::as_str) != Some("resumable") {
        return google_error(400, "invalid", "uploadType must be resumable here");
    }
    if !s.buckets.contains_key(bucket) {
        return google_error(404, "notFound", "The specified bucket does not exist.");
    }
    let meta: Value = if r.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(_) => return google_error(400, "parseError", "Parse Error"),
        }
    };
    let Some(name) = q.get("name").cloned().or_else(|| meta["name"].as_str().map(str::to_string)) else {
        return google_error(400, "required", "Required object name");
    };
    let Some(total) = r.header("x-upload-content-length").and_then(|v| v.parse().ok()) else {
        // The real service takes uploads of unknown length; the client always knows its length.
        return google_error(400, "required", "X-Upload-Content-Length required by this fake");
    };
    let content_type = r.header("x-upload-content-type").unwrap_or("application/octet-stream").to_string();
    s.serial += 1;
    let id = format!("fake-session-{}", s.serial);
    s.sessions.insert(
        id.clone(),
        Session {
            bucket: bucket.into(),
            name: name.clone(),
            total,
            data: Vec::new(),
            crc32c: meta["crc32c"].as_str().map(str::to_string),
            content_type,
            done: None,
        },
    );
    s.stats.sessions_started += 1;
    let location =
        format!("{}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&name={}&upload_id={id}", s.url, q_enc(&name));
    Response::status(200).header("Location", location).into()
}

fn q_enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `308` with the persisted range, none when nothing is.
fn incomplete(persisted: usize) -> Reply {
    let r = Response::status(308);
    if persisted == 0 { r.into() } else { r.header("Range", format!("bytes=0-{}", persisted - 1)).into() }
}

fn session_put(s: &mut State, r: &Request, id: &str) -> Reply {
    if s.faults.fail_uploads_after_chunks.is_some_and(|n| s.stats.chunks >= n) {
        return google_error(503, "backendError", "Service Unavailable (injected: the server stays down)");
    }
    let url = s.url.clone();
    let lie = s.faults.lie_crc32c;
    let drop_chunk = s.faults.drop_chunk;
    let Some(session) = s.sessions.get_mut(id) else { return google_error(404, "notFound", "No such upload session") };
    let Some(range) = r.header("content-range").and_then(|c| c.strip_prefix("bytes ")) else {
        return google_error(400, "invalid", "Content-Range required");
    };
    let Some((span, total)) = range.split_once('/') else { return google_error(400, "invalid", "bad Content-Range") };
    if total.parse::<u64>().ok() != Some(session.total) {
        return google_error(
            400,
            "invalid",
            &format!("Content-Range total {total} is not the session's {}", session.total),
        );
    }
    if span == "*" {
        s.stats.status_queries += 1;
        if !r.body.is_empty() {
            return google_error(400, "invalid", "a status query has no body");
        }
        if let Some(done) = &session.done {
            return Response::json(200, done.to_string()).into();
        }
        return incomplete(session.data.len());
    }
    let Some((Ok(start), Ok(end))) = span.split_once('-').map(|(a, b)| (a.parse::<usize>(), b.parse::<usize>())) else {
        return google_error(400, "invalid", "bad Content-Range");
    };
    s.stats.chunks += 1;
    s.stats.chunk_bytes += r.body.len() as u64;
    s.stats.chunk_ranges.push(format!("bytes {range}"));
    let chunk_number = s.stats.chunks;
    let Some(session) = s.sessions.get_mut(id) else { return google_error(404, "notFound", "No such upload session") };
    if let Some(done) = &session.done {
        return Response::json(200, done.to_string()).into();
    }
    if end < start || r.body.len() != end - start + 1 {
        return google_error(400, "invalid", "the body's length is not the Content-Range's");
    }
    if start != session.data.len() {
        return google_error(
            400,
            "invalid",
            &format!("Invalid request. The upload offset is {start}, but the server has {} bytes", session.data.len()),
        );
    }
    let last = (end + 1) as u64 == session.total;
    if (end + 1) as u64 > session.total {
        return google_error(400, "invalid", "the chunk ends past the total");
    }
    if !last && !r.body.len().is_multiple_of(GRANULE) {
        return google_error(
            400,
            "invalid",
            "Invalid request. The number of bytes uploaded is required to be equal or greater than 262144, except for \
             the final request (it's recommended to be the exact multiple of 262144).",
        );
    }
    if let Some((n, keep)) = drop_chunk
        && n == chunk_number
    {
        session.data.extend_from_slice(&r.body[..keep.min(r.body.len())]);
        // No answer: the connection is closed after the request was read.
        return Reply::Raw(Vec::new());
    }
    session.data.extend_from_slice(&r.body);
    if s.faults.stall_chunk == Some(chunk_number) {
        return Reply::stream(|_| std::thread::sleep(std::time::Duration::from_secs(60)));
    }
    if !last {
        return incomplete(session.data.len());
    }
    let crc = crc32c_b64(&session.data);
    if let Some(declared) = &session.crc32c
        && *declared != crc
    {
        return google_error(
            400,
            "invalid",
            &format!("Provided CRC32C \"{declared}\" doesn't match calculated CRC32C \"{crc}\"."),
        );
    }
    let data = std::mem::take(&mut session.data);
    let (bucket, name, content_type) = (session.bucket.clone(), session.name.clone(), session.content_type.clone());
    s.serial += 1;
    let o = Object { data, content_type, generation: s.serial };
    let body = object_json(&url, &bucket, &name, &o, lie);
    s.buckets.entry(bucket).or_default().insert(name, o);
    if let Some(session) = s.sessions.get_mut(id) {
        session.done = Some(body.clone());
    }
    Response::json(200, body.to_string()).into()
}

fn image_url(s: &State, name: &str) -> String {
    format!("{}/compute/v1/projects/{PROJECT}/global/images/{name}", s.url)
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

fn new_operation(s: &mut State, kind: &str, target: &str, on_done: OnDone, polls: u32) -> Value {
    s.serial += 1;
    let name = format!("operation-{}-{kind}", s.serial);
    let json = json!({
        "kind": "compute#operation",
        "id": s.serial.to_string(),
        "name": name,
        "operationType": kind,
        "targetLink": target,
        "status": if polls == 0 { "DONE" } else { "PENDING" },
        "progress": 0,
        "selfLink": format!("{}/compute/v1/projects/{PROJECT}/global/operations/{name}", s.url),
    });
    s.operations.insert(name, Operation { json: json.clone(), polls_left: polls, on_done });
    json
}

fn insert_image(s: &mut State, r: &Request) -> Reply {
    let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
        s.stats.inserts_refused += 1;
        return google_error(400, "parseError", "Parse Error");
    };
    if let Some(rid) = query(&r.target).get("requestId")
        && let Some(op) = s.request_ids.get(rid).and_then(|n| s.operations.get(n))
    {
        // The same request again: the same operation.
        return Response::json(200, op.json.to_string()).into();
    }
    let name = body["name"].as_str().unwrap_or("").to_string();
    if !valid_name(&name) {
        s.stats.inserts_refused += 1;
        return google_error(400, "invalid", &format!("Invalid value for field 'resource.name': '{name}'."));
    }
    let source = body["rawDisk"]["source"].as_str().unwrap_or("");
    let object = source.strip_prefix("https://storage.googleapis.com/").and_then(|p| p.split_once('/'));
    let found = object.and_then(|(b, o)| s.buckets.get(&percent_decode(b))?.get(&percent_decode(o)).cloned());
    let Some(found) = found else {
        s.stats.inserts_refused += 1;
        return google_error(
            400,
            "invalid",
            &format!("Invalid value for field 'resource.rawDisk.source': '{source}'. The object does not exist."),
        );
    };
    if s.images.contains_key(&name) {
        s.stats.inserts_refused += 1;
        return google_error(
            409,
            "alreadyExists",
            &format!("The resource 'projects/{PROJECT}/global/images/{name}' already exists"),
        );
    }
    s.serial += 1;
    let link = image_url(s, &name);
    let mut image = json!({
        "kind": "compute#image",
        "id": s.serial.to_string(),
        "name": name,
        "selfLink": link,
        "status": "PENDING",
        "sourceType": "RAW",
        "rawDisk": {"source": source, "containerType": "TAR"},
        "archiveSizeBytes": found.data.len().to_string(),
        "guestOsFeatures": body["guestOsFeatures"],
        "architecture": body["architecture"],
        "description": body["description"],
    });
    for field in ["family", "labels"] {
        if let Some(v) = body.get(field) {
            image[field] = v.clone();
        }
    }
    s.images.insert(name.clone(), image);
    s.stats.inserts.push(body);
    let polls = s.op_polls;
    let op = new_operation(s, "insert", &link, OnDone::Insert(name), polls);
    if let Some(rid) = query(&r.target).get("requestId") {
        s.request_ids.insert(rid.clone(), op["name"].as_str().unwrap_or("").to_string());
    }
    Response::json(200, op.to_string()).into()
}

fn get_image(s: &State, name: &str) -> Reply {
    match s.images.get(&percent_decode(name)) {
        Some(i) => Response::json(200, i.to_string()).into(),
        None => google_error(
            404,
            "notFound",
            &format!("The resource 'projects/{PROJECT}/global/images/{name}' was not found"),
        ),
    }
}

fn delete_image(s: &mut State, name: &str) -> Reply {
    let name = percent_decode(name);
    if s.images.remove(&name).is_none() {
        return google_error(
            404,
            "notFound",
            &format!("The resource 'projects/{PROJECT}/global/images/{name}' was not found"),
        );
    }
    s.stats.deletes += 1;
    let link = image_url(s, &name);
    let op = new_operation(s, "delete", &link, OnDone::Nothing, 1);
    Response::json(200, op.to_string()).into()
}

fn poll_operation(s: &mut State, name: &str) -> Reply {
    match s.operations.get(name) {
        Some(op) => Response::json(200, op.json.to_string()).into(),
        None => google_error(
            404,
            "notFound",
            &format!("The resource 'projects/{PROJECT}/global/operations/{name}' was not found"),
        ),
    }
}

/// One step of every unfinished operation: PENDING → RUNNING … → DONE (with its image READY,
/// or the error the faults name).
fn advance_operations(s: &mut State) {
    let insert_error = s.faults.insert_error.clone();
    let stays = s.faults.failed_image_stays;
    let mut finished = Vec::new();
    for op in s.operations.values_mut() {
        if op.json["status"] == "DONE" {
            continue;
        }
        if op.polls_left > 0 {
            op.polls_left -= 1;
            op.json["status"] = "RUNNING".into();
            op.json["progress"] = 50.into();
            continue;
        }
        op.json["status"] = "DONE".into();
        op.json["progress"] = 100.into();
        let on_done = std::mem::replace(&mut op.on_done, OnDone::Nothing);
        if let OnDone::Insert(image) = on_done {
            if let Some(message) = &insert_error {
                op.json["error"] = json!({"errors": [{"code": "IMAGE_IMPORT_FAILED", "message": message}]});
                op.json["httpErrorStatusCode"] = 400.into();
                op.json["httpErrorMessage"] = "BAD REQUEST".into();
            }
            finished.push(image);
        }
    }
    for image in finished {
        match (&insert_error, stays) {
            (None, _) => {
                if let Some(i) = s.images.get_mut(&image) {
                    i["status"] = "READY".into();
                }
            }
            (Some(_), true) => {
                if let Some(i) = s.images.get_mut(&image) {
                    i["status"] = "FAILED".into();
                }
            }
            (Some(_), false) => {
                s.images.remove(&image);
            }
        }
    }
}
