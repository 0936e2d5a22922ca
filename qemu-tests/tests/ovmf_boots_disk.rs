//! OVMF as the judge of the disk writers: a GPT disk made entirely by Berth's writers (GPT,
//! FAT32 ESP holding the real `BOOTX64.EFI`, ext4 in ROOT-A) is found bootable by the firmware,
//! which loads bootmgr from the ESP; bootmgr's console output proves it ran: it reads the GPT,
//! picks slot A, finds no kernel on this ESP, says so, and resets instead of hanging. The same
//! boot checks what the harness adds on request: overlay, forwards, guestfwd, virtio-serial.

use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::Duration;

use berth_builder::disk::{DiskLayout, DiskSize, create_image, write_gpt};
use berth_builder::esp::{EspContents, EspOptions, write_esp};
use berth_fstree::{Metadata, Node, NodeKind, Tree};
use berth_qemu_tests::{Boot, Forward, GuestForward, GuestTarget, Machine, Options, free_local_port};
use berth_slot::Slot;

const MIB: u64 = 1 << 20;

/// Builds BOOTX64.EFI with cargo, as the real build does.
fn bootmgr_efi() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    berth_builder::build::OwnBinaries::build(&workspace).expect("building berth's binaries").bootmgr
}

#[test]
fn ovmf_boots_bootmgr_from_our_esp() {
    let efi = std::fs::read(bootmgr_efi()).expect("reading berth-bootmgr.efi");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");

    let mut layout = DiskLayout::new(DiskSize::State(16 * MIB), b"ovmf-test".to_vec());
    layout.esp_size = 64 * MIB;
    layout.root_size = 32 * MIB;
    let plan = layout.plan().unwrap();
    let file = create_image(&disk, &plan).unwrap();
    write_gpt(&file, &plan).unwrap();

    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", efi).unwrap();
    esp.add_file("berth/a/cmdline", b"console=ttyS0".as_slice()).unwrap();
    let p = plan.esp();
    write_esp(&file, p.offset, p.size, &esp, &EspOptions::from_seed(b"ovmf-test", "EFI-SYSTEM", 1_700_000_000))
        .unwrap();

    let mut tree = Tree::new(Metadata::root(0o755, 1_700_000_000));
    tree.insert("hello", Node::new(NodeKind::File(b"berth\n".as_slice().into()), Metadata::root(0o644, 0))).unwrap();
    let root = plan.root(Slot::A);
    let mut opts = berth_ext4::Options::derived("ROOT-A", b"ovmf-test", 1_700_000_000);
    opts.size = Some(root.size);
    berth_ext4::write_at(&tree, &file, root.offset, &opts).unwrap();
    drop(file);

    // The harness's extras ride along on this cheap boot: an overlay, the restricted user
    // network with a forward on 127.0.0.1 and a guestfwd, and a virtio-serial port.
    let port = free_local_port().unwrap();
    let options = Options {
        overlay: true,
        forwards: vec![Forward { host: port, guest: 22 }],
        guest_forwards: vec![GuestForward {
            addr: Ipv4Addr::new(10, 0, 2, 100),
            port: 80,
            target: GuestTarget::Cmd("cat".into()),
        }],
        serial_ports: vec!["org.berth.agent.0".into()],
        ..Options::default()
    };
    let mut m = Machine::start_with(&Boot { disk: &disk, format: "raw", memory_mib: 256 }, &options).unwrap();
    let console =
        m.wait_for("berth-bootmgr: resetting in 5 s", Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    let overlay = m.overlay().expect("an overlay").to_path_buf();
    assert!(overlay.starts_with(m.dir()));
    assert!(std::fs::read(&overlay).unwrap().starts_with(b"QFI\xfb"), "{} is not qcow2", overlay.display());
    let socket = m.serial_port("org.berth.agent.0").expect("the port's socket");
    assert!(std::fs::metadata(socket).unwrap().file_type().is_socket(), "{}", socket.display());
    assert!(std::os::unix::net::UnixStream::connect(socket).is_ok(), "QEMU does not listen on {}", socket.display());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "nothing listens on 127.0.0.1:{port}");
    assert!(m.wait_exit(Duration::from_secs(1)).is_err(), "QEMU exited by itself:\n{}", m.qemu_stderr());
    m.kill();
    m.wait_exit(Duration::from_secs(5)).expect("QEMU gone after kill");
    assert!(console.contains("berth-bootmgr 0.1.0"), "{console}");
    assert!(console.contains("berth-bootmgr: slot A: priority 1, tries 0, successful"), "{console}");
    assert!(console.contains("berth-bootmgr: -> booting A (normal)"), "{console}");
    assert!(console.contains("berth-bootmgr: error: reading berth/a/vmlinuz from the ESP: NOT_FOUND"), "{console}");
}
