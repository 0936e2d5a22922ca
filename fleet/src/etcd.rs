//! A client of etcd's v3 API through its gRPC gateway (JSON over HTTP, served by etcd 3.4 and
//! later under `/v3/`), on Berth's one HTTP client. Every call is a `POST` of a JSON body; the
//! gateway's quirks are handled here once:
//!
//! - keys and values are base64 (standard alphabet, padded);
//! - 64-bit integers come back as JSON strings (`"revision":"7"`) and are sent as strings;
//! - zero values are omitted (a failed transaction has no `succeeded`, an empty range no `kvs`),
//!   so every field defaults;
//! - the lease calls spell `ID` and `TTL` in capitals (a lower-case `ttl` is ignored and grants a
//!   lease of about 2 s);
//! - an error is an HTTP status with `{"error","message","code"}` (the gRPC code).
//!
//! Several endpoints (the members of a cluster) may be given: a call that cannot connect to one
//! goes to the next, and the one that answered is used first afterwards. With a user and
//! password, a token from `/v3/auth/authenticate` is sent in `Authorization` and fetched again
//! when etcd says it is no longer valid.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// How long one call may take unless told otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read (a page of a range is far smaller).
const ANSWER_LIMIT: u64 = 64 << 20;

/// gRPC codes etcd answers with.
pub mod code {
    /// A bad request (bad base64, a bad field).
    pub const INVALID_ARGUMENT: i64 = 3;
    /// No such lease.
    pub const NOT_FOUND: i64 = 5;
    /// The revision asked for is compacted, or in the future.
    pub const OUT_OF_RANGE: i64 = 11;
    /// No leader, a timeout: worth another endpoint or a retry.
    pub const UNAVAILABLE: i64 = 14;
    /// A missing or expired auth token.
    pub const UNAUTHENTICATED: i64 = 16;
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (each tried once, or twice when a pooled connection had gone stale).
    #[error("etcd at {endpoint} did not answer: {reason}")]
    Unavailable {
        /// The last endpoint tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// etcd answered with an error: the HTTP status, etcd's gRPC code and message.
    #[error("etcd at {endpoint} answered {status} to {path}: {message}")]
    Api {
        /// The endpoint.
        endpoint: String,
        /// The call's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// etcd's gRPC code (0 when the body had none).
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("etcd at {endpoint} answered {path} with something unreadable: {reason}")]
    Decode {
        /// The endpoint.
        endpoint: String,
        /// The call's path.
        path: String,
        /// Why.
        reason: String,
    },
}

impl EtcdError {
    /// etcd's gRPC code, when it answered with an error.
    pub fn code(&self) -> Option<i64> {
        match self {
            EtcdError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// etcd could not serve the call now (no answer, no leader, a 5xx): worth a retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            EtcdError::Unavailable { .. } => true,
            EtcdError::Api { status, code, .. } => *status >= 500 || *code == code::UNAVAILABLE,
            EtcdError::Decode { .. } => false,
        }
    }
}

/// A user and password for etcd's auth (`etcdctl user add`, `auth enable`).
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, password: <hidden> }}", self.user)
    }
}

/// A key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct KeyValue {
    /// The key.
    #[serde(deserialize_with = "base64_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
    /// The revision that created the key (in its current life).
    #[serde(deserialize_with = "int")]
    pub create_revision: u64,
    /// The revision of its last change.
    #[serde(deserialize_with = "int")]
    pub mod_revision: u64,
    /// Changes since it was created (1 for a new key).
    #[serde(deserialize_with = "int")]
    pub version: u64,
    /// The lease it is attached to (0: none).
    #[serde(deserialize_with = "int")]
    pub lease: i64,
}

/// The header every answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct Header {
    /// The store's revision when the call was served.
    #[serde(deserialize_with = "int")]
    pub revision: u64,
    /// The cluster's id.
    #[serde(deserialize_with = "int")]
    pub cluster_id: u64,
    /// The answering member's id.
    #[serde(deserialize_with = "int")]
    pub member_id: u64,
}

