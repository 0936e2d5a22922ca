//! Who may write the blob: a storage account's Shared Key (each request signed with HMAC-SHA256,
//! Azure Storage's "Authorize with Shared Key" for the Blob service) or a shared access
//! signature (a SAS: the query string itself is the authorization, nothing is signed here).
//!
//! Where they come from, in this order: `--sas-url`, `--account-key-file`, then the
//! environment: `AZURE_STORAGE_CONNECTION_STRING` (how Azurite's `devstoreaccount1` is
//! usually given), `AZURE_STORAGE_SAS_TOKEN`, `AZURE_STORAGE_KEY` (with `--account` or
//! `AZURE_STORAGE_ACCOUNT`). Every error names the source it used, and a SAS's signature never
//! appears in one.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::Error;
use crate::percent::{self, encode_path};
use crate::time;

/// The Blob service version every request asks for (`x-ms-version`).
pub const VERSION: &str = "2021-08-06";

/// Azurite's (and the old storage emulator's) well-known account, published in its README.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of [`DEV_ACCOUNT`], published in Azurite's README.
pub const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where `UseDevelopmentStorage=true` points: Azurite's default blob endpoint.
pub const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// How requests are authorized.
#[derive(Clone)]
pub enum Auth {
    /// A storage account's key: each request is signed.
    SharedKey {
        /// The account name.
        account: String,
        /// The decoded key.
        key: Vec<u8>,
    },
    /// A shared access signature: this query string (without `?`) is added to every request.
    Sas {
        /// `sv=…&se=…&sig=…`.
        query: String,
    },
}

/// Credentials and where they came from.
#[derive(Clone)]
pub struct Credentials {
    /// How requests are authorized.
    pub auth: Auth,
    /// Where they came from (`AZURE_STORAGE_KEY`, `--account-key-file /k`, `--sas-url https://…?sv=…&sig=REDACTED`).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    // The key and the signature stay out of any debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.auth {
            Auth::SharedKey { account, .. } => format!("SharedKey({account})"),
            Auth::Sas { .. } => "Sas".to_string(),
        };
        f.debug_struct("Credentials").field("auth", &kind).field("source", &self.source).finish()
    }
}

/// The blob to write: its URL (no query) and the credentials for it.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB` or, path-style (Azurite),
    /// `http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB`; never with a SAS.
    pub url: String,
    /// Who may write it.
    pub credentials: Credentials,
}

impl Blob {
    /// The container's URL (the blob's without its last segments): what the blob URL was built on.
    pub fn container_url(&self, blob_name: &str) -> String {
        self.url.strip_suffix(&format!("/{}", encode_path(blob_name))).unwrap_or(&self.url).to_string()
    }
}

/// What the command line says about the blob; the environment fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct BlobOptions {
    /// `--account`.
    pub account: Option<String>,
    /// `--account-key-file`.
    pub account_key_file: Option<PathBuf>,
    /// `--sas-url`: a container URL (or a blob URL, with a blob SAS `sr=b`) with its SAS.
    pub sas_url: Option<String>,
    /// `--blob-endpoint`: `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    pub blob_endpoint: Option<String>,
    /// `--container`.
    pub container: Option<String>,
    /// The blob's name (`--blob-name`, else the file's name).
    pub blob_name: String,
}

