//! `berth upload aws` against moto's server (EBS direct + EC2 on one port) and against the strict
//! in-tree fake (tests/support/ebs_fake.rs) for what moto does not check: block size, checksums,
//! the changed-block count and linear aggregate, SigV4, RegisterImage's parameters, duplicate
//! names; faults (500, 429, dropped answers), interrupted runs and refused credentials.

#[path = "support/ebs_fake.rs"]
mod ebs_fake;
mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_cloud::aws::credentials::Credentials;
use berth_cloud::aws::ebs::Ebs;
use berth_cloud::aws::sigv4::{Payload, Signer};
use berth_cloud::aws::{self, BLOCK, Endpoints, GIB, Upload};
use berth_cloud::{Error, Silent};
use berth_http::{Client, Retry};
use ebs_fake::{EbsFake, Fault};
use sha2::{Digest, Sha256};

fn client() -> Client {
    Client::builder("berth-test").retry(Retry::new().attempts(4).backoff(Duration::from_millis(10))).build()
}

fn creds(secret: &str) -> Credentials {
    Credentials {
        access_key_id: ebs_fake::ACCESS_KEY.into(),
        secret_access_key: secret.into(),
        session_token: None,
        source: "test keys [fake]".into(),
    }
}

/// A sparse image of `gib` GiB with data in scattered blocks: the first, the last, a few bytes in
/// one, a whole block, one straddling two blocks, and a block written with zeros (skipped).
/// Returns the indices of the blocks holding data.
fn image(dir: &Path, gib: u64) -> (PathBuf, Vec<u64>) {
    let path = dir.join("test.aws.raw");
    let f = File::create(&path).unwrap();
    f.set_len(gib * GIB).unwrap();
    let last = gib * GIB / BLOCK - 1;
    f.write_all_at(b"EFI PART", 512).unwrap();
    f.write_all_at(&[0xab; 3], 77 * BLOCK + 1000).unwrap();
    let pattern: Vec<u8> = (0..BLOCK as usize).map(|i| (i * 7 % 251) as u8).collect();
    f.write_all_at(&pattern, 300 * BLOCK).unwrap();
    f.write_all_at(&[0x5a; 4096], 901 * BLOCK - 2048).unwrap();
    f.write_all_at(&vec![0; BLOCK as usize], 1500 * BLOCK).unwrap();
    f.write_all_at(b"backup GPT", (last + 1) * BLOCK - 512).unwrap();
    (path, vec![0, 77, 300, 900, 901, last])
}

fn block_of(path: &Path, index: u64) -> Vec<u8> {
    let mut b = vec![0; BLOCK as usize];
    File::open(path).unwrap().read_exact_at(&mut b, index * BLOCK).unwrap();
    b
}

fn upload_to<'a>(fake_url: &str, path: &'a Path, name: &'a str, creds: &'a Credentials) -> Upload<'a> {
    let mut up = Upload::new(path, name, "Berth test image", ebs_fake::REGION, Endpoints::both_at(fake_url), creds);
    up.jobs = 8;
    up.poll_interval = Duration::from_millis(20);
    up.poll_timeout = Duration::from_secs(20);
    up
}

