//! The Blob service calls of an upload: Get Blob Properties, Put Blob (a page blob), Put Page,
//! Get Page Ranges, Set Blob Metadata, and Create Container (for tests and first runs), each
//! authorized by [`Credentials`] and sent through [`crate::api::send`].

use berth_http::{Client, Reply};

use super::auth::{self, Auth, Blob, Credentials};
use crate::api::{self, one_line};
use crate::time;
use crate::{Error, Progress, percent};

/// The most one Put Page may write.
pub const MAX_PAGE_WRITE: usize = 4 << 20;

/// A request to the Blob service, authorized anew for each attempt (a fresh `x-ms-date`).
struct Request<'a> {
    call: &'static str,
    method: &'static str,
    /// The URL without the SAS: what errors show.
    url: String,
    /// The query of the call (`comp=page`), without the SAS.
    query: &'a str,
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

impl Request<'_> {
    fn send(&self, client: &Client, credentials: &Credentials, progress: &dyn Progress) -> Result<Reply, Error> {
        let shown = if self.query.is_empty() { self.url.clone() } else { format!("{}?{}", self.url, self.query) };
        let sent = api::send(client, self.call, &shown, progress, || {
            let mut headers = self.headers.clone();
            headers.push(("x-ms-date".to_string(), time::rfc1123(time::now())));
            headers.push(("x-ms-version".to_string(), auth::VERSION.to_string()));
            let url = match &credentials.auth {
                Auth::SharedKey { account, key } => {
                    let a =
                        auth::shared_key_authorization(account, key, self.method, &shown, &headers, self.body.len());
                    headers.push(("Authorization".to_string(), a));
                    shown.clone()
                }
                Auth::Sas { query } if self.query.is_empty() => format!("{}?{query}", self.url),
                Auth::Sas { query } => format!("{shown}&{query}"),
            };
            let mut call = client.call(self.method, &url);
            for (n, v) in &headers {
                call = call.header(n, v);
            }
            // An empty PUT still says `Content-Length: 0` (Put Blob of a page blob requires it).
            call.body(self.body.to_vec())
        });
        // The HTTP client's own errors may quote the URL it was given: never with the SAS.
        match (sent, &credentials.auth) {
            (Err(e), Auth::Sas { query }) => Err(scrub(e, query, &format!("{} ({shown})", self.call))),
            (sent, _) => sent,
        }
    }
}

/// `e` without the SAS `query` or its signature in its text: an [`Error::Operation`] of `what`
/// with the text redacted when it quoted them, else `e` as it is.
fn scrub(e: Error, query: &str, what: &str) -> Error {
    let text = e.to_string();
    let sig = auth::query_value(query, "sig").filter(|sig| !sig.is_empty());
    let raw_sig = query.split('&').find_map(|p| p.strip_prefix("sig=")).filter(|s| !s.is_empty());
    let leaks = text.contains(query)
        || sig.as_ref().is_some_and(|s| text.contains(s.as_str()))
        || raw_sig.is_some_and(|s| text.contains(s));
    if !leaks {
        return e;
    }
    let mut message = text.replace(query, &auth::redact(&format!("?{query}"))[1..]);
    for s in [sig.as_deref(), raw_sig].into_iter().flatten() {
        message = message.replace(s, "REDACTED");
    }
    Error::Operation { what: what.to_string(), message }
}

/// An error answer of the Blob service as a [`crate::Error`]: refused credentials (403
/// `AuthenticationFailed`, `AuthorizationFailure`, `AuthorizationPermissionMismatch`, …) name their
/// source, anything else the call and URL, with the service's code and message on one line.
pub fn error(call: &str, url: &str, reply: &Reply, credentials: &Credentials) -> Error {
    let text = reply.text();
    let code =
        reply.header("x-ms-error-code").map(str::to_string).or_else(|| xml_value(&text, "Code")).unwrap_or_default();
    let message = xml_value(&text, "Message").map(|m| m.lines().next().unwrap_or("").to_string()).unwrap_or_default();
    let detail = xml_value(&text, "AuthenticationErrorDetail").unwrap_or_default();
    if reply.status == 403
        && (code.starts_with("Authentication") || code.starts_with("Authorization") || code.is_empty())
    {
        let mut reason = format!("refused by {call} ({url}): 403 {code}");
        for more in [&message, &detail] {
            if !more.is_empty() {
                reason += &format!(": {}", one_line(more, 200));
            }
        }
        return Error::Credentials { source_name: credentials.source.clone(), reason };
    }
    let message = if code.is_empty() { one_line(&text, 300) } else { one_line(&format!("{code}: {message}"), 300) };
    api::api_error(call, url, reply, Some(message))
}