/// The blob and its credentials from `options` and the environment (`env` reads a variable).
pub fn resolve(options: &BlobOptions, env: &dyn Fn(&str) -> Option<String>) -> Result<Blob, Error> {
    let name = &options.blob_name;
    if name.is_empty() || name.len() > 1024 {
        return Err(Error::Invalid(format!("blob name {name:?}: 1 to 1024 characters")));
    }
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let account = || options.account.clone().or_else(|| env("AZURE_STORAGE_ACCOUNT"));
    if let Some(url) = &options.sas_url {
        let source = format!("--sas-url {}", redact(url));
        let (base, query) = url.split_once('?').ok_or_else(|| Error::Credentials {
            source_name: source.clone(),
            reason: "no SAS query (?sv=…&sig=…) in the URL".to_string(),
        })?;
        let credentials = sas(query, source)?;
        let base = base.trim_end_matches('/');
        // A blob SAS (sr=b) is valid for its own blob only: its URL is the blob's.
        let url = if query_value(query, "sr").as_deref() == Some("b") {
            base.to_string()
        } else {
            format!("{base}/{}", encode_path(name))
        };
        return Ok(Blob { url, credentials });
    }
    let container = || {
        options
            .container
            .clone()
            .ok_or_else(|| Error::Invalid("--container is required (unless --sas-url names it)".to_string()))
    };
    let blob_url = |endpoint: &str, container: &str| {
        check_container(container)?;
        Ok::<_, Error>(format!("{}/{container}/{}", endpoint.trim_end_matches('/'), encode_path(name)))
    };
    let endpoint_for = |account: &str| {
        options.blob_endpoint.clone().unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
    };
    if let Some(path) = &options.account_key_file {
        let source = format!("--account-key-file {}", path.display());
        let account = account().ok_or_else(|| Error::Credentials {
            source_name: source.clone(),
            reason: "no account name: give --account or AZURE_STORAGE_ACCOUNT".to_string(),
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let credentials = shared_key(&account, text.trim(), source)?;
        return Ok(Blob { url: blob_url(&endpoint_for(&account), &container()?)?, credentials });
    }
    if let Some(text) = env("AZURE_STORAGE_CONNECTION_STRING") {
        let source = "AZURE_STORAGE_CONNECTION_STRING".to_string();
        let cs = ConnectionString::parse(&text, &source)?;
        let endpoint = options.blob_endpoint.clone().unwrap_or(cs.endpoint);
        let credentials = match (cs.key, cs.sas) {
            (Some(key), _) => shared_key(&cs.account, &key, source)?,
            (None, Some(query)) => sas(&query, source)?,
            (None, None) => {
                return Err(Error::Credentials {
                    source_name: source,
                    reason: "neither AccountKey nor SharedAccessSignature in it".to_string(),
                });
            }
        };
        return Ok(Blob { url: blob_url(&endpoint, &container()?)?, credentials });
    }
    if let Some(token) = env("AZURE_STORAGE_SAS_TOKEN") {
        let source = "AZURE_STORAGE_SAS_TOKEN".to_string();
        let endpoint = match (&options.blob_endpoint, account()) {
            (Some(e), _) => e.clone(),
            (None, Some(a)) => endpoint_for(&a),
            (None, None) => {
                return Err(Error::Credentials {
                    source_name: source,
                    reason: "no account name: give --account, AZURE_STORAGE_ACCOUNT or --blob-endpoint".to_string(),
                });
            }
        };
        let credentials = sas(token.trim().trim_start_matches('?'), source)?;
        return Ok(Blob { url: blob_url(&endpoint, &container()?)?, credentials });
    }
    if let Some(key) = env("AZURE_STORAGE_KEY") {
        let source = "AZURE_STORAGE_KEY".to_string();
        let account = account().ok_or_else(|| Error::Credentials {
            source_name: source.clone(),
            reason: "no account name: give --account or AZURE_STORAGE_ACCOUNT".to_string(),
        })?;
        let credentials = shared_key(&account, key.trim(), source)?;
        return Ok(Blob { url: blob_url(&endpoint_for(&account), &container()?)?, credentials });
    }
    Err(Error::Credentials {
        source_name: "the command line and the environment".to_string(),
        reason: "no storage credentials: give --sas-url, --account-key-file, or set \
                 AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_KEY"
            .to_string(),
    })
}

fn check_container(name: &str) -> Result<(), Error> {
    // Azure's rule: 3 to 63 lowercase letters, digits and single hyphens, starting and ending
    // with a letter or digit ($root and $web aside).
    let ok = (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok || name == "$root" {
        Ok(())
    } else {
        Err(Error::Invalid(format!("container name {name:?}: 3 to 63 lowercase letters, digits and single hyphens")))
    }
}

fn shared_key(account: &str, key: &str, source: String) -> Result<Credentials, Error> {
    let key = STANDARD.decode(key.trim()).map_err(|e| Error::Credentials {
        source_name: source.clone(),
        reason: format!("the account key is not base64: {e}"),
    })?;
    if key.is_empty() || account.is_empty() {
        return Err(Error::Credentials { source_name: source, reason: "empty account name or key".to_string() });
    }
    Ok(Credentials { auth: Auth::SharedKey { account: account.to_string(), key }, source })
}

fn sas(query: &str, source: String) -> Result<Credentials, Error> {
    if query_value(query, "sig").is_none() {
        return Err(Error::Credentials { source_name: source, reason: "the SAS has no signature (sig=)".to_string() });
    }
    // An expired SAS is refused here, before a byte is sent: Azure would answer 403 to each call.
    if let Some(se) = query_value(query, "se") {
        let expiry = time::parse_iso8601(&se).ok_or_else(|| Error::Credentials {
            source_name: source.clone(),
            reason: format!("the SAS's signed expiry se={se} is not a date"),
        })?;
        if expiry <= time::now() {
            return Err(Error::Credentials {
                source_name: source,
                reason: format!("the SAS expired at {se} (signed expiry se=)"),
            });
        }
    }
    Ok(Credentials { auth: Auth::Sas { query: query.to_string() }, source })
}

/// A storage connection string: `AccountName=…;AccountKey=…;BlobEndpoint=…` (or
/// `DefaultEndpointsProtocol`/`EndpointSuffix`, `SharedAccessSignature`, `UseDevelopmentStorage=true`).
struct ConnectionString {
    account: String,
    key: Option<String>,
    sas: Option<String>,
    endpoint: String,
}

impl ConnectionString {
    fn parse(text: &str, source: &str) -> Result<ConnectionString, Error> {
        let mut fields = std::collections::HashMap::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            // Values (keys, SAS) contain '=': only the first one separates.
            let (k, v) = part.split_once('=').ok_or_else(|| Error::Credentials {
                source_name: source.to_string(),
                reason: format!("{:?} is not NAME=VALUE", part.split('=').next().unwrap_or("")),
            })?;
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        if fields.get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let endpoint = fields.get("blobendpoint").cloned().unwrap_or_else(|| DEV_ENDPOINT.to_string());
            return Ok(ConnectionString {
                account: DEV_ACCOUNT.to_string(),
                key: Some(DEV_KEY.to_string()),
                sas: None,
                endpoint,
            });
        }
        let account = fields.get("accountname").cloned();
        let endpoint = match (fields.get("blobendpoint"), &account) {
            (Some(e), _) => e.trim_end_matches('/').to_string(),
            (None, Some(a)) => {
                let protocol = fields.get("defaultendpointsprotocol").map_or("https", String::as_str);
                let suffix = fields.get("endpointsuffix").map_or("core.windows.net", String::as_str);
                format!("{protocol}://{a}.blob.{suffix}")
            }
            (None, None) => {
                return Err(Error::Credentials {
                    source_name: source.to_string(),
                    reason: "neither AccountName nor BlobEndpoint in it".to_string(),
                });
            }
        };
        let key = fields.get("accountkey").cloned();
        if key.is_some() && account.is_none() {
            return Err(Error::Credentials {
                source_name: source.to_string(),
                reason: "AccountKey without AccountName".to_string(),
            });
        }
        let sas = fields.get("sharedaccesssignature").map(|s| s.trim_start_matches('?').to_string());
        Ok(ConnectionString { account: account.unwrap_or_default(), key, sas, endpoint })
    }
}

/// `url` with the value of any `sig=` replaced by `REDACTED`: what may be shown of a SAS URL.
pub fn redact(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_string() };
    let query: Vec<String> = query
        .split('&')
        .map(|p| if p.to_ascii_lowercase().starts_with("sig=") { "sig=REDACTED".to_string() } else { p.to_string() })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The (percent-decoded) value of `name` in `query`.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.eq_ignore_ascii_case(name).then(|| percent::decode_query(v))
    })
}