#[test]
fn an_image_uploads_to_the_strict_fake_and_reads_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data_blocks) = image(dir.path(), 1);
    let fake = EbsFake::start();
    let creds = creds(ebs_fake::SECRET);
    let http = client();
    let out = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-test-1", &creds), &Silent).unwrap();
    assert_eq!(fake.refusals(), Vec::<String>::new());
    assert_eq!(out.blocks_sent, data_blocks.len() as u64);
    assert_eq!(out.zero_blocks_skipped, 2048 - data_blocks.len() as u64);
    assert!(!out.reused);
    assert_eq!((out.region.as_str(), out.name.as_str()), (ebs_fake::REGION, "berth-test-1"));

    let snaps = fake.snapshots();
    assert_eq!(snaps.len(), 1);
    let snap = &snaps[0];
    assert_eq!((snap.id.as_str(), snap.volume_size, snap.status.as_str()), (out.snapshot_id.as_str(), 1, "completed"));
    assert_eq!(snap.blocks.keys().copied().collect::<Vec<_>>(), data_blocks);
    for (i, data) in &snap.blocks {
        assert!(*data == block_of(&path, *i), "block {i} differs");
    }
    assert!(snap.tags.iter().any(|(k, _)| k == aws::CONTENT_TAG));

    // Read back through the API, block by block, as a user would verify.
    let ebs = Ebs::new(&http, &fake.url(), ebs_fake::REGION, &creds, &Silent);
    let (listed, block_size) = ebs.list_blocks(&out.snapshot_id).unwrap();
    assert_eq!(block_size, Some(BLOCK));
    assert_eq!(listed.iter().map(|b| b.index).collect::<Vec<_>>(), data_blocks);
    for b in &listed {
        let (data, checksum) = ebs.get_block(&out.snapshot_id, b).unwrap();
        assert!(data == block_of(&path, b.index), "block {} read back differs", b.index);
        assert_eq!(checksum.unwrap(), base64_sha(&data));
    }

    let images = fake.images();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!((img.id.as_str(), img.snapshot_id.as_str()), (out.image_id.as_str(), out.snapshot_id.as_str()));
    let p = |k: &str| img.params.get(k).map(String::as_str);
    assert_eq!(p("Architecture"), Some("x86_64"));
    assert_eq!(p("BootMode"), Some("uefi"));
    assert_eq!(p("ImdsSupport"), Some("v2.0"));
    assert_eq!(p("EnaSupport"), Some("true"));
    assert_eq!(p("RootDeviceName"), Some("/dev/xvda"));
    assert_eq!(p("BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp3"));
    assert!(img.tags.contains(&("Name".into(), "berth-test-1".into())));

    // Run again: the image is found, nothing is sent or registered.
    let calls_before = fake.calls("PutSnapshotBlock");
    let again = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-test-1", &creds), &Silent).unwrap();
    assert!(again.reused);
    assert_eq!(
        (again.image_id.as_str(), again.snapshot_id.as_str(), again.blocks_sent),
        (out.image_id.as_str(), out.snapshot_id.as_str(), 0)
    );
    assert_eq!(fake.calls("PutSnapshotBlock"), calls_before);
    assert_eq!(fake.calls("StartSnapshot"), 1);
    assert_eq!(fake.images().len(), 1);
}

fn base64_sha(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

#[test]
fn throttling_server_errors_and_dropped_answers_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data_blocks) = image(dir.path(), 1);
    let fake = EbsFake::start();
    fake.fault("StartSnapshot", Fault::Status(503, "ServiceUnavailable".into()), 1);
    fake.fault("PutSnapshotBlock", Fault::Status(500, "InternalServerException".into()), 2);
    fake.fault("PutSnapshotBlock", Fault::Status(429, "ThrottlingException".into()), 2);
    fake.fault("PutSnapshotBlock", Fault::Drop, 2);
    fake.fault("CompleteSnapshot", Fault::Drop, 1);
    fake.fault("DescribeSnapshots", Fault::Status(503, "Unavailable".into()), 1);
    // RegisterImage done but its answer lost: the retry meets the duplicate name and finds it.
    fake.fault("RegisterImage", Fault::Drop, 1);
    let creds = creds(ebs_fake::SECRET);
    let out = aws::upload(&client(), &upload_to(&fake.url(), &path, "berth-faults", &creds), &Silent).unwrap();
    assert_eq!(fake.images().len(), 1, "one image, however often RegisterImage was tried");
    assert_eq!(fake.calls("RegisterImage"), 2);
    assert_eq!(out.image_id, fake.images()[0].id);
    let snaps = fake.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].blocks.keys().copied().collect::<Vec<_>>(), data_blocks);
    for (i, data) in &snaps[0].blocks {
        assert!(*data == block_of(&path, *i), "block {i} differs");
    }
    assert_eq!(fake.calls("PutSnapshotBlock"), data_blocks.len() + 6, "every fault cost one more call");
    let refusals = fake.refusals();
    assert_eq!(refusals.iter().filter(|r| r.contains("injected")).count(), 6, "{refusals:?}");
    // Nothing else was refused but the retried RegisterImage's duplicate name (the CompleteSnapshot
    // retried after its lost answer was accepted again).
    assert_eq!(refusals.len(), 7, "{refusals:?}");
    assert!(refusals[6].starts_with("RegisterImage: InvalidAMIName.Duplicate"), "{refusals:?}");
}

