//! `berth export` (docs/platforms.md), judged by tools Berth did not write, on a small disk laid
//! out as `berth build` lays it out (written with the builder's own GPT and ESP writers: fast):
//!
//! - metal, qemu and vagrant-libvirt: `qemu-img check` on the qcow2 and the box's `box.img`;
//!   `qemu-img compare` against the metal export finds its first difference inside the ESP, and
//!   the qcow2's raw content (converted back by `qemu-img`) equals the metal export outside the
//!   ESP, as the metal export equals the input; `fsck.fat -n` on every exported ESP; the
//!   platform word and the box's provisioning document read back with mtools; the box's members
//!   and their order by GNU `tar tvf`; its metadata.json fields;
//! - the same disk exported twice gives the same bytes;
//! - bad input (an unknown platform, a file that is not a Berth disk, an unwritable output
//!   directory, a broken provisioning document, a missing qemu-img): a one-line error, a non-zero
//!   exit, and nothing left in the output directory.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_builder::disk::DiskPlan;
use berth_builder::esp::EspContents;
use berth_builder::export::esp::{PLATFORM_FILE, PROVISION_FILE};
use berth_builder::export::vagrant::{PROVISION, VAGRANTFILE};
use berth_builder::platform::PlatformExt;
use berth_slot::Slot;

mod common;
use common::{EPOCH, ok, pattern, small_berth_disk, text, tool};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// The filler's runs (common::pattern): every third 64 KiB zeros, so the copies have holes.
const ZERO_EVERY: usize = 65536;

/// A small disk as `berth build` lays it out: GPT, an ESP with bootmgr, slot A's kernel files,
/// an empty `berth/b/` (and `berth/platform` when `with_platform`), ROOT-A filled with a pattern.
fn small_disk(dir: &Path, name: &str, with_platform: bool) -> (PathBuf, DiskPlan) {
    let disk = dir.join(format!("{name}.img"));
    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", pattern(70_000, 1, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/vmlinuz", pattern(300_000, 2, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/initrd.img", pattern(200_000, 3, ZERO_EVERY)).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0 quiet\n".to_vec()).unwrap();
    esp.add_dir(Slot::B.esp_dir()).unwrap();
    if with_platform {
        esp.add_file(PLATFORM_FILE, b"metal\n".to_vec()).unwrap();
    }
    let (f, plan) = small_berth_disk(&disk, b"export test", &esp);
    let r = plan.root(Slot::A);
    f.write_all_at(&pattern(r.size as usize, 4, ZERO_EVERY), r.offset).unwrap();
    (disk, plan)
}

/// `berth export` with these arguments, SOURCE_DATE_EPOCH unset (the epoch comes from the ESP).
fn export(disk: &Path, platforms: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(BERTH)
        .arg("export")
        .arg(disk)
        .args(["--platform", platforms, "--out"])
        .arg(out)
        .args(extra)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("BERTH_PROGRESS")
        .output()
        .unwrap()
}

/// The error of a failed run: exactly one line on stderr, `berth: error: …`.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("berth: error: "), "{err}");
    err
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The ESP's bytes of a raw disk, as a file of its own (fsck.fat and mtools take whole files).
fn extract_esp(disk: &Path, plan: &DiskPlan, to: &Path) {
    let p = plan.esp();
    let f = std::fs::File::open(disk).unwrap();
    let mut buf = vec![0u8; p.size as usize];
    f.read_exact_at(&mut buf, p.offset).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// fsck.fat -n (no repair) must find nothing to say about the ESP.
fn fsck_clean(esp: &Path) {
    let out = Command::new(tool("fsck.fat", "dosfstools")).arg("-n").arg(esp).output().unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "fsck.fat -n {}: {all}", esp.display());
    // The only lines of a clean check: the version banner and the summary.
    for line in all.lines() {
        assert!(
            line.starts_with("fsck.fat ") || line.contains(" files, ") || line.trim().is_empty(),
            "fsck.fat -n {} says: {all}",
            esp.display()
        );
    }
}

