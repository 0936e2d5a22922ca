//! A Generation 2 managed image from the uploaded blob, through Azure Resource Manager:
//! `PUT …/providers/Microsoft.Compute/images/NAME` (`hyperVGeneration: V2`, a generalized Linux
//! OS disk whose `blobUri` is the page blob), then the long-running operation polled to its end
//! (`Azure-AsyncOperation`, else `Location`, else the image's `provisioningState`).
//!
//! Idempotent and never half-registered: an image of that name is read first; one made from the
//! same blob is reported (and waited for, if still being created), one from another blob is an
//! error (never replaced). An image whose provisioning ends `Failed` is deleted, and the error
//! says so, so that a re-run starts clean.

use std::time::{Duration, Instant};

use berth_http::{Client, Reply};
use serde_json::{Value, json};

use crate::api::{self, one_line};
use crate::{Error, Progress};

/// The Microsoft.Compute API version of the image calls.
pub const API_VERSION: &str = "2023-09-01";
/// Resource Manager's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";

/// Where the image goes and with which token.
#[derive(Clone)]
pub struct ImageSpec {
    /// `https://management.azure.com` (or a fake's `http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The subscription id.
    pub subscription: String,
    /// The resource group.
    pub resource_group: String,
    /// The region (`westeurope`).
    pub location: String,
    /// The image's name.
    pub name: String,
    /// An Entra ID access token for Resource Manager.
    pub token: String,
    /// Where the token came from (`AZURE_ACCESS_TOKEN`, `--access-token-file F`).
    pub token_source: String,
    /// The wait between two polls when the service does not say (`Retry-After`).
    pub poll_interval: Duration,
    /// How long the image may take to provision.
    pub timeout: Duration,
}

impl std::fmt::Debug for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSpec").field("url", &self.url()).field("token_source", &self.token_source).finish()
    }
}

impl ImageSpec {
    /// The image's resource id: `/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/images/N`.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/images/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// The image's URL with its api-version.
    pub fn url(&self) -> String {
        format!("{}{}?api-version={API_VERSION}", self.endpoint.trim_end_matches('/'), self.id())
    }

    fn check(&self) -> Result<(), Error> {
        let name_ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')'))
        };
        if !name_ok(&self.subscription, 64) || !name_ok(&self.resource_group, 90) || !name_ok(&self.location, 64) {
            return Err(Error::Invalid(
                "subscription, resource group and location: letters, digits, - _ . ( )".to_string(),
            ));
        }
        // Microsoft.Compute/images: 1-80 characters, letters, digits, _ . -, starting with a
        // letter or digit, not ending with . or -.
        let n = &self.name;
        let ok = (1..=80).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && !n.ends_with('.')
            && !n.ends_with('-');
        if !ok {
            return Err(Error::Invalid(format!(
                "image name {n:?}: 1 to 80 letters, digits, _ . -, not ending in . or -"
            )));
        }
        Ok(())
    }
}

/// What happened to the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOutcome {
    /// Its resource id, as Resource Manager gives it.
    pub id: String,
    /// Whether it existed already (made from the same blob by an earlier run).
    pub reused: bool,
}

/// Creates the image of `spec` from the page blob at `blob_uri` (no SAS), or finds the one an
/// earlier run made.
pub fn create_image(
    client: &Client,
    spec: &ImageSpec,
    blob_uri: &str,
    progress: &dyn Progress,
) -> Result<ImageOutcome, Error> {
    spec.check()?;
    if let Some(image) = get(client, spec, progress)? {
        same_blob(spec, &image, blob_uri)?;
        let image = match state(&image).as_str() {
            "Succeeded" => image,
            "Failed" | "Canceled" => {
                progress.note(&format!(
                    "image {}: an earlier run's image ended {}; deleting it and creating it again",
                    spec.name,
                    state(&image)
                ));
                delete(client, spec, progress)?;
                return put_and_wait(client, spec, blob_uri, progress);
            }
            other => {
                progress.note(&format!("image {}: found {other}, from an earlier run; waiting for it", spec.name));
                wait_image(client, spec, progress)?
            }
        };
        finished(client, spec, &image, progress)?;
        return Ok(ImageOutcome { id: image_id(&image, spec), reused: true });
    }
    put_and_wait(client, spec, blob_uri, progress)
}

/// What can be known before the upload: that the token is taken and that the image's name is
/// free or already this blob's, so that a long upload does not end in a refusal.
pub fn preflight(client: &Client, spec: &ImageSpec, blob_uri: &str, progress: &dyn Progress) -> Result<(), Error> {
    spec.check()?;
    match get(client, spec, progress)? {
        Some(image) => same_blob(spec, &image, blob_uri),
        None => Ok(()),
    }
}

