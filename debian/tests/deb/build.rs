//! Making `.deb`s with real tools for the tests, and what each staged entry must look like in
//! the tree afterwards.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_fstree::{FileData, NodeKind, Tree};

/// The mtime every staged entry gets.
pub const STAGED_MTIME: i64 = 1_600_000_000;

/// Runs a command, failing the test with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e} (is it installed?)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Whether the tests run as root (so owners, device nodes and `security.*` xattrs can be set).
pub fn is_root() -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid() == 0
}

/// What one staged entry must be in the tree.
#[derive(Debug)]
pub enum Want {
    File(Vec<u8>),
    Dir,
    Symlink(&'static str),
    /// Same node as the entry at this tree path.
    HardLinkOf(&'static str),
    Fifo,
    CharDevice(u32, u32),
}

#[derive(Debug)]
pub struct Expect {
    /// Path in the tree (after merged-/usr).
    pub path: String,
    pub want: Want,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

/// A package root staged on disk and the entries it must produce.
pub struct Staged {
    pub root: PathBuf,
    pub expect: Vec<Expect>,
}

impl Staged {
    /// Checks every expected entry against the tree.
    pub fn check(&self, tree: &Tree) {
        for e in &self.expect {
            let id = tree.lookup(&e.path).unwrap_or_else(|| panic!("{} missing from the tree", e.path));
            let node = tree.node(id);
            let what = format!("{}: {:?} vs {:?}", e.path, e.want, node);
            match &e.want {
                Want::File(bytes) => match &node.kind {
                    NodeKind::File(FileData::Memory(d)) => assert_eq!(&d[..], &bytes[..], "{}", e.path),
                    _ => panic!("{what}"),
                },
                Want::Dir => assert!(node.kind.is_dir(), "{what}"),
                Want::Symlink(t) => assert_eq!(node.kind, NodeKind::Symlink(t.as_bytes().to_vec()), "{what}"),
                Want::HardLinkOf(p) => {
                    assert_eq!(tree.lookup(p), Some(id), "{what}");
                    assert_eq!(tree.name_counts()[id], 2, "{what}");
                }
                Want::Fifo => assert_eq!(node.kind, NodeKind::Fifo, "{what}"),
                Want::CharDevice(major, minor) => {
                    assert_eq!(node.kind, NodeKind::CharDevice { major: *major, minor: *minor }, "{what}")
                }
            }
            assert_eq!(node.meta.mode, e.mode, "mode of {}", e.path);
            assert_eq!((node.meta.uid, node.meta.gid), (e.uid, e.gid), "owner of {}", e.path);
            assert_eq!(node.meta.mtime, STAGED_MTIME, "mtime of {}", e.path);
        }
    }
}

/// Deterministic incompressible-ish bytes.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Stages a package root under `dir/pkg`: control files, and entries of every kind.
pub fn stage_package(dir: &Path, package: &str) -> Staged {
    let root = dir.join("pkg");
    let debian = root.join("DEBIAN");
    std::fs::create_dir_all(&debian).unwrap();
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Berth <berth@example.invalid>\n\
             Depends: libc6 (>= 2.36), base-files\nDescription: test package\n a package for the .deb tests\n"
        ),
    )
    .unwrap();
    std::fs::write(debian.join("conffiles"), "/etc/berth-test.conf\n").unwrap();
    for script in ["preinst", "postinst"] {
        std::fs::write(debian.join(script), "#!/bin/sh\nset -e\necho never run\nexit 1\n").unwrap();
        chmod(&debian.join(script), 0o755);
    }

    let root_ok = is_root();
    let mut expect = Vec::new();
    let mut want = |path: &str, want: Want, mode: u16, uid: u32, gid: u32| {
        expect.push(Expect { path: path.to_owned(), want, mode, uid, gid });
    };
    let mkdir = |p: &str, mode: u32| {
        std::fs::create_dir_all(root.join(p)).unwrap();
        chmod(&root.join(p), mode);
    };
    let write = |p: &str, data: &[u8], mode: u32| {
        std::fs::write(root.join(p), data).unwrap();
        chmod(&root.join(p), mode);
    };

    mkdir("etc", 0o755);
    write("etc/berth-test.conf", b"conf=1\n", 0o644);
    want("etc", Want::Dir, 0o755, 0, 0);
    want("etc/berth-test.conf", Want::File(b"conf=1\n".to_vec()), 0o644, 0, 0);

    let share = "usr/share/berth-test";
    mkdir(share, 0o755);
    let data = noise(300 * 1024, 7);
    write(&format!("{share}/data.bin"), &data, 0o644);
    std::fs::hard_link(root.join(share).join("data.bin"), root.join(share).join("data.hard")).unwrap();
    write(&format!("{share}/empty"), b"", 0o600);
    std::os::unix::fs::symlink("data.bin", root.join(share).join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/berth-test.conf", root.join(share).join("abs-link")).unwrap();
    want(share, Want::Dir, 0o755, 0, 0);
    want(&format!("{share}/data.bin"), Want::File(data), 0o644, 0, 0);
    want(&format!("{share}/data.hard"), Want::HardLinkOf("usr/share/berth-test/data.bin"), 0o644, 0, 0);
    want(&format!("{share}/empty"), Want::File(Vec::new()), 0o600, 0, 0);
    want(&format!("{share}/link"), Want::Symlink("data.bin"), 0o777, 0, 0);
    want(&format!("{share}/abs-link"), Want::Symlink("/etc/berth-test.conf"), 0o777, 0, 0);

    // Longer than ustar's 100-byte name field: dpkg-deb writes a GNU long name.
    let long = format!("{share}/{}", "a-rather-long-directory-name-".repeat(5));
    mkdir(&long, 0o755);
    write(&format!("{long}/file-with-a-long-path"), b"long\n", 0o644);
    want(&format!("{long}/file-with-a-long-path"), Want::File(b"long\n".to_vec()), 0o644, 0, 0);

    // bin/ in the package: must land in /usr/bin.
    mkdir("bin", 0o755);
    write("bin/berth-tool", b"#!/bin/sh\necho tool\n", 0o755);
    want("usr/bin/berth-tool", Want::File(b"#!/bin/sh\necho tool\n".to_vec()), 0o755, 0, 0);
    mkdir("usr/bin", 0o755);
    write("usr/bin/berth-suid", b"suid", 0o4755);
    want("usr/bin/berth-suid", Want::File(b"suid".to_vec()), 0o4755, 0, 0);

    mkdir("tmp", 0o1777);
    want("tmp", Want::Dir, 0o1777, 0, 0);

    mkdir("var/lib/berth-test", 0o750);
    write("var/lib/berth-test/state", b"state", 0o640);
    run(Command::new("mkfifo").arg("-m").arg("0644").arg(root.join("var/lib/berth-test/fifo")));
    want("var/lib/berth-test/fifo", Want::Fifo, 0o644, 0, 0);
    if root_ok {
        // Chown before chmod: chown clears setgid.
        std::os::unix::fs::chown(root.join("var/lib/berth-test"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(root.join("var/lib/berth-test/state"), Some(1234), Some(5678)).unwrap();
        write("usr/bin/berth-sgid", b"sgid", 0o755);
        std::os::unix::fs::chown(root.join("usr/bin/berth-sgid"), Some(0), Some(50)).unwrap();
        chmod(&root.join("usr/bin/berth-sgid"), 0o2755);
        want("var/lib/berth-test", Want::Dir, 0o750, 1234, 5678);
        want("var/lib/berth-test/state", Want::File(b"state".to_vec()), 0o640, 1234, 5678);
        want("usr/bin/berth-sgid", Want::File(b"sgid".to_vec()), 0o2755, 0, 50);
        mkdir("dev", 0o755);
        let made = Command::new("mknod")
            .args(["-m", "0666"])
            .arg(root.join("dev/berth-null"))
            .args(["c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success());
        if made {
            want("dev/berth-null", Want::CharDevice(1, 3), 0o666, 0, 0);
        } else {
            eprintln!("note: mknod not permitted here; device node check skipped");
        }
    } else {
        eprintln!("note: not root; non-root owner and device checks skipped");
        want("var/lib/berth-test", Want::Dir, 0o750, 0, 0);
    }

    // Every staged entry gets one known mtime (dpkg-deb keeps them unless SOURCE_DATE_EPOCH).
    run(Command::new("find")
        .arg(&root)
        .args(["-exec", "touch", "-h", "-d"])
        .arg(format!("@{STAGED_MTIME}"))
        .args(["{}", "+"]));
    Staged { root, expect }
}

/// `dpkg-deb -Z<compressor> --build root` into `dir`; file owners are kept as they are on disk.
pub fn dpkg_deb(dir: &Path, root: &Path, compressor: &str) -> PathBuf {
    let out = dir.join(format!("pkg-{compressor}.deb"));
    run(Command::new("dpkg-deb")
        .env_remove("SOURCE_DATE_EPOCH")
        .arg(format!("-Z{compressor}"))
        .arg("--build")
        .arg(root)
        .arg(&out));
    out
}

/// A `.deb` assembled by hand like dpkg-deb does it: `debian-binary` (content as given), an
/// xz control archive, and `data_dir` archived by GNU tar in PAX format with `tar_args`, stored
/// as member `data_member`.
pub fn build_by_hand(
    dir: &Path,
    data_dir: &Path,
    package: &str,
    debian_binary: &str,
    data_member: &str,
    tar_args: &[&str],
) -> PathBuf {
    let data_tar = dir.join("data-archive");
    run(Command::new("tar")
        .args(["--format=pax", "--numeric-owner", "-J"])
        .args(tar_args)
        .arg("-C")
        .arg(data_dir)
        .arg("-cf")
        .arg(&data_tar)
        .arg("."));
    ar_deb(dir, package, debian_binary, &data_tar, data_member)
}

/// Packs `debian-binary`, a minimal `control.tar.xz` and the file `data` (as member
/// `data_member`) with `ar rc`, in that order.
pub fn ar_deb(dir: &Path, package: &str, debian_binary: &str, data: &Path, data_member: &str) -> PathBuf {
    let work = dir.join(format!("ar-{package}"));
    let control = work.join("control-dir");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(
        control.join("control"),
        format!("Package: {package}\nVersion: 1\nArchitecture: all\nDescription: hand-made\n"),
    )
    .unwrap();
    run(Command::new("tar").arg("-C").arg(&control).arg("-cJf").arg(work.join("control.tar.xz")).arg("."));
    std::fs::write(work.join("debian-binary"), debian_binary).unwrap();
    if data != work.join(data_member) {
        std::fs::copy(data, work.join(data_member)).unwrap();
    }
    let out = dir.join(format!("{package}.deb"));
    run(Command::new("ar")
        .arg("rc")
        .arg(&out)
        .args(["debian-binary", "control.tar.xz", data_member])
        .current_dir(&work));
    out
}