/// A file of the ESP image, read by mtools.
fn mtype(esp: &Path, path: &str) -> Vec<u8> {
    let out = Command::new(tool("mtype", "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(esp)
        .arg(format!("::{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype {path}: {}", text(&out.stderr));
    out.stdout
}

fn mtools_lacks(esp: &Path, path: &str) -> bool {
    !Command::new(tool("mtype", "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(esp)
        .arg(format!("::{path}"))
        .output()
        .unwrap()
        .status
        .success()
}

/// Asserts `a` and `b` (same length) differ only inside `[from, to)`, and do differ there.
fn differ_only_in(a: &[u8], b: &[u8], from: u64, to: u64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let (from, to) = (from as usize, to as usize);
    assert!(a[..from] == b[..from], "{what}: differ before the ESP");
    assert!(a[to..] == b[to..], "{what}: differ after the ESP");
    assert!(a[from..to] != b[from..to], "{what}: the ESPs are the same");
}

/// `qemu-img convert` back to raw (QEMU's reading of the file, not Berth's).
fn to_raw(img: &Path, format: &str, raw: &Path) -> Vec<u8> {
    ok(Command::new(tool("qemu-img", "qemu-utils")).args(["convert", "-f", format, "-O", "raw"]).arg(img).arg(raw));
    std::fs::read(raw).unwrap()
}

fn qemu_img_check(img: &Path) {
    let out = ok(Command::new(tool("qemu-img", "qemu-utils")).args(["check", "-f", "qcow2"]).arg(img));
    assert!(out.contains("No errors were found"), "qemu-img check {}: {out}", img.display());
}

fn qemu_img_info(img: &Path) -> serde_json::Value {
    let out = ok(Command::new(tool("qemu-img", "qemu-utils")).args(["info", "--output=json"]).arg(img));
    serde_json::from_str(&out).unwrap()
}

/// `qemu-img compare` of a qcow2 against the metal export: they differ, first inside the ESP
/// (the platform word), nowhere before it.
fn compare_first_difference_in_esp(qcow2: &Path, metal: &Path, plan: &DiskPlan) {
    let out = Command::new(tool("qemu-img", "qemu-utils"))
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(qcow2)
        .arg(metal)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "qemu-img compare: {said}{}", text(&out.stderr));
    let offset: u64 = said
        .split("Content mismatch at offset ")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('!').parse().ok())
        .unwrap_or_else(|| panic!("qemu-img compare said: {said}"));
    let p = plan.esp();
    assert!((p.offset..p.offset + p.size).contains(&offset), "first difference at {offset}, outside the ESP");
}

#[test]
fn metal_qemu_and_libvirt_box() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, plan) = small_disk(&dir.path().join("in"), "host", false);
    let input = std::fs::read(&disk).unwrap();
    let out_dir = dir.path().join("out");
    let out = export(&disk, "metal,qemu,vagrant-libvirt", &out_dir, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(entries(&out_dir), ["host.img", "host.libvirt.box", "host.qcow2"], "no temporary file is left");
    // One line per artifact, naming it and its size.
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, (platform, file)) in
        lines.iter().zip([("metal", "host.img"), ("qemu", "host.qcow2"), ("vagrant-libvirt", "host.libvirt.box")])
    {
        assert!(line.starts_with(&format!("{platform}: ")), "{line}");
        assert!(line.contains(&out_dir.join(file).display().to_string()), "{line}");
        assert!(line.ends_with("B)") || line.ends_with("iB)"), "{line}");
    }
    let esp = plan.esp();
    let (esp_from, esp_to) = (esp.offset, esp.offset + esp.size);

    // metal: the input with the platform word on its ESP, nothing else changed.
    let metal_path = out_dir.join("host.img");
    let metal = std::fs::read(&metal_path).unwrap();
    differ_only_in(&input, &metal, esp_from, esp_to, "input vs metal");
    let esp_img = dir.path().join("metal.esp");
    extract_esp(&metal_path, &plan, &esp_img);
    fsck_clean(&esp_img);
    assert_eq!(mtype(&esp_img, PLATFORM_FILE), b"metal\n");
    assert!(mtools_lacks(&esp_img, PROVISION_FILE), "metal gets no provisioning document unless asked");
    assert_eq!(mtype(&esp_img, "berth/a/vmlinuz"), pattern(300_000, 2, ZERO_EVERY), "the kernel is untouched");
    // Holes stay holes: the copy uses about what the input uses.
    let used = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    assert!(used(&metal_path) < metal.len() as u64 / 2, "the metal copy is not sparse");

    // qemu: a valid qcow2 whose content is the disk with "qemu" on the ESP.
    let qcow2 = out_dir.join("host.qcow2");
    qemu_img_check(&qcow2);
    let info = qemu_img_info(&qcow2);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], input.len() as u64);
    compare_first_difference_in_esp(&qcow2, &metal_path, &plan);
    let qraw_path = dir.path().join("qemu.raw");
    let qraw = to_raw(&qcow2, "qcow2", &qraw_path);
    differ_only_in(&metal, &qraw, esp_from, esp_to, "metal vs qemu");
    let qesp = dir.path().join("qemu.esp");
    extract_esp(&qraw_path, &plan, &qesp);
    fsck_clean(&qesp);
    assert_eq!(mtype(&qesp, PLATFORM_FILE), b"qemu\n");

    // The libvirt box: members and their order (GNU tar), metadata, the Vagrantfile, box.img.
    let boxf = out_dir.join("host.libvirt.box");
    let listing = ok(Command::new("tar").arg("--utc").arg("-tvf").arg(&boxf));
    let members: Vec<&str> = listing.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    assert_eq!(members, ["metadata.json", "Vagrantfile", "box.img"], "{listing}");
    for l in listing.lines() {
        assert!(l.starts_with("-rw-r--r-- root/root "), "{l}");
        assert!(l.contains(" 2023-11-14 22:13 "), "members carry the build's time: {l}");
    }
    let extract = |member: &str| -> Vec<u8> {
        let o = Command::new("tar").arg("-xOf").arg(&boxf).arg(member).output().unwrap();
        assert!(o.status.success(), "tar -xOf {member}: {}", text(&o.stderr));
        o.stdout
    };
    let meta: serde_json::Value = serde_json::from_slice(&extract("metadata.json")).unwrap();
    assert_eq!(meta["provider"], "libvirt");
    assert_eq!(meta["format"], "qcow2");
    let gib = meta["virtual_size"].as_u64().expect("virtual_size is a whole number");
    assert_eq!(gib, (input.len() as u64).div_ceil(1 << 30));
    assert_eq!(extract("Vagrantfile"), VAGRANTFILE.as_bytes());
    let box_img = dir.path().join("box.img");
    std::fs::write(&box_img, extract("box.img")).unwrap();
    qemu_img_check(&box_img);
    let info = qemu_img_info(&box_img);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], input.len() as u64);
    assert!(info["virtual-size"].as_u64().unwrap() <= gib << 30);
    compare_first_difference_in_esp(&box_img, &metal_path, &plan);
    let braw_path = dir.path().join("box.raw");
    let braw = to_raw(&box_img, "qcow2", &braw_path);
    differ_only_in(&metal, &braw, esp_from, esp_to, "metal vs box.img");
    let besp = dir.path().join("box.esp");
    extract_esp(&braw_path, &plan, &besp);
    fsck_clean(&besp);
    assert_eq!(mtype(&besp, PLATFORM_FILE), b"vagrant-libvirt\n");
    assert_eq!(mtype(&besp, PROVISION_FILE), PROVISION.as_bytes(), "the box's own provisioning document");
}

