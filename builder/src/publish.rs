//! `berth keygen` and `berth publish`: signing keys, and the release repository of docs/design.md §4.
//!
//! ```text
//! channels/<channel>.json        the index (berth_release::Index)
//! channels/<channel>.json.sig    detached ed25519 signatures over its exact bytes
//! releases/<version>/            root.img.zst, vmlinuz, initrd.img
//! ```
//!
//! A publish reads the disk `berth build` wrote: ROOT-A's bytes are the root image (hashed and
//! compressed as independent zstd frames of at most `ZSTD_FRAME_BYTES` at a fixed level, so
//! the same disk gives the same file), slot A's kernel, initramfs and command line come from the ESP, the version from the
//! build's manifest. It adds the release to the channel's index, raises the sequence, sets the
//! expiry, and signs the index's exact bytes with every key.
//!
//! Nothing is half-written at any moment: the artifacts are written into a temporary directory
//! inside the repository and renamed into place; the index and its signatures are each written
//! to a temporary file in `channels/` and renamed. The signature file is replaced first by one
//! that holds the signatures over both the old and the new index, then the index, then the
//! signature file again with the new signatures alone: a reader (or a crash) between any two
//! renames still finds an index its signatures verify. A failure before the index is renamed
//! leaves the repository as it was (a release directory it created is removed again).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use berth_release::index::{Compression, Digest, RootArtifact, SCHEMA, ZSTD_FRAME_BYTES, check_name, compare_versions};
use berth_release::repo::{FRAMES_FILE, INITRD_FILE, ROOT_FILE, VMLINUZ_FILE, index_path, release_dir, signature_path};
use berth_release::signature::{
    SignatureEntry, parse_secret_key_file, public_key_hex, secret_key_file, secret_key_from_seed,
};
use berth_release::{Artifact, Index, Release, Rollout, Signatures, Timestamp, TrustedKeys};
use berth_slot::Slot;
use sha2::{Digest as _, Sha256};

use crate::disk::FileRange;

/// zstd level of `root.img.zst`: fixed, so the same disk gives the same bytes. Level 9 is
/// within a few percent of 12 and 15 on Berth roots at a fraction of their time; 19 saves a
/// further tenth but takes about 4 s per 10 MB of content, and decodes a fifth slower.
pub const ROOT_ZSTD_LEVEL: i32 = 9;

/// Default `--expires`: 30 days.
pub const DEFAULT_EXPIRES: Duration = Duration::from_secs(30 * 86_400);

// ---------------------------------------------------------------------------------------------
// keygen

/// Where `berth keygen` put a key pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The public key, 64 hex digits: what an image's `[update] keys` lists.
    pub public: String,
    /// `BASE.key`: the secret seed, mode 0600.
    pub secret_path: PathBuf,
    /// `BASE.pub`: the public key.
    pub public_path: PathBuf,
}

/// Makes an ed25519 key pair at `base.with_extension("key")` (secret) and `…("pub")`
/// (public); refuses to replace either file. Returns the public key, hex.
/// A key file's text and its permission bits, both from one open file.
pub(crate) fn read_key_file(p: &Path) -> anyhow::Result<(String, u32)> {
    let mut f = File::open(p).with_context(|| format!("reading the key {}", p.display()))?;
    let mode = f.metadata().with_context(|| format!("reading the key {}", p.display()))?.permissions().mode();
    let mut text = String::new();
    f.read_to_string(&mut text).with_context(|| format!("reading the key {}", p.display()))?;
    Ok((text, mode & 0o7777))
}

/// A secret key others can read is as good as leaked: refused, as ssh refuses such a key.
pub(crate) fn check_secret_key_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "{}: secret key with mode {mode:04o}, open to group or others; make it private with: chmod 600 {}",
            p.display(),
            p.display()
        );
    }
    Ok(())
}

pub fn keygen(base: &Path) -> anyhow::Result<String> {
    generate_key(base, false).map(|k| k.public)
}

