//! AWS credentials and region found where the AWS CLI finds them: the environment, then the
//! profile's section of the shared credentials file, then of the config file. Every value
//! carries where it came from, so that a refused key names its source.
//!
//! Not done here (no network but the API, no programs run): instance metadata, container
//! credentials, SSO, `role_arn` and `credential_process`; a profile using one of those is named
//! in the error with the CLI command that exports plain keys.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;

/// An access key, its secret and a session token, with where they came from.
#[derive(Clone)] // Debug is written out below: it must not print the secret.
pub struct Credentials {
    /// `AKIA…` / `ASIA…`.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token of temporary credentials (`ASIA…` keys).
    pub session_token: Option<String>,
    /// Where they came from, for errors: `environment (AWS_ACCESS_KEY_ID)`,
    /// `/root/.aws/credentials [prod]`, `/root/.aws/config [profile prod]`.
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<hidden>"))
            .field("source", &self.source)
            .finish()
    }
}

/// What the AWS CLI would use: credentials and region, with where each came from.
#[derive(Debug, Clone)]
pub struct Found {
    /// The credentials.
    pub credentials: Credentials,
    /// The region, if any source gave one.
    pub region: Option<String>,
    /// Where the region came from: `--region`, `environment (AWS_REGION)`,
    /// `/root/.aws/config [profile prod]`.
    pub region_source: Option<String>,
}

/// Finds credentials and region as the AWS CLI does.
///
/// Credentials: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`) unless a profile is given explicitly; else the profile (`profile`, else
/// `AWS_PROFILE`, else `default`) from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
/// else `~/.aws/credentials`, section `[name]`), then the config file (`AWS_CONFIG_FILE`, else
/// `~/.aws/config`, section `[profile name]`, or `[default]`).
/// Region: `region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region` in
/// the config file (then the credentials file).
///
/// `env` reads the environment (production: `|k| std::env::var(k).ok()`); `HOME` locates `~`.
pub fn find(profile: Option<&str>, region: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Found, Error> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let explicit = profile.filter(|p| !p.is_empty());
    let (profile_name, profile_from) = match (explicit, var("AWS_PROFILE")) {
        (Some(p), _) => (p.to_string(), "--profile"),
        (None, Some(p)) => (p, "AWS_PROFILE"),
        (None, None) => ("default".to_string(), ""),
    };

    let home = var("HOME").map(PathBuf::from);
    let file = |over: &str, name: &str| -> Result<PathBuf, Error> {
        match var(over) {
            Some(p) => Ok(expand_home(&p, home.as_deref())),
            None => home.as_ref().map(|h| h.join(".aws").join(name)).ok_or_else(|| Error::Credentials {
                source_name: format!("~/.aws/{name}"),
                reason: format!("HOME is not set, so ~/.aws/{name} cannot be found (set {over})"),
            }),
        }
    };
    // The files are read only when the environment does not settle the question, so that a
    // broken ~/.aws does not stop a run whose keys come from the environment.
    let from_env = if explicit.is_none() { env_credentials(&var)? } else { None };

    let (credentials, files) = match from_env {
        Some(c) => (c, None),
        None => {
            let cred_path = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?;
            let conf_path = file("AWS_CONFIG_FILE", "config")?;
            let cred_ini = Ini::load(&cred_path)?;
            let conf_ini = Ini::load(&conf_path)?;
            let c = profile_credentials(
                &profile_name,
                profile_from,
                (&cred_path, cred_ini.as_ref()),
                (&conf_path, conf_ini.as_ref()),
            )?;
            (c, Some((cred_path, cred_ini, conf_path, conf_ini)))
        }
    };

    let (region, region_source) = if let Some(r) = region.filter(|r| !r.is_empty()) {
        (Some(r.to_string()), Some("--region".to_string()))
    } else if let Some(r) = var("AWS_REGION") {
        (Some(r), Some("environment (AWS_REGION)".to_string()))
    } else if let Some(r) = var("AWS_DEFAULT_REGION") {
        (Some(r), Some("environment (AWS_DEFAULT_REGION)".to_string()))
    } else {
        // The files were not read when the environment had the keys: read the config now for
        // the region alone, as the CLI does.
        let files = match files {
            Some(f) => Some(f),
            None => match (file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), file("AWS_CONFIG_FILE", "config")) {
                (Ok(cred_path), Ok(conf_path)) => {
                    let cred_ini = Ini::load(&cred_path)?;
                    let conf_ini = Ini::load(&conf_path)?;
                    Some((cred_path, cred_ini, conf_path, conf_ini))
                }
                _ => None,
            },
        };
        files
            .and_then(|(cred_path, cred_ini, conf_path, conf_ini)| {
                let from_conf = conf_ini.as_ref().and_then(|ini| {
                    let (section, at) = config_section(ini, &profile_name)?;
                    let v = ini.get(section, "region")?;
                    Some((v.to_string(), format!("{} {at}", conf_path.display())))
                });
                from_conf.or_else(|| {
                    let ini = cred_ini.as_ref()?;
                    let v = ini.get(&profile_name, "region")?;
                    Some((v.to_string(), format!("{} [{profile_name}]", cred_path.display())))
                })
            })
            .map_or((None, None), |(r, s)| (Some(r), Some(s)))
    };

    Ok(Found { credentials, region, region_source })
}

