//! Amazon S3 and S3-compatible object stores (MinIO, moto): the three object calls a release
//! repository needs — `PutObject` (conditional: `If-None-Match: *` creates only, `If-Match: ETAG`
//! replaces only what was read), `GetObject` (with its `ETag`) and `HeadObject` — signed with
//! SigV4 (service `s3`, every `x-amz-*` header signed, the payload's SHA-256 in
//! `x-amz-content-sha256`) and sent through the one retry policy ([`crate::api::send`]).
//!
//! URLs: with an endpoint (MinIO, moto, a proxy) path-style `ENDPOINT/BUCKET/KEY`; without one
//! AWS's virtual-hosted `https://BUCKET.s3.REGION.amazonaws.com/KEY` (AWS serves path-style only
//! to buckets made before 2020-10). Every object written carries `x-amz-meta-sha256` (its
//! SHA-256, hex), so that a later run tells "the same bytes" from "other bytes" by `HEAD` alone.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use berth_http::{Client, Reply};
use sha2::{Digest, Sha256};

use super::credentials::Credentials;
use super::sigv4::{Payload, Signer};
use super::{Said, Service, failure, hex};
use crate::{Error, Progress, percent};

/// The metadata header holding an object's SHA-256 (hex), as `HeadObject` returns it.
pub const SHA256_META: &str = "x-amz-meta-sha256";

/// What a PUT sends.
pub enum Body<'b> {
    /// Small objects (an index, its signatures), signed with their bytes.
    Bytes(&'b [u8]),
    /// A file streamed from disk (read once per attempt, never held in memory), `len` bytes whose
    /// SHA-256 (hex) is known already; the progress bar follows it.
    File {
        /// The file.
        path: &'b Path,
        /// Its size.
        len: u64,
        /// Its SHA-256, hex: signed as the payload hash and stored as `x-amz-meta-sha256`.
        sha256: &'b str,
    },
}

/// The precondition of a PUT: S3's compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Whatever is there is replaced.
    None,
    /// `If-None-Match: *`: written only if no object has the key.
    Absent,
    /// `If-Match: ETAG`: written only if the object is still the one with this ETag.
    Matches(String),
}

/// How a conditional PUT ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Written; its new ETag.
    Written {
        /// The object's ETag (quotes included, as S3 sends it).
        etag: String,
    },
    /// The precondition failed (412): someone else's object is there.
    PreconditionFailed,
}

/// An object read whole.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its bytes.
    pub body: Vec<u8>,
    /// Its ETag (quotes included), for a later `If-Match`.
    pub etag: String,
}

/// What `HeadObject` says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `Content-Length`.
    pub size: u64,
    /// The ETag.
    pub etag: String,
    /// `x-amz-meta-sha256`, when the writer set it.
    pub sha256: Option<String>,
    /// `Cache-Control`, when set.
    pub cache_control: Option<String>,
}

/// Headers of a PUT besides the body and the condition.
#[derive(Debug, Clone, Default)]
pub struct PutHeaders<'h> {
    /// `Content-Type` (`application/octet-stream` unless given).
    pub content_type: Option<&'h str>,
    /// `Cache-Control` (what a CDN or browser in front of the bucket may cache).
    pub cache_control: Option<&'h str>,
    /// `x-amz-acl` (a canned ACL such as `public-read`), signed as S3 wants every `x-amz-*`.
    pub acl: Option<&'h str>,
}

/// A client of one bucket.
pub struct S3<'a> {
    aws: Service<'a>,
    bucket: String,
    path_style: bool,
}

/// Bucket names as S3 takes them (3–63 of `a-z 0-9 . -`, starting and ending with a letter or
/// digit): checked before anything is signed, so that a typo is not sent as a host name.
pub fn check_bucket(bucket: &str) -> Result<(), Error> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bucket {bucket:?}: S3 bucket names are 3 to 63 lowercase letters, digits, dots and hyphens, starting and \
             ending with a letter or digit"
        )))
    }
}

