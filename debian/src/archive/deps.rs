//! Parsing dependency fields (`Depends`, `Pre-Depends`, `Provides`) per Debian Policy §7.1.
//!
//! `Depends: a (>= 1.0) | b:any, c` is a list of groups; a group is satisfied by any one of its
//! alternatives. Architecture restriction lists (`[amd64]`) and build profiles (`<!nocheck>`)
//! only occur in source packages; they are accepted and ignored.

use std::fmt;

use super::version::Relation;

/// One alternative of a dependency: a package name with an optional arch qualifier and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// The package (or virtual package) name.
    pub name: String,
    /// The `:arch` qualifier (`any`, `native`, `amd64`, ...), if any.
    pub arch: Option<String>,
    /// The version constraint, if any.
    pub version: Option<(Relation, String)>,
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((rel, v)) = &self.version {
            write!(f, " ({} {v})", rel.as_str())?;
        }
        Ok(())
    }
}

/// A group of alternatives (`a | b`); at least one must be installed.
pub type Alternatives = Vec<Dep>;

/// Writes a group back as `a | b (>= 1)`.
pub fn display_group(group: &[Dep]) -> String {
    group.iter().map(Dep::to_string).collect::<Vec<_>>().join(" | ")
}

/// One `Provides` entry: a virtual package name, optionally with the exact version provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provide {
    /// The provided name.
    pub name: String,
    /// `Provides: foo (= 1.2)` provides version 1.2; unversioned provides satisfy only
    /// unversioned dependencies.
    pub version: Option<String>,
}

/// Parses a `Depends`-style field into groups of alternatives.
pub fn parse_relations(text: &str) -> Result<Vec<Alternatives>, String> {
    let mut groups = Vec::new();
    for group in text.split(',') {
        let group = group.trim();
        if group.is_empty() {
            // Tolerate a trailing comma, as dpkg does.
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_one(alt.trim())?);
        }
        groups.push(alts);
    }
    Ok(groups)
}

/// Parses a `Provides` field. Only `=` is allowed as a relation there.
pub fn parse_provides(text: &str) -> Result<Vec<Provide>, String> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let dep = parse_one(item)?;
        let version = match dep.version {
            None => None,
            Some((Relation::Eq, v)) => Some(v),
            Some((rel, _)) => return Err(format!("`{item}`: Provides allows only `=`, not `{}`", rel.as_str())),
        };
        out.push(Provide { name: dep.name, version });
    }
    Ok(out)
}

fn parse_one(text: &str) -> Result<Dep, String> {
    let name_end = text.find(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<').unwrap_or(text.len());
    let (full_name, mut rest) = text.split_at(name_end);
    if full_name.is_empty() {
        return Err(if text.is_empty() { "empty alternative".into() } else { format!("`{text}`: missing name") });
    }
    let (name, arch) = match full_name.split_once(':') {
        Some((n, a)) if !a.is_empty() => (n, Some(a.to_string())),
        Some(_) => return Err(format!("`{text}`: empty architecture qualifier")),
        None => (full_name, None),
    };
    if !valid_name(name) {
        return Err(format!("`{name}` is not a valid package name"));
    }
    let mut version = None;
    rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix('(') {
        let Some((inner, after)) = after.split_once(')') else {
            return Err(format!("`{text}`: unterminated `(`"));
        };
        let inner = inner.trim();
        let op_len = inner.find(|c: char| !matches!(c, '<' | '>' | '=')).unwrap_or(inner.len());
        let (op, ver) = inner.split_at(op_len);
        let rel = Relation::parse(op).ok_or_else(|| format!("`{text}`: bad relation `{op}`"))?;
        let ver = ver.trim();
        if ver.is_empty() || ver.contains(char::is_whitespace) {
            return Err(format!("`{text}`: bad version `{ver}`"));
        }
        version = Some((rel, ver.to_string()));
        rest = after.trim_start();
    }
    // Source-package-only restrictions: skip them.
    for (open, close) in [('[', ']'), ('<', '>')] {
        while let Some(after) = rest.strip_prefix(open) {
            let Some((_, after)) = after.split_once(close) else {
                return Err(format!("`{text}`: unterminated `{open}`"));
            };
            rest = after.trim_start();
        }
    }
    if !rest.is_empty() {
        return Err(format!("`{text}`: unexpected `{rest}`"));
    }
    Ok(Dep { name: name.to_string(), arch, version })
}

/// Policy §5.6.1: lowercase letters, digits, `+`, `-`, `.`; at least two characters, starting
/// with an alphanumeric. One-character names are tolerated (they exist in the wild as
/// virtual names in third-party repositories).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, arch: Option<&str>, version: Option<(Relation, &str)>) -> Dep {
        Dep { name: name.into(), arch: arch.map(Into::into), version: version.map(|(r, v)| (r, v.into())) }
    }

    #[test]
    fn depends_with_alternatives_versions_and_qualifiers() {
        let groups = parse_relations(
            "libc6 (>= 2.34), libssl3 (>=3.0.0)|libssl1.1, python3:any, perl:native (<< 5.37~), debconf (>= 0.5) | debconf-2.0,",
        )
        .unwrap();
        assert_eq!(
            groups,
            vec![
                vec![dep("libc6", None, Some((Relation::GreaterEq, "2.34")))],
                vec![dep("libssl3", None, Some((Relation::GreaterEq, "3.0.0"))), dep("libssl1.1", None, None)],
                vec![dep("python3", Some("any"), None)],
                vec![dep("perl", Some("native"), Some((Relation::Less, "5.37~")))],
                vec![dep("debconf", None, Some((Relation::GreaterEq, "0.5"))), dep("debconf-2.0", None, None)],
            ]
        );
        assert_eq!(display_group(&groups[1]), "libssl3 (>= 3.0.0) | libssl1.1");
        assert_eq!(groups[3][0].to_string(), "perl:native (<< 5.37~)");
    }

    #[test]
    fn source_only_restrictions_are_skipped() {
        let g = parse_relations("foo [amd64 !i386] <!nocheck> <cross>, bar (= 1:2.0-1) [linux-any]").unwrap();
        assert_eq!(g, vec![vec![dep("foo", None, None)], vec![dep("bar", None, Some((Relation::Eq, "1:2.0-1")))]]);
    }

    #[test]
    fn bad_relations() {
        for bad in ["foo (>= )", "foo (~ 1)", "foo (>= 1", "Foo", "foo | ", "foo bar", "foo: (>= 1)", "(>= 1)"] {
            assert!(parse_relations(bad).is_err(), "{bad} should not parse");
        }
        assert_eq!(parse_relations("").unwrap(), Vec::<Alternatives>::new());
    }

    #[test]
    fn provides() {
        let p = parse_provides("mail-transport-agent, libfoo-abi (= 1.2-3), awk").unwrap();
        assert_eq!(
            p,
            vec![
                Provide { name: "mail-transport-agent".into(), version: None },
                Provide { name: "libfoo-abi".into(), version: Some("1.2-3".into()) },
                Provide { name: "awk".into(), version: None },
            ]
        );
        assert!(parse_provides("foo (>= 1)").is_err());
    }
}
