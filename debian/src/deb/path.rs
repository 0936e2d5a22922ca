//! Paths inside a package and inside the tree: normalizing archive member names, and walking the
//! tree the way the kernel would on the installed system (following symlinks in a path's
//! directories), which is how merged-/usr redirects `bin/sh` into `usr/bin/sh`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_fstree::{Metadata, Node, NodeId, NodeKind, ROOT, Tree};

/// Symlinks followed in one lookup before giving up, as Linux does (`ELOOP` after 40).
const MAX_SYMLINKS: u32 = 40;

/// Normalizes a tar member name: `./` prefixes, repeated and trailing slashes and `.`
/// components go; absolute paths and `..` are refused, so nothing can escape the root.
/// The root itself (`./`) becomes the empty path.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.is_empty() {
        return Err("empty member name");
    }
    if raw[0] == b'/' {
        return Err("absolute member name (escapes the package root)");
    }
    let mut out = Vec::with_capacity(raw.len());
    for name in raw.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => return Err("`..` in the member name (escapes the package root)"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Ok(out)
}

/// A relative tree path as a `Path` for the `Tree` API.
pub(super) fn as_path(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// `dir/name`, or `name` at the root.
pub(super) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The directory part of a `/`-separated path ("" at the root).
pub(super) fn dir_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => &[],
    }
}

/// The directory a path's last name lives in, reached without symlinks.
#[derive(Debug)]
pub(super) struct Parent {
    pub dir: NodeId,
    /// Canonical path of `dir`, relative to the root, `/`-separated ("" for the root).
    pub path: Vec<u8>,
    /// Whether a symlink was followed on the way (a merged-/usr redirect, for instance).
    pub followed: bool,
}

/// Walks the directories of `path` (every name but the last) from the root, following symlinks
/// (absolute targets restart at the tree's root; `..` stops at the root). A missing directory is
/// created with `create`'s metadata and its id pushed to `created`, or is an error if `create`
/// is `None`. Returns the last name's directory and the last name (`None` for the root itself).
pub(super) fn resolve_parent<'p>(
    tree: &mut Tree,
    path: &'p [u8],
    create: Option<&Metadata>,
    created: &mut Vec<NodeId>,
) -> Result<(Parent, Option<&'p [u8]>), String> {
    let mut names: Vec<&'p [u8]> = path.split(|&b| b == b'/').filter(|n| !n.is_empty() && *n != b".").collect();
    let Some(last) = names.pop() else {
        return Ok((Parent { dir: ROOT, path: Vec::new(), followed: false }, None));
    };
    if last == b".." {
        return Err("a path may not end in `..`".into());
    }
    // Names still to walk, next one last; symlink targets are pushed onto it as they are met.
    let mut pending: Vec<Vec<u8>> = names.iter().rev().map(|n| n.to_vec()).collect();
    // The directories entered so far, with the length of `cur.path` before each.
    let mut chain: Vec<(NodeId, usize)> = Vec::new();
    let mut cur = Parent { dir: ROOT, path: Vec::new(), followed: false };
    let mut links = 0u32;
    while let Some(name) = pending.pop() {
        match name.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if let Some((_, len)) = chain.pop() {
                    cur.path.truncate(len);
                    cur.dir = chain.last().map_or(ROOT, |(d, _)| *d);
                }
                continue;
            }
            _ => {}
        }
        let next_path = join(&cur.path, &name);
        let id = match tree.child(cur.dir, &name) {
            None => {
                let Some(meta) = create else {
                    return Err(format!("`/{}` does not exist", String::from_utf8_lossy(&next_path)));
                };
                let id = tree
                    .insert(as_path(&next_path), Node::new(NodeKind::Dir(Default::default()), meta.clone()))
                    .map_err(|e| e.to_string())?;
                created.push(id);
                id
            }
            Some(id) => match &tree.node(id).kind {
                NodeKind::Dir(_) => id,
                NodeKind::Symlink(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(format!(
                            "too many levels of symbolic links at `/{}`",
                            String::from_utf8_lossy(&next_path)
                        ));
                    }
                    if target.first() == Some(&b'/') {
                        chain.clear();
                        cur.path.clear();
                        cur.dir = ROOT;
                    }
                    pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                    cur.followed = true;
                    continue;
                }
                _ => {
                    return Err(format!("`/{}` is not a directory", String::from_utf8_lossy(&next_path)));
                }
            },
        };
        chain.push((id, cur.path.len()));
        cur.path = next_path;
        cur.dir = id;
    }
    Ok((cur, Some(last)))
}

/// Finds what `path` names, following every symlink including a final one, without creating
/// anything. Returns the node and its canonical path.
pub(super) fn follow(tree: &mut Tree, path: &[u8]) -> Option<(NodeId, Vec<u8>)> {
    let mut path = path.to_vec();
    for _ in 0..MAX_SYMLINKS {
        let (parent, last) = resolve_parent(tree, &path, None, &mut Vec::new()).ok()?;
        let Some(last) = last else {
            return Some((ROOT, Vec::new()));
        };
        let id = tree.child(parent.dir, last)?;
        let canonical = join(&parent.path, last);
        match &tree.node(id).kind {
            NodeKind::Symlink(target) => {
                path = if target.first() == Some(&b'/') {
                    target.clone()
                } else {
                    let mut p = parent.path.clone();
                    p.push(b'/');
                    p.extend_from_slice(target);
                    p
                };
            }
            _ => return Some((id, canonical)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_member_names() {
        assert_eq!(normalize(b"./usr//bin/./sh").unwrap(), b"usr/bin/sh");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"etc/").unwrap(), b"etc");
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"./usr/../../etc").is_err());
        assert!(normalize(b"").is_err());
        assert_eq!(dir_of(b"usr/bin/sh"), b"usr/bin");
        assert_eq!(dir_of(b"sh"), b"");
    }

    #[test]
    fn resolve_follows_directory_symlinks() {
        let m = Metadata::root(0o755, 0);
        let link = |t: &[u8]| Node::new(NodeKind::Symlink(t.to_vec()), Metadata::root(0o777, 0));
        let mut t = Tree::new(m.clone());
        t.mkdir_all("usr/bin", &m).unwrap();
        t.insert("bin", link(b"usr/bin")).unwrap();
        t.insert("usr/lib", link(b"/usr/bin/../x")).unwrap();
        let mut created = Vec::new();
        let (p, last) = resolve_parent(&mut t, b"bin/sh", None, &mut created).unwrap();
        assert_eq!((p.path.as_slice(), last, p.followed), (b"usr/bin".as_slice(), Some(b"sh".as_slice()), true));
        assert!(resolve_parent(&mut t, b"usr/lib/a/b", None, &mut created).is_err());
        let (p, _) = resolve_parent(&mut t, b"usr/lib/a/b", Some(&m), &mut created).unwrap();
        assert_eq!(p.path, b"usr/x/a");
        assert_eq!(created.len(), 2);
        t.insert("loop", link(b"loop")).unwrap();
        assert!(resolve_parent(&mut t, b"loop/x", Some(&m), &mut created).unwrap_err().contains("too many"));
        assert_eq!(follow(&mut t, b"/bin").map(|(_, p)| p), Some(b"usr/bin".to_vec()));
        assert_eq!(follow(&mut t, b"loop"), None);
    }
}
