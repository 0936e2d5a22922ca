//! The CA bundle: what ca-certificates' `postinst` (`update-ca-certificates`) would write.

use berth_fstree::{Metadata, Tree};

use super::{SetupError, is_dir, put_file, put_symlink, read_file};
use crate::deb::path;

/// Where [`ca_bundle`] took the list of certificates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// `/etc/ca-certificates.conf`.
    Conf,
    /// Every `*.crt` under `/usr/share/ca-certificates` (what ca-certificates' `postinst` would
    /// have written into a new `ca-certificates.conf`).
    AllShipped,
    /// Neither the file nor the directory exists: ca-certificates is not installed and nothing
    /// was written.
    NotInstalled,
}

/// What [`ca_bundle`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaReport {
    pub source: CaSource,
    /// Certificates in the bundle, in its order (paths in the tree).
    pub certificates: Vec<String>,
    /// Listed in `ca-certificates.conf` but absent (skipped, as update-ca-certificates does).
    pub missing: Vec<String>,
    /// Always false: OpenSSL subject-hash links are not made (see the module table).
    pub hash_links: bool,
}

const CA_DIR: &str = "/usr/share/ca-certificates";
const CA_LOCAL_DIR: &str = "/usr/local/share/ca-certificates";
const CA_CONF: &str = "/etc/ca-certificates.conf";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What `update-ca-certificates` does, minus hooks and hash links: concatenates the selected
/// certificates (each ending in a newline) into `/etc/ssl/certs/ca-certificates.crt` (0644) and
/// links `/etc/ssl/certs/NAME.pem` to each. Selected are the lines of `/etc/ca-certificates.conf`
/// not starting with `#` or `!` (paths under `/usr/share/ca-certificates`), or, without that
/// file, every `*.crt` there in byte order; then every `*.crt` under
/// `/usr/local/share/ca-certificates`, sorted.
pub fn ca_bundle(tree: &mut Tree, mtime: i64) -> Result<CaReport, SetupError> {
    let mut selected: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    let source = if let Some(conf) = read_file(tree, CA_CONF) {
        for line in String::from_utf8_lossy(&conf).lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let path = format!("{CA_DIR}/{line}");
            if read_file(tree, &path).is_some() { selected.push(path) } else { missing.push(path) }
        }
        CaSource::Conf
    } else if is_dir(tree, CA_DIR) {
        selected = crt_files(tree, CA_DIR);
        CaSource::AllShipped
    } else {
        return Ok(CaReport { source: CaSource::NotInstalled, certificates: Vec::new(), missing, hash_links: false });
    };
    selected.extend(crt_files(tree, CA_LOCAL_DIR));

    let mut bundle = Vec::new();
    for cert in &selected {
        let mut pem = read_file(tree, cert).unwrap_or_default();
        // update-ca-certificates adds a missing final newline (Debian #635570).
        if !pem.is_empty() && !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend_from_slice(&pem);
        let base = cert.rsplit('/').next().unwrap_or(cert);
        let base = base.strip_suffix(".crt").unwrap_or(base);
        let pem_name: String = base
            .chars()
            .map(|c| match c {
                ' ' | ',' => '_',
                '(' | ')' => '=',
                c => c,
            })
            .collect();
        put_symlink(tree, &format!("/etc/ssl/certs/{pem_name}.pem"), cert, mtime)?;
    }
    put_file(tree, CA_BUNDLE, bundle, Metadata::root(0o644, mtime))?;
    Ok(CaReport { source, certificates: selected, missing, hash_links: false })
}

/// Absolute paths of the regular files (symlinks followed) named `*.crt` below `dir`, sorted.
fn crt_files(tree: &mut Tree, dir: &str) -> Vec<String> {
    let Some((id, _)) = path::follow(tree, dir.trim_start_matches('/').as_bytes()) else { return Vec::new() };
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_owned(), id)];
    while let Some((prefix, dir_id)) = stack.pop() {
        let children: Vec<(String, berth_fstree::NodeId)> =
            tree.entries(dir_id).map(|(n, c)| (format!("{prefix}/{}", String::from_utf8_lossy(n)), c)).collect();
        for (p, c) in children {
            if tree.node(c).kind.is_dir() {
                stack.push((p, c));
            } else if p.ends_with(".crt") && read_file(tree, &p).is_some() {
                found.push(p);
            }
        }
    }
    found.sort();
    found
}
