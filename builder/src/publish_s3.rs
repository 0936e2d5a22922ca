//! `berth publish --repo s3://BUCKET/PREFIX`: a release repository on S3 (or any S3-compatible
//! store), published with the same checks and the same signed index as a local one.
//!
//! How: the channel's index and `.sig` (with their ETags) and every key set (`keys/N.json` and
//! its `.sig`, from 1 until one is missing) are read into a temporary local *shadow* of the
//! repository; the local [`publish`](crate::publish::publish) runs on it unchanged (key-set and
//! image checks, compression, signing, "same version, other bytes" refused), except that a release
//! already in the index is checked on the bucket by `HEAD` (size and `x-amz-meta-sha256`) instead
//! of on disk. Then the shadow's new objects are uploaded in the order that keeps a reader from
//! ever seeing a half-published channel (each PUT is atomic; S3 reads are strongly consistent):
//!
//! 1. the release's files, `If-None-Match: *` (an object already there with the same size and
//!    SHA-256 is taken as it is; other bytes are refused), `Cache-Control: immutable`;
//! 2. `channels/C.json.sig` holding the new signatures *and* the old ones (it verifies either
//!    index), `If-Match` on the `.sig`'s ETag read (a publish running at once is refused here);
//! 3. `channels/C.json`, `If-Match` on the index's ETag read (`If-None-Match: *` for a new
//!    channel): S3's compare-and-swap in place of the local lock. A concurrent publish that got
//!    there first makes it 412: the old `.sig` is put back and the error says "run again";
//! 4. `channels/C.json.sig` with the new signatures alone.
//!
//! A PUT of steps 2–4 that S3 carried out but whose answer was lost is retried and comes back
//! 412; the key is then read, and holding this run's bytes it counts as written.
//!
//! Re-publishing the same bytes uploads only the index pair (steps 2–4).

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use berth_cloud::Progress;
use berth_cloud::aws::credentials;
use berth_cloud::aws::s3::{Body, Condition, Put, PutHeaders, S3};
use berth_release::repo::{index_path, keyset_path, keyset_signature_path, signature_path};
use berth_release::{Artifact, Index, Signatures};

use crate::publish::{PublishOptions, PublishReport, artifacts_of, publish_with};

/// `Cache-Control` of release files: they never change under their name.
pub const RELEASE_CACHE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of the index and its signatures: a cache must ask again every time.
pub const CHANNEL_CACHE: &str = "no-cache";

/// An index, a signature file or a key set is small; anything larger is not one.
const SMALL: u64 = 16 << 20;

/// `s3://BUCKET/PREFIX`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Repo {
    /// The bucket.
    pub bucket: String,
    /// The repository's prefix in it, without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
}