/// An existing image must have been made from `blob_uri`: Berth never replaces one.
fn same_blob(spec: &ImageSpec, image: &Value, blob_uri: &str) -> Result<(), Error> {
    let found = image_blob(image);
    if found.eq_ignore_ascii_case(blob_uri) {
        return Ok(());
    }
    Err(Error::Operation {
        what: format!("image {}", spec.id()),
        message: format!(
            "exists, made from {found}, not {blob_uri}; berth never replaces an image: choose another \
             --image-name or delete it (az image delete)"
        ),
    })
}

fn put_and_wait(
    client: &Client,
    spec: &ImageSpec,
    blob_uri: &str,
    progress: &dyn Progress,
) -> Result<ImageOutcome, Error> {
    let url = spec.url();
    let body = json!({
        "location": spec.location,
        "properties": {
            "hyperVGeneration": "V2",
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "osState": "Generalized",
                    "blobUri": blob_uri,
                    "caching": "ReadWrite",
                },
            },
        },
    });
    let body = body.to_string().into_bytes();
    let reply = api::send(client, "images.createOrUpdate", &url, progress, || {
        client
            .call("PUT", &url)
            .header("Authorization", &format!("Bearer {}", spec.token))
            .header("Content-Type", "application/json")
            .body(body.clone())
    })?;
    if !(200..=202).contains(&reply.status) {
        return Err(error("images.createOrUpdate", &url, &reply, spec));
    }
    progress.note(&format!("image {}: creating (Resource Manager accepted it)", spec.name));
    if let Some(op) = reply.header("azure-asyncoperation").map(str::to_string) {
        wait_operation(client, spec, &op, progress)?;
    } else if reply.status == 202
        && let Some(loc) = reply.header("location").map(str::to_string)
    {
        wait_location(client, spec, &loc, progress)?;
    }
    let image = wait_image(client, spec, progress)?;
    finished(client, spec, &image, progress)?;
    Ok(ImageOutcome { id: image_id(&image, spec), reused: false })
}

/// Errors unless `image` ended `Succeeded`; a `Failed` one is deleted first (and the error says so).
fn finished(client: &Client, spec: &ImageSpec, image: &Value, progress: &dyn Progress) -> Result<(), Error> {
    let state = state(image);
    if state == "Succeeded" {
        return Ok(());
    }
    let why = image
        .pointer("/properties/error/message")
        .and_then(Value::as_str)
        .map(|m| format!(" ({})", one_line(m, 200)))
        .unwrap_or_default();
    let cleanup = match delete(client, spec, progress) {
        Ok(()) => "the image was deleted, so a re-run starts clean".to_string(),
        Err(e) => format!("deleting it failed too ({e}): delete it with az image delete"),
    };
    Err(Error::Operation {
        what: format!("image {}", spec.id()),
        message: format!("provisioning ended {state}{why}; {cleanup}"),
    })
}

fn state(image: &Value) -> String {
    image.pointer("/properties/provisioningState").and_then(Value::as_str).unwrap_or("").to_string()
}

fn image_blob(image: &Value) -> String {
    image.pointer("/properties/storageProfile/osDisk/blobUri").and_then(Value::as_str).unwrap_or("").to_string()
}

fn image_id(image: &Value, spec: &ImageSpec) -> String {
    image.get("id").and_then(Value::as_str).map_or_else(|| spec.id(), str::to_string)
}

/// The image, or `None` when there is none of that name.
fn get(client: &Client, spec: &ImageSpec, progress: &dyn Progress) -> Result<Option<Value>, Error> {
    let url = spec.url();
    let reply = api::send(client, "images.get", &url, progress, || {
        client.call("GET", &url).header("Authorization", &format!("Bearer {}", spec.token))
    })?;
    match reply.status {
        200 => parse(&reply, "images.get", &url).map(Some),
        404 => Ok(None),
        _ => Err(error("images.get", &url, &reply, spec)),
    }
}

fn delete(client: &Client, spec: &ImageSpec, progress: &dyn Progress) -> Result<(), Error> {
    let url = spec.url();
    let reply = api::send(client, "images.delete", &url, progress, || {
        client.call("DELETE", &url).header("Authorization", &format!("Bearer {}", spec.token))
    })?;
    if !matches!(reply.status, 200 | 202 | 204) {
        return Err(error("images.delete", &url, &reply, spec));
    }
    // The deletion is itself long-running: done when the image is gone.
    let start = Instant::now();
    while get(client, spec, progress)?.is_some() {
        if start.elapsed() > spec.timeout {
            return Err(Error::Operation {
                what: format!("image {}", spec.id()),
                message: "still there after its deletion".to_string(),
            });
        }
        std::thread::sleep(spec.poll_interval);
    }
    Ok(())
}

