//! Debian version comparison (Debian Policy §5.6.12), as dpkg implements it.
//!
//! A version is `[epoch:]upstream[-revision]`. Epochs compare as numbers; upstream and revision
//! compare with dpkg's algorithm: alternately a run of non-digits, compared character by
//! character where `~` sorts before everything (even the end of the string), then letters, then
//! other characters; and a run of digits compared as a number. A missing revision compares
//! like `0`.

use std::cmp::Ordering;

/// Compares two Debian versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| verrevcmp(ua, ub)).then_with(|| verrevcmp(ra, rb))
}

/// Splits into (epoch, upstream, revision). A malformed epoch counts as 0, as the strings come
/// from signed indexes and a bad epoch must not make comparison fail.
fn split(v: &str) -> (u64, &str, &str) {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => (e.parse().unwrap_or(0), rest),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's character order: `~` first (before the end of the string), then the end, then
/// letters, then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        // Digit run, compared numerically without overflow: skip leading zeros, then the longer
        // run wins, else the first differing digit.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A version relation operator in a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `<<`
    Less,
    /// `<=` (and the obsolete `<`)
    LessEq,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    GreaterEq,
    /// `>>`
    Greater,
}

impl Relation {
    /// Parses `<<`, `<=`, `=`, `>=`, `>>` and the obsolete `<` / `>` (which mean `<=` / `>=`).
    pub fn parse(op: &str) -> Option<Relation> {
        Some(match op {
            "<<" => Relation::Less,
            "<=" | "<" => Relation::LessEq,
            "=" => Relation::Eq,
            ">=" | ">" => Relation::GreaterEq,
            ">>" => Relation::Greater,
            _ => return None,
        })
    }

    /// Whether `version` (the candidate) stands in this relation to `wanted`.
    pub fn holds(self, version: &str, wanted: &str) -> bool {
        let c = compare(version, wanted);
        match self {
            Relation::Less => c == Ordering::Less,
            Relation::LessEq => c != Ordering::Greater,
            Relation::Eq => c == Ordering::Equal,
            Relation::GreaterEq => c != Ordering::Less,
            Relation::Greater => c == Ordering::Greater,
        }
    }

    /// The operator as written in control files.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Less => "<<",
            Relation::LessEq => "<=",
            Relation::Eq => "=",
            Relation::GreaterEq => ">=",
            Relation::Greater => ">>",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// Pairs and the expected ordering; many are taken from dpkg's own test suite
    /// (lib/dpkg/t/t-version.c) and Debian Policy's examples.
    const TABLE: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Equal),
        ("1.0", "1.0-0", Equal),
        ("0:1.0", "1.0", Equal),
        ("00:1.0", "0:1.0", Equal),
        ("1.0", "1.1", Less),
        ("1.10", "1.9", Greater),
        ("1.09", "1.9", Equal),
        ("1:0.1", "2.0", Greater),
        ("2:1", "10:0", Less),
        ("1.0~rc1", "1.0", Less),
        ("1.0~~", "1.0~", Less),
        ("1.0~~a", "1.0~~", Greater),
        ("1.0~", "1.0", Less),
        ("1.0", "1.0+b1", Less),
        ("1.0+dfsg", "1.0", Greater),
        ("1.0-1", "1.0-1+b1", Less),
        ("1.0-1~bpo12+1", "1.0-1", Less),
        ("1.0-1+deb12u1", "1.0-1", Greater),
        ("1.0-1+deb12u1", "1.0-1+deb12u2", Less),
        ("1.0-1+deb12u10", "1.0-1+deb12u9", Greater),
        ("1.0a", "1.0", Greater),
        ("1.0a", "1.0+", Less),    // letters sort before non-letters
        ("1.0.", "1.0+", Greater), // both non-letters: ASCII order, '+' (43) before '.' (46)
        ("1.0-a", "1.0-1", Greater),
        ("1-2-3", "1-2-4", Less), // revision is after the last hyphen
        ("1-2-3", "1-2", Greater),
        ("2.30-12", "2.30-2", Greater),
        ("7.88.1-10+deb12u8", "7.88.1-10+deb12u12", Less),
        ("1.6.20~ds1-1", "1.6.20-1", Less),
        ("0.0.0-0", "0", Greater), // "." after the digits outranks the end of the string
        ("1a", "1b", Less),
        ("1:1.2.3", "1:1.2.3~", Greater),
        ("1.2.3-0ubuntu1", "1.2.3-0", Greater),
    ];

    #[test]
    fn comparison_table() {
        for &(a, b, want) in TABLE {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn relations() {
        assert!(Relation::parse(">=").unwrap().holds("1.6.20~ds1-1", "1.6"));
        assert!(!Relation::parse(">>").unwrap().holds("1.0", "1.0"));
        assert!(Relation::parse("<<").unwrap().holds("1.0~rc1", "1.0"));
        assert!(Relation::parse("=").unwrap().holds("0:1.0-0", "1.0"));
        assert!(Relation::parse("<=").unwrap().holds("1.0", "1.0"));
        assert_eq!(Relation::parse("<"), Some(Relation::LessEq));
        assert_eq!(Relation::parse(">"), Some(Relation::GreaterEq));
        assert_eq!(Relation::parse("=="), None);
    }

    /// Judge: dpkg itself, when installed, agrees with every row of the table.
    #[test]
    fn agrees_with_dpkg() {
        if std::process::Command::new("dpkg").arg("--version").output().is_err() {
            panic!("dpkg is needed for this test: apt-get install dpkg");
        }
        for &(a, b, _) in TABLE {
            let ours = compare(a, b);
            for (op, expect) in [("lt", ours == Less), ("eq", ours == Equal), ("gt", ours == Greater)] {
                let status = std::process::Command::new("dpkg")
                    .args(["--compare-versions", a, op, b])
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert_eq!(status.success(), expect, "dpkg --compare-versions {a} {op} {b}");
            }
        }
    }
}
