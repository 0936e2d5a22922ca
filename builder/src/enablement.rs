//! Enabling systemd units at build time, as `systemctl enable` would, with the engine
//! `berthctl enable` and provisioning use ([`berth_units::install`]): it plans the `.wants/`,
//! `.requires/` and `Alias=` links under `/etc/systemd/system` (following `Also=`) by reading the
//! image tree through [`TreeDirs`], and this module applies them to the tree. The service
//! manager (berth-init) reads exactly these links.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_fstree::{Metadata, Node, NodeId, NodeKind, Tree};
use berth_units::install::{self, Change, InstallError};
use berth_units::load::{Entry, Lookup, Resolved, SYSTEM_UNIT_DIRS, UnitDirs};
use berth_units::{HostInfo, Loader};

#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    #[error("unit {unit}: not found in {} (is its package in `packages`?)", SYSTEM_UNIT_DIRS.join(", "))]
    NotFound { unit: String },
    #[error("unit {unit}: its [Install] section names nothing to enable it by (no WantedBy, RequiredBy or Alias)")]
    NothingToEnable { unit: String },
    #[error("unit {unit}: {source}")]
    Plan {
        unit: String,
        #[source]
        source: InstallError,
    },
    #[error("unit {unit}: {source}")]
    Tree {
        unit: String,
        #[source]
        source: berth_fstree::TreeError,
    },
}

/// The image tree as the unit loader reads it: paths are absolute inside the tree, symlinks
/// (absolute ones inside the tree) are followed in the middle of a path.
#[derive(Clone, Copy)]
pub struct TreeDirs<'a>(pub &'a Tree);

impl std::fmt::Debug for TreeDirs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeDirs")
    }
}

impl TreeDirs<'_> {
    /// The node at `path`, following symlinks on the way (and the last one if `follow_last`)
    /// with the unit loader's own walk.
    fn find(&self, path: &Path, follow_last: bool) -> io::Result<NodeId> {
        let (at, why) = match self.resolve(path, follow_last)? {
            // The walk saw every component of the path it returns.
            Resolved::Path(done) => (done, "not in the image tree"),
            Resolved::DevNull => (PathBuf::from("/dev/null"), "links to /dev/null, which the image tree does not have"),
        };
        self.0.lookup(&at).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: {why}", path.display())))
    }
}

impl UnitDirs for TreeDirs<'_> {
    fn lookup(&self, path: &Path) -> io::Result<Lookup> {
        Ok(match self.0.lookup(path).map(|id| &self.0.node(id).kind) {
            None => Lookup::Missing,
            Some(NodeKind::Symlink(target)) => Lookup::Symlink(PathBuf::from(OsStr::from_bytes(target))),
            Some(_) => Lookup::Other,
        })
    }

    fn entry(&self, path: &Path) -> io::Result<Entry> {
        let node = self.0.node(self.find(path, false)?);
        Ok(match &node.kind {
            NodeKind::File(data) => Entry::File { len: data.len(), executable: node.meta.mode & 0o111 != 0 },
            NodeKind::Dir(_) => Entry::Dir,
            NodeKind::Symlink(_) => Entry::Symlink,
            _ => Entry::Other,
        })
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        match &self.0.node(self.find(path, true)?).kind {
            NodeKind::File(data) => {
                let bytes = data.read_all().map_err(io::Error::other)?;
                String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file", path.display()))),
        }
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match &self.0.node(self.find(path, false)?).kind {
            NodeKind::Symlink(target) => Ok(PathBuf::from(OsStr::from_bytes(target))),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a symlink", path.display()))),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let id = self.find(path, true)?;
        if !self.0.node(id).kind.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a directory", path.display())));
        }
        Ok(self.0.entries(id).map(|(name, _)| OsStr::from_bytes(name).to_owned()).collect())
    }
}

/// The changes enabling `unit` (and its `Also=` units) makes in `tree`.
pub fn plan(tree: &Tree, unit: &str) -> Result<Vec<Change>, EnableError> {
    let loader = Loader::over(TreeDirs(tree), HostInfo::default());
    install::plan_enable(&loader, unit).map_err(|source| match source {
        InstallError::NotFound { unit: missing, .. } if missing == unit => EnableError::NotFound { unit: missing },
        source => EnableError::Plan { unit: unit.to_string(), source },
    })
}

/// Applies `changes` to `tree`; links get `mtime`, new directories too.
pub fn apply(tree: &mut Tree, changes: &[Change], unit: &str, mtime: i64) -> Result<(), EnableError> {
    let err = |source| EnableError::Tree { unit: unit.to_string(), source };
    for change in changes {
        match change {
            Change::Created { link, target } => {
                if let Some(dir) = link.parent() {
                    tree.mkdir_all(dir, &Metadata::root(0o755, mtime)).map_err(err)?;
                }
                // The plan replaces only links.
                if tree.lookup(link).is_some() {
                    tree.unlink(link).map_err(err)?;
                }
                let node =
                    Node::new(NodeKind::Symlink(target.as_os_str().as_bytes().to_vec()), Metadata::root(0o777, mtime));
                tree.insert(link, node).map_err(err)?;
            }
            Change::Removed { link } => {
                tree.unlink(link).map_err(err)?;
            }
            Change::Static { .. } => {}
        }
    }
    Ok(())
}

/// Enables `units` in `tree`, in order. Returns the links created, as `path -> target` strings.
/// A unit without `[Install]` is an error here: the image asked to enable it.
pub fn enable(tree: &mut Tree, units: &[String], mtime: i64) -> Result<Vec<String>, EnableError> {
    let mut made = Vec::new();
    for unit in units {
        let changes = plan(tree, unit)?;
        if let [Change::Static { .. }] = changes.as_slice() {
            return Err(EnableError::NothingToEnable { unit: unit.clone() });
        }
        apply(tree, &changes, unit, mtime)?;
        for change in &changes {
            if let Change::Created { link, target } = change {
                made.push(format!("{} -> {}", link.display(), target.display()));
            }
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests;