#[test]
fn a_run_interrupted_at_completion_or_registration_finishes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data_blocks) = image(dir.path(), 1);
    let fake = EbsFake::start();
    let creds = creds(ebs_fake::SECRET);
    let http = client();

    // CompleteSnapshot fails every time: the run gives up, nothing registered.
    fake.fault("CompleteSnapshot", Fault::Status(500, "InternalServerException".into()), 100);
    let e = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-rerun", &creds), &Silent).unwrap_err();
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    assert!(e.to_string().contains("CompleteSnapshot"), "{e}");
    assert!(fake.images().is_empty());
    let first = fake.snapshots()[0].id.clone();
    assert_eq!(fake.snapshots()[0].status, "pending");

    // Again: the same pending snapshot (the ClientToken), finished and registered.
    fake.clear_faults();
    let out = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-rerun", &creds), &Silent).unwrap();
    assert_eq!(out.snapshot_id, first);
    assert_eq!(fake.snapshots().len(), 1);
    assert_eq!(fake.images().len(), 1);
    assert_eq!(out.blocks_sent, data_blocks.len() as u64);

    // RegisterImage fails for another name: the error names the kept snapshot.
    fake.fault("RegisterImage", Fault::Status(503, "Unavailable".into()), 100);
    let e = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-rerun-2", &creds), &Silent).unwrap_err();
    let line = e.to_string();
    assert!(line.contains(&first) && line.contains("no AMI registered") && !line.contains('\n'), "{line}");
    assert_eq!(fake.images().len(), 1);
    // Again: the completed snapshot of this content is reused; nothing is sent.
    fake.clear_faults();
    let puts = fake.calls("PutSnapshotBlock");
    let out2 = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-rerun-2", &creds), &Silent).unwrap();
    assert_eq!((out2.snapshot_id.as_str(), out2.blocks_sent, out2.reused), (first.as_str(), 0, true));
    assert_eq!(fake.calls("PutSnapshotBlock"), puts);
    assert_eq!(fake.images().iter().filter(|i| i.name == "berth-rerun-2").count(), 1);
    assert_eq!(fake.snapshots().len(), 1);

    // Another file under a taken name is refused, not silently answered with the old image.
    File::options().write(true).open(&path).unwrap().write_all_at(b"changed", 5 * BLOCK).unwrap();
    let e = aws::upload(&http, &upload_to(&fake.url(), &path, "berth-rerun", &creds), &Silent).unwrap_err();
    assert!(e.to_string().contains("exists already") && e.to_string().contains("other content"), "{e}");
    assert_eq!(fake.images().len(), 2);
}