/// The answer to a range.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct RangeResponse {
    /// Its header.
    pub header: Header,
    /// The keys found (absent when none).
    pub kvs: Vec<KeyValue>,
    /// More keys match than the limit let through.
    pub more: bool,
    /// How many keys match.
    #[serde(deserialize_with = "int")]
    pub count: u64,
}

/// A range: one key, or `[key, range_end)`, at a revision or the latest.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// The first key.
    pub key: Vec<u8>,
    /// The end (exclusive); empty for the one key.
    pub range_end: Vec<u8>,
    /// The revision to read at (0: the latest).
    pub revision: u64,
    /// At most this many keys (0: all).
    pub limit: u64,
    /// Keys and revisions only.
    pub keys_only: bool,
}

impl Range {
    /// The one key.
    pub fn key(key: impl Into<Vec<u8>>) -> Range {
        Range { key: key.into(), ..Range::default() }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Range {
        let key = prefix.into();
        Range { range_end: prefix_end(&key), key, ..Range::default() }
    }

    /// At `revision`.
    #[must_use]
    pub fn at(mut self, revision: u64) -> Range {
        self.revision = revision;
        self
    }

    fn to_json(&self) -> Value {
        let mut v = json!({ "key": B64.encode(&self.key) });
        if !self.range_end.is_empty() {
            v["range_end"] = json!(B64.encode(&self.range_end));
        }
        if self.revision > 0 {
            v["revision"] = json!(self.revision.to_string());
        }
        if self.limit > 0 {
            v["limit"] = json!(self.limit.to_string());
        }
        if self.keys_only {
            v["keys_only"] = json!(true);
        }
        v
    }
}

/// The end of the range holding every key that starts with `prefix`: the prefix with its last
/// byte below 0xff incremented (`[0]`, every key, for an empty or all-0xff prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A transaction's condition on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last change was at this revision (the compare-and-swap of every change here).
    ModRevision(Vec<u8>, u64),
    /// The key does not exist (its create revision is 0).
    Absent(Vec<u8>),
}

impl Compare {
    fn to_json(&self) -> Value {
        match self {
            Compare::ModRevision(k, r) => {
                json!({"key": B64.encode(k), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()})
            }
            Compare::Absent(k) => {
                json!({"key": B64.encode(k), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            }
        }
    }
}

/// One operation of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Put a value, attached to a lease (0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Read a key.
    Get(Vec<u8>),
    /// Delete a key.
    Delete(Vec<u8>),
}

impl Op {
    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                let mut p = json!({"key": B64.encode(key), "value": B64.encode(value)});
                if *lease != 0 {
                    p["lease"] = json!(lease.to_string());
                }
                json!({ "request_put": p })
            }
            Op::Get(k) => json!({"request_range": {"key": B64.encode(k)}}),
            Op::Delete(k) => json!({"request_delete_range": {"key": B64.encode(k)}}),
        }
    }
}

/// A transaction: if every compare holds, the success branch runs, else the failure branch.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Run when they all hold.
    pub success: Vec<Op>,
    /// Run otherwise (a read of what changed, so a retry needs no extra call).
    pub failure: Vec<Op>,
}

/// One operation's answer in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct OpResponse {
    /// A read's answer.
    pub response_range: Option<RangeResponse>,
    /// A put's answer (its header).
    pub response_put: Option<Value>,
    /// A delete's answer.
    pub response_delete_range: Option<DeleteResponse>,
}

/// The answer to a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct TxnResponse {
    /// Its header: the revision after a write.
    pub header: Header,
    /// Whether the compares held (absent, so false, when they did not).
    pub succeeded: bool,
    /// The answers of the branch that ran, in order.
    pub responses: Vec<OpResponse>,
}