#[test]
fn same_disk_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // A disk that already says "metal" (as berth build writes it): the word is replaced.
    let (disk, plan) = small_disk(&dir.path().join("in"), "host", true);
    let platforms = "qemu,vagrant-libvirt,metal";
    for run in ["a", "b"] {
        let out = export(&disk, platforms, &dir.path().join(run), &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for file in ["host.img", "host.qcow2", "host.libvirt.box"] {
        let a = std::fs::read(dir.path().join("a").join(file)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(file)).unwrap();
        assert!(a == b, "{file} differs between two exports of the same disk");
    }
    let esp = dir.path().join("esp");
    extract_esp(&dir.path().join("a/host.img"), &plan, &esp);
    fsck_clean(&esp);
    assert_eq!(mtype(&esp, PLATFORM_FILE), b"metal\n");
    // SOURCE_DATE_EPOCH stamps the new entries (and so changes the bytes).
    let out = Command::new(BERTH)
        .args(["export", disk.to_str().unwrap(), "--platform", "metal", "--out"])
        .arg(dir.path().join("c"))
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = ok(Command::new(tool("mdir", "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .arg("-i")
        .arg({
            extract_esp(&dir.path().join("c/host.img"), &plan, &esp);
            &esp
        })
        .arg("::berth"));
    let line = listing.lines().find(|l| l.starts_with("PLATFORM")).unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains("2027-01-15"), "berth/platform's date is SOURCE_DATE_EPOCH's: {line}");
}

#[test]
fn provision_document_goes_on_the_esp() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, plan) = small_disk(&dir.path().join("in"), "host", false);
    let doc = dir.path().join("p.toml");
    let content = b"hostname = \"box\"\n\n[[users]]\nname = \"core\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA k\"]\n";
    std::fs::write(&doc, content).unwrap();
    let out_dir = dir.path().join("out");
    let out = export(&disk, "metal", &out_dir, &["--provision", doc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let esp = dir.path().join("esp");
    extract_esp(&out_dir.join("host.img"), &plan, &esp);
    fsck_clean(&esp);
    assert_eq!(mtype(&esp, PROVISION_FILE), content);

    // A document that is not TOML is refused before anything is written.
    std::fs::write(&doc, "users = [\n").unwrap();
    let bad_out = dir.path().join("bad");
    let out = export(&disk, "metal", &bad_out, &["--provision", doc.to_str().unwrap()]);
    let err = one_line_error(&out);
    assert!(err.contains("p.toml") && err.contains("not TOML"), "{err}");
    assert!(entries(&bad_out).is_empty(), "{:?}", entries(&bad_out));
}

#[test]
fn unknown_platform_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = small_disk(&dir.path().join("in"), "host", false);
    let out_dir = dir.path().join("out");
    let err = one_line_error(&export(&disk, "qemu,vmware", &out_dir, &[]));
    assert_eq!(
        err.trim_end(),
        "berth: error: unknown platform 'vmware'; known: metal, qemu, virtualbox, vagrant-libvirt, vagrant-virtualbox, \
         aws, gce, azure"
    );
    assert!(!out_dir.exists());
    // --help lists every platform and what it produces.
    let help = ok(Command::new(BERTH).args(["export", "--help"]));
    for p in berth_builder::platform::Platform::ALL {
        assert!(help.contains(p.name()) && help.contains(&p.artifact_file("<name>")), "{p} missing: {help}");
    }
    let help = ok(Command::new(BERTH).args(["build", "--help"]));
    assert!(help.contains("--platform") && help.contains("vagrant-virtualbox"), "{help}");
}

#[test]
fn not_a_berth_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, pattern(3 << 20, 9, ZERO_EVERY)).unwrap();
    let err = one_line_error(&export(&junk, "metal,qemu", &out_dir, &[]));
    assert!(err.contains(&format!("{}: not a Berth disk", junk.display())), "{err}");
    assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));

    // A GPT disk without Berth's partitions (sgdisk, a tool Berth did not write).
    let other = dir.path().join("other.img");
    std::fs::File::create(&other).unwrap().set_len(64 << 20).unwrap();
    ok(Command::new(tool("sgdisk", "gdisk")).args(["-n", "1:2048:+16M", "-t", "1:8300"]).arg(&other));
    let err = one_line_error(&export(&other, "metal", &out_dir, &[]));
    assert!(err.contains("other.img: not a Berth disk: no ESP partition"), "{err}");
    assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));

    let missing = dir.path().join("missing.img");
    let err = one_line_error(&export(&missing, "metal", &out_dir, &[]));
    assert!(err.contains("missing.img"), "{err}");

    // The input's own name in the output directory would be replaced: refused.
    let (disk, _) = small_disk(&dir.path().join("in"), "host", false);
    let before = std::fs::read(&disk).unwrap();
    let err = one_line_error(&export(&disk, "metal", &dir.path().join("in"), &[]));
    assert!(err.contains("would be replaced"), "{err}");
    assert_eq!(std::fs::read(&disk).unwrap(), before);
    assert_eq!(entries(&dir.path().join("in")), ["host.img"]);
}

