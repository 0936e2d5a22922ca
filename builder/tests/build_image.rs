//! `berth build` end to end, as a user runs it.
//!
//! - `container-host` from the host's real Debian sources: built as an unprivileged user with an
//!   empty PATH (so no host tool can be involved: no mkfs, mount, losetup, sgdisk, dd, fakeroot),
//!   built again offline in a network namespace with no network at all, and the two disks are
//!   byte-identical; the disk passes `sgdisk -v`, `fsck.fat -n` and `e2fsck -fn`.
//! - Bad inputs against a signed test archive on 127.0.0.1: each is a one-line error and no image.

#[path = "../../debian/tests/support/archive_repo.rs"]
mod archive_repo;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use archive_repo::{Options as RepoOptions, Repo, dead_port, spec};
use berth_builder::build::OwnBinaries;
use sha2::{Digest, Sha256};

const EPOCH: &str = "1700000000";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// berth-init, berth-update and BOOTX64.EFI built as the real build would, in a --prebuilt dir.
fn prebuilt(dir: &Path) -> PathBuf {
    let p = dir.join("prebuilt");
    OwnBinaries::build(&workspace()).unwrap().copy_to(&p).unwrap();
    p
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs `berth build` with an empty PATH; as uid/gid 65534 when we are root, and with no
/// network at all (a fresh network namespace) when `no_network`.
fn berth_build(def: &Path, out: &Path, cache: &Path, prebuilt: &Path, offline: bool, no_network: bool) -> Output {
    let berth = env!("CARGO_BIN_EXE_berth");
    let mut args: Vec<String> = vec![
        berth.into(),
        "build".into(),
        def.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--cache".into(),
        cache.display().to_string(),
        "--prebuilt".into(),
        prebuilt.display().to_string(),
    ];
    if offline {
        args.push("--offline".into());
    }
    let mut wrap: Vec<String> = Vec::new();
    if is_root() {
        if no_network {
            wrap.extend(["/usr/bin/unshare".into(), "--net".into()]);
        }
        wrap.extend(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"].map(String::from));
    }
    wrap.extend(args);
    let empty = out.parent().unwrap().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    Command::new(&wrap[0])
        .args(&wrap[1..])
        .env_clear()
        .env("PATH", &empty)
        .env("HOME", "/nonexistent")
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("running berth build")
}

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn judge(cmd: &mut Command, package: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (install the Debian package {package})"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Copies a partition out of the disk for judges that take no offset.
fn extract(disk: &Path, offset: u64, size: u64, to: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; size as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    std::fs::write(to, buf).unwrap();
}

#[test]
fn container_host_builds_rootless_offline_and_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged builder must reach its directories.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let prebuilt = prebuilt(dir.path());
    let def = workspace().join("images/container-host.toml");
    let cache = dir.path().join("cache");
    let (out1, out2) = (dir.path().join("out1"), dir.path().join("out2"));
    for d in [&cache, &out1, &out2] {
        std::fs::create_dir_all(d).unwrap();
        if is_root() {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
    }

    let t = Instant::now();
    let first = berth_build(&def, &out1, &cache, &prebuilt, false, false);
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "first build failed:\n{err}");
    eprintln!(
        "first build ({}): {:.1} s\n{err}",
        if is_root() { "uid 65534" } else { "non-root" },
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let second = berth_build(&def, &out2, &cache, &prebuilt, true, true);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "second (offline, no network) build failed:\n{err}");
    eprintln!(
        "second build, offline{}: {:.1} s\n{err}",
        if is_root() { ", no network namespace" } else { "" },
        t.elapsed().as_secs_f64()
    );
    assert!(err.contains(", 0 downloaded;"), "the second build downloaded something:\n{err}");

    let (img1, img2) = (out1.join("container-host.img"), out2.join("container-host.img"));
    assert_eq!(sha256(&img1), sha256(&img2), "two builds with the same inputs differ");
    assert_eq!(
        std::fs::read(out1.join("container-host.manifest.json")).unwrap(),
        std::fs::read(out2.join("container-host.manifest.json")).unwrap()
    );

    // External judges on the disk.
    let sg = judge(Command::new("sgdisk").arg("-v").arg(&img1), "gdisk");
    assert!(sg.contains("No problems found"), "{sg}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out1.join("container-host.manifest.json")).unwrap()).unwrap();
    let part = |label: &str| {
        let p = m["partitions"].as_array().unwrap().iter().find(|p| p["label"] == label).unwrap();
        (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
    };
    let (o, s) = part("EFI-SYSTEM");
    let esp = dir.path().join("esp.img");
    extract(&img1, o, s, &esp);
    judge(Command::new("fsck.fat").arg("-n").arg(&esp), "dosfstools");
    let listing = judge(Command::new("mdir").args(["-b", "-s", "-i"]).arg(&esp).arg("::"), "mtools");
    // berth/platform: the built disk is the metal artifact (docs/platforms.md).
    for want in ["EFI/BOOT/BOOTX64.EFI", "berth/a/vmlinuz", "berth/a/initrd.img", "berth/a/cmdline", "berth/platform"] {
        assert!(listing.to_lowercase().contains(&want.to_lowercase()), "ESP lacks {want}:\n{listing}");
    }
    let (o, s) = part("ROOT-A");
    let root = dir.path().join("root.img");
    extract(&img1, o, s, &root);
    judge(Command::new("e2fsck").arg("-fn").arg(&root), "e2fsprogs");
    let ls = judge(Command::new("debugfs").args(["-R", "ls -p /usr/bin"]).arg(&root), "e2fsprogs");
    for bin in ["containerd", "runc", "ctr"] {
        assert!(ls.contains(&format!("/{bin}/")), "/usr/bin/{bin} missing");
    }
    let wants = judge(
        Command::new("debugfs").args(["-R", "ls -p /etc/systemd/system/multi-user.target.wants"]).arg(&root),
        "e2fsprogs",
    );
    assert!(wants.contains("/containerd.service/") && wants.contains("/ssh.service/"), "{wants}");
    let pw = judge(Command::new("debugfs").args(["-R", "cat /etc/passwd"]).arg(&root), "e2fsprogs");
    assert!(pw.contains("core:x:1000:1000:"), "{pw}");
    assert_eq!(m["packages"].as_array().unwrap().iter().filter(|p| p["name"] == "containerd").count(), 1);
}

fn definition(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("image.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const DEF: &str = r#"name = "t"
version = "1.0.0"
packages = ["hello"]

[kernel]
package = "linux-image-fake"
cmdline = "console=ttyS0"
"#;

/// Runs a build expected to fail; returns its one-line error after checking nothing was written.
fn fails(repo_root: &Path, cache: &Path, def: &Path, out: &Path) -> String {
    let prebuilt = out.parent().unwrap().join("fake-prebuilt");
    std::fs::create_dir_all(&prebuilt).unwrap();
    let names = OwnBinaries::in_dir(&prebuilt);
    let all = [&names.init, &names.update, &names.timesync, &names.netd, &names.devd, &names.metadata, &names.agent];
    for f in all.into_iter().chain([&names.bootmgr]) {
        std::fs::write(f, b"not used: the build stops before").unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("build")
        .arg(def)
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(cache)
        .arg("--prebuilt")
        .arg(&prebuilt)
        .arg("--apt-root")
        .arg(repo_root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert!(!o.status.success(), "build succeeded");
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    assert!(err.starts_with("berth: error: "), "{err}");
    let left: Vec<_> = std::fs::read_dir(out).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed build left {left:?}");
    err
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_no_image() {
    let specs = [spec("hello", "1.0-1", "amd64", ""), spec("linux-image-fake", "1.0", "amd64", "")];
    let repo = Repo::new(&specs, &RepoOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let root = repo.apt_root.path();
    let cache = repo.cache.path();

    let e = fails(root, cache, &definition(dir.path(), &DEF.replace("\"hello\"", "\"nosuchpkg\"")), &out);
    assert!(e.contains("nosuchpkg"), "{e}");

    let e = fails(root, cache, &definition(dir.path(), &DEF.replace("packages =", "pakages =")), &out);
    assert!(e.contains("image.toml:3:1") && e.contains("pakages"), "{e}");

    let e = fails(root, cache, &definition(dir.path(), &format!("overlay = \"no-such-dir\"\n{DEF}")), &out);
    assert!(e.contains("no-such-dir"), "{e}");

    // A .deb whose bytes differ from what the signed index says.
    let (pool, mut bytes) = repo.debs["hello"].clone();
    let good = bytes.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    repo.server.put(&format!("/debian/{pool}"), bytes);
    let e = fails(root, cache, &definition(dir.path(), DEF), &out);
    assert!(e.contains("hello") && e.contains("SHA-256"), "{e}");
    repo.server.put(&format!("/debian/{pool}"), good);

    // An InRelease altered after signing.
    let dist = format!("{}/InRelease", archive_repo::DIST);
    let signed = repo.server.get(&dist);
    let text = String::from_utf8(signed.clone()).unwrap().replacen("Suite: stable", "Suite: stablf", 1);
    repo.server.put(&dist, text.into_bytes());
    let e = fails(root, cache, &definition(dir.path(), DEF), &out);
    assert!(e.contains("InRelease") && e.to_lowercase().contains("signature"), "{e}");
    repo.server.put(&dist, signed);

    // A mirror nobody answers on.
    let sources = root.join("etc/apt/sources.list.d/berth-test.sources");
    let conf = std::fs::read_to_string(&sources).unwrap();
    let dead = format!("http://127.0.0.1:{}/debian/", dead_port());
    std::fs::write(&sources, conf.replace(&format!("{}/debian/", repo.server.url()), &dead)).unwrap();
    let e = fails(root, cache, &definition(dir.path(), DEF), &out);
    assert!(e.contains(&format!("127.0.0.1:{}", dead.split(':').nth(2).unwrap().trim_end_matches("/debian/"))), "{e}");
}

/// `images/minimal.toml` with `extra` appended, the overlay-free production definition.
fn minimal_with(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(workspace().join("images/minimal.toml")).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    p
}

/// Runs `berth build` as the user does (the user's package cache), returning its output.
fn build_with_user_cache(def: &Path, out: &Path, prebuilt: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("build")
        .arg(def)
        .arg("--out")
        .arg(out)
        .arg("--prebuilt")
        .arg(prebuilt)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .expect("running berth build")
}

fn root_listing(out: &Path, scratch: &Path, dir: &str) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("minimal.manifest.json")).unwrap()).unwrap();
    let p = m["partitions"].as_array().unwrap().iter().find(|p| p["label"] == "ROOT-A").unwrap();
    let root = scratch.join("root.img");
    extract(&out.join("minimal.img"), p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap(), &root);
    judge(Command::new("debugfs").args(["-R", &format!("ls -p {dir}")]).arg(&root), "e2fsprogs")
}

/// H4: the guest agent (unauthenticated root exec over virtio-serial) is only in an image whose
/// definition asks for it; L1: a build that fails leaves no temporary file; L11: the image and
/// its manifest get 0666 & !umask, not the temporary files' 0600.
#[test]
fn h4_guest_agent_only_with_debug_l1_no_leftovers_l11_output_modes() {
    let dir = tempfile::tempdir().unwrap();
    let prebuilt = prebuilt(dir.path());
    let agent_name = berth_guest_agent::INSTALL_PATH.rsplit('/').next().unwrap();
    let agent_dir = berth_guest_agent::INSTALL_PATH.rsplit_once('/').unwrap().0;

    // The production definition: no agent.
    let out = dir.path().join("prod");
    let o = build_with_user_cache(&workspace().join("images/minimal.toml"), &out, &prebuilt);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ls = root_listing(&out, dir.path(), "/usr/libexec");
    assert!(!ls.contains(&format!("/{agent_name}/")), "production minimal carries the guest agent:\n{ls}");
    // L11: modes as any new file of this process gets (the test's umask).
    let want = berth_builder::umask::file_mode();
    for f in ["minimal.img", "minimal.manifest.json"] {
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "{f}: mode {mode:o}, want {want:o} (0666 & !umask)");
    }

    // The same definition with the debug switch: the agent is there.
    let out = dir.path().join("debug");
    let def = minimal_with(dir.path(), "minimal-debug.toml", "\n[debug]\nguest-agent = true\n");
    let o = build_with_user_cache(&def, &out, &prebuilt);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ls = root_listing(&out, dir.path(), agent_dir);
    assert!(ls.contains(&format!("/{agent_name}/")), "[debug] guest-agent = true did not install it:\n{ls}");

    // An unknown [debug] key is refused like any other.
    let def = minimal_with(dir.path(), "typo.toml", "\n[debug]\nguest-agnet = true\n");
    let o = build_with_user_cache(&def, &dir.path().join("typo"), &prebuilt);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("typo.toml") && err.contains("guest-agnet"), "{err}");

    // L1: a disk larger than any file can be fails at its first write, after the whole root was
    // built; the out directory is left as it was (here: holding only an unrelated file).
    let out = dir.path().join("toolarge");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let def = minimal_with(dir.path(), "huge.toml", "").with_file_name("huge.toml");
    let text = std::fs::read_to_string(&def).unwrap().replace("root = \"512M\"", "root = \"4194304T\"");
    assert!(text.contains("4194304T"));
    std::fs::write(&def, text).unwrap();
    let o = build_with_user_cache(&def, &out, &prebuilt);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a 8 EiB disk was built:\n{err}");
    assert!(err.contains("minimal.img") && err.contains("partition table"), "the error names neither:\n{err}");
    let left: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["keep"], "a failed build left temporary files");
}
