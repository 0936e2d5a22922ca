//! Service environments: `Environment=` assignments (systemd.exec(5)) and environment files
//! (`EnvironmentFile=`, read by the runtime just before each start).

use super::syntax::{Split, split_words};

/// A valid environment variable name: not empty, no `=`, printable ASCII, not starting with a
/// digit. (systemd's `env_name_is_valid`, restricted to what a shell accepts too.)
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits an `Environment=` value into `(name, value)` pairs: words are unquoted and unescaped
/// like any unit setting, and each must be `NAME=value`. `expand` resolves specifiers in each
/// word (after unquoting, as systemd does).
pub fn parse_assignments(
    value: &str,
    expand: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for word in split_words(value, Split::UNIT)? {
        let word = expand(&word)?;
        match word.split_once('=') {
            Some((name, v)) if valid_name(name) => out.push((name.to_string(), v.to_string())),
            _ => return Err(format!("`{word}` is not a NAME=value assignment")),
        }
    }
    Ok(out)
}

/// The result of reading an environment file: the variables in order (a later assignment of a
/// name replaces the earlier one, in place) and the lines that were skipped, with why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub vars: Vec<(String, String)>,
    pub skipped: Vec<(usize, String)>,
}

impl EnvFile {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sets `name` in an ordered environment, replacing an earlier value in place.
pub fn set_var(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    }
}

