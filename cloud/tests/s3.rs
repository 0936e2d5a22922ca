//! `berth_cloud::aws::s3` against moto's server on 127.0.0.1: PutObject / GetObject / HeadObject
//! path-style, conditional writes (`If-None-Match: *`, `If-Match: ETAG` → 412), keys with `+`, `~`
//! and spaces, a file streamed as the body with its SHA-256 signed and stored, and — on a moto
//! started in its auth mode (`INITIAL_NO_AUTH_ACTION_COUNT`), where it verifies SigV4 with an IAM
//! key — a wrong secret refused as one line naming the credential source.

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use berth_cloud::aws::credentials::Credentials;
use berth_cloud::aws::s3::{Body, Condition, Put, PutHeaders, S3};
use berth_cloud::aws::sigv4::{Payload, Signer};
use berth_cloud::{Error, Progress, Silent};
use berth_http::{Client, Retry};
use sha2::{Digest, Sha256};

const REGION: &str = "us-east-1";

fn client() -> Client {
    Client::builder("berth-test").retry(Retry::new().attempts(3).backoff(Duration::from_millis(10))).build()
}

fn creds(id: &str, secret: &str, source: &str) -> Credentials {
    Credentials {
        access_key_id: id.into(),
        secret_access_key: secret.into(),
        session_token: None,
        source: source.into(),
    }
}

/// One raw signed call (IAM's query API, CreateBucket): status and body.
fn signed(http: &Client, c: &Credentials, service: &str, method: &str, url: &str, body: &[u8]) -> (u16, String) {
    let mut headers = Vec::new();
    if !body.is_empty() {
        headers.push(("content-type".to_string(), "application/x-www-form-urlencoded".to_string()));
    }
    let signer = Signer { credentials: c, region: REGION, service };
    let added = signer.sign(method, url, &headers, Payload::Bytes(body), SystemTime::now()).unwrap();
    let mut call = http.call(method, url);
    for (n, v) in headers.iter().chain(added.iter()) {
        call = call.header(n, v);
    }
    let reply = call.body(body.to_vec()).send().unwrap();
    (reply.status, reply.text())
}

fn create_bucket(http: &Client, url: &str, c: &Credentials, bucket: &str) {
    let (status, text) = signed(http, c, "s3", "PUT", &format!("{url}/{bucket}"), b"");
    assert_eq!(status, 200, "CreateBucket {bucket}: {text}");
}

fn xml_text(text: &str, tag: &str) -> String {
    let start = text.find(&format!("<{tag}>")).unwrap_or_else(|| panic!("no <{tag}> in {text}")) + tag.len() + 2;
    let end = text[start..].find(&format!("</{tag}>")).unwrap() + start;
    text[start..end].to_string()
}

/// Counts what the progress bar is told.
#[derive(Default)]
struct Bar {
    started: Mutex<Vec<(String, u64)>>,
    advanced: AtomicU64,
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.started.lock().unwrap().push((what.to_string(), total));
    }
    fn advance(&self, bytes: u64) {
        self.advanced.fetch_add(bytes, Ordering::Relaxed);
    }
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}

#[test]
fn put_get_head_and_conditional_writes_on_moto() {
    let moto = support::moto(&[]);
    let http = client();
    let c = creds("AKIDMOTO", "moto", "test keys [moto]");
    create_bucket(&http, &moto.url, &c, "berth-s3");
    let bar = Bar::default();
    let s3 = S3::new(&http, Some(&moto.url), REGION, "berth-s3", &c, &bar).unwrap();

    // Absent keys: None, not errors.
    assert!(s3.get("nothing/here", 1 << 20).unwrap().is_none());
    assert!(s3.head("nothing/here").unwrap().is_none());

    // Keys with characters SigV4 and URLs treat specially arrive under exactly that key.
    for key in ["repo/a b.json", "repo/1.0.0+build~2/x y+z", "repo/plain"] {
        let body = format!("bytes of {key}");
        let put = s3.put(key, Body::Bytes(body.as_bytes()), &Condition::Absent, &PutHeaders::default()).unwrap();
        let Put::Written { etag } = put else { panic!("{key}: {put:?}") };
        let got = s3.get(key, 1 << 20).unwrap().unwrap();
        assert_eq!((got.body, got.etag.clone()), (body.clone().into_bytes(), etag.clone()), "{key}");
        let head = s3.head(key).unwrap().unwrap();
        assert_eq!(head.size, body.len() as u64);
        assert_eq!(head.etag, etag);
        assert_eq!(head.sha256.as_deref(), Some(hex(&Sha256::digest(body.as_bytes())).as_str()));
    }
    // The listing shows the keys decoded: no %2B or %20 made it into a name.
    let (status, listing) = signed(&http, &c, "s3", "GET", &format!("{}/berth-s3?list-type=2", moto.url), b"");
    assert_eq!(status, 200, "{listing}");
    for key in ["<Key>repo/a b.json</Key>", "<Key>repo/1.0.0+build~2/x y+z</Key>"] {
        assert!(listing.contains(key), "{key} not in {listing}");
    }

    // If-None-Match: * on an existing key: 412, the object unchanged.
    let key = "repo/channels/stable.json";
    let Put::Written { etag: first } =
        s3.put(key, Body::Bytes(b"v1"), &Condition::Absent, &PutHeaders::default()).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s3.put(key, Body::Bytes(b"other"), &Condition::Absent, &PutHeaders::default()).unwrap(),
        Put::PreconditionFailed
    );
    assert_eq!(s3.get(key, 100).unwrap().unwrap().body, b"v1");
    // If-Match: the ETag read replaces; then that ETag is stale: 412.
    let headers = PutHeaders { cache_control: Some("no-cache"), content_type: Some("application/json"), acl: None };
    let Put::Written { etag: second } =
        s3.put(key, Body::Bytes(b"v2"), &Condition::Matches(first.clone()), &headers).unwrap()
    else {
        panic!()
    };
    assert_ne!(first, second);
    assert_eq!(s3.put(key, Body::Bytes(b"v3"), &Condition::Matches(first), &headers).unwrap(), Put::PreconditionFailed);
    let got = s3.get(key, 100).unwrap().unwrap();
    assert_eq!((got.body.as_slice(), got.etag), (&b"v2"[..], second));
    assert_eq!(s3.head(key).unwrap().unwrap().cache_control.as_deref(), Some("no-cache"));

    // A file streamed as the body: its known SHA-256 signed and stored, the bar told every byte.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.img.zst");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let sha = hex(&Sha256::digest(&data));
    let body = Body::File { path: &path, len: data.len() as u64, sha256: &sha };
    let immutable = PutHeaders { cache_control: Some("public, max-age=31536000, immutable"), ..Default::default() };
    assert!(matches!(
        s3.put("repo/releases/1.0.0/root.img.zst", body, &Condition::Absent, &immutable).unwrap(),
        Put::Written { .. }
    ));
    let got = s3.get("repo/releases/1.0.0/root.img.zst", 16 << 20).unwrap().unwrap();
    assert!(got.body == data, "the streamed object differs from the file");
    let head = s3.head("repo/releases/1.0.0/root.img.zst").unwrap().unwrap();
    assert_eq!((head.size, head.sha256.as_deref()), (data.len() as u64, Some(sha.as_str())));
    assert_eq!(bar.advanced.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(bar.started.lock().unwrap().last().unwrap().1, data.len() as u64);
}

