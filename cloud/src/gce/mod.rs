//! `berth upload gce`: the `gce` artifact (`NAME.gce.tar.gz`, a gzip'd tar of `disk.raw`) into
//! a Cloud Storage bucket by a resumable upload, CRC32C checked, then a Compute Engine image
//! made from it (x86_64, `UEFI_COMPATIBLE`, `GVNIC`, `VIRTIO_SCSI_MULTIQUEUE`).
//!
//! Run again, it does only what is left: an object of the same size and CRC32C is not uploaded
//! again, an interrupted upload goes on with its session from where the server says, and an
//! image of the name made from the same object is reported, not made twice. An image whose
//! creation failed is deleted, so nothing is left half made.
//!
//! [`auth`] finds the credentials (a service-account key or an access token), [`gcs`] speaks
//! Cloud Storage, [`compute`] Compute Engine.

pub mod auth;
pub mod compute;
pub mod gcs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_http::{Client, Retry};
use serde::Serialize;

use crate::percent::{encode, encode_path};
use crate::{Error, Progress};
pub use auth::{CredentialOptions, Credentials};

/// Cloud Storage's endpoint.
pub const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";
/// Compute Engine's endpoint.
pub const COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com";
/// The URL `rawDisk.source` names objects by (whatever endpoint the upload went to).
pub const OBJECT_URL_BASE: &str = "https://storage.googleapis.com";
/// The default chunk size: 8 MiB (Google's client libraries use 8 to 100 MiB).
pub const DEFAULT_CHUNK: u64 = 8 << 20;
/// The largest chunk: each is held in memory once.
pub const MAX_CHUNK: u64 = 512 << 20;

/// What to upload where, and what image to make.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bucket.
    pub bucket: String,
    /// The object's name; the file's name without it.
    pub object: Option<String>,
    /// The project of the image; the key's `project_id` without it.
    pub project: Option<String>,
    /// The image's name; the file's name without `.gce.tar.gz` without it.
    pub image: Option<String>,
    /// The image family.
    pub family: Option<String>,
    /// The image's description; one naming the object and its CRC32C without it.
    pub description: Option<String>,
    /// Cloud Storage's endpoint ([`STORAGE_ENDPOINT`]).
    pub storage_endpoint: String,
    /// Compute Engine's endpoint ([`COMPUTE_ENDPOINT`]).
    pub compute_endpoint: String,
    /// Bytes per chunk: a multiple of 256 KiB.
    pub chunk_size: u64,
    /// Where the upload session is kept between runs; beside the file without it
    /// ([`gcs::state_path`]).
    pub state_file: Option<PathBuf>,
    /// The longest wait between two polls of an operation.
    pub poll: Duration,
    /// How long image creation may take before the run stops waiting (it goes on in the cloud;
    /// a run again waits for it).
    pub operation_timeout: Duration,
}

impl Options {
    /// The defaults for an upload into `bucket`.
    pub fn new(bucket: &str) -> Options {
        Options {
            bucket: bucket.to_string(),
            object: None,
            project: None,
            image: None,
            family: None,
            description: None,
            storage_endpoint: STORAGE_ENDPOINT.into(),
            compute_endpoint: COMPUTE_ENDPOINT.into(),
            chunk_size: DEFAULT_CHUNK,
            state_file: None,
            poll: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(3600),
        }
    }
}

/// What was uploaded and made (`berth upload gce --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The bucket.
    pub bucket: String,
    /// The object.
    pub object: String,
    /// The object's CRC32C (base64, big-endian, as GCS writes it), equal to the file's.
    pub crc32c: String,
    /// The object's size, equal to the file's.
    pub size: u64,
    /// The image's name.
    pub image: String,
    /// The image's URL in the Compute Engine API.
    pub image_self_link: String,
    /// Whether the object was there already (same size and CRC32C), so nothing was uploaded.
    pub reused_object: bool,
    /// Whether the image was there already, so none was made.
    pub reused_image: bool,
}

/// The client for these calls: the retry policy `retry` ([`crate::api::RETRY`] in the
/// program) and no redirects followed, since GCS's `308 Resume Incomplete` is none.
pub fn client(retry: Retry) -> Client {
    Client::builder(concat!("berth/", env!("CARGO_PKG_VERSION"))).retry(retry).no_redirects().build()
}

/// The object part of an upload ([`upload_object`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectOutcome {
    /// The bucket.
    pub bucket: String,
    /// The object.
    pub object: String,
    /// The object's CRC32C, equal to the file's.
    pub crc32c: String,
    /// The object's size, equal to the file's.
    pub size: u64,
    /// Whether the object was there already, so nothing was uploaded.
    pub reused: bool,
}

