//! The unit file format of systemd.syntax(7): sections, `Key=Value` assignments, comments,
//! continuation lines; and the word splitting (quotes, C escapes) that list-valued settings use.
//!
//! Rules, as systemd 252 applies them:
//! - a line whose first non-blank character is `#` or `;` is a comment, even in the middle of a
//!   continuation (so a commented-out argument inside a long `ExecStart=` is skipped);
//! - a line ending in an unescaped `\` continues on the next line; the `\` becomes a space;
//!   an empty line ends the continuation;
//! - whitespace around the key and the value is dropped; the value is otherwise kept verbatim
//!   (quotes are interpreted per setting, by [`extract_word`]);
//! - a bad section header is an error, so is a line without `=` or an assignment before the
//!   first section (systemd only warns about the last two and skips the line: a unit that
//!   silently loses a line is a bug waiting, so berth reports them as errors).

use super::error::{ErrorKind, ValueError};

/// Characters systemd calls whitespace in unit files.
pub const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// One `Key=Value` line (after joining continuations), in its section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub section: String,
    pub key: String,
    pub value: String,
    /// The line the assignment starts on (1-based).
    pub line: usize,
}

/// A parsed unit file: its section headers (for "unknown section" reports) and assignments in
/// file order, plus the syntax errors found (parsing goes on after an error).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Document {
    pub sections: Vec<(String, usize)>,
    pub assignments: Vec<Assignment>,
    pub errors: Vec<(usize, ErrorKind)>,
}

/// Parses the text of a unit file or drop-in.
pub fn parse(text: &str) -> Document {
    let mut doc = Document::default();
    let mut section: Option<String> = None;
    // The joined text of a continuation in progress, and the line it started on.
    let mut pending: Option<(String, usize)> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let first = raw.trim_start_matches(WHITESPACE).chars().next();
        if matches!(first, Some('#' | ';')) {
            continue;
        }
        let (mut joined, start) = match pending.take() {
            Some((mut text, start)) => {
                text.push_str(raw);
                (text, start)
            }
            None => (raw.to_string(), number),
        };
        if ends_in_escape(&joined) {
            joined.pop();
            joined.push(' ');
            pending = Some((joined, start));
            continue;
        }
        line(&mut doc, &mut section, &joined, start);
    }
    if let Some((joined, start)) = pending {
        line(&mut doc, &mut section, &joined, start);
    }
    doc
}

/// True when the text ends in a `\` that is not itself escaped.
fn ends_in_escape(text: &str) -> bool {
    let mut escaped = false;
    for c in text.chars() {
        escaped = !escaped && c == '\\';
    }
    escaped
}

fn line(doc: &mut Document, section: &mut Option<String>, text: &str, number: usize) {
    let text = text.trim_matches(WHITESPACE);
    if text.is_empty() {
        return;
    }
    if let Some(rest) = text.strip_prefix('[') {
        match rest.strip_suffix(']') {
            Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                doc.sections.push((name.to_string(), number));
                *section = Some(name.to_string());
            }
            _ => {
                doc.errors.push((number, ErrorKind::SectionHeader(text.to_string())));
                // Lines up to the next good header belong to no section we know.
                *section = None;
                doc.sections.push((String::new(), number));
            }
        }
        return;
    }
    let Some((key, value)) = text.split_once('=') else {
        doc.errors.push((number, ErrorKind::NotAnAssignment(text.to_string())));
        return;
    };
    let key = key.trim_matches(WHITESPACE);
    if key.is_empty() {
        doc.errors.push((number, ErrorKind::NotAnAssignment(text.to_string())));
        return;
    }
    match section {
        Some(s) => doc.assignments.push(Assignment {
            section: s.clone(),
            key: key.to_string(),
            value: value.trim_matches(WHITESPACE).to_string(),
            line: number,
        }),
        // After a bad header the error is already reported; one per line would be noise.
        None if doc.sections.last().is_some_and(|(name, _)| name.is_empty()) => {}
        None => doc.errors.push((number, ErrorKind::OutsideSection(key.to_string()))),
    }
}

/// How [`extract_word`] treats backslashes and unterminated quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// `\n`, `\x41`, … are C escapes (unit settings). Without it a backslash just makes the next
    /// character literal (splitting a variable's value at run time).
    pub c_escapes: bool,
    /// Accept an unterminated quote or a trailing backslash instead of failing.
    pub relax: bool,
}

impl Split {
    /// Unit file settings: quotes and C escapes, strictly.
    pub const UNIT: Split = Split { c_escapes: true, relax: false };
    /// A `$VAR` value split into words at run time: quotes respected, never an error.
    pub const RUNTIME: Split = Split { c_escapes: false, relax: true };
}

