use std::path::Path;
use std::process::Command;

use super::*;

#[test]
#[allow(clippy::unnecessary_cast)] // the request type is c_ulong with glibc, c_int with musl
fn ioctl_numbers_and_layouts_match_the_kernel_headers() {
    assert_eq!(nix::request_code_none!(0x12, 105) as u64, 0x1269, "BLKPG");
    assert_eq!(nix::request_code_write!(b'f', 16, size_of::<u64>()) as u64, 0x4008_6610, "EXT4_IOC_RESIZE_FS");
    // x86_64: long long, long long, int, char[64], char[64], padded to 8.
    assert_eq!(size_of::<BlkpgPartition>(), 152);
    assert_eq!(std::mem::offset_of!(BlkpgPartition, pno), 16);
    assert_eq!(size_of::<BlkpgIoctlArg>(), 24);
    assert_eq!(std::mem::offset_of!(BlkpgIoctlArg, data), 16);
}

/// A scratch file removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn scratch(what: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("berth-init-state-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

#[test]
fn superblock_of_a_fresh_state_and_what_the_kernel_would_grow_to() {
    let dir = scratch("sb");
    let img = dir.0.join("state.img");
    let file = File::options().create(true).truncate(true).read(true).write(true).open(&img).unwrap();
    let size = 300u64 << 20;
    file.set_len(size).unwrap();
    let opts = berth_ext4::Options::writable(STATE_LABEL, b"t", 1_700_000_000, size);
    berth_ext4::write_at_durably(&Tree::new(Metadata::root(0o755, 0)), &file, 0, &opts).unwrap();
    let sb = Superblock::read(&file, &img).unwrap();
    assert_eq!(sb.blocks, size / 4096);
    assert_eq!((sb.block_size, sb.first_data_block, sb.blocks_per_group), (4096, 0, 32768));
    // 300 MiB / 16 KiB per inode = 19200 inodes in 3 groups: 6400 per group, 400 blocks.
    assert_eq!((sb.itable_blocks, sb.desc_size, sb.reserved_gdt_blocks), (400, 32, 0));
    // Already full, or smaller: nothing.
    assert_eq!(sb.grow_target(sb.blocks), sb.blocks);
    assert_eq!(sb.grow_target(sb.blocks - 5), sb.blocks);
    // 76800 blocks end inside group 2; more room in that group is taken as it is.
    assert_eq!(sb.grow_target(98_304), 98_304);
    // A new last group of 100 blocks cannot hold its metadata: the kernel stops before it.
    assert_eq!(sb.grow_target(98_304 + 100), 98_304);
    // One with room for it is added.
    assert_eq!(sb.grow_target(98_304 + 1000), 98_304 + 1000);
    let mut raw = [0u8; 1024];
    file.read_exact_at(&mut raw, SUPERBLOCK).unwrap();
    raw[0x38] = 0;
    assert!(matches!(Superblock::parse(&raw), Err(StorageError::Invalid(w)) if w.contains("no ext4")));
}

