//! Percent-encoding as the three clouds' URLs and SigV4 want it (RFC 3986: every byte but the
//! unreserved `A-Z a-z 0-9 - . _ ~` as `%XX`, uppercase), and back.

use std::fmt::Write as _;

/// `bytes` encoded onto `out`; the bytes in `keep` are left as they are too.
pub(crate) fn encode_into(bytes: &[u8], keep: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `s` encoded as one path segment or query value (a `/` too).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_into(s.as_bytes(), b"", &mut out);
    out
}

/// `s` encoded as a path: its `/` kept.
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_into(s.as_bytes(), b"/", &mut out);
    out
}

/// `%XX` decoded; anything else (a stray `%`, `+`) kept as it is.
pub fn decode(s: &str) -> Vec<u8> {
    decode_with(s, false)
}

/// A query value decoded as forms write it: `%XX`, and `+` as a space; bytes that are not
/// UTF-8 replaced.
pub fn decode_query(s: &str) -> String {
    String::from_utf8_lossy(&decode_with(s, true)).into_owned()
}

fn decode_with(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if plus_is_space && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_and_decoded() {
        assert_eq!(encode("a b/c+é~_.-"), "a%20b%2Fc%2B%C3%A9~_.-");
        assert_eq!(encode_path("dir/a b"), "dir/a%20b");
        assert_eq!(decode("a%2Fb+c%zz%4"), b"a/b+c%zz%4");
        assert_eq!(decode_query("a%2Bb+c"), "a+b c");
        let mut out = String::from("x=");
        encode_into(&[0xff, b'a'], b"", &mut out);
        assert_eq!(out, "x=%FFa");
    }
}
