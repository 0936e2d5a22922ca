//! Shell-style wildcards: `*`, `?` and `[...]` classes (fnmatch without flags, as kmod matches
//! module aliases), and path globs where `*` stays inside one `/`-separated part and `**`
//! spans any number of parts (as image definitions select module files).

/// Whether `s` contains a wildcard character.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// fnmatch(3) without flags: `*` and `?` match any byte, `/` included.
pub fn matches(pattern: &str, text: &str) -> bool {
    wild(pattern.as_bytes(), text.as_bytes())
}

/// Matches a `/`-separated path: `**` as a whole part matches zero or more parts, other parts
/// match one part each with [`matches`] semantics (so `*` does not cross a `/`).
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    parts_match(&pat, &parts)
}

fn parts_match(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|skip| parts_match(rest, &parts[skip..])),
        Some((first, rest)) => match parts.split_first() {
            Some((part, more)) => matches(first, part) && parts_match(rest, more),
            None => false,
        },
    }
}

/// Iterative wildcard matching with single-star backtracking (linear in practice).
fn wild(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` seen, and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => class(p, pi, t[ti]),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((after, at)) => {
                    pi = after;
                    ti = at + 1;
                    star = Some((after, at + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == b'['`; returns the index after the
/// class when it matches. A `[` without a closing `]` is a literal `[`.
fn class(p: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    if i >= p.len() {
        return (c == b'[').then_some(start + 1);
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &lo = p.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
        if i >= p.len() {
            // Unterminated: treat the `[` as an ordinary character.
            return (c == b'[').then_some(start + 1);
        }
    }
    (hit != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("crc32c", "crc32c"));
        assert!(matches("xt_*", "xt_conntrack"));
        assert!(!matches("xt_*", "nft_ct"));
        assert!(matches("pci:v00008086d*sv*sd*bc01sc06i01*", "pci:v00008086d00002922sv1sd2bc01sc06i01"));
        assert!(matches("a?c", "abc") && !matches("a?c", "ac"));
        assert!(matches("[a-c]x", "bx") && !matches("[!a-c]x", "bx") && matches("[]]", "]"));
        assert!(matches("*a*b*", "xxaxxbxx") && !matches("*a*b", "ba"));
        assert!(matches("[abc", "[abc") && matches("x[", "x[") && matches("[!", "[!"));
    }

    #[test]
    fn path_globs() {
        assert!(path_matches("fs/overlayfs/*", "fs/overlayfs/overlay.ko"));
        assert!(!path_matches("fs/*", "fs/overlayfs/overlay.ko"));
        assert!(path_matches("drivers/net/**", "drivers/net/ethernet/intel/e1000/e1000.ko"));
        assert!(path_matches("**/e1000*.ko", "drivers/net/ethernet/intel/e1000/e1000.ko"));
        assert!(path_matches("drivers/**/e1000/*", "drivers/net/ethernet/intel/e1000/e1000.ko"));
        assert!(!path_matches("drivers/**/e100/*", "drivers/net/ethernet/intel/e1000/e1000.ko"));
    }
}