impl TxnResponse {
    /// The first key a read in the branch that ran found.
    pub fn first_read(&self) -> Option<&KeyValue> {
        self.responses.iter().find_map(|r| r.response_range.as_ref()?.kvs.first())
    }
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct DeleteResponse {
    /// Its header.
    pub header: Header,
    /// How many keys went.
    #[serde(deserialize_with = "int")]
    pub deleted: u64,
}

/// A lease's remaining and granted time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseTtl {
    /// Seconds left (-1: the lease is gone).
    pub ttl: i64,
    /// Seconds it was granted for.
    pub granted_ttl: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LeaseAnswer {
    header: Header,
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", deserialize_with = "int")]
    ttl: i64,
    #[serde(rename = "grantedTTL", deserialize_with = "int")]
    granted_ttl: i64,
    error: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KeepAliveAnswer {
    result: LeaseAnswer,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorAnswer {
    error: String,
    message: String,
    #[serde(deserialize_with = "int")]
    code: i64,
}

/// The client etcd is asked through: no proxy (etcd is the fleet's own, near it), `tls`'s trust.
fn http_client(tls: berth_http::Tls) -> berth_http::Client {
    berth_http::Client::builder(concat!("berth-fleet/", env!("CARGO_PKG_VERSION"))).no_proxy().tls(tls).build()
}

/// A client of one etcd cluster.
pub struct Etcd {
    http: berth_http::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    credentials: Option<Credentials>,
    token: Mutex<Option<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("credentials", &self.credentials).finish()
    }
}

impl Etcd {
    /// A client of the cluster whose members answer at `endpoints` (`http://10.0.0.5:2379`;
    /// `https://` too). At least one.
    pub fn new(endpoints: &[String]) -> Result<Etcd, String> {
        let endpoints: Vec<String> =
            endpoints.iter().map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        if let Some(bad) = endpoints.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            return Err(format!("etcd endpoint {bad:?} must start with http:// or https://"));
        }
        Ok(Etcd {
            http: http_client(berth_http::Tls::default()),
            endpoints,
            current: AtomicUsize::new(0),
            credentials: None,
            token: Mutex::new(None),
            timeout: CALL_TIMEOUT,
        })
    }

    /// Trusts and presents what `tls` says on `https://` endpoints: etcd's own CA instead of the
    /// public roots, and a client certificate for an etcd run with `--client-cert-auth`.
    #[must_use]
    pub fn with_tls(mut self, tls: berth_http::Tls) -> Etcd {
        self.http = http_client(tls);
        self
    }

    /// Authenticates as `credentials` (etcd with `auth enable`).
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Etcd {
        self.credentials = Some(credentials);
        self
    }

    /// How long one call may take.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Etcd {
        self.timeout = timeout;
        self
    }

    /// The endpoints, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint tried first (the last that answered).
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// One call: `POST path` with `body`, the answer decoded.
    pub fn call<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, EtcdError> {
        let (endpoint, bytes) = self.call_raw(path, body)?;
        decode(&endpoint, path, &bytes)
    }

    fn call_raw(&self, path: &str, body: &Value) -> Result<(String, Vec<u8>), EtcdError> {
        let Some(c) = &self.credentials else { return self.send(path, body, None) };
        let token = self.token(c, None)?;
        match self.send(path, body, Some(&token)) {
            Err(e) if e.code() == Some(code::UNAUTHENTICATED) || is_bad_token(&e) => {
                // A simple token lives 5 minutes; fetch another (unless a call in flight at the
                // same time already did) and try once more.
                let fresh = self.token(c, Some(&token))?;
                self.send(path, body, Some(&fresh))
            }
            other => other,
        }
    }

