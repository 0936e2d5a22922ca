//! AWS: the instance metadata service, IMDSv2 only.
//!
//! A session token comes first: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds: 21600`; every `GET` then carries it in
//! `X-aws-ec2-metadata-token`, and a 401 (the token expired) fetches a new one. IMDSv1 (a `GET`
//! without a token) is never used, not even when the `PUT` fails: the `PUT` is retried instead.
//! Afterburn falls back to v1; an instance that requires v2 (the `ImdsSupport v2.0` images Berth
//! registers) answers a v1 `GET` 401 anyway.
//!
//! Hop limit: the `PUT`'s answer goes out with an IP TTL of the instance's
//! `HttpPutResponseHopLimit` (default 1), so that a container behind a bridge (a second hop)
//! never gets a token. This process runs on the host, one hop from the service, so the default
//! works; containers that need the service need a hop limit of 2.
//!
//! Fields: `meta-data/instance-id`, `meta-data/hostname` (cut at its first dot when longer
//! than 63 bytes), `meta-data/public-keys` (lines `0=name`, then `public-keys/0/openssh-key`),
//! `user-data` (404 when the instance has none).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use berth_http::{Client, Error, Retry};

use crate::provider::{self, Common, MetadataError, Provider, common_settings};
use crate::record::{InstanceRecord, Outcome, SshKey};
use crate::session::{Failed, Session, Step};

/// The service's address.
pub const BASE: &str = "http://169.254.169.254";
/// The token request's path.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The header the token's lifetime goes in (on the `PUT`).
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The header the token goes in (on every `GET`).
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The token's lifetime: six hours, the most IMDS gives (and Afterburn's).
pub const TOKEN_TTL_SECONDS: &str = "21600";

/// Most user data read (AWS allows 16 KiB; the provisioning document at most 1 MiB).
const MAX_USER_DATA: u64 = 1 << 20;
/// Most of any other field.
const MAX_FIELD: u64 = 64 << 10;

/// AWS's instance metadata service (IMDSv2).
pub struct Aws {
    common: Common,
}

common_settings!(Aws);

impl Aws {
    /// The provider on `client` (whose base URL tests point at a fake) with `retry`.
    pub fn new(client: Client, retry: Retry) -> Aws {
        Aws { common: Common::new(client, retry) }
    }

    /// One token request.
    fn put_token(&self, timeout: Duration) -> Result<String, Error> {
        let r = self
            .common
            .client
            .put(&format!("{BASE}{TOKEN_PATH}"))
            .header(TTL_HEADER, TOKEN_TTL_SECONDS)
            .timeout(timeout)
            .send()?;
        let body = r.read_to_vec(4096)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }

    /// A field, `GET` with the token; a 401 fetches a new token and asks once more.
    fn get(&self, s: &Session, token: &RefCell<String>, path: &str, limit: u64) -> Result<Option<Vec<u8>>, Failed> {
        let url = format!("{BASE}{path}");
        let get = |t: Duration, token: &str| {
            self.common
                .client
                .get(&url)
                .header(TOKEN_HEADER, token)
                .timeout(t)
                .send()
                .and_then(|r| r.read_to_vec(limit))
        };
        s.run(path, |t| {
            let first = get(t, &token.borrow());
            let answer = match first {
                Err(Error::Status(401)) => {
                    s.heard();
                    s.log(&format!("{path}: 401 Unauthorized, the token expired; asking for a new one"));
                    match self.put_token(t) {
                        Ok(new) if !new.is_empty() => {
                            *token.borrow_mut() = new;
                            get(t, &token.borrow())
                        }
                        Ok(_) => return Step::Retry("an empty token".into()),
                        Err(e) => return s.step_of(e),
                    }
                }
                other => other,
            };
            match answer {
                Ok(body) => {
                    s.heard();
                    Step::Done(body)
                }
                Err(Error::Status(401)) => Step::Final("401 Unauthorized, even with a new token".into()),
                Err(e) => s.step_of(e),
            }
        })
    }
}

impl Provider for Aws {
    fn name(&self) -> &'static str {
        berth_slot::platform::Platform::Aws.name()
    }

    fn fetch(&self, deadline: Instant) -> Result<InstanceRecord, MetadataError> {
        let s = self.common.session(deadline);
        let mut record = InstanceRecord::empty(self.name(), Outcome::Complete);
        s.log("aws: asking IMDSv2 for a session token");
        let token = s.run(TOKEN_PATH, |t| match self.put_token(t) {
            Ok(token) if token.is_empty() => {
                s.heard();
                Step::Retry("an empty token".into())
            }
            Ok(token) => {
                s.heard();
                Step::Done(token)
            }
            // A 404 on the token path is no IMDSv2 at all: final, not a missing field.
            Err(Error::Status(404)) => {
                s.heard();
                Step::Final("the server answered 404: no IMDSv2 here".into())
            }
            Err(e) => s.step_of(e),
        });
        let Ok(Some(token)) = token else {
            // Without a token nothing is asked: IMDSv1 is never used.
            return Ok(s.finish(record));
        };
        let token = RefCell::new(token);

        match self.get(&s, &token, "/latest/meta-data/instance-id", MAX_FIELD) {
            Ok(Some(id)) => provider::set_instance_id(&s, &mut record, "instance-id", id),
            Ok(None) => s.note("instance-id: not set (404)".into()),
            Err(Failed) => {}
        }
        match self.get(&s, &token, "/latest/meta-data/hostname", MAX_FIELD) {
            Ok(Some(name)) => provider::set_hostname(&s, &mut record, "hostname", name),
            Ok(None) => s.note("hostname: not set (404)".into()),
            Err(Failed) => {}
        }
        match self.get(&s, &token, "/latest/meta-data/public-keys", MAX_FIELD) {
            Ok(Some(list)) => {
                for index in key_indices(&s, &String::from_utf8_lossy(&list)) {
                    let path = format!("/latest/meta-data/public-keys/{index}/openssh-key");
                    match self.get(&s, &token, &path, MAX_FIELD) {
                        Ok(Some(key)) => record.ssh_keys.extend(
                            String::from_utf8_lossy(&key)
                                .lines()
                                .map(str::trim)
                                .filter(|l| !l.is_empty())
                                .map(|l| SshKey { user: None, key: l.to_string() }),
                        ),
                        Ok(None) => s.note(format!("public key {index}: no openssh-key (404)")),
                        Err(Failed) => {}
                    }
                }
            }
            Ok(None) => s.note("public-keys: none (404)".into()),
            Err(Failed) => {}
        }
        match self.get(&s, &token, "/latest/user-data", MAX_USER_DATA) {
            Ok(Some(data)) => record.user_data = Some(data),
            Ok(None) => s.note("user-data: none (404)".into()),
            Err(Failed) => {}
        }
        Ok(s.finish(record))
    }
}

/// The indices of `public-keys`' lines (`0=my-key`).
fn key_indices(s: &Session, list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=').map(|(i, _)| i.parse::<u32>()) {
            Some(Ok(i)) => out.push(i),
            _ => s.fail(format!("public-keys: the line {line:?} is not `N=name`")),
        }
    }
    out
}