impl S3Repo {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> anyhow::Result<S3Repo> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| anyhow!("{url:?} is not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        berth_cloud::aws::s3::check_bucket(bucket).map_err(|e| anyhow!("{url}: {e}"))?;
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
            bail!("{url}: the prefix may not hold empty, `.` or `..` segments");
        }
        Ok(S3Repo { bucket: bucket.to_string(), prefix })
    }

    /// The key of the repository's file `rel` (`channels/stable.json`).
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.prefix) }
    }

    /// `s3://BUCKET/PREFIX/rel`, for messages.
    pub fn url(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(rel))
    }
}

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// The bucket and prefix.
    pub repo: S3Repo,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`), reached path-style; `None`: AWS.
    pub endpoint: Option<String>,
    /// `--region` (else the environment's or the profile's, as `berth upload aws`).
    pub region: Option<String>,
    /// `--profile` (else `AWS_PROFILE`).
    pub profile: Option<String>,
    /// A canned ACL (`x-amz-acl`, such as `public-read`) on every object written.
    pub acl: Option<String>,
}

/// What an S3 publish did.
#[derive(Debug, Clone)]
pub struct S3PublishReport {
    /// The local publish on the shadow (its paths are the shadow's, gone after the run).
    pub publish: PublishReport,
    /// Keys written, in order, with their sizes (the `.sig` twice when its two steps differ).
    pub uploaded: Vec<(String, u64)>,
    /// Release files that were on the bucket already with the same bytes.
    pub present: Vec<String>,
    /// Where the credentials came from.
    pub credentials_source: String,
    /// The region signed for.
    pub region: String,
}

/// One object read into the shadow, with its ETag.
struct Read {
    bytes: Vec<u8>,
    etag: String,
}

/// Publishes `o` (its `repo` ignored) into the bucket (see the module documentation). `env`
/// reads the environment (credentials, region, HOME); `progress` shows the uploads.
pub fn publish_s3(
    o: &PublishOptions,
    t: &S3Target,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &dyn Progress,
) -> anyhow::Result<S3PublishReport> {
    publish_s3_with(o, t, env, progress, &|| {})
}

/// [`publish_s3`], calling `before_index` between writing the `.sig` with both signatures and
/// the index: where a test makes another publish race this one, deterministically.
pub fn publish_s3_with(
    o: &PublishOptions,
    t: &S3Target,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &dyn Progress,
    before_index: &dyn Fn(),
) -> anyhow::Result<S3PublishReport> {
    let found = credentials::find(t.profile.as_deref(), t.region.as_deref(), env)?;
    let Some(region) = found.region.clone() else {
        bail!(
            "no region: give --region, or set AWS_REGION, or region in the profile's section of ~/.aws/config \
             (credentials from {})",
            found.credentials.source
        );
    };
    let client = berth_cloud::api::client();
    let s3 = S3::new(&client, t.endpoint.as_deref(), &region, &t.repo.bucket, &found.credentials, progress)?;
    let repo = &t.repo;
    let get = |rel: &str| -> anyhow::Result<Option<Read>> {
        Ok(s3.get(&repo.key(rel), SMALL)?.map(|o| Read { bytes: o.body, etag: o.etag }))
    };

    // (1) The shadow: the channel's index pair and every key set.
    let shadow =
        tempfile::Builder::new().prefix("berth-publish-s3.").tempdir().context("creating a temporary directory")?;
    let put_local = |rel: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let p = shadow.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    let (index_rel, sig_rel) = (index_path(&o.channel), signature_path(&o.channel));
    let old_index = get(&index_rel)?;
    let old_sig = get(&sig_rel)?;
    if let Some(r) = &old_index {
        put_local(&index_rel, &r.bytes)?;
    }
    if let Some(r) = &old_sig {
        put_local(&sig_rel, &r.bytes)?;
    }
    for v in 1u64.. {
        let Some(ks) = get(&keyset_path(v))? else { break };
        put_local(&keyset_path(v), &ks.bytes)?;
        if let Some(sig) = get(&keyset_signature_path(v))? {
            put_local(&keyset_signature_path(v), &sig.bytes)?;
        }
    }

    // (2) The local publish on the shadow; releases already in the index checked by HEAD.
    let check = |a: &Artifact| -> anyhow::Result<()> {
        match s3.head(&repo.key(&a.path))? {
            Some(h) if h.size == a.size && h.sha256.as_deref() == Some(a.sha256.to_string().as_str()) => Ok(()),
            other => bail!(
                "{}: {} where the index announces {} bytes with SHA-256 {}: the repository is damaged (upload the \
                 release's file again)",
                repo.url(&a.path),
                match other {
                    None => "missing".to_string(),
                    Some(h) => format!(
                        "{} bytes with x-amz-meta-sha256 {}",
                        h.size,
                        h.sha256.unwrap_or_else(|| "(none)".into())
                    ),
                },
                a.size,
                a.sha256
            ),
        }
    };
    let local = PublishOptions { repo: shadow.path().to_path_buf(), ..o.clone() };
    let report = publish_with(&local, Some(&check))?;
    let new_index = std::fs::read(shadow.path().join(&index_rel)).context("reading the shadow's new index")?;
    let new_sig = std::fs::read(shadow.path().join(&sig_rel)).context("reading the shadow's new signatures")?;
    let index = Index::parse(&new_index).map_err(|e| anyhow!("the new index: {e}"))?;

    let mut uploaded = Vec::new();
    let mut present = Vec::new();
    let acl = t.acl.as_deref();

    // (3.1) The release's files, if this publish made a release.
    if let (Some(version), false) = (&report.version, report.unchanged) {
        let release = index.release(version).ok_or_else(|| anyhow!("the new index lacks release {version}"))?;
        let mut files = artifacts_of(release);
        // The frame list before the root image, the root (the large one) first of the rest.
        files.sort_by_key(|a| {
            if Some(a.path.as_str()) == release.root.frames.as_ref().map(|f| f.path.as_str()) { 0 } else { 1 }
        });
        let headers = PutHeaders { content_type: None, cache_control: Some(RELEASE_CACHE), acl };
        for a in files {
            let key = repo.key(&a.path);
            let path = shadow.path().join(&a.path);
            let sha = a.sha256.to_string();
            let body = Body::File { path: &path, len: a.size, sha256: &sha };
            match s3.put(&key, body, &Condition::Absent, &headers)? {
                Put::Written { .. } => uploaded.push((key, a.size)),
                Put::PreconditionFailed => match s3.head(&key)? {
                    Some(h) if h.size == a.size && h.sha256.as_deref() == Some(sha.as_str()) => present.push(key),
                    other => bail!(
                        "{} exists with other bytes ({}; this release's are {} bytes with SHA-256 {sha}): another \
                         release of version {version} was uploaded there; publish this image under a new version",
                        repo.url(&a.path),
                        other.map_or("gone again".to_string(), |h| format!(
                            "{} bytes, x-amz-meta-sha256 {}",
                            h.size,
                            h.sha256.unwrap_or_else(|| "(none)".into())
                        )),
                        a.size
                    ),
                },
            }
        }
    }

    // (3.2) The .sig holding the new and the old signatures: it verifies either index.
    let channel_headers =
        PutHeaders { content_type: Some("application/json"), cache_control: Some(CHANNEL_CACHE), acl };
    let both = both_signatures(&new_sig, old_sig.as_ref().map(|r| r.bytes.as_slice()))?;
    let sig_key = repo.key(&sig_rel);
    let sig_condition = match &old_sig {
        Some(r) => Condition::Matches(r.etag.clone()),
        None => Condition::Absent,
    };
    // A PUT that went through but whose answer was lost is sent again and then fails its own
    // precondition (412): the key holding exactly what this run wrote is this run's write, its
    // ETag read back. Bytes are compared, not ETags (an ETag is not the MD5 under SSE-KMS).
    let ours = |key: &str, bytes: &[u8]| -> anyhow::Result<Option<String>> {
        Ok(s3.get(key, SMALL)?.filter(|o| o.body == bytes).map(|o| o.etag))
    };
    let both_etag = match s3.put(&sig_key, Body::Bytes(&both), &sig_condition, &channel_headers)? {
        Put::Written { etag } => etag,
        Put::PreconditionFailed => match ours(&sig_key, &both)? {
            Some(etag) => etag,
            None => bail!(
                "another publish is writing channel {} ({} changed since this one read it); the channel is as it \
                 was: run again",
                o.channel,
                repo.url(&sig_rel)
            ),
        },
    };
    uploaded.push((sig_key.clone(), both.len() as u64));

    before_index();
    // (3.3) The index, if it is still the one read: the compare-and-swap of the publish.
    let index_key = repo.key(&index_rel);
    let index_condition = match &old_index {
        Some(r) => Condition::Matches(r.etag.clone()),
        None => Condition::Absent,
    };
    match s3.put(&index_key, Body::Bytes(&new_index), &index_condition, &channel_headers)? {
        Put::Written { .. } => uploaded.push((index_key, new_index.len() as u64)),
        Put::PreconditionFailed if ours(&index_key, &new_index)?.is_some() => {
            uploaded.push((index_key, new_index.len() as u64))
        }
        Put::PreconditionFailed => {
            // Put the old .sig back, unless someone has replaced ours meanwhile.
            let restored = match &old_sig {
                Some(r) => matches!(
                    s3.put(&sig_key, Body::Bytes(&r.bytes), &Condition::Matches(both_etag), &channel_headers)?,
                    Put::Written { .. }
                ),
                None => false,
            };
            bail!(
                "another publish changed channel {} ({}) while this one ran; {}: run again",
                o.channel,
                repo.url(&index_rel),
                if restored { "its old .sig was put back" } else { "the .sig is the other publish's" }
            );
        }
    }

    // (3.4) The new signatures alone.
    if both != new_sig {
        match s3.put(&sig_key, Body::Bytes(&new_sig), &Condition::Matches(both_etag), &channel_headers)? {
            Put::Written { .. } => uploaded.push((sig_key, new_sig.len() as u64)),
            Put::PreconditionFailed if ours(&sig_key, &new_sig)?.is_some() => {
                uploaded.push((sig_key, new_sig.len() as u64))
            }
            // A later publish has written its own (new and old) signatures over ours: they verify
            // this index too.
            Put::PreconditionFailed => {
                progress.note(&format!("{} was replaced by a later publish meanwhile", repo.url(&sig_rel)))
            }
        }
    }
    Ok(S3PublishReport {
        publish: report,
        uploaded,
        present,
        credentials_source: found.credentials.source.clone(),
        region,
    })
}

/// The new signatures followed by the old ones not among them (`write_index`'s intermediate
/// file); an old file that does not parse adds nothing.
fn both_signatures(new: &[u8], old: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut both: Signatures = serde_json::from_slice(new).context("the new signature file")?;
    let carried: Vec<_> = old
        .and_then(|b| serde_json::from_slice::<Signatures>(b).ok())
        .map(|s| s.signatures.into_iter().filter(|e| !both.signatures.contains(e)).collect())
        .unwrap_or_default();
    if carried.is_empty() {
        return Ok(new.to_vec());
    }
    both.signatures.extend(carried);
    Ok(both.to_bytes())
}

/// The environment as [`publish_s3`] reads it in production.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether `repo` names an object-storage repository (`s3://…`) rather than a directory.
pub fn is_s3(repo: &Path) -> bool {
    repo.to_str().is_some_and(|s| s.starts_with("s3://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_are_parsed_and_keys_made() {
        let r = S3Repo::parse("s3://my-bucket/releases/fleet/").unwrap();
        assert_eq!((r.bucket.as_str(), r.prefix.as_str()), ("my-bucket", "releases/fleet"));
        assert_eq!(r.key("channels/stable.json"), "releases/fleet/channels/stable.json");
        let r = S3Repo::parse("s3://my-bucket").unwrap();
        assert_eq!(r.key("keys/1.json"), "keys/1.json");
        for bad in ["my-bucket/x", "s3://My_Bucket/x", "s3://b/x", "s3://bucket/a/../b", "s3://bucket/a//b"] {
            assert!(S3Repo::parse(bad).is_err(), "{bad}");
        }
        assert!(is_s3(Path::new("s3://b/x")) && !is_s3(Path::new("./repo")));
    }
}
