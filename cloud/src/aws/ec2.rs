//! EC2's Query API (form-encoded `POST /`, `Version=2016-11-15`, SigV4 service `ec2`, XML
//! answers): the images and snapshots an upload looks for, and `RegisterImage`.

use std::time::{Duration, Instant};

use berth_http::{Client, Reply};

use super::credentials::Credentials;
use super::xml::{self, Node};
use super::{Said, Service, failure};
use crate::percent::encode;
use crate::{Error, Progress, api};

/// The Query API version every call names.
pub const VERSION: &str = "2016-11-15";

/// An AMI as `DescribeImages` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `ami-…`.
    pub image_id: String,
    /// Its name.
    pub name: String,
    /// `available`, `pending`, `failed`…
    pub state: String,
    /// The snapshot of its root device mapping.
    pub root_snapshot_id: Option<String>,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

impl Image {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A snapshot as `DescribeSnapshots` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `snap-…`.
    pub snapshot_id: String,
    /// `pending`, `completed`, `error`…
    pub status: String,
    /// Why it failed, when it did.
    pub state_message: String,
}

/// An EC2 Query API client for one endpoint, region and set of credentials.
pub struct Ec2<'a> {
    aws: Service<'a>,
}

impl<'a> Ec2<'a> {
    /// A client of EC2 at `endpoint` (`https://ec2.REGION.amazonaws.com`).
    pub fn new(
        client: &'a Client,
        endpoint: &str,
        region: &'a str,
        credentials: &'a Credentials,
        progress: &'a dyn Progress,
    ) -> Ec2<'a> {
        Ec2 { aws: Service::new(client, endpoint, region, "ec2", credentials, progress) }
    }

    /// One action with `params`, signed and retried; the parsed answer, or the API's error
    /// (`Code: Message`; credentials named when they were refused).
    pub fn call(&self, action: &str, params: &[(String, String)]) -> Result<Node, Error> {
        let url = format!("{}/", self.aws.endpoint);
        let mut body = format!("Action={}&Version={VERSION}", encode(action));
        for (k, v) in params {
            body += &format!("&{}={}", encode(k), encode(v));
        }
        let headers =
            vec![("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string())];
        let reply = self.aws.send(action, "POST", &url, &headers, body.as_bytes(), false)?;
        let doc = xml::parse(&reply.text());
        if !reply.is_success() {
            return Err(failure(action, &url, &reply, said(&reply, doc.as_ref().ok()), self.aws.credentials));
        }
        doc.map_err(|why| Error::Protocol {
            call: action.to_string(),
            url,
            message: format!("{why}: {}", api::one_line(&reply.text(), 200)),
        })
    }

    /// The account's own AMI called `name`, if there is one.
    pub fn image_named(&self, name: &str) -> Result<Option<Image>, Error> {
        let params = pairs(&[("Owner.1", "self"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", name)]);
        let doc = self.call("DescribeImages", &params)?;
        // The filter is the server's; the name is checked here too.
        Ok(doc.items("imagesSet").map(image).find(|i| i.name == name && i.state != "deregistered"))
    }

    /// The id of a completed snapshot of the account tagged `key` = `value`, if there is one.
    pub fn completed_snapshot_with(&self, key: &str, value: &str) -> Result<Option<String>, Error> {
        let params = pairs(&[
            ("Owner.1", "self"),
            ("Filter.1.Name", &format!("tag:{key}")),
            ("Filter.1.Value.1", value),
            ("Filter.2.Name", "status"),
            ("Filter.2.Value.1", "completed"),
        ]);
        let doc = self.call("DescribeSnapshots", &params)?;
        Ok(doc.items("snapshotSet").map(snapshot).find(|s| s.status == "completed").map(|s| s.snapshot_id))
    }

    /// The snapshot `id` as EC2 sees it (`None` while EC2 does not list it yet: EC2 is
    /// eventually consistent with EBS, and says `InvalidSnapshot.NotFound` meanwhile).
    pub fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, Error> {
        let doc = match self.call("DescribeSnapshots", &pairs(&[("SnapshotId.1", id)])) {
            Ok(doc) => doc,
            Err(Error::Api { message, .. }) if message.starts_with("InvalidSnapshot.NotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(doc.items("snapshotSet").map(snapshot).find(|s| s.snapshot_id == id))
    }

    /// Asks `DescribeSnapshots` every `interval` until snapshot `id` is `completed`: an `error`
    /// state or `timeout` is an [`Error::Operation`].
    pub fn wait_completed(&self, id: &str, interval: Duration, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut last = "not listed yet".to_string();
        loop {
            match self.snapshot(id)? {
                Some(s) if s.status == "completed" => return Ok(()),
                Some(s) if s.status == "error" => {
                    let why = if s.state_message.is_empty() { "no reason given".to_string() } else { s.state_message };
                    return Err(Error::Operation {
                        what: format!("snapshot {id}"),
                        message: format!("ended in state error: {why}"),
                    });
                }
                Some(s) => last = s.status,
                None => {}
            }
            if !super::wait_until(deadline, interval) {
                return Err(Error::Operation {
                    what: format!("snapshot {id}"),
                    message: format!("not completed within {} s (last state: {last})", timeout.as_secs()),
                });
            }
        }
    }

    /// `RegisterImage`: an x86_64 UEFI AMI with ENA, IMDSv2 required, its root device
    /// `/dev/xvda` the snapshot (gp3, deleted with the instance), tagged `Name` and
    /// `content_tag`. Returns its id.
    pub fn register_image(
        &self,
        name: &str,
        description: &str,
        snapshot_id: &str,
        content: &str,
    ) -> Result<String, Error> {
        let params = register_params(name, description, snapshot_id, content);
        let doc = self.call("RegisterImage", &params)?;
        doc.find("imageId").map(|n| n.text.clone()).filter(|id| !id.is_empty()).ok_or_else(|| Error::Protocol {
            call: "RegisterImage".into(),
            url: format!("{}/", self.aws.endpoint),
            message: "no imageId in the answer".into(),
        })
    }
}

/// `RegisterImage`'s parameters for Berth's images.
pub fn register_params(name: &str, description: &str, snapshot_id: &str, content: &str) -> Vec<(String, String)> {
    pairs(&[
        ("Name", name),
        ("Description", description),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot_id),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("EnaSupport", "true"),
        ("BootMode", "uefi"),
        ("ImdsSupport", "v2.0"),
        ("TagSpecification.1.ResourceType", "image"),
        ("TagSpecification.1.Tag.1.Key", "Name"),
        ("TagSpecification.1.Tag.1.Value", name),
        ("TagSpecification.1.Tag.2.Key", super::CONTENT_TAG),
        ("TagSpecification.1.Tag.2.Value", content),
    ])
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn tags(item: &Node) -> Vec<(String, String)> {
    item.items("tagSet")
        .map(|t| (t.text_of("key").unwrap_or("").to_string(), t.text_of("value").unwrap_or("").to_string()))
        .collect()
}

fn image(item: &Node) -> Image {
    let root = item.text_of("rootDeviceName").unwrap_or("/dev/xvda");
    let mappings: Vec<&Node> = item.items("blockDeviceMapping").collect();
    let root_mapping = mappings.iter().find(|m| m.text_of("deviceName") == Some(root)).or(mappings.first());
    Image {
        image_id: item.text_of("imageId").unwrap_or("").to_string(),
        name: item.text_of("name").unwrap_or("").to_string(),
        state: item.text_of("imageState").unwrap_or("").to_string(),
        root_snapshot_id: root_mapping.and_then(|m| m.child("ebs")?.text_of("snapshotId")).map(str::to_string),
        tags: tags(item),
    }
}

fn snapshot(item: &Node) -> Snapshot {
    Snapshot {
        snapshot_id: item.text_of("snapshotId").unwrap_or("").to_string(),
        status: item.text_of("status").unwrap_or("").to_string(),
        state_message: item.text_of("stateMessage").unwrap_or("").to_string(),
    }
}

/// The code and message of an EC2 error (`<Response><Errors><Error><Code>…`).
fn said(reply: &Reply, doc: Option<&Node>) -> Said {
    let error = doc.and_then(|d| d.find("Error"));
    match error {
        Some(e) => Said {
            code: e.text_of("Code").unwrap_or("").to_string(),
            message: e.text_of("Message").unwrap_or("").to_string(),
        },
        None => Said { code: String::new(), message: api::one_line(&reply.text(), 200) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_encoded_as_the_query_api_wants() {
        assert_eq!(encode("tag:berth content/1~a_b.c-d"), "tag%3Aberth%20content%2F1~a_b.c-d");
        let p = register_params("n", "d", "snap-1", "c");
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BootMode"), Some("uefi"));
        assert_eq!(get("BlockDeviceMapping.1.Ebs.SnapshotId"), Some("snap-1"));
        assert_eq!(get("RootDeviceName"), get("BlockDeviceMapping.1.DeviceName"));
    }

    #[test]
    fn images_and_errors_are_read_from_xml() {
        let doc = xml::parse(
            "<DescribeImagesResponse><imagesSet><item><imageId>ami-1</imageId><name>n</name><imageState>available</imageState>\
             <rootDeviceName>/dev/xvda</rootDeviceName><blockDeviceMapping><item><deviceName>/dev/xvdb</deviceName></item>\
             <item><deviceName>/dev/xvda</deviceName><ebs><snapshotId>snap-9</snapshotId></ebs></item></blockDeviceMapping>\
             <tagSet><item><key>k</key><value>v</value></item></tagSet></item></imagesSet></DescribeImagesResponse>",
        )
        .unwrap();
        let i = image(doc.items("imagesSet").next().unwrap());
        assert_eq!(
            (i.image_id.as_str(), i.root_snapshot_id.as_deref(), i.tag("k")),
            ("ami-1", Some("snap-9"), Some("v"))
        );
        let err = xml::parse(
            "<Response><Errors><Error><Code>AuthFailure</Code><Message>no</Message></Error></Errors></Response>",
        )
        .unwrap();
        let e = err.find("Error").unwrap();
        assert_eq!((e.text_of("Code"), e.text_of("Message")), (Some("AuthFailure"), Some("no")));
    }
}
