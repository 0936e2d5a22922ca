//! Reading the host's apt sources: deb822 `.sources` files and one-line `.list` files.
//!
//! This module owns the question "which repositories, suites and components, checked against
//! which keys": it reads `<apt_root>/etc/apt/sources.list` and then
//! `<apt_root>/etc/apt/sources.list.d/*.{list,sources}` in file-name order, as apt does, and
//! returns one [`Source`] per (URI, suite) in that order. Paths named inside the configuration
//! (`Signed-By`) are taken relative to `apt_root`, like a chroot, so tests can point the whole
//! configuration at a temporary directory. Nothing here touches the network.

use std::path::{Path, PathBuf};

use super::deb822;
use super::error::ArchiveError;

/// Where the keys that must have signed a source's `InRelease` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A keyring file (binary OpenPGP or ASCII-armored), already resolved under the apt root.
    File(PathBuf),
    /// An ASCII-armored key block written inline in a `.sources` file's `Signed-By`.
    Inline {
        /// The armored key block.
        armored: String,
        /// The `.sources` file it was written in (for error messages).
        origin: PathBuf,
    },
}

impl KeySource {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(path) => path.display().to_string(),
            KeySource::Inline { origin, .. } => format!("inline Signed-By key in {}", origin.display()),
        }
    }
}

/// One repository suite to fetch indexes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Base URI, without a trailing slash (e.g. `http://host/debian`).
    pub uri: String,
    /// Suite or codename, as written (`bookworm`, `bookworm-security`).
    pub suite: String,
    /// Components (`main`, ...).
    pub components: Vec<String>,
    /// The keys its `InRelease` must be signed by. When the source names none (no `Signed-By`),
    /// this is apt's default: `etc/apt/trusted.gpg` and `etc/apt/trusted.gpg.d/*.{gpg,asc}`.
    pub signed_by: Vec<KeySource>,
    /// The file and line this source was read from.
    pub origin: PathBuf,
    /// 1-based line in `origin`.
    pub line: usize,
}

impl Source {
    /// `<uri>/dists/<suite>`, the directory holding `InRelease` and the indexes.
    pub fn dists_url(&self) -> String {
        format!("{}/dists/{}", self.uri, self.suite)
    }

    /// A description for messages: `uri suite`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.uri, self.suite)
    }
}

/// Reads every enabled `deb` source for `arch` under `apt_root`, in apt's order.
///
/// Errors when a file is malformed or when no source is left.
pub fn load_sources(apt_root: &Path, arch: &str) -> Result<Vec<Source>, ArchiveError> {
    let apt_dir = apt_root.join("etc/apt");
    let mut files = Vec::new();
    let main_list = apt_dir.join("sources.list");
    if main_list.is_file() {
        files.push(main_list);
    }
    let dir = apt_dir.join("sources.list.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| ArchiveError::io(&dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // apt ignores everything else (`.save`, `.disabled`, editor backups).
                if (name.ends_with(".list") || name.ends_with(".sources")) && !name.starts_with('.') {
                    names.push(name);
                }
            }
            names.sort();
            files.extend(names.into_iter().map(|n| dir.join(n)));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io(&dir, e)),
    }

    let mut sources = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ArchiveError::io(&file, e))?;
        let parsed = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text, &file, apt_root, arch)?
        } else {
            parse_one_line(&text, &file, apt_root, arch)?
        };
        sources.extend(parsed);
    }
    if sources.is_empty() {
        return Err(ArchiveError::NoSources { root: apt_root.to_path_buf(), arch: arch.to_string() });
    }
    // Default keyrings are looked up only for sources that name none.
    for source in &mut sources {
        if source.signed_by.is_empty() {
            source.signed_by = default_keyrings(apt_root)?;
        }
    }
    Ok(sources)
}

/// apt's fallback trust store, used for sources without `Signed-By`.
fn default_keyrings(apt_root: &Path) -> Result<Vec<KeySource>, ArchiveError> {
    let mut keys = Vec::new();
    let legacy = apt_root.join("etc/apt/trusted.gpg");
    if legacy.is_file() {
        keys.push(KeySource::File(legacy));
    }
    let dir = apt_root.join("etc/apt/trusted.gpg.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut found = Vec::new();
            for entry in entries {
                let path = entry.map_err(|e| ArchiveError::io(&dir, e))?.path();
                if path.extension().is_some_and(|e| e == "gpg" || e == "asc") {
                    found.push(path);
                }
            }
            found.sort();
            keys.extend(found.into_iter().map(KeySource::File));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io(&dir, e)),
    }
    Ok(keys)
}