/// Takes the next word off `input` (leading whitespace skipped), unquoting per
/// systemd.syntax(7): `'…'` and `"…"` keep whitespace, may start anywhere in a word and are
/// removed; backslash escapes work inside and outside quotes. `Ok(None)` at the end of input.
pub fn extract_word(input: &mut &str, split: Split) -> Result<Option<String>, ValueError> {
    let rest = input.trim_start_matches(WHITESPACE);
    if rest.is_empty() {
        *input = rest;
        return Ok(None);
    }
    let mut out: Vec<u8> = Vec::new();
    let mut quote: Option<char> = None;
    let mut chars = rest.char_indices();
    let mut end = rest.len();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (None, c) if WHITESPACE.contains(&c) => {
                end = at;
                break;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                let after = &rest[at + 1..];
                if after.is_empty() {
                    if split.relax {
                        out.push(b'\\');
                        continue;
                    }
                    return Err(ValueError::TrailingBackslash);
                }
                if split.c_escapes {
                    match c_unescape_one(after) {
                        Ok((bytes, used)) => {
                            out.extend_from_slice(&bytes);
                            skip(&mut chars, used);
                        }
                        // Relaxed: an unknown escape stays as written.
                        Err(_) if split.relax => out.push(b'\\'),
                        Err(e) => return Err(e),
                    }
                } else if let Some((_, next)) = chars.next() {
                    push_char(&mut out, next);
                }
            }
            (_, c) => push_char(&mut out, c),
        }
    }
    if let Some(q) = quote
        && !split.relax
    {
        return Err(ValueError::UnterminatedQuote(q));
    }
    *input = &rest[end..];
    String::from_utf8(out).map(Some).map_err(|_| ValueError::InvalidUtf8)
}

/// Splits a whole value into words with [`extract_word`].
pub fn split_words(value: &str, split: Split) -> Result<Vec<String>, ValueError> {
    let mut input = value;
    let mut words = Vec::new();
    while let Some(word) = extract_word(&mut input, split)? {
        words.push(word);
    }
    Ok(words)
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Advances a char iterator by `bytes` bytes (escape sequences are ASCII, so chars == bytes).
fn skip(chars: &mut std::str::CharIndices<'_>, bytes: usize) {
    for _ in 0..bytes {
        chars.next();
    }
}

/// Decodes one C escape; `text` starts right after the backslash. Returns the bytes it stands
/// for and how many bytes of `text` it used. NUL is refused (it cannot be in an argument).
pub fn c_unescape_one(text: &str) -> Result<(Vec<u8>, usize), ValueError> {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(ValueError::TrailingBackslash);
    };
    let simple = match first {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0b),
        b'\\' => Some(b'\\'),
        b'"' => Some(b'"'),
        b'\'' => Some(b'\''),
        b's' => Some(b' '),
        _ => None,
    };
    if let Some(b) = simple {
        return Ok((vec![b], 1));
    }
    let shown = |n: usize| text.chars().take(n + 1).collect::<String>();
    let digits = |n: usize, radix: u32| -> Result<u32, ValueError> {
        let s = text.get(1..1 + n).ok_or_else(|| ValueError::ShortEscape { escape: shown(n) })?;
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValueError::BadEscape { escape: shown(n) });
        }
        u32::from_str_radix(s, radix).map_err(|_| ValueError::BadEscape { escape: shown(n) })
    };
    match first {
        b'x' => match digits(2, 16)? {
            0 => Err(ValueError::Nul { escape: "x00" }),
            v => Ok((vec![v as u8], 3)),
        },
        b'u' | b'U' => {
            let n = if first == b'u' { 4 } else { 8 };
            let v = digits(n, 16)?;
            match char::from_u32(v) {
                Some(c) if v != 0 => {
                    let mut out = Vec::new();
                    push_char(&mut out, c);
                    Ok((out, n + 1))
                }
                _ => Err(ValueError::InvalidChar { escape: shown(n) }),
            }
        }
        b'0'..=b'7' => {
            let s = text.get(..3).filter(|s| s.bytes().all(|b| (b'0'..=b'7').contains(&b)));
            let v = s.and_then(|s| u32::from_str_radix(s, 8).ok()).ok_or(ValueError::OctalDigits)?;
            match v {
                0 => Err(ValueError::Nul { escape: "000" }),
                1..=255 => Ok((vec![v as u8], 3)),
                _ => Err(ValueError::OctalRange(v)),
            }
        }
        _ => Err(ValueError::UnknownEscape(text.chars().next().unwrap_or(' '))),
    }
}

