//! Azure: the instance metadata service (IMDS), the provisioning CD, and (in [`wireserver`])
//! the ready report.
//!
//! IMDS (`http://169.254.169.254/metadata/instance/compute/…`) wants `Metadata: true` on every
//! request and an `api-version` in every query; the versions are Afterburn's (and Ignition's for
//! `userData`): `vmId` (the instance id) and `name` with `2017-08-01`,
//! `osProfile/adminUsername` and `publicKeys` (JSON `[{keyData, path}]`) with `2021-02-01`,
//! `userData` (base64) with `2021-01-01`.
//!
//! The provisioning CD ([`ovf::CdSource`]) is read first: it is local, and its `CustomData` is
//! what Azure documents as the VM's custom data, so it wins over IMDS `userData` (which is then
//! not asked for); its `HostName` (the computer name given at creation) wins over IMDS `name`
//! (the resource's name). A VM without the CD (made from a specialised image) is not an error.

pub mod ovf;
pub mod wireserver;

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use berth_http::{Client, Retry};
use serde::Deserialize;

use crate::provider::{self, Common, MetadataError, Provider, common_settings};
use crate::record::{InstanceRecord, Outcome, SshKey};
use crate::session::{Failed, Session};
use ovf::CdSource;

/// IMDS's compute metadata.
pub const IMDS: &str = "http://169.254.169.254/metadata/instance/compute/";
/// The header IMDS wants on every request.
pub const METADATA_HEADER: &str = "Metadata";
/// The instance id.
pub const VM_ID: &str = "vmId?api-version=2017-08-01&format=text";
/// The VM's name.
pub const NAME: &str = "name?api-version=2017-08-01&format=text";
/// The admin user.
pub const ADMIN_USERNAME: &str = "osProfile/adminUsername?api-version=2021-02-01&format=text";
/// The SSH keys (JSON).
pub const PUBLIC_KEYS: &str = "publicKeys?api-version=2021-02-01";
/// The user data (base64).
pub const USER_DATA: &str = "userData?api-version=2021-01-01&format=text";

/// Most user data read (Azure allows 64 KiB; base64 makes it a third larger).
const MAX_USER_DATA: u64 = 1 << 20;
/// Most of any other field.
const MAX_FIELD: u64 = 64 << 10;

/// Azure's IMDS and provisioning CD.
pub struct Azure {
    common: Common,
    cd: CdSource,
}

common_settings!(Azure);

/// One of IMDS's `publicKeys`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublicKey {
    key_data: String,
    #[serde(default)]
    path: Option<String>,
}

impl Azure {
    /// The provider on `client` (whose base URL tests point at a fake) with `retry`; the CD is
    /// looked for in the machine's drives ([`CdSource::default`]).
    pub fn new(client: Client, retry: Retry) -> Azure {
        Azure { common: Common::new(client, retry), cd: CdSource::default() }
    }

    /// Where the provisioning CD is looked for.
    #[must_use]
    pub fn cd(mut self, cd: CdSource) -> Self {
        self.cd = cd;
        self
    }

    fn get(&self, s: &Session, path: &str, limit: u64) -> Result<Option<Vec<u8>>, Failed> {
        let url = format!("{IMDS}{path}");
        let what = path.split('?').next().unwrap_or(path);
        s.run(what, |t| {
            match self
                .common
                .client
                .get(&url)
                .header(METADATA_HEADER, "true")
                .timeout(t)
                .send()
                .and_then(|r| r.read_to_vec(limit))
            {
                Ok(body) => {
                    s.heard();
                    crate::session::Step::Done(body)
                }
                Err(e) => s.step_of(e),
            }
        })
    }

    /// A text field, `Some` when set and not empty.
    fn text(&self, s: &Session, path: &str, limit: u64) -> Result<Option<String>, Failed> {
        Ok(self.get(s, path, limit)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()).filter(|t| !t.is_empty()))
    }
}

