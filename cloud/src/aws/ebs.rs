//! The EBS direct APIs (REST + JSON, SigV4 service `ebs`, API 2019-11-02): the three calls that
//! write a snapshot, and the two that read one back (to verify an upload).

use berth_http::{Client, Reply};
use serde_json::Value;

use super::credentials::Credentials;
use super::{BLOCK, Said, Service, failure};
use crate::{Error, Progress, api, percent};

/// A snapshot as `StartSnapshot` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// `snap-…`.
    pub snapshot_id: String,
    /// `pending` for a new one; `completed` when the client token's snapshot is done already.
    pub status: String,
    /// The block size EBS says it uses (524288; moto says 512).
    pub block_size: Option<u64>,
}

/// One block of a snapshot as `ListSnapshotBlocks` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlock {
    /// Its index (offset / block size).
    pub index: u64,
    /// The token `GetSnapshotBlock` wants.
    pub token: String,
}

/// An EBS direct API client for one endpoint, region and set of credentials.
pub struct Ebs<'a> {
    aws: Service<'a>,
}

impl<'a> Ebs<'a> {
    /// A client of the EBS direct APIs at `endpoint` (`https://ebs.REGION.amazonaws.com`).
    pub fn new(
        client: &'a Client,
        endpoint: &str,
        region: &'a str,
        credentials: &'a Credentials,
        progress: &'a dyn Progress,
    ) -> Ebs<'a> {
        Ebs { aws: Service::new(client, endpoint, region, "ebs", credentials, progress) }
    }

    /// One signed call, retried by the one policy; the answer if its status is 2xx, else the
    /// API's error (credentials named when they were refused).
    fn call(
        &self,
        call: &str,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        unsigned: bool,
    ) -> Result<Reply, Error> {
        let url = format!("{}{path}", self.aws.endpoint);
        let reply = self.aws.send(call, method, &url, headers, body, unsigned)?;
        if reply.is_success() {
            return Ok(reply);
        }
        Err(failure(call, &url, &reply, said(&reply), self.aws.credentials))
    }

    /// `StartSnapshot`: a pending snapshot of `gib` GiB, tagged, cancelled by EBS after an hour
    /// without progress; the same `client_token` gives the same snapshot back.
    pub fn start_snapshot(
        &self,
        gib: u64,
        description: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<Started, Error> {
        let tags: Vec<Value> = tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect();
        let body = serde_json::json!({
            "VolumeSize": gib,
            "Description": description,
            "Tags": tags,
            "Timeout": 60,
            "ClientToken": client_token,
        })
        .to_string();
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        let reply = self.call("StartSnapshot", "POST", "/snapshots", &headers, body.as_bytes(), false)?;
        let v = json(&reply, "StartSnapshot", &self.aws.endpoint)?;
        let snapshot_id = v["SnapshotId"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| Error::Protocol {
            call: "StartSnapshot".into(),
            url: format!("{}/snapshots", self.aws.endpoint),
            message: format!("no SnapshotId in {}", api::one_line(&reply.text(), 200)),
        })?;
        Ok(Started {
            snapshot_id: snapshot_id.to_string(),
            status: v["Status"].as_str().unwrap_or("pending").to_string(),
            block_size: v["BlockSize"].as_u64(),
        })
    }

    /// `PutSnapshotBlock`: one 512 KiB block at `index`, its SHA-256 (`checksum`, base64) in
    /// the signed headers, the body itself not signed (as the API reference says).
    pub fn put_block(
        &self,
        snapshot_id: &str,
        index: u64,
        data: &[u8],
        checksum: &str,
        percent: u64,
    ) -> Result<(), Error> {
        if data.len() as u64 != BLOCK {
            return Err(Error::Invalid(format!("block {index}: {} bytes, EBS takes {BLOCK}", data.len())));
        }
        let headers = vec![
            ("content-type".to_string(), "application/octet-stream".to_string()),
            ("x-amz-checksum".to_string(), checksum.to_string()),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
            ("x-amz-data-length".to_string(), BLOCK.to_string()),
            ("x-amz-progress".to_string(), percent.min(100).to_string()),
            ("x-amz-content-sha256".to_string(), "UNSIGNED-PAYLOAD".to_string()),
        ];
        let path = format!("/snapshots/{snapshot_id}/blocks/{index}");
        let reply = self.call("PutSnapshotBlock", "PUT", &path, &headers, data, true)?;
        // EBS echoes the checksum it computed; one that differs means the block arrived changed.
        match reply.header("x-amz-checksum") {
            Some(echo) if echo != checksum => Err(Error::Protocol {
                call: "PutSnapshotBlock".into(),
                url: format!("{}{path}", self.aws.endpoint),
                message: format!("block {index}: EBS has checksum {echo}, sent {checksum}"),
            }),
            _ => Ok(()),
        }
    }

    /// `CompleteSnapshot` with the number of blocks written and their `LINEAR` aggregate
    /// checksum. Returns the status EBS answers (`pending`, `completed`, `error`).
    pub fn complete_snapshot(&self, snapshot_id: &str, changed_blocks: u64, linear: &str) -> Result<String, Error> {
        let headers = vec![
            ("x-amz-changedblockscount".to_string(), changed_blocks.to_string()),
            ("x-amz-checksum".to_string(), linear.to_string()),
            ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
            ("x-amz-checksum-aggregation-method".to_string(), "LINEAR".to_string()),
        ];
        let path = format!("/snapshots/completion/{snapshot_id}");
        let reply = self.call("CompleteSnapshot", "POST", &path, &headers, b"", false)?;
        let v = json(&reply, "CompleteSnapshot", &self.aws.endpoint)?;
        Ok(v["Status"].as_str().unwrap_or("pending").to_string())
    }

    /// `ListSnapshotBlocks` of a completed snapshot: every block written, in index order (all
    /// pages), and the block size it reports.
    pub fn list_blocks(&self, snapshot_id: &str) -> Result<(Vec<ListedBlock>, Option<u64>), Error> {
        let mut blocks = Vec::new();
        let mut next: Option<String> = None;
        let mut block_size = None;
        loop {
            let mut path = format!("/snapshots/{snapshot_id}/blocks?maxResults=10000");
            if let Some(t) = &next {
                path += &format!("&pageToken={}", percent::encode(t));
            }
            let reply = self.call("ListSnapshotBlocks", "GET", &path, &[], b"", false)?;
            let v = json(&reply, "ListSnapshotBlocks", &self.aws.endpoint)?;
            block_size = block_size.or(v["BlockSize"].as_u64());
            for b in v["Blocks"].as_array().into_iter().flatten() {
                if let (Some(index), Some(token)) = (b["BlockIndex"].as_u64(), b["BlockToken"].as_str()) {
                    blocks.push(ListedBlock { index, token: token.to_string() });
                }
            }
            match v["NextToken"].as_str() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        blocks.sort_by_key(|b| b.index);
        Ok((blocks, block_size))
    }

    /// `GetSnapshotBlock`: a block's data and the checksum EBS keeps for it.
    pub fn get_block(&self, snapshot_id: &str, block: &ListedBlock) -> Result<(Vec<u8>, Option<String>), Error> {
        let path =
            format!("/snapshots/{snapshot_id}/blocks/{}?blockToken={}", block.index, percent::encode(&block.token));
        let reply = self.call("GetSnapshotBlock", "GET", &path, &[], b"", false)?;
        let checksum = reply.header("x-amz-checksum").map(str::to_string);
        Ok((reply.body, checksum))
    }
}

fn json(reply: &Reply, call: &str, endpoint: &str) -> Result<Value, Error> {
    serde_json::from_slice(&reply.body).map_err(|e| Error::Protocol {
        call: call.to_string(),
        url: endpoint.to_string(),
        message: format!("{e}: {}", api::one_line(&reply.text(), 200)),
    })
}

/// The code and message of an EBS error: the code from `x-amzn-ErrorType` (or the body's
/// `__type`/`code`), the message and any `Reason` from the JSON body.
fn said(reply: &Reply) -> Said {
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let header = reply.header("x-amzn-errortype").map(|t| t.split(':').next().unwrap_or("").to_string());
    let body_code = || {
        v["__type"]
            .as_str()
            .or(v["code"].as_str())
            .or(v["Code"].as_str())
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
    };
    let code = header.filter(|c| !c.is_empty()).or_else(body_code).unwrap_or_default();
    let mut message = v["message"].as_str().or(v["Message"].as_str()).unwrap_or("").to_string();
    if let Some(reason) = v["Reason"].as_str().or(v["reason"].as_str()) {
        message = format!("{message} (reason {reason})");
    }
    if code.is_empty() && message.is_empty() {
        message = api::one_line(&reply.text(), 200);
    }
    Said { code, message }
}