/// [`keygen`], replacing existing files when `force`.
pub fn generate_key(base: &Path, force: bool) -> anyhow::Result<KeyPair> {
    let secret_path = base.with_extension("key");
    let public_path = base.with_extension("pub");
    if !force {
        for p in [&secret_path, &public_path] {
            if p.symlink_metadata().is_ok() {
                bail!("{} exists: refusing to replace a key (pass --force to, or choose another --out)", p.display());
            }
        }
    }
    let dir = match secret_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("{}: no such directory (for {})", dir.display(), secret_path.display());
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    let key = secret_key_from_seed(seed);
    seed.fill(0);
    let public = public_key_hex(&key);

    let write = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        // NamedTempFile is created 0600, so the secret is never readable by others.
        let mut tmp = tempfile::Builder::new()
            .prefix(".berth-keygen.")
            .tempfile_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
        if force {
            tmp.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
        } else {
            // Not even a file made meanwhile is replaced.
            tmp.persist_noclobber(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    };
    write(&secret_path, &secret_key_file(&key), 0o600)?;
    if let Err(e) = write(&public_path, &format!("{public}\n"), 0o644) {
        // No secret without its public half.
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    sync_dir(&dir);
    Ok(KeyPair { public, secret_path, public_path })
}

// ---------------------------------------------------------------------------------------------
// publish

/// What `berth publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The repository's root directory (created if missing).
    pub repo: PathBuf,
    /// The channel: `channels/<channel>.json`.
    pub channel: String,
    /// The disk `berth build` wrote (`OUT/<name>.img`, its manifest beside it); `None` to
    /// only re-sign the index (e.g. with `pull_back`).
    pub image: Option<PathBuf>,
    /// Secret key files (`berth keygen`); the index is signed by each.
    pub keys: Vec<PathBuf>,
    /// How long the new release takes to reach every host; `None`: all at once.
    pub rollout: Option<Duration>,
    /// Versions to pull back (`pulled: true`): no agent installs them any more.
    pub pull_back: Vec<String>,
    /// How long the index stays valid.
    pub expires: Duration,
    /// The time written as `issued` and the rollout's start; `None`: the clock.
    pub now: Option<Timestamp>,
    /// A progress bar on stderr while the root image is compressed.
    pub progress: bool,
    /// Publish an image whose own update.toml would not let its hosts update from this
    /// channel again (no version, no channel, another channel, keys that do not lead to the
    /// signing keys): refused without it.
    pub force: bool,
}

impl Default for PublishOptions {
    fn default() -> PublishOptions {
        PublishOptions {
            repo: PathBuf::new(),
            channel: "stable".into(),
            image: None,
            keys: Vec::new(),
            rollout: None,
            pull_back: Vec::new(),
            expires: DEFAULT_EXPIRES,
            now: None,
            progress: false,
            force: false,
        }
    }
}

/// One file of the repository as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// On this machine.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    /// The version published (`None`: the index was only re-signed).
    pub version: Option<String>,
    /// The release was already in the channel with the same bytes: only the index was re-signed.
    pub unchanged: bool,
    /// The new index's sequence.
    pub sequence: u64,
    /// `issued` and `expires` of the new index.
    pub issued: Timestamp,
    pub expires: Timestamp,
    /// `channels/<channel>.json` and its `.sig`.
    pub index: PathBuf,
    pub signature: PathBuf,
    /// `releases/<version>/` and its files: root.img.zst, vmlinuz, initrd.img.
    pub release_dir: Option<PathBuf>,
    pub artifacts: Vec<PublishedFile>,
    /// The root filesystem image (ROOT-A) and its compressed size.
    pub image_size: u64,
    pub compressed_size: u64,
    /// Versions now marked pulled by this publish.
    pub pulled: Vec<String>,
    /// Public keys that signed.
    pub signed_by: Vec<String>,
    /// Wall time of the whole publish and of compressing the root.
    pub elapsed: Duration,
    pub compress_time: Duration,
}

impl PublishReport {
    /// `compressed / image`, 0 when nothing was compressed.
    pub fn ratio(&self) -> f64 {
        if self.image_size == 0 { 0.0 } else { self.compressed_size as f64 / self.image_size as f64 }
    }
}

/// Publishes (see the module documentation).
pub fn publish(o: &PublishOptions) -> anyhow::Result<PublishReport> {
    publish_with(o, None)
}

/// Checks that a release's artifact is where the index says, with its bytes: a repository whose
/// releases are elsewhere than `o.repo` (`publish_s3`'s local shadow: HEAD on the bucket).
pub(crate) type ArtifactCheck<'c> = &'c dyn Fn(&Artifact) -> anyhow::Result<()>;

