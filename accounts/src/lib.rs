//! Berth's account files: `/etc/passwd`, `/etc/group`, `/etc/shadow` and `/etc/gshadow`, one
//! line each as a typed entry ([`Passwd`], [`Group`], [`Shadow`], [`Gshadow`]), parsed with an
//! error that names the file and line ([`Error`]) and formatted back (`Display`, [`format`]).
//!
//! This crate owns the line format and nothing else: who adds which account, and how a file is
//! written safely, stay with the callers (the builder's `users` step in `berth-debian`, first-boot
//! provisioning and the service manager's `User=` lookup in `berth-init`). A Berth root has only
//! files-based accounts (no NSS modules), so these four formats are the whole account database.
//!
//! Parsing keeps every field as it is written, so that parsing and formatting a well-formed file
//! gives back the same bytes (the numeric fields are written as numbers, and a shadow entry's
//! empty aging fields stay empty). Blank lines are skipped; anything else must be an entry.

use std::fmt;
use std::str::FromStr;

/// What is wrong with one line of an account file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line has another number of `:`-separated fields than its file's format.
    #[error("{found} fields, not {expected}")]
    Fields { found: usize, expected: usize },
    /// A field that must be a number (an id, a day count) is not one.
    #[error("its {field} `{value}` is not a number")]
    Number { field: &'static str, value: String },
}

/// A line of an account file that is not an entry of that file's kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file} line {line}: `{text}` is not a {kind} entry: {source}")]
pub struct Error {
    /// The file as the caller named it (e.g. `/etc/passwd`).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// `passwd`, `group`, `shadow` or `gshadow`.
    pub kind: &'static str,
    /// The line itself.
    pub text: String,
    #[source]
    pub source: LineError,
}

/// One kind of entry: how its lines are parsed and formatted.
pub trait Entry: FromStr<Err = LineError> + fmt::Display {
    /// The file's kind as said in errors: `passwd`, `group`, `shadow` or `gshadow`.
    const KIND: &'static str;
    /// The account's name (the first field).
    fn name(&self) -> &str;
}

/// Every entry of `text`, the contents of `file` (named in the error), in their order; blank
/// lines are skipped.
pub fn parse<T: Entry>(file: &str, text: &str) -> Result<Vec<T>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            l.parse().map_err(|source| Error {
                file: file.to_owned(),
                line: n + 1,
                kind: T::KIND,
                text: l.to_owned(),
                source,
            })
        })
        .collect()
}

/// The file holding `entries`, one line each, every line ending in a newline.
pub fn format<T: Entry>(entries: &[T]) -> String {
    entries.iter().map(|e| format!("{e}\n")).collect()
}

/// A user or group name: what `useradd` accepts without `--badname`, roughly (letters, digits,
/// `_`, `-`, `.`, `$`; not starting with `-`; at most 32 bytes).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b))
}

/// Whether `value` can stand in a field: it must not contain the separator or end the line.
pub fn valid_field(value: &str) -> bool {
    !value.contains([':', '\n'])
}

fn fields<const N: usize>(line: &str) -> Result<[&str; N], LineError> {
    let f: Vec<&str> = line.split(':').collect();
    let found = f.len();
    f.try_into().map_err(|_| LineError::Fields { found, expected: N })
}

fn number<T: FromStr>(field: &'static str, value: &str) -> Result<T, LineError> {
    value.parse().map_err(|_| LineError::Number { field, value: value.to_owned() })
}

/// An empty field is `None` (shadow's aging fields).
fn optional(field: &'static str, value: &str) -> Result<Option<i64>, LineError> {
    if value.is_empty() { Ok(None) } else { number(field, value).map(Some) }
}

struct Opt(Option<i64>);

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => Ok(()),
        }
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect()
}

/// A line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    /// `x` when the password is in `/etc/shadow`.
    pub password: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

impl FromStr for Passwd {
    type Err = LineError;
    fn from_str(line: &str) -> Result<Self, LineError> {
        let [name, password, uid, gid, gecos, home, shell] = fields(line)?;
        Ok(Passwd {
            name: name.into(),
            password: password.into(),
            uid: number("uid", uid)?,
            gid: number("gid", gid)?,
            gecos: gecos.into(),
            home: home.into(),
            shell: shell.into(),
        })
    }
}

impl fmt::Display for Passwd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Passwd { name, password, uid, gid, gecos, home, shell } = self;
        write!(f, "{name}:{password}:{uid}:{gid}:{gecos}:{home}:{shell}")
    }
}

impl Entry for Passwd {
    const KIND: &'static str = "passwd";
    fn name(&self) -> &str {
        &self.name
    }
}

/// A line of `/etc/group`: `name:password:gid:member,member…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// `x` when the password is in `/etc/gshadow`.
    pub password: String,
    pub gid: u32,
    /// Supplementary members (users whose primary group this is are not listed).
    pub members: Vec<String>,
}

impl FromStr for Group {
    type Err = LineError;
    fn from_str(line: &str) -> Result<Self, LineError> {
        let [name, password, gid, members] = fields(line)?;
        Ok(Group { name: name.into(), password: password.into(), gid: number("gid", gid)?, members: list(members) })
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.name, self.password, self.gid, self.members.join(","))
    }
}

impl Entry for Group {
    const KIND: &'static str = "group";
    fn name(&self) -> &str {
        &self.name
    }
}

/// A line of `/etc/shadow`:
/// `name:password:last_change:min:max:warn:inactive:expire:reserved` (days since 1970; an
/// empty field is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub name: String,
    /// A crypt(3) hash; `*` or `!…` is locked.
    pub password: String,
    pub last_change: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub warn: Option<i64>,
    pub inactive: Option<i64>,
    pub expire: Option<i64>,
    /// Unused by every tool; kept as written.
    pub reserved: String,
}

