//! Compute Engine: an image from the uploaded tarball (`images.insert` with `rawDisk.source`,
//! cloud.google.com/compute/docs/reference/rest/v1/images/insert), its global operation polled
//! to `DONE` (`globalOperations.get`), and nothing left behind when it fails.
//!
//! Idempotent: an image of the name that exists already (from the same object) is reported, not
//! made again; one still being made by an earlier, interrupted run is waited for; the insert
//! carries a `requestId`, so a retried request is the same request.

use std::time::{Duration, Instant};

use berth_http::{Client, Reply};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{Auth, google_error};
use super::encode;
use crate::{Error, Progress, api};

/// The guest OS features every Berth image declares: UEFI boot (and with it Shielded VM),
/// gVNIC (without it GCE refuses gVNIC instances), and multi-queue virtio-scsi.
pub const GUEST_OS_FEATURES: [&str; 3] = ["UEFI_COMPATIBLE", "GVNIC", "VIRTIO_SCSI_MULTIQUEUE"];

/// What image to make.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The image's name.
    pub name: String,
    /// Its family, if any.
    pub family: Option<String>,
    /// Its description.
    pub description: String,
    /// `https://storage.googleapis.com/BUCKET/OBJECT`.
    pub source: String,
    /// The tarball's size (what GCE reports as `archiveSizeBytes`).
    pub archive_size: u64,
    /// The tarball's CRC32C (as GCS writes it), kept in the image's label [`CRC32C_LABEL`], so
    /// that a later run knows the image was made of these bytes.
    pub crc32c: String,
}

/// The image label holding the tarball's CRC32C, in hex (label values are lowercase letters,
/// digits, `-` and `_`).
pub const CRC32C_LABEL: &str = "berth-crc32c";

/// A CRC32C as GCS writes it (base64 of the big-endian value) → lowercase hex, for a label.
fn crc32c_hex(b64: &str) -> String {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => String::new(),
    }
}

