//! GCE: the metadata server, `http://169.254.169.254/computeMetadata/v1/`.
//!
//! Every request carries `Metadata-Flavor: Google` (the server refuses one without it, so that a
//! request a web page or proxy was tricked into sending does not reach it) and every answer must
//! carry it back: an answer without it comes from something else at that address, and nothing
//! more is asked.
//!
//! Fields: `instance/id`, `instance/hostname` (an FQDN, `name.zone.c.project.internal`, cut at
//! its first dot when longer than 63 bytes), `instance/attributes/user-data`, and the SSH keys in
//! Afterburn's order: `instance/attributes/sshKeys` (deprecated) alone when it has any; else
//! `instance/attributes/ssh-keys`, then, unless `instance/attributes/block-project-ssh-keys` is
//! `true`, `project/attributes/ssh-keys` and `project/attributes/sshKeys`. Key lines are
//! `user:key`; unlike Afterburn, Berth keeps the user (provisioning gives the key to that user
//! when the document names it, else to `core`).

use std::time::Instant;

use berth_http::{Client, Retry};

use crate::provider::{self, Common, MetadataError, Provider, common_settings};
use crate::record::{InstanceRecord, Outcome, SshKey};
use crate::session::{Failed, Session, Step};

/// The service's root.
pub const BASE: &str = "http://169.254.169.254/computeMetadata/v1/";
/// The header every request and every answer carries.
pub const FLAVOR_HEADER: &str = "Metadata-Flavor";
/// Its value.
pub const FLAVOR: &str = "Google";

/// Most user data read (GCE allows 256 KiB per value; the provisioning document at most 1 MiB).
const MAX_USER_DATA: u64 = 1 << 20;
/// Most of any other field.
const MAX_FIELD: u64 = 256 << 10;

/// GCE's metadata server.
pub struct Gce {
    common: Common,
}

common_settings!(Gce);

impl Gce {
    /// The provider on `client` (whose base URL tests point at a fake) with `retry`.
    pub fn new(client: Client, retry: Retry) -> Gce {
        Gce { common: Common::new(client, retry) }
    }

    fn get(&self, s: &Session, path: &str, limit: u64) -> Result<Option<Vec<u8>>, Failed> {
        let url = format!("{BASE}{path}");
        s.run(path, |t| {
            let r = match self.common.client.get(&url).header(FLAVOR_HEADER, FLAVOR).timeout(t).send() {
                Ok(r) => r,
                Err(e) => return s.step_of(e),
            };
            s.heard();
            if r.header(FLAVOR_HEADER) != Some(FLAVOR) {
                s.wrong_service(format!("{url}: the answer has no `{FLAVOR_HEADER}: {FLAVOR}`"));
                return Step::Final("the answer has no `Metadata-Flavor: Google`".into());
            }
            match r.read_to_vec(limit) {
                Ok(body) => Step::Done(body),
                Err(e) => s.step_of(e),
            }
        })
    }

    /// A text attribute: `Some` when set and not empty.
    fn text(&self, s: &Session, path: &str) -> Result<Option<String>, Failed> {
        Ok(self
            .get(s, path, MAX_FIELD)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .filter(|t| !t.trim().is_empty()))
    }

    fn keys(&self, s: &Session, record: &mut InstanceRecord) {
        let mut add = |s: &Session, path: &str, text: Option<String>| {
            if let Some(text) = text {
                record.ssh_keys.extend(parse_keys(s, path, &text));
            }
        };
        // The deprecated instance key list, when it has keys, is the only one used.
        if let Ok(Some(legacy)) = self.text(s, "instance/attributes/sshKeys") {
            add(s, "instance/attributes/sshKeys", Some(legacy));
            return;
        }
        add(s, "instance/attributes/ssh-keys", self.text(s, "instance/attributes/ssh-keys").ok().flatten());
        let block = self.text(s, "instance/attributes/block-project-ssh-keys").ok().flatten();
        if block.is_some_and(|b| b.trim().eq_ignore_ascii_case("true")) {
            s.note("block-project-ssh-keys is true: the project's keys are not used".into());
            return;
        }
        for path in ["project/attributes/ssh-keys", "project/attributes/sshKeys"] {
            add(s, path, self.text(s, path).ok().flatten());
        }
    }
}

impl Provider for Gce {
    fn name(&self) -> &'static str {
        berth_slot::platform::Platform::Gce.name()
    }

    fn fetch(&self, deadline: Instant) -> Result<InstanceRecord, MetadataError> {
        let s = self.common.session(deadline);
        let mut record = InstanceRecord::empty(self.name(), Outcome::Complete);
        s.log("gce: asking the metadata server");
        match self.get(&s, "instance/id", MAX_FIELD) {
            Ok(Some(id)) => provider::set_instance_id(&s, &mut record, "instance/id", id),
            Ok(None) => s.note("instance/id: not set (404)".into()),
            Err(Failed) => {}
        }
        if !s.answered() {
            return Ok(s.finish(record));
        }
        match self.get(&s, "instance/hostname", MAX_FIELD) {
            Ok(Some(name)) => provider::set_hostname(&s, &mut record, "instance/hostname", name),
            Ok(None) => s.note("instance/hostname: not set (404)".into()),
            Err(Failed) => {}
        }
        self.keys(&s, &mut record);
        match self.get(&s, "instance/attributes/user-data", MAX_USER_DATA) {
            Ok(Some(data)) => record.user_data = Some(data),
            Ok(None) => s.note("instance/attributes/user-data: none (404)".into()),
            Err(Failed) => {}
        }
        if let Some(why) = s.wrong_service_reason() {
            return Err(MetadataError::NotTheService { service: "GCE", url: BASE.to_string(), why });
        }
        Ok(s.finish(record))
    }
}

/// The keys of a `user:key` list; a line that is not one is noted and skipped.
fn parse_keys(s: &Session, path: &str, text: &str) -> Vec<SshKey> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((user, key)) if !key.trim().is_empty() && !user.contains(char::is_whitespace) => {
                let user = (!user.is_empty()).then(|| user.to_string());
                out.push(SshKey { user, key: key.trim().to_string() });
            }
            _ => s.fail(format!(
                "{path}: the line {:?} is not `user:key`; skipped",
                line.chars().take(60).collect::<String>()
            )),
        }
    }
    out
}
