//! The control archive of a `.deb`: the `control` paragraph, `conffiles`, and which maintainer
//! scripts the package carries (they are never run; the builder reports them as skipped).

use std::fmt;

/// A package's `control` paragraph (deb-control(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// Every field in file order: name as written, value with continuation lines joined by `\n`
    /// (each continuation line's single leading space removed).
    pub fields: Vec<(String, String)>,
    /// The paragraph as it was in the file, for writing the dpkg status database.
    pub raw: String,
}

impl Control {
    /// Parses one deb822 paragraph; `Package`, `Version` and `Architecture` must be present.
    pub fn parse(text: &str) -> Result<Control, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                if fields.is_empty() {
                    continue;
                }
                // dpkg-deb allows nothing after the paragraph but blank lines.
                if text.lines().skip(n).any(|l| !l.trim().is_empty()) {
                    return Err("more than one paragraph".into());
                }
                break;
            }
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = fields.last_mut() else {
                    return Err(format!("line {}: continuation line before any field", n + 1));
                };
                value.push('\n');
                value.push_str(&line[1..]);
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("line {}: `{line}` is not a `Field: value` line", n + 1));
            };
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("line {}: bad field name `{name}`", n + 1));
            }
            fields.push((name.to_owned(), value.trim().to_owned()));
        }
        let control = Control { fields, raw: text.trim().to_owned() + "\n" };
        for required in ["Package", "Version", "Architecture"] {
            if control.field(required).is_none_or(str::is_empty) {
                return Err(format!("no `{required}` field"));
            }
        }
        Ok(control)
    }

    /// A field's value; names compare case-insensitively, as deb822 says.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn package(&self) -> &str {
        self.field("Package").unwrap_or_default()
    }

    pub fn version(&self) -> &str {
        self.field("Version").unwrap_or_default()
    }

    pub fn architecture(&self) -> &str {
        self.field("Architecture").unwrap_or_default()
    }

    /// `Depends` as written (the resolver parses relations), if present.
    pub fn depends(&self) -> Option<&str> {
        self.field("Depends")
    }

    pub fn pre_depends(&self) -> Option<&str> {
        self.field("Pre-Depends")
    }

    pub fn multi_arch(&self) -> Option<&str> {
        self.field("Multi-Arch")
    }

    /// Package names in the `Replaces` field, without version or architecture qualifiers.
    pub fn replaces(&self) -> Vec<&str> {
        relation_names(self.field("Replaces").unwrap_or_default())
    }
}

/// The package names a relation field mentions (`a (>= 1), b:any | c` gives `a`, `b`, `c`).
pub fn relation_names(field: &str) -> Vec<&str> {
    field
        .split([',', '|'])
        .filter_map(|alt| {
            let name = alt.trim().split(|c: char| c.is_whitespace() || c == '(' || c == ':' || c == '[').next()?;
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The maintainer scripts dpkg knows (deb-preinst(5) and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScriptKind {
    /// debconf's `config` script (run before `preinst` by debconf).
    Config,
    Preinst,
    Postinst,
    Prerm,
    Postrm,
}

impl ScriptKind {
    pub const ALL: [ScriptKind; 5] =
        [ScriptKind::Config, ScriptKind::Preinst, ScriptKind::Postinst, ScriptKind::Prerm, ScriptKind::Postrm];

    /// The member name in the control archive.
    pub fn file_name(self) -> &'static str {
        match self {
            ScriptKind::Config => "config",
            ScriptKind::Preinst => "preinst",
            ScriptKind::Postinst => "postinst",
            ScriptKind::Prerm => "prerm",
            ScriptKind::Postrm => "postrm",
        }
    }

    pub(super) fn from_file_name(name: &str) -> Option<ScriptKind> {
        ScriptKind::ALL.into_iter().find(|k| k.file_name() == name)
    }
}

impl fmt::Display for ScriptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// A maintainer script the package carries. It is never run; the body is kept so the builder
/// can report it and derive the few declarative steps (such as `update-alternatives --install`)
/// that it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintainerScript {
    pub kind: ScriptKind,
    /// The script as bytes (almost always a shell script, but dpkg allows any executable).
    pub body: Vec<u8>,
}

/// `conffiles` lines: absolute paths, optionally preceded by flags such as `remove-on-upgrade`.
pub(super) fn parse_conffiles(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split_whitespace().last().map(str::to_owned)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_control_paragraph() {
        let c = Control::parse(
            "Package: foo\nVersion: 1:2.3-4\nArchitecture: amd64\nDepends: libc6 (>= 2.36), bar:any | baz\n\
             Replaces: old-foo (<< 2), other [amd64]\nDescription: short\n long line\n .\n more\n\n",
        )
        .unwrap();
        assert_eq!((c.package(), c.version(), c.architecture()), ("foo", "1:2.3-4", "amd64"));
        assert_eq!(c.depends(), Some("libc6 (>= 2.36), bar:any | baz"));
        assert_eq!(c.field("description"), Some("short\nlong line\n.\nmore"));
        assert_eq!(c.replaces(), ["old-foo", "other"]);
        assert_eq!(relation_names("libc6 (>= 2.36), bar:any | baz"), ["libc6", "bar", "baz"]);
        assert!(Control::parse("Package: foo\nVersion: 1\n").unwrap_err().contains("Architecture"));
        assert!(Control::parse("Package: a\nVersion: 1\nArchitecture: all\n\nPackage: b\n").is_err());
        assert!(Control::parse(" continued\n").is_err());
    }

    #[test]
    fn conffiles() {
        assert_eq!(parse_conffiles("/etc/a\n\nremove-on-upgrade /etc/b\n"), ["/etc/a", "/etc/b"]);
    }
}