#[test]
fn log_lines_one_per_action() {
    let base = Prepared {
        device: "/dev/vda4".into(),
        disk: "/dev/vda".into(),
        bytes: 8 << 30,
        grown: None,
        repaired: None,
        created: None,
        fs_repaired: None,
        health: None,
        warnings: Vec::new(),
    };
    assert_eq!(base.log_lines(), ["STATE /dev/vda4: 8.0 GiB, ext4 present"]);
    let first_boot = Prepared {
        grown: Some(Grown { old_bytes: 512 << 20, new_bytes: 8 << 30, backup_moved: true }),
        created: Some(Created {
            bytes: 8 << 30,
            inodes: 524_288,
            reserved_blocks: 65536,
            why: "new STATE (the image's marker)",
            took: Duration::from_millis(42),
        }),
        warnings: vec!["something".into()],
        ..base.clone()
    };
    assert_eq!(
        first_boot.log_lines(),
        [
            "STATE /dev/vda4: partition grown from 512 MiB to 8.0 GiB, backup GPT moved to the end of /dev/vda",
            "STATE /dev/vda4: created ext4 of 8.0 GiB (524288 inodes, 256 MiB reserved for root) in 42 ms: new STATE \
             (the image's marker)",
            "STATE /dev/vda4: something",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// On a real block device: a loop device over a sparse image, as root.

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// A loop device with partitions, detached (and unmounted) on drop.
struct Loop {
    dev: String,
    mnt: PathBuf,
}
impl Loop {
    fn attach(img: &Path, mnt: &Path) -> Loop {
        let dev = run("losetup", &["-fP", "--show", &img.to_string_lossy()]).trim().to_string();
        let l = Loop { dev, mnt: mnt.to_path_buf() };
        // A kernel without a GPT parser (CONFIG_EFI_PARTITION unset, as on some CI hosts)
        // scans nothing: then partx reads the GPT and adds the partitions with BLKPG.
        if !l.wait_for_partitions(Duration::from_secs(1)) {
            run("partx", &["-a", &l.dev]);
            assert!(l.wait_for_partitions(Duration::from_secs(5)), "{} has no partitions 1-4", l.dev);
        }
        l
    }
    fn wait_for_partitions(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !(1..=4).all(|n| Path::new(&self.part(n)).exists()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }
    fn mount(&self) {
        run("mount", &["-t", "ext4", &self.part(4), &self.mnt.to_string_lossy()]);
    }
    fn umount(&self) {
        run("umount", &[&self.mnt.to_string_lossy()]);
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).output();
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

fn sysfs_sectors(node: &str) -> u64 {
    let name = Path::new(node).file_name().unwrap().to_string_lossy().into_owned();
    read_u64(&Path::new(SYS_BLOCK).join(name).join("size")).unwrap()
}

fn e2fsck_clean(node: &str) {
    let out = Command::new("e2fsck").args(["-fn", node]).output().expect("e2fsck (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "e2fsck -fn {node}:\n{text}");
}

fn sgdisk_clean(node: &str) {
    let v = run("sgdisk", &["-v", node]);
    assert!(v.contains("No problems found"), "sgdisk -v {node}:\n{v}");
}

/// EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE (bit 24) in the initial user namespace.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(eff, 16).is_ok_and(|c| c & (1 << 24) != 0)
}

fn allocated_mib(img: &Path) -> f64 {
    std::fs::metadata(img).unwrap().blocks() as f64 * 512.0 / f64::from(1 << 20)
}

/// First boot on a disk enlarged from 512 MiB to 8 GiB + 80 MiB, a second boot that does
/// nothing, then the disk enlarged to 20 GiB (past the 16 GiB one group-descriptor block
/// covers) and the mounted filesystem grown online; e2fsck and sgdisk judge every step.
#[test]
#[ignore = "needs root: loop devices, mount"]
fn loop_device_first_boot_then_online_growth() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let dir = scratch("loop");
    let img = dir.0.join("disk.img");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    File::create(&img).unwrap().set_len(512 << 20).unwrap();
    let root_type = berth_slot::layout::ROOT_TYPE_GUID;
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+64M",
            "-t",
            &format!("1:{}", berth_slot::layout::ESP_TYPE_GUID),
            "-c",
            "1:EFI-SYSTEM",
            "-n",
            "2:0:+128M",
            "-t",
            &format!("2:{root_type}"),
            "-c",
            "2:ROOT-A",
            "-n",
            "3:0:+128M",
            "-t",
            &format!("3:{root_type}"),
            "-c",
            "3:ROOT-B",
            "-n",
            "4:0:+64M",
            "-t",
            &format!("4:{STATE_TYPE_GUID}"),
            "-c",
            "4:STATE",
            &img.to_string_lossy(),
        ],
    );
    // The user gives the VM a bigger disk before its first boot.
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len((8 << 30) + (80 << 20)).unwrap();
    let before = allocated_mib(&img);
    let lo = Loop::attach(&img, &mnt);
    let root = PathBuf::from(lo.part(2));
    assert_eq!(sysfs_sectors(&lo.part(4)), (64 << 20) / 512);

    // First boot.
    let first = prepare(&root).unwrap();
    for l in first.log_lines() {
        println!("first boot: {l}");
    }
    assert_eq!(first.device, PathBuf::from(lo.part(4)));
    assert_eq!(first.disk, PathBuf::from(&lo.dev));
    let grown = first.grown.clone().expect("STATE grown");
    assert!(grown.backup_moved);
    assert_eq!(grown.old_bytes, 64 << 20);
    // The last usable LBA rounded down to whole MiB: STATE ends 1 MiB before the disk.
    let disk_bytes: u64 = (8 << 30) + (80 << 20);
    assert_eq!(grown.new_bytes, disk_bytes - (1 << 20) - (1 + 64 + 128 + 128) * (1 << 20));
    assert_eq!(sysfs_sectors(&lo.part(4)) * 512, grown.new_bytes, "the kernel was told (BLKPG)");
    assert_eq!(first.bytes, grown.new_bytes);
    let created = first.created.clone().expect("ext4 created");
    assert_eq!(created.bytes, grown.new_bytes);
    assert!(first.warnings.is_empty() && first.repaired.is_none(), "{first:?}");
    println!(
        "mkfs of {} on a block device: {:.1} ms; image allocation {before:.1} -> {:.1} MiB",
        size_text(created.bytes),
        created.took.as_secs_f64() * 1000.0,
        allocated_mib(&img)
    );
    sgdisk_clean(&lo.dev);
    let info = run("sgdisk", &["-i", "4", &lo.dev]);
    assert!(info.contains(&format!("Last sector: {} ", (disk_bytes >> 9) - 2049)), "{info}");
    e2fsck_clean(&lo.part(4));
    let dump = run("dumpe2fs", &["-h", &lo.part(4)]);
    assert!(dump.contains("Filesystem volume name:   STATE") && dump.contains("has_journal"), "{dump}");

    // Second boot: nothing to do, before or after mounting.
    let second = prepare(&root).unwrap();
    assert_eq!((second.grown.is_none(), second.created.is_none()), (true, true), "{second:?}");
    assert!(second.warnings.is_empty() && second.repaired.is_none(), "{second:?}");
    // "ext4 present" and its health.
    let lines = second.log_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].ends_with("ext4 clean, errors=continue, no errors recorded"), "{lines:?}");
    lo.mount();
    assert!(matches!(grow_filesystem(&first.device, &mnt), Ok(None)));
    std::fs::write(mnt.join("machine-id"), b"0123456789abcdef0123456789abcdef\n").unwrap();
    lo.umount();

    // The disk grows again, to 20 GiB; the kernel learns of it (a VM would reboot).
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(20 << 30).unwrap();
    run("losetup", &["-c", &lo.dev]);
    let third = prepare(&root).unwrap();
    for l in third.log_lines() {
        println!("after enlarging: {l}");
    }
    let g = third.grown.clone().expect("grown again");
    assert!(g.backup_moved && g.new_bytes > grown.new_bytes);
    assert!(third.created.is_none(), "the filesystem must be kept");
    assert_eq!(sysfs_sectors(&lo.part(4)) * 512, g.new_bytes);
    sgdisk_clean(&lo.dev);
    lo.mount();
    // Not the mount point of this device: refused.
    assert!(grow_filesystem(&first.device, &dir.0).unwrap_err().to_string().contains("not where"));
    if !has_cap_sys_resource() {
        // Containers often drop it; PID 1 of a guest has it.
        let e = grow_filesystem(&first.device, &mnt).unwrap_err().to_string();
        assert!(e.contains("EPERM") && e.contains(&lo.part(4)), "{e}");
        println!("online growth not tried: no CAP_SYS_RESOURCE here ({e})");
        lo.umount();
        e2fsck_clean(&lo.part(4));
        return;
    }
    let fs = grow_filesystem(&first.device, &mnt).unwrap().expect("filesystem grown");
    println!(
        "online growth {} -> {} in {:.1} ms",
        size_text(fs.old_bytes),
        size_text(fs.new_bytes),
        fs.took.as_secs_f64() * 1000.0
    );
    assert_eq!(fs.old_bytes, created.bytes);
    assert!(fs.new_bytes <= g.new_bytes && fs.new_bytes + (4 << 20) > g.new_bytes, "{fs:?} vs {g:?}");
    assert!(matches!(grow_filesystem(&first.device, &mnt), Ok(None)), "growing again does nothing");
    assert_eq!(std::fs::read(mnt.join("machine-id")).unwrap(), b"0123456789abcdef0123456789abcdef\n");
    let df = run("df", &["-B1", &mnt.to_string_lossy()]);
    println!("{df}");
    lo.umount();
    e2fsck_clean(&lo.part(4));
    let dump = run("dumpe2fs", &["-h", &lo.part(4)]);
    assert!(dump.contains(&format!("Block count:              {}", fs.new_bytes / 4096)), "{dump}");
}

