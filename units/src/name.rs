//! Unit names (systemd.unit(5)): `prefix[@instance].type`, templates `prefix@.type`, and the
//! unit-name escaping that `%I`/`%P`/`%f` undo.

use super::UnitType;

/// Longest unit name systemd accepts.
const MAX_NAME: usize = 255;

/// A valid unit name taken apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName {
    /// The whole name, e.g. `getty@tty1.service`.
    pub full: String,
    /// The part before `@` (or before the type suffix), e.g. `getty`.
    pub prefix: String,
    /// `None` for plain units; `Some("")` for a template; `Some("tty1")` for an instance.
    pub instance: Option<String>,
    pub kind: UnitType,
}

impl UnitName {
    pub fn parse(name: &str) -> Result<UnitName, String> {
        if name.len() > MAX_NAME {
            return Err(format!("longer than {MAX_NAME} characters"));
        }
        let (stem, suffix) = name.rsplit_once('.').ok_or("no type suffix (such as .service)")?;
        let kind = UnitType::from_suffix(suffix).ok_or_else(|| format!("unknown unit type `.{suffix}`"))?;
        if let Some(bad) = stem.chars().find(|c| !valid_char(*c) && *c != '@') {
            return Err(format!("character `{}` is not allowed in unit names", bad.escape_default()));
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) if i.contains('@') => return Err(format!("more than one `@` in `{p}@{i}`")),
            Some((p, i)) => (p, Some(i.to_string())),
            None => (stem, None),
        };
        if prefix.is_empty() {
            return Err("empty name before the type suffix or `@`".into());
        }
        Ok(UnitName { full: name.to_string(), prefix: prefix.to_string(), instance, kind })
    }

    pub fn is_template(&self) -> bool {
        self.instance.as_deref() == Some("")
    }

    pub fn is_instance(&self) -> bool {
        self.instance.as_deref().is_some_and(|i| !i.is_empty())
    }

    /// `foo@.service` for `foo@bar.service` (and for the template itself).
    pub fn template(&self) -> Option<String> {
        self.instance.as_ref().map(|_| format!("{}@.{}", self.prefix, self.kind.suffix()))
    }

    /// `foo@bar.service` from the template `foo@.service`.
    pub fn instantiate(&self, instance: &str) -> Result<UnitName, String> {
        if !self.is_template() {
            return Err(format!("{} is not a template", self.full));
        }
        UnitName::parse(&format!("{}@{}.{}", self.prefix, instance, self.kind.suffix()))
    }

    /// The name without the type suffix (`%N`).
    pub fn stem(&self) -> String {
        self.full.rsplit_once('.').map(|(s, _)| s.to_string()).unwrap_or_default()
    }
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')
}

/// Undoes unit-name escaping: `-` is `/`, `\xNN` a byte (systemd-escape(1)).
pub fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => out.push(b'/'),
            b'\\' if bytes.get(i + 1) == Some(&b'x') => {
                let hex = text.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => out.push(b'\\'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unescapes a prefix or instance as a path (`%f`): always starts with `/`.
pub fn unescape_path(text: &str) -> String {
    let s = unescape(text);
    if s.starts_with('/') { s } else { format!("/{s}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_template_instance() {
        let n = UnitName::parse("ssh.service").unwrap();
        assert_eq!((n.prefix.as_str(), n.instance.as_deref(), n.kind), ("ssh", None, UnitType::Service));
        let t = UnitName::parse("getty@.service").unwrap();
        assert!(t.is_template() && !t.is_instance());
        let i = t.instantiate("tty1").unwrap();
        assert_eq!(i.full, "getty@tty1.service");
        assert!(i.is_instance());
        assert_eq!(i.template().as_deref(), Some("getty@.service"));
        assert_eq!(i.stem(), "getty@tty1");
        assert_eq!(UnitName::parse("a.b.target").unwrap().prefix, "a.b");
    }

    #[test]
    fn invalid_names() {
        for bad in ["ssh", "ssh.nope", ".service", "@x.service", "a@b@c.service", "a b.service", "a/b.service"] {
            assert!(UnitName::parse(bad).is_err(), "{bad}");
        }
        assert!(UnitName::parse(&format!("{}.service", "a".repeat(300))).is_err());
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("dev-disk-by\\x2dlabel-x"), "dev/disk/by-label/x");
        assert_eq!(unescape_path("var-lib"), "/var/lib");
        assert_eq!(unescape("a\\x2"), "a\\x2");
    }
}