/// [`publish`], with the artifacts of releases already in the index checked by `remote` instead
/// of read from `o.repo` when given.
pub(crate) fn publish_with(o: &PublishOptions, remote: Option<ArtifactCheck<'_>>) -> anyhow::Result<PublishReport> {
    let started = Instant::now();
    let now = o.now.unwrap_or_else(Timestamp::now);
    check_name("--channel", &o.channel).map_err(|e| anyhow!("channel {:?}: {e}", o.channel))?;
    if o.expires < Duration::from_secs(1) {
        bail!("--expires must be at least 1s (the index is refused once it expires)");
    }
    if o.image.is_none() && o.rollout.is_some() {
        bail!("--rollout applies to the release being published: give --image too");
    }
    if o.keys.is_empty() {
        bail!("no signing key: pass --key FILE (a secret key made by `berth keygen`)");
    }
    let keys = o
        .keys
        .iter()
        .map(|p| {
            let (text, mode) = read_key_file(p)?;
            let key = parse_secret_key_file(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
            // A public key is 64 hex digits too: signing with it as a seed would make a key no
            // host trusts.
            let sibling = p.with_extension("key");
            let is_public = p.extension().is_some_and(|x| x == "pub")
                || (sibling != *p
                    && std::fs::read_to_string(&sibling)
                        .ok()
                        .and_then(|t| parse_secret_key_file(&t).ok())
                        .is_some_and(|k| public_key_hex(&k) == text.trim()));
            if is_public {
                bail!("{}: a public key; sign with the secret key ({})", p.display(), sibling.display());
            }
            check_secret_key_mode(p, mode)?;
            Ok(key)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let signed_by: Vec<String> = keys.iter().map(public_key_hex).collect();
    let sign = |bytes: &[u8]| Signatures::sign_all(bytes, &keys);

    // Everything is read and checked before the repository is touched.
    let index_file = o.repo.join(index_path(&o.channel));
    let sig_file = o.repo.join(signature_path(&o.channel));
    let old = read_index(&index_file, &o.channel)?;
    // Without an image or a pull-back, an existing index is refreshed: a new sequence and expiry
    // over the same releases. Done often with a short --expires by the online signing key, this
    // is what TUF's timestamp role gives: a mirror can hide a newer index only until then.
    if o.image.is_none() && o.pull_back.is_empty() && old.is_none() {
        bail!(
            "nothing to publish: channel {} has no index yet to refresh; give --image (a disk from `berth build`)",
            o.channel
        );
    }
    let source = match &o.image {
        Some(image) => Some(DiskSource::open(image)?),
        None => None,
    };
    // The keys hosts will check the index against: the newest key set's signing keys, or
    // without a key set the keys that sign (berth_release::keyset).
    let keyset = crate::keys::newest_keyset(&o.repo)?;
    if let Some(ks) = &keyset {
        let trust = berth_release::keyset::Trust::from_keyset(ks.clone()).map_err(|e| anyhow!("{e}"))?;
        let needed = trust.index_keys(now).map_err(|e| anyhow!("{}: {e}", o.repo.display()))?;
        let probe = b"berth publish: which keys sign";
        if let Err(e) = needed.verify(probe, &sign(probe).to_bytes()) {
            bail!(
                "{}: key set {} names the keys that sign channels, and --key does not meet it: {e}; sign with its \
                 signing keys (berth keys sign changes them)",
                o.repo.join(berth_release::repo::keyset_path(ks.version)).display(),
                ks.version
            );
        }
    }
    if let Some(src) = &source
        && !o.force
    {
        check_image_trust(src, &o.channel, &o.repo, &sign, now)
            .map_err(|why| anyhow!("{}: {why} (--force publishes it anyway)", src.path.display()))?;
    }
    std::fs::create_dir_all(o.repo.join("channels"))
        .with_context(|| format!("creating {}", o.repo.join("channels").display()))?;
    std::fs::create_dir_all(o.repo.join("releases"))
        .with_context(|| format!("creating {}", o.repo.join("releases").display()))?;
    let _lock = lock_repo(&o.repo)?;
    remove_stale_temporaries(&o.repo, &o.channel);

    let mut releases = old.as_ref().map(|i| i.releases.clone()).unwrap_or_default();
    let mut report_version = None;
    let mut unchanged = false;
    let mut release_path = None;
    let mut artifacts = Vec::new();
    let (mut image_size, mut compressed_size, mut compress_time) = (0, 0, Duration::ZERO);
    // A release directory this publish renamed into place, removed again if it fails later.
    let mut created: Option<PathBuf> = None;

    if let Some(src) = &source {
        let version = src.version.clone();
        let rel_dir = release_dir(&version);
        let final_dir = o.repo.join(&rel_dir);
        let staged = Staged::write(src, &o.repo, &rel_dir, o.progress)?;
        image_size = staged.root.image_size;
        compressed_size = staged.root.file.size;
        compress_time = staged.compress_time;
        let rollout = Rollout { start: now, duration_seconds: o.rollout.map_or(0, |d| d.as_secs()) };
        let new = Release {
            version: version.clone(),
            cmdline: src.cmdline.clone(),
            root: staged.root.clone(),
            vmlinuz: staged.vmlinuz.clone(),
            initrd: staged.initrd.clone(),
            rollout,
            pulled: false,
        };
        match releases.iter().find(|r| r.version == version) {
            Some(existing) => {
                if let Some(diff) = differs(existing, &new) {
                    bail!(
                        "version {version} is already in channel {} with other contents ({diff} differs): publish \
                         this image under a new version",
                        o.channel
                    );
                }
                // Same bytes: the release (rollout, pulled) stays as it is; only re-signed.
                match remote {
                    Some(check) => artifacts_of(existing).into_iter().try_for_each(check)?,
                    None => check_files(&o.repo, existing)?,
                }
                unchanged = true;
            }
            None => {
                if final_dir.exists() {
                    // Another channel's release of the same version, or a leftover.
                    match same_files(&new, &o.repo)? {
                        true => {}
                        false if referenced(&o.repo, &rel_dir)? => bail!(
                            "{} already holds other artifacts of version {version} (a channel's index lists \
                             them): publish this image under a new version",
                            final_dir.display()
                        ),
                        false => {
                            // Listed by no index: a leftover, replaced.
                            let old_dir = staged.dir.path().with_extension("old");
                            std::fs::rename(&final_dir, &old_dir)
                                .with_context(|| format!("moving {} aside", final_dir.display()))?;
                            if let Err(e) = staged.install(&final_dir) {
                                let _ = std::fs::rename(&old_dir, &final_dir);
                                return Err(e);
                            }
                            let _ = std::fs::remove_dir_all(&old_dir);
                            created = Some(final_dir.clone());
                        }
                    }
                } else {
                    staged.install(&final_dir)?;
                    created = Some(final_dir.clone());
                }
                releases.push(new.clone());
                releases.sort_by(|a, b| compare_versions(&a.version, &b.version));
            }
        }
        artifacts = [(ROOT_FILE, &new.root.file), (VMLINUZ_FILE, &new.vmlinuz), (INITRD_FILE, &new.initrd)]
            .iter()
            .map(|(name, a)| PublishedFile { path: final_dir.join(name), size: a.size })
            .collect();
        report_version = Some(version);
        release_path = Some(final_dir);
    }

    let result = (|| -> anyhow::Result<(Index, Vec<String>)> {
        let mut pulled = Vec::new();
        for v in &o.pull_back {
            let have: Vec<String> = releases.iter().map(|r| r.version.clone()).collect();
            let r = releases.iter_mut().find(|r| compare_versions(&r.version, v).is_eq()).ok_or_else(|| {
                anyhow!(
                    "--pull-back {v}: channel {} has no such release (it has: {})",
                    o.channel,
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                )
            })?;
            if !r.pulled {
                r.pulled = true;
                pulled.push(r.version.clone());
            }
        }
        let sequence = match &old {
            Some(i) => i.sequence.checked_add(1).context("the index's sequence cannot grow any more")?,
            None => 1,
        };
        let index = Index {
            schema: SCHEMA,
            channel: o.channel.clone(),
            sequence,
            issued: now,
            expires: now.plus(o.expires),
            releases: releases.clone(),
        };
        index.check().map_err(|e| anyhow!("the new index would not be valid: {e}"))?;
        write_index(&index, &sign, &signed_by, &index_file, &sig_file)?;
        Ok((index, pulled))
    })();
    let (index, pulled) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Some(dir) = created {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(e);
        }
    };
    Ok(PublishReport {
        version: report_version,
        unchanged,
        sequence: index.sequence,
        issued: index.issued,
        expires: index.expires,
        index: index_file,
        signature: sig_file,
        release_dir: release_path,
        artifacts,
        image_size,
        compressed_size,
        pulled,
        signed_by,
        elapsed: started.elapsed(),
        compress_time,
    })
}

/// The channel's current index, if there is one; one that does not parse stops the publish.
fn read_index(path: &Path, channel: &str) -> anyhow::Result<Option<Index>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let index = Index::parse(&bytes)
        .map_err(|e| anyhow!("{}: {e}; refusing to publish over it (repair or remove it)", path.display()))?;
    if index.channel != channel {
        bail!("{}: the index names channel {:?}, not {channel:?}", path.display(), index.channel);
    }
    Ok(Some(index))
}

/// A disk from `berth build`, opened: where ROOT-A is, and slot A's files from the ESP.
struct DiskSource {
    path: PathBuf,
    file: File,
    root_offset: u64,
    root_size: u64,
    version: String,
    cmdline: String,
    vmlinuz: Vec<u8>,
    initrd: Vec<u8>,
    /// The manifest, and ROOT-A's SHA-256 as it records it.
    manifest: PathBuf,
    manifest_root_sha256: Option<String>,
    /// ROOT-A's own update.toml, if it has one.
    config: Option<berth_release::UpdateConfig>,
}

/// `<name>.manifest.json` beside `<name>.img`.
pub fn manifest_path(image: &Path) -> PathBuf {
    image.with_extension("manifest.json")
}

impl DiskSource {
    fn open(path: &Path) -> anyhow::Result<DiskSource> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("{}: no such disk image (--image takes the OUT/<name>.img `berth build` writes)", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let info =
            crate::inspect::inspect(path).map_err(|e| anyhow!("{}: not a Berth disk image: {e}", path.display()))?;
        let find = |kind: &str, label: Option<&str>| {
            info.partitions.iter().find(|p| p.kind == kind && label.is_none_or(|l| p.label == l))
        };
        let root = find("root", Some(Slot::A.label()))
            .ok_or_else(|| anyhow!("{}: no {} partition: not a Berth disk image", path.display(), Slot::A.label()))?;
        let esp = find("esp", None)
            .ok_or_else(|| anyhow!("{}: no EFI system partition: not a Berth disk image", path.display()))?;

        let fs = fatfs::FileSystem::new(
            FileRange::new(&file, esp.offset, esp.size),
            fatfs::FsOptions::new().update_accessed_date(false),
        )
        .map_err(|e| anyhow!("{}: reading the EFI system partition: {e}", path.display()))?;
        let dir = Slot::A.esp_dir();
        let read = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
            match fs.root_dir().open_file(&format!("{dir}/{name}")) {
                Ok(mut f) => {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).with_context(|| format!("{}: reading {dir}/{name}", path.display()))?;
                    Ok(Some(v))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("{}: reading {dir}/{name} on the ESP: {e}", path.display())),
            }
        };
        let need = |name: &str| -> anyhow::Result<Vec<u8>> {
            match read(name)? {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => bail!("{}: {dir}/{name} on the ESP is empty", path.display()),
                None => bail!("{}: no {dir}/{name} on the ESP: slot A holds no kernel", path.display()),
            }
        };
        let vmlinuz = need(VMLINUZ_FILE)?;
        let initrd = need(INITRD_FILE)?;
        let esp_cmdline = read("cmdline")?.map(|b| String::from_utf8_lossy(&b).trim_end().to_string());
        drop(fs);

        let manifest = manifest_path(path);
        let m: Option<serde_json::Value> = match std::fs::read(&manifest) {
            Ok(b) => Some(serde_json::from_slice(&b).with_context(|| format!("{}: not JSON", manifest.display()))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", manifest.display())),
        };
        let m = m.unwrap_or(serde_json::Value::Null);
        // The version the agent on a host will compare: the image's own update.toml.
        let config = image_config(&file, root.offset, root.size)
            .map_err(|e| anyhow!("{}: {}: {e}", path.display(), berth_release::config::IMAGE_CONFIG))?;
        let own = config.as_ref().and_then(|c| c.version.clone());
        let version = match (own, m["version"].as_str()) {
            (Some(v), Some(mv)) if v != mv => bail!(
                "{}: the image's {} says version {v}, its manifest {} says {mv}: the manifest is of another build",
                path.display(),
                berth_release::config::IMAGE_CONFIG,
                manifest.display()
            ),
            (Some(v), _) => v,
            (None, Some(mv)) => mv.to_string(),
            (None, None) => bail!(
                "{}: no version: neither {} in {} nor a manifest ({}, written by `berth build` beside the disk)",
                path.display(),
                berth_release::config::IMAGE_CONFIG,
                Slot::A.label(),
                manifest.display()
            ),
        };
        if let Err(e) = semver::Version::parse(&version) {
            bail!("{}: version {version:?} is not a semantic version: {e}", path.display());
        }
        let cmdline = match (esp_cmdline, m["cmdline"].as_str()) {
            (Some(c), _) => c,
            (None, Some(c)) => c.to_string(),
            (None, None) => {
                bail!("{}: no {dir}/cmdline on the ESP and no \"cmdline\" in {}", path.display(), manifest.display())
            }
        };
        let manifest_root_sha256 = m["partitions"].as_array().and_then(|ps| {
            ps.iter().find(|p| p["label"] == Slot::A.label()).and_then(|p| p["sha256"].as_str()).map(str::to_string)
        });
        Ok(DiskSource {
            path: path.to_path_buf(),
            file,
            root_offset: root.offset,
            root_size: root.size,
            version,
            cmdline,
            vmlinuz,
            initrd,
            manifest,
            manifest_root_sha256,
            config,
        })
    }
}

