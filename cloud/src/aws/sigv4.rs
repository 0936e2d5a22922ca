//! AWS Signature Version 4 (header form): the canonical request, the string to sign, the
//! derived key and the `Authorization` header, written on HMAC-SHA256 (ring) and SHA-256 (sha2)
//! and checked against AWS's published SigV4 test suite.
//!
//! The URL given is the one sent: its path exactly as it goes on the wire (already
//! percent-encoded where needed), its host and port as the HTTP client puts them in `Host`
//! (the port only when not the scheme's default, as ureq does).

use std::fmt::Write as _;
use std::time::SystemTime;

use ring::hmac;
use sha2::{Digest, Sha256};

use super::credentials::Credentials;
use crate::{Error, percent, time};

/// The algorithm name of the string to sign and the `Authorization` header.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What the signature says about the request body.
pub enum Payload<'a> {
    /// The body, hashed into the signature (an empty body for GET).
    Bytes(&'a [u8]),
    /// PutSnapshotBlock: the body is not signed ("UNSIGNED-PAYLOAD"); EBS checks the block
    /// with its own SHA-256 checksum header instead.
    Unsigned,
    /// A body whose SHA-256 (hex) is known already (S3 PutObject of a file hashed when it was
    /// written): signed as `Bytes` would sign it, without reading it again.
    Sha256Hex(&'a str),
}

/// Signs requests with one set of credentials for one region and service.
pub struct Signer<'a> {
    /// Whose requests these are.
    pub credentials: &'a Credentials,
    /// The region signed for (`us-east-1`).
    pub region: &'a str,
    /// The service signed for (`ebs`, `ec2`, `s3`).
    pub service: &'a str,
}

/// The parts of one signature, kept for the tests against the published suite.
#[derive(Debug)]
struct Signed {
    #[cfg_attr(not(test), allow(dead_code))]
    canonical_request: String,
    #[cfg_attr(not(test), allow(dead_code))]
    string_to_sign: String,
    authorization: String,
    /// Headers the signer adds (everything but `Authorization`), in the order added.
    added: Vec<(String, String)>,
}

/// How the path is made canonical. Every service but S3 resolves `.`/`..` and empty segments
/// and URI-encodes each segment of the wire path again (the spec's "encoded twice", the wire
/// form being the first); S3 keeps the path's shape and encodes each segment once (decoded from
/// the wire form, then encoded by SigV4's rules, so `$` is `%24` and `%20` stays `%20`).
#[derive(Clone, Copy)]
struct PathRules {
    normalize: bool,
    /// `true`: encode the wire form again (non-S3); `false`: decode, then encode once (S3).
    double: bool,
}

impl Signer<'_> {
    /// Headers to add to the request: `X-Amz-Date`, `X-Amz-Security-Token` when the credentials
    /// carry a session token, `x-amz-content-sha256` for S3, and `Authorization`. Every header
    /// in `headers` is signed, and `host` as the client sends it (from `url`, the port only
    /// when not the scheme's default). `url` is the one sent, path already percent-encoded.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        payload: Payload<'_>,
        now: SystemTime,
    ) -> Result<Vec<(String, String)>, Error> {
        let s3 = self.service == "s3";
        let rules = PathRules { normalize: !s3, double: !s3 };
        let signed = self.sign_parts(method, url, headers, payload, now, rules)?;
        let mut out = signed.added;
        out.push(("Authorization".to_string(), signed.authorization));
        Ok(out)
    }

    fn sign_parts(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        payload: Payload<'_>,
        now: SystemTime,
        rules: PathRules,
    ) -> Result<Signed, Error> {
        let invalid = |why: &str| Error::Invalid(format!("cannot sign {method} {url}: {why}"));
        let parts = split_url(url).map_err(|why| invalid(&why))?;
        let (date, datetime) = amz_dates(now).map_err(|why| invalid(&why))?;
        let payload_hash = match payload {
            Payload::Bytes(b) => hex(&Sha256::digest(b)),
            Payload::Unsigned => "UNSIGNED-PAYLOAD".to_string(),
            Payload::Sha256Hex(h) => h.to_ascii_lowercase(),
        };

        // The signer owns these; a caller's copy would be sent twice or disagree.
        let owned = |name: &str| {
            name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("x-amz-date")
                || name.eq_ignore_ascii_case("authorization")
        };
        let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut added = vec![("X-Amz-Date".to_string(), datetime.clone())];
        if let Some(token) = &self.credentials.session_token
            && !given("x-amz-security-token")
        {
            added.push(("X-Amz-Security-Token".to_string(), token.clone()));
        }
        if self.service == "s3" && !given("x-amz-content-sha256") {
            added.push(("x-amz-content-sha256".to_string(), payload_hash.clone()));
        }

        // Names lowercased, values trimmed with inner runs of spaces made one; a name given
        // more than once is one line with its values joined by commas, in the order given.
        let mut canon: Vec<(String, String)> = vec![("host".to_string(), parts.host.clone())];
        for (name, value) in headers.iter().filter(|(n, _)| !owned(n)).chain(added.iter()) {
            let name = name.to_ascii_lowercase();
            let value = squeeze(value);
            match canon.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(&value);
                }
                None => canon.push((name, value)),
            }
        }
        canon.sort_by(|a, b| a.0.cmp(&b.0));
        let signed_headers = canon.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
        let mut canonical_headers = String::new();
        for (n, v) in &canon {
            let _ = writeln!(canonical_headers, "{n}:{v}");
        }

        let canonical_request = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
            canonical_path(parts.path, rules),
            canonical_query(parts.query),
        );
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign =
            format!("{ALGORITHM}\n{datetime}\n{scope}\n{}", hex(&Sha256::digest(canonical_request.as_bytes())));

        let mut key =
            hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{}", self.credentials.secret_access_key).as_bytes());
        for part in [date.as_str(), self.region, self.service, "aws4_request"] {
            key = hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&key, part.as_bytes()).as_ref());
        }
        let signature = hex(hmac::sign(&key, string_to_sign.as_bytes()).as_ref());
        let authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.credentials.access_key_id
        );
        Ok(Signed { canonical_request, string_to_sign, authorization, added })
    }
}

