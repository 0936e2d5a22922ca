//! Google credentials: a service-account JSON key (an RS256-signed JWT exchanged at the key's
//! `token_uri` for an access token, RFC 7523) or an access token given as is (`gcloud auth
//! print-access-token`). Every refusal names where the credentials came from.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_http::{Client, Reply};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;

use crate::{Error, Progress, api};

/// The scopes asked for: objects read and written (the upload, the object's checksum) and
/// Compute Engine (images and their operations).
pub const SCOPES: &str =
    "https://www.googleapis.com/auth/devstorage.read_write https://www.googleapis.com/auth/compute";

/// How long a signed assertion is valid (Google's maximum: one hour).
const ASSERTION_LIFETIME: u64 = 3600;

/// A token is renewed when less than this is left of it (an upload of many GiB outlasts one).
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The environment variable naming a service-account key file (Application Default Credentials).
pub const KEY_ENV: &str = "GOOGLE_APPLICATION_CREDENTIALS";
/// The environment variable gcloud reads an access token from.
pub const TOKEN_ENV: &str = "CLOUDSDK_AUTH_ACCESS_TOKEN";

/// The fields of a service-account key file that are used.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    /// `service_account` (user credentials from `gcloud auth application-default login` are
    /// `authorized_user`, which this does not take).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The service account, the JWT's issuer.
    pub client_email: String,
    /// The RSA private key, PEM (PKCS #8, or PKCS #1).
    pub private_key: String,
    /// Which of the account's keys this is (the JWT header's `kid`).
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// The token endpoint, the JWT's audience.
    pub token_uri: String,
    /// The project the account belongs to (the default `--project`).
    #[serde(default)]
    pub project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccountKey {
    // The private key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

/// Where the credentials come from and what they are.
pub enum Credentials {
    /// A service-account key, exchanged for tokens as needed.
    ServiceAccount {
        /// The parsed key.
        key: ServiceAccountKey,
        /// The key file.
        path: PathBuf,
        /// The key file and how it was named (`key file /k.json (--key)`).
        source: String,
    },
    /// An access token used as it is (it expires after an hour, typically).
    Token {
        /// The token.
        token: String,
        /// Where it came from (`environment variable CLOUDSDK_AUTH_ACCESS_TOKEN`).
        source: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.source())
    }
}

/// The credential options of `berth upload gce`; at most one is given.
#[derive(Debug, Default, Clone)]
pub struct CredentialOptions {
    /// `--key FILE`: a service-account key file.
    pub key: Option<PathBuf>,
    /// `--access-token-env VAR`: the environment variable holding an access token.
    pub access_token_env: Option<String>,
    /// `--access-token-file FILE`: a file holding an access token.
    pub access_token_file: Option<PathBuf>,
}

impl Credentials {
    /// The credentials the options name, else the environment's: `GOOGLE_APPLICATION_CREDENTIALS`
    /// (a key file), then `CLOUDSDK_AUTH_ACCESS_TOKEN` (a token). `env` reads a variable (the
    /// process environment in the program, a table in tests).
    pub fn find(opts: &CredentialOptions, env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, Error> {
        let given = [opts.key.is_some(), opts.access_token_env.is_some(), opts.access_token_file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Error::Invalid(
                "give one of --key, --access-token-env and --access-token-file, not several".into(),
            ));
        }
        if let Some(path) = &opts.key {
            return Credentials::from_key_file(path, &format!("key file {} (--key)", path.display()));
        }
        if let Some(var) = &opts.access_token_env {
            let source = format!("environment variable {var} (--access-token-env)");
            return Credentials::from_token(env(var).unwrap_or_default(), source);
        }
        if let Some(path) = &opts.access_token_file {
            let source = format!("token file {} (--access-token-file)", path.display());
            let text = std::fs::read_to_string(path).map_err(|e| Error::Credentials {
                source_name: source.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
            return Credentials::from_token(text, source);
        }
        if let Some(path) = env(KEY_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            return Credentials::from_key_file(&path, &format!("key file {} ({KEY_ENV})", path.display()));
        }
        if let Some(token) = env(TOKEN_ENV).filter(|t| !t.trim().is_empty()) {
            return Credentials::from_token(token, format!("environment variable {TOKEN_ENV}"));
        }
        Err(Error::Credentials {
            source_name: "the options and the environment".into(),
            reason: format!(
                "none found: give --key FILE (a service-account key), --access-token-env VAR, \
                 --access-token-file FILE, or set {KEY_ENV} or {TOKEN_ENV}"
            ),
        })
    }

    /// A service-account key read from `path`; `source` names it in errors.
    pub fn from_key_file(path: &Path, source: &str) -> Result<Credentials, Error> {
        let refused = |reason: String| Error::Credentials { source_name: source.to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
        let key: ServiceAccountKey =
            serde_json::from_str(&text).map_err(|e| refused(format!("not a service-account key file: {e}")))?;
        if key.kind != "service_account" {
            return Err(refused(format!(
                "its type is {:?}, not \"service_account\" (create a key with `gcloud iam service-accounts keys \
                 create`, or give an access token)",
                key.kind
            )));
        }
        // Checked now, so that a broken key fails before any upload.
        signing_key(&key.private_key).map_err(refused)?;
        Ok(Credentials::ServiceAccount { key, path: path.to_path_buf(), source: source.to_string() })
    }

    /// An access token (surrounding white space dropped); `source` names it in errors.
    pub fn from_token(token: String, source: String) -> Result<Credentials, Error> {
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(Error::Credentials { source_name: source, reason: "no access token there (empty)".into() });
        }
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::Credentials { source_name: source, reason: "not an access token (white space)".into() });
        }
        Ok(Credentials::Token { token, source })
    }