/// An image as `images.get` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its name.
    pub name: String,
    /// Its URL in the API.
    pub self_link: String,
    /// `PENDING`, `READY`, `FAILED` or `DELETING`.
    pub status: String,
    source: Option<String>,
    archive_size: Option<u64>,
    crc32c_label: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageJson {
    name: String,
    #[serde(default)]
    self_link: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    raw_disk: Option<RawDisk>,
    // A 64-bit integer, written as a string.
    #[serde(default)]
    archive_size_bytes: Option<String>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct RawDisk {
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: Option<OperationError>,
    #[serde(default)]
    http_error_message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct OperationError {
    #[serde(default)]
    errors: Vec<OperationErrorItem>,
}

#[derive(Debug, Clone, Deserialize)]
struct OperationErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Operation {
    /// The operation's errors on one line, if it failed.
    fn failure(&self) -> Option<String> {
        let errors = self.error.as_ref()?;
        let mut text: Vec<String> = errors.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect();
        if text.is_empty() {
            text.push(self.http_error_message.clone().unwrap_or_else(|| "failed (no reason given)".into()));
        }
        Some(text.join("; "))
    }
}

/// The Compute Engine API of one project.
pub struct Compute<'a> {
    pub(super) client: &'a Client,
    pub(super) auth: &'a Auth<'a>,
    /// `https://compute.googleapis.com`, or a test's endpoint.
    pub(super) endpoint: String,
    pub(super) project: String,
    pub(super) progress: &'a dyn Progress,
    /// The longest wait between two polls of an operation.
    pub(super) poll: Duration,
    /// How long an operation may take before the run stops waiting for it.
    pub(super) timeout: Duration,
}

impl Compute<'_> {
    /// `method url` with the bearer token (and `json` as the body), through the one retry policy.
    fn send(&self, call: &str, method: &str, url: &str, json: Option<&str>) -> Result<Reply, Error> {
        let bearer = self.auth.bearer(self.progress)?;
        api::send(self.client, call, url, self.progress, || {
            let c = self.client.call(method, url).header("Authorization", &bearer);
            match json {
                Some(body) => c.header("Content-Type", "application/json").body(body.as_bytes().to_vec()),
                None => c,
            }
        })
    }

    fn images_url(&self) -> String {
        format!("{}/compute/v1/projects/{}/global/images", self.endpoint, encode(&self.project))
    }

    /// The image called `name`, if there is one.
    pub fn image(&self, name: &str) -> Result<Option<ImageInfo>, Error> {
        let url = format!("{}/{}", self.images_url(), encode(name));
        let call = "images.get";
        let reply = self.send(call, "GET", &url, None)?;
        match reply.status {
            200 => {
                let i: ImageJson = parse(call, &url, &reply, "an image")?;
                Ok(Some(ImageInfo {
                    name: i.name,
                    self_link: i.self_link,
                    status: i.status,
                    source: i.raw_disk.and_then(|r| r.source),
                    archive_size: i.archive_size_bytes.and_then(|s| s.parse().ok()),
                    crc32c_label: i.labels.get(CRC32C_LABEL).cloned(),
                }))
            }
            404 => Ok(None),
            401 | 403 => Err(self.auth.refused_by(call, &url, &reply)),
            _ => Err(api::api_error(call, &url, &reply, google_error(&reply))),
        }
    }

    /// The image `spec` describes: the one there is (`true`), or a new one (`false`).
    pub fn ensure_image(&self, spec: &ImageSpec) -> Result<(ImageInfo, bool), Error> {
        if let Some(found) = self.image(&spec.name)? {
            return self.existing(spec, found).map(|i| (i, true));
        }
        let url = format!("{}?requestId={}", self.images_url(), request_id());
        let call = "images.insert";
        let mut body = serde_json::json!({
            "name": spec.name,
            "description": spec.description,
            "architecture": "X86_64",
            "rawDisk": {"source": spec.source},
            "guestOsFeatures": GUEST_OS_FEATURES.iter().map(|f| serde_json::json!({"type": f})).collect::<Vec<_>>(),
            "labels": {CRC32C_LABEL: crc32c_hex(&spec.crc32c)},
        });
        if let Some(family) = &spec.family {
            body["family"] = family.as_str().into();
        }
        let body = body.to_string();
        let reply = self.send(call, "POST", &url, Some(&body))?;
        let op: Operation = match reply.status {
            200 | 201 => parse(call, &url, &reply, "an operation")?,
            // Made meanwhile (another run): that one is the image.
            409 => {
                let found = self.image(&spec.name)?.ok_or_else(|| {
                    api::api_error(call, &url, &reply, Some("409 alreadyExists, but images.get finds no image".into()))
                })?;
                return self.existing(spec, found).map(|i| (i, true));
            }
            401 | 403 => return Err(self.auth.refused_by(call, &url, &reply)),
            _ => return Err(api::api_error(call, &url, &reply, google_error(&reply))),
        };
        self.progress.note(&format!("images.insert {}: operation {}", spec.name, op.name));
        let what = format!("images.insert {} (operation {})", spec.name, op.name);
        let done = self.wait(&op, &what)?;
        if let Some(failure) = done.failure() {
            // Whatever the failed operation left (an image in FAILED) goes, so nothing is half made.
            let cleanup = match self.image(&spec.name) {
                Ok(None) => "no image was left".to_string(),
                Ok(Some(_)) => match self.delete(&spec.name) {
                    Ok(()) => "the image it left was deleted".to_string(),
                    Err(e) => format!("the image it left could not be deleted ({e}): delete it by hand"),
                },
                Err(e) => format!("whether it left an image is unknown ({e})"),
            };
            return Err(Error::Operation { what, message: format!("{failure}; {cleanup}") });
        }
        match self.image(&spec.name)? {
            Some(image) => self.until_settled(image).map(|i| (i, false)),
            None => Err(Error::Operation { what, message: "done without error, but there is no image".into() }),
        }
    }

    /// An image of the name that exists: ours if made from the same object, waited for when an
    /// earlier run's insert is still going on.
    fn existing(&self, spec: &ImageSpec, found: ImageInfo) -> Result<ImageInfo, Error> {
        let other = |what: String| {
            Error::Invalid(format!(
                "image {} exists already, made from {what}: give another --image, or delete it \
                 (gcloud compute images delete {})",
                spec.name, spec.name
            ))
        };
        if let Some(src) = &found.source
            && !same_object(src, &spec.source)
        {
            return Err(other(src.clone()));
        }
        if let Some(size) = found.archive_size
            && size != spec.archive_size
        {
            return Err(other(format!("a tarball of {size} bytes, not this one of {}", spec.archive_size)));
        }
        if let Some(label) = &found.crc32c_label
            && *label != crc32c_hex(&spec.crc32c)
        {
            return Err(other(format!(
                "a tarball of CRC32C {label} (hex), not this one's {}",
                crc32c_hex(&spec.crc32c)
            )));
        }
        self.progress.note(&format!("image {} exists already ({}): not made again", spec.name, found.status));
        self.until_settled(found)
    }

    /// Waits while the image is `PENDING`; it must end `READY`.
    fn until_settled(&self, mut image: ImageInfo) -> Result<ImageInfo, Error> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(250).min(self.poll);
        while image.status == "PENDING" {
            if start.elapsed() > self.timeout {
                return Err(Error::Operation {
                    what: format!("image {}", image.name),
                    message: format!(
                        "still PENDING after {:.1} s; run again to go on waiting",
                        self.timeout.as_secs_f64()
                    ),
                });
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(self.poll);
            image = match self.image(&image.name)? {
                Some(i) => i,
                None => {
                    return Err(Error::Operation {
                        what: format!("image {}", image.name),
                        message: "it was PENDING and is gone (its creation failed): run again".into(),
                    });
                }
            };
        }
        if image.status != "READY" {
            return Err(Error::Operation {
                what: format!("image {}", image.name),
                message: format!(
                    "its status is {}; delete it (gcloud compute images delete {}) and run again",
                    image.status, image.name
                ),
            });
        }
        Ok(image)
    }

    /// Polls `op` until it is `DONE`; the last state.
    fn wait(&self, op: &Operation, what: &str) -> Result<Operation, Error> {
        let url = format!(
            "{}/compute/v1/projects/{}/global/operations/{}",
            self.endpoint,
            encode(&self.project),
            encode(&op.name)
        );
        let call = "globalOperations.get";
        let start = Instant::now();
        let mut wait = Duration::from_millis(250).min(self.poll);
        if op.status == "DONE" {
            return Ok(op.clone());
        }
        loop {
            std::thread::sleep(wait);
            let reply = self.send(call, "GET", &url, None)?;
            let now: Operation = match reply.status {
                200 => parse(call, &url, &reply, "an operation")?,
                401 | 403 => return Err(self.auth.refused_by(call, &url, &reply)),
                _ => return Err(api::api_error(call, &url, &reply, google_error(&reply))),
            };
            if now.status == "DONE" {
                return Ok(now);
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Operation {
                    what: what.to_string(),
                    message: format!(
                        "still {} after {:.1} s; it goes on in the cloud: run again to wait for the image",
                        now.status,
                        self.timeout.as_secs_f64()
                    ),
                });
            }
            wait = (wait * 2).min(self.poll);
        }
    }

    /// Deletes the image `name` and waits for it to be gone.
    fn delete(&self, name: &str) -> Result<(), Error> {
        let url = format!("{}/{}", self.images_url(), encode(name));
        let call = "images.delete";
        let reply = self.send(call, "DELETE", &url, None)?;
        let op: Operation = match reply.status {
            200 | 201 => parse(call, &url, &reply, "an operation")?,
            404 => return Ok(()),
            401 | 403 => return Err(self.auth.refused_by(call, &url, &reply)),
            _ => return Err(api::api_error(call, &url, &reply, google_error(&reply))),
        };
        let what = format!("images.delete {name} (operation {})", op.name);
        let done = self.wait(&op, &what)?;
        match done.failure() {
            Some(message) => Err(Error::Operation { what, message }),
            None => Ok(()),
        }
    }
}