/// Parses a deb822 `.sources` file. `file` is only used in messages; `apt_root` anchors
/// `Signed-By` paths.
pub fn parse_deb822(text: &str, file: &Path, apt_root: &Path, arch: &str) -> Result<Vec<Source>, ArchiveError> {
    let err = |line: usize, msg: String| ArchiveError::Sources { file: file.to_path_buf(), line, msg };
    let stanzas = deb822::parse(text).map_err(|(line, msg)| err(line, msg))?;
    let mut out = Vec::new();
    for stanza in stanzas {
        let line = stanza.line;
        let types = stanza.get("Types").ok_or_else(|| err(line, "missing `Types`".into()))?;
        if !types.split_whitespace().any(|t| t == "deb") {
            continue; // deb-src only
        }
        if let Some(enabled) = stanza.get("Enabled")
            && !parse_bool(enabled).ok_or_else(|| err(line, format!("bad `Enabled: {enabled}`")))?
        {
            continue;
        }
        if let Some(archs) = stanza.get("Architectures")
            && !archs.split_whitespace().any(|a| a == arch)
        {
            continue;
        }
        let uris: Vec<&str> = stanza.get("URIs").unwrap_or("").split_whitespace().collect();
        if uris.is_empty() {
            return Err(err(line, "missing `URIs`".into()));
        }
        let suites: Vec<&str> = stanza.get("Suites").unwrap_or("").split_whitespace().collect();
        if suites.is_empty() {
            return Err(err(line, "missing `Suites`".into()));
        }
        let components: Vec<String> =
            stanza.get("Components").unwrap_or("").split_whitespace().map(str::to_string).collect();
        let signed_by = match stanza.field("Signed-By") {
            Some(f) => parse_signed_by(&f.value, file, apt_root).map_err(|m| err(f.line, m))?,
            None => Vec::new(),
        };
        for uri in &uris {
            let uri = check_uri(uri).map_err(|m| err(line, m))?;
            for suite in &suites {
                check_suite(suite, &components).map_err(|m| err(line, m))?;
                out.push(Source {
                    uri: uri.clone(),
                    suite: suite.to_string(),
                    components: components.clone(),
                    signed_by: signed_by.clone(),
                    origin: file.to_path_buf(),
                    line,
                });
            }
        }
    }
    Ok(out)
}

/// Parses a one-line-style `.list` file: `deb [opt=val ...] uri suite component...`.
pub fn parse_one_line(text: &str, file: &Path, apt_root: &Path, arch: &str) -> Result<Vec<Source>, ArchiveError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |msg: String| ArchiveError::Sources { file: file.to_path_buf(), line, msg };
        // A `#` starts a comment anywhere on the line, as in apt.
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (kind, rest) = content.split_once(char::is_whitespace).unwrap_or((content, ""));
        match kind {
            "deb" => {}
            "deb-src" => continue,
            other => return Err(err(format!("unknown type `{other}` (expected `deb` or `deb-src`)"))),
        }
        let mut rest = rest.trim_start();
        let mut archs: Option<Vec<String>> = None;
        let mut signed_by = Vec::new();
        if let Some(after) = rest.strip_prefix('[') {
            let Some((opts, after)) = after.split_once(']') else {
                return Err(err("unterminated `[` option list".into()));
            };
            rest = after.trim_start();
            for opt in opts.split_whitespace() {
                let Some((key, value)) = opt.split_once('=') else {
                    return Err(err(format!("bad option `{opt}` (expected key=value)")));
                };
                // `arch+=`/`arch-=` adjust apt's default list; with one target arch, `+=` is
                // the same as `=` and `-=` removes it.
                match key {
                    "arch" | "arch+" => archs = Some(value.split(',').map(str::to_string).collect()),
                    "arch-" if value.split(',').any(|a| a == arch) => archs = Some(Vec::new()),
                    "signed-by" => signed_by = parse_signed_by(value, file, apt_root).map_err(&err)?,
                    // Other options (lang, target, trusted, ...) do not change what is fetched
                    // for one architecture; `trusted=yes` in particular is NOT honoured: every
                    // InRelease is verified.
                    _ => {}
                }
            }
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or_else(|| err("missing URI".into()))?;
        let suite = words.next().ok_or_else(|| err("missing suite".into()))?;
        let components: Vec<String> = words.map(str::to_string).collect();
        if archs.as_ref().is_some_and(|a| !a.iter().any(|a| a == arch)) {
            continue;
        }
        let uri = check_uri(uri).map_err(&err)?;
        check_suite(suite, &components).map_err(&err)?;
        out.push(Source { uri, suite: suite.to_string(), components, signed_by, origin: file.to_path_buf(), line });
    }
    Ok(out)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Some(true),
        "no" | "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

