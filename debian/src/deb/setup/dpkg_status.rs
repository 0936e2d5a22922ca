//! dpkg's `/var/lib/dpkg/status`, so scanners and `dpkg -l` see what is installed.

use std::collections::BTreeMap;

use berth_fstree::{Metadata, Tree};

use super::{SetupError, put_file};
use crate::deb::Control;

/// Writes `/var/lib/dpkg/status` (0644): each package's control paragraph with
/// `Status: install ok installed` after its `Package` line, sorted by name and architecture
/// (one paragraph per name and architecture). Returns how many paragraphs were written.
pub fn dpkg_status<'a>(
    tree: &mut Tree,
    packages: impl IntoIterator<Item = &'a Control>,
    mtime: i64,
) -> Result<usize, SetupError> {
    let mut sorted: BTreeMap<(String, String), &Control> = BTreeMap::new();
    for c in packages {
        sorted.insert((c.package().to_owned(), c.architecture().to_owned()), c);
    }
    let mut out = String::new();
    for c in sorted.values() {
        let mut status_done = false;
        for line in c.raw.lines().filter(|l| !l.trim().is_empty()) {
            if line.to_ascii_lowercase().starts_with("status:") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if !status_done && line.to_ascii_lowercase().starts_with("package:") {
                out.push_str("Status: install ok installed\n");
                status_done = true;
            }
        }
        out.push('\n');
    }
    put_file(tree, "/var/lib/dpkg/status", out.into_bytes(), Metadata::root(0o644, mtime))?;
    Ok(sorted.len())
}