// ---------------------------------------------------------------------------------------------
// settle(): when STATE may be formatted (H3, M7, M6, L8), on image files; e2fsprogs judges.

const DISK: Guid = Guid([0x42; 16]);
const PART: Guid = Guid([0x24; 16]);

/// A STATE image of `size` bytes: zeros, or with `marker` in its first sector.
fn state_image(dir: &Scratch, name: &str, size: u64, marker: Option<StateMarker>) -> (PathBuf, File) {
    let img = dir.0.join(name);
    let file = File::options().create(true).truncate(true).read(true).write(true).open(&img).unwrap();
    file.set_len(size).unwrap();
    if let Some(m) = marker {
        file.write_all_at(&m.encode(&DISK), 0).unwrap();
    }
    (img, file)
}

/// A STATE image holding a filesystem with data (`/etc/upper/hostname` = `precious`), as a
/// host that ran for a while has.
fn state_with_data(dir: &Scratch, name: &str, size: u64) -> (PathBuf, File) {
    let (img, file) = state_image(dir, name, size, Some(StateMarker::Fresh));
    assert!(settle(&file, &img, size, &DISK, &PART).unwrap().created.is_some());
    let host = dir.0.join("hostname");
    std::fs::write(&host, "precious\n").unwrap();
    for cmd in ["mkdir /etc", "mkdir /etc/upper", &format!("write {} /etc/upper/hostname", host.display())] {
        run("debugfs", &["-w", "-R", cmd, &img.to_string_lossy()]);
    }
    assert_eq!(cat(&img, "/etc/upper/hostname"), "precious\n");
    (img, file)
}

