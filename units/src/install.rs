//! Enabling and disabling units (systemd's `install.c`): the one implementation behind an
//! image's `[units] enable` (the builder), `berthctl enable/disable/is-enabled/status`,
//! first-boot provisioning and the service manager's enablement state.
//!
//! A unit's `[Install]` section names its links under [`ADMIN_UNIT_DIR`]: `WantedBy=X` →
//! `X.wants/UNIT`, `RequiredBy=X` → `X.requires/UNIT`, `Alias=A` → `A`, each pointing at the
//! unit file; a template is enabled as its `DefaultInstance=`; `Also=` names units enabled and
//! disabled with it. Planning ([`plan_enable`], [`plan_disable`]) only reads, through the
//! [`Loader`] (a directory or the builder's tree), and returns the [`Change`]s; the caller
//! applies them: [`apply`] on a directory (atomically, each link created under a temporary name
//! and renamed into place), the builder on its tree.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::error::location;
use super::load::{ADMIN_UNIT_DIR, Entry, Loader, UnitDirs};
use super::{LoadState, Unit, UnitName};

/// A link enabling creates, or removes: what [`plan_enable`] and [`plan_disable`] return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `link` (inside the root) is to point at `target`, replacing a link that points elsewhere.
    Created {
        link: PathBuf,
        target: PathBuf,
    },
    Removed {
        link: PathBuf,
    },
    /// The unit has no `[Install]` section: nothing to enable or disable.
    Static {
        unit: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created { link, target } => write!(f, "Created symlink {} → {}.", link.display(), target.display()),
            Change::Removed { link } => write!(f, "Removed {}.", link.display()),
            Change::Static { unit } => write!(
                f,
                "{unit} is static: it has no [Install] section, so there is nothing to enable or disable \
                 (it starts when another unit needs it)."
            ),
        }
    }
}

/// A unit's enablement state (`systemctl is-enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enablement {
    /// One of its `[Install]` links exists.
    Enabled,
    Disabled,
    /// No `[Install]` section: other units pull it in.
    Static,
    /// Its file is empty or a link to `/dev/null`.
    Masked,
    /// The name asked about is an alias of another unit.
    Alias,
}

impl Enablement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enablement::Enabled => "enabled",
            Enablement::Disabled => "disabled",
            Enablement::Static => "static",
            Enablement::Masked => "masked",
            Enablement::Alias => "alias",
        }
    }
}