/// Uploads `file` and makes the image, as `opts` says, with `credentials`, through `client`
/// (made by [`client`]); `progress` hears the transfer and each step.
pub fn upload(
    client: &Client,
    file: &Path,
    credentials: Credentials,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome, Error> {
    // Everything that can be judged here is, before anything is sent.
    let object = checked_object(file, opts)?;
    let image = match &opts.image {
        Some(i) => i.clone(),
        None => {
            let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            default_image_name(&file_name).ok_or_else(|| {
                Error::Invalid(format!(
                    "no image name can be made of the file name {file_name:?} (lowercase letters, digits and \
                     hyphens, starting with a letter): give --image NAME"
                ))
            })?
        }
    };
    check_image_name("image", &image)?;
    if let Some(f) = &opts.family {
        check_image_name("family", f)?;
    }
    let compute_endpoint = endpoint("--compute-endpoint", &opts.compute_endpoint)?;
    let project = match opts.project.clone().or_else(|| credentials.project_id().map(str::to_string)) {
        Some(p) => p,
        None => return Err(Error::Invalid("no project: give --project (an access token names none)".into())),
    };

    let auth = auth::Auth::new(client, credentials);
    let o = put_object(client, &auth, file, &object, opts, progress)?;
    let gs = format!("gs://{}/{}", o.bucket, o.object);
    let compute = compute::Compute {
        client,
        auth: &auth,
        endpoint: compute_endpoint,
        project,
        progress,
        poll: opts.poll,
        timeout: opts.operation_timeout,
    };
    let spec = compute::ImageSpec {
        name: image.clone(),
        family: opts.family.clone(),
        description: opts.description.clone().unwrap_or_else(|| format!("Berth image from {gs} (CRC32C {})", o.crc32c)),
        source: format!("{OBJECT_URL_BASE}/{}/{}", encode(&o.bucket), encode_path(&o.object)),
        archive_size: o.size,
        crc32c: o.crc32c.clone(),
    };
    let (made, reused_image) = compute.ensure_image(&spec)?;
    Ok(Outcome {
        bucket: o.bucket,
        object: o.object,
        crc32c: o.crc32c,
        size: o.size,
        image: made.name,
        image_self_link: made.self_link,
        reused_object: o.reused,
        reused_image,
    })
}

/// Only the object part of [`upload`]: `file` into the bucket, checked, no image.
pub fn upload_object(
    client: &Client,
    file: &Path,
    credentials: Credentials,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<ObjectOutcome, Error> {
    let object = checked_object(file, opts)?;
    let auth = auth::Auth::new(client, credentials);
    put_object(client, &auth, file, &object, opts, progress)
}

/// The checks of the file and the storage options; the object's name.
fn checked_object(file: &Path, opts: &Options) -> Result<String, Error> {
    check_tarball(file)?;
    let object = match &opts.object {
        Some(o) => o.clone(),
        None => file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    check_bucket(&opts.bucket)?;
    check_object(&object)?;
    check_chunk(opts.chunk_size)?;
    endpoint("--storage-endpoint", &opts.storage_endpoint)?;
    Ok(object)
}

/// The object, uploaded unless there already, and equal to the file by size and CRC32C.
fn put_object(
    client: &Client,
    auth: &auth::Auth<'_>,
    file: &Path,
    object: &str,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<ObjectOutcome, Error> {
    let storage_endpoint = endpoint("--storage-endpoint", &opts.storage_endpoint)?;
    let storage = gcs::Storage { client, auth, endpoint: storage_endpoint, progress };
    let identity = gcs::identify(file, progress)?;
    let gs = format!("gs://{}/{object}", opts.bucket);
    let (uploaded, reused) = match storage.object(&opts.bucket, object)? {
        Some(o) if o.size == identity.size && o.crc32c.as_deref() == Some(identity.crc32c.as_str()) => {
            progress.note(&format!("{gs} is there already (same size and CRC32C): not uploaded again"));
            if let Some(p) = state_file(file, opts) {
                let _ = std::fs::remove_file(p);
            }
            (o, true)
        }
        existing => {
            if let Some(o) = existing {
                progress.note(&format!("{gs} exists with other contents ({} bytes): replacing it", o.size));
            }
            let state = state_file(file, opts);
            let o = storage.upload(file, &identity, &opts.bucket, object, opts.chunk_size, state.as_deref())?;
            (o, false)
        }
    };
    // The object must be the file, as far as CRC32C and size tell, before an image is made of it.
    if uploaded.size != identity.size || uploaded.crc32c.as_deref() != Some(identity.crc32c.as_str()) {
        return Err(Error::Protocol {
            call: "resumable upload".into(),
            url: gs,
            message: format!(
                "the object has {} bytes, CRC32C {}; the file {} has {} bytes, CRC32C {}: no image made",
                uploaded.size,
                uploaded.crc32c.as_deref().unwrap_or("(none)"),
                file.display(),
                identity.size,
                identity.crc32c
            ),
        });
    }
    Ok(ObjectOutcome {
        bucket: opts.bucket.clone(),
        object: object.to_string(),
        crc32c: identity.crc32c,
        size: identity.size,
        reused,
    })
}

fn state_file(file: &Path, opts: &Options) -> Option<PathBuf> {
    Some(opts.state_file.clone().unwrap_or_else(|| gcs::state_path(file)))
}

/// The file must be a gzip stream (GCE takes only a gzip'd tar of `disk.raw`).
pub fn check_tarball(file: &Path) -> Result<(), Error> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let n = f.read(&mut magic).map_err(|e| Error::io(file, e))?;
    if n < 2 || magic != [0x1f, 0x8b] {
        return Err(Error::Invalid(format!(
            "{} is not a gzip file: give the gce artifact (NAME.gce.tar.gz, a gzip'd tar of disk.raw) \
             that berth export --platform gce writes",
            file.display()
        )));
    }
    Ok(())
}

/// `NAME.gce.tar.gz` → `NAME`, when that is an image name (lowercase, `.` and `_` as `-`).
pub fn default_image_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".gce.tar.gz").or_else(|| file_name.strip_suffix(".tar.gz"))?;
    let name: String = stem.to_ascii_lowercase().chars().map(|c| if c == '.' || c == '_' { '-' } else { c }).collect();
    check_image_name("image", &name).ok()?;
    Some(name)
}

/// GCE's resource names: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
fn check_image_name(what: &str, name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what} name {name:?}: GCE names are 1 to 63 lowercase letters, digits and hyphens, starting with a \
             letter and not ending with a hyphen"
        )))
    }
}