fn cat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(img).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fsck(img: &Path) -> (bool, String) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().expect("e2fsck (e2fsprogs)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn dumpe2fs(img: &Path) -> String {
    run("dumpe2fs", &["-h", &img.to_string_lossy()])
}

fn sha(file: &Path) -> Vec<u8> {
    use std::hash::{DefaultHasher, Hasher};
    let data = std::fs::read(file).unwrap();
    let mut h = DefaultHasher::new();
    h.write(&data);
    h.finish().to_le_bytes().to_vec()
}

/// Zeroes the ext4 magic number of the superblock at byte `at`.
fn zero_magic(file: &File, at: u64) {
    file.write_all_at(&[0, 0], at + 0x38).unwrap();
}

#[test]
fn h3_the_builders_marker_is_formatted_once_and_then_gone() {
    let dir = scratch("h3-fresh");
    let size = 256u64 << 20;
    let (img, file) = state_image(&dir, "state.img", size, Some(StateMarker::Fresh));
    let first = settle(&file, &img, size, &DISK, &PART).unwrap();
    let created = first.created.expect("formatted");
    assert_eq!(created.why, "new STATE (the image's marker)");
    assert_eq!(created.bytes, size);
    assert!(!first.health.expect("the new filesystem's health").has_errors());
    let (ok, text) = fsck(&img);
    assert!(ok, "e2fsck -fn after the first format:\n{text}");
    let mut sector = [0u8; 512];
    file.read_exact_at(&mut sector, 0).unwrap();
    assert_eq!(sector, [0u8; 512], "the marker outlived the format");
    // Every later boot: nothing to do, the health is reported.
    let again = settle(&file, &img, size, &DISK, &PART).unwrap();
    assert_eq!((again.created, again.repaired, again.marker_cleared), (None, None, false));
    assert!(!again.health.expect("health").has_errors());
}