impl<'a> S3<'a> {
    /// A client of `bucket`: path-style at `endpoint` when given (`http://127.0.0.1:5000`),
    /// else virtual-hosted on AWS in `region`.
    pub fn new(
        client: &'a Client,
        endpoint: Option<&str>,
        region: &'a str,
        bucket: &str,
        credentials: &'a Credentials,
        progress: &'a dyn Progress,
    ) -> Result<S3<'a>, Error> {
        check_bucket(bucket)?;
        let (endpoint, path_style) = match endpoint {
            Some(e) => (e.to_string(), true),
            // AWS's certificate is `*.s3.REGION.amazonaws.com`: one label, so a dotted bucket's
            // virtual host fails TLS with words that do not say why. Say it now.
            None if bucket.contains('.') => {
                return Err(Error::Invalid(format!(
                    "bucket {bucket:?}: a bucket name with dots does not match AWS's TLS certificate in \
                     virtual-hosted URLs: use a bucket without dots (a bucket made before September 2020 can \
                     also be reached path-style with --endpoint https://s3.{region}.amazonaws.com)"
                )));
            }
            None => (format!("https://{bucket}.s3.{region}.amazonaws.com"), false),
        };
        Ok(S3 {
            aws: Service::new(client, &endpoint, region, "s3", credentials, progress),
            bucket: bucket.to_string(),
            path_style,
        })
    }

    /// The object's URL as sent (the key percent-encoded, its `/` kept).
    pub fn url(&self, key: &str) -> String {
        let key = percent::encode_path(key.trim_start_matches('/'));
        if self.path_style {
            format!("{}/{}/{key}", self.aws.endpoint, self.bucket)
        } else {
            format!("{}/{key}", self.aws.endpoint)
        }
    }

    /// One signed request, retried by the one policy (signed anew per attempt); the answer
    /// whatever its status. A file body is streamed, read afresh for each attempt.
    fn send(
        &self,
        call: &str,
        method: &str,
        key: &str,
        headers: &[(String, String)],
        body: &Body<'_>,
        limit: u64,
    ) -> Result<Reply, Error> {
        let url = self.url(key);
        let signer = Signer { credentials: self.aws.credentials, region: self.aws.region, service: "s3" };
        let payload = || match body {
            Body::Bytes(b) => Payload::Bytes(b),
            Body::File { sha256, .. } => Payload::Sha256Hex(sha256),
        };
        let sign = || signer.sign(method, &url, headers, payload(), SystemTime::now());
        // What cannot be signed (a malformed endpoint) is not sent at all.
        sign()?;
        if let Body::File { path, len, .. } = body {
            // Opened once here so that a missing file is an error before anything is sent.
            File::open(path).map_err(|e| Error::io(*path, e))?;
            self.aws.progress.start(&format!("uploading {key}"), *len);
        }
        let progress = self.aws.progress;
        // A streamed file gets time for its size, not the 120 s of a small call.
        let timeout = match body {
            Body::Bytes(b) => crate::api::timeout_for(b.len() as u64),
            Body::File { len, .. } => crate::api::timeout_for(*len),
        };
        let reply = crate::api::send_timed(self.aws.client, call, &url, progress, timeout, || {
            // An error document is read whole, however small the object asked for.
            let mut c = self.aws.client.call(method, &url).limit(limit.max(64 << 10));
            for (n, v) in headers.iter().chain(sign().unwrap_or_default().iter()) {
                c = c.header(n, v);
            }
            match body {
                Body::Bytes(b) if b.is_empty() && method != "PUT" => c,
                Body::Bytes(b) => c.body(b.to_vec()),
                Body::File { path, len, .. } => match File::open(path) {
                    // A retry starts the bar again: what it shows is this attempt's.
                    Ok(f) => c.body_reader(Counted { inner: f.take(*len), progress }, *len),
                    // Vanished since the check above: an empty read makes the store refuse the
                    // short body, and the error names the file below.
                    Err(_) => c.body_reader(std::io::empty(), *len),
                },
            }
        });
        if let Body::File { path, .. } = body {
            progress.finish();
            if !path.exists() {
                return Err(Error::Invalid(format!("{}: removed while it was being uploaded", path.display())));
            }
        }
        reply
    }

    /// `GetObject`: the whole object (at most `limit` bytes) and its ETag; `None` when there is no
    /// such key (404 `NoSuchKey`).
    pub fn get(&self, key: &str, limit: u64) -> Result<Option<Object>, Error> {
        let reply = self.send("GetObject", "GET", key, &[], &Body::Bytes(b""), limit)?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self.error("GetObject", key, &reply));
        }
        if reply.body.len() as u64 > limit {
            return Err(Error::Request {
                call: "GetObject".into(),
                url: self.url(key),
                source: berth_http::Error::TooLarge(limit),
            });
        }
        let etag = reply.header("etag").unwrap_or_default().to_string();
        Ok(Some(Object { body: reply.body, etag }))
    }

    /// `HeadObject`: size, ETag and `x-amz-meta-sha256`; `None` when there is no such key.
    pub fn head(&self, key: &str) -> Result<Option<Head>, Error> {
        let reply = self.send("HeadObject", "HEAD", key, &[], &Body::Bytes(b""), 0)?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self.error("HeadObject", key, &reply));
        }
        let size =
            reply.header("content-length").and_then(|v| v.trim().parse().ok()).ok_or_else(|| Error::Protocol {
                call: "HeadObject".into(),
                url: self.url(key),
                message: "no Content-Length in the answer".into(),
            })?;
        Ok(Some(Head {
            size,
            etag: reply.header("etag").unwrap_or_default().to_string(),
            sha256: reply.header(SHA256_META).map(|s| s.trim().to_ascii_lowercase()),
            cache_control: reply.header("cache-control").map(str::to_string),
        }))
    }

    /// `PutObject` of `body` at `key` under `condition`, with `x-amz-meta-sha256` set to the
    /// body's SHA-256. A 412 is [`Put::PreconditionFailed`]; S3's 409
    /// `ConditionalRequestConflict` (two conditional writes of one key at once) is asked again.
    pub fn put(&self, key: &str, body: Body<'_>, condition: &Condition, extra: &PutHeaders<'_>) -> Result<Put, Error> {
        let sha256 = match &body {
            Body::Bytes(b) => hex(&Sha256::digest(b)),
            Body::File { sha256, .. } => sha256.to_ascii_lowercase(),
        };
        let mut headers = vec![
            ("content-type".to_string(), extra.content_type.unwrap_or("application/octet-stream").to_string()),
            (SHA256_META.to_string(), sha256),
        ];
        if let Some(c) = extra.cache_control {
            headers.push(("cache-control".to_string(), c.to_string()));
        }
        if let Some(acl) = extra.acl {
            headers.push(("x-amz-acl".to_string(), acl.to_string()));
        }
        match condition {
            Condition::None => {}
            Condition::Absent => headers.push(("if-none-match".to_string(), "*".to_string())),
            Condition::Matches(etag) => headers.push(("if-match".to_string(), etag.clone())),
        }
        let mut conflicts = 0;
        loop {
            let reply = self.send("PutObject", "PUT", key, &headers, &body, 1 << 20)?;
            if reply.is_success() {
                let etag = reply.header("etag").unwrap_or_default().to_string();
                return Ok(Put::Written { etag });
            }
            if reply.status == 412 {
                return Ok(Put::PreconditionFailed);
            }
            // "A conflicting operation occurred": S3 asks the client to try again.
            if reply.status == 409 && said(&reply).code == "ConditionalRequestConflict" && conflicts < 4 {
                conflicts += 1;
                std::thread::sleep(Duration::from_millis(200 * conflicts));
                continue;
            }
            return Err(self.error("PutObject", key, &reply));
        }
    }

    fn error(&self, call: &str, key: &str, reply: &Reply) -> Error {
        failure(call, &self.url(key), reply, said(reply), self.aws.credentials)
    }
}