    /// Where the credentials came from.
    pub fn source(&self) -> &str {
        match self {
            Credentials::ServiceAccount { source, .. } | Credentials::Token { source, .. } => source,
        }
    }

    /// The key's project, if the credentials are a key that names one.
    pub fn project_id(&self) -> Option<&str> {
        match self {
            Credentials::ServiceAccount { key, .. } => key.project_id.as_deref().filter(|p| !p.is_empty()),
            Credentials::Token { .. } => None,
        }
    }
}

/// The RSA key of a PEM private key (PKCS #8 `PRIVATE KEY`, or PKCS #1 `RSA PRIVATE KEY`).
fn signing_key(pem: &str) -> Result<RsaKeyPair, String> {
    let (label, der) = pem_body(pem).ok_or("its private_key is not a PEM private key")?;
    let parsed = match label.as_str() {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        other => return Err(format!("its private_key is a PEM {other}, not an RSA private key")),
    };
    parsed.map_err(|e| format!("its private_key is not a usable RSA key: {e}"))
}

/// The label and decoded body of the first PEM block in `pem`.
fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let start = pem.find("-----BEGIN ")?;
    let rest = &pem[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let body: String = rest.get(body_start..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    Some((label, STANDARD.decode(body).ok()?))
}

/// The signed assertion (RFC 7523 §2.1) for `key`, issued at `iat`.
pub fn assertion(key: &ServiceAccountKey, iat: u64) -> Result<String, String> {
    let pair = signing_key(&key.private_key)?;
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key.private_key_id.as_deref().filter(|k| !k.is_empty()) {
        header["kid"] = kid.into();
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPES,
        "aud": key.token_uri,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
    });
    let signed =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signed.as_bytes(), &mut signature)
        .map_err(|_| "signing the token request failed".to_string())?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Bearer tokens for the calls, from the credentials: a key's token is fetched when first
/// needed and renewed before it expires.
pub struct Auth<'c> {
    client: &'c Client,
    credentials: Credentials,
    cached: Mutex<Option<(String, Instant)>>,
}

impl<'c> Auth<'c> {
    /// Tokens from `credentials`, fetched through `client`.
    pub fn new(client: &'c Client, credentials: Credentials) -> Auth<'c> {
        Auth { client, credentials, cached: Mutex::new(None) }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// `Bearer TOKEN` for the next call.
    pub fn bearer(&self, progress: &dyn Progress) -> Result<String, Error> {
        let key = match &self.credentials {
            Credentials::Token { token, .. } => return Ok(format!("Bearer {token}")),
            Credentials::ServiceAccount { key, .. } => key,
        };
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, expires)) = &*cached
            && expires.saturating_duration_since(Instant::now()) > RENEW_BEFORE
        {
            return Ok(format!("Bearer {token}"));
        }
        let (token, lifetime) = self.exchange(key, progress)?;
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(format!("Bearer {token}"))
    }

    /// A credentials error naming the source, for `reason`.
    pub fn refused(&self, reason: String) -> Error {
        Error::Credentials { source_name: self.credentials.source().to_string(), reason }
    }

    /// The error for an answer that refused the credentials (401, 403), with the cloud's words.
    pub fn refused_by(&self, call: &str, url: &str, reply: &Reply) -> Error {
        let said = google_error(reply).unwrap_or_else(|| api::one_line(&reply.text(), 300));
        self.refused(format!("{call} ({url}) answered {}: {said}", reply.status))
    }

