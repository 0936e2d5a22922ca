//! Berth's `/usr/lib/os-release` in place of Debian's.

use berth_fstree::{Metadata, Tree};

use super::{SetupError, invalid, put_file, put_symlink};

/// Berth's identity for `os-release` (os-release(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsRelease {
    /// `NAME`, for example `Berth`.
    pub name: String,
    /// `VERSION_ID`: lower-case letters, digits, `.`, `_`, `-`.
    pub version_id: String,
    /// `PRETTY_NAME`; `None` gives `NAME VERSION_ID`.
    pub pretty_name: Option<String>,
    /// `BUILD_ID`: identifies this image build (no whitespace).
    pub build_id: String,
}

/// Writes `/usr/lib/os-release` (0644) and `/etc/os-release -> ../usr/lib/os-release`, replacing
/// Debian's from base-files: `NAME`, `ID=berth`, `ID_LIKE=debian`, `VERSION_ID`, `PRETTY_NAME`,
/// `BUILD_ID`.
pub fn os_release(tree: &mut Tree, os: &OsRelease, mtime: i64) -> Result<(), SetupError> {
    if os.version_id.is_empty()
        || !os.version_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(invalid(format!("VERSION_ID `{}`", os.version_id), "must be non-empty [a-z0-9._-]"));
    }
    if os.build_id.is_empty() || os.build_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("BUILD_ID `{}`", os.build_id), "must be non-empty, without whitespace"));
    }
    let pretty = os.pretty_name.clone().unwrap_or_else(|| format!("{} {}", os.name, os.version_id));
    for (key, v) in [("NAME", &os.name), ("PRETTY_NAME", &pretty)] {
        if v.is_empty() || v.chars().any(char::is_control) {
            return Err(invalid(format!("{key} `{v}`"), "must be non-empty, without control characters"));
        }
    }
    let text = format!(
        "NAME={}\nID=berth\nID_LIKE=debian\nVERSION_ID={}\nPRETTY_NAME={}\nBUILD_ID={}\n",
        quote(&os.name),
        quote(&os.version_id),
        quote(&pretty),
        quote(&os.build_id),
    );
    put_file(tree, "/usr/lib/os-release", text.into_bytes(), Metadata::root(0o644, mtime))?;
    put_symlink(tree, "/etc/os-release", "../usr/lib/os-release", mtime)
}

/// A shell double-quoted string, as os-release(5) asks.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        assert_eq!(quote(r#"a "b" $c"#), r#""a \"b\" \$c""#);
    }
}