impl Shadow {
    /// The entry `useradd` writes with Debian's `login.defs`: changed on `day`, no minimum age, a
    /// maximum of 99999 days, warned 7 days before.
    pub fn new(name: &str, password: &str, day: i64) -> Shadow {
        Shadow {
            name: name.into(),
            password: password.into(),
            last_change: Some(day),
            min: Some(0),
            max: Some(99999),
            warn: Some(7),
            inactive: None,
            expire: None,
            reserved: String::new(),
        }
    }
}

impl FromStr for Shadow {
    type Err = LineError;
    fn from_str(line: &str) -> Result<Self, LineError> {
        let [name, password, last_change, min, max, warn, inactive, expire, reserved] = fields(line)?;
        Ok(Shadow {
            name: name.into(),
            password: password.into(),
            last_change: optional("last change day", last_change)?,
            min: optional("minimum age", min)?,
            max: optional("maximum age", max)?,
            warn: optional("warning period", warn)?,
            inactive: optional("inactivity period", inactive)?,
            expire: optional("expiry day", expire)?,
            reserved: reserved.into(),
        })
    }
}

impl fmt::Display for Shadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Shadow { name, password, last_change, min, max, warn, inactive, expire, reserved } = self;
        let [a, b, c, d, e, g] = [last_change, min, max, warn, inactive, expire].map(|v| Opt(*v));
        write!(f, "{name}:{password}:{a}:{b}:{c}:{d}:{e}:{g}:{reserved}")
    }
}

impl Entry for Shadow {
    const KIND: &'static str = "shadow";
    fn name(&self) -> &str {
        &self.name
    }
}

/// A line of `/etc/gshadow`: `name:password:admin,admin…:member,member…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gshadow {
    pub name: String,
    pub password: String,
    pub admins: Vec<String>,
    pub members: Vec<String>,
}

impl FromStr for Gshadow {
    type Err = LineError;
    fn from_str(line: &str) -> Result<Self, LineError> {
        let [name, password, admins, members] = fields(line)?;
        Ok(Gshadow { name: name.into(), password: password.into(), admins: list(admins), members: list(members) })
    }
}

impl fmt::Display for Gshadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.name, self.password, self.admins.join(","), self.members.join(","))
    }
}

impl Entry for Gshadow {
    const KIND: &'static str = "gshadow";
    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:core,alice\n";
    const SHADOW: &str = "root:*:19000:0:99999:7:::\n_chrony:!:19000::::::\n";
    const GSHADOW: &str = "root:*::\nsudo:*:core:core,alice\n";

    #[test]
    fn each_file_formats_back_to_the_bytes_it_was_parsed_from() {
        assert_eq!(format(&parse::<Passwd>("/etc/passwd", PASSWD).unwrap()), PASSWD);
        assert_eq!(format(&parse::<Group>("/etc/group", GROUP).unwrap()), GROUP);
        assert_eq!(format(&parse::<Shadow>("/etc/shadow", SHADOW).unwrap()), SHADOW);
        assert_eq!(format(&parse::<Gshadow>("/etc/gshadow", GSHADOW).unwrap()), GSHADOW);
    }

    #[test]
    fn fields_are_typed() {
        let p = parse::<Passwd>("/etc/passwd", PASSWD).unwrap();
        assert_eq!((p[1].name.as_str(), p[1].uid, p[1].gid, p[1].home.as_str()), ("_apt", 42, 65534, "/nonexistent"));
        let g = parse::<Group>("/etc/group", GROUP).unwrap();
        assert_eq!((g[0].members.len(), g[1].members.clone()), (0, vec!["core".to_string(), "alice".to_string()]));
        let s = parse::<Shadow>("/etc/shadow", SHADOW).unwrap();
        assert_eq!(s[0], Shadow::new("root", "*", 19000));
        assert_eq!((s[1].last_change, s[1].max, s[1].password.as_str()), (Some(19000), None, "!"));
        let gs = parse::<Gshadow>("/etc/gshadow", GSHADOW).unwrap();
        assert_eq!((gs[1].admins.clone(), gs[1].members.len()), (vec!["core".to_string()], 2));
    }

    #[test]
    fn blank_lines_are_skipped_and_line_numbers_count_them() {
        let e = parse::<Passwd>("/etc/passwd", "\nroot:x:0:0:root:/root:/bin/sh\n\nbob:x:1000\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.text.as_str()), ("/etc/passwd", 4, "bob:x:1000"));
        assert_eq!(e.source, LineError::Fields { found: 3, expected: 7 });
        assert_eq!(e.to_string(), "/etc/passwd line 4: `bob:x:1000` is not a passwd entry: 3 fields, not 7");
    }

    #[test]
    fn a_non_numeric_id_names_its_field() {
        let e = parse::<Group>("group.master", "root:*:zero:").unwrap_err();
        assert_eq!(e.source, LineError::Number { field: "gid", value: "zero".into() });
        assert_eq!(
            e.to_string(),
            "group.master line 1: `root:*:zero:` is not a group entry: its gid `zero` is not a number"
        );
        let e = parse::<Shadow>("/etc/shadow", "root:*:soon:0:99999:7:::").unwrap_err();
        assert_eq!(e.source, LineError::Number { field: "last change day", value: "soon".into() });
        assert!(parse::<Shadow>("/etc/shadow", "root:*:1:2:3").is_err());
        assert!(parse::<Gshadow>("/etc/gshadow", "root:*:").is_err());
    }

    #[test]
    fn names_and_fields_that_would_break_a_line_are_refused() {
        for ok in ["core", "_apt", "systemd-network", "a.b", "host$"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", "a:b", "a b", "é", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_field("/home/core") && !valid_field("a:b") && !valid_field("a\nb"));
    }
}