#[test]
fn refused_credentials_are_one_line_naming_their_source_and_nothing_is_registered() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = image(dir.path(), 1);
    let fake = EbsFake::start();
    let wrong = creds("not the secret");
    let e = aws::upload(&client(), &upload_to(&fake.url(), &path, "berth-creds", &wrong), &Silent).unwrap_err();
    let Error::Credentials { source_name, reason } = &e else { panic!("{e}") };
    assert_eq!(source_name, "test keys [fake]");
    assert!(reason.starts_with("SignatureDoesNotMatch: "), "{reason}");
    assert!(!e.to_string().contains('\n'));

    let mut expired = creds(ebs_fake::SECRET);
    expired.session_token = Some("FwoGZXIvYXdzEXPIRED".into());
    fake.expect_session_token("FwoGZXIvYXdzEXPIRED", true);
    let e = aws::upload(&client(), &upload_to(&fake.url(), &path, "berth-creds", &expired), &Silent).unwrap_err();
    let Error::Credentials { reason, .. } = &e else { panic!("{e}") };
    assert!(reason.starts_with("ExpiredToken: "), "{reason}");
    assert!(e.to_string().starts_with("credentials from test keys [fake]: ExpiredToken"), "{e}");
    assert!(fake.images().is_empty() && fake.snapshots().is_empty());
    assert_eq!(fake.calls("RegisterImage"), 0);

    // The same token, not expired, is signed and accepted; an EBS call refused as expired
    // names the source too.
    fake.expect_session_token("FwoGZXIvYXdzEXPIRED", false);
    let http = client();
    let ebs = Ebs::new(&http, &fake.url(), ebs_fake::REGION, &expired, &Silent);
    let started = ebs.start_snapshot(1, "d", &[], "tok").unwrap();
    fake.expect_session_token("FwoGZXIvYXdzEXPIRED", true);
    let e = ebs.complete_snapshot(&started.snapshot_id, 0, "x").unwrap_err();
    assert!(e.to_string().starts_with("credentials from test keys [fake]: ExpiredTokenException: "), "{e}");
}

#[test]
fn a_file_that_is_not_whole_gib_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.aws.raw");
    File::create(&path).unwrap().set_len(GIB + BLOCK).unwrap();
    let fake = EbsFake::start();
    let creds = creds(ebs_fake::SECRET);
    let e = aws::upload(&client(), &upload_to(&fake.url(), &path, "berth-odd", &creds), &Silent).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)) && e.to_string().contains("odd.aws.raw"), "{e}");
    assert!(fake.server.requests().is_empty());
}

/// Sends one signed EBS request as the test builds it.
fn raw(
    fake: &EbsFake,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    sign_all: bool,
) -> (u16, String) {
    let creds = creds(ebs_fake::SECRET);
    let url = format!("{}{path}", fake.url());
    let signer = Signer { credentials: &creds, region: ebs_fake::REGION, service: "ebs" };
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let to_sign: Vec<(String, String)> =
        headers.iter().filter(|(k, _)| sign_all || !k.starts_with("x-amz-checksum")).cloned().collect();
    let added = signer.sign(method, &url, &to_sign, Payload::Unsigned, SystemTime::now()).unwrap();
    let http = client();
    let mut c = http.call(method, &url).body(body);
    for (k, v) in headers.iter().chain(added.iter()) {
        c = c.header(k, v);
    }
    let r = c.send().unwrap();
    (r.status, r.text())
}

