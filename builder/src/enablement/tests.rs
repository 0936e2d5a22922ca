use std::collections::BTreeMap;

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
    let mut t = tree_with(&[("usr/lib/systemd/system/ssh.service", ssh), ("usr/lib/systemd/system/ssh.socket", sock)]);
    let made = enable(&mut t, &["ssh.service".into()], 0).unwrap();
    assert_eq!(made.len(), 4, "{made:?}");
    let l = t.lookup("etc/systemd/system/multi-user.target.wants/ssh.service").unwrap();
    assert_eq!(t.node(l).kind, NodeKind::Symlink(b"/usr/lib/systemd/system/ssh.service".to_vec()));
    assert!(t.lookup("etc/systemd/system/other.target.wants/ssh.service").is_some());
    assert!(t.lookup("etc/systemd/system/sshd.service").is_some());
    assert!(t.lookup("etc/systemd/system/sockets.target.wants/ssh.socket").is_some());
    // Enabling again changes nothing.
    assert_eq!(enable(&mut t, &["ssh.service".into()], 0).unwrap(), Vec::<String>::new());
}

#[test]
fn templates_and_errors() {
    let getty = "[Service]\nExecStart=/x\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n";
    let plain = "[Service]\nExecStart=/x\n";
    let mut t =
        tree_with(&[("usr/lib/systemd/system/getty@.service", getty), ("usr/lib/systemd/system/p.service", plain)]);
    enable(&mut t, &["getty@.service".into(), "getty@ttyS0.service".into()], 0).unwrap();
    assert!(t.lookup("etc/systemd/system/getty.target.wants/getty@tty1.service").is_some());
    assert!(t.lookup("etc/systemd/system/getty.target.wants/getty@ttyS0.service").is_some());
    let err = enable(&mut t, &["nope.service".into()], 0).unwrap_err();
    assert!(matches!(err, EnableError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/lib/systemd/system (is its package in `packages`?)"), "{err}");
    assert!(matches!(enable(&mut t, &["p.service".into()], 0), Err(EnableError::NothingToEnable { .. })));
}

/// The unit files of [`build_and_run_time_agree`]: path inside the root, text.
const UNITS: &[(&str, &str)] = &[
    (
        "usr/lib/systemd/system/ssh.service",
        "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\nAlso=ssh.socket\n",
    ),
    ("usr/lib/systemd/system/ssh.socket", "[Socket]\nListenStream=22\n[Install]\nWantedBy=sockets.target\n"),
    (
        "usr/lib/systemd/system/getty@.service",
        "[Service]\nExecStart=/x\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    ),
    ("usr/lib/systemd/system/db.service", "[Service]\nExecStart=/x\n[Install]\nRequiredBy=web.service\n"),
    // Reached only through the /lib -> usr/lib link in a tree where /usr/lib has no such file.
    ("opt/legacy.service", "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n"),
    // The admin's own unit wins over the image's of the same name.
    ("usr/lib/systemd/system/web.service", "[Service]\nExecStart=/x\n[Install]\nWantedBy=other.target\n"),
    (
        "etc/systemd/system/web.service",
        "[Service]\nExecStart=/y\n[Install]\nWantedBy=multi-user.target\nAlso=db.service\n",
    ),
];

/// The symlinks of both roots: `/lib` is `usr/lib` (merged /usr), and a unit file that is a
/// link to a file elsewhere.
const LINKS: &[(&str, &str)] = &[("usr/lib/systemd/system/legacy.service", "/opt/legacy.service")];

const ENABLE: &[&str] = &["ssh.service", "getty@.service", "getty@ttyS0.service", "web.service", "legacy.service"];

/// The links under /etc/systemd/system of a directory root: path → target.
fn dir_links(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.join("etc/systemd/system")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            if meta.file_type().is_symlink() {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read_link(&path).unwrap().display().to_string());
            } else if meta.is_dir() {
                todo.push(path);
            }
        }
    }
    out
}

/// The links under /etc/systemd/system of a tree: path → target.
fn tree_links(t: &Tree) -> BTreeMap<String, String> {
    t.walk()
        .into_iter()
        .filter_map(|(path, id)| match &t.node(id).kind {
            NodeKind::Symlink(target) if path.starts_with(b"etc/systemd/system/") => {
                Some((String::from_utf8(path).unwrap(), String::from_utf8(target.clone()).unwrap()))
            }
            _ => None,
        })
        .collect()
}

