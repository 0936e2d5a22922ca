//! AWS: a raw disk (the `aws` artifact, a whole number of GiB) to an EBS snapshot through the EBS
//! direct APIs, then to an AMI through EC2 `RegisterImage`; requests signed with SigV4
//! ([`sigv4`]), credentials found as the AWS CLI finds them ([`credentials`]).
//!
//! The flow ([`upload`]), each step safe to repeat:
//!
//! 1. The file is read once (holes passed over unread) for the SHA-256 of each 512 KiB block that
//!    is not all zeros; together they are the image's content hash, which names the snapshot
//!    (tag `berth:content-sha256`) and derives `StartSnapshot`'s `ClientToken`.
//! 2. An AMI of that name already there (`DescribeImages`, owner self) is the answer: nothing
//!    more is sent or registered.
//! 3. A completed snapshot tagged with the same content hash is reused; otherwise
//!    `StartSnapshot` (the same `ClientToken` as an interrupted run, so EBS answers with that
//!    run's pending snapshot), every data block `PutSnapshotBlock` (many in flight, zero blocks
//!    skipped), `CompleteSnapshot` with the block count and the linear checksum, then
//!    `DescribeSnapshots` until it is `completed`.
//! 4. `RegisterImage` (x86_64, UEFI, ENA, gp3 root, IMDSv2 required, tagged). A duplicate name
//!    (a lost answer retried, another run) finds the image registered instead.

pub mod credentials;
pub mod ebs;
pub mod ec2;
pub mod s3;
pub mod sigv4;
pub mod xml;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use berth_http::{Client, Reply};
use sha2::{Digest, Sha256};

use self::credentials::Credentials;
use self::sigv4::{Payload, Signer};
use crate::{Error, Progress};

/// The EBS direct APIs' block: PutSnapshotBlock's only valid `DataLength`.
pub const BLOCK: u64 = 512 << 10;

/// EBS snapshots are whole GiB.
pub const GIB: u64 = 1 << 30;

/// The largest snapshot `StartSnapshot` starts (GiB).
pub const MAX_GIB: u64 = 65536;

/// The tag naming a snapshot's and an image's content (the image's content hash, hex).
pub const CONTENT_TAG: &str = "berth:content-sha256";

/// Blocks in flight unless told.
pub const DEFAULT_JOBS: usize = 32;

/// Where the two APIs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The EBS direct APIs (`https://ebs.REGION.amazonaws.com`).
    pub ebs: String,
    /// EC2 (`https://ec2.REGION.amazonaws.com`).
    pub ec2: String,
}

impl Endpoints {
    /// AWS's own endpoints for `region`.
    pub fn for_region(region: &str) -> Endpoints {
        Endpoints {
            ebs: format!("https://ebs.{region}.amazonaws.com"),
            ec2: format!("https://ec2.{region}.amazonaws.com"),
        }
    }

    /// Both APIs at `url` (an emulator serving both on one port, a proxy).
    pub fn both_at(url: &str) -> Endpoints {
        let url = url.trim_end_matches('/').to_string();
        Endpoints { ebs: url.clone(), ec2: url }
    }
}

/// What to upload and how.
pub struct Upload<'a> {
    /// The raw disk (`NAME.aws.raw`).
    pub file: &'a Path,
    /// The AMI's name (3–128 characters: letters, digits, `()[] ./-'@_`).
    pub name: &'a str,
    /// The AMI's and the snapshot's description.
    pub description: &'a str,
    /// The region signed for.
    pub region: &'a str,
    /// Where the APIs are.
    pub endpoints: Endpoints,
    /// Whose account.
    pub credentials: &'a Credentials,
    /// Blocks in flight.
    pub jobs: usize,
    /// How often `DescribeSnapshots` is asked while the snapshot completes.
    pub poll_interval: Duration,
    /// How long the snapshot may take to complete after `CompleteSnapshot`.
    pub poll_timeout: Duration,
}

impl<'a> Upload<'a> {
    /// An upload of `file` as AMI `name` with the defaults: 32 blocks in flight, polled every
    /// 5 s for at most an hour.
    pub fn new(
        file: &'a Path,
        name: &'a str,
        description: &'a str,
        region: &'a str,
        endpoints: Endpoints,
        credentials: &'a Credentials,
    ) -> Upload<'a> {
        Upload {
            file,
            name,
            description,
            region,
            endpoints,
            credentials,
            jobs: DEFAULT_JOBS,
            poll_interval: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(3600),
        }
    }
}

