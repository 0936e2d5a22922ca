//! Enabling systemd units at build time, as `systemctl enable` would: each unit's `[Install]`
//! section becomes `.wants/` and `.requires/` links under `/etc/systemd/system`, plus `Alias=`
//! links, following `Also=`. The service manager (berth-init) reads exactly these links.

use std::collections::BTreeSet;

use berth_fstree::{Metadata, Node, NodeKind, Tree};

const ADMIN_DIR: &str = "etc/systemd/system";
/// Where packages put units, searched in this order (merged-/usr: `/lib` is `/usr/lib`).
const UNIT_DIRS: [&str; 2] = ["etc/systemd/system", "usr/lib/systemd/system"];

#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    #[error("unit {unit}: not found in /etc/systemd/system or /usr/lib/systemd/system (is its package in `packages`?)")]
    NotFound { unit: String },
    #[error("unit {unit}: its [Install] section names nothing to enable it by (no WantedBy, RequiredBy or Alias)")]
    NothingToEnable { unit: String },
    #[error("unit {unit}: {why}")]
    Invalid { unit: String, why: String },
    #[error("unit {unit}: {source}")]
    Tree {
        unit: String,
        #[source]
        source: berth_fstree::TreeError,
    },
}

/// Finds a unit file; for an instance `foo@bar.service`, its template `foo@.service`.
fn find_unit(tree: &Tree, unit: &str) -> Option<(String, String)> {
    let template = unit.split_once('@').and_then(|(pre, rest)| {
        let (inst, suffix) = rest.rsplit_once('.')?;
        (!inst.is_empty()).then(|| format!("{pre}@.{suffix}"))
    });
    for name in std::iter::once(unit.to_string()).chain(template) {
        for dir in UNIT_DIRS {
            let path = format!("{dir}/{name}");
            let Some(mut id) = tree.lookup(&path) else { continue };
            // Follow one level of symlink (units linked to their real file, e.g. aliases).
            if let NodeKind::Symlink(target) = &tree.node(id).kind {
                let t = String::from_utf8_lossy(target);
                let resolved = if let Some(abs) = t.strip_prefix('/') { abs.to_string() } else { format!("{dir}/{t}") };
                id = tree.lookup(&resolved)?;
            }
            if let NodeKind::File(data) = &tree.node(id).kind {
                let text = String::from_utf8_lossy(&data.read_all().ok()?).into_owned();
                return Some((format!("/{path}"), text));
            }
        }
    }
    None
}

fn link(tree: &mut Tree, at: &str, target: &str, unit: &str, mtime: i64) -> Result<bool, EnableError> {
    let err = |source| EnableError::Tree { unit: unit.to_string(), source };
    let dir = match at.rsplit_once('/') {
        Some((d, _)) => d,
        None => "",
    };
    tree.mkdir_all(dir, &Metadata::root(0o755, mtime)).map_err(err)?;
    if tree.lookup(at).is_some() {
        return Ok(false);
    }
    tree.insert(at, Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, mtime)))
        .map_err(err)?;
    Ok(true)
}

/// Enables `units` in `tree`. Returns the links created, as `path -> target` strings.
pub fn enable(tree: &mut Tree, units: &[String], mtime: i64) -> Result<Vec<String>, EnableError> {
    let mut done = BTreeSet::new();
    let mut todo: Vec<String> = units.iter().rev().cloned().collect();
    let mut made = Vec::new();
    while let Some(unit) = todo.pop() {
        if !done.insert(unit.clone()) {
            continue;
        }
        let (path, text) = find_unit(tree, &unit).ok_or_else(|| EnableError::NotFound { unit: unit.clone() })?;
        // The same reading of [Install] berth-init's loader does.
        let install = berth_units::Install::parse(&unit, &text)
            .map_err(|why| EnableError::Invalid { unit: unit.clone(), why })?;
        if install.wanted_by.is_empty() && install.required_by.is_empty() && install.alias.is_empty() {
            return Err(EnableError::NothingToEnable { unit });
        }
        // A template is enabled as its default instance when none is given.
        let name = match (unit.split_once('@'), &install.default_instance) {
            (Some((pre, rest)), Some(inst)) if rest.starts_with('.') => format!("{pre}@{inst}{rest}"),
            (Some((_, rest)), None) if rest.starts_with('.') => {
                return Err(EnableError::Invalid {
                    unit,
                    why: "a template needs an instance or DefaultInstance=".into(),
                });
            }
            _ => unit.clone(),
        };
        for (kind, targets) in [("wants", &install.wanted_by), ("requires", &install.required_by)] {
            for t in targets {
                let at = format!("{ADMIN_DIR}/{t}.{kind}/{name}");
                if link(tree, &at, &path, &unit, mtime)? {
                    made.push(format!("/{at} -> {path}"));
                }
            }
        }
        for a in &install.alias {
            if a.contains('/') {
                return Err(EnableError::Invalid { unit, why: format!("Alias={a} is not a unit name") });
            }
            let at = format!("{ADMIN_DIR}/{a}");
            if link(tree, &at, &path, &unit, mtime)? {
                made.push(format!("/{at} -> {path}"));
            }
        }
        todo.extend(install.also.iter().rev().cloned());
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_with(units: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new(Metadata::root(0o755, 0));
        for (path, text) in units {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            t.mkdir_all(dir, &Metadata::root(0o755, 0)).unwrap();
            t.insert(path, Node::new(NodeKind::File(text.as_bytes().into()), Metadata::root(0o644, 0))).unwrap();
        }
        t
    }

    #[test]
    fn enables_like_systemctl() {
        let ssh = "[Unit]\nDescription=x\n[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target \\\n  other.target\nAlias=sshd.service\nAlso=ssh.socket\n";
        let sock = "[Socket]\nListenStream=22\n[Install]\nWantedBy=sockets.target\n";
        let mut t =
            tree_with(&[("usr/lib/systemd/system/ssh.service", ssh), ("usr/lib/systemd/system/ssh.socket", sock)]);
        let made = enable(&mut t, &["ssh.service".into()], 0).unwrap();
        assert_eq!(made.len(), 4, "{made:?}");
        let l = t.lookup("etc/systemd/system/multi-user.target.wants/ssh.service").unwrap();
        assert_eq!(t.node(l).kind, NodeKind::Symlink(b"/usr/lib/systemd/system/ssh.service".to_vec()));
        assert!(t.lookup("etc/systemd/system/other.target.wants/ssh.service").is_some());
        assert!(t.lookup("etc/systemd/system/sshd.service").is_some());
        assert!(t.lookup("etc/systemd/system/sockets.target.wants/ssh.socket").is_some());
    }

    #[test]
    fn templates_and_errors() {
        let getty = "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n";
        let plain = "[Service]\nExecStart=/x\n";
        let mut t =
            tree_with(&[("usr/lib/systemd/system/getty@.service", getty), ("usr/lib/systemd/system/p.service", plain)]);
        enable(&mut t, &["getty@.service".into(), "getty@ttyS0.service".into()], 0).unwrap();
        assert!(t.lookup("etc/systemd/system/getty.target.wants/getty@tty1.service").is_some());
        assert!(t.lookup("etc/systemd/system/getty.target.wants/getty@ttyS0.service").is_some());
        assert!(matches!(enable(&mut t, &["nope.service".into()], 0), Err(EnableError::NotFound { .. })));
        assert!(matches!(enable(&mut t, &["p.service".into()], 0), Err(EnableError::NothingToEnable { .. })));
    }
}