/// Polls the image until its provisioning is over (neither `Creating` nor `Updating`).
fn wait_image(client: &Client, spec: &ImageSpec, progress: &dyn Progress) -> Result<Value, Error> {
    let start = Instant::now();
    loop {
        let image = get(client, spec, progress)?.ok_or_else(|| Error::Operation {
            what: format!("image {}", spec.id()),
            message: "gone while it was being created".to_string(),
        })?;
        let s = state(&image);
        if !matches!(s.as_str(), "Creating" | "Updating" | "Accepted" | "InProgress" | "") {
            return Ok(image);
        }
        if start.elapsed() > spec.timeout {
            return Err(Error::Operation {
                what: format!("image {}", spec.id()),
                message: format!("still {s} after {} s", spec.timeout.as_secs()),
            });
        }
        std::thread::sleep(spec.poll_interval);
    }
}

/// Polls an `Azure-AsyncOperation` URL until its `status` is final; a `Failed` or `Canceled`
/// operation is left for [`finished`] to report with the image's state.
fn wait_operation(client: &Client, spec: &ImageSpec, op: &str, progress: &dyn Progress) -> Result<(), Error> {
    same_endpoint(spec, op)?;
    let start = Instant::now();
    loop {
        let reply = api::send(client, "operation status", op, progress, || {
            client.call("GET", op).header("Authorization", &format!("Bearer {}", spec.token))
        })?;
        if reply.status != 200 {
            return Err(error("operation status", op, &reply, spec));
        }
        let v = parse(&reply, "operation status", op)?;
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        match status {
            "Succeeded" => return Ok(()),
            "Failed" | "Canceled" => {
                let why = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
                progress.note(&format!("image {}: operation {status} {}", spec.name, one_line(why, 200)));
                return Ok(());
            }
            _ => {}
        }
        if start.elapsed() > spec.timeout {
            return Err(Error::Operation {
                what: format!("image {}", spec.id()),
                message: format!("still {status} after {} s", spec.timeout.as_secs()),
            });
        }
        std::thread::sleep(retry_after(&reply).unwrap_or(spec.poll_interval));
    }
}

/// Polls a `Location` URL until it stops answering 202.
fn wait_location(client: &Client, spec: &ImageSpec, loc: &str, progress: &dyn Progress) -> Result<(), Error> {
    same_endpoint(spec, loc)?;
    let start = Instant::now();
    loop {
        let reply = api::send(client, "operation result", loc, progress, || {
            client.call("GET", loc).header("Authorization", &format!("Bearer {}", spec.token))
        })?;
        match reply.status {
            202 => {}
            200 | 201 | 204 => return Ok(()),
            _ => return Err(error("operation result", loc, &reply, spec)),
        }
        if start.elapsed() > spec.timeout {
            return Err(Error::Operation {
                what: format!("image {}", spec.id()),
                message: "the operation did not end in time".to_string(),
            });
        }
        std::thread::sleep(retry_after(&reply).unwrap_or(spec.poll_interval));
    }
}

/// The token goes only to the Resource Manager endpoint it is for.
fn same_endpoint(spec: &ImageSpec, url: &str) -> Result<(), Error> {
    let base = spec.endpoint.trim_end_matches('/');
    if url.starts_with(&format!("{base}/")) {
        Ok(())
    } else {
        Err(Error::Protocol {
            call: "images.createOrUpdate".to_string(),
            url: spec.url(),
            message: format!(
                "an operation to poll at {url}, outside {base}: not followed with the token; the image may \
                 still appear: check it with az image show"
            ),
        })
    }
}

fn retry_after(reply: &Reply) -> Option<Duration> {
    let secs: u64 = reply.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

fn parse(reply: &Reply, call: &str, url: &str) -> Result<Value, Error> {
    serde_json::from_slice(&reply.body).map_err(|e| Error::Protocol {
        call: call.to_string(),
        url: url.to_string(),
        message: format!("not JSON: {e}"),
    })
}

/// An error answer of Resource Manager: 401 (`ExpiredAuthenticationToken`,
/// `InvalidAuthenticationToken`) and 403 `AuthorizationFailed` name the token's source.
fn error(call: &str, url: &str, reply: &Reply, spec: &ImageSpec) -> Error {
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let code = v.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
    let message = v.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
    let said =
        if code.is_empty() { one_line(&reply.text(), 300) } else { one_line(&format!("{code}: {message}"), 300) };
    if reply.status == 401 || (reply.status == 403 && code.starts_with("Authorization")) {
        return Error::Credentials {
            source_name: spec.token_source.clone(),
            reason: format!("refused by {call} ({url}): {} {said}", reply.status),
        };
    }
    api::api_error(call, url, reply, Some(said))
}