/// What an upload ended with (`berth upload aws --json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// The EBS snapshot.
    pub snapshot_id: String,
    /// The AMI.
    pub image_id: String,
    /// The region.
    pub region: String,
    /// The AMI's name.
    pub name: String,
    /// Blocks sent by this run (0 when a snapshot or an image was reused).
    pub blocks_sent: u64,
    /// Blocks of the volume not sent because they hold only zeros (holes included).
    pub zero_blocks_skipped: u64,
    /// Whether an existing image or snapshot was reused rather than made by this run.
    pub reused: bool,
}

/// The image as read in step 1: its data blocks' digests and the content hash over them.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The file's size.
    pub len: u64,
    /// The SHA-256 of each block that is not all zeros, by block index.
    pub digests: BTreeMap<u64, [u8; 32]>,
    /// SHA-256 over the size and every (index, digest): hex.
    pub content: String,
}

impl Scan {
    /// Blocks of the volume.
    pub fn blocks(&self) -> u64 {
        self.len / BLOCK
    }

    /// `CompleteSnapshot`'s `LINEAR` aggregate: the SHA-256 of the blocks' raw digests,
    /// concatenated by ascending index, base64.
    pub fn linear_checksum(&self) -> String {
        let mut h = Sha256::new();
        for d in self.digests.values() {
            h.update(d);
        }
        b64(&h.finalize())
    }

    /// `StartSnapshot`'s `ClientToken` for an image called `name`: the same for the same content
    /// and name, so that a re-run gets the interrupted run's pending snapshot back.
    pub fn client_token(&self, name: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"berth upload aws\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(self.content.as_bytes());
        hex(&h.finalize())
    }
}

/// Checks that `file` can be an EBS snapshot: a whole number of GiB, at most 64 TiB. Returns
/// its size in GiB.
pub fn volume_gib(file: &Path) -> Result<u64, Error> {
    let len = std::fs::metadata(file).map_err(|e| Error::io(file, e))?.len();
    if len == 0 || !len.is_multiple_of(GIB) {
        return Err(Error::Invalid(format!(
            "{}: {len} bytes is not a whole number of GiB (EBS snapshots are whole GiB): give the `aws` artifact, \
             NAME.aws.raw, that berth build --platform aws writes",
            file.display()
        )));
    }
    let gib = len / GIB;
    if gib > MAX_GIB {
        return Err(Error::Invalid(format!("{}: {gib} GiB is more than EBS's {MAX_GIB} GiB", file.display())));
    }
    Ok(gib)
}

/// Checks an AMI name as EC2 does: 3–128 characters, letters, digits and `()[] ./-'@_`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c);
    if !(3..=128).contains(&name.len()) || !name.chars().all(ok_char) {
        return Err(Error::Invalid(format!(
            "AMI name {name:?}: 3 to 128 characters, letters, digits and ( ) [ ] space . / - ' @ _ only"
        )));
    }
    Ok(())
}

/// Step 1: reads `file`'s data (holes passed over) and hashes each 512 KiB block that is not all
/// zeros. Tells `progress` as it goes.
pub fn scan(file: &Path, progress: &dyn Progress) -> Result<Scan, Error> {
    let mut runs = crate::blocks::DataRuns::open(file, BLOCK, BLOCK)?;
    let len = runs.len();
    progress.start(&format!("reading {}", file.display()), len);
    let mut digests = BTreeMap::new();
    let mut told = 0;
    while let Some(run) = runs.next_run()? {
        digests.insert(run.offset / BLOCK, Sha256::digest(&run.data).into());
        progress.advance(runs.position() - told);
        told = runs.position();
    }
    progress.advance(len - told);
    progress.finish();
    let mut h = Sha256::new();
    h.update(len.to_be_bytes());
    for (index, digest) in &digests {
        h.update(index.to_be_bytes());
        h.update(digest);
    }
    Ok(Scan { len, digests, content: hex(&h.finalize()) })
}