#[test]
fn h3_damaged_primary_superblock_is_repaired_from_a_backup_not_formatted() {
    let dir = scratch("h3-repair");
    let size = 300u64 << 20;
    let (img, file) = state_with_data(&dir, "state.img", size);
    // Two bytes of the superblock lost: what formatted STATE before.
    zero_magic(&file, 1024);
    assert!(!dumpe2fs_ok(&img), "the damage must be visible to dumpe2fs");
    let settled = settle(&file, &img, size, &DISK, &PART).unwrap();
    assert_eq!(settled.created, None, "formatted a STATE holding data");
    let repaired = settled.repaired.expect("repaired");
    assert!(repaired.contains("no ext4 magic") && repaired.contains("group 1 (block 32768"), "{repaired}");
    let (ok, text) = fsck(&img);
    assert!(ok, "e2fsck -fn after the repair:\n{text}");
    assert_eq!(cat(&img, "/etc/upper/hostname"), "precious\n");
    assert!(dumpe2fs(&img).contains("Filesystem volume name:   STATE"));

    // A checksum that does not match is damage too; the marker written over a used STATE
    // (the rest of its first MiB is not zeros) is no licence to format it.
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, 1024 + 0x10).unwrap();
    file.write_all_at(&[b[0] ^ 1], 1024 + 0x10).unwrap();
    file.write_all_at(&StateMarker::Fresh.encode(&DISK), 0).unwrap();
    let settled = settle(&file, &img, size, &DISK, &PART).unwrap();
    assert_eq!(settled.created, None);
    assert!(settled.repaired.expect("repaired").contains("checksum"));
    assert_eq!(cat(&img, "/etc/upper/hostname"), "precious\n");
}

fn dumpe2fs_ok(img: &Path) -> bool {
    Command::new("dumpe2fs").arg("-h").arg(img).output().unwrap().status.success()
}

#[test]
fn h3_state_that_may_hold_data_is_never_formatted() {
    let dir = scratch("h3-never");
    let size = 300u64 << 20;
    let (img, file) = state_with_data(&dir, "state.img", size);
    // Primary and backup superblock both gone.
    zero_magic(&file, 1024);
    zero_magic(&file, 32768 * 4096);
    let before = sha(&img);
    let e = settle(&file, &img, size, &DISK, &PART).unwrap_err().to_string();
    assert!(e.contains("NOT formatted") && e.contains("no backup superblock found"), "{e}");
    assert_eq!(sha(&img), before, "STATE was written to");

    // The backup is there but the primary group descriptors are not its filesystem's: no repair.
    let (img, file) = state_with_data(&dir, "state2.img", size);
    zero_magic(&file, 1024);
    file.write_all_at(&[0xAB; 64], 4096).unwrap();
    let before = sha(&img);
    let e = settle(&file, &img, size, &DISK, &PART).unwrap_err().to_string();
    assert!(e.contains("NOT formatted") && e.contains("the backup in group 1"), "{e}");
    assert_eq!(sha(&img), before, "STATE was written to");

    // Another disk's marker over zeros: not this image's STATE, not zeros either.
    let (img, file) = state_image(&dir, "other.img", size, None);
    let other = Guid([0x43; 16]);
    file.write_all_at(&StateMarker::Fresh.encode(&other), 0).unwrap();
    let e = settle(&file, &img, size, &DISK, &PART).unwrap_err().to_string();
    assert!(e.contains("NOT formatted"), "{e}");
}

#[test]
fn h3_legacy_state_of_zeros_is_formatted_only_without_any_backup_superblock() {
    let dir = scratch("h3-legacy");
    let size = 300u64 << 20;
    // An image from before the marker: all zeros.
    let (img, file) = state_image(&dir, "zeros.img", size, None);
    let c = settle(&file, &img, size, &DISK, &PART).unwrap().created.expect("formatted");
    assert_eq!(c.why, "new STATE (zeros, from an image without the marker)");
    assert!(fsck(&img).0);
    // A used STATE whose first MiB was lost: its backup superblock keeps it from formatting.
    let (img, file) = state_with_data(&dir, "used.img", size);
    file.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
    let before = sha(&img);
    let e = settle(&file, &img, size, &DISK, &PART).unwrap_err().to_string();
    assert!(e.contains("NOT formatted") && e.contains("first MiB is zeros"), "{e}");
    assert_eq!(sha(&img), before);
}

