//! A strict in-tree fake of the EBS direct APIs and of EC2's image and snapshot calls, on
//! berth_testkit::Server: it refuses what AWS's API references say AWS refuses and moto lets
//! through (moto keeps any block under any checksum, says BlockSize 512, ignores
//! ChangedBlocksCount and the aggregate checksum, and keeps only Name/Description of
//! RegisterImage):
//!
//! - every request's SigV4 `Authorization` is verified with the secret the fake knows
//!   (canonical request rebuilt from what arrived; every `x-amz-*` header must be signed), the
//!   credential scope's service and region too; a wrong signature is 403 (EBS
//!   `InvalidSignatureException`, EC2 `SignatureDoesNotMatch`), an unknown key 403/401, a session
//!   token marked expired `ExpiredTokenException` (EBS, 403) / `ExpiredToken` (EC2, 400);
//! - `StartSnapshot`: VolumeSize 1–65536, Timeout 10–4320, `ClientToken` idempotent (the same
//!   token answers the same snapshot; other parameters with it are a 409 `ConflictException`);
//! - `PutSnapshotBlock`: the snapshot pending, `x-amz-Data-Length` exactly 524288 and the body
//!   that long, `x-amz-Checksum` present, signed, SHA256 and matching the block, the index inside
//!   the volume, the payload `UNSIGNED-PAYLOAD` or its real hash;
//! - `CompleteSnapshot`: `x-amz-ChangedBlocksCount` equal to the blocks written, the `LINEAR`
//!   aggregate (SHA-256 of the raw block digests by ascending index) equal to the one sent;
//!   the snapshot then reads `pending` in `DescribeSnapshots` a few times before `completed`;
//! - `RegisterImage`: Version 2016-11-15, Architecture x86_64, VirtualizationType hvm, BootMode
//!   uefi, ImdsSupport v2.0, EnaSupport true, the root device mapped to a completed snapshot
//!   (gp3, DeleteOnTermination), a valid name not taken (`InvalidAMIName.Duplicate`).
//!
//! Faults are injected per action: an error status N times, or the answer dropped (the
//! connection closed mid-answer after the work was done, as a lost answer is) N times.
//!
//! It needs only sha2, serde_json and berth-testkit (HMAC and base64 are written out here), so
//! that the builder's CLI test and the benchmark include it with `#[path]`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_testkit::{Reply, Request, Response, Server};
use sha2::{Digest, Sha256};

use crate::support::{form, lock, percent_decode};

/// EBS's block.
pub const BLOCK: usize = 512 << 10;

/// The fake's key pair and region.
pub const ACCESS_KEY: &str = "AKIDBERTHFAKE";
pub const SECRET: &str = "berth/fake/secret+key";
pub const REGION: &str = "eu-west-1";

/// A fault for the next `times` calls of an action.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status and error code (before doing anything).
    Status(u16, String),
    /// Do the work, then close the connection part-way through the answer.
    Drop,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: String,
    pub volume_size: u64,
    pub description: String,
    pub client_token: Option<String>,
    pub tags: Vec<(String, String)>,
    /// `pending`, `completed`, `error`.
    pub status: String,
    pub blocks: BTreeMap<u64, Vec<u8>>,
    pub digests: BTreeMap<u64, [u8; 32]>,
    /// DescribeSnapshots answers `pending` this many more times after CompleteSnapshot.
    pub completing: u32,
    /// How many times blocks were put (re-puts included).
    pub puts: u64,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub snapshot_id: String,
    /// Every parameter RegisterImage was sent.
    pub params: BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Default)]
pub struct State {
    pub snapshots: BTreeMap<String, Snapshot>,
    pub images: Vec<Image>,
    /// (action, fault, times left).
    pub faults: Vec<(String, Fault, u32)>,
    /// Every action asked, in order (refused ones included).
    pub calls: Vec<String>,
    /// Why requests were refused: `Action: Code: message`.
    pub refusals: Vec<String>,
    /// The session token the fake expects, if any, and whether it is expired.
    pub session_token: Option<(String, bool)>,
    /// DescribeSnapshots says `pending` this many times after CompleteSnapshot.
    pub completing_polls: u32,
    next_id: u64,
}

