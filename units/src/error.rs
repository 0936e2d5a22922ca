//! What loading a unit can report: errors (the unit is not usable as written) and ignored
//! directives (the unit loads; berth-init does not act on that line). Both carry the file, the
//! line (0 when the problem is about the whole file) and the unit, so every message a runtime or
//! `berthctl verify` prints points at the line to fix.

use std::fmt;
use std::path::{Path, PathBuf};

use super::UnitType;

/// `FILE:LINE`, or just `FILE` for whole-file problems (line 0).
pub fn location(file: &Path, line: usize) -> String {
    if line == 0 { file.display().to_string() } else { format!("{}:{line}", file.display()) }
}

/// A problem that makes a unit (or one of its settings) unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {unit}: {kind}", location(file, *line))]
pub struct UnitError {
    pub file: PathBuf,
    pub line: usize,
    pub unit: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read the unit file: {0}")]
    Read(String),
    #[error("invalid section header `{0}`")]
    SectionHeader(String),
    #[error("`{0}` is not an assignment (expected Key=Value)")]
    NotAnAssignment(String),
    #[error("`{0}=` appears before any [Section]")]
    OutsideSection(String),
    #[error("[{section}] {key}=: {reason}")]
    Value { section: String, key: String, reason: String },
    #[error("`{name}` is not a valid unit name: {reason}")]
    Name { name: String, reason: String },
    /// The settings are readable but do not make a startable unit (e.g. no `ExecStart=`).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Link(String),
    /// Only `berthctl verify --root` reports these: a dependency that the image does not have.
    #[error("[Unit] {key}={name}: {reason}")]
    Dependency { key: String, name: String, reason: String },
}

/// A line (or a whole unit) that berth-init reads but will not act on. Never fatal: a runtime
/// logs each one once when it loads the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub file: PathBuf,
    pub line: usize,
    pub unit: String,
    pub what: IgnoredWhat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoredWhat {
    /// A directive berth-init does not implement (or does not know at all).
    Directive { section: String, key: String },
    /// A whole section berth-init does not know (e.g. `[Socket]` in a service file).
    Section(String),
    /// A unit type berth-init cannot run (`.socket`, `.timer`, `.mount`, …).
    UnitType(UnitType),
    /// A setting that is accepted but only partly honoured; the text says how.
    Note(String),
}

impl Ignored {
    /// The message without the location, e.g. `[Service] Delegate= is not supported …`.
    pub fn message(&self) -> String {
        match &self.what {
            IgnoredWhat::Directive { section, key } => {
                format!("[{section}] {key}= is not supported by berth-init and will be ignored")
            }
            IgnoredWhat::Section(section) => {
                format!("section [{section}] is not supported by berth-init and will be ignored")
            }
            IgnoredWhat::UnitType(t) => {
                format!("{} units are not supported by berth-init; {} will be ignored", t.suffix(), self.unit)
            }
            IgnoredWhat::Note(text) => text.clone(),
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", location(&self.file, self.line), self.unit, self.message())
    }
}

/// A value that does not parse as its type: a time span, a size, a boolean, or the quoting and
/// C escapes of systemd.syntax(7). The directive parsers fold it into the reason of
/// [`ErrorKind::Value`], which names the section, key and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{text}` is not a time span ({why})")]
    TimeSpan { text: String, why: &'static str },
    #[error("`{0}` is not a size (a number with an optional K, M, G, T, P or E suffix)")]
    Size(String),
    #[error("`{0}` is not a boolean (yes/no, true/false, on/off, 1/0)")]
    Bool(String),
    #[error("trailing backslash")]
    TrailingBackslash,
    #[error("unterminated quote {0}")]
    UnterminatedQuote(char),
    #[error("an escape produces invalid UTF-8")]
    InvalidUtf8,
    /// `escape` is the escape as written, without its backslash (`x4`).
    #[error("short escape \\{escape}")]
    ShortEscape { escape: String },
    #[error("bad escape \\{escape}")]
    BadEscape { escape: String },
    #[error("\\{escape} (NUL) is not allowed")]
    Nul { escape: &'static str },
    #[error("\\{escape} is not a valid character")]
    InvalidChar { escape: String },
    #[error("octal escapes need three digits")]
    OctalDigits,
    #[error("octal escape \\{0:o} is out of range")]
    OctalRange(u32),
    #[error("unknown escape \\{0}")]
    UnknownEscape(char),
}

/// The directive parsers still carry their reasons as text ([`ErrorKind::Value`]); a
/// [`ValueError`] becomes that text at this seam.
impl From<ValueError> for String {
    fn from(e: ValueError) -> String {
        e.to_string()
    }
}
