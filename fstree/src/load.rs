//! Loading a host directory into a [`Tree`] (like `mkfs.ext4 -d` or Android's make_ext4fs).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{FileData, Metadata, Node, NodeId, NodeKind, ROOT, Tree, TreeError};

/// How [`Tree::from_dir`] maps the host's metadata.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Make every entry owned by uid 0, gid 0 (for trees prepared by an unprivileged user).
    pub all_root: bool,
    /// Use this mtime for every entry instead of the host's (for reproducible output).
    pub mtime: Option<i64>,
}

pub(crate) fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Tree, TreeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TreeError::Io { path, source }
    };
    let md = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if !md.is_dir() {
        return Err(TreeError::NotADirectory { path: dir.to_path_buf() });
    }
    let mut tree = Tree::new(meta_of(dir, &md, opts)?);
    // Inodes already seen, so that hard links stay hard links.
    let mut seen: HashMap<(u64, u64), NodeId> = HashMap::new();
    let mut stack: Vec<(PathBuf, NodeId)> = vec![(dir.to_path_buf(), ROOT)];
    while let Some((host_dir, dir_id)) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&host_dir)
            .map_err(io(&host_dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(&host_dir))?;
        names.sort();
        for name in names {
            let path = host_dir.join(&name);
            let md = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let key = (md.dev(), md.ino());
            if !md.is_dir()
                && md.nlink() > 1
                && let Some(&id) = seen.get(&key)
            {
                add(&mut tree, dir_id, name.as_bytes(), id, &path)?;
                continue;
            }
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                NodeKind::Dir(BTreeMap::new())
            } else if ft.is_file() {
                let data = if md.len() == 0 {
                    FileData::Memory(Arc::from(&[][..]))
                } else {
                    FileData::Range { path: Arc::from(path.as_path()), offset: 0, len: md.len() }
                };
                NodeKind::File(data)
            } else if ft.is_symlink() {
                NodeKind::Symlink(std::fs::read_link(&path).map_err(io(&path))?.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() || ft.is_block_device() {
                let rdev = md.rdev();
                let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
                if ft.is_char_device() {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                }
            } else if ft.is_fifo() {
                NodeKind::Fifo
            } else {
                NodeKind::Socket
            };
            let is_dir = kind.is_dir();
            let id = tree.nodes.len();
            add(&mut tree, dir_id, name.as_bytes(), id, &path)?;
            tree.nodes.push(Node::new(kind, meta_of(&path, &md, opts)?));
            if is_dir {
                stack.push((path, id));
            } else if md.nlink() > 1 {
                seen.insert(key, id);
            }
        }
    }
    Ok(tree)
}

fn add(tree: &mut Tree, dir: NodeId, name: &[u8], id: NodeId, path: &Path) -> Result<(), TreeError> {
    if name.len() > crate::MAX_NAME_LEN {
        return Err(TreeError::InvalidPath { path: path.to_path_buf(), why: "a name is longer than 255 bytes" });
    }
    tree.add_entry(dir, name, id, path)
}

fn meta_of(path: &Path, md: &std::fs::Metadata, opts: &LoadOptions) -> Result<Metadata, TreeError> {
    Ok(Metadata {
        mode: (md.mode() & 0o7777) as u16,
        uid: if opts.all_root { 0 } else { md.uid() },
        gid: if opts.all_root { 0 } else { md.gid() },
        mtime: opts.mtime.unwrap_or(md.mtime()),
        xattrs: read_xattrs(path)?,
    })
}

fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, TreeError> {
    let err = |e: rustix::io::Errno| TreeError::Io { path: path.to_path_buf(), source: e.into() };
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            // Filesystems without xattr support simply have none.
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(err(e)),
        }
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname, &mut value[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(err(e)),
            }
        };
        value.truncate(len);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_files_links_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/f"), b"data").unwrap();
        std::fs::hard_link(p.join("sub/f"), p.join("g")).unwrap();
        std::os::unix::fs::symlink("sub/f", p.join("l")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p.join("sub/f"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let t = Tree::from_dir(p, &LoadOptions { all_root: true, mtime: Some(7) }).unwrap();
        let f = t.lookup("sub/f").unwrap();
        assert_eq!(t.lookup("g"), Some(f));
        assert_eq!(t.node(f).meta.mode, 0o4755);
        assert_eq!(t.node(f).meta.mtime, 7);
        assert_eq!(t.node(f).meta.uid, 0);
        match &t.node(f).kind {
            NodeKind::File(d) => assert_eq!(d.read_all().unwrap(), b"data"),
            k => panic!("{k:?}"),
        }
        let l = t.lookup("l").unwrap();
        assert_eq!(t.node(l).kind, NodeKind::Symlink(b"sub/f".to_vec()));
    }
}