/// The text of the first `<name>…</name>` in `xml` (entities for `&`, `<`, `>` decoded).
pub fn xml_value(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&"))
}

/// What Get Blob Properties says of an existing blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties {
    /// Its length.
    pub length: u64,
    /// `PageBlob`, `BlockBlob` or `AppendBlob`.
    pub blob_type: String,
    /// Its metadata, names lower-cased without `x-ms-meta-`.
    pub metadata: Vec<(String, String)>,
}

impl Properties {
    /// The metadata value `name`.
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Get Blob Properties (`HEAD`): `None` when there is no such blob.
pub fn properties(client: &Client, blob: &Blob, progress: &dyn Progress) -> Result<Option<Properties>, Error> {
    let req = Request {
        call: "Get Blob Properties",
        method: "HEAD",
        url: blob.url.clone(),
        query: "",
        headers: vec![],
        body: &[],
    };
    let reply = req.send(client, &blob.credentials, progress)?;
    match reply.status {
        200 => {
            let length =
                reply.header("content-length").and_then(|v| v.trim().parse().ok()).ok_or_else(|| Error::Protocol {
                    call: req.call.to_string(),
                    url: blob.url.clone(),
                    message: "no Content-Length".to_string(),
                })?;
            let blob_type = reply.header("x-ms-blob-type").unwrap_or("").to_string();
            let metadata = reply_metadata(&reply);
            Ok(Some(Properties { length, blob_type, metadata }))
        }
        // A HEAD has no body: the error's code is only in x-ms-error-code. A missing container
        // is for Put Blob to report, with what to do.
        404 => Ok(None),
        _ => Err(error(req.call, &blob.url, &reply, &blob.credentials)),
    }
}

fn reply_metadata(reply: &Reply) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Reply keeps headers private; the names Berth sets are looked up one by one.
    for name in super::META_NAMES {
        if let Some(v) = reply.header(&format!("x-ms-meta-{name}")) {
            out.push((name.to_string(), v.to_string()));
        }
    }
    out
}

/// Put Blob of an empty page blob of `length` bytes with `metadata` (replacing any blob there).
pub fn create(
    client: &Client,
    blob: &Blob,
    length: u64,
    metadata: &[(&str, String)],
    progress: &dyn Progress,
) -> Result<(), Error> {
    let mut headers = vec![
        ("x-ms-blob-type".to_string(), "PageBlob".to_string()),
        ("x-ms-blob-content-length".to_string(), length.to_string()),
        ("x-ms-blob-content-type".to_string(), "application/octet-stream".to_string()),
    ];
    headers.extend(metadata.iter().map(|(n, v)| (format!("x-ms-meta-{n}"), v.clone())));
    let req =
        Request { call: "Put Blob (page blob)", method: "PUT", url: blob.url.clone(), query: "", headers, body: &[] };
    let reply = req.send(client, &blob.credentials, progress)?;
    if reply.status == 201 {
        return Ok(());
    }
    if reply.status == 404 && reply.header("x-ms-error-code") == Some("ContainerNotFound") {
        return Err(Error::Operation {
            what: format!("Put Blob ({})", blob.url),
            message: "the container does not exist: create it first (az storage container create)".to_string(),
        });
    }
    Err(error(req.call, &blob.url, &reply, &blob.credentials))
}

/// Put Page: `data` (at most 4 MiB, a multiple of 512) at `offset` (a multiple of 512).
pub fn put_page(client: &Client, blob: &Blob, offset: u64, data: &[u8], progress: &dyn Progress) -> Result<(), Error> {
    if data.is_empty() || data.len() > MAX_PAGE_WRITE || !data.len().is_multiple_of(512) || !offset.is_multiple_of(512)
    {
        return Err(Error::Invalid(format!(
            "a page write of {} bytes at {offset}: 512-aligned, at most 4 MiB",
            data.len()
        )));
    }
    let range = format!("bytes={offset}-{}", offset + data.len() as u64 - 1);
    let shown = format!("{} {range}", blob.url);
    let headers = vec![("x-ms-page-write".to_string(), "update".to_string()), ("x-ms-range".to_string(), range)];
    let req =
        Request { call: "Put Page", method: "PUT", url: blob.url.clone(), query: "comp=page", headers, body: data };
    let reply = req.send(client, &blob.credentials, progress)?;
    if reply.status == 201 {
        return Ok(());
    }
    Err(error(req.call, &shown, &reply, &blob.credentials))
}

