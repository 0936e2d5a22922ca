//! Cloud Storage: an object's size and CRC32C (`objects.get`), and a file uploaded as an object
//! by the resumable protocol (cloud.google.com/storage/docs/performing-resumable-uploads):
//! a session started with a `POST …?uploadType=resumable`, chunks `PUT` to the session URI with
//! `Content-Range: bytes S-E/TOTAL` (all but the last a multiple of 256 KiB, each answered
//! `308` with the bytes persisted so far), and after any failure a status query (`Content-Range:
//! bytes */TOTAL`, no body) that says where to go on from. The session URI is kept in a state
//! file, so that a run interrupted and started again goes on with the same session.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_http::{Client, Reply};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::encode;
use crate::{Error, Progress, api};

/// Chunk sizes are multiples of this (all but the last chunk of an upload).
pub const CHUNK_GRANULE: u64 = 256 << 10;

/// The content type the tarball is stored with (its bytes as they are: no `Content-Encoding`,
/// which would make GCS decompress it on the way out).
pub const CONTENT_TYPE: &str = "application/gzip";

/// What the upload needs to know of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its size, bytes.
    pub size: u64,
    /// Its CRC32C as GCS writes it: base64 of the big-endian value.
    pub crc32c: Option<String>,
}

impl ObjectInfo {
    fn from_json(body: &[u8]) -> Result<ObjectInfo, String> {
        #[derive(Deserialize)]
        struct Object {
            // The JSON API writes 64-bit integers as strings.
            size: String,
            #[serde(default)]
            crc32c: Option<String>,
        }
        let o: Object = serde_json::from_slice(body).map_err(|e| format!("not an object resource: {e}"))?;
        let size = o.size.parse().map_err(|_| format!("object size {:?} is not a number", o.size))?;
        Ok(ObjectInfo { size, crc32c: o.crc32c })
    }
}

/// The identity of the local file a session uploads: the session is only taken up again for
/// the same file, unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// CRC32C of the whole file, as GCS writes it.
    pub crc32c: String,
}

/// The state file's contents: an upload session and what it uploads where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    /// The session URI (it authorizes the upload by itself: the file is written 0600).
    session: String,
    storage: String,
    bucket: String,
    object: String,
    file: FileIdentity,
}

/// The storage API at one endpoint, with one set of credentials.
pub struct Storage<'a> {
    pub(super) client: &'a Client,
    pub(super) auth: &'a Auth<'a>,
    /// `https://storage.googleapis.com`, or a test's endpoint.
    pub(super) endpoint: String,
    pub(super) progress: &'a dyn Progress,
}

/// What one request of an upload session came to.
enum Step {
    /// The server has the first N bytes.
    Persisted(u64),
    /// The object is complete.
    Done(Vec<u8>),
    /// The session is no more (expired after a week, or cancelled): start another.
    Gone,
    /// Worth trying again after a wait (no answer, 408, 429, 5xx): why.
    Transient(String),
}