#[test]
fn the_fake_refuses_what_ebs_refuses() {
    let fake = EbsFake::start();
    let creds = creds(ebs_fake::SECRET);
    let http = client();
    let ebs = Ebs::new(&http, &fake.url(), ebs_fake::REGION, &creds, &Silent);
    let id = ebs.start_snapshot(1, "d", &[], "strict").unwrap().snapshot_id;
    let block = vec![3u8; BLOCK as usize];
    let sum = base64_sha(&block);
    let put = |index: u64, len: &str, sum: &str, body: Vec<u8>, sign_all: bool| {
        let headers = [
            ("x-amz-checksum", sum.to_string()),
            ("x-amz-checksum-algorithm", "SHA256".to_string()),
            ("x-amz-data-length", len.to_string()),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD".to_string()),
        ];
        raw(&fake, "PUT", &format!("/snapshots/{id}/blocks/{index}"), &headers, body, sign_all)
    };
    // 512 bytes (moto's BlockSize) is not a DataLength EBS takes.
    let (s, t) = put(0, "512", &base64_sha(&block[..512]), block[..512].to_vec(), true);
    assert!(s == 400 && t.contains("524288"), "{s} {t}");
    let (s, t) = put(0, "524288", &base64_sha(b"other"), block.clone(), true);
    assert!(s == 400 && t.contains("checksum"), "{s} {t}");
    let (s, t) = put(0, "524288", &sum, block.clone(), false);
    assert!(s == 403 && t.contains("not signed"), "{s} {t}");
    let (s, t) = put(2048, "524288", &sum, block.clone(), true);
    assert!(s == 400 && t.contains("beyond the volume"), "{s} {t}");
    let (s, _) = put(7, "524288", &sum, block.clone(), true);
    assert_eq!(s, 201);
    // Without the checksum headers at all.
    let headers =
        [("x-amz-data-length", "524288".to_string()), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD".to_string())];
    let (s, t) = raw(&fake, "PUT", &format!("/snapshots/{id}/blocks/8"), &headers, block.clone(), true);
    assert!(s == 400 && t.contains("x-amz-Checksum is required"), "{s} {t}");

    // CompleteSnapshot: a wrong count, then a wrong aggregate, then the right ones.
    let digest: [u8; 32] = Sha256::digest(&block).into();
    let linear = base64_sha(&digest);
    let e = ebs.complete_snapshot(&id, 2, &linear).unwrap_err();
    assert!(e.to_string().contains("ChangedBlocksCount 2"), "{e}");
    let e = ebs.complete_snapshot(&id, 1, &sum).unwrap_err();
    assert!(e.to_string().contains("aggregated checksum"), "{e}");
    assert_eq!(ebs.complete_snapshot(&id, 1, &linear).unwrap(), "pending");
    let (s, t) = put(9, "524288", &sum, block, true);
    assert!(s == 400 && t.contains("not pending"), "{s} {t}");

    // RegisterImage without what Berth's images need.
    let ec2 = berth_cloud::aws::ec2::Ec2::new(&http, &fake.url(), ebs_fake::REGION, &creds, &Silent);
    ec2.wait_completed(&id, Duration::from_millis(10), Duration::from_secs(5)).unwrap();
    let mut params = berth_cloud::aws::ec2::register_params("berth-strict", "d", &id, "c");
    params.retain(|(k, _)| k != "Architecture");
    let e = ec2.call("RegisterImage", &params).unwrap_err();
    assert!(e.to_string().contains("InvalidParameterValue: Architecture"), "{e}");
    let mut params = berth_cloud::aws::ec2::register_params("berth-strict", "d", &id, "c");
    params.iter_mut().filter(|(k, _)| k == "BootMode").for_each(|(_, v)| *v = "legacy-bios".into());
    assert!(ec2.call("RegisterImage", &params).unwrap_err().to_string().contains("BootMode"));
    ec2.register_image("berth-strict", "d", &id, "c").unwrap();
    let e = ec2.register_image("berth-strict", "d", &id, "c").unwrap_err();
    assert!(e.to_string().contains("InvalidAMIName.Duplicate"), "{e}");
    assert_eq!(fake.images().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// moto: the real-world emulator, a second opinion on the flow and the wire format.

/// The form parameters of every recorded EC2 call named `action`.
fn recorded(moto: &support::Emulator, action: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = String::from_utf8(
        client().get_bytes(&format!("{}/moto-api/recorder/download-recording", moto.url), 1 << 30).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for entry in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let entry = entry.unwrap();
        let body = entry["body"].as_str().unwrap_or("");
        let body = if entry["body_encoded"].as_bool() == Some(true) {
            use base64::Engine as _;
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(body).unwrap()).into_owned()
        } else {
            body.to_string()
        };
        let form: std::collections::BTreeMap<String, String> = support::form(&body);
        if form.get("Action").map(String::as_str) == Some(action) {
            out.push(form);
        }
    }
    out
}

#[test]
fn moto_takes_the_upload_and_reads_it_back_block_by_block() {
    // The recorder on: moto keeps only Name and Description of RegisterImage; the recording shows
    // what was sent.
    let moto = support::moto(&["MOTO_ENABLE_RECORDING=True"]);
    let http = client();
    // MOTO_ENABLE_RECORDING records from the start: off until the calls to record.
    let recorder = |what: &str| http.post_json(&format!("{}/moto-api/recorder/{what}", moto.url), &[], "").unwrap().0;
    assert_eq!(recorder("stop-recording"), 200);
    let dir = tempfile::tempdir().unwrap();
    let (path, data_blocks) = image(dir.path(), 1);
    let creds = Credentials {
        access_key_id: "AKIDMOTO".into(),
        secret_access_key: "moto-secret".into(),
        session_token: None,
        source: "test keys [moto]".into(),
    };
    let notes = Notes::default();
    let mut up = Upload::new(&path, "berth-moto", "Berth on moto", "us-east-1", Endpoints::both_at(&moto.url), &creds);
    up.poll_interval = Duration::from_millis(50);
    let out = aws::upload(&http, &up, &notes).unwrap();
    assert_eq!(out.blocks_sent, data_blocks.len() as u64);
    // moto says BlockSize 512; the upload says so and sends 512 KiB blocks all the same.
    assert!(notes.0.lock().unwrap().iter().any(|n| n.contains("BlockSize 512")), "{:?}", notes.0.lock().unwrap());

    // Read back block by block: exactly the data blocks, each equal to the file's.
    let ebs = Ebs::new(&http, &moto.url, "us-east-1", &creds, &Silent);
    let (listed, _) = ebs.list_blocks(&out.snapshot_id).unwrap();
    assert_eq!(listed.iter().map(|b| b.index).collect::<Vec<_>>(), data_blocks);
    for b in &listed {
        let (data, checksum) = ebs.get_block(&out.snapshot_id, b).unwrap();
        assert!(data == block_of(&path, b.index), "block {} read back differs", b.index);
        assert_eq!(checksum.unwrap(), base64_sha(&data), "moto keeps the checksum sent");
    }

    // DescribeImages: the image by its name, with its description (all moto keeps).
    let ec2 = berth_cloud::aws::ec2::Ec2::new(&http, &moto.url, "us-east-1", &creds, &Silent);
    let doc = ec2.call("DescribeImages", &[("ImageId.1".into(), out.image_id.clone())]).unwrap();
    let item = doc.items("imagesSet").next().expect("the image is listed");
    assert_eq!(item.text_of("name"), Some("berth-moto"));
    assert_eq!(item.text_of("description"), Some("Berth on moto"));
    assert_eq!(ec2.image_named("berth-moto").unwrap().unwrap().image_id, out.image_id);

    // A second image of the same file, recorded (moto's recorder appends each request to one file
    // from many threads, so it is on only for these few calls): the completed snapshot tagged
    // with this content is reused, and RegisterImage is sent what Berth's images need.
    assert_eq!(recorder("reset-recording"), 200);
    assert_eq!(recorder("start-recording"), 200);
    let mut up =
        Upload::new(&path, "berth-moto-2", "Berth on moto", "us-east-1", Endpoints::both_at(&moto.url), &creds);
    up.poll_interval = Duration::from_millis(50);
    let second = aws::upload(&http, &up, &Silent).unwrap();
    assert_eq!((second.snapshot_id.as_str(), second.blocks_sent, second.reused), (out.snapshot_id.as_str(), 0, true));
    assert_ne!(second.image_id, out.image_id);
    let sent = recorded(&moto, "RegisterImage");
    assert_eq!(sent.len(), 1);
    let p = |k: &str| sent[0].get(k).map(String::as_str);
    assert_eq!(p("Version"), Some("2016-11-15"));
    assert_eq!(p("Name"), Some("berth-moto-2"));
    assert_eq!(p("Architecture"), Some("x86_64"));
    assert_eq!(p("VirtualizationType"), Some("hvm"));
    assert_eq!(p("BootMode"), Some("uefi"));
    assert_eq!(p("ImdsSupport"), Some("v2.0"));
    assert_eq!(p("EnaSupport"), Some("true"));
    assert_eq!(p("RootDeviceName"), Some("/dev/xvda"));
    assert_eq!(p("BlockDeviceMapping.1.DeviceName"), Some("/dev/xvda"));
    assert_eq!(p("BlockDeviceMapping.1.Ebs.SnapshotId"), Some(out.snapshot_id.as_str()));
    assert_eq!(p("BlockDeviceMapping.1.Ebs.DeleteOnTermination"), Some("true"));
    assert_eq!(p("BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp3"));
    assert_eq!(p("TagSpecification.1.ResourceType"), Some("image"));
    // The snapshot is tagged with the content (moto keeps StartSnapshot's tags).
    let snaps = ec2.call("DescribeSnapshots", &[("SnapshotId.1".into(), out.snapshot_id.clone())]).unwrap();
    let tags: Vec<String> = snaps
        .items("snapshotSet")
        .flat_map(|s| s.items("tagSet"))
        .filter_map(|t| t.text_of("key").map(str::to_string))
        .collect();
    assert!(tags.contains(&aws::CONTENT_TAG.to_string()), "{tags:?}");

    // Run again: the image is found by name; nothing registered twice.
    let again = aws::upload(&http, &up, &Silent).unwrap();
    assert!(again.reused && again.image_id == second.image_id, "{again:?}");
    assert_eq!(recorded(&moto, "RegisterImage").len(), 1);
}

/// Progress that keeps the notes.
#[derive(Default)]
struct Notes(std::sync::Mutex<Vec<String>>);

impl berth_cloud::Progress for Notes {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

/// A TCP relay to `upstream` that cuts the first `cuts` connections carrying a PUT after
/// `after` bytes of the request, in the middle of the block's body.
struct CuttingRelay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl CuttingRelay {
    fn start(upstream: u16, cuts: u32, after: usize) -> CuttingRelay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let done = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let done = done.clone();
                std::thread::spawn(move || {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                    let (mut from_server, mut to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from_server, &mut to_client);
                        let _ = to_client.shutdown(Shutdown::Write);
                    });
                    let mut buf = vec![0; 64 << 10];
                    let mut sent = 0;
                    let mut cutting = None;
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let cutting = *cutting.get_or_insert_with(|| {
                            buf.starts_with(b"PUT ")
                                && done
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c < cuts).then_some(c + 1))
                                    .is_ok()
                        });
                        if cutting && sent + n >= after {
                            let _ = server.write_all(&buf[..after.saturating_sub(sent)]);
                            let _ = server.shutdown(Shutdown::Both);
                            let _ = client.shutdown(Shutdown::Both);
                            return;
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = server.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingRelay { port, cut }
    }
}

#[test]
fn a_connection_dropped_in_the_middle_of_a_block_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data_blocks) = image(dir.path(), 1);
    let fake = EbsFake::start();
    // Three PutSnapshotBlock connections cut after 200 KB of their 512 KiB block.
    let relay = CuttingRelay::start(fake.server.port(), 3, 200_000);
    let creds = creds(ebs_fake::SECRET);
    let url = format!("http://127.0.0.1:{}", relay.port);
    let out = aws::upload(&client(), &upload_to(&url, &path, "berth-cut", &creds), &Silent).unwrap();
    assert_eq!(relay.cut.load(std::sync::atomic::Ordering::SeqCst), 3, "three blocks were cut");
    assert_eq!(out.blocks_sent, data_blocks.len() as u64);
    let snaps = fake.snapshots();
    assert_eq!(snaps[0].blocks.keys().copied().collect::<Vec<_>>(), data_blocks);
    for (i, data) in &snaps[0].blocks {
        assert!(*data == block_of(&path, *i), "block {i} differs");
    }
    assert_eq!(fake.calls("PutSnapshotBlock"), data_blocks.len(), "a cut block never reached the fake");
    assert!(fake.refusals().is_empty(), "{:?}", fake.refusals());
    assert_eq!(fake.images().len(), 1);
}