/// Get Page Ranges: the blob's written ranges `[start, end]` (inclusive), in order, following
/// `NextMarker` when the service pages its answer.
pub fn page_ranges(client: &Client, blob: &Blob, progress: &dyn Progress) -> Result<Vec<(u64, u64)>, Error> {
    let mut ranges = Vec::new();
    let mut marker = String::new();
    loop {
        let query = if marker.is_empty() {
            "comp=pagelist".to_string()
        } else {
            format!("comp=pagelist&marker={}", percent::encode(&marker))
        };
        let req = Request {
            call: "Get Page Ranges",
            method: "GET",
            url: blob.url.clone(),
            query: &query,
            headers: vec![],
            body: &[],
        };
        let reply = req.send(client, &blob.credentials, progress)?;
        if reply.status != 200 {
            return Err(error(req.call, &blob.url, &reply, &blob.credentials));
        }
        let text = reply.text();
        let bad = |message: String| Error::Protocol { call: req.call.to_string(), url: blob.url.clone(), message };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("<PageRange>") {
            let end =
                rest[at..].find("</PageRange>").ok_or_else(|| bad("an unterminated <PageRange>".to_string()))? + at;
            let item = &rest[at..end];
            let num = |name: &str| xml_value(item, name).and_then(|v| v.trim().parse::<u64>().ok());
            match (num("Start"), num("End")) {
                (Some(s), Some(e)) if e >= s => ranges.push((s, e)),
                _ => return Err(bad(format!("a page range without Start and End: {}", one_line(item, 100)))),
            }
            rest = &rest[end..];
        }
        match xml_value(&text, "NextMarker").filter(|m| !m.trim().is_empty()) {
            Some(m) => marker = m,
            None => break,
        }
    }
    ranges.sort_unstable();
    Ok(ranges)
}

/// Set Blob Metadata: replaces the blob's metadata with `metadata`.
pub fn set_metadata(
    client: &Client,
    blob: &Blob,
    metadata: &[(&str, String)],
    progress: &dyn Progress,
) -> Result<(), Error> {
    let headers = metadata.iter().map(|(n, v)| (format!("x-ms-meta-{n}"), v.clone())).collect();
    let req = Request {
        call: "Set Blob Metadata",
        method: "PUT",
        url: blob.url.clone(),
        query: "comp=metadata",
        headers,
        body: &[],
    };
    let reply = req.send(client, &blob.credentials, progress)?;
    if reply.status == 200 {
        return Ok(());
    }
    Err(error(req.call, &blob.url, &reply, &blob.credentials))
}

/// Create Container at `container_url`; an existing one is fine. Returns whether it was created.
pub fn create_container(
    client: &Client,
    container_url: &str,
    credentials: &Credentials,
    progress: &dyn Progress,
) -> Result<bool, Error> {
    let req = Request {
        call: "Create Container",
        method: "PUT",
        url: container_url.to_string(),
        query: "restype=container",
        headers: vec![],
        body: &[],
    };
    let reply = req.send(client, credentials, progress)?;
    match reply.status {
        201 => Ok(true),
        409 if reply.header("x-ms-error-code") == Some("ContainerAlreadyExists") => Ok(false),
        _ => Err(error(req.call, container_url, &reply, credentials)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_is_scrubbed_from_errors() {
        let query = "sv=2021-08-06&sr=c&sig=AB%2Bcd";
        let e = Error::Protocol { call: "x".into(), url: format!("http://h/c/b?{query}"), message: "bad".into() };
        let text = scrub(e, query, "Put Page (http://h/c/b)").to_string();
        assert_eq!(
            text,
            "Put Page (http://h/c/b): x (http://h/c/b?sv=2021-08-06&sr=c&sig=REDACTED): unexpected answer: bad"
        );
        let e = Error::Invalid("decoded AB+cd and raw AB%2Bcd".into());
        let text = scrub(e, query, "w").to_string();
        assert!(!text.contains("AB+cd") && !text.contains("AB%2Bcd"), "{text}");
        let e = Error::Invalid("nothing secret".into());
        assert!(matches!(scrub(e, query, "w"), Error::Invalid(_)));
    }
}