/// One partition of the disk, as `ext4-view` reads a device.
struct PartitionReader {
    file: File,
    offset: u64,
    size: u64,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if start.checked_add(dst.len() as u64).is_none_or(|end| end > self.size) {
            return Err("a read past the end of the partition".into());
        }
        Ok(self.file.read_exact_at(dst, self.offset + start)?)
    }
}

/// The root's `/usr/lib/berth/update.toml`; `None` when the partition holds no ext4
/// filesystem or no such file.
fn image_config(file: &File, offset: u64, size: u64) -> anyhow::Result<Option<berth_release::UpdateConfig>> {
    let reader = PartitionReader { file: file.try_clone()?, offset, size };
    let Ok(fs) = ext4_view::Ext4::load(Box::new(reader)) else { return Ok(None) };
    let config = berth_release::config::IMAGE_CONFIG;
    let text = match fs.read_to_string(config) {
        Ok(t) => t,
        Err(ext4_view::Ext4Error::NotFound) => return Ok(None),
        Err(e) => return Err(anyhow!("reading it: {e}")),
    };
    let c =
        berth_release::UpdateConfig::from_texts(&[(PathBuf::from(config), text)]).map_err(|e| anyhow!("{}", e.why))?;
    Ok(Some(c))
}

/// M10: whether hosts running the image can take the next update from this channel: its
/// update.toml names its version, this channel, and root keys from which the repository's key
/// sets lead to the keys that sign this publish (the walk the agent makes).
fn check_image_trust(
    src: &DiskSource,
    channel: &str,
    repo: &Path,
    sign: &dyn Fn(&[u8]) -> Signatures,
    now: Timestamp,
) -> Result<(), String> {
    let config = berth_release::config::IMAGE_CONFIG;
    let Some(c) = &src.config else {
        return Err(format!(
            "{} holds no {config}: hosts that install it have no channel and trust no key, and never update again",
            Slot::A.label()
        ));
    };
    if c.version.is_none() {
        return Err(format!("its {config} names no version: hosts could not tell it from the releases offered"));
    }
    let Some(url) = &c.channel else {
        return Err(format!("its {config} names no channel: hosts that install it never update again"));
    };
    match berth_release::repo::split_index_url(url) {
        Some((_, name)) if name == channel => {}
        _ => {
            return Err(format!(
                "its {config} follows {url}, not channel {channel:?}: its hosts would leave this channel"
            ));
        }
    }
    let anchor = TrustedKeys::new(&c.keys, c.threshold)
        .map_err(|e| format!("its {config}: {e}: hosts that install it trust no key"))?;
    let walked = berth_release::keyset::follow(berth_release::keyset::Trust::anchor(anchor), |v| {
        let read = |p: String| std::fs::read(repo.join(p));
        match (read(berth_release::repo::keyset_path(v)), read(berth_release::repo::keyset_signature_path(v))) {
            (Ok(b), Ok(s)) => Ok::<_, berth_release::keyset::KeySetError>(Some((b, s))),
            _ => Ok(None),
        }
    })
    .map_err(|e| format!("the repository's key sets: {e}"))?;
    let needed = walked.trust.index_keys(now).map_err(|e| e.to_string())?;
    let probe = b"berth publish: do its hosts trust these keys";
    needed.verify(probe, &sign(probe).to_bytes()).map_err(|e| {
        format!(
            "its {config} trusts keys ({}, threshold {}) that do not accept these signing keys: {e}; its hosts would \
             refuse every later index",
            c.keys.iter().map(|k| &k[..k.len().min(16)]).collect::<Vec<_>>().join(", "),
            c.threshold
        )
    })?;
    Ok(())
}