/// The running fake.
pub struct EbsFake {
    pub server: Server,
    pub state: Arc<Mutex<State>>,
}

impl EbsFake {
    pub fn start() -> EbsFake {
        let state = Arc::new(Mutex::new(State { completing_polls: 2, ..State::default() }));
        let s = state.clone();
        let server = Server::start(move |r| handle(&s, r)).expect("the EBS fake listens");
        EbsFake { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The next `times` calls of `action` meet `fault`.
    pub fn fault(&self, action: &str, fault: Fault, times: u32) {
        self.lock().faults.push((action.to_string(), fault, times));
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Requests must carry this session token (and it is refused as expired when `expired`).
    pub fn expect_session_token(&self, token: &str, expired: bool) {
        self.lock().session_token = Some((token.to_string(), expired));
    }

    pub fn images(&self) -> Vec<Image> {
        self.lock().images.clone()
    }

    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.lock().snapshots.values().cloned().collect()
    }

    pub fn calls(&self, action: &str) -> usize {
        self.lock().calls.iter().filter(|c| *c == action).count()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.lock().refusals.clone()
    }
}

/// An API error: which API shapes it.
struct Refused {
    status: u16,
    code: String,
    message: String,
}

fn refused(status: u16, code: &str, message: impl Into<String>) -> Refused {
    Refused { status, code: code.to_string(), message: message.into() }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Ebs,
    Ec2,
}

fn handle(state: &Mutex<State>, r: &Request) -> Reply {
    let api = if r.path().starts_with("/snapshots") { Api::Ebs } else { Api::Ec2 };
    let form = if api == Api::Ec2 { form(&String::from_utf8_lossy(&r.body)) } else { BTreeMap::new() };
    let action = match api {
        Api::Ebs => ebs_action(r).to_string(),
        Api::Ec2 => form.get("Action").cloned().unwrap_or_default(),
    };
    // A block's digest is taken before the lock, so that blocks in flight are hashed at once.
    let digest: Option<[u8; 32]> = (action == "PutSnapshotBlock").then(|| Sha256::digest(&r.body).into());
    let mut st = lock(state);
    st.calls.push(action.clone());
    let outcome = check_auth(&st, r, api).and_then(|()| {
        let fault = st.faults.iter_mut().find(|(a, _, n)| *a == action && *n > 0).map(|(_, f, n)| {
            *n -= 1;
            f.clone()
        });
        if let Some(Fault::Status(status, code)) = &fault {
            return Err(refused(*status, code, "injected fault"));
        }
        let answer = match api {
            Api::Ebs => ebs(&mut st, r, &action, digest),
            Api::Ec2 => ec2(&mut st, &form, &action),
        }?;
        Ok((answer, matches!(fault, Some(Fault::Drop))))
    });
    match outcome {
        Ok((answer, false)) => answer.into(),
        Ok((answer, true)) => {
            // The work is done; the answer never arrives whole.
            let bytes = answer.to_bytes();
            Reply::Raw(bytes[..bytes.len().min(20)].to_vec())
        }
        Err(e) => {
            st.refusals.push(format!("{action}: {}: {}", e.code, e.message));
            match api {
                Api::Ebs => Response::json(e.status, serde_json::json!({"message": e.message}).to_string())
                    .header("x-amzn-ErrorType", format!("{}:http://internal.amazon.com/coral/com.amazon.coral.service/", e.code))
                    .into(),
                Api::Ec2 => Response::status(e.status)
                    .header("Content-Type", "text/xml;charset=UTF-8")
                    .body(format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>fake</RequestID></Response>",
                        e.code,
                        xml_escape(&e.message)
                    ))
                    .into(),
            }
        }
    }
}

fn ebs_action(r: &Request) -> &'static str {
    let parts: Vec<&str> = r.path().trim_matches('/').split('/').collect();
    match (r.method.as_str(), parts.as_slice()) {
        ("POST", ["snapshots"]) => "StartSnapshot",
        ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot",
        ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock",
        ("GET", ["snapshots", _, "blocks", _]) => "GetSnapshotBlock",
        ("GET", ["snapshots", _, "blocks"]) => "ListSnapshotBlocks",
        _ => "Unknown",
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4, verified from the request as it arrived.

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Base64 (standard, padded), written out so that the fake needs only sha2 and serde_json (the
/// builder's CLI test includes it too).
pub fn b64(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104) on sha2.
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

fn check_auth(st: &State, r: &Request, api: Api) -> Result<(), Refused> {
    let (bad_sig, sig_status, unknown_key) = match api {
        Api::Ebs => ("InvalidSignatureException", 403, "UnrecognizedClientException"),
        Api::Ec2 => ("SignatureDoesNotMatch", 403, "AuthFailure"),
    };
    let auth =
        r.header("authorization").ok_or_else(|| refused(403, "MissingAuthenticationToken", "no Authorization"))?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| refused(400, "IncompleteSignature", "not AWS4-HMAC-SHA256"))?;
    let mut credential = "";
    let mut signed_headers = "";
    let mut signature = "";
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').unwrap_or(("", ""));
        match k {
            "Credential" => credential = v,
            "SignedHeaders" => signed_headers = v,
            "Signature" => signature = v,
            _ => {}
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(refused(400, "IncompleteSignature", format!("credential {credential}")));
    };
    if *key != ACCESS_KEY {
        return Err(refused(
            if api == Api::Ec2 { 401 } else { 403 },
            unknown_key,
            "The security token included in the request is invalid.",
        ));
    }
    let want_service = if api == Api::Ebs { "ebs" } else { "ec2" };
    if *service != want_service || *region != REGION {
        return Err(refused(
            sig_status,
            bad_sig,
            format!("Credential should be scoped to {REGION}/{want_service}, not {region}/{service}"),
        ));
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    for must in ["host", "x-amz-date"] {
        if !signed.contains(&must) {
            return Err(refused(sig_status, bad_sig, format!("{must} is not signed")));
        }
    }
    for (name, _) in &r.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-amz-") && !signed.contains(&lower.as_str()) {
            return Err(refused(
                sig_status,
                bad_sig,
                format!("There were headers present in the request which were not signed: {lower}"),
            ));
        }
    }
    let amz_date = r.header("x-amz-date").unwrap_or("");
    if !amz_date.starts_with(date) {
        return Err(refused(sig_status, bad_sig, "X-Amz-Date and the credential scope's date differ"));
    }
    // Canonical request.
    let path = r.path();
    let canonical_uri: String = path.split('/').map(|seg| uri_encode(seg, false)).collect::<Vec<_>>().join("/");
    let query = r.target.split_once('?').map_or("", |(_, q)| q);
    let mut q: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    q.sort();
    let canonical_query = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut canonical_headers = String::new();
    for name in &signed {
        let values: Vec<String> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(refused(sig_status, bad_sig, format!("signed header {name} is missing")));
        }
        canonical_headers += &format!("{name}:{}\n", values.join(","));
    }
    let payload_hash = match r.header("x-amz-content-sha256") {
        Some(h) => h.to_string(),
        None => hex(&Sha256::digest(&r.body)),
    };
    if payload_hash != "UNSIGNED-PAYLOAD" && payload_hash != hex(&Sha256::digest(&r.body)) {
        return Err(refused(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 is not the body's"));
    }
    let canonical = format!(
        "{}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        r.method
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac(format!("AWS4{SECRET}").as_bytes(), date.as_bytes()).to_vec();
    for part in [*region, *service, "aws4_request"] {
        k = hmac(&k, part.as_bytes()).to_vec();
    }
    let want = hex(&hmac(&k, string_to_sign.as_bytes()));
    if want != signature {
        return Err(refused(
            sig_status,
            bad_sig,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    if let Some((token, expired)) = &st.session_token {
        match r.header("x-amz-security-token") {
            Some(t) if t == token && *expired => {
                return Err(match api {
                    Api::Ebs => {
                        refused(403, "ExpiredTokenException", "The security token included in the request is expired")
                    }
                    Api::Ec2 => refused(400, "ExpiredToken", "The security token included in the request is expired"),
                });
            }
            Some(t) if t == token => {}
            _ => {
                return Err(refused(sig_status, unknown_key, "The security token included in the request is invalid."));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// EBS.

fn validation(message: impl Into<String>) -> Refused {
    refused(400, "ValidationException", message)
}

fn ebs(st: &mut State, r: &Request, action: &str, digest: Option<[u8; 32]>) -> Result<Response, Refused> {
    let parts: Vec<&str> = r.path().trim_matches('/').split('/').collect();
    match action {
        "StartSnapshot" => start_snapshot(st, r),
        "PutSnapshotBlock" => put_block(st, r, parts[1], parts[3], digest.unwrap_or_default()),
        "CompleteSnapshot" => complete(st, r, parts[2]),
        "ListSnapshotBlocks" => {
            let s = snapshot(st, parts[1])?;
            if s.status != "completed" {
                return Err(validation("The snapshot is not completed"));
            }
            let blocks: Vec<_> = s
                .blocks
                .keys()
                .map(|i| serde_json::json!({"BlockIndex": i, "BlockToken": format!("token-{}-{i}", s.id)}))
                .collect();
            let body = serde_json::json!({"Blocks": blocks, "BlockSize": BLOCK, "VolumeSize": s.volume_size});
            Ok(Response::json(200, body.to_string()))
        }
        "GetSnapshotBlock" => {
            let s = snapshot(st, parts[1])?;
            let index: u64 = parts[3].parse().map_err(|_| validation("bad block index"))?;
            let token =
                r.target.split_once("blockToken=").map(|(_, t)| t.split('&').next().unwrap_or("")).unwrap_or("");
            if token != format!("token-{}-{index}", s.id) {
                return Err(validation("bad block token"));
            }
            let data =
                s.blocks.get(&index).ok_or_else(|| refused(404, "ResourceNotFoundException", "no such block"))?;
            Ok(Response::ok(data.clone())
                .header("x-amz-Data-Length", BLOCK.to_string())
                .header("x-amz-Checksum", b64(&s.digests[&index]))
                .header("x-amz-Checksum-Algorithm", "SHA256"))
        }
        _ => Err(refused(404, "UnknownOperationException", format!("{} {}", r.method, r.path()))),
    }
}

fn snapshot<'a>(st: &'a mut State, id: &str) -> Result<&'a mut Snapshot, Refused> {
    st.snapshots
        .get_mut(id)
        .ok_or_else(|| refused(404, "ResourceNotFoundException", format!("The snapshot '{id}' does not exist.")))
}

fn start_snapshot(st: &mut State, r: &Request) -> Result<Response, Refused> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| validation(format!("body: {e}")))?;
    let size = v["VolumeSize"].as_u64().ok_or_else(|| validation("VolumeSize is required"))?;
    if !(1..=65536).contains(&size) {
        return Err(validation(format!("VolumeSize {size} is not in 1-65536")));
    }
    if let Some(t) = v.get("Timeout") {
        match t.as_u64() {
            Some(t) if (10..=4320).contains(&t) => {}
            _ => return Err(validation(format!("Timeout {t} is not in 10-4320"))),
        }
    }
    let description = v["Description"].as_str().unwrap_or("").to_string();
    let token = v["ClientToken"].as_str().map(str::to_string);
    let tags: Vec<(String, String)> = v["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["Key"].as_str().unwrap_or("").to_string(), t["Value"].as_str().unwrap_or("").to_string()))
        .collect();
    if let Some(tok) = &token
        && let Some(s) = st.snapshots.values().find(|s| s.client_token.as_ref() == Some(tok))
    {
        if s.volume_size != size || s.description != description {
            return Err(refused(409, "ConflictException", "The ClientToken was used with other parameters"));
        }
        return Ok(started(s));
    }
    st.next_id += 1;
    let id = format!("snap-{:017x}", 0xfa4e_0000 + st.next_id);
    let s = Snapshot {
        id: id.clone(),
        volume_size: size,
        description,
        client_token: token,
        tags,
        status: "pending".into(),
        blocks: BTreeMap::new(),
        digests: BTreeMap::new(),
        completing: 0,
        puts: 0,
    };
    let answer = started(&s);
    st.snapshots.insert(id, s);
    Ok(answer)
}

fn started(s: &Snapshot) -> Response {
    let tags: Vec<_> = s.tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect();
    let body = serde_json::json!({
        "SnapshotId": s.id, "OwnerId": "111122223333", "Status": s.status, "StartTime": 1.8e9,
        "VolumeSize": s.volume_size, "BlockSize": BLOCK, "Tags": tags, "Description": s.description,
    });
    Response::json(201, body.to_string())
}

fn put_block(st: &mut State, r: &Request, id: &str, index: &str, digest: [u8; 32]) -> Result<Response, Refused> {
    let s = snapshot(st, id)?;
    if s.status != "pending" {
        return Err(validation(format!("The snapshot '{id}' is {}, not pending", s.status)));
    }
    let index: u64 = index.parse().map_err(|_| validation("BlockIndex is not a number"))?;
    if index >= s.volume_size * (1 << 30) / BLOCK as u64 {
        return Err(validation(format!(
            "BlockIndex {index} is beyond the volume of {} GiB (reason INVALID_BLOCK)",
            s.volume_size
        )));
    }
    let length: usize = r
        .header("x-amz-data-length")
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| validation("x-amz-Data-Length is required"))?;
    if length != BLOCK {
        return Err(validation(format!("DataLength {length}: the only valid value is 524288 (reason INVALID_BLOCK)")));
    }
    if r.body.len() != length {
        return Err(validation(format!("{} bytes sent, x-amz-Data-Length says {length}", r.body.len())));
    }
    let checksum = r.header("x-amz-checksum").ok_or_else(|| validation("x-amz-Checksum is required"))?;
    if r.header("x-amz-checksum-algorithm") != Some("SHA256") {
        return Err(validation("x-amz-Checksum-Algorithm must be SHA256"));
    }
    if checksum != b64(&digest) {
        return Err(validation("The checksum does not match the block data (reason INVALID_CHECKSUM)"));
    }
    s.blocks.insert(index, r.body.clone());
    s.digests.insert(index, digest);
    s.puts += 1;
    Ok(Response::json(201, "{}").header("x-amz-Checksum", b64(&digest)).header("x-amz-Checksum-Algorithm", "SHA256"))
}

fn complete(st: &mut State, r: &Request, id: &str) -> Result<Response, Refused> {
    let polls = st.completing_polls;
    let s = snapshot(st, id)?;
    let count: usize = r
        .header("x-amz-changedblockscount")
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| validation("x-amz-ChangedBlocksCount is required"))?;
    if count != s.blocks.len() {
        return Err(validation(format!("ChangedBlocksCount {count}, but {} blocks were written", s.blocks.len())));
    }
    if let Some(sum) = r.header("x-amz-checksum") {
        if r.header("x-amz-checksum-algorithm") != Some("SHA256")
            || r.header("x-amz-checksum-aggregation-method") != Some("LINEAR")
        {
            return Err(validation("a checksum needs Algorithm SHA256 and Aggregation-Method LINEAR"));
        }
        let mut h = Sha256::new();
        for d in s.digests.values() {
            h.update(d);
        }
        if sum != b64(&h.finalize()) {
            return Err(validation(
                "The aggregated checksum does not match the blocks written (reason INVALID_CHECKSUM)",
            ));
        }
    }
    if s.status == "pending" {
        s.status = "completed".into();
        s.completing = polls;
    }
    Ok(Response::json(202, serde_json::json!({"Status": "pending"}).to_string()))
}

// ---------------------------------------------------------------------------------------------
// EC2.

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn tag_set(tags: &[(String, String)]) -> String {
    let items: String = tags
        .iter()
        .map(|(k, v)| format!("<item><key>{}</key><value>{}</value></item>", xml_escape(k), xml_escape(v)))
        .collect();
    format!("<tagSet>{items}</tagSet>")
}

fn ec2_ok(action: &str, inner: &str) -> Response {
    Response::ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>fake</requestId>{inner}</{action}Response>"
    ))
    .header("Content-Type", "text/xml;charset=UTF-8")
}

fn invalid(param: &str, message: impl Into<String>) -> Refused {
    refused(400, "InvalidParameterValue", format!("{param}: {}", message.into()))
}

/// `Prefix.N.Name` → values of `Prefix.N.Value.M`, in N order.
fn filters(form: &BTreeMap<String, String>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for n in 1.. {
        let Some(name) = form.get(&format!("Filter.{n}.Name")) else { break };
        let values = (1..).map_while(|m| form.get(&format!("Filter.{n}.Value.{m}")).cloned()).collect();
        out.push((name.clone(), values));
    }
    out
}

fn ec2(st: &mut State, form: &BTreeMap<String, String>, action: &str) -> Result<Response, Refused> {
    if form.get("Version").map(String::as_str) != Some("2016-11-15") {
        return Err(refused(400, "InvalidParameterValue", "Version must be 2016-11-15"));
    }
    match action {
        "DescribeImages" => {
            let ids: Vec<&String> = (1..).map_while(|n| form.get(&format!("ImageId.{n}"))).collect();
            let filters = filters(form);
            let items: String = st
                .images
                .iter()
                .filter(|i| ids.is_empty() || ids.contains(&&i.id))
                .filter(|i| {
                    filters.iter().all(|(name, values)| match name.as_str() {
                        "name" => values.contains(&i.name),
                        _ => false,
                    })
                })
                .map(|i| {
                    format!(
                        "<item><imageId>{}</imageId><imageState>available</imageState><name>{}</name><architecture>x86_64</architecture>\
                         <rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item><deviceName>/dev/xvda</deviceName>\
                         <ebs><snapshotId>{}</snapshotId><volumeType>gp3</volumeType></ebs></item></blockDeviceMapping>{}</item>",
                        i.id,
                        xml_escape(&i.name),
                        i.snapshot_id,
                        tag_set(&i.tags)
                    )
                })
                .collect();
            Ok(ec2_ok(action, &format!("<imagesSet>{items}</imagesSet>")))
        }
        "DescribeSnapshots" => {
            let ids: Vec<String> = (1..).map_while(|n| form.get(&format!("SnapshotId.{n}")).cloned()).collect();
            for id in &ids {
                if !st.snapshots.contains_key(id) {
                    return Err(refused(
                        400,
                        "InvalidSnapshot.NotFound",
                        format!("The snapshot '{id}' does not exist."),
                    ));
                }
            }
            let filters = filters(form);
            let mut items = String::new();
            for s in st.snapshots.values_mut() {
                if !ids.is_empty() && !ids.contains(&s.id) {
                    continue;
                }
                // What EC2 says: pending until the completion has been polled a few times.
                let status = match s.status.as_str() {
                    "completed" if s.completing > 0 => {
                        s.completing -= 1;
                        "pending"
                    }
                    other => other,
                };
                let keep = filters.iter().all(|(name, values)| match name.as_str() {
                    "status" => values.iter().any(|v| v == status),
                    n => match n.strip_prefix("tag:") {
                        Some(key) => s.tags.iter().any(|(k, v)| k == key && values.contains(v)),
                        None => false,
                    },
                });
                if keep {
                    items += &format!(
                        "<item><snapshotId>{}</snapshotId><status>{status}</status><volumeSize>{}</volumeSize><progress>{}</progress>{}</item>",
                        s.id,
                        s.volume_size,
                        if status == "completed" { "100%" } else { "" },
                        tag_set(&s.tags)
                    );
                }
            }
            Ok(ec2_ok(action, &format!("<snapshotSet>{items}</snapshotSet>")))
        }
        "RegisterImage" => register(st, form),
        _ => Err(refused(400, "InvalidAction", format!("The action {action} is not valid for this web service."))),
    }
}

fn register(st: &mut State, form: &BTreeMap<String, String>) -> Result<Response, Refused> {
    let get = |k: &str| form.get(k).map(String::as_str);
    let name = get("Name").ok_or_else(|| refused(400, "MissingParameter", "Name is required"))?;
    let name_ok =
        (3..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if !name_ok {
        return Err(refused(400, "InvalidAMIName.Malformed", format!("AMI name {name:?} is not valid")));
    }
    for (param, want) in [
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("BootMode", "uefi"),
        ("ImdsSupport", "v2.0"),
        ("EnaSupport", "true"),
    ] {
        if get(param) != Some(want) {
            return Err(invalid(param, format!("{:?}, Berth's images need {want}", get(param))));
        }
    }
    let root = get("RootDeviceName").ok_or_else(|| invalid("RootDeviceName", "required"))?;
    let n = (1..)
        .map_while(|n| get(&format!("BlockDeviceMapping.{n}.DeviceName")).map(|d| (n, d)))
        .find(|(_, d)| *d == root)
        .map(|(n, _)| n)
        .ok_or_else(|| invalid("BlockDeviceMapping", format!("no mapping for the root device {root}")))?;
    let snapshot_id =
        get(&format!("BlockDeviceMapping.{n}.Ebs.SnapshotId")).ok_or_else(|| invalid("Ebs.SnapshotId", "required"))?;
    if get(&format!("BlockDeviceMapping.{n}.Ebs.VolumeType")) != Some("gp3")
        || get(&format!("BlockDeviceMapping.{n}.Ebs.DeleteOnTermination")) != Some("true")
    {
        return Err(invalid("BlockDeviceMapping.Ebs", "the root volume is to be gp3, deleted on termination"));
    }
    match st.snapshots.get(snapshot_id) {
        None => {
            return Err(refused(
                400,
                "InvalidSnapshot.NotFound",
                format!("The snapshot '{snapshot_id}' does not exist."),
            ));
        }
        Some(s) if s.status != "completed" || s.completing > 0 => {
            return Err(refused(400, "IncorrectState", format!("Snapshot '{snapshot_id}' is not completed")));
        }
        Some(_) => {}
    }
    if let Some(other) = st.images.iter().find(|i| i.name == name) {
        return Err(refused(
            400,
            "InvalidAMIName.Duplicate",
            format!("AMI name {name} is already in use by AMI {}", other.id),
        ));
    }
    let tags: Vec<(String, String)> = if get("TagSpecification.1.ResourceType") == Some("image") {
        (1..)
            .map_while(|m| {
                Some((
                    get(&format!("TagSpecification.1.Tag.{m}.Key"))?.to_string(),
                    get(&format!("TagSpecification.1.Tag.{m}.Value"))?.to_string(),
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    st.next_id += 1;
    let id = format!("ami-{:017x}", 0xa31_0000 + st.next_id);
    st.images.push(Image {
        id: id.clone(),
        name: name.to_string(),
        snapshot_id: snapshot_id.to_string(),
        params: form.clone(),
        tags,
    });
    Ok(ec2_ok("RegisterImage", &format!("<imageId>{id}</imageId>")))
}