#[test]
fn moto_in_auth_mode_takes_the_right_signature_and_names_the_source_of_a_wrong_one() {
    // The first 4 calls are free (IAM CreateUser, PutUserPolicy, CreateAccessKey, CreateBucket);
    // from then on moto verifies SigV4 with the IAM user's key.
    let moto = support::moto(&["INITIAL_NO_AUTH_ACTION_COUNT=4"]);
    let http = client();
    let anyone = creds("AKIDANY", "any", "bootstrap");
    let iam = |action: &str| {
        let (status, text) = signed(&http, &anyone, "iam", "POST", &format!("{}/", moto.url), action.as_bytes());
        assert_eq!(status, 200, "{action}: {text}");
        text
    };
    iam("Action=CreateUser&UserName=publisher&Version=2010-05-08");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    let mut encoded = String::new();
    for b in policy.bytes() {
        if b.is_ascii_alphanumeric() {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    iam(&format!("Action=PutUserPolicy&UserName=publisher&PolicyName=all&PolicyDocument={encoded}&Version=2010-05-08"));
    let key = iam("Action=CreateAccessKey&UserName=publisher&Version=2010-05-08");
    let (id, secret) = (xml_text(&key, "AccessKeyId"), xml_text(&key, "SecretAccessKey"));
    create_bucket(&http, &moto.url, &anyone, "berth-auth");

    let good = creds(&id, &secret, "environment (AWS_ACCESS_KEY_ID)");
    let s3 = S3::new(&http, Some(&moto.url), REGION, "berth-auth", &good, &Silent).unwrap();
    let put = s3.put("k/a b+c", Body::Bytes(b"signed"), &Condition::Absent, &PutHeaders::default()).unwrap();
    assert!(matches!(put, Put::Written { .. }), "{put:?}");
    assert_eq!(s3.get("k/a b+c", 100).unwrap().unwrap().body, b"signed");
    assert_eq!(s3.head("k/a b+c").unwrap().unwrap().size, 6);
    assert_eq!(
        s3.put("k/a b+c", Body::Bytes(b"x"), &Condition::Absent, &PutHeaders::default()).unwrap(),
        Put::PreconditionFailed
    );

    let bad = creds(&id, "not-the-secret", "/home/u/.aws/credentials [prod]");
    let s3 = S3::new(&http, Some(&moto.url), REGION, "berth-auth", &bad, &Silent).unwrap();
    let e = s3.put("k/other", Body::Bytes(b"x"), &Condition::Absent, &PutHeaders::default()).unwrap_err();
    assert!(matches!(e, Error::Credentials { .. }), "{e:?}");
    let line = e.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.starts_with("credentials from /home/u/.aws/credentials [prod]: SignatureDoesNotMatch"), "{line}");
    let e = s3.get("k/a b+c", 100).unwrap_err().to_string();
    assert!(e.contains("SignatureDoesNotMatch") && e.contains("[prod]"), "{e}");
    // Nothing was written by the refused key.
    let s3 = S3::new(&http, Some(&moto.url), REGION, "berth-auth", &good, &Silent).unwrap();
    assert!(s3.head("k/other").unwrap().is_none());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