/// Percent-decoding (`+` is a space in a query).
/// The Shared Key `Authorization` header of a Blob service request: `SharedKey ACCOUNT:SIG`,
/// `SIG` = base64(HMAC-SHA256(key, string-to-sign)). `headers` are all the request's headers
/// (`x-ms-date` and `x-ms-version` among them), `content_length` the body's length.
pub fn shared_key_authorization(
    account: &str,
    key: &[u8],
    method: &str,
    url: &str,
    headers: &[(String, String)],
    content_length: usize,
) -> String {
    let sts = string_to_sign(account, method, url, headers, content_length);
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), sts.as_bytes());
    format!("SharedKey {account}:{}", STANDARD.encode(tag.as_ref()))
}

/// The string Shared Key signs (version 2009-09-19 and later): the verb, eleven standard headers
/// (Content-Length empty when 0), the `x-ms-` headers lower-cased and sorted, then the
/// canonicalized resource `/ACCOUNT/PATH` and each query parameter as `\nname:value`, sorted.
pub fn string_to_sign(
    account: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    content_length: usize,
) -> String {
    let header = |name: &str| {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or(String::new(), |(_, v)| v.trim().to_string())
    };
    let length = if content_length == 0 { String::new() } else { content_length.to_string() };
    let mut s = format!(
        "{method}\n{}\n{}\n{length}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
        header("content-encoding"),
        header("content-language"),
        header("content-md5"),
        header("content-type"),
        header("date"),
        header("if-modified-since"),
        header("if-match"),
        header("if-none-match"),
        header("if-unmodified-since"),
        header("range"),
    );
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    ms.sort();
    for (n, v) in ms {
        s += &format!("{n}:{v}\n");
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (path, query) = match rest.find('/') {
        Some(i) => rest[i..].split_once('?').unwrap_or((&rest[i..], "")),
        None => ("/", rest.split_once('?').map_or("", |(_, q)| q)),
    };
    s += &format!("/{account}{path}");
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent::decode_query(k).to_ascii_lowercase(), percent::decode_query(v))
        })
        .collect();
    params.sort();
    let mut merged: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in params {
        match merged.last_mut() {
            Some((lk, vs)) if *lk == k => vs.push(v),
            _ => merged.push((k, vec![v])),
        }
    }
    for (k, vs) in merged {
        s += &format!("\n{k}:{}", vs.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn options() -> BlobOptions {
        BlobOptions { container: Some("images".into()), blob_name: "disk.azure.vhd".into(), ..BlobOptions::default() }
    }

    #[test]
    fn the_string_to_sign_follows_the_documented_layout() {
        let headers = vec![
            ("x-ms-version".to_string(), VERSION.to_string()),
            ("x-ms-date".to_string(), "Mon, 07 Dec 2026 15:47:20 GMT".to_string()),
            ("x-ms-range".to_string(), "bytes=0-511".to_string()),
            ("x-ms-page-write".to_string(), "update".to_string()),
        ];
        let s = string_to_sign(
            "acct",
            "PUT",
            "https://acct.blob.core.windows.net/c/a%20b?comp=page&timeout=30",
            &headers,
            512,
        );
        assert_eq!(
            s,
            "PUT\n\n\n512\n\n\n\n\n\n\n\n\nx-ms-date:Mon, 07 Dec 2026 15:47:20 GMT\nx-ms-page-write:update\n\
             x-ms-range:bytes=0-511\nx-ms-version:2021-08-06\n/acct/c/a%20b\ncomp:page\ntimeout:30"
        );
        // Path-style (Azurite): the account appears twice, as the service expects.
        let s = string_to_sign(DEV_ACCOUNT, "GET", "http://127.0.0.1:10000/devstoreaccount1/c/b", &[], 0);
        assert!(s.ends_with("\n/devstoreaccount1/devstoreaccount1/c/b"), "{s}");
    }

    #[test]
    fn credentials_are_found_in_order_and_named() {
        let b = resolve(&options(), &env(&[("AZURE_STORAGE_KEY", "a2V5"), ("AZURE_STORAGE_ACCOUNT", "acct")])).unwrap();
        assert_eq!(b.url, "https://acct.blob.core.windows.net/images/disk.azure.vhd");
        assert_eq!(b.credentials.source, "AZURE_STORAGE_KEY");
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
        );
        let b = resolve(&options(), &env(&[("AZURE_STORAGE_CONNECTION_STRING", &cs), ("AZURE_STORAGE_KEY", "a2V5")]))
            .unwrap();
        assert_eq!(b.url, "http://127.0.0.1:1/devstoreaccount1/images/disk.azure.vhd");
        assert_eq!(b.credentials.source, "AZURE_STORAGE_CONNECTION_STRING");
        assert!(matches!(b.credentials.auth, Auth::SharedKey { ref account, .. } if account == DEV_ACCOUNT));
        let b =
            resolve(&options(), &env(&[("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")])).unwrap();
        assert_eq!(b.url, format!("{DEV_ENDPOINT}/images/disk.azure.vhd"));
        let e = resolve(&options(), &env(&[("AZURE_STORAGE_KEY", "not base64!")])).unwrap_err().to_string();
        assert!(e.contains("AZURE_STORAGE_KEY") && e.contains("account name"), "{e}");
        let e = resolve(&options(), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("--sas-url") && e.contains("AZURE_STORAGE_CONNECTION_STRING"), "{e}");
    }

    #[test]
    fn a_sas_is_never_shown_and_an_expired_one_is_refused() {
        let mut o = options();
        o.sas_url = Some(
            "https://acct.blob.core.windows.net/images?sv=2021-08-06&se=2999-01-01T00:00:00Z&sr=c&sp=rcw&sig=SECRET%2B"
                .into(),
        );
        let b = resolve(&o, &env(&[])).unwrap();
        assert_eq!(b.url, "https://acct.blob.core.windows.net/images/disk.azure.vhd");
        assert!(!b.credentials.source.contains("SECRET") && b.credentials.source.contains("sig=REDACTED"));
        assert!(!format!("{:?}", b.credentials).contains("SECRET"));
        o.sas_url =
            Some("https://acct.blob.core.windows.net/images/x.vhd?sv=2021-08-06&se=2999-01-01&sr=b&sig=S".into());
        assert_eq!(resolve(&o, &env(&[])).unwrap().url, "https://acct.blob.core.windows.net/images/x.vhd");
        o.sas_url =
            Some("https://acct.blob.core.windows.net/images?sv=2021-08-06&se=2020-01-01T00:00:00Z&sig=SECRET".into());
        let e = resolve(&o, &env(&[])).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Credentials { .. }), "{text}");
        assert!(text.contains("expired") && text.contains("--sas-url") && !text.contains("SECRET"), "{text}");
    }

    #[test]
    fn percent_decoding_and_redaction() {
        assert_eq!(percent::decode_query("a%2Bb+c%zz"), "a+b c%zz");
        assert_eq!(percent::decode_query("%4"), "%4");
        assert_eq!(redact("http://h/c?a=1&sig=xyz&b=2"), "http://h/c?a=1&sig=REDACTED&b=2");
        assert_eq!(encode_path("dir/a b+é"), "dir/a%20b%2B%C3%A9");
    }
}