/// The environment's keys, if `AWS_ACCESS_KEY_ID` is set.
fn env_credentials(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Credentials>, Error> {
    let source = "environment (AWS_ACCESS_KEY_ID)".to_string();
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Some(Credentials {
            access_key_id: id.trim().to_string(),
            secret_access_key: secret.trim().to_string(),
            // AWS_SECURITY_TOKEN: the older name the CLI still reads.
            session_token: var("AWS_SESSION_TOKEN").or_else(|| var("AWS_SECURITY_TOKEN")).map(|t| t.trim().to_string()),
            source,
        })),
        (Some(_), None) => Err(Error::Credentials {
            source_name: source,
            reason: "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".to_string(),
        }),
        (None, Some(_)) => Err(Error::Credentials {
            source_name: "environment (AWS_SECRET_ACCESS_KEY)".to_string(),
            reason: "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".to_string(),
        }),
        (None, None) => Ok(None),
    }
}

/// The profile's keys: its `[name]` in the credentials file, else its section in the config file.
fn profile_credentials(
    name: &str,
    named_by: &str,
    (cred_path, cred): (&Path, Option<&Ini>),
    (conf_path, conf): (&Path, Option<&Ini>),
) -> Result<Credentials, Error> {
    let mut seen = Vec::new();
    if let Some(ini) = cred
        && ini.has(name)
    {
        let at = format!("{} [{name}]", cred_path.display());
        if let Some(c) = keys(ini, name, &at)? {
            return Ok(c);
        }
        seen.push((at, ini, name.to_string()));
    }
    if let Some(ini) = conf
        && let Some((section, at)) = config_section(ini, name)
    {
        let at = format!("{} {at}", conf_path.display());
        if let Some(c) = keys(ini, section, &at)? {
            return Ok(c);
        }
        seen.push((at, ini, section.to_string()));
    }

    let profile = if named_by.is_empty() { format!("profile {name}") } else { format!("profile {name} ({named_by})") };
    let looked = format!(
        "{} [{name}] and {} [{}]",
        cred_path.display(),
        conf_path.display(),
        if name == "default" { "default".to_string() } else { format!("profile {name}") }
    );
    if seen.is_empty() {
        let env_hint = if named_by == "--profile" { "" } else { "no AWS_ACCESS_KEY_ID in the environment, " };
        return Err(Error::Credentials {
            source_name: profile,
            reason: format!("{env_hint}no such profile: looked in {looked}"),
        });
    }
    // The profile exists but holds no keys: say what it holds instead.
    let (at, ini, section) = &seen[seen.len() - 1];
    let other = ["sso_session", "sso_start_url", "role_arn", "credential_process", "web_identity_token_file"]
        .into_iter()
        .find(|k| seen.iter().any(|(_, ini, s)| ini.get(s, k).is_some()));
    let reason = match other {
        Some(kind) => format!(
            "the profile uses {kind}, which berth does not run; export plain keys with \
             `eval \"$(aws configure export-credentials --profile {name} --format env)\"`"
        ),
        None if ini.get(section, "aws_access_key_id").is_some() => {
            "aws_access_key_id without aws_secret_access_key".to_string()
        }
        None => format!("no aws_access_key_id / aws_secret_access_key (looked in {looked})"),
    };
    Err(Error::Credentials { source_name: at.clone(), reason })
}

/// The config file's section of profile `name` (`[profile name]`; `[default]` for the default)
/// and how it is written.
fn config_section<'i>(ini: &'i Ini, name: &str) -> Option<(&'i str, String)> {
    let wanted = format!("profile {name}");
    if ini.has(&wanted) {
        return ini.sections.iter().find(|s| s.name == wanted).map(|s| (s.name.as_str(), format!("[{wanted}]")));
    }
    if name == "default" && ini.has("default") {
        return Some(("default", "[default]".to_string()));
    }
    None
}