impl Storage<'_> {
    /// The object `name` in `bucket`, or `None` when there is none.
    pub fn object(&self, bucket: &str, name: &str) -> Result<Option<ObjectInfo>, Error> {
        let url = format!("{}/storage/v1/b/{}/o/{}", self.endpoint, encode(bucket), encode(name));
        let call = "objects.get";
        let bearer = self.auth.bearer(self.progress)?;
        let reply = api::send(self.client, call, &url, self.progress, || {
            self.client.call("GET", &url).header("Authorization", &bearer)
        })?;
        match reply.status {
            200 => ObjectInfo::from_json(&reply.body).map(Some).map_err(|message| Error::Protocol {
                call: call.into(),
                url: url.clone(),
                message,
            }),
            404 => Ok(None),
            401 | 403 => Err(self.auth.refused_by(call, &url, &reply)),
            _ => Err(api::api_error(call, &url, &reply, super::auth::google_error(&reply))),
        }
    }

    /// Uploads `file` (`identity`) as `bucket`/`name` in chunks of `chunk` bytes, going on with
    /// the session `state` names when it is for this file and object. Returns the object the
    /// final answer describes.
    pub fn upload(
        &self,
        file: &Path,
        identity: &FileIdentity,
        bucket: &str,
        name: &str,
        chunk: u64,
        state: Option<&Path>,
    ) -> Result<ObjectInfo, Error> {
        let f = File::open(file).map_err(|e| Error::io(file, e))?;
        let total = identity.size;
        let wanted = |s: &SessionState| {
            s.storage == self.endpoint && s.bucket == bucket && s.object == name && &s.file == identity
        };
        let mut session = state.and_then(read_state).filter(wanted).map(|s| s.session);
        if session.is_none()
            && let Some(p) = state
        {
            remove_state(p);
        }
        // A kept session is asked where it stands first; a new one starts at 0.
        let mut query = session.is_some();
        let mut restarted = false;
        let mut offset = 0;
        let mut high = 0;
        let mut failures = 0;
        let retry = self.client.retry();
        self.progress.start(&format!("gs://{bucket}/{name}"), total);
        let result = loop {
            let uri = match &session {
                Some(u) => u.clone(),
                None => {
                    let u = self.start_session(bucket, name, identity)?;
                    if let Some(p) = state {
                        let s = SessionState {
                            session: u.clone(),
                            storage: self.endpoint.clone(),
                            bucket: bucket.into(),
                            object: name.into(),
                            file: identity.clone(),
                        };
                        if let Err(e) = write_state(p, &s) {
                            self.progress.note(&format!("{e}: an interrupted upload will start over"));
                        }
                    }
                    session = Some(u.clone());
                    u
                }
            };
            let asked = query;
            let step = if asked {
                self.status(&uri, total)?
            } else {
                let end = (offset + chunk).min(total);
                let mut data = vec![0; (end - offset) as usize];
                f.read_exact_at(&mut data, offset).map_err(|e| Error::io(file, e))?;
                self.put_chunk(&uri, offset, total, data)?
            };
            query = false;
            // Why this step made no headway, if it did not.
            let stalled = match step {
                Step::Done(body) => {
                    self.progress.advance(total.saturating_sub(high));
                    break body;
                }
                Step::Persisted(n) if n > total => {
                    return Err(Error::Protocol {
                        call: "resumable upload".into(),
                        url: redact(&uri),
                        message: format!("the server has {n} bytes of {total}"),
                    });
                }
                Step::Persisted(n) => {
                    if asked && n > 0 {
                        self.progress.note(&format!("upload session: going on from byte {n} of {total}"));
                    }
                    offset = n;
                    let gained = n > high;
                    if gained {
                        self.progress.advance(n - high);
                        high = n;
                        failures = 0;
                    }
                    // Every byte is there but no object came back: ask for it.
                    query = n == total;
                    match (n == total, asked) {
                        (true, true) => Some("the server has every byte but did not finish the object".to_string()),
                        (false, false) if !gained => Some("the server kept none of the chunk".to_string()),
                        _ => None,
                    }
                }
                Step::Gone if !restarted => {
                    self.progress.note("the upload session is gone (expired or cancelled): starting a new one");
                    restarted = true;
                    session = None;
                    offset = 0;
                    None
                }
                Step::Gone => {
                    return Err(Error::Protocol {
                        call: "resumable upload".into(),
                        url: redact(&uri),
                        message: "a new upload session was gone at once".into(),
                    });
                }
                Step::Transient(why) => {
                    query = true;
                    Some(why)
                }
            };
            if let Some(why) = stalled {
                failures += 1;
                if failures >= retry.max_attempts() {
                    return Err(Error::GaveUp {
                        call: "resumable upload".into(),
                        url: redact(&uri),
                        attempts: failures,
                        last: why,
                    });
                }
                let wait = retry.delay(failures);
                self.progress.note(&format!(
                    "upload at byte {offset} of {total}: {why}; asking the server what it has in {} s",
                    wait.as_secs_f32()
                ));
                std::thread::sleep(wait);
                query = true;
            }
        };
        self.progress.finish();
        if let Some(p) = state {
            remove_state(p);
        }
        ObjectInfo::from_json(&result).map_err(|message| Error::Protocol {
            call: "resumable upload".into(),
            url: format!("gs://{bucket}/{name}"),
            message,
        })
    }

    /// Starts a session; its URI. The object's CRC32C goes with the metadata, so GCS itself
    /// refuses to finish an object with other bytes.
    fn start_session(&self, bucket: &str, name: &str, identity: &FileIdentity) -> Result<String, Error> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.endpoint,
            encode(bucket),
            encode(name)
        );
        let call = "objects.insert (resumable)";
        let metadata =
            serde_json::json!({"name": name, "contentType": CONTENT_TYPE, "crc32c": identity.crc32c}).to_string();
        let bearer = self.auth.bearer(self.progress)?;
        let reply = api::send(self.client, call, &url, self.progress, || {
            self.client
                .call("POST", &url)
                .header("Authorization", &bearer)
                .header("Content-Type", "application/json; charset=UTF-8")
                .header("X-Upload-Content-Type", CONTENT_TYPE)
                .header("X-Upload-Content-Length", &identity.size.to_string())
                .body(metadata.clone().into_bytes())
        })?;
        match reply.status {
            200 | 201 => reply.header("location").map(str::to_string).ok_or_else(|| Error::Protocol {
                call: call.into(),
                url,
                message: "no Location (session URI) in the answer".into(),
            }),
            401 | 403 => Err(self.auth.refused_by(call, &url, &reply)),
            _ => Err(api::api_error(call, &url, &reply, super::auth::google_error(&reply))),
        }
    }

    /// One chunk, `data` from `offset`.
    fn put_chunk(&self, uri: &str, offset: u64, total: u64, data: Vec<u8>) -> Result<Step, Error> {
        let end = offset + data.len() as u64 - 1;
        let range = format!("bytes {offset}-{end}/{total}");
        // Time for the chunk at 64 KiB/s, over the usual allowance.
        let timeout = api::CALL_TIMEOUT + Duration::from_secs(data.len() as u64 / (64 << 10));
        let sent = self.session_call(uri)?.header("Content-Range", &range).body(data).timeout(timeout).send();
        self.step("upload chunk", uri, sent)
    }

    /// Asks the session how many bytes it has.
    fn status(&self, uri: &str, total: u64) -> Result<Step, Error> {
        let sent = self
            .session_call(uri)?
            .header("Content-Range", &format!("bytes */{total}"))
            .body(Vec::new())
            .timeout(api::CALL_TIMEOUT)
            .send();
        self.step("upload status query", uri, sent)
    }

    /// A `PUT` to the session. The session URI authorizes the upload by itself; the token goes
    /// along only to the storage endpoint's own origin, never to another host a `Location` names.
    fn session_call(&self, uri: &str) -> Result<berth_http::Call<'_>, Error> {
        let call = self.client.call("PUT", uri);
        if origin(uri) == origin(&self.endpoint) {
            return Ok(call.header("Authorization", &self.auth.bearer(self.progress)?));
        }
        Ok(call)
    }

    fn step(&self, call: &str, uri: &str, sent: Result<Reply, berth_http::Error>) -> Result<Step, Error> {
        let reply = match sent {
            Ok(r) => r,
            Err(e) if e.is_retryable() => return Ok(Step::Transient(hide_session(&e.to_string(), uri))),
            Err(source) => {
                // The client's own words may quote the URL (a malformed one): never with its session.
                let (text, url) = (source.to_string(), redact(uri));
                let hidden = hide_session(&text, uri);
                return Err(if hidden == text {
                    Error::Request { call: call.into(), url, source }
                } else {
                    Error::Operation { what: format!("{call} ({url})"), message: hidden }
                });
            }
        };
        match reply.status {
            200 | 201 => Ok(Step::Done(reply.body)),
            // "Resume Incomplete": `Range: bytes=0-LAST` persisted, none when nothing is.
            308 => match reply.header("range") {
                None => Ok(Step::Persisted(0)),
                Some(r) => parse_range(r).map(Step::Persisted).ok_or_else(|| Error::Protocol {
                    call: call.into(),
                    url: redact(uri),
                    message: format!("308 with a Range that is not bytes=0-N: {r:?}"),
                }),
            },
            404 | 410 => Ok(Step::Gone),
            401 | 403 => Err(self.auth.refused_by(call, &redact(uri), &reply)),
            s if api::retryable_status(s) => {
                let said = super::auth::google_error(&reply).unwrap_or_else(|| api::one_line(&reply.text(), 200));
                Ok(Step::Transient(format!("the server answered {s}: {said}")))
            }
            _ => Err(api::api_error(call, &redact(uri), &reply, super::auth::google_error(&reply))),
        }
    }
}