/// The same units enabled at build time (the builder's tree) and at run time (`berthctl enable`
/// and provisioning: a directory) make the same links; disabling removes the same ones.
#[test]
fn build_and_run_time_agree() {
    let mut t = tree_with(UNITS);
    t.insert("lib", Node::new(NodeKind::Symlink(b"usr/lib".to_vec()), Metadata::root(0o777, 0))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (path, text) in UNITS {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    for (path, target) in LINKS {
        std::os::unix::fs::symlink(target, root.join(path)).unwrap();
        let node = Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, 0));
        t.insert(path, node).unwrap();
    }
    // Aliases already in place before: one stale.
    std::os::unix::fs::symlink("/usr/lib/systemd/system/old.service", root.join("etc/systemd/system/sshd.service"))
        .unwrap();
    let node = Node::new(NodeKind::Symlink(b"/usr/lib/systemd/system/old.service".to_vec()), Metadata::root(0o777, 0));
    t.insert("etc/systemd/system/sshd.service", node).unwrap();

    let names: Vec<String> = ENABLE.iter().map(|s| s.to_string()).collect();
    enable(&mut t, &names, 0).unwrap();
    for name in ENABLE {
        let loader = Loader::new(root, HostInfo::default());
        let changes = install::plan_enable(&loader, name).unwrap();
        install::apply(root, &changes).unwrap();
    }
    let built = tree_links(&t);
    assert_eq!(built, dir_links(root));
    let expected = [
        ("etc/systemd/system/multi-user.target.wants/ssh.service", "/usr/lib/systemd/system/ssh.service"),
        ("etc/systemd/system/sshd.service", "/usr/lib/systemd/system/ssh.service"),
        ("etc/systemd/system/sockets.target.wants/ssh.socket", "/usr/lib/systemd/system/ssh.socket"),
        ("etc/systemd/system/getty.target.wants/getty@tty1.service", "/usr/lib/systemd/system/getty@.service"),
        ("etc/systemd/system/getty.target.wants/getty@ttyS0.service", "/usr/lib/systemd/system/getty@.service"),
        ("etc/systemd/system/multi-user.target.wants/web.service", "/etc/systemd/system/web.service"),
        ("etc/systemd/system/web.service.requires/db.service", "/usr/lib/systemd/system/db.service"),
        ("etc/systemd/system/multi-user.target.wants/legacy.service", "/opt/legacy.service"),
    ];
    let expected: BTreeMap<String, String> = expected.iter().map(|(l, t)| (l.to_string(), t.to_string())).collect();
    assert_eq!(built, expected);

    // Disabling plans the same removals from both.
    for name in ["ssh.service", "web.service"] {
        let from_tree = install::plan_disable(&Loader::over(TreeDirs(&t), HostInfo::default()), name).unwrap();
        let from_dir = install::plan_disable(&Loader::new(root, HostInfo::default()), name).unwrap();
        assert_eq!(from_tree, from_dir);
        apply(&mut t, &from_tree, name, 0).unwrap();
        install::apply(root, &from_dir).unwrap();
    }
    assert_eq!(tree_links(&t), dir_links(root));
    // Left: getty's two instances and legacy (web's Also=db.service went with web).
    assert_eq!(tree_links(&t).len(), 3, "{:?}", tree_links(&t));
    // And both read the same enablement states.
    let tree_loader = Loader::over(TreeDirs(&t), HostInfo::default());
    let dir_loader = Loader::new(root, HostInfo::default());
    for name in ["ssh.service", "getty@ttyS0.service", "db.service", "legacy.service", "nope.service"] {
        let states = (install::enablement_of(&tree_loader, name), install::enablement_of(&dir_loader, name));
        assert_eq!(states.0, states.1, "{name}");
    }
    assert_eq!(install::enablement_of(&tree_loader, "legacy.service"), Some(install::Enablement::Enabled));
    assert_eq!(install::enablement_of(&tree_loader, "ssh.service"), Some(install::Enablement::Disabled));
}

/// The one symlink walk reads the tree and a directory alike: relative and absolute links, `..`,
/// masks (with no /dev in either root), a loop stopped by the hop limit, and errors that name the
/// path asked for.
#[test]
fn tree_and_directory_resolve_alike() {
    let mut t = tree_with(&[("usr/lib/systemd/system/a.service", "x"), ("opt/b.service", "y")]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("usr/lib/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("opt")).unwrap();
    std::fs::write(root.join("usr/lib/systemd/system/a.service"), "x").unwrap();
    std::fs::write(root.join("opt/b.service"), "y").unwrap();
    let links = [
        ("lib", "usr/lib"),
        ("usr/lib/systemd/system/rel.service", "../../../../opt/b.service"),
        ("usr/lib/systemd/system/abs.service", "/lib/systemd/system/a.service"),
        ("usr/lib/systemd/system/masked.service", "/dev/null"),
        ("usr/lib/systemd/system/via-mask.service", "masked.service"),
        ("usr/lib/systemd/system/loop.service", "loop.service"),
        ("usr/lib/systemd/system/gone.service", "/opt/gone.service"),
    ];
    for (path, target) in links {
        std::os::unix::fs::symlink(target, root.join(path)).unwrap();
        let node = Node::new(NodeKind::Symlink(target.as_bytes().to_vec()), Metadata::root(0o777, 0));
        t.insert(path, node).unwrap();
    }
    let tree = TreeDirs(&t);
    let run_time = berth_units::load::RootDir::new(root);
    let path = |name: &str| PathBuf::from(format!("/lib/systemd/system/{name}"));
    let file = |p: &str| Ok(Resolved::Path(PathBuf::from(p)));
    let cases = [
        ("a.service", file("/usr/lib/systemd/system/a.service")),
        ("rel.service", file("/opt/b.service")),
        ("abs.service", file("/usr/lib/systemd/system/a.service")),
        ("masked.service", Ok(Resolved::DevNull)),
        ("via-mask.service", Ok(Resolved::DevNull)),
        ("loop.service", Err("too many levels of symbolic links")),
        ("gone.service", Err("no such file or directory")),
        ("nope.service", Err("no such file or directory")),
    ];
    for (name, expected) in cases {
        let (built, ran) = (tree.resolve(&path(name), true), run_time.resolve(&path(name), true));
        match expected {
            Ok(expected) => {
                assert_eq!(built.unwrap(), expected, "{name}");
                assert_eq!(ran.unwrap(), expected, "{name}");
            }
            Err(why) => {
                let (built, ran) = (built.unwrap_err().to_string(), ran.unwrap_err().to_string());
                assert_eq!(built, format!("{}: {why}", path(name).display()));
                assert_eq!(ran, format!("{}: {why}", run_time.host_path(&path(name)).display()));
            }
        }
    }
    // Not following the last link: the link itself.
    let link = path("loop.service");
    let expected = Resolved::Path(PathBuf::from("/usr/lib/systemd/system/loop.service"));
    assert_eq!(tree.resolve(&link, false).unwrap(), expected);
    assert_eq!(run_time.resolve(&link, false).unwrap(), expected);
}