/// A release's artifacts written into a temporary directory of the repository.
struct Staged {
    dir: tempfile::TempDir,
    root: RootArtifact,
    vmlinuz: Artifact,
    initrd: Artifact,
    compress_time: Duration,
}

/// One frame of `root.img.zst` (berth_release's `Compression::Zstd`): it declares its size, and
/// carries no checksum of its own (the index holds the SHA-256 of the file and of the image).
fn compress_frame(image: &[u8]) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(ROOT_ZSTD_LEVEL)?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.compress(image)
}

/// Counts and hashes what passes through.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn digest(h: Sha256) -> Digest {
    Digest(h.finalize().into())
}

/// A bar of `len` bytes with throughput and ETA on stderr, or drawn nowhere unless `show`.
pub fn progress_bar(show: bool, len: u64, msg: String) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

impl Staged {
    fn write(src: &DiskSource, repo: &Path, rel_dir: &str, progress: bool) -> anyhow::Result<Staged> {
        let releases = repo.join("releases");
        let dir = tempfile::Builder::new()
            .prefix(".publish-")
            .tempdir_in(&releases)
            .with_context(|| format!("creating a temporary directory in {}", releases.display()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let werr = |name: &str| format!("writing {}", dir.path().join(name).display());

        let started = Instant::now();
        let out = File::create(dir.path().join(ROOT_FILE)).with_context(|| werr(ROOT_FILE))?;
        let mut sink =
            HashingWriter { inner: io::BufWriter::with_capacity(1 << 20, out), hash: Sha256::new(), written: 0 };
        let bar = progress_bar(progress, src.root_size, format!("compressing {} {}", Slot::A.label(), src.version));
        let mut image_hash = Sha256::new();
        let mut frame_list = berth_release::index::FrameList::default();
        // A frame per thread at a time; each frame depends only on its own bytes, so the file
        // is the same whatever the number of threads.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let mut batch = vec![vec![0u8; ZSTD_FRAME_BYTES as usize]; threads];
        let mut at = 0u64;
        while at < src.root_size {
            let mut lens = Vec::with_capacity(threads);
            for buf in &mut batch {
                if at == src.root_size {
                    break;
                }
                let n = (src.root_size - at).min(ZSTD_FRAME_BYTES) as usize;
                src.file
                    .read_exact_at(&mut buf[..n], src.root_offset + at)
                    .with_context(|| format!("{}: reading {}", src.path.display(), Slot::A.label()))?;
                image_hash.update(&buf[..n]);
                lens.push(n);
                at += n as u64;
            }
            let frames: Vec<io::Result<Vec<u8>>> = std::thread::scope(|s| {
                let running: Vec<_> =
                    batch.iter().zip(&lens).map(|(buf, &n)| s.spawn(move || compress_frame(&buf[..n]))).collect();
                running
                    .into_iter()
                    .map(|t| t.join().unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked"))))
                    .collect()
            });
            for frame in frames {
                let frame = frame.with_context(|| werr(ROOT_FILE))?;
                // M8: each frame's size and SHA-256, for agents to check before decoding it.
                frame_list.0.push((frame.len() as u64, digest(Sha256::new().chain_update(&frame))));
                sink.write_all(&frame).with_context(|| werr(ROOT_FILE))?;
            }
            bar.set_position(at);
        }
        bar.finish_and_clear();
        let (written, hash) = (sink.written, sink.hash);
        let out = sink.inner.into_inner().map_err(|e| e.into_error()).with_context(|| werr(ROOT_FILE))?;
        out.sync_all().with_context(|| werr(ROOT_FILE))?;
        let compress_time = started.elapsed();
        let image_sha256 = digest(image_hash);
        if let Some(m) = &src.manifest_root_sha256
            && *m != image_sha256.to_string()
        {
            bail!(
                "{}: {}'s SHA-256 is {image_sha256}, the manifest {} records {m}: the manifest is of another build",
                src.path.display(),
                Slot::A.label(),
                src.manifest.display()
            );
        }
        let small = |name: &str, data: &[u8]| -> anyhow::Result<Artifact> {
            let mut f = File::create(dir.path().join(name)).with_context(|| werr(name))?;
            f.write_all(data).and_then(|()| f.sync_all()).with_context(|| werr(name))?;
            Ok(Artifact {
                path: format!("{rel_dir}/{name}"),
                size: data.len() as u64,
                sha256: digest(Sha256::new().chain_update(data)),
            })
        };
        let frames = small(FRAMES_FILE, &frame_list.to_bytes())?;
        let root = RootArtifact {
            file: Artifact { path: format!("{rel_dir}/{ROOT_FILE}"), size: written, sha256: digest(hash) },
            compression: Compression::Zstd,
            image_size: src.root_size,
            image_sha256,
            frames: Some(frames),
        };
        let vmlinuz = small(VMLINUZ_FILE, &src.vmlinuz)?;
        let initrd = small(INITRD_FILE, &src.initrd)?;
        sync_dir(dir.path());
        Ok(Staged { dir, root, vmlinuz, initrd, compress_time })
    }

    /// Renames the directory to `to`.
    fn install(&self, to: &Path) -> anyhow::Result<()> {
        std::fs::rename(self.dir.path(), to).with_context(|| format!("renaming into {}", to.display()))?;
        if let Some(parent) = to.parent() {
            sync_dir(parent);
        }
        Ok(())
    }
}

/// Which part of a release differs, ignoring how the root is compressed and the rollout.
fn differs(a: &Release, b: &Release) -> Option<&'static str> {
    if a.root.image_size != b.root.image_size || a.root.image_sha256 != b.root.image_sha256 {
        Some("the root image")
    } else if (a.vmlinuz.size, a.vmlinuz.sha256) != (b.vmlinuz.size, b.vmlinuz.sha256) {
        Some("the kernel")
    } else if (a.initrd.size, a.initrd.sha256) != (b.initrd.size, b.initrd.sha256) {
        Some("the initramfs")
    } else if a.cmdline != b.cmdline {
        Some("the kernel command line")
    } else {
        None
    }
}

pub(crate) fn artifacts_of(r: &Release) -> Vec<&Artifact> {
    [&r.root.file, &r.vmlinuz, &r.initrd].into_iter().chain(r.root.frames.as_ref()).collect()
}

/// Whether the file at `path` has `size` bytes hashing to `sha256`.
fn file_matches(path: &Path, size: u64, sha256: &Digest) -> anyhow::Result<bool> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if f.metadata()?.len() != size {
        return Ok(false);
    }
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(digest(h) == *sha256)
}

/// The repository's files of a release already in the index must still be what it announces.
fn check_files(repo: &Path, r: &Release) -> anyhow::Result<()> {
    for a in artifacts_of(r) {
        let p = repo.join(&a.path);
        if !file_matches(&p, a.size, &a.sha256)? {
            bail!(
                "{}: missing or not the {} bytes with SHA-256 {} that the index announces: the repository is \
                 damaged (restore the file)",
                p.display(),
                a.size,
                a.sha256
            );
        }
    }
    Ok(())
}

/// Whether the repository's files at `new`'s paths are exactly `new`'s.
fn same_files(new: &Release, repo: &Path) -> anyhow::Result<bool> {
    for a in artifacts_of(new) {
        if !file_matches(&repo.join(&a.path), a.size, &a.sha256)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether any channel's index names a file under `rel_dir` (indexes that do not parse count:
/// their text is searched).
fn referenced(repo: &Path, rel_dir: &str) -> anyhow::Result<bool> {
    let channels = repo.join("channels");
    let needle = format!("\"{rel_dir}/");
    for e in std::fs::read_dir(&channels).with_context(|| format!("reading {}", channels.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            if text.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// One publish at a time per repository: an exclusive lock on its directory.
pub(crate) fn lock_repo(repo: &Path) -> anyhow::Result<File> {
    let dir = File::open(repo).with_context(|| format!("opening {}", repo.display()))?;
    match rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(dir),
        Err(rustix::io::Errno::WOULDBLOCK) => bail!("{}: another berth publish is writing to it", repo.display()),
        Err(e) => Err(io::Error::from(e)).with_context(|| format!("locking {}", repo.display())),
    }
}

/// Temporary files of a publish that was killed: only a publish (holding the lock) makes them.
fn remove_stale_temporaries(repo: &Path, channel: &str) {
    let dirs = [(repo.join("releases"), ".publish-".to_string()), (repo.join("channels"), format!(".{channel}.json."))];
    for (dir, prefix) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed (mode 0644).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    sync_dir(dir);
    Ok(())
}

/// Signs and writes the index: the signature file with the old and new signatures, the
/// index, then the signature file with the new ones alone (see the module documentation).
fn write_index(
    index: &Index,
    sign: &dyn Fn(&[u8]) -> Signatures,
    signed_by: &[String],
    index_file: &Path,
    sig_file: &Path,
) -> anyhow::Result<()> {
    let bytes = index.to_bytes();
    let sigs = sign(&bytes);
    let sig_bytes = sigs.to_bytes();
    // What an agent will check, checked here first.
    let mut distinct = signed_by.to_vec();
    distinct.sort();
    distinct.dedup();
    let trusted = TrustedKeys::new(&distinct, distinct.len() as u32).map_err(|e| anyhow!("the signing keys: {e}"))?;
    berth_release::accept(&bytes, &sig_bytes, &trusted, &index.channel, index.issued, None)
        .map_err(|e| anyhow!("the new index does not verify: {e}"))?;

    let old_sig = std::fs::read(sig_file).ok();
    let carried: Vec<SignatureEntry> = old_sig
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Signatures>(b).ok())
        .map(|s| s.signatures.into_iter().filter(|e| !sigs.signatures.contains(e)).collect())
        .unwrap_or_default();
    if std::fs::metadata(index_file).is_ok() && !carried.is_empty() {
        let mut both = sigs.clone();
        both.signatures.extend(carried);
        write_atomic(sig_file, &both.to_bytes())?;
    }
    if let Err(e) = write_atomic(index_file, &bytes) {
        if let Some(old) = old_sig {
            let _ = write_atomic(sig_file, &old);
        }
        return Err(e);
    }
    write_atomic(sig_file, &sig_bytes)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