/// Bucket names: 3 to 63 characters of lowercase letters, digits, `-`, `_`, `.` (222 with dots),
/// starting and ending with a letter or digit.
fn check_bucket(name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    let max = if name.contains('.') { 222 } else { 63 };
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (3..=max).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bucket name {name:?}: 3 to 63 lowercase letters, digits, '-', '_' and '.', starting and ending with \
             a letter or digit"
        )))
    }
}

/// Object names: 1 to 1024 bytes, no line breaks.
fn check_object(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 1024 || name.contains(['\r', '\n']) || name == "." || name == ".." {
        return Err(Error::Invalid(format!("object name {name:?}: 1 to 1024 bytes without line breaks")));
    }
    Ok(())
}

fn check_chunk(chunk: u64) -> Result<(), Error> {
    if chunk == 0 || !chunk.is_multiple_of(gcs::CHUNK_GRANULE) || chunk > MAX_CHUNK {
        return Err(Error::Invalid(format!(
            "chunk size {chunk}: a multiple of 256 KiB (262144 bytes), at most {} MiB",
            MAX_CHUNK >> 20
        )));
    }
    Ok(())
}

/// An endpoint without its trailing `/`, if it is an http(s) URL.
fn endpoint(option: &str, url: &str) -> Result<String, Error> {
    let u = url.trim_end_matches('/');
    let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#', ' ']) => Ok(u.to_string()),
        _ => Err(Error::Invalid(format!("{option} {url:?}: an http:// or https:// URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_gce_and_gcs_do() {
        assert_eq!(default_image_name("berth-1.2.gce.tar.gz").as_deref(), Some("berth-1-2"));
        assert_eq!(default_image_name("My_Image.gce.tar.gz").as_deref(), Some("my-image"));
        assert_eq!(default_image_name("1x.gce.tar.gz"), None);
        assert_eq!(default_image_name("x.img"), None);
        assert!(check_image_name("image", "a").is_ok());
        assert!(check_image_name("image", "a-").is_err());
        assert!(check_image_name("image", &"a".repeat(64)).is_err());
        assert!(check_bucket("my-bucket").is_ok());
        assert!(check_bucket("My-bucket").is_err());
        assert!(check_bucket("ab").is_err());
        assert!(check_object("dir/x.tar.gz").is_ok());
        assert!(check_object("a\nb").is_err());
        assert!(check_chunk(256 << 10).is_ok());
        assert!(check_chunk(300 << 10).is_err());
        assert!(check_chunk(0).is_err());
        assert_eq!(endpoint("--x", "http://127.0.0.1:5/").unwrap(), "http://127.0.0.1:5");
        assert!(endpoint("--x", "ftp://h").is_err());
        assert_eq!(encode("a b/c+é"), "a%20b%2Fc%2B%C3%A9");
        assert_eq!(encode_path("d/x y.tar.gz"), "d/x%20y.tar.gz");
    }

    #[test]
    fn a_file_that_is_not_gzip_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gce.tar.gz");
        std::fs::write(&p, b"disk.raw\0\0\0").unwrap();
        let e = check_tarball(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("not a gzip file"), "{e}");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0]).unwrap();
        assert!(check_tarball(&p).is_ok());
    }
}
