//! `berth fs ext4` as a user runs it: a directory in, an image out that e2fsck accepts; bad
//! input gives a one-line error naming what is wrong, a non-zero exit and no output file.

use std::path::Path;
use std::process::{Command, Output};

fn berth(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.args(args).env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("running berth")
}

fn sample_dir(root: &Path) {
    std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
    std::fs::write(root.join("etc/hostname"), "berth\n").unwrap();
    std::fs::write(root.join("etc/ssl/big"), vec![3u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("../etc/hostname", root.join("etc/ssl/link")).unwrap();
}

fn e2fsck(img: &Path) -> Output {
    Command::new("e2fsck").arg("-fn").arg(img).output().expect("e2fsck (Debian package e2fsprogs) must be installed")
}

#[test]
fn writes_a_clean_reproducible_image() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_dir(&src);
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    for img in [&a, &b] {
        let out = berth(
            &["fs", "ext4", src.to_str().unwrap(), img.to_str().unwrap(), "--all-root"],
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrote"));
    }
    let check = e2fsck(&a);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two runs with the same inputs differ");

    let sized = d.path().join("sized.img");
    let out = berth(&["fs", "ext4", src.to_str().unwrap(), sized.to_str().unwrap(), "--size", "64M"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::metadata(&sized).unwrap().len(), 64 << 20);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_dir(&src);
    let outdir = d.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let img = outdir.join("root.img");
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["fs", "ext4", src.to_str().unwrap(), img.to_str().unwrap(), "--size", "300K"], "bytes are available"),
        (vec!["fs", "ext4", "/nonexistent/berth-src", img.to_str().unwrap()], "/nonexistent/berth-src"),
        (vec!["fs", "ext4", src.to_str().unwrap(), img.to_str().unwrap(), "--size", "12Q"], "unknown size unit"),
    ];
    for (args, want) in cases {
        let out = berth(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: error should mention {want:?}, got: {err}");
        assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 0, "{args:?} left a file behind");
    }
}

/// L11: the image gets the mode any new file of the user gets (0666 & !umask), not the 0600 of
/// the temporary file it was written as; a symlink at OUT is replaced, never followed.
#[test]
fn l11_output_mode_follows_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    sample_dir(&src);
    for (umask, want) in [("022", 0o644), ("027", 0o640), ("002", 0o664)] {
        let img = d.path().join(format!("u{umask}.img"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" fs ext4 \"$1\" \"$2\""))
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg(&src)
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mode = std::fs::symlink_metadata(&img).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "umask {umask}: mode {mode:o}");
    }
    let target = d.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("link.img");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = berth(&["fs", "ext4", src.to_str().unwrap(), link.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
}