    /// The token held, or a new one when none is held or the one held is `failed` (refused by
    /// etcd): of the calls that find an expired token at once, only the first authenticates,
    /// the others take its token.
    fn token(&self, c: &Credentials, failed: Option<&str>) -> Result<String, EtcdError> {
        let mut held = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = held.as_ref()
            && Some(t.as_str()) != failed
        {
            return Ok(t.clone());
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Token {
            token: String,
        }
        let path = "/v3/auth/authenticate";
        let (endpoint, bytes) = self.send(path, &json!({"name": c.user, "password": c.password}), None)?;
        let t: Token = decode(&endpoint, path, &bytes)?;
        if t.token.is_empty() {
            return Err(EtcdError::Decode { endpoint, path: path.into(), reason: "no token in the answer".into() });
        }
        *held = Some(t.token.clone());
        Ok(t.token)
    }

    /// Sends to the current endpoint; on no answer (or etcd saying it cannot serve), to the
    /// next, each at most twice: a pooled connection to a member that restarted fails once.
    fn send(&self, path: &str, body: &Value, token: Option<&str>) -> Result<(String, Vec<u8>), EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let body = body.to_string();
        let mut last = None;
        for attempt in 0..2 * n {
            let i = (first + attempt) % n;
            let endpoint = &self.endpoints[i];
            let mut call = self
                .http
                .call("POST", &format!("{endpoint}{path}"))
                .header("Content-Type", "application/json")
                .body(body.clone())
                .timeout(self.timeout)
                .limit(ANSWER_LIMIT);
            if let Some(t) = token {
                call = call.header("Authorization", t);
            }
            let err = match call.send() {
                Ok(reply) if reply.is_success() => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((endpoint.clone(), reply.body));
                }
                Ok(reply) => api_error(endpoint, path, reply.status, &reply.body),
                Err(e) => EtcdError::Unavailable { endpoint: endpoint.clone(), reason: e.to_string() },
            };
            if !err.is_unavailable() {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| EtcdError::Unavailable {
            endpoint: self.endpoint().into(),
            reason: "no endpoint".into(),
        }))
    }

    /// A range.
    pub fn range(&self, range: &Range) -> Result<RangeResponse, EtcdError> {
        self.call("/v3/kv/range", &range.to_json())
    }

    /// One key, with the revision the read was served at.
    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), EtcdError> {
        let r = self.range(&Range::key(key))?;
        Ok((r.kvs.into_iter().next(), r.header.revision))
    }

    /// Every key under `prefix` at `revision` (0: the latest, then fixed at the first page's),
    /// read in pages of `page` keys; with the revision read at.
    pub fn get_prefix(&self, prefix: &[u8], revision: u64, page: u64) -> Result<(Vec<KeyValue>, u64), EtcdError> {
        let end = prefix_end(prefix);
        let mut out = Vec::new();
        let mut rev = revision;
        let mut from = prefix.to_vec();
        loop {
            let r =
                self.range(&Range { key: from, range_end: end.clone(), revision: rev, limit: page, keys_only: false })?;
            if rev == 0 {
                rev = r.header.revision;
            }
            let more = r.more;
            out.extend(r.kvs);
            match out.last() {
                Some(last) if more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok((out, rev)),
            }
        }
    }

    /// A put; the revision after it.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<u64, EtcdError> {
        let mut body = json!({"key": B64.encode(key), "value": B64.encode(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Put {
            header: Header,
        }
        Ok(self.call::<Put>("/v3/kv/put", &body)?.header.revision)
    }

    /// Deletes `key`: how many keys went (0 or 1) and the revision after.
    pub fn delete(&self, key: &[u8]) -> Result<DeleteResponse, EtcdError> {
        self.call("/v3/kv/deleterange", &json!({"key": B64.encode(key)}))
    }

    /// A transaction.
    pub fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        let body = json!({
            "compare": txn.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        });
        self.call("/v3/kv/txn", &body)
    }

    /// A lease of `ttl` seconds: its id and the TTL granted.
    pub fn lease_grant(&self, ttl: u64) -> Result<(i64, i64), EtcdError> {
        let path = "/v3/lease/grant";
        let (endpoint, bytes) = self.call_raw(path, &json!({"TTL": ttl.to_string()}))?;
        let a: LeaseAnswer = decode(&endpoint, path, &bytes)?;
        if !a.error.is_empty() || a.id == 0 {
            return Err(EtcdError::Api { endpoint, path: path.into(), status: 200, code: 0, message: a.error });
        }
        Ok((a.id, a.ttl))
    }

    /// Renews a lease: its TTL, or `None` when the lease is gone (the gateway answers 200
    /// without a TTL).
    pub fn lease_keepalive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let path = "/v3/lease/keepalive";
        let (endpoint, bytes) = self.call_raw(path, &json!({"ID": id.to_string()}))?;
        // A stream of messages, one per line; a POST gets one.
        let first = bytes.split(|b| *b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace)).unwrap_or(&[]);
        let a: KeepAliveAnswer = decode(&endpoint, path, first)?;
        Ok((a.result.ttl > 0).then_some(a.result.ttl))
    }

    /// A lease's remaining and granted TTL.
    pub fn lease_ttl(&self, id: i64) -> Result<LeaseTtl, EtcdError> {
        let a: LeaseAnswer = self.call("/v3/lease/timetolive", &json!({"ID": id.to_string()}))?;
        Ok(LeaseTtl { ttl: a.ttl, granted_ttl: a.granted_ttl })
    }

    /// Revokes a lease (its keys go with it).
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: LeaseAnswer = self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))?;
        Ok(())
    }

    /// The cluster's current revision (a read of a key that does not exist).
    pub fn revision(&self, probe_key: &[u8]) -> Result<u64, EtcdError> {
        let r = self.range(&Range { key: probe_key.to_vec(), limit: 1, keys_only: true, ..Range::default() })?;
        Ok(r.header.revision)
    }

    /// Drops history before `revision` (what `--auto-compaction-retention` does).
    pub fn compact(&self, revision: u64) -> Result<(), EtcdError> {
        let _: Value = self.call("/v3/kv/compaction", &json!({"revision": revision.to_string(), "physical": true}))?;
        Ok(())
    }
}

