//! A small deb822 (RFC 822-like control file) reader for apt `.sources` files and Release files.
//!
//! The `Packages` indexes are large and have their own fast byte-level reader in `packages`;
//! this one favours exactness: field names compare case-insensitively, continuation lines are
//! kept (with " ." meaning an empty line, as inline `Signed-By` keys need), `#` comment lines are
//! dropped, and every field remembers its line for error messages.

/// One field of a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    /// The value: the first line's text trimmed, then one `\n`-joined line per continuation line.
    pub value: String,
    /// 1-based line of the field name.
    pub line: usize,
}

/// One paragraph of fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub fields: Vec<Field>,
    /// 1-based line of the first field.
    pub line: usize,
}

impl Stanza {
    /// The value of a field, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.value.as_str())
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// Splits `text` into stanzas. Errors carry the 1-based line and a message.
pub(crate) fn parse(text: &str) -> Result<Vec<Stanza>, (usize, String)> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some(field) = current.fields.last_mut() else {
                return Err((lineno, "continuation line without a field".into()));
            };
            let cont = line.trim();
            field.value.push('\n');
            if cont != "." {
                field.value.push_str(cont);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err((lineno, format!("expected `Field: value`, found `{}`", line.trim())));
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err((lineno, format!("bad field name `{name}`")));
        }
        if current.fields.is_empty() {
            current.line = lineno;
        }
        current.fields.push(Field { name: name.to_string(), value: value.trim().to_string(), line: lineno });
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    Ok(stanzas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_comments_and_continuations() {
        let text = "# comment\nTypes: deb\nURIs: http://a/\n# inner comment\nKey: first\n second\n .\n third\n\n\nTypes: deb-src\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].line, 2);
        assert_eq!(s[0].get("types"), Some("deb"));
        assert_eq!(s[0].get("KEY"), Some("first\nsecond\n\nthird"));
        assert_eq!(s[1].get("Types"), Some("deb-src"));
        assert_eq!(s[1].line, 11);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A: b\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(parse(" leading\n").unwrap_err().0, 1);
    }
}