/// Whether two ways of naming an object (`https://storage.googleapis.com/B/O`,
/// `https://storage.cloud.google.com/B/O`, `gs://B/O`) name the same one.
fn same_object(a: &str, b: &str) -> bool {
    fn path(u: &str) -> &str {
        for prefix in ["https://storage.googleapis.com/", "https://storage.cloud.google.com/", "gs://"] {
            if let Some(rest) = u.strip_prefix(prefix) {
                return rest;
            }
        }
        u
    }
    path(a) == path(b)
}

/// `reply`'s JSON body as `what` (`an image`), or the error naming the call.
fn parse<T: DeserializeOwned>(call: &str, url: &str, reply: &Reply, what: &str) -> Result<T, Error> {
    serde_json::from_slice(&reply.body).map_err(|e| Error::Protocol {
        call: call.into(),
        url: url.to_string(),
        message: format!("not {what}: {e}"),
    })
}

/// A random UUID (version 4): `images.insert`'s `requestId`, so that a retried insert is not a
/// second one.
fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    // Without randomness the id is still unique enough for one run: the clock.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuids_and_objects_compare_by_bucket_and_name() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, request_id());
        assert!(same_object("gs://b/x.tar.gz", "https://storage.googleapis.com/b/x.tar.gz"));
        assert!(!same_object("gs://b/y.tar.gz", "https://storage.googleapis.com/b/x.tar.gz"));
        assert_eq!(crc32c_hex("4waSgw=="), "e3069283");
    }
}