/// S3's error document: `<Error><Code>…</Code><Message>…</Message></Error>` (a HEAD's has no
/// body: only the status says why).
fn said(reply: &Reply) -> Said {
    let text = reply.text();
    let doc = super::xml::parse(&text).ok();
    let get = |name: &str| doc.as_ref().and_then(|d| d.find(name)).map(|n| n.text.trim().to_string());
    Said { code: get("Code").unwrap_or_default(), message: get("Message").unwrap_or_default() }
}

/// A reader that tells the progress bar what passed.
struct Counted<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            source: "test".into(),
        }
    }

    #[test]
    fn urls_are_path_style_with_an_endpoint_and_virtual_hosted_on_aws() {
        let client = crate::api::client();
        let c = creds();
        let s = S3::new(&client, Some("http://127.0.0.1:9000/"), "eu-west-1", "my-bucket", &c, &crate::Silent).unwrap();
        assert_eq!(s.url("repo/a b+c~d.json"), "http://127.0.0.1:9000/my-bucket/repo/a%20b%2Bc~d.json");
        let s = S3::new(&client, None, "eu-west-1", "my-bucket", &c, &crate::Silent).unwrap();
        assert_eq!(s.url("/x/y"), "https://my-bucket.s3.eu-west-1.amazonaws.com/x/y");
        for bad in ["ab", "My-Bucket", "-bucket", "bucket-", "a_b_c"] {
            assert!(S3::new(&client, None, "r", bad, &c, &crate::Silent).is_err(), "{bad}");
        }
        // Dots: refused on AWS's virtual hosts (naming the way out), path-style at an endpoint.
        let e = S3::new(&client, None, "eu-west-1", "releases.example.com", &c, &crate::Silent).err().unwrap();
        assert!(e.to_string().contains("--endpoint https://s3.eu-west-1.amazonaws.com"), "{e}");
        let s = S3::new(&client, Some("https://s3.eu-west-1.amazonaws.com"), "eu-west-1", "a.b", &c, &crate::Silent)
            .unwrap();
        assert_eq!(s.url("k"), "https://s3.eu-west-1.amazonaws.com/a.b/k");
    }
    /// What moto does not do: S3's 409 `ConditionalRequestConflict` (asked again) and a 403
    /// `AccessDenied` (refused credentials, named; never "absent").
    #[test]
    fn a_conflict_is_asked_again_and_a_403_names_the_credentials() {
        use berth_testkit::{Response as Answer, Server};
        let conflict =
            b"<Error><Code>ConditionalRequestConflict</Code><Message>A conflicting operation</Message></Error>";
        let denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let server = Server::start(move |r| match (r.method.as_str(), r.path()) {
            ("PUT", "/b-1/k") if r.index == 0 => Answer::status(409).body(&conflict[..]).into(),
            ("PUT", "/b-1/k") => Answer::ok("").header("ETag", "\"e2\"").into(),
            _ => Answer::status(403).body(&denied[..]).into(),
        })
        .unwrap();
        let client = berth_http::Client::builder("t").build();
        let c = creds();
        let s3 = S3::new(&client, Some(&server.url()), "us-east-1", "b-1", &c, &crate::Silent).unwrap();
        let put = s3.put("k", Body::Bytes(b"x"), &Condition::Absent, &PutHeaders::default()).unwrap();
        assert_eq!(put, Put::Written { etag: "\"e2\"".into() });
        let seen = server.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].header("if-none-match"), Some("*"));
        assert_eq!(seen[1].header(SHA256_META), Some(hex(&Sha256::digest(b"x")).as_str()));
        let signed = seen[1].header("authorization").unwrap();
        assert!(signed.contains("if-none-match") && signed.contains("x-amz-meta-sha256"), "{signed}");
        let e = s3.get("missing", 100).unwrap_err().to_string();
        assert_eq!(e, "credentials from test: AccessDenied: Access Denied");
    }
}