/// The keys of `section`, if it has any; half a pair is an error.
fn keys(ini: &Ini, section: &str, at: &str) -> Result<Option<Credentials>, Error> {
    let id = ini.get(section, "aws_access_key_id");
    let secret = ini.get(section, "aws_secret_access_key");
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Some(Credentials {
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            session_token: ini
                .get(section, "aws_session_token")
                .or_else(|| ini.get(section, "aws_security_token"))
                .map(str::to_string),
            source: at.to_string(),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::Credentials {
            source_name: at.to_string(),
            reason: "aws_access_key_id without aws_secret_access_key".to_string(),
        }),
        (None, Some(_)) => Err(Error::Credentials {
            source_name: at.to_string(),
            reason: "aws_secret_access_key without aws_access_key_id".to_string(),
        }),
    }
}

/// `~/x` → `$HOME/x`, as the CLI expands the file variables.
fn expand_home(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ if p == "~" => home.map_or_else(|| PathBuf::from(p), Path::to_path_buf),
        _ => PathBuf::from(p),
    }
}

/// The INI dialect of the AWS CLI's files (Python's configparser as botocore uses it):
/// `[section]`, `key = value` or `key: value`, whole-line `#`/`;` comments, indented lines
/// continuing the value above (nested `s3 =` settings), a duplicate section or key an error.
struct Ini {
    sections: Vec<Section>,
}

struct Section {
    name: String,
    entries: Vec<(String, String)>,
}

impl Ini {
    /// The file parsed; `None` when it does not exist (the CLI treats that as empty).
    fn load(path: &Path) -> Result<Option<Ini>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|e| Error::Credentials {
                    source_name: path.display().to_string(),
                    reason: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
                })?;
                Ini::parse(&text).map(Some).map_err(|(line, reason)| Error::Credentials {
                    source_name: path.display().to_string(),
                    reason: format!("line {line}: {reason}"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Credentials { source_name: path.display().to_string(), reason: e.to_string() }),
        }
    }

    /// Parses `text`; an error is (line number from 1, why).
    fn parse(text: &str) -> Result<Ini, (usize, String)> {
        let mut sections: Vec<Section> = Vec::new();
        // Whether the last key line may take continuation lines (it is in a section).
        let mut last_key = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_end_matches('\r');
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if line.starts_with([' ', '\t']) && last_key {
                // A nested setting (`s3 =` then `  max_concurrent_requests = 10`): part of the
                // value above, which berth does not read.
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    return Err((n, format!("section header without ']': {trimmed}")));
                };
                // `[profile  prod]` and `[ profile prod ]` are `profile prod`, as botocore reads them.
                let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
                if name.is_empty() {
                    return Err((n, "empty section name".to_string()));
                }
                if sections.iter().any(|s| s.name == name) {
                    return Err((n, format!("section [{name}] appears twice")));
                }
                sections.push(Section { name, entries: Vec::new() });
                last_key = false;
                continue;
            }
            let Some(at) = trimmed.find(['=', ':']) else {
                return Err((n, format!("neither [section] nor key = value: {trimmed}")));
            };
            let Some(section) = sections.last_mut() else {
                return Err((n, "a key before any [section]".to_string()));
            };
            let key = trimmed[..at].trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err((n, "no key before '='".to_string()));
            }
            if section.entries.iter().any(|(k, _)| *k == key) {
                return Err((n, format!("key {key} appears twice in [{}]", section.name)));
            }
            section.entries.push((key, trimmed[at + 1..].trim().to_string()));
            last_key = true;
        }
        Ok(Ini { sections })
    }

    fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s.name == section)
    }

    /// A non-empty value of `key` in `section`.
    fn get(&self, section: &str, key: &str) -> Option<&str> {
        let s = self.sections.iter().find(|s| s.name == section)?;
        s.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A home with `.aws/credentials` and `.aws/config` (each written when given) and an
    /// environment of `vars` plus HOME.
    struct Home {
        dir: tempfile::TempDir,
        vars: HashMap<String, String>,
    }

    impl Home {
        fn new(credentials: Option<&str>, config: Option<&str>) -> Home {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join(".aws")).unwrap();
            if let Some(c) = credentials {
                std::fs::write(dir.path().join(".aws/credentials"), c).unwrap();
            }
            if let Some(c) = config {
                std::fs::write(dir.path().join(".aws/config"), c).unwrap();
            }
            let vars = HashMap::from([("HOME".to_string(), dir.path().display().to_string())]);
            Home { dir, vars }
        }
        fn var(mut self, k: &str, v: &str) -> Home {
            self.vars.insert(k.to_string(), v.to_string());
            self
        }
        fn path(&self, rel: &str) -> String {
            self.dir.path().join(rel).display().to_string()
        }
        fn find(&self, profile: Option<&str>, region: Option<&str>) -> Result<Found, Error> {
            find(profile, region, &|k| self.vars.get(k).cloned())
        }
    }

    const CREDS: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[prod]