impl Provider for Azure {
    fn name(&self) -> &'static str {
        berth_slot::platform::Platform::Azure.name()
    }

    fn fetch(&self, deadline: Instant) -> Result<InstanceRecord, MetadataError> {
        let s = self.common.session(deadline);
        let mut record = InstanceRecord::empty(self.name(), Outcome::Complete);
        let cd = match self.cd.read(deadline, &|l| s.log(l), &|n| s.note(n)) {
            Ok(cd) => cd.unwrap_or_default(),
            Err(e) => {
                s.fail(format!("provisioning CD: {e}"));
                ovf::Provisioning::default()
            }
        };
        if cd.custom_data.is_some() {
            s.note("user data: the provisioning CD's CustomData".into());
        }
        record.user_data = cd.custom_data.clone();
        if let Some(name) = &cd.hostname {
            provider::set_hostname(&s, &mut record, "ovf-env.xml HostName", name.clone().into_bytes());
        }

        s.log("azure: asking IMDS");
        match self.get(&s, VM_ID, MAX_FIELD) {
            Ok(Some(id)) => provider::set_instance_id(&s, &mut record, "vmId", id),
            Ok(None) => s.note("vmId: not set (404)".into()),
            Err(Failed) => {}
        }
        let mut user = cd.user.clone();
        if s.answered() {
            if record.hostname.is_none() {
                match self.get(&s, NAME, MAX_FIELD) {
                    Ok(Some(name)) => provider::set_hostname(&s, &mut record, "name", name),
                    Ok(None) => s.note("name: not set (404)".into()),
                    Err(Failed) => {}
                }
            }
            match self.text(&s, ADMIN_USERNAME, MAX_FIELD) {
                Ok(Some(admin)) => user = Some(admin),
                Ok(None) => s.note("osProfile/adminUsername: not set".into()),
                Err(Failed) => {}
            }
            match self.get(&s, PUBLIC_KEYS, MAX_FIELD) {
                Ok(Some(json)) => match serde_json::from_slice::<Vec<PublicKey>>(&json) {
                    Ok(keys) => {
                        for k in keys {
                            // IMDS keeps the line breaks the key was pasted with.
                            let key = k.key_data.replace(['\r', '\n'], "").trim().to_string();
                            if key.is_empty() {
                                continue;
                            }
                            let owner = user.clone().or_else(|| k.path.as_deref().and_then(home_user));
                            record.ssh_keys.push(SshKey { user: owner, key });
                        }
                    }
                    Err(e) => s.fail(format!("publicKeys: not the JSON IMDS answers: {e}")),
                },
                Ok(None) => s.note("publicKeys: none (404)".into()),
                Err(Failed) => {}
            }
            if record.user_data.is_none() {
                match self.text(&s, USER_DATA, MAX_USER_DATA) {
                    Ok(Some(b64)) => match STANDARD.decode(b64.as_bytes()) {
                        Ok(data) if data.is_empty() => s.note("userData: none".into()),
                        Ok(data) => record.user_data = Some(data),
                        Err(e) => s.fail(format!("userData: not base64: {e}")),
                    },
                    Ok(None) => s.note("userData: none".into()),
                    Err(Failed) => {}
                }
            }
        }
        // The CD's keys that IMDS did not give (IMDS unreachable, or an older host).
        for key in cd.keys {
            if !record.ssh_keys.iter().any(|k| k.key == key) {
                record.ssh_keys.push(SshKey { user: user.clone(), key });
            }
        }
        Ok(s.finish(record))
    }
}

/// The user of an `authorized_keys` path under `/home` (`/home/azureuser/.ssh/authorized_keys`).
fn home_user(path: &str) -> Option<String> {
    let user = path.strip_prefix("/home/")?.strip_suffix("/.ssh/authorized_keys")?;
    (!user.is_empty() && !user.contains('/')).then(|| user.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_of_a_key_path() {
        assert_eq!(home_user("/home/azureuser/.ssh/authorized_keys").as_deref(), Some("azureuser"));
        assert_eq!(home_user("/root/.ssh/authorized_keys"), None);
        assert_eq!(home_user("/home/a/b/.ssh/authorized_keys"), None);
    }
}