    /// The key's assertion exchanged for an access token and its lifetime.
    fn exchange(&self, key: &ServiceAccountKey, progress: &dyn Progress) -> Result<(String, Duration), Error> {
        let jwt = assertion(key, crate::time::now().max(0) as u64).map_err(|r| self.refused(r))?;
        let body = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
        let url = key.token_uri.as_str();
        let reply = api::send(self.client, "token exchange", url, progress, || {
            self.client
                .call("POST", url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.clone().into_bytes())
        })?;
        #[derive(Deserialize)]
        struct Token {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        if !reply.is_success() {
            // RFC 6749 §5.2: {"error": "invalid_grant", "error_description": "..."}.
            let said = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| {
                    let code = v.get("error")?.as_str()?.to_string();
                    Some(match v.get("error_description").and_then(|d| d.as_str()) {
                        Some(d) => format!("{code}: {d}"),
                        None => code,
                    })
                })
                .unwrap_or_else(|| api::one_line(&reply.text(), 300));
            return Err(self.refused(format!("the token endpoint {url} answered {}: {said}", reply.status)));
        }
        let token: Token = serde_json::from_slice(&reply.body).map_err(|e| Error::Protocol {
            call: "token exchange".into(),
            url: url.to_string(),
            message: format!("not a token answer: {e}"),
        })?;
        // Google's tokens live an hour; a missing lifetime is taken as the shortest useful one.
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(600));
        Ok((token.access_token, lifetime))
    }
}

/// The message of a Google API error answer (`{"error": {"code", "message", "errors": [...]}}`),
/// with its first reason.
pub fn google_error(reply: &Reply) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    let e = v.get("error")?;
    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
    let reason = e.pointer("/errors/0/reason").and_then(|r| r.as_str());
    Some(match reason {
        Some(r) => format!("{r}: {message}"),
        None => message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn tokens_are_found_in_order_and_name_their_source() {
        let none = CredentialOptions::default();
        let c = Credentials::find(&none, &env_of(&[(TOKEN_ENV, " ya29.x \n")])).unwrap();
        assert!(matches!(&c, Credentials::Token { token, .. } if token == "ya29.x"));
        assert_eq!(c.source(), "environment variable CLOUDSDK_AUTH_ACCESS_TOKEN");

        let opts = CredentialOptions { access_token_env: Some("MY_TOKEN".into()), ..Default::default() };
        let c = Credentials::find(&opts, &env_of(&[("MY_TOKEN", "t1"), (TOKEN_ENV, "t2")])).unwrap();
        assert!(matches!(&c, Credentials::Token { token, .. } if token == "t1"));
        let e = Credentials::find(&opts, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("MY_TOKEN (--access-token-env)") && e.contains("empty"), "{e}");

        // A key file named by the environment wins over a token in it, and a missing file says so.
        let e = Credentials::find(&none, &env_of(&[(KEY_ENV, "/nonexistent/k.json"), (TOKEN_ENV, "t")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/k.json (GOOGLE_APPLICATION_CREDENTIALS)"), "{e}");

        let e = Credentials::find(&none, &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("--key") && e.contains(KEY_ENV) && e.contains(TOKEN_ENV), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "ya29.fromfile\n").unwrap();
        let opts = CredentialOptions { access_token_file: Some(file.clone()), ..Default::default() };
        let c = Credentials::find(&opts, &env_of(&[(TOKEN_ENV, "t2")])).unwrap();
        assert!(matches!(&c, Credentials::Token { token, .. } if token == "ya29.fromfile"));
        assert_eq!(c.source(), format!("token file {} (--access-token-file)", file.display()));

        let both =
            CredentialOptions { key: Some("k".into()), access_token_env: Some("V".into()), ..Default::default() };
        assert!(matches!(Credentials::find(&both, &env_of(&[])), Err(Error::Invalid(_))));
    }

    #[test]
    fn a_key_file_that_is_not_a_service_account_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user.json");
        std::fs::write(&p, r#"{"type":"authorized_user","client_email":"","private_key":"","token_uri":""}"#).unwrap();
        let e = Credentials::from_key_file(&p, "key file X (--key)").unwrap_err().to_string();
        assert!(e.starts_with("credentials from key file X (--key):") && e.contains("authorized_user"), "{e}");
        let p = dir.path().join("bad.json");
        std::fs::write(
            &p,
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"http://127.0.0.1:1/token"}"#,
        )
        .unwrap();
        let e = Credentials::from_key_file(&p, "key file Y").unwrap_err().to_string();
        assert!(e.contains("not a usable RSA key"), "{e}");
    }

    #[test]
    fn pem_bodies_are_decoded() {
        let (label, der) = pem_body("x\n-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n").unwrap();
        assert_eq!((label.as_str(), der), ("PRIVATE KEY", vec![0, 1, 2, 3]));
        assert!(pem_body("-----BEGIN PRIVATE KEY-----\nAAEC").is_none());
    }
}
