//! libpam-runtime's `pam-auth-update --package`: the PAM stacks.

use std::collections::BTreeMap;

use berth_fstree::{Metadata, Tree};

use super::{SetupError, present, put_file, read_file};
use crate::deb::path;

/// The PAM stacks `pam-auth-update --package` writes on a first installation of
/// libpam-runtime (bookworm's algorithm): `/etc/pam.d/common-{auth,account,password,session,
/// session-noninteractive}` from the templates in `/usr/share/pam/` and the profiles in
/// `/usr/share/pam-configs/` that say `Default: yes`, by priority (then name, descending); the
/// first module of each block uses its `-Initial` lines, and `end` in a jump becomes the
/// number of lines left in the block. Existing files are kept. Returns the files written.
pub fn pam_auth_update(tree: &mut Tree, mtime: i64) -> Result<Vec<String>, SetupError> {
    const CONFIGS: &str = "/usr/share/pam-configs";
    let mut written = Vec::new();
    let Some((dir, _)) = path::follow(tree, CONFIGS.trim_start_matches('/').as_bytes()) else {
        return Ok(written);
    };
    let names: Vec<String> =
        tree.entries(dir).map(|(n, _)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>();
    let mut profiles: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for name in names {
        let Some(text) = read_file(tree, &format!("{CONFIGS}/{name}")) else { continue };
        let profile = parse_pam_profile(&String::from_utf8_lossy(&text));
        if profile.get("Default").map(String::as_str) == Some("yes") && !profile.contains_key("disabled") {
            profiles.push((name, profile));
        }
    }
    let priority =
        |p: &BTreeMap<String, String>| p.get("Priority").and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0);
    profiles.sort_by(|(an, a), (bn, b)| priority(b).cmp(&priority(a)).then(bn.cmp(an)));
    // A profile that conflicts with one already chosen (higher priority) is left out.
    let mut enabled: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for (name, p) in profiles {
        let conflicts = |p: &BTreeMap<String, String>, other: &str| {
            p.get("Conflicts").is_some_and(|c| c.split(", ").any(|x| x.trim() == other))
        };
        if enabled.iter().any(|(n, e)| conflicts(e, &name) || conflicts(&p, n)) {
            continue;
        }
        enabled.push((name, p));
    }
    for kind in ["auth", "account", "password", "session", "session-noninteractive"] {
        let target = format!("/etc/pam.d/common-{kind}");
        if present(tree, &target) {
            continue;
        }
        let Some(template) = read_file(tree, &format!("/usr/share/pam/common-{kind}")) else { continue };
        let Some(text) = pam_stack(&String::from_utf8_lossy(&template), kind, &enabled) else { continue };
        put_file(tree, &target, text.into_bytes(), Metadata::root(0o644, mtime))?;
        written.push(target);
    }
    Ok(written)
}

/// pam-auth-update's profile format: `Field: value` lines, continuation lines indented.
fn parse_pam_profile(text: &str) -> BTreeMap<String, String> {
    let mut profile: BTreeMap<String, String> = BTreeMap::new();
    let mut field = String::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace)
            && let Some((k, v)) = line.split_once(':')
            && !k.is_empty()
            && !k.contains(char::is_whitespace)
        {
            field = k.strip_suffix("-Final").unwrap_or(k).to_string();
            profile.insert(field.clone(), v.trim().to_string());
            continue;
        }
        let t = line.trim();
        if t.is_empty() || field.is_empty() {
            continue;
        }
        let value = profile.entry(field.clone()).or_default();
        if !value.is_empty() {
            value.push('\n');
        }
        value.push_str(t);
        if t.contains("pam_tally") {
            profile.insert("disabled".into(), String::new());
        }
    }
    if !profile.contains_key("Session-Interactive-Only") {
        for suffix in ["-Type", "", "-Initial"] {
            if let Some(v) = profile.get(&format!("Session{suffix}")).cloned() {
                profile.insert(format!("Session-noninteractive{suffix}"), v);
            }
        }
    }
    profile
}

/// One `common-*` file from its template; `None` when the template lacks the markers.
fn pam_stack(template: &str, kind: &str, enabled: &[(String, BTreeMap<String, String>)]) -> Option<String> {
    let field = {
        let mut c = kind.chars();
        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
    };
    let keyword = kind.trim_end_matches("-noninteractive");
    let lines_of = |block: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut position = 0;
        for (_, p) in enabled {
            if p.get(&format!("{field}-Type")).map(String::as_str) != Some(block) {
                continue;
            }
            let initial = p.get(&format!("{field}-Initial")).filter(|_| position == 0);
            position += 1;
            if let Some(text) = initial.or_else(|| p.get(&field)) {
                out.extend(text.lines().map(str::to_string));
            }
        }
        out
    };
    let mut out = String::new();
    let mut state = 0;
    for line in template.lines() {
        match state {
            1 if line.starts_with("# here's the fallback if no module succeeds") => state = 2,
            3 if line.starts_with("# end of pam-auth-update config") => state = 4,
            1 | 3 => continue,
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
        let block = match state {
            0 if line.starts_with("# here are the per-package modules (the \"Primary\" block)") => "Primary",
            2 if line.starts_with("# and here are more per-package modules (the \"Additional\" block)") => "Additional",
            _ => continue,
        };
        let lines = lines_of(block);
        let mut count = lines.len() as i64 - i64::from(block == "Additional");
        if block == "Primary" && lines.is_empty() {
            out.push_str(&format!("{keyword}\t[default=1]\t\t\tpam_permit.so\n"));
        }
        for l in lines {
            out.push_str(keyword);
            out.push('\t');
            out.push_str(&pam_line(&l, count));
            count -= 1;
        }
        state += 1;
    }
    (state == 4).then_some(out)
}

/// `control module options` with `end` in the control replaced by `count`; pam-auth-update
/// rejoins the options with single spaces (and a space even when there are none).
fn pam_line(line: &str, count: i64) -> String {
    let (control, rest) = if line.starts_with('[') {
        match line.find(']') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => (line, ""),
        }
    } else {
        line.split_at(line.find(char::is_whitespace).unwrap_or(line.len()))
    };
    let rest_trimmed = rest.trim_start();
    let gap = &rest[..rest.len() - rest_trimmed.len()];
    let mut words = rest_trimmed.split_whitespace();
    let module = words.next().unwrap_or("");
    let options: Vec<&str> = words.collect();
    let modline = format!("{control}{gap}{module}").replace("end", &count.to_string());
    format!("{modline} {}\n", options.join(" "))
}
