use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::stage2::provision::esp::fat_image;

/// A fake `/sys/class/dmi/id` with these SMBIOS strings.
fn dmi(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in files {
        std::fs::write(dir.path().join(name), format!("{value}\n")).unwrap();
    }
    dir
}

const AZURE: [(&str, &str); 2] =
    [("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"), ("sys_vendor", "Microsoft Corporation")];
const GCE: [(&str, &str); 2] = [("product_name", "Google Compute Engine"), ("sys_vendor", "Google")];

fn recorded(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_esp_word_decides_and_is_recorded_for_the_units() {
    let run = tempfile::tempdir().unwrap();
    let file = run.path().join("platform");
    let esp = fat_image(&[("berth/provision.toml", b"hostname = \"x\"\n"), ("berth/platform", b"aws\n")]);
    let before = std::fs::read(esp.path()).unwrap();
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&[]).path(), &file);
    assert_eq!(lines, ["platform: aws (ESP berth/platform)"]);
    assert_eq!(recorded(&file), "aws\n");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o644);
    assert!(std::fs::read(esp.path()).unwrap() == before, "reading the platform word changed the ESP");
    // What berthctl status and berth-metadata read back.
    assert_eq!(berth_metadata::platform::read_run_file(&file), Ok(Some(berth_slot::platform::Platform::Aws)));
}

#[test]
fn without_an_esp_word_smbios_decides_else_metal() {
    let run = tempfile::tempdir().unwrap();
    let file = run.path().join("platform");
    // An ESP without the file (a disk `berth build` wrote before the platform word): SMBIOS.
    let esp = fat_image(&[("EFI/BOOT/BOOTX64.EFI", b"x")]);
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&GCE).path(), &file);
    assert_eq!(lines, ["platform: gce (SMBIOS)"]);
    assert_eq!(recorded(&file), "gce\n");
    // No ESP to read at all: said, and SMBIOS still decides.
    let lines = detect_in(Err("no partition labelled EFI-SYSTEM".into()), dmi(&AZURE).path(), &file);
    assert_eq!(
        lines,
        ["platform: ESP berth/platform: no partition labelled EFI-SYSTEM; asking SMBIOS", "platform: azure (SMBIOS)"]
    );
    assert_eq!(recorded(&file), "azure\n");
    // Neither: metal.
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&[("sys_vendor", "Dell Inc.")]).path(), &file);
    assert_eq!(lines, ["platform: metal (default: neither the ESP nor SMBIOS names one)"]);
    assert_eq!(recorded(&file), "metal\n");
}

#[test]
fn a_cloud_s_smbios_wins_over_a_word_that_is_not_that_cloud_loudly() {
    let run = tempfile::tempdir().unwrap();
    let file = run.path().join("platform");
    // A qemu image on Azure: only Azure's services answer there, and it must report ready.
    let esp = fat_image(&[("berth/platform", b"qemu\n")]);
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&AZURE).path(), &file);
    assert_eq!(lines[0], "platform: azure (SMBIOS)");
    assert!(lines[1].starts_with("platform: WARNING: ") && lines[1].contains("says qemu"), "{lines:?}");
    assert_eq!(recorded(&file), "azure\n");
    // SMBIOS that names no cloud (QEMU's) leaves the word as it is, without a warning.
    let esp = fat_image(&[("berth/platform", b"aws\n")]);
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&[("sys_vendor", "QEMU")]).path(), &file);
    assert_eq!(lines, ["platform: aws (ESP berth/platform)"]);
    assert_eq!(recorded(&file), "aws\n");
    // A word that is no platform: said, and SMBIOS decides.
    let esp = fat_image(&[("berth/platform", b"openstack\n")]);
    let lines = detect_in(Ok(esp.path().to_path_buf()), dmi(&GCE).path(), &file);
    assert_eq!(lines[0], "platform: gce (SMBIOS)");
    assert!(lines[1].starts_with("platform: WARNING: ") && lines[1].contains("openstack"), "{lines:?}");
}

#[test]
fn the_esp_word_is_one_short_line() {
    let word = |bytes: &[u8]| esp_word(fat_image(&[("berth/platform", bytes)]).path());
    assert_eq!(word(b"  vagrant-libvirt\r\n"), Ok(Some("vagrant-libvirt".into())));
    assert_eq!(word(b"\n"), Ok(None));
    assert_eq!(esp_word(fat_image(&[]).path()), Ok(None));
    assert_eq!(word(&[b'a'; 65]), Err("larger than 64 bytes; not one platform word".into()));
    assert!(word(&[0xff, 0xfe]).unwrap_err().starts_with("not UTF-8"));
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), vec![0u8; 1 << 20]).unwrap();
    assert!(esp_word(junk.path()).unwrap_err().contains("not a FAT filesystem"));
}

#[test]
fn the_run_file_is_replaced_not_written_through_a_link() {
    let run = tempfile::tempdir().unwrap();
    let file = run.path().join("platform");
    let elsewhere = run.path().join("elsewhere");
    std::fs::write(&elsewhere, "keep\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    write_word(&file, "gce").unwrap();
    assert_eq!(recorded(&elsewhere), "keep\n");
    assert!(file.symlink_metadata().unwrap().is_file());
    assert_eq!(recorded(&file), "gce\n");
    // A temporary file left by an earlier attempt does not stop it.
    std::fs::write(file.with_extension("berth-tmp"), "stale").unwrap();
    write_word(&file, "aws").unwrap();
    assert_eq!(recorded(&file), "aws\n");
    assert!(!file.with_extension("berth-tmp").exists());
}