/// Uploads `up.file` and registers it as AMI `up.name` (see the module's doc), or finds that
/// this was done already.
pub fn upload(client: &Client, up: &Upload<'_>, progress: &dyn Progress) -> Result<Outcome, Error> {
    check_name(up.name)?;
    // StartSnapshot's and RegisterImage's limit.
    if up.description.len() > 255 {
        return Err(Error::Invalid(format!(
            "the description is {} bytes; EC2 takes at most 255",
            up.description.len()
        )));
    }
    let gib = volume_gib(up.file)?;
    let ec2 = ec2::Ec2::new(client, &up.endpoints.ec2, up.region, up.credentials, progress);
    let ebs = ebs::Ebs::new(client, &up.endpoints.ebs, up.region, up.credentials, progress);

    let scan = scan(up.file, progress)?;
    let skipped = scan.blocks() - scan.digests.len() as u64;
    let outcome = |snapshot_id: String, image_id: String, blocks_sent: u64, reused: bool| Outcome {
        snapshot_id,
        image_id,
        region: up.region.to_string(),
        name: up.name.to_string(),
        blocks_sent,
        zero_blocks_skipped: skipped,
        reused,
    };

    if let Some(image) = ec2.image_named(up.name)? {
        return existing_image(image, &scan, up).map(|(snap, ami)| outcome(snap, ami, 0, true));
    }

    let (snapshot_id, blocks_sent) = match ec2.completed_snapshot_with(CONTENT_TAG, &scan.content)? {
        Some(id) => {
            progress.note(&format!("snapshot {id} of this image is there already ({CONTENT_TAG} {})", scan.content));
            (id, 0)
        }
        None => {
            let id = upload_snapshot(&ebs, up, gib, &scan, progress)?;
            ec2.wait_completed(&id, up.poll_interval, up.poll_timeout)?;
            (id, scan.digests.len() as u64)
        }
    };

    let image_id = match ec2.register_image(up.name, up.description, &snapshot_id, &scan.content) {
        Ok(id) => id,
        // The name is taken after all: a RegisterImage whose answer was lost and retried, or
        // another run. The image with that name is the answer if it is this content's.
        Err(e) if is_duplicate_name(&e) => match ec2.image_named(up.name)? {
            Some(image) => {
                let (snap, ami) = existing_image(image, &scan, up)?;
                return Ok(outcome(snap, ami, blocks_sent, true));
            }
            None => return Err(kept_snapshot(e, &snapshot_id)),
        },
        Err(e) => return Err(kept_snapshot(e, &snapshot_id)),
    };
    progress.note(&format!("registered {image_id} ({}) from snapshot {snapshot_id}", up.name));
    Ok(outcome(snapshot_id, image_id, blocks_sent, blocks_sent == 0))
}

/// An AMI of the name asked for exists: its snapshot and id, unless it holds other content.
fn existing_image(image: ec2::Image, scan: &Scan, up: &Upload<'_>) -> Result<(String, String), Error> {
    match image.tag(CONTENT_TAG) {
        Some(content) if content != scan.content => Err(Error::Invalid(format!(
            "an AMI named {:?} exists already ({}) with other content ({CONTENT_TAG} {content}, this file's is {}): \
             choose another --name, or deregister {} first",
            up.name, image.image_id, scan.content, image.image_id
        ))),
        _ => Ok((image.root_snapshot_id.unwrap_or_default(), image.image_id)),
    }
}

fn is_duplicate_name(e: &Error) -> bool {
    matches!(e, Error::Api { message, .. } if message.starts_with("InvalidAMIName.Duplicate"))
}

/// A registration that failed after the snapshot completed: the error says the snapshot is
/// there, so that the user re-runs (which reuses it) or deletes it.
fn kept_snapshot(e: Error, snapshot_id: &str) -> Error {
    let note = format!(
        "no AMI registered; snapshot {snapshot_id} is complete and kept: run again to register it, or delete it"
    );
    match e {
        Error::Credentials { source_name, reason } => {
            Error::Credentials { source_name, reason: format!("{reason} ({note})") }
        }
        e => Error::Operation {
            what: format!("RegisterImage after snapshot {snapshot_id}"),
            message: format!("{e}; {note}"),
        },
    }
}

