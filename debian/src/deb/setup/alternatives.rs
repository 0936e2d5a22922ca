//! `update-alternatives --install` from the `postinst`s, in auto mode.

use std::collections::BTreeMap;

use berth_fstree::{NodeKind, Tree};

use super::{SetupError, entry, exists, put_symlink};

/// One `update-alternatives --install LINK NAME PATH PRIORITY [--slave LINK NAME PATH]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    pub slaves: Vec<SlaveLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveLink {
    pub link: String,
    pub name: String,
    pub path: String,
}

/// The literal `update-alternatives --install` commands of a maintainer script, and the text of
/// those that could not be read (arguments from shell variables or command substitution). Lines
/// continued with `\` are joined; other commands are ignored.
pub fn parse_alternatives(script: &[u8]) -> (Vec<Alternative>, Vec<String>) {
    let text = String::from_utf8_lossy(script).replace("\\\n", " ");
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut tokens = line.split_whitespace();
        if !tokens.any(|t| t == "update-alternatives") {
            continue;
        }
        let args: Vec<&str> = tokens
            .take_while(|t| !matches!(*t, ";" | "||" | "&&" | "|" | "#") && !t.starts_with('>') && !t.starts_with("2>"))
            .map(|t| t.trim_end_matches(';'))
            .collect();
        if !args.contains(&"--install") {
            continue;
        }
        match parse_install(&args) {
            Some(alt) => found.push(alt),
            None => unreadable.push(line.to_owned()),
        }
    }
    (found, unreadable)
}

fn parse_install(args: &[&str]) -> Option<Alternative> {
    if args.iter().any(|a| a.contains(['$', '`', '"', '\'', '*'])) {
        return None;
    }
    let mut alt = None;
    let mut slaves = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "--install" => {
                let [link, name, path, prio] = args.get(i + 1..i + 5)? else { return None };
                alt = Some(((*link).to_owned(), (*name).to_owned(), (*path).to_owned(), prio.parse().ok()?));
                i += 5;
            }
            "--slave" => {
                let [link, name, path] = args.get(i + 1..i + 4)? else { return None };
                slaves.push(SlaveLink { link: (*link).into(), name: (*name).into(), path: (*path).into() });
                i += 4;
            }
            "--altdir" | "--admindir" | "--log" => i += 2,
            a if a.starts_with("--") => i += 1, // --quiet, --force, --verbose
            _ => return None,
        }
    }
    let (link, name, path, priority) = alt?;
    let absolute = |p: &str| p.starts_with('/');
    if !absolute(&link) || !absolute(&path) || slaves.iter().any(|s| !absolute(&s.link) || !absolute(&s.path)) {
        return None;
    }
    Some(Alternative { link, name, path, priority, slaves })
}

/// What [`alternatives`] chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlternativesReport {
    /// `(name, chosen path)`, by name.
    pub chosen: Vec<(String, String)>,
    /// Links not made, with the reason (no candidate present, a real file in the way…).
    pub skipped: Vec<String>,
}

/// `update-alternatives` in auto mode: for each name, the candidate with the highest priority
/// whose path exists in the tree (the first listed on a tie) gets `/etc/alternatives/NAME ->
/// PATH` and `LINK -> /etc/alternatives/NAME`, and likewise for its slaves whose paths exist.
/// A link where a regular file is is left alone, as update-alternatives does.
pub fn alternatives(tree: &mut Tree, alts: &[Alternative], mtime: i64) -> Result<AlternativesReport, SetupError> {
    let mut by_name: BTreeMap<&str, Vec<&Alternative>> = BTreeMap::new();
    for a in alts {
        by_name.entry(a.name.as_str()).or_default().push(a);
    }
    let mut report = AlternativesReport::default();
    for (name, candidates) in by_name {
        let mut best: Option<&Alternative> = None;
        for c in candidates {
            if exists(tree, &c.path) && best.is_none_or(|b| c.priority > b.priority) {
                best = Some(c);
            }
        }
        let Some(best) = best else {
            report.skipped.push(format!("{name}: no candidate is installed"));
            continue;
        };
        let mut links = vec![(best.link.as_str(), name, best.path.as_str())];
        for s in &best.slaves {
            if exists(tree, &s.path) {
                links.push((s.link.as_str(), s.name.as_str(), s.path.as_str()));
            } else {
                report.skipped.push(format!("{}: slave {} is not installed", name, s.path));
            }
        }
        for (link, lname, target) in links {
            if let Some((_, Some(id))) = entry(tree, link)
                && !matches!(tree.node(id).kind, NodeKind::Symlink(_))
            {
                report.skipped.push(format!("{link}: not replacing a file with a link to {target}"));
                continue;
            }
            let admin = format!("/etc/alternatives/{lname}");
            put_symlink(tree, &admin, target, mtime)?;
            put_symlink(tree, link, &admin, mtime)?;
        }
        report.chosen.push((name.to_owned(), best.path.clone()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_from_scripts() {
        let script = b"#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
            \tupdate-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\\n\
            \t  --slave /usr/bin/nawk nawk /usr/bin/mawk\n\
            \tupdate-alternatives --quiet --install /usr/bin/pager pager /bin/more 50 || true\n\
            \tupdate-alternatives --install /usr/bin/x x \"$P\" 10\n\
            \tupdate-alternatives --remove awk /usr/bin/mawk\n\
            fi\n";
        let (alts, bad) = parse_alternatives(script);
        assert_eq!(alts.len(), 2);
        assert_eq!(
            (alts[0].link.as_str(), alts[0].name.as_str(), alts[0].path.as_str()),
            ("/usr/bin/awk", "awk", "/usr/bin/mawk")
        );
        assert_eq!(alts[0].priority, 5);
        assert_eq!(
            alts[0].slaves,
            [SlaveLink { link: "/usr/bin/nawk".into(), name: "nawk".into(), path: "/usr/bin/mawk".into() }]
        );
        assert_eq!(alts[1].path, "/bin/more");
        assert_eq!(bad, ["update-alternatives --install /usr/bin/x x \"$P\" 10"]);
    }
}