#[test]
fn h3_a_format_cut_short_is_done_again() {
    let dir = scratch("h3-cut");
    let size = 300u64 << 20;
    // What a power cut in the middle of the first format leaves: the formatting marker, metadata
    // in the first MiB, a backup superblock, no primary.
    let (img, file) = state_with_data(&dir, "state.img", size);
    zero_magic(&file, 1024);
    file.write_all_at(&StateMarker::Formatting.encode(&DISK), 0).unwrap();
    let c = settle(&file, &img, size, &DISK, &PART).unwrap().created.expect("formatted again");
    assert_eq!(c.why, "new STATE (a format cut short is done again)");
    assert!(fsck(&img).0);
    // A cut after the superblock but before the marker's sector was cleared: kept, marker cleared.
    file.write_all_at(&StateMarker::Formatting.encode(&DISK), 0).unwrap();
    let s = settle(&file, &img, size, &DISK, &PART).unwrap();
    assert!(s.marker_cleared && s.created.is_none());
    assert!(fsck(&img).0);
}

#[test]
fn m7_state_is_formatted_with_blocks_reserved_for_root() {
    let dir = scratch("m7");
    let size = 256u64 << 20;
    let (img, file) = state_image(&dir, "state.img", size, Some(StateMarker::Fresh));
    let c = settle(&file, &img, size, &DISK, &PART).unwrap().created.unwrap();
    // 5% of 65536 blocks.
    assert_eq!(c.reserved_blocks, 3276);
    assert!(dumpe2fs(&img).contains("Reserved block count:     3276\n"));
}

#[test]
fn m6_state_filesystem_stays_below_16_tib() {
    const { assert!(MAX_FS_BYTES / berth_ext4::BLOCK_SIZE <= berth_ext4::MAX_BLOCKS) };
    assert_eq!(MAX_FS_BYTES, (16 << 40) - (128 << 20));
    let tree = Tree::new(Metadata::root(0o755, 0));
    let ok = berth_ext4::Options::writable(STATE_LABEL, b"t", 0, MAX_FS_BYTES);
    berth_ext4::min_size(&tree, &ok).unwrap();
    let too_big = berth_ext4::Options::writable(STATE_LABEL, b"t", 0, MAX_FS_BYTES + (128 << 20));
    assert!(berth_ext4::min_size(&tree, &too_big).unwrap_err().to_string().contains("64bit"));
    // Growth stops there too.
    let sb = Superblock {
        blocks: MAX_FS_BYTES / 4096 - 32768,
        block_size: 4096,
        first_data_block: 0,
        blocks_per_group: 32768,
        itable_blocks: 512,
        desc_size: 32,
        reserved_gdt_blocks: 0,
        is_64bit: false,
    };
    let limit = MAX_FS_BYTES / 4096;
    assert_eq!(sb.grow_target((20u64 << 40) / 4096).min(limit), limit);
}

#[test]
fn l8_errors_recorded_in_state_are_reported_loudly() {
    let dir = scratch("l8");
    let size = 256u64 << 20;
    let (img, file) = state_image(&dir, "state.img", size, Some(StateMarker::Fresh));
    settle(&file, &img, size, &DISK, &PART).unwrap();
    let quiet = health_text(&settle(&file, &img, size, &DISK, &PART).unwrap().health.unwrap(), Path::new("/dev/vda4"));
    assert_eq!(quiet, "ext4 clean, errors=continue, no errors recorded");
    for set in [
        "state 3",
        "error_count 2",
        "first_error_time @1700000000",
        "first_error_func ext4_lookup",
        "first_error_line 1234",
        "first_error_ino 12",
        "last_error_time @1700000100",
        "last_error_func ext4_readdir",
        "last_error_line 99",
    ] {
        run("debugfs", &["-w", "-R", &format!("ssv {set}"), &img.to_string_lossy()]);
    }
    let h = settle(&file, &img, size, &DISK, &PART).unwrap().health.unwrap();
    let text = health_text(&h, Path::new("/dev/vda4"));
    assert_eq!(
        text,
        "WARNING: the filesystem records 2 error(s) (ext4 clean, errors, errors=continue); first at 1700000000 s in \
         ext4_lookup:1234, inode 12; last at 1700000100 s in ext4_readdir:99; check it with `e2fsck -f /dev/vda4` \
         while it is not mounted"
    );
}