#[test]
fn unwritable_output_directory_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = small_disk(&dir.path().join("in"), "host", false);
    // A regular file where the directory should be, and a directory below one.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for out in [file.clone(), file.join("sub")] {
        let err = one_line_error(&export(&disk, "metal,qemu", &out, &[]));
        assert!(err.contains(&format!("output directory {}", out.display())), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // A directory without write permission (root writes anywhere: only checked as a user).
    if !rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = one_line_error(&export(&disk, "metal", &ro, &[]));
        assert!(err.contains("output directory") && err.contains("ermission denied"), "{err}");
        assert!(entries(&ro).is_empty());
    }
}

#[test]
fn a_failure_leaves_no_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = small_disk(&dir.path().join("in"), "host", false);
    let out_dir = dir.path().join("out");
    // No qemu-img on PATH: metal would succeed, qemu cannot; neither is left behind.
    let out = Command::new(BERTH)
        .args(["export", disk.to_str().unwrap(), "--platform", "metal,qemu", "--out"])
        .arg(&out_dir)
        .env("PATH", dir.path().join("empty-path"))
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("qemu-img") && err.contains("host.qcow2"), "{err}");
    assert!(entries(&out_dir).is_empty(), "{:?}", entries(&out_dir));
}

#[test]
fn virtualbox_ova_and_box() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, plan) = small_disk(&dir.path().join("in"), "host", true);
    let metal = std::fs::read(&disk).unwrap();
    let esp = plan.esp();
    for run in ["a", "b"] {
        let out = export(&disk, "virtualbox,vagrant-virtualbox", &dir.path().join(run), &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(entries(&dir.path().join(run)), ["host.ova", "host.virtualbox.box"], "no temporary file is left");
    }
    for file in ["host.ova", "host.virtualbox.box"] {
        let a = std::fs::read(dir.path().join("a").join(file)).unwrap();
        assert!(a == std::fs::read(dir.path().join("b").join(file)).unwrap(), "{file} differs between two exports");
    }
    let out_dir = dir.path().join("a");
    let members = |archive: &Path| -> Vec<String> {
        let listing = ok(Command::new("tar").arg("-tvf").arg(archive));
        for l in listing.lines() {
            assert!(l.starts_with("-rw-r--r-- root/root "), "{l}");
        }
        listing.lines().map(|l| l.rsplit(' ').next().unwrap().to_string()).collect()
    };
    let extract = |archive: &Path, member: &str, to: &Path| {
        let o = Command::new("tar").arg("-xOf").arg(archive).arg(member).output().unwrap();
        assert!(o.status.success(), "tar -xOf {member}: {}", text(&o.stderr));
        std::fs::write(to, o.stdout).unwrap();
    };
    // Each disk inside: a VMDK qemu-img accepts, whose content is the disk with the platform's word.
    let check_disk = |vmdk: &Path, word: &str, provision: Option<&str>| {
        ok(Command::new(tool("qemu-img", "qemu-utils")).args(["check", "-f", "vmdk"]).arg(vmdk));
        let raw_path = vmdk.with_extension("raw");
        let raw = to_raw(vmdk, "vmdk", &raw_path);
        differ_only_in(&metal, &raw, esp.offset, esp.offset + esp.size, word);
        let esp_img = vmdk.with_extension("esp");
        extract_esp(&raw_path, &plan, &esp_img);
        fsck_clean(&esp_img);
        assert_eq!(mtype(&esp_img, PLATFORM_FILE), format!("{word}\n").as_bytes());
        match provision {
            Some(p) => assert_eq!(mtype(&esp_img, PROVISION_FILE), p.as_bytes()),
            None => assert!(mtools_lacks(&esp_img, PROVISION_FILE)),
        }
    };

    let ova = out_dir.join("host.ova");
    assert_eq!(members(&ova), ["host.ovf", "host.mf", "host-disk1.vmdk"]);
    let vmdk = dir.path().join("ova.vmdk");
    extract(&ova, "host-disk1.vmdk", &vmdk);
    check_disk(&vmdk, "virtualbox", None);

    let boxf = out_dir.join("host.virtualbox.box");
    assert_eq!(members(&boxf), ["metadata.json", "Vagrantfile", "box.ovf", "box-disk1.vmdk"]);
    let meta = dir.path().join("metadata.json");
    extract(&boxf, "metadata.json", &meta);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(meta["provider"], "virtualbox");
    let vagrantfile = dir.path().join("Vagrantfile");
    extract(&boxf, "Vagrantfile", &vagrantfile);
    let vf = std::fs::read_to_string(&vagrantfile).unwrap();
    assert!(vf.starts_with(VAGRANTFILE), "Berth's box Vagrantfile, then the MAC");
    let ovf = dir.path().join("box.ovf");
    extract(&boxf, "box.ovf", &ovf);
    let ovf_text = std::fs::read_to_string(&ovf).unwrap();
    let mac = vf.split("config.vm.base_mac = \"").nth(1).and_then(|r| r.split('"').next()).expect("base_mac");
    assert!(mac.len() == 12 && mac.starts_with("080027"), "{mac}");
    assert!(ovf_text.contains(mac) || ovf_text.to_uppercase().contains(mac), "box.ovf has the MAC {mac}");
    assert!(ovf_text.contains("box-disk1.vmdk"), "box.ovf references the disk");
    // Ruby (what Vagrant evaluates the file with) parses it.
    ok(Command::new(tool("ruby", "ruby")).arg("-c").arg(&vagrantfile));
    let vmdk = dir.path().join("box.vmdk");
    extract(&boxf, "box-disk1.vmdk", &vmdk);
    check_disk(&vmdk, "vagrant-virtualbox", Some(PROVISION));
}