/// systemd booleans: `1 yes y true t on` and `0 no n false f off`, any case.
pub fn parse_bool(value: &str) -> Result<bool, ValueError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(ValueError::Bool(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(doc: &Document) -> Vec<(&str, &str, &str, usize)> {
        doc.assignments.iter().map(|a| (a.section.as_str(), a.key.as_str(), a.value.as_str(), a.line)).collect()
    }

    #[test]
    fn sections_comments_and_whitespace() {
        let doc = parse("# c\n; c\n[Unit]\n  Description =  hello world  \n\n[Service]\nType=simple\r\n");
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        assert_eq!(kv(&doc), vec![("Unit", "Description", "hello world", 4), ("Service", "Type", "simple", 7)]);
        assert_eq!(doc.sections, vec![("Unit".to_string(), 3), ("Service".to_string(), 6)]);
    }

    #[test]
    fn continuation_skips_comments_and_reports_first_line() {
        let text =
            "[Service]\nExecStart=/bin/foo \\\n  --a \\\n# --commented-out \\\n  ; another\n  --b\nType=oneshot\n";
        let doc = parse(text);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        assert_eq!(doc.assignments[0].value, "/bin/foo    --a    --b");
        assert_eq!(doc.assignments[0].line, 2);
        assert_eq!(doc.assignments[1].key, "Type");
        assert_eq!(doc.assignments[1].line, 7);
    }

    #[test]
    fn continuation_ended_by_empty_line_and_eof() {
        let doc = parse("[A]\nX=a \\\n\nY=b \\");
        assert_eq!(kv(&doc), vec![("A", "X", "a", 2), ("A", "Y", "b", 4)]);
    }

    #[test]
    fn escaped_backslash_at_end_is_not_continuation() {
        let doc = parse("[A]\nX=a\\\\\nY=b\n");
        assert_eq!(kv(&doc), vec![("A", "X", "a\\\\", 2), ("A", "Y", "b", 3)]);
    }

    #[test]
    fn syntax_errors_have_lines() {
        let doc = parse("Early=1\n[Unit\n[Good]\njunk line\n=value\nOk=1\n[]\n");
        let lines: Vec<usize> = doc.errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 7]);
        assert!(matches!(doc.errors[0].1, ErrorKind::OutsideSection(ref k) if k == "Early"));
        assert!(matches!(doc.errors[1].1, ErrorKind::SectionHeader(_)));
        assert!(matches!(doc.errors[2].1, ErrorKind::NotAnAssignment(_)));
        assert_eq!(kv(&doc), vec![("Good", "Ok", "1", 6)]);
    }

    #[test]
    fn value_keeps_equals_and_quotes() {
        let doc = parse("[S]\nEnvironment=\"A=b c\" D=e=f\n");
        assert_eq!(doc.assignments[0].value, "\"A=b c\" D=e=f");
    }

    #[test]
    fn words_quotes_and_escapes() {
        let w = split_words(r#"a "b c" 'd e' f"g h"i \x41\n "\"q\"" '\'' \s"#, Split::UNIT).unwrap();
        assert_eq!(w, vec!["a", "b c", "d e", "fg hi", "A\n", "\"q\"", "'", " "]);
        assert_eq!(split_words(r#""" x"#, Split::UNIT).unwrap(), vec!["", "x"]);
        assert_eq!(split_words(r"\101\u00e9\U0001F600", Split::UNIT).unwrap(), vec!["Aé😀"]);
        assert_eq!(split_words("  ", Split::UNIT).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn word_errors() {
        assert!(split_words("\"open", Split::UNIT).is_err());
        assert!(split_words("a\\", Split::UNIT).is_err());
        assert!(split_words("\\q", Split::UNIT).is_err());
        assert!(split_words("\\x00", Split::UNIT).is_err());
        assert!(split_words("\\xff", Split::UNIT).is_err(), "a lone 0xff byte is not UTF-8");
        assert!(split_words("\\xc3\\xa9", Split::UNIT).is_ok());
        assert!(split_words("\\12", Split::UNIT).is_err());
    }

    #[test]
    fn runtime_split_is_relaxed_and_literal() {
        assert_eq!(split_words(r#"-o "a b" \n 'open"#, Split::RUNTIME).unwrap(), vec!["-o", "a b", "n", "open"]);
        assert_eq!(split_words("x\\", Split::RUNTIME).unwrap(), vec!["x\\"]);
    }

    #[test]
    fn booleans() {
        for t in ["1", "yes", "TRUE", "on", "y", "t"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "no", "False", "OFF", "n", "f"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert!(parse_bool("maybe").is_err());
    }
}