impl fmt::Display for Enablement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a unit cannot be enabled or disabled, or a change not applied.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{unit}: unit not found (searched {searched})")]
    NotFound { unit: String, searched: String },
    #[error("{unit}: the unit is masked ({} is empty or a link to /dev/null)", path.display())]
    Masked { unit: String, path: PathBuf },
    #[error("{unit}: the unit has errors: {}: {reason}", location(path, *line))]
    Invalid { unit: String, path: PathBuf, line: usize, reason: String },
    #[error("{unit}: has no unit file to link to")]
    NoFile { unit: String },
    #[error("{unit}: a template without DefaultInstance=; enable an instance")]
    NoInstance { unit: String },
    #[error("{unit}: {reason}")]
    Name { unit: String, reason: String },
    #[error("{unit}: {} exists and is not a symlink; not replacing it", link.display())]
    NotALink { unit: String, link: PathBuf },
    /// A unit named by `Also=` failed (the unit that names it is `unit`).
    #[error("{unit}: Also={also}: {cause}")]
    Also { unit: String, also: String, cause: Box<InstallError> },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The links enabling `unit` creates (its own, not its `Also=` units'), each pointing at its
/// unit file. A template is enabled as its `DefaultInstance=`.
pub fn install_links(unit: &Unit) -> Result<Vec<(PathBuf, PathBuf)>, InstallError> {
    let target = unit.fragment.clone().ok_or_else(|| InstallError::NoFile { unit: unit.name.clone() })?;
    let bad_name = |reason| InstallError::Name { unit: unit.name.clone(), reason };
    let name = UnitName::parse(&unit.name).map_err(bad_name)?;
    let link_name = if name.is_template() {
        let instance = unit
            .install
            .default_instance
            .as_deref()
            .ok_or_else(|| InstallError::NoInstance { unit: unit.name.clone() })?;
        name.instantiate(instance).map_err(bad_name)?.full
    } else {
        unit.name.clone()
    };
    let admin = Path::new(ADMIN_UNIT_DIR);
    let mut links = Vec::new();
    for (list, suffix) in [(&unit.install.wanted_by, "wants"), (&unit.install.required_by, "requires")] {
        for by in list {
            links.push((admin.join(format!("{by}.{suffix}")).join(&link_name), target.clone()));
        }
    }
    // The loader let only unit names of the unit's own type through.
    for alias in &unit.install.alias {
        links.push((admin.join(alias), target.clone()));
    }
    Ok(links)
}

/// No `[Install]` section to enable the unit by.
pub fn is_static(unit: &Unit) -> bool {
    let i = &unit.install;
    i.wanted_by.is_empty() && i.required_by.is_empty() && i.alias.is_empty() && i.also.is_empty()
}

/// Whether `unit` is enabled (one of its install links exists), disabled, static or masked.
pub fn enablement<D: UnitDirs>(loader: &Loader<D>, unit: &Unit) -> Enablement {
    if unit.state == LoadState::Masked {
        return Enablement::Masked;
    }
    if is_static(unit) {
        return Enablement::Static;
    }
    let links = install_links(unit).unwrap_or_default();
    if links.iter().any(|(link, _)| loader.files().entry(link).is_ok_and(|e| e == Entry::Symlink)) {
        Enablement::Enabled
    } else {
        Enablement::Disabled
    }
}

/// The enablement state of the unit called `name`: [`Enablement::Alias`] when `name` is an
/// alias, else [`enablement`] of the unit; `None` when there is no such unit.
pub fn enablement_of<D: UnitDirs>(loader: &Loader<D>, name: &str) -> Option<Enablement> {
    let unit = loader.load(name);
    match unit.state {
        LoadState::NotFound => None,
        _ if unit.name != name && unit.aliases.iter().any(|a| a == name) => Some(Enablement::Alias),
        _ => Some(enablement(loader, &unit)),
    }
}

/// The changes that enable `name` and the units its `Also=` names: the links that are missing
/// or point elsewhere. Empty when all are in place; `[Change::Static]` for a unit without
/// `[Install]`.
pub fn plan_enable<D: UnitDirs>(loader: &Loader<D>, name: &str) -> Result<Vec<Change>, InstallError> {
    plan_with_also(loader, name, enable_one)
}

/// What enabling or disabling plans for one unit (loaded, asked for by a name), `Also=` aside.
type PlanOne<D> = fn(&Loader<D>, &str, &Unit, &mut Vec<Change>) -> Result<(), InstallError>;

/// The changes `one` plans for `name` and then, each once, for the units its `Also=` names (and
/// theirs): the walk enabling and disabling share.
fn plan_with_also<D: UnitDirs>(loader: &Loader<D>, name: &str, one: PlanOne<D>) -> Result<Vec<Change>, InstallError> {
    let mut changes = Vec::new();
    visit_with_also(loader, name, one, &mut changes, &mut BTreeSet::new())?;
    Ok(changes)
}

fn visit_with_also<D: UnitDirs>(
    loader: &Loader<D>,
    name: &str,
    one: PlanOne<D>,
    changes: &mut Vec<Change>,
    seen: &mut BTreeSet<String>,
) -> Result<(), InstallError> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let unit = loader.load(name);
    one(loader, name, &unit, changes)?;
    for also in &unit.install.also {
        visit_with_also(loader, also, one, changes, seen).map_err(|cause| InstallError::Also {
            unit: unit.name.clone(),
            also: also.clone(),
            cause: Box::new(cause),
        })?;
    }
    Ok(())
}

/// The links that enable `unit` (called `name`), `Also=` aside.
fn enable_one<D: UnitDirs>(
    loader: &Loader<D>,
    name: &str,
    unit: &Unit,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    match unit.state {
        LoadState::Loaded | LoadState::Unsupported => {}
        LoadState::NotFound => return Err(not_found(loader, name)),
        LoadState::Masked => {
            let path = unit.fragment.clone().unwrap_or_else(|| PathBuf::from(&unit.name));
            return Err(InstallError::Masked { unit: unit.name.clone(), path });
        }
        LoadState::Error => {
            let (path, line, reason) = match unit.errors.first() {
                Some(e) => (e.file.clone(), e.line, e.kind.to_string()),
                None => (PathBuf::from(&unit.name), 0, "unusable".into()),
            };
            return Err(InstallError::Invalid { unit: unit.name.clone(), path, line, reason });
        }
    }
    if is_static(unit) {
        changes.push(Change::Static { unit: unit.name.clone() });
        return Ok(());
    }
    for (link, target) in install_links(unit)? {
        let planned = changes.iter().any(|c| matches!(c, Change::Created { link: l, .. } if *l == link));
        if !planned && needs_link(loader.files(), &unit.name, &link, &target)? {
            changes.push(Change::Created { link, target });
        }
    }
    Ok(())
}