/// A session URI as errors show it: without its query, whose `upload_id` lets anyone who has
/// it write the object.
fn redact(uri: &str) -> String {
    match uri.split_once('?') {
        Some((path, _)) => format!("{path}?(upload session)"),
        None => uri.to_string(),
    }
}

/// `text` with the session URI's query (its `upload_id`) replaced, wherever it appears.
fn hide_session(text: &str, uri: &str) -> String {
    match uri.split_once('?') {
        Some((_, query)) if !query.is_empty() => text.replace(query, "(upload session)"),
        _ => text.to_string(),
    }
}

/// `scheme://host[:port]` of a URL, lowercase.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!("{scheme}://{host}").to_ascii_lowercase()
}

/// `bytes=0-N` → N + 1 bytes persisted.
fn parse_range(r: &str) -> Option<u64> {
    let last = r.trim().strip_prefix("bytes=0-")?;
    last.trim().parse::<u64>().ok()?.checked_add(1)
}

/// The state file of `file`'s upload: `.NAME.gce-upload` beside it.
pub fn state_path(file: &Path) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.with_file_name(format!(".{name}.gce-upload"))
}

fn read_state(path: &Path) -> Option<SessionState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Written whole or not at all (a temporary file renamed over it), readable by its owner only:
/// the session URI lets anyone who has it write the object.
fn write_state(path: &Path, state: &SessionState) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name(format!(
        "{}.tmp{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(state).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn remove_state(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// CRC32C of `file` as GCS writes it (base64 of the big-endian value), with its identity;
/// `progress` hears the bytes read.
pub fn identify(file: &Path, progress: &dyn Progress) -> Result<FileIdentity, Error> {
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let meta = f.metadata().map_err(|e| Error::io(file, e))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    progress.start(&format!("CRC32C of {}", file.display()), meta.len());
    let mut crc = 0u32;
    let mut buf = vec![0; 4 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read_at(&mut buf, at).map_err(|e| Error::io(file, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
        progress.advance(n as u64);
    }
    progress.finish();
    if at != meta.len() {
        return Err(Error::io(file, std::io::Error::other("the file changed size while it was read")));
    }
    Ok(FileIdentity { size: at, mtime_ns, crc32c: crc32c_base64(crc) })
}

/// A CRC32C as GCS writes it.
pub fn crc32c_base64(crc: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_checksums_are_read_as_gcs_writes_them() {
        assert_eq!(parse_range("bytes=0-262143"), Some(262144));
        assert_eq!(parse_range("bytes=5-9"), None);
        assert_eq!(parse_range("0-1"), None);
        assert_eq!(origin("https://Storage.googleapis.com/upload/x?y"), "https://storage.googleapis.com");
        assert_eq!(origin("http://127.0.0.1:9/a"), origin("http://127.0.0.1:9"));
        assert_ne!(origin("http://127.0.0.1:9/a"), origin("http://127.0.0.1:10"));
        assert_eq!(
            redact("http://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=SECRET"),
            "http://h/upload/storage/v1/b/b/o?(upload session)"
        );
        // RFC 3720's CRC32C check value: "123456789" → 0xE3069283.
        assert_eq!(crc32c_base64(crc32c::crc32c(b"123456789")), "4waSgw==");
        assert_eq!(state_path(Path::new("/o/x.gce.tar.gz")), Path::new("/o/.x.gce.tar.gz.gce-upload"));
    }

    #[test]
    fn a_state_file_is_written_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".f.gce-upload");
        let s = SessionState {
            session: "http://x/s?upload_id=1".into(),
            storage: "http://x".into(),
            bucket: "b".into(),
            object: "o".into(),
            file: FileIdentity { size: 3, mtime_ns: 4, crc32c: "AAAAAA==".into() },
        };
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p), Some(s));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn an_error_quoting_the_session_uri_hides_its_upload_id() {
        let uri = "http://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=SECRET";
        let hidden = hide_session(&format!("bad uri {uri}: something"), uri);
        assert!(!hidden.contains("SECRET"), "{hidden}");
        assert!(hidden.contains("http://h/upload/storage/v1/b/b/o?(upload session)"), "{hidden}");
        assert_eq!(hide_session("connection refused", uri), "connection refused");
    }
}
