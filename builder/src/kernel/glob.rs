//! Shell-style wildcards: `*`, `?` and `[...]` classes (fnmatch without flags, as kmod matches
//! module aliases), and path globs where `*` stays inside one `/`-separated part and `**`
//! spans any number of parts (as image definitions select module files). The wildcard matcher
//! itself is the unit loader's ([`berth_units::condition::glob_match`]); this module adds the
//! path form.

/// Whether `s` contains a wildcard character.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// fnmatch(3) without flags: `*` and `?` match any character, `/` included.
pub fn matches(pattern: &str, text: &str) -> bool {
    berth_units::condition::glob_match(pattern, text)
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