/// A URL's parts as sent: `Host` header value, path, query (without `?`).
struct UrlParts<'u> {
    host: String,
    path: &'u str,
    query: &'u str,
}

fn split_url(url: &str) -> Result<UrlParts<'_>, String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        other => return Err(format!("scheme {other} is neither http nor https")),
    };
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_query) = rest.split_at(end);
    // user:password@ is never part of Host.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return Err("no host".to_string());
    }
    // The port is what follows the last ':' outside an IPv6 literal's brackets.
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            let (h, port) = (&authority[..i], &authority[i + 1..]);
            if port.is_empty() || port == default_port {
                h.to_string()
            } else if port.bytes().all(|b| b.is_ascii_digit()) {
                authority.to_string()
            } else {
                return Err(format!("bad port {port:?}"));
            }
        }
        _ => authority.to_string(),
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    Ok(UrlParts { host, path: if path.is_empty() { "/" } else { path }, query })
}

/// The canonical URI. Normalized: `.` and `..` segments resolved and empty segments dropped
/// (a trailing slash kept), as the suite's `get-slashes`/`get-relative` vectors want.
fn canonical_path(path: &str, rules: PathRules) -> String {
    let mut segments: Vec<&str> = Vec::new();
    if rules.normalize {
        for seg in path.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
    } else {
        segments = path.split('/').skip(1).collect();
    }
    let mut out = String::with_capacity(path.len() + 8);
    for seg in &segments {
        out.push('/');
        if rules.double {
            percent::encode_into(seg.as_bytes(), b"", &mut out)
        } else {
            percent::encode_into(&percent::decode(seg), b"", &mut out)
        }
    }
    let trailing = rules.normalize && path.ends_with('/') && !segments.is_empty();
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// The canonical query: each name and value decoded, encoded per SigV4, sorted by name then
/// value; a name without `=` has an empty value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ke = String::new();
            let mut ve = String::new();
            percent::encode_into(&percent::decode(k), b"", &mut ke);
            percent::encode_into(&percent::decode(v), b"", &mut ve);
            (ke, ve)
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A header value trimmed, inner runs of spaces made one.
fn squeeze(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` of `now` in UTC.
fn amz_dates(now: SystemTime) -> Result<(String, String), String> {
    let t = time::unix_seconds(now).ok_or_else(|| "the clock is before 1970".to_string())?;
    Ok((time::amz_date(t), time::amz_datetime(t)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: token.map(str::to_string),
            source: "test".to_string(),
        }
    }

    /// 2015-08-30T12:36:00Z, the suite's time.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn json_str<'a>(json: &'a str, key: &str) -> Option<&'a str> {
        let at = json.find(&format!("\"{key}\""))?;
        let rest = json[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(s) = rest.strip_prefix('"') { s.split('"').next() } else { rest.split([',', '\n', '}']).next() }
    }

    /// One vector of the published suite, signed here and compared step by step.
    fn check_vector(dir: &std::path::Path) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let context = read("context.json");
        let request = read("request.txt");
        assert_eq!(json_str(&context, "timestamp"), Some("2015-08-30T12:36:00Z"), "{name}");
        assert_eq!(json_str(&context, "region"), Some("us-east-1"), "{name}");
        assert_eq!(json_str(&context, "service"), Some("service"), "{name}");
        let token = json_str(&context, "token");
        let normalize = json_str(&context, "normalize") == Some("true");
        let sign_body = json_str(&context, "sign_body") == Some("true");

        // "METHOD PATH HTTP/1.1", the path possibly holding spaces; headers; a blank line; body.
        let (head, body) = request.split_once("\n\n").unwrap_or((&request, ""));
        let mut lines = head.lines();
        let first = lines.next().unwrap();
        let (method, rest) = first.split_once(' ').unwrap();
        let path = rest.strip_suffix(" HTTP/1.1").unwrap();
        let mut host = String::new();
        let mut headers = Vec::new();
        for l in lines {
            let (n, v) = l.split_once(':').unwrap();
            if n.eq_ignore_ascii_case("host") {
                host = v.to_string();
            } else {
                headers.push((n.to_string(), v.to_string()));
            }
        }
        if sign_body {
            headers.push(("x-amz-content-sha256".to_string(), hex(&Sha256::digest(body.as_bytes()))));
        }
        let url = format!("https://{host}{path}");
        let credentials = creds(token);
        let signer = Signer { credentials: &credentials, region: "us-east-1", service: "service" };
        let rules = PathRules { normalize, double: true };
        let signed =
            signer.sign_parts(method, &url, &headers, Payload::Bytes(body.as_bytes()), suite_time(), rules).unwrap();
        assert_eq!(signed.canonical_request, read("header-canonical-request.txt"), "{name}: canonical request");
        assert_eq!(signed.string_to_sign, read("header-string-to-sign.txt"), "{name}: string to sign");
        let want = read("header-signed-request.txt");
        let want_auth = want.lines().find_map(|l| l.strip_prefix("Authorization:")).unwrap();
        assert_eq!(signed.authorization, want_auth, "{name}: Authorization");
        // The headers added are the ones the signed request carries.
        for (n, v) in &signed.added {
            assert!(
                want.lines().any(|l| l.eq_ignore_ascii_case(&format!("{n}:{v}"))),
                "{name}: {n}:{v} not in the signed request"
            );
        }
    }

    #[test]
    fn the_published_sigv4_test_suite() {
        // AWS's Signature Version 4 test suite as aws-c-auth carries it: see
        // cloud/tests/data/sigv4/README.md for where from and what was left out.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4");
        let mut dirs: Vec<_> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for must in [
            "get-vanilla",
            "get-vanilla-query-order-key-case",
            "get-header-value-trim",
            "get-utf8",
            "get-space-normalized",
            "post-vanilla",
            "post-x-www-form-urlencoded",
            "post-sts-header-before",
            "get-relative-normalized",
            "get-vanilla-with-session-token",
        ] {
            assert!(names.iter().any(|n| n == must), "vector {must} missing");
        }
        assert!(dirs.len() >= 30, "{} vectors", dirs.len());
        for d in &dirs {
            check_vector(d);
        }
    }

    #[test]
    fn get_vanilla_through_the_public_api() {
        // get-vanilla (published suite): only the public sign(), as the EBS/EC2 code calls it.
        let c = creds(None);
        let signer = Signer { credentials: &c, region: "us-east-1", service: "service" };
        let out = signer.sign("GET", "https://example.amazonaws.com/", &[], Payload::Bytes(b""), suite_time()).unwrap();
        assert_eq!(
            out,
            vec![
                ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
                (
                    "Authorization".to_string(),
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn iam_list_users_documented_example() {
        // The AWS General Reference's worked example ("Create a canonical request" ... "Calculate
        // the signature"): IAM ListUsers, 20150830T123600Z; canonical request hash f536975d...,
        // signature 5d672d79...
        let c = creds(None);
        let signer = Signer { credentials: &c, region: "us-east-1", service: "iam" };
        let headers = [("Content-Type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string())];
        let url = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08";
        let rules = PathRules { normalize: true, double: true };
        let s = signer.sign_parts("GET", url, &headers, Payload::Bytes(b""), suite_time(), rules).unwrap();
        assert_eq!(
            s.canonical_request,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\n\
             content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\n\
             x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n\
             f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        assert_eq!(
            s.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn s3_get_object_documented_example() {
        // The S3 API reference's header-signing example (GET /test.txt from examplebucket with
        // Range, 20130524T000000Z): S3 signs x-amz-content-sha256, which the signer adds.
        let c = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: None,
            source: "test".to_string(),
        };
        let signer = Signer { credentials: &c, region: "us-east-1", service: "s3" };
        let headers = [("Range".to_string(), "bytes=0-9".to_string())];
        let when = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let url = "https://examplebucket.s3.amazonaws.com/test.txt";
        let out = signer.sign("GET", url, &headers, Payload::Bytes(b""), when).unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            get("x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(
            get("Authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
        // PUT Object of the same page: a body, a `$` in the key (encoded once), a Date header.
        let body = b"Welcome to Amazon S3.";
        let headers = [
            ("Date".to_string(), "Fri, 24 May 2013 00:00:00 GMT".to_string()),
            ("x-amz-storage-class".to_string(), "REDUCED_REDUNDANCY".to_string()),
        ];
        let url = "https://examplebucket.s3.amazonaws.com/test$file.text";
        let out = signer.sign("PUT", url, &headers, Payload::Bytes(body), when).unwrap();
        let auth = out.iter().find(|(k, _)| k == "Authorization").map(|(_, v)| v.as_str()).unwrap();
        assert!(
            auth.ends_with(
                "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, \
                 Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            ),
            "{auth}"
        );
    }

    #[test]
    fn unsigned_payload_session_token_and_port() {
        // PutSnapshotBlock to a local endpoint: the port is in host (not the scheme's default),
        // the body is not hashed, the token is signed.
        let c = creds(Some("TOKEN"));
        let signer = Signer { credentials: &c, region: "eu-west-1", service: "ebs" };
        let url = "http://127.0.0.1:5000/snapshots/snap-0123/blocks/7";
        let headers = [("x-amz-Data-Length".to_string(), "524288".to_string())];
        let rules = PathRules { normalize: true, double: true };
        let s = signer.sign_parts("PUT", url, &headers, Payload::Unsigned, suite_time(), rules).unwrap();
        assert_eq!(
            s.canonical_request,
            "PUT\n/snapshots/snap-0123/blocks/7\n\nhost:127.0.0.1:5000\nx-amz-data-length:524288\n\
             x-amz-date:20150830T123600Z\nx-amz-security-token:TOKEN\n\n\
             host;x-amz-data-length;x-amz-date;x-amz-security-token\nUNSIGNED-PAYLOAD"
        );
        assert!(s.added.contains(&("X-Amz-Security-Token".to_string(), "TOKEN".to_string())));
        assert!(s.authorization.contains("/20150830/eu-west-1/ebs/aws4_request,"));
    }

    #[test]
    fn host_as_ureq_sends_it() {
        let host = |u: &str| split_url(u).map(|p| p.host);
        assert_eq!(host("https://ec2.us-east-1.amazonaws.com/").as_deref(), Ok("ec2.us-east-1.amazonaws.com"));
        assert_eq!(host("https://ec2.example.com:443/x").as_deref(), Ok("ec2.example.com"));
        assert_eq!(host("http://localhost:80").as_deref(), Ok("localhost"));
        assert_eq!(host("http://localhost:443/").as_deref(), Ok("localhost:443"));
        assert_eq!(host("https://u:p@h:8443/?a").as_deref(), Ok("h:8443"));
        assert_eq!(host("http://[::1]:5000/").as_deref(), Ok("[::1]:5000"));
        assert_eq!(host("http://[::1]/").as_deref(), Ok("[::1]"));
        assert!(host("ftp://h/").is_err());
        assert!(host("h/x").is_err());
        assert!(host("http://h:x/").is_err());
    }

    #[test]
    fn paths_and_queries() {
        let svc = PathRules { normalize: true, double: true };
        let s3 = PathRules { normalize: false, double: false };
        // Non-S3 encodes the wire path again: %20 becomes %2520; S3 keeps it, dot segments too,
        // and encodes what the wire form leaves plain ($ and friends).
        assert_eq!(canonical_path("/a%20b/./c/../d", svc), "/a%2520b/d");
        assert_eq!(canonical_path("/a%20b/./c/../d$", s3), "/a%20b/./c/../d%24");
        assert_eq!(canonical_path("//k//", s3), "//k//");
        assert_eq!(canonical_path("", svc), "/");
        assert_eq!(canonical_query("b=2&a=3&a=1&c"), "a=1&a=3&b=2&c=");
        assert_eq!(canonical_query("k=a%2Fb+c&sp=x%20y"), "k=a%2Fb%2Bc&sp=x%20y");
        assert_eq!(canonical_query("bad=%zz%4"), "bad=%25zz%254");
    }

    #[test]
    fn dates_in_utc() {
        let at = |s: u64| amz_dates(UNIX_EPOCH + Duration::from_secs(s)).unwrap();
        assert_eq!(at(0), ("19700101".to_string(), "19700101T000000Z".to_string()));
        assert_eq!(at(951_782_400).1, "20000229T000000Z"); // a leap day of a /400 year
        assert_eq!(at(4_107_542_399).1, "21000228T235959Z"); // 2100 is not a leap year
        assert_eq!(at(4_107_542_400).1, "21000301T000000Z");
        assert_eq!(at(1_440_938_160).1, "20150830T123600Z");
        assert!(amz_dates(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }
}