aws_access_key_id=AKIDPROD
aws_secret_access_key=secret-prod
aws_session_token = token-prod
";
    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile prod]
region = us-west-2
s3 =
  max_concurrent_requests = 20

[profile onlyconfig]
aws_access_key_id = AKIDCONF
aws_secret_access_key = secret-conf
region = ap-south-1

[profile sso]
sso_session = corp
sso_account_id = 123456789012
";

    fn env_keys(h: Home) -> Home {
        h.var("AWS_ACCESS_KEY_ID", "AKIDENV").var("AWS_SECRET_ACCESS_KEY", "secret-env")
    }

    #[test]
    fn environment_wins_without_profile() {
        let h = env_keys(Home::new(Some(CREDS), Some(CONFIG))).var("AWS_PROFILE", "prod");
        let f = h.find(None, None).unwrap();
        assert_eq!(f.credentials.access_key_id, "AKIDENV");
        assert_eq!(f.credentials.secret_access_key, "secret-env");
        assert_eq!(f.credentials.session_token, None);
        assert_eq!(f.credentials.source, "environment (AWS_ACCESS_KEY_ID)");
        // The region still comes from the profile AWS_PROFILE names, as the CLI does.
        assert_eq!(f.region.as_deref(), Some("us-west-2"));
        assert_eq!(f.region_source, Some(format!("{} [profile prod]", h.path(".aws/config"))));
    }

    #[test]
    fn explicit_profile_reads_the_files_not_the_environment() {
        let h = env_keys(Home::new(Some(CREDS), Some(CONFIG)));
        let f = h.find(Some("prod"), None).unwrap();
        assert_eq!(f.credentials.access_key_id, "AKIDPROD");
        assert_eq!(f.credentials.session_token.as_deref(), Some("token-prod"));
        assert_eq!(f.credentials.source, format!("{} [prod]", h.path(".aws/credentials")));
        // Then the config file, `[profile name]`, when the credentials file lacks the profile.
        let f = h.find(Some("onlyconfig"), None).unwrap();
        assert_eq!(f.credentials.access_key_id, "AKIDCONF");
        assert_eq!(f.credentials.source, format!("{} [profile onlyconfig]", h.path(".aws/config")));
        assert_eq!(f.region.as_deref(), Some("ap-south-1"));
    }

    #[test]
    fn aws_profile_and_default() {
        let h = Home::new(Some(CREDS), Some(CONFIG)).var("AWS_PROFILE", "prod");
        let f = h.find(None, None).unwrap();
        assert_eq!(f.credentials.access_key_id, "AKIDPROD");
        let h = Home::new(Some(CREDS), Some(CONFIG));
        let f = h.find(None, None).unwrap();
        assert_eq!(f.credentials.access_key_id, "AKIDDEFAULT");
        assert_eq!(f.credentials.source, format!("{} [default]", h.path(".aws/credentials")));
        assert_eq!(f.region.as_deref(), Some("eu-west-1"));
        assert_eq!(f.region_source, Some(format!("{} [default]", h.path(".aws/config"))));
    }

    #[test]
    fn file_locations_from_the_environment() {
        let h = Home::new(None, None);
        std::fs::write(h.dir.path().join("c"), "[x]\naws_access_key_id=A\naws_secret_access_key=S\n").unwrap();
        std::fs::write(h.dir.path().join("k"), "[profile x]\nregion=sa-east-1\n").unwrap();
        let k = h.path("k");
        let h = h.var("AWS_SHARED_CREDENTIALS_FILE", "~/c").var("AWS_CONFIG_FILE", &k);
        let f = h.find(Some("x"), None).unwrap();
        assert_eq!(f.credentials.source, format!("{} [x]", h.path("c")));
        assert_eq!(f.region.as_deref(), Some("sa-east-1"));
    }

    #[test]
    fn missing_profile_names_the_files_and_the_profile() {
        let h = Home::new(Some(CREDS), Some(CONFIG));
        let e = h.find(Some("nope"), None).unwrap_err();
        let Error::Credentials { source_name, reason } = &e else { panic!("{e:?}") };
        assert_eq!(source_name, "profile nope (--profile)");
        assert!(reason.contains(&format!("{} [nope]", h.path(".aws/credentials"))), "{reason}");
        assert!(reason.contains(&format!("{} [profile nope]", h.path(".aws/config"))), "{reason}");
        // No files at all and nothing in the environment: the default profile, the same message.
        let h = Home::new(None, None);
        let e = h.find(None, None).unwrap_err().to_string();
        assert!(e.starts_with("credentials from profile default: no AWS_ACCESS_KEY_ID in the environment"), "{e}");
        assert!(e.contains(&h.path(".aws/credentials")), "{e}");
    }

    #[test]
    fn profiles_without_keys() {
        let h = Home::new(Some(CREDS), Some(CONFIG));
        let e = h.find(Some("sso"), None).unwrap_err().to_string();
        assert!(e.contains("[profile sso]") && e.contains("sso_session") && e.contains("export-credentials"), "{e}");
        let h = Home::new(Some("[half]\naws_access_key_id = A\n"), None);
        let e = h.find(Some("half"), None).unwrap_err().to_string();
        assert!(e.contains("[half]") && e.contains("without aws_secret_access_key"), "{e}");
        let h = Home::new(None, None).var("AWS_ACCESS_KEY_ID", "A");
        let e = h.find(None, None).unwrap_err().to_string();
        assert!(e.contains("environment (AWS_ACCESS_KEY_ID)") && e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
    }

    #[test]
    fn malformed_file_names_file_and_line() {
        for (text, line, why) in [
            ("[default]\naws_access_key_id = A\nthis is not ini\n", 3, "neither [section] nor key = value"),
            ("aws_access_key_id = A\n", 1, "before any [section]"),
            ("[default\n", 1, "without ']'"),
            ("[a]\nk=1\n\n[a]\n", 4, "appears twice"),
            ("[a]\nk=1\nk=2\n", 3, "key k appears twice"),
        ] {
            let h = Home::new(Some(text), None);
            let e = h.find(Some("a"), None).unwrap_err();
            let Error::Credentials { source_name, reason } = &e else { panic!("{e:?}") };
            assert_eq!(*source_name, h.path(".aws/credentials"), "{text:?}");
            assert!(reason.starts_with(&format!("line {line}: ")) && reason.contains(why), "{text:?}: {reason}");
        }
        // A broken file is not read when the environment has keys and a region.
        let h = env_keys(Home::new(Some("garbage\n"), None)).var("AWS_REGION", "eu-north-1");
        assert_eq!(h.find(None, None).unwrap().credentials.access_key_id, "AKIDENV");
    }

    #[test]
    fn region_precedence() {
        let h = env_keys(Home::new(Some(CREDS), Some(CONFIG)));
        let region = |h: &Home, r: Option<&str>| {
            let f = h.find(None, r).unwrap();
            (f.region.unwrap(), f.region_source.unwrap())
        };
        assert_eq!(region(&h, None), ("eu-west-1".to_string(), format!("{} [default]", h.path(".aws/config"))));
        let h = h.var("AWS_DEFAULT_REGION", "us-east-2");
        assert_eq!(region(&h, None), ("us-east-2".to_string(), "environment (AWS_DEFAULT_REGION)".to_string()));
        let h = h.var("AWS_REGION", "ca-central-1");
        assert_eq!(region(&h, None), ("ca-central-1".to_string(), "environment (AWS_REGION)".to_string()));
        assert_eq!(region(&h, Some("me-south-1")), ("me-south-1".to_string(), "--region".to_string()));
        // None anywhere: no region (the caller asks for --region).
        let h = env_keys(Home::new(None, None));
        assert_eq!(h.find(None, None).unwrap().region, None);
    }

    #[test]
    fn session_token_from_the_environment() {
        let h = env_keys(Home::new(None, None)).var("AWS_SESSION_TOKEN", "tok");
        assert_eq!(h.find(None, None).unwrap().credentials.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let h = env_keys(Home::new(None, None)).var("AWS_SESSION_TOKEN", "tok-secret");
        let f = h.find(None, None).unwrap();
        let shown = format!("{f:?}");
        assert!(shown.contains("AKIDENV"), "{shown}");
        assert!(!shown.contains("secret-env") && !shown.contains("tok-secret"), "{shown}");
    }

    #[test]
    fn ini_dialect() {
        let ini = Ini::parse("[ profile  a ]\r\nk : v\n; c\n# c\nnested =\n\tx = 1\nempty =\n").unwrap();
        assert!(ini.has("profile a"));
        assert_eq!(ini.get("profile a", "k"), Some("v"));
        assert_eq!(ini.get("profile a", "empty"), None);
        assert_eq!(ini.get("profile a", "x"), None);
    }
}