/// Step 3: StartSnapshot, every data block, CompleteSnapshot. Returns the snapshot's id.
fn upload_snapshot(
    ebs: &ebs::Ebs<'_>,
    up: &Upload<'_>,
    gib: u64,
    scan: &Scan,
    progress: &dyn Progress,
) -> Result<String, Error> {
    let tags = vec![("Name".to_string(), up.name.to_string()), (CONTENT_TAG.to_string(), scan.content.clone())];
    let started = ebs.start_snapshot(gib, up.description, &tags, &scan.client_token(up.name))?;
    let id = started.snapshot_id.clone();
    match started.status.as_str() {
        "pending" => {}
        // The token's snapshot was completed by an earlier run whose end was lost.
        "completed" => {
            progress.note(&format!("snapshot {id} of this image was completed by an earlier run"));
            return Ok(id);
        }
        other => {
            return Err(Error::Operation {
                what: format!("snapshot {id}"),
                message: format!(
                    "StartSnapshot answered status {other:?} for this image's client token; delete it and run again"
                ),
            });
        }
    }
    if started.block_size != Some(BLOCK) {
        progress.note(&format!(
            "StartSnapshot answered BlockSize {} (EBS's is {BLOCK}); sending {BLOCK}-byte blocks, the only DataLength PutSnapshotBlock takes",
            started.block_size.map_or("none".to_string(), |b| b.to_string())
        ));
    }
    progress.note(&format!("snapshot {id}: {} data blocks of {} to send", scan.digests.len(), scan.blocks()));
    send_blocks(ebs, &id, up, scan, progress)?;
    let status = ebs.complete_snapshot(&id, scan.digests.len() as u64, &scan.linear_checksum())?;
    if status == "error" {
        return Err(Error::Operation {
            what: format!("snapshot {id}"),
            message: "CompleteSnapshot answered status error".into(),
        });
    }
    Ok(id)
}

/// PutSnapshotBlock for every data block, `up.jobs` at a time. Each block is read again and
/// checked against the scan's digest: a file changed since is refused, not half-uploaded.
fn send_blocks(
    ebs: &ebs::Ebs<'_>,
    id: &str,
    up: &Upload<'_>,
    scan: &Scan,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let file = File::open(up.file).map_err(|e| Error::io(up.file, e))?;
    let total = scan.digests.len() as u64;
    progress.start("EBS snapshot blocks", scan.len);
    // Zero blocks count as done at once, so that the bar ends at 100%.
    progress.advance((scan.blocks() - total) * BLOCK);
    let sent = AtomicU64::new(0);
    let work = |(index, digest): (u64, [u8; 32])| -> Result<(), Error> {
        let mut block = vec![0; BLOCK as usize];
        file.read_exact_at(&mut block, index * BLOCK).map_err(|e| Error::io(up.file, e))?;
        let now: [u8; 32] = Sha256::digest(&block).into();
        if now != digest {
            return Err(changed(up.file, index));
        }
        let done = sent.fetch_add(1, Ordering::Relaxed);
        ebs.put_block(id, index, &block, &b64(&digest), done * 100 / total.max(1))?;
        progress.advance(BLOCK);
        Ok(())
    };
    let items = scan.digests.iter().map(|(i, d)| Ok::<_, Error>((*i, *d)));
    crate::parallel::for_each(items, up.jobs, work)?;
    progress.finish();
    Ok(())
}

fn changed(file: &Path, index: u64) -> Error {
    Error::Invalid(format!(
        "{}: block {index} (offset {}) changed while it was being uploaded; nothing was completed, run again",
        file.display(),
        index * BLOCK
    ))
}

/// Error codes that mean the credentials (or the identity they prove) were refused.
const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
];

/// What an API's error answer says: its code and message.
pub(crate) struct Said {
    pub code: String,
    pub message: String,
}

/// The error for an answer `call` did not want: [`Error::Credentials`] when the code says the
/// credentials were refused, else [`Error::Api`] with `CODE: message`.
pub(crate) fn failure(call: &str, url: &str, reply: &Reply, said: Said, credentials: &Credentials) -> Error {
    let credential_status = matches!(reply.status, 401 | 403) && said.code.is_empty();
    if CREDENTIAL_CODES.contains(&said.code.as_str()) || credential_status {
        let reason = match (said.code.is_empty(), said.message.is_empty()) {
            (true, _) => format!("{call} answered {}: {}", reply.status, said.message),
            (false, true) => said.code,
            (false, false) => format!("{}: {}", said.code, said.message),
        };
        return Error::Credentials {
            source_name: credentials.source.clone(),
            reason: crate::api::one_line(&reason, 300),
        };
    }
    let message = match (said.code.is_empty(), said.message.is_empty()) {
        (true, true) => crate::api::one_line(&reply.text(), 300),
        (true, false) => said.message,
        (false, true) => said.code,
        (false, false) => format!("{}: {}", said.code, said.message),
    };
    crate::api::api_error(call, url, reply, Some(crate::api::one_line(&message, 300)))
}