fn check_uri(uri: &str) -> Result<String, String> {
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(format!("unsupported URI `{uri}` (only http:// and https:// mirrors)"));
    }
    Ok(uri.trim_end_matches('/').to_string())
}

fn check_suite(suite: &str, components: &[String]) -> Result<(), String> {
    if suite.ends_with('/') {
        return Err(format!("flat repository `{suite}` is not supported (needs dists/<suite>)"));
    }
    if components.is_empty() {
        return Err(format!("suite `{suite}` has no components"));
    }
    Ok(())
}

/// `Signed-By`: an inline armored key block, or a list of absolute keyring paths (separated by
/// commas or spaces) that are resolved under `apt_root`.
fn parse_signed_by(value: &str, file: &Path, apt_root: &Path) -> Result<Vec<KeySource>, String> {
    if value.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
        return Ok(vec![KeySource::Inline { armored: value.to_string(), origin: file.to_path_buf() }]);
    }
    let mut keys = Vec::new();
    for item in value.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        if let Some(rel) = item.strip_prefix('/') {
            keys.push(KeySource::File(apt_root.join(rel)));
        } else if item.trim_end_matches('!').chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "Signed-By fingerprint `{item}` is not supported; name a keyring file (e.g. /usr/share/keyrings/...)"
            ));
        } else {
            return Err(format!("Signed-By `{item}` must be an absolute keyring path"));
        }
    }
    if keys.is_empty() {
        return Err("empty Signed-By".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/r";

    fn deb822(text: &str) -> Result<Vec<Source>, ArchiveError> {
        parse_deb822(text, Path::new("/r/etc/apt/sources.list.d/t.sources"), Path::new(ROOT), "amd64")
    }

    fn one_line(text: &str) -> Result<Vec<Source>, ArchiveError> {
        parse_one_line(text, Path::new("/r/etc/apt/sources.list"), Path::new(ROOT), "amd64")
    }

    fn pairs(sources: &[Source]) -> Vec<(String, String, String)> {
        sources.iter().map(|s| (s.uri.clone(), s.suite.clone(), s.components.join(" "))).collect()
    }

    #[test]
    fn deb822_multi_uri_suite_in_order() {
        let text = "\
# a comment
Types: deb deb-src
URIs: http://a.invalid/debian/ http://b.invalid/debian
Suites: stable stable-updates
Components: main contrib
Signed-By: /usr/share/keyrings/k.gpg

Types: deb-src
URIs: http://c.invalid/debian
Suites: stable
Components: main

Types: deb
URIs: http://d.invalid/debian
Suites: stable
Components: main
Enabled: no

Types: deb
URIs: http://e.invalid/debian
Suites: stable
Components: main
Architectures: arm64

Types: deb
URIs: http://f.invalid/x
Suites: s
Components: c
Architectures: arm64 amd64
";
        let s = deb822(text).unwrap();
        assert_eq!(
            pairs(&s),
            vec![
                ("http://a.invalid/debian".into(), "stable".into(), "main contrib".into()),
                ("http://a.invalid/debian".into(), "stable-updates".into(), "main contrib".into()),
                ("http://b.invalid/debian".into(), "stable".into(), "main contrib".into()),
                ("http://b.invalid/debian".into(), "stable-updates".into(), "main contrib".into()),
                ("http://f.invalid/x".into(), "s".into(), "c".into()),
            ]
        );
        assert_eq!(s[0].signed_by, vec![KeySource::File("/r/usr/share/keyrings/k.gpg".into())]);
        assert_eq!(s[0].line, 2);
        assert!(s[4].signed_by.is_empty());
        assert_eq!(s[0].dists_url(), "http://a.invalid/debian/dists/stable");
    }

    #[test]
    fn deb822_inline_key() {
        let text = "Types: deb\nURIs: http://a.invalid/\nSuites: s\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abcd\n -----END PGP PUBLIC KEY BLOCK-----\n";
        let s = deb822(text).unwrap();
        match &s[0].signed_by[..] {
            [KeySource::Inline { armored, .. }] => {
                assert!(armored.contains("\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabcd\n-----END"), "{armored:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deb822_errors_name_file_and_line() {
        let e = deb822("Types: deb\nSuites: s\nComponents: main\n\nTypes: deb\nURIs: http://x/\nComponents: m\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/r/etc/apt/sources.list.d/t.sources:1: missing `URIs`");
        let e = deb822("Types: deb\nURIs: http://x/\nSuites: s\nComponents: m\nEnabled: maybe\n").unwrap_err();
        assert!(e.to_string().contains(":1: bad `Enabled: maybe`"), "{e}");
        let e = deb822("Types: deb\nURIs: ftp://x/\nSuites: s\nComponents: m\n").unwrap_err();
        assert!(e.to_string().contains("unsupported URI `ftp://x/`"), "{e}");
        let e = deb822("Types: deb\nURIs: http://x/\nSuites: s\nComponents: m\nSigned-By: 0123ABCD\n").unwrap_err();
        assert!(e.to_string().contains(":5: Signed-By fingerprint `0123ABCD` is not supported"), "{e}");
    }

    #[test]
    fn one_line_options_comments_and_types() {
        let text = "\
# deb http://commented.invalid/ s main
deb http://a.invalid/debian stable main contrib # trailing comment
deb-src http://a.invalid/debian stable main
deb [ arch=amd64,i386 signed-by=/etc/k.asc ] http://b.invalid/ stable main

deb [arch=arm64] http://c.invalid/ stable main
deb [signed-by=/k1.gpg,/k2.gpg trusted=yes] https://d.invalid/x/ s c1
deb [arch-=amd64] http://e.invalid/ stable main
";
        let s = one_line(text).unwrap();
        assert_eq!(
            pairs(&s),
            vec![
                ("http://a.invalid/debian".into(), "stable".into(), "main contrib".into()),
                ("http://b.invalid".into(), "stable".into(), "main".into()),
                ("https://d.invalid/x".into(), "s".into(), "c1".into()),
            ]
        );
        assert_eq!(s[0].line, 2);
        assert_eq!(s[1].signed_by, vec![KeySource::File("/r/etc/k.asc".into())]);
        assert_eq!(s[2].signed_by, vec![KeySource::File("/r/k1.gpg".into()), KeySource::File("/r/k2.gpg".into())]);
    }

    #[test]
    fn one_line_errors() {
        let e = one_line("deb [arch=amd64 http://a/ s main\n").unwrap_err().to_string();
        assert_eq!(e, "/r/etc/apt/sources.list:1: unterminated `[` option list");
        let e = one_line("\n\ndeb http://a/ stable\n").unwrap_err().to_string();
        assert_eq!(e, "/r/etc/apt/sources.list:3: suite `stable` has no components");
        let e = one_line("deb http://a/ ./\n").unwrap_err().to_string();
        assert!(e.contains("flat repository"), "{e}");
        let e = one_line("rpm http://a/ s m\n").unwrap_err().to_string();
        assert!(e.contains("unknown type `rpm`"), "{e}");
    }

    #[test]
    fn load_orders_files_and_falls_back_to_trusted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let apt = dir.path().join("etc/apt");
        std::fs::create_dir_all(apt.join("sources.list.d")).unwrap();
        std::fs::create_dir_all(apt.join("trusted.gpg.d")).unwrap();
        std::fs::write(apt.join("trusted.gpg.d/b.asc"), "").unwrap();
        std::fs::write(apt.join("trusted.gpg.d/a.gpg"), "").unwrap();
        std::fs::write(apt.join("trusted.gpg.d/ignored.txt"), "").unwrap();
        std::fs::write(apt.join("sources.list"), "deb http://zero.invalid/ s main\n").unwrap();
        std::fs::write(
            apt.join("sources.list.d/b.sources"),
            "Types: deb\nURIs: http://two.invalid/\nSuites: s\nComponents: main\nSigned-By: /k.gpg\n",
        )
        .unwrap();
        std::fs::write(apt.join("sources.list.d/a.list"), "deb http://one.invalid/ s main\n").unwrap();
        std::fs::write(apt.join("sources.list.d/c.list.disabled"), "deb http://no.invalid/ s main\n").unwrap();
        std::fs::write(apt.join("sources.list.d/d.sources.save"), "garbage").unwrap();
        let s = load_sources(dir.path(), "amd64").unwrap();
        let uris: Vec<&str> = s.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(uris, ["http://zero.invalid", "http://one.invalid", "http://two.invalid"]);
        assert_eq!(
            s[0].signed_by,
            vec![KeySource::File(apt.join("trusted.gpg.d/a.gpg")), KeySource::File(apt.join("trusted.gpg.d/b.asc"))]
        );
        assert_eq!(s[2].signed_by, vec![KeySource::File(dir.path().join("k.gpg"))]);

        let empty = tempfile::tempdir().unwrap();
        let e = load_sources(empty.path(), "amd64").unwrap_err().to_string();
        assert!(e.starts_with("no enabled `deb` source for amd64"), "{e}");
    }
}