/// What `berth build --platform` calls: artifacts named after the image, not the disk's file,
/// stamped with the given epoch, each reported with its path and size.
#[test]
fn library_export_as_names_and_reports() {
    use berth_builder::export::{ExportOptions, describe, export_as};
    use berth_builder::platform::Platform;
    let dir = tempfile::tempdir().unwrap();
    let (disk, _) = small_disk(&dir.path().join("in"), "disk-file", true);
    let out_dir = dir.path().join("out");
    let opts = ExportOptions {
        platforms: vec![Platform::Qemu, Platform::Metal],
        out_dir: out_dir.clone(),
        provision: None,
        source_date_epoch: Some(EPOCH),
        progress: false,
    };
    let artifacts = export_as(&disk, "image", &opts).unwrap();
    assert_eq!(entries(&out_dir), ["image.img", "image.qcow2"]);
    assert_eq!(artifacts.iter().map(|a| a.platform).collect::<Vec<_>>(), [Platform::Qemu, Platform::Metal]);
    for a in &artifacts {
        assert_eq!(a.path, out_dir.join(a.platform.artifact_file("image")));
        assert_eq!(a.bytes, std::fs::metadata(&a.path).unwrap().len());
    }
    let lines = describe(&artifacts);
    assert!(lines[0].starts_with(&format!("qemu: {}", out_dir.join("image.qcow2").display())), "{lines:?}");
    // No platform at all is an error naming the known ones.
    let none = ExportOptions { platforms: vec![], ..opts };
    assert!(export_as(&disk, "image", &none).unwrap_err().to_string().contains("known: metal, qemu"));
}