fn is_bad_token(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Api { message, .. } if message.contains("invalid auth token"))
}

fn decode<T: DeserializeOwned>(endpoint: &str, path: &str, bytes: &[u8]) -> Result<T, EtcdError> {
    serde_json::from_slice(bytes).map_err(|e| EtcdError::Decode {
        endpoint: endpoint.to_string(),
        path: path.to_string(),
        reason: format!("{e}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])),
    })
}

fn api_error(endpoint: &str, path: &str, status: u16, body: &[u8]) -> EtcdError {
    let a: ErrorAnswer = serde_json::from_slice(body).unwrap_or_default();
    let message = if !a.message.is_empty() {
        a.message
    } else if !a.error.is_empty() {
        a.error
    } else {
        String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string()
    };
    EtcdError::Api { endpoint: endpoint.to_string(), path: path.to_string(), status, code: a.code, message }
}

/// An int64 as the gateway writes it: a string of digits, or a number.
fn int<'de, D: Deserializer<'de>, T: std::str::FromStr + TryFrom<i64> + TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        U(u64),
        I(i64),
    }
    let bad = || serde::de::Error::custom("an integer out of range");
    match Int::deserialize(d)? {
        Int::S(s) => s.parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not an integer"))),
        Int::U(u) => T::try_from(u).map_err(|_| bad()),
        Int::I(i) => T::try_from(i).map_err(|_| bad()),
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s.as_bytes()).map_err(|e| serde::de::Error::custom(format!("bad base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::{Response, Server};

    #[test]
    fn the_gateways_json_is_read_as_it_comes() {
        // Recorded from etcd 3.4.23: a failed txn has no "succeeded", int64s are strings.
        let failed: TxnResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"418","raft_term":"2"},
            "responses":[{"response_range":{"header":{"revision":"418"},"kvs":[{"key":"YQ==","create_revision":"5","mod_revision":"417","version":"3","value":"dg=="}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(failed.header.revision, 418);
        let kv = failed.first_read().unwrap();
        assert_eq!(
            (kv.key.as_slice(), kv.value.as_slice(), kv.mod_revision, kv.version),
            (&b"a"[..], &b"v"[..], 417, 3)
        );
        let empty: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"7"}}"#).unwrap();
        assert!(empty.kvs.is_empty() && empty.count == 0 && empty.header.revision == 7);
        let ok: TxnResponse =
            serde_json::from_str(r#"{"header":{"revision":"9"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"9"}}}]}"#)
                .unwrap();
        assert!(ok.succeeded);
        let lease: LeaseAnswer = serde_json::from_str(r#"{"ID":"2324035877667794192","TTL":"60"}"#).unwrap();
        assert_eq!((lease.id, lease.ttl), (2_324_035_877_667_794_192, 60));
    }

    #[test]
    fn requests_are_written_as_the_gateway_wants_them() {
        let c = Compare::ModRevision(b"k".to_vec(), 417).to_json();
        assert_eq!(c, json!({"key":"aw==","target":"MOD","result":"EQUAL","mod_revision":"417"}));
        let a = Compare::Absent(b"k".to_vec()).to_json();
        assert_eq!(a["create_revision"], "0");
        let p = Op::Put { key: b"k".to_vec(), value: b"v".to_vec(), lease: 5 }.to_json();
        assert_eq!(p, json!({"request_put":{"key":"aw==","value":"dg==","lease":"5"}}));
        assert_eq!(prefix_end(b"berth.fleet/v1/hosts/"), b"berth.fleet/v1/hosts0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), [0]);
    }

    /// When the token expires under calls in flight, each of them is refused, and only the first
    /// to ask for a new one authenticates; the others take its token.
    #[test]
    fn an_expired_token_is_fetched_again_once_not_once_per_call() {
        use std::sync::Arc;
        // (tokens issued, the ones etcd takes now: every simple token until it expires)
        let state = Arc::new(Mutex::new((0u32, Vec::<String>::new())));
        let st = state.clone();
        let server = Server::start(move |req| match req.path() {
            "/v3/auth/authenticate" => {
                let mut s = st.lock().unwrap();
                s.0 += 1;
                let t = format!("token-{}", s.0);
                s.1.push(t.clone());
                drop(s);
                // Etcd 3.4's authentication is a raft proposal: not instant.
                std::thread::sleep(Duration::from_millis(50));
                Response::json(200, format!(r#"{{"header":{{"revision":"1"}},"token":"{t}"}}"#)).into()
            }
            _ if st.lock().unwrap().1.iter().any(|t| req.header("authorization") == Some(t)) => {
                Response::json(200, r#"{"header":{"revision":"5"}}"#).into()
            }
            _ => {
                // Slow enough that every thread below is refused before any of them retries.
                std::thread::sleep(Duration::from_millis(300));
                Response::json(
                    401,
                    r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
                )
                .into()
            }
        })
        .unwrap();
        let etcd = Etcd::new(&[server.url()])
            .unwrap()
            .with_credentials(Credentials { user: "berth".into(), password: "pw".into() });
        assert_eq!(etcd.get(b"k").unwrap().1, 5);
        assert_eq!(state.lock().unwrap().0, 1);
        state.lock().unwrap().1.clear(); // token-1 expires
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..8).map(|_| s.spawn(|| etcd.get(b"k"))).collect();
            for c in calls {
                assert_eq!(c.join().unwrap().unwrap().1, 5);
            }
        });
        assert_eq!(state.lock().unwrap().0, 2, "one authentication for the eight calls refused at once");
    }

    #[test]
    fn a_refused_endpoint_fails_over_and_errors_carry_etcds_message() {
        let server = Server::start(|req| {
            assert_eq!(req.method, "POST");
            match req.path() {
                "/v3/lease/grant" => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap();
                    assert_eq!(body, json!({"TTL": "60"}), "TTL in capitals, as a string");
                    Response::json(200, r#"{"header":{"revision":"3"},"ID":"77","TTL":"60"}"#).into()
                }
                _ => Response::json(
                    400,
                    r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
                )
                .into(),
            }
        })
        .unwrap();
        // A port nothing listens on comes first.
        let dead = format!(
            "http://127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        );
        let etcd = Etcd::new(&[dead.clone(), server.url()]).unwrap();
        assert_eq!(etcd.lease_grant(60).unwrap(), (77, 60));
        assert_eq!(etcd.endpoint(), server.url(), "the endpoint that answered is used first");
        let e = etcd.range(&Range::key("k").at(2)).unwrap_err();
        assert_eq!(e.code(), Some(code::OUT_OF_RANGE));
        assert!(e.to_string().contains("400") && e.to_string().contains("compacted"), "{e}");
        let only_dead = Etcd::new(std::slice::from_ref(&dead)).unwrap();
        let e = only_dead.get(b"k").unwrap_err();
        assert!(matches!(&e, EtcdError::Unavailable { endpoint, .. } if *endpoint == dead), "{e:?}");
        assert!(Etcd::new(&[]).is_err() && Etcd::new(&["127.0.0.1:2379".into()]).is_err());
    }
}