/// One AWS API endpoint as [`ebs::Ebs`] and [`ec2::Ec2`] call it: where, which SigV4 service
/// and region, as whom.
pub(crate) struct Service<'a> {
    pub client: &'a Client,
    /// Without a trailing `/`.
    pub endpoint: String,
    pub region: &'a str,
    /// SigV4's service name (`ebs`, `ec2`).
    pub service: &'static str,
    pub credentials: &'a Credentials,
    pub progress: &'a dyn Progress,
}

impl<'a> Service<'a> {
    pub fn new(
        client: &'a Client,
        endpoint: &str,
        region: &'a str,
        service: &'static str,
        credentials: &'a Credentials,
        progress: &'a dyn Progress,
    ) -> Service<'a> {
        Service { client, endpoint: endpoint.trim_end_matches('/').to_string(), region, service, credentials, progress }
    }

    /// `method url` with `headers` and `body`, signed (the body too unless `unsigned`) and sent
    /// through the one retry policy; the reply whatever its status.
    pub fn send(
        &self,
        call: &str,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        unsigned: bool,
    ) -> Result<Reply, Error> {
        let signer = Signer { credentials: self.credentials, region: self.region, service: self.service };
        let payload = || if unsigned { Payload::Unsigned } else { Payload::Bytes(body) };
        let sign = || signer.sign(method, url, headers, payload(), SystemTime::now());
        // What cannot be signed (a malformed endpoint) is not sent at all.
        sign()?;
        crate::api::send(self.client, call, url, self.progress, || {
            let mut c = self.client.call(method, url);
            // Signed anew for each attempt, so that its date is fresh.
            for (n, v) in headers.iter().chain(sign().unwrap_or_default().iter()) {
                c = c.header(n, v);
            }
            if body.is_empty() { c } else { c.body(body.to_vec()) }
        })
    }
}

/// Base64 (standard, padded), as EBS's checksums are.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits `interval` at most until `deadline`; false when the deadline has passed.
pub(crate) fn wait_until(deadline: Instant, interval: Duration) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    std::thread::sleep(interval.min(deadline - now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sizes_are_checked_before_anything_is_sent() {
        assert!(check_name("berth-1.2 (test)").is_ok());
        assert!(check_name("ab").is_err());
        assert!(check_name("a*b").is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.aws.raw");
        std::fs::File::create(&f).unwrap().set_len(GIB + 512).unwrap();
        let e = volume_gib(&f).unwrap_err().to_string();
        assert!(e.contains("x.aws.raw") && e.contains("not a whole number of GiB"), "{e}");
        std::fs::File::create(&f).unwrap().set_len(2 * GIB).unwrap();
        assert_eq!(volume_gib(&f).unwrap(), 2);
    }

    #[test]
    fn the_scan_hashes_data_blocks_and_the_linear_checksum_is_over_raw_digests() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.aws.raw");
        let file = std::fs::File::create(&f).unwrap();
        file.set_len(GIB).unwrap();
        file.write_all_at(&[7; 10], 5 * BLOCK + 3).unwrap();
        file.write_all_at(&[9; 10], 1000 * BLOCK).unwrap();
        let s = scan(&f, &crate::Silent).unwrap();
        assert_eq!(s.digests.keys().copied().collect::<Vec<_>>(), [5, 1000]);
        let mut block = vec![0; BLOCK as usize];
        block[3..13].fill(7);
        assert_eq!(s.digests[&5], <[u8; 32]>::from(Sha256::digest(&block)));
        let mut h = Sha256::new();
        h.update(s.digests[&5]);
        h.update(s.digests[&1000]);
        assert_eq!(s.linear_checksum(), b64(&h.finalize()));
        assert_eq!(s.client_token("a").len(), 64);
        assert_ne!(s.client_token("a"), s.client_token("b"));
        file.write_all_at(&[1], 0).unwrap();
        assert_ne!(scan(&f, &crate::Silent).unwrap().content, s.content);
    }
}