/// Parses an environment file the way systemd does (a shell-like subset, no expansion):
/// `KEY=VALUE` lines; `#`/`;` comment lines; blanks around the key and unquoted values dropped;
/// `'…'` literal; `"…"` where `\` escapes only `" \ ` $` (and a newline); unquoted `\x` is `x`
/// and `\` at the end of a line continues the value. Lines without `=` and invalid names are
/// skipped. A comment ends at its line (systemd ≥ 254; 252 let a trailing `\` continue it).
pub fn parse_env_file(text: &str) -> EnvFile {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        Single,
        Double,
        DoubleEscape,
        Comment,
    }
    let mut out = EnvFile::default();
    let mut state = State::PreKey;
    let mut key = String::new();
    let mut value = String::new();
    // Length of `value` before its trailing unquoted whitespace, which is dropped.
    let mut value_end: Option<usize> = None;
    let mut line = 1;
    let mut key_line = 1;

    let push = |out: &mut EnvFile, key: &str, value: &str, line: usize| {
        let key = key.trim_end_matches([' ', '\t']);
        if valid_name(key) {
            set_var(&mut out.vars, key, value);
        } else {
            out.skipped.push((line, format!("`{key}` is not a valid variable name")));
        }
    };

    for c in text.chars() {
        let newline = c == '\n' || c == '\r';
        match state {
            State::PreKey => {
                if c == '#' || c == ';' {
                    state = State::Comment;
                } else if !c.is_whitespace() {
                    state = State::Key;
                    key.clear();
                    key.push(c);
                    key_line = line;
                }
            }
            State::Key => {
                if newline {
                    out.skipped.push((key_line, format!("`{}` has no `=`", key.trim())));
                    state = State::PreKey;
                } else if c == '=' {
                    state = State::PreValue;
                    value.clear();
                    value_end = None;
                } else {
                    key.push(c);
                }
            }
            State::PreValue | State::Value => {
                if newline {
                    if state == State::Value
                        && let Some(end) = value_end
                    {
                        value.truncate(end);
                    }
                    push(&mut out, &key, &value, key_line);
                    state = State::PreKey;
                } else if state == State::PreValue && c == '\'' {
                    state = State::Single;
                } else if state == State::PreValue && c == '"' {
                    state = State::Double;
                } else if c == '\\' {
                    state = State::ValueEscape;
                    value_end = None;
                } else if state == State::PreValue && c.is_whitespace() {
                    // Blanks before the value are dropped.
                } else {
                    state = State::Value;
                    if !c.is_whitespace() {
                        value_end = None;
                    } else if value_end.is_none() {
                        value_end = Some(value.len());
                    }
                    value.push(c);
                }
            }
            State::ValueEscape => {
                state = State::Value;
                // An escaped newline joins lines; anything else is taken literally.
                if !newline {
                    value.push(c);
                }
            }
            State::Single => {
                if c == '\'' {
                    state = State::PreValue;
                } else {
                    value.push(c);
                }
            }
            State::Double => {
                if c == '"' {
                    state = State::PreValue;
                } else if c == '\\' {
                    state = State::DoubleEscape;
                } else {
                    value.push(c);
                }
            }
            State::DoubleEscape => {
                state = State::Double;
                if matches!(c, '"' | '\\' | '`' | '$') {
                    value.push(c);
                } else if c != '\n' {
                    // Like the shell: other escapes keep their backslash.
                    value.push('\\');
                    value.push(c);
                }
            }
            State::Comment => {
                if newline {
                    state = State::PreKey;
                }
            }
        }
        if c == '\n' {
            line += 1;
        }
    }
    match state {
        State::Value => {
            if let Some(end) = value_end {
                value.truncate(end);
            }
            push(&mut out, &key, &value, key_line);
        }
        State::PreValue | State::ValueEscape | State::Single | State::Double | State::DoubleEscape => {
            push(&mut out, &key, &value, key_line)
        }
        State::Key => out.skipped.push((key_line, format!("`{}` has no `=`", key.trim()))),
        State::PreKey | State::Comment => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse_env_file(text).vars
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names() {
        assert!(valid_name("SSHD_OPTS") && valid_name("_x1"));
        assert!(!valid_name("") && !valid_name("1A") && !valid_name("A-B") && !valid_name("A B"));
    }

    #[test]
    fn environment_assignments() {
        let id = |s: &str| Ok(s.to_string());
        assert_eq!(
            parse_assignments(r#"A=1 "B=two words" 'C=x"y' D= E=a=b F=\x41"#, id).unwrap(),
            pairs(&[("A", "1"), ("B", "two words"), ("C", "x\"y"), ("D", ""), ("E", "a=b"), ("F", "A")])
        );
        assert_eq!(
            parse_assignments(r#"LOGGING="--log-level=info""#, id).unwrap(),
            pairs(&[("LOGGING", "--log-level=info")])
        );
        assert!(parse_assignments("novalue", id).is_err());
        assert!(parse_assignments("1X=y", id).is_err());
        assert!(parse_assignments("\"A=unterminated", id).is_err());
        let spec = |s: &str| Ok(s.replace("%i", "web"));
        assert_eq!(parse_assignments("NAME=%i", spec).unwrap(), pairs(&[("NAME", "web")]));
    }

    #[test]
    fn debian_default_ssh() {
        let text = "# Default settings for openssh-server. This file is sourced by /bin/sh from\n\
                    # /etc/init.d/ssh.\n\n# Options to pass to sshd\nSSHD_OPTS=\n";
        assert_eq!(vars(text), pairs(&[("SSHD_OPTS", "")]));
    }

    #[test]
    fn env_file_quoting() {
        let text = concat!(
            "  A = plain value   \n",
            "B='single $x \\n'\n",
            "C=\"double \\\"q\\\" \\$HOME \\n \\\\\"\n",
            "D=esc\\ aped\\\n",
            "continued\n",
            "; comment\n",
            "E=\"multi\n",
            "line\"\n",
            "F='a' 'b'\n",
            "A=replaced\n",
            "G=x # not a comment\n",
            "H",
        );
        assert_eq!(
            vars(text),
            pairs(&[
                ("A", "replaced"),
                ("B", "single $x \\n"),
                ("C", "double \"q\" $HOME \\n \\"),
                ("D", "esc apedcontinued"),
                ("E", "multi\nline"),
                ("F", "ab"),
                ("G", "x # not a comment"),
            ])
        );
    }

    #[test]
    fn env_file_skips_bad_lines() {
        let f = parse_env_file("no equals here\nBAD-NAME=1\nOK=1\nLAST=\"open");
        assert_eq!(f.vars, pairs(&[("OK", "1"), ("LAST", "open")]));
        assert_eq!(f.skipped.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(f.get("OK"), Some("1"));
    }

    #[test]
    fn comment_with_trailing_backslash_ends_at_newline() {
        assert_eq!(vars("# note \\\nA=1\n"), pairs(&[("A", "1")]));
    }
}