/// Whether `link` must be (re)created to point at `target`: not if it does already; an existing
/// link elsewhere is replaced, anything else is not.
fn needs_link(files: &impl UnitDirs, unit: &str, link: &Path, target: &Path) -> Result<bool, InstallError> {
    match files.entry(link) {
        Ok(Entry::Symlink) => Ok(files.read_link(link).map_or(true, |t| t != target)),
        Ok(_) => Err(InstallError::NotALink { unit: unit.to_string(), link: link.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(InstallError::Io { what: "reading", path: files.shown(link), source }),
    }
}

/// The changes that disable `name` and the units its `Also=` names: its entries in every
/// `.wants/` and `.requires/` directory of [`ADMIN_UNIT_DIR`] (under any of its names, and a
/// template's default instance), and its `Alias=` links. Masks (links to `/dev/null`) stay.
/// A unit whose file is gone can still be disabled.
pub fn plan_disable<D: UnitDirs>(loader: &Loader<D>, name: &str) -> Result<Vec<Change>, InstallError> {
    plan_with_also(loader, name, disable_one)
}

/// The links to remove to disable `unit` (asked for as `name`), `Also=` aside.
fn disable_one<D: UnitDirs>(
    loader: &Loader<D>,
    name: &str,
    unit: &Unit,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    let files = loader.files();
    let before = changes.len();
    let mut names: BTreeSet<String> = unit.names().map(str::to_string).collect();
    names.insert(name.to_string());
    if let (Ok(n), Some(instance)) = (UnitName::parse(&unit.name), &unit.install.default_instance)
        && n.is_template()
        && let Ok(i) = n.instantiate(instance)
    {
        names.insert(i.full);
    }
    let admin = Path::new(ADMIN_UNIT_DIR);
    let mut links: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = files.read_dir(admin) {
        let mut dirs: Vec<String> = entries
            .into_iter()
            .filter_map(|e| e.into_string().ok())
            .filter(|d| d.ends_with(".wants") || d.ends_with(".requires"))
            .collect();
        dirs.sort();
        for dir in dirs {
            links.extend(names.iter().map(|n| admin.join(&dir).join(n)));
        }
    }
    links.extend(unit.install.alias.iter().map(|a| admin.join(a)));
    for link in links {
        let is_link = files.entry(&link).is_ok_and(|e| e == Entry::Symlink);
        let is_mask = files.read_link(&link).is_ok_and(|t| t == Path::new("/dev/null"));
        let planned = changes.iter().any(|c| matches!(c, Change::Removed { link: l } if *l == link));
        if is_link && !is_mask && !planned {
            changes.push(Change::Removed { link });
        }
    }
    if unit.state == LoadState::NotFound && changes.len() == before {
        return Err(not_found(loader, name));
    }
    if is_static(unit) && unit.state != LoadState::NotFound && changes.len() == before {
        changes.push(Change::Static { unit: unit.name.clone() });
    }
    Ok(())
}

fn not_found<D: UnitDirs>(loader: &Loader<D>, name: &str) -> InstallError {
    let dirs: Vec<String> = loader.dirs().iter().map(|d| loader.files().shown(d).display().to_string()).collect();
    InstallError::NotFound { unit: name.to_string(), searched: dirs.join(", ") }
}

/// Applies `changes` inside the directory `root`. A link is made under a temporary name beside
/// its place and renamed over it, so the service manager never sees it half made; a link
/// already removed is not an error.
pub fn apply(root: &Path, changes: &[Change]) -> Result<(), InstallError> {
    let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for change in changes {
        match change {
            Change::Created { link, target } => {
                let path = in_root(link);
                let io = |what, path: &Path| {
                    let path = path.to_path_buf();
                    move |source| InstallError::Io { what, path, source }
                };
                let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                    let source = io::Error::new(io::ErrorKind::InvalidInput, "not a path for a link");
                    return Err(InstallError::Io { what: "creating", path, source });
                };
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
                let temp = dir.join(format!(".{}.berth-install-{}", file.to_string_lossy(), std::process::id()));
                let _ = std::fs::remove_file(&temp);
                std::os::unix::fs::symlink(target, &temp).map_err(io("creating", &temp))?;
                if let Err(source) = std::fs::rename(&temp, &path) {
                    let _ = std::fs::remove_file(&temp);
                    return Err(InstallError::Io { what: "creating", path, source });
                }
            }
            Change::Removed { link } => {
                let path = in_root(link);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(InstallError::Io { what: "removing", path, source: e });
                    }
                    _ => {}
                }
            }
            Change::Static { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
