//! Kernel module selection, `modules.dep` and the initramfs tree (`berth_builder::kernel`).
//!
//! The synthetic tests build a kernel package from real ELF objects: tiny C files whose strings
//! sit in a `.modinfo` section and which export and use symbols as modules do, compiled by the
//! host's `gcc -c` (the judge of the ELF reader is thus the real toolchain, not a hand-made
//! byte array). kmod's `depmod` judges every file Berth writes for a pruned root and an
//! initramfs (the binary indexes byte for byte), and `modprobe` and `modinfo` must answer the
//! same on Berth's root as on depmod's.
//!
//! The real-kernel test unpacks each Debian kernel package named by `BERTH_TEST_KERNEL_DEBS`
//! (colon-separated), found in `/var/cache/apt/archives`, or found in `berth build`'s default
//! cache (`$XDG_CACHE_HOME/berth/debs` or `~/.cache/berth/debs`) with `dpkg-deb -x`, and does
//! the same for the whole package, the initramfs set and the container-host root. It never
//! downloads anything; with no package present it says so and checks nothing more.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use berth_builder::cpio::{Compression, CpioOptions, write_archive};
use berth_builder::kernel::{
    ALWAYS_FILE, CONTAINER_HOST_MODULES, DriverLists, INITRAMFS_ALWAYS, KernelError, KernelPackage, ModuleIndex,
    PLATFORM_DRIVERS, PlatformDrivers, Role, Selection, check_drivers, image_cmdline, initramfs_tree,
    initramfs_tree_for, prune_root,
};
use berth_fstree::{FileData, LoadOptions, Metadata, Node, NodeKind, Tree};

const KVER: &str = "6.1.0-9-test";
const MODDIR: &str = "/usr/lib/modules/6.1.0-9-test";
const EPOCH: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Synthetic modules

/// Finds a host tool on PATH or in the sbin directories; `None` if absent.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|c| c.is_file())
}

/// A required judge: fails the test naming the Debian package when missing.
fn tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("{name} is required for this test: apt-get install {package}"))
}

/// Compiles a relocatable ELF object whose `.modinfo` holds `fields`, like a `.ko`. Long
/// strings are left at gcc's default alignment (32 bytes for arrays that large on x86-64), so
/// the section has NUL padding between some entries, as modules built without `__aligned(1)`
/// would.
fn compile(fields: &[&str]) -> Vec<u8> {
    compile_with_symbols(fields, &Symbols::default())
}

/// The symbols of a synthetic module, as depmod reads them from a real one.
#[derive(Default)]
struct Symbols {
    /// Exported as a `__crc_<name>` symbol (a `CONFIG_MODVERSIONS` kernel's exports).
    crc: Vec<String>,
    /// Exported through `__ksymtab_strings` only.
    strings: Vec<String>,
    /// Used, in this order (undefined symbols in the symbol table).
    imports: Vec<String>,
}

fn compile_with_symbols(fields: &[&str], symbols: &Symbols) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut src = String::new();
    for (i, f) in fields.iter().enumerate() {
        src.push_str(&format!("static const char __attribute__((section(\".modinfo\"), used)) f{i}[] = \"{f}\";\n"));
    }
    for s in &symbols.crc {
        src.push_str(&format!("const unsigned int __crc_{s} = 0x1234;\n"));
    }
    for (i, s) in symbols.strings.iter().enumerate() {
        src.push_str(&format!(
            "static const char __attribute__((section(\"__ksymtab_strings\"), used)) ks{i}[] = \"{s}\";\n"
        ));
    }
    let mut body = String::from("0");
    for s in &symbols.imports {
        src.push_str(&format!("extern int {s}(void);\n"));
        body.push_str(&format!(" + {s}()"));
    }
    src.push_str(&format!("int berth_test_init(void) {{ return {body}; }}\n"));
    let c = dir.path().join("m.c");
    let o = dir.path().join("m.ko");
    fs::write(&c, src).unwrap();
    let out = Command::new(tool("gcc", "gcc")).arg("-c").arg("-o").arg(&o).arg(&c).output().unwrap();
    assert!(out.status.success(), "gcc: {}", String::from_utf8_lossy(&out.stderr));
    fs::read(&o).unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    // The kernel's own setting for modules (`xz --check=crc32`).
    let stream = liblzma::stream::Stream::new_easy_encoder(6, liblzma::stream::Check::Crc32).unwrap();
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// The synthetic package: (path under the modules dir, `.modinfo` fields, compression).
/// `modules.order` lists them in this order except the last (`extra/`), as depmod would find
/// it outside the build's order.
const PACKAGE: &[(&str, &[&str])] = &[
    ("kernel/arch/x86/crypto/crc32c-intel.ko", &["alias=crypto-crc32c-intel", "alias=crypto-crc32c", "depends="]),
    ("kernel/fs/mbcache.ko", &["depends=", "softdep=pre: builtin-thing", "license=GPL"]),
    ("kernel/fs/jbd2/jbd2.ko", &["depends=", "softdep=pre: crypto-crc32c"]),
    (
        "kernel/fs/ext4/ext4.ko",
        &[
            "description=Fourth Extended Filesystem, a description long enough to be padded",
            "depends=mbcache,jbd2,crc16",
            "softdep=pre: crypto-crc32c",
            "alias=fs-ext4",
            "alias=ext3",
        ],
    ),
    ("kernel/fs/overlayfs/overlay.ko", &["alias=fs-overlay", "depends="]),
    ("kernel/fs/fuse/fuse.ko", &["alias=fs-fuse", "alias=devname:fuse", "alias=char-major-10-229", "depends="]),
    ("kernel/crypto/crc32c_generic.ko", &["alias=crc32c", "alias=crypto-crc32c", "depends="]),
    ("kernel/block/t10-pi.ko", &["depends=crc-t10dif"]),
    ("kernel/lib/crc-t10dif.ko", &["depends=", "softdep=pre: crct10dif"]),
    ("kernel/drivers/scsi/scsi_common.ko", &["depends="]),
    ("kernel/drivers/scsi/scsi_mod.ko", &["depends=scsi_common"]),
    ("kernel/drivers/scsi/sd_mod.ko", &["depends=scsi_mod,t10-pi,scsi_common", "alias=scsi:t-0x00*"]),
    ("kernel/drivers/virtio/virtio.ko", &["depends="]),
    ("kernel/drivers/virtio/virtio_ring.ko", &["depends=virtio"]),
    ("kernel/drivers/block/virtio_blk.ko", &["alias=virtio:d00000002v*", "depends=virtio,virtio_ring"]),
    ("kernel/drivers/i2c/algos/i2c-algo-bit.ko", &["depends="]),
    ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko", &["depends=", "alias=pci:v00008086d0000100Esv*sd*bc*sc*i*"]),
    (
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz",
        &["depends=", "alias=pci:v00008086d000010D3sv*sd*bc*sc*i*"],
    ),
    ("kernel/drivers/net/ethernet/intel/igb/igb.ko.zst", &["depends=i2c-algo-bit"]),
    ("kernel/drivers/vfio/vfio.ko", &["depends=", "softdep=post: vfio_iommu_type1"]),
    ("kernel/drivers/vfio/vfio_iommu_type1.ko", &["depends=vfio"]),
    ("extra/berth-extra.ko", &["depends=virtio"]),
];

const MODULES_BUILTIN: &str = "kernel/lib/crc16.ko\nkernel/fs/binfmt_script.ko\n";
const BUILTIN_MODINFO: &[u8] = b"crc16.license=GPL\0crc16.alias=builtin-thing\0binfmt_script.license=GPL\0";

/// The uncompressed objects of [`PACKAGE`], compiled once per test run. Each module exports
/// `berth_<name>` (every other one as a `__crc_` symbol, the rest through `__ksymtab_strings`)
/// and uses `berth_<dependency>` for each name in its `depends=`, in reverse, so that depmod's
/// view of the dependencies (symbols) differs in order from `depends=`.
fn objects() -> &'static BTreeMap<&'static str, Vec<u8>> {
    static OBJECTS: std::sync::OnceLock<BTreeMap<&'static str, Vec<u8>>> = std::sync::OnceLock::new();
    OBJECTS.get_or_init(|| {
        PACKAGE
            .iter()
            .enumerate()
            .map(|(i, (path, fields))| {
                let export = vec![format!("berth_{}", module_name(path))];
                let depends = fields.iter().find_map(|f| f.strip_prefix("depends=")).unwrap_or_default();
                let imports = depends.split(',').filter(|d| !d.is_empty()).rev();
                let symbols = Symbols {
                    imports: imports.map(|d| format!("berth_{}", d.replace('-', "_"))).collect(),
                    ..if i % 2 == 0 {
                        Symbols { crc: export, ..Default::default() }
                    } else {
                        Symbols { strings: export, ..Default::default() }
                    }
                };
                (*path, compile_with_symbols(fields, &symbols))
            })
            .collect()
    })
}

/// The stored bytes of a module file (compressed as its name says).
fn stored(path: &str) -> Vec<u8> {
    let plain = &objects()[path];
    if path.ends_with(".xz") {
        xz(plain)
    } else if path.ends_with(".zst") {
        zstd::encode_all(plain.as_slice(), 19).unwrap()
    } else {
        plain.clone()
    }
}

fn modules_order() -> String {
    PACKAGE
        .iter()
        .filter(|(p, _)| p.starts_with("kernel/"))
        .map(|(p, _)| format!("{}\n", p.trim_end_matches(".xz").trim_end_matches(".zst")))
        .collect()
}

fn file(data: Vec<u8>, mode: u16) -> Node {
    Node::new(NodeKind::File(data.into()), Metadata::root(mode, 0))
}

/// A root tree as the Debian unpacker leaves it: merged /usr, the package's files, and a few
/// unrelated files (one hard-linked) that pruning must leave alone.
fn package_tree() -> Tree {
    let dir = Metadata::root(0o755, 0);
    let mut t = Tree::new(dir.clone());
    for d in ["usr/bin", "usr/lib", "boot", "etc"] {
        t.mkdir_all(d, &dir).unwrap();
    }
    t.insert("lib", Node::new(NodeKind::Symlink(b"usr/lib".to_vec()), Metadata::root(0o777, 0))).unwrap();
    t.insert("usr/bin/tool", file(b"#!/bin/sh\n".to_vec(), 0o755)).unwrap();
    t.hard_link("usr/bin/tool", "usr/bin/tool2").unwrap();
    t.insert(format!("boot/vmlinuz-{KVER}"), file(b"MZ fake bzImage".to_vec(), 0o644)).unwrap();
    t.insert(format!("boot/config-{KVER}"), file(b"CONFIG_EXT4_FS=m\n".to_vec(), 0o644)).unwrap();
    for (path, _) in PACKAGE {
        let full = format!("{MODDIR}/{path}");
        t.mkdir_all(Path::new(&full).parent().unwrap(), &dir).unwrap();
        t.insert(&full, file(stored(path), 0o644)).unwrap();
    }
    t.insert(format!("{MODDIR}/modules.order"), file(modules_order().into_bytes(), 0o644)).unwrap();
    t.insert(format!("{MODDIR}/modules.builtin"), file(MODULES_BUILTIN.as_bytes().to_vec(), 0o644)).unwrap();
    t.insert(format!("{MODDIR}/modules.builtin.modinfo"), file(BUILTIN_MODINFO.to_vec(), 0o644)).unwrap();
    t
}

fn kernel() -> KernelPackage {
    KernelPackage::find(&package_tree()).unwrap()
}

/// Platform driver lists for the synthetic package: `kvm`'s disk drivers are modules of it, its
/// optional ones are not; `other`'s required `crc16` stands for a driver the kernel builds in
/// (`nvme` in Debian's cloud kernel) and its root-only `vboxguest` is absent.
const TEST_PLATFORMS: &[PlatformDrivers] = &[
    PlatformDrivers {
        platform: "kvm",
        disk: &["virtio_blk", "sd_mod"],
        nic: &[],
        initramfs: &["nvme", "virtio-net"],
        root: &["fuse"],
    },
    PlatformDrivers { platform: "other", disk: &["crc16", "sd_mod"], nic: &[], initramfs: &[], root: &["vboxguest"] },
];

/// Stage 1's loader as the module docs specify it, run on `modules.dep` text: for each line,
/// its dependencies from last to first, then the module, each path once.
fn simulate_loader(modules_dep: &str) -> Vec<String> {
    let mut loaded = Vec::new();
    let mut seen = HashSet::new();
    for line in modules_dep.lines() {
        let (module, deps) = line.split_once(':').expect("a modules.dep line has a colon");
        for path in deps.split_whitespace().rev().chain([module]) {
            if seen.insert(path.to_owned()) {
                loaded.push(path.to_owned());
            }
        }
    }
    loaded
}

/// Checks the ordering invariants of a selection: the loader's order from the `modules.dep`
/// text is [`Selection::load_order`]; every module loads after its whole dependency list;
/// each list is in depmod's order (a module before the modules it depends on).
fn check_orders(sel: &Selection) {
    let order = sel.load_order();
    assert_eq!(simulate_loader(&sel.modules_dep()), order, "loader order differs from load_order()");
    assert_eq!(order.len(), sel.modules().len());
    let at: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    for m in sel.modules() {
        let deps = sel.dependencies(&m.name).unwrap();
        for d in &deps {
            assert!(at[d] < at[m.path.as_str()], "{} loads before its dependency {d}", m.path);
        }
        // Within a list, a dependency's own dependencies come after it.
        for (i, d) in deps.iter().enumerate() {
            let name = module_name(d);
            for dd in sel.dependencies(&name).unwrap() {
                let j = deps.iter().position(|x| *x == dd).unwrap_or_else(|| panic!("{dd} missing from {}", m.path));
                assert!(j > i, "{}: {dd} listed before {d}, which depends on it", m.path);
            }
        }
    }
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap();
    file.split(".ko").next().unwrap().replace('-', "_")
}

fn names(sel: &Selection) -> Vec<&str> {
    sel.modules().iter().map(|m| m.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Finding and indexing

#[test]
fn finds_kernel_and_reads_modinfo_from_real_objects() {
    let k = kernel();
    assert_eq!(k.version(), KVER);
    assert_eq!(k.modules_dir(), Path::new(MODDIR));
    assert_eq!(k.vmlinuz_path(), Path::new(&format!("/boot/vmlinuz-{KVER}")));
    assert_eq!(k.vmlinuz().read_all().unwrap(), b"MZ fake bzImage");
    let idx = k.modules();
    assert_eq!(idx.modules().len(), PACKAGE.len());
    // Names: `-` becomes `_`; compression suffixes are not part of the name.
    let ext4 = idx.get("ext4").unwrap();
    assert_eq!(ext4.depends, ["mbcache", "jbd2", "crc16"]);
    assert_eq!(ext4.info.softdeps, ["pre: crypto-crc32c"]);
    assert_eq!(ext4.info.aliases, ["fs-ext4", "ext3"]);
    assert_eq!(idx.get("crc32c-intel").unwrap().name, "crc32c_intel");
    assert_eq!(idx.get("crc32c_intel").unwrap().path, "kernel/arch/x86/crypto/crc32c-intel.ko");
    assert_eq!(idx.get("sd_mod").unwrap().depends, ["scsi_mod", "t10_pi", "scsi_common"]);
    // Compressed modules are read through their decompressors.
    assert_eq!(idx.get("e1000e").unwrap().info.aliases, ["pci:v00008086d000010D3sv*sd*bc*sc*i*"]);
    assert_eq!(idx.get("igb").unwrap().depends, ["i2c_algo_bit"]);
    assert!(idx.is_builtin("crc16") && idx.is_builtin("binfmt-script") && !idx.is_builtin("ext4"));
    // depmod's order: modules.order first, then the rest.
    assert_eq!(idx.modules().last().unwrap().path, "extra/berth-extra.ko");
    assert_eq!(idx.modules()[0].name, "crc32c_intel");
}

#[test]
fn find_errors_name_the_problem() {
    let empty = Tree::new(Metadata::root(0o755, 0));
    assert!(matches!(KernelPackage::find(&empty), Err(KernelError::NoKernel)));

    // A headers-only directory (just a `build` link) is not a kernel.
    let mut t = package_tree();
    t.mkdir_all("usr/lib/modules/6.1.0-8-test", &Metadata::root(0o755, 0)).unwrap();
    let link = Node::new(NodeKind::Symlink(b"/usr/src/x".to_vec()), Metadata::root(0o777, 0));
    t.insert("usr/lib/modules/6.1.0-8-test/build", link).unwrap();
    assert_eq!(KernelPackage::find(&t).unwrap().version(), KVER);

    t.mkdir_all("usr/lib/modules/6.1.0-8-test/kernel", &Metadata::root(0o755, 0)).unwrap();
    let e = KernelPackage::find(&t).unwrap_err().to_string();
    assert!(e.contains("several kernels") && e.contains("6.1.0-8-test") && e.contains(KVER), "{e}");

    let mut t = package_tree();
    t.node_mut(t.lookup("boot").unwrap()).kind = NodeKind::Dir(Default::default());
    let e = KernelPackage::find(&t).unwrap_err().to_string();
    assert!(e.contains(&format!("/boot/vmlinuz-{KVER}")), "{e}");

    let mut t = package_tree();
    let id = t.lookup(format!("{MODDIR}/kernel/fs/overlayfs/overlay.ko")).unwrap();
    t.node_mut(id).kind = NodeKind::File(
        b"not an ELF file: a text file long enough to hold an ELF64 header, which it is not".to_vec().into(),
    );
    let e = KernelPackage::find(&t).unwrap_err().to_string();
    assert!(e.contains("kernel/fs/overlayfs/overlay.ko") && e.contains("no ELF magic"), "{e}");

    let mut t = package_tree();
    let id = t.lookup(format!("{MODDIR}/kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz")).unwrap();
    t.node_mut(id).kind = NodeKind::File(b"\xfd7zXZ\0garbage".to_vec().into());
    let e = KernelPackage::find(&t).unwrap_err().to_string();
    assert!(e.contains("e1000e.ko.xz") && e.contains("xz"), "{e}");
}

/// The same package on the host, not merged-/usr (`/lib/modules`, as bookworm's .deb ships
/// it), loaded with `Tree::from_dir`: modules are then byte ranges of host files, read in part.
#[test]
fn reads_modules_from_host_files() {
    let dir = tempfile::tempdir().unwrap();
    let moddir = dir.path().join("lib/modules").join(KVER);
    for (path, _) in PACKAGE {
        let p = moddir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, stored(path)).unwrap();
    }
    fs::write(moddir.join("modules.order"), modules_order()).unwrap();
    fs::create_dir_all(dir.path().join("boot")).unwrap();
    fs::write(dir.path().join(format!("boot/vmlinuz-{KVER}")), b"MZ").unwrap();
    let tree = Tree::from_dir(dir.path(), &LoadOptions { all_root: true, mtime: Some(0) }).unwrap();
    let k = KernelPackage::find(&tree).unwrap();
    assert_eq!(k.modules_dir(), Path::new("/lib/modules").join(KVER));
    let mem = kernel();
    for (a, b) in k.modules().modules().iter().zip(mem.modules().modules()) {
        assert_eq!((&a.name, &a.path, &a.depends, &a.info), (&b.name, &b.path, &b.depends, &b.info));
    }
    // No modules.builtin here: crc16 is unknown, so ext4's dependency on it is an error.
    let e = k.select(&["ext4"]).unwrap_err().to_string();
    assert!(e.contains("ext4 depends on crc16"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Selection and modules.dep

#[test]
fn closure_follows_softdeps_through_aliases_and_builtins() {
    let sel = kernel().select(&["ext4"]).unwrap();
    // ext4 -> mbcache, jbd2 (crc16 is built in); `pre: crypto-crc32c` is an alias of both
    // crc32c modules; mbcache's `pre: builtin-thing` is a built-in alias (satisfied).
    assert_eq!(names(&sel), ["crc32c_intel", "mbcache", "jbd2", "ext4", "crc32c_generic"]);
    assert!(sel.unresolved_softdeps().is_empty(), "{:?}", sel.unresolved_softdeps());
    assert_eq!(
        sel.modules_dep(),
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n\
         kernel/fs/mbcache.ko:\n\
         kernel/crypto/crc32c_generic.ko:\n\
         kernel/fs/jbd2/jbd2.ko:\n\
         kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"
    );
    check_orders(&sel);
    assert_eq!(
        sel.modules_softdep(),
        "# Soft dependencies extracted from modules themselves.\n\
         softdep mbcache pre: builtin-thing\n\
         softdep jbd2 pre: crypto-crc32c\n\
         softdep ext4 pre: crypto-crc32c\n"
    );
    assert_eq!(
        sel.modules_alias(),
        "# Aliases extracted from modules themselves.\n\
         alias crypto-crc32c-intel crc32c_intel\n\
         alias crypto-crc32c crc32c_intel\n\
         alias fs-ext4 ext4\n\
         alias ext3 ext4\n\
         alias crc32c crc32c_generic\n\
         alias crypto-crc32c crc32c_generic\n"
    );
}

#[test]
fn modules_dep_lists_transitive_deps_in_depmod_order() {
    // `t10-pi` and `crc-t10dif` are spelled with dashes in `depends=` and in file names.
    let sel = kernel().select(&["sd-mod"]).unwrap();
    assert_eq!(names(&sel), ["t10_pi", "crc_t10dif", "scsi_common", "scsi_mod", "sd_mod"]);
    assert_eq!(
        sel.modules_dep(),
        "kernel/lib/crc-t10dif.ko:\n\
         kernel/block/t10-pi.ko: kernel/lib/crc-t10dif.ko\n\
         kernel/drivers/scsi/scsi_common.ko:\n\
         kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko\n\
         kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko \
         kernel/block/t10-pi.ko kernel/lib/crc-t10dif.ko\n"
    );
    // The list's order is depmod's, from the order sd_mod uses its dependencies' symbols
    // (scsi_common's first), not from `depends=`. modprobe (and stage 1) load it from the end.
    assert_eq!(
        sel.load_order(),
        [
            "kernel/lib/crc-t10dif.ko",
            "kernel/block/t10-pi.ko",
            "kernel/drivers/scsi/scsi_common.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/scsi/sd_mod.ko",
        ]
    );
    // Nothing provides crct10dif: skipped, and reported.
    assert_eq!(sel.unresolved_softdeps(), [("crc_t10dif".to_owned(), "crct10dif".to_owned())]);
    check_orders(&sel);
}

#[test]
fn patterns_names_globs_and_errors() {
    let k = kernel();
    let sel = k.select(&["drivers/net/ethernet/intel/**"]).unwrap();
    assert_eq!(names(&sel), ["i2c_algo_bit", "e1000", "e1000e", "igb"]);
    check_orders(&sel);
    assert_eq!(sel.dependencies("igb").unwrap(), ["kernel/drivers/i2c/algos/i2c-algo-bit.ko"]);
    assert_eq!(names(&k.select(&["e1000*"]).unwrap()), ["e1000", "e1000e"]);
    assert_eq!(names(&k.select(&["fs/overlayfs/*"]).unwrap()), ["overlay"]);
    // Path globs are relative to kernel/ and see `.ko` names whatever the compression.
    assert_eq!(names(&k.select(&["drivers/net/ethernet/intel/e1000e/e1000e.ko"]).unwrap()), ["e1000e"]);
    // `*` stays within a directory.
    assert_eq!(names(&k.select(&["fs/*"]).unwrap()), ["mbcache"]);
    let e = k.select(&["drivers/*"]).unwrap_err().to_string();
    assert!(e.contains("\"drivers/*\"") && e.contains("matches no module"), "{e}");
    let e = k.select(&["kernel/fs/ext4/*"]).unwrap_err().to_string();
    assert!(e.contains("kernel/fs/ext4/*"), "{e}");
    let e = k.select(&["ext4", "nosuchmod"]).unwrap_err().to_string();
    assert!(e.contains("\"nosuchmod\"") && e.contains(KVER), "{e}");
    assert!(matches!(k.select(&["zz*"]), Err(KernelError::GlobMatchesNothing { .. })));
    // Built-in modules select nothing and are reported as such.
    let sel = k.select(&["crc16", "binfmt-script", "virtio_blk", "lib/crc1*"]).unwrap();
    assert_eq!(sel.builtin(), ["crc16", "binfmt-script", "lib/crc1*"]);
    assert_eq!(names(&sel), ["virtio", "virtio_ring", "virtio_blk"]);
    // Optional names that are missing are reported, not errors.
    let sel = k.modules().select_with_optional(&["overlay"], &["ahci", "virtio-blk"]).unwrap();
    assert_eq!(sel.unavailable(), ["ahci"]);
    assert_eq!(names(&sel), ["overlay", "virtio", "virtio_ring", "virtio_blk"]);
    // A module outside kernel/ is selectable by name; its line sorts after modules.order's.
    let sel = k.select(&["berth-extra"]).unwrap();
    assert_eq!(
        sel.modules_dep(),
        "kernel/drivers/virtio/virtio.ko:\nextra/berth-extra.ko: kernel/drivers/virtio/virtio.ko\n"
    );
}

#[test]
fn post_softdeps_load_after_and_contradicting_softdeps_yield() {
    let sel = kernel().select(&["vfio"]).unwrap();
    assert_eq!(sel.load_order(), ["kernel/drivers/vfio/vfio.ko", "kernel/drivers/vfio/vfio_iommu_type1.ko"]);
    check_orders(&sel);

    // A made-up index: `a` wants `b` first (softdep) but `b` needs `a` (depends): the hard
    // dependency wins. `c` wants `d` loaded after it, `d` has no hard tie to `c`.
    let obj = |fields: &[&str]| FileData::from(compile(fields));
    let files = vec![
        ("kernel/a.ko".to_owned(), obj(&["depends=", "softdep=pre: b"])),
        ("kernel/b.ko".to_owned(), obj(&["depends=a"])),
        ("kernel/c.ko".to_owned(), obj(&["depends=", "softdep=post: d"])),
        ("kernel/d.ko".to_owned(), obj(&["depends="])),
        ("kernel/e.ko".to_owned(), obj(&["depends=", "softdep=pre: d"])),
    ];
    let order = "kernel/d.ko\nkernel/e.ko\nkernel/b.ko\nkernel/a.ko\nkernel/c.ko\n";
    let idx = ModuleIndex::new("x", files, order, "", b"").unwrap();
    let sel = idx.select(&["a", "c", "e"]).unwrap();
    // d waits for c (`post:`), e for d (`pre:`); b needs a, so a's `pre: b` is dropped.
    assert_eq!(sel.load_order(), ["kernel/c.ko", "kernel/d.ko", "kernel/e.ko", "kernel/a.ko", "kernel/b.ko"]);
    check_orders(&sel);
    let sel = idx.select(&["c"]).unwrap();
    assert_eq!(sel.load_order(), ["kernel/c.ko", "kernel/d.ko"]);
    check_orders(&sel);
}

#[test]
fn missing_dependencies_and_cycles_are_errors() {
    let obj = |fields: &[&str]| FileData::from(compile(fields));
    let files = vec![
        ("kernel/x.ko".to_owned(), obj(&["depends=ghost"])),
        ("kernel/p.ko".to_owned(), obj(&["depends=q"])),
        ("kernel/q.ko".to_owned(), obj(&["depends=r"])),
        ("kernel/r.ko".to_owned(), obj(&["depends=p"])),
        ("kernel/s.ko".to_owned(), obj(&["depends=p"])),
    ];
    let idx = ModuleIndex::new("x", files, "", "", b"").unwrap();
    let e = idx.select(&["x"]).unwrap_err().to_string();
    assert!(e.contains("module x depends on ghost"), "{e}");
    let e = idx.select(&["s"]).unwrap_err();
    match &e {
        KernelError::Cycle { cycle, .. } => {
            assert_eq!(cycle.first(), cycle.last());
            let members: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
            assert_eq!(members, BTreeSet::from(["p", "q", "r"]), "{e}");
        }
        other => panic!("expected a cycle, got {other}"),
    }
    // Two files of the same module name (after `-`/`_` folding).
    let files =
        vec![("kernel/a-b.ko".to_owned(), obj(&["depends="])), ("kernel/x/a_b.ko".to_owned(), obj(&["depends="]))];
    let e = ModuleIndex::new("x", files, "", "", b"").unwrap_err().to_string();
    assert!(e.contains("a_b") && e.contains("kernel/a-b.ko") && e.contains("kernel/x/a_b.ko"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The root and the initramfs

#[test]
fn prune_root_keeps_only_the_closure() {
    let mut tree = package_tree();
    let k = KernelPackage::find(&tree).unwrap();
    let sel = k.select(&["ext4", "fs/overlayfs/*", "fuse"]).unwrap();
    let report = prune_root(&mut tree, &k, &sel, EPOCH).unwrap();
    assert_eq!((report.kept, report.removed), (7, PACKAGE.len() - 7));

    let paths: Vec<String> = tree
        .walk()
        .into_iter()
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .filter(|p| p.starts_with("usr/lib/modules"))
        .collect();
    let expected: BTreeSet<String> = [
        "",
        "/kernel",
        "/kernel/arch",
        "/kernel/arch/x86",
        "/kernel/arch/x86/crypto",
        "/kernel/arch/x86/crypto/crc32c-intel.ko",
        "/kernel/crypto",
        "/kernel/crypto/crc32c_generic.ko",
        "/kernel/fs",
        "/kernel/fs/mbcache.ko",
        "/kernel/fs/jbd2",
        "/kernel/fs/jbd2/jbd2.ko",
        "/kernel/fs/ext4",
        "/kernel/fs/ext4/ext4.ko",
        "/kernel/fs/overlayfs",
        "/kernel/fs/overlayfs/overlay.ko",
        "/kernel/fs/fuse",
        "/kernel/fs/fuse/fuse.ko",
        "/modules.alias",
        "/modules.alias.bin",
        "/modules.builtin",
        "/modules.builtin.alias.bin",
        "/modules.builtin.bin",
        "/modules.builtin.modinfo",
        "/modules.dep",
        "/modules.dep.bin",
        "/modules.devname",
        "/modules.order",
        "/modules.softdep",
        "/modules.symbols",
        "/modules.symbols.bin",
    ]
    .iter()
    .map(|p| format!("{}{p}", &MODDIR[1..]))
    .chain(["usr/lib/modules".to_owned()])
    .collect();
    assert_eq!(paths.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(paths.len(), expected.len());

    let read = |name: &str| {
        let id = tree.lookup(format!("{MODDIR}/{name}")).unwrap();
        let node = tree.node(id);
        // Regenerated files carry the build's time; shipped ones keep theirs.
        let mtime = if name == "modules.builtin" { 0 } else { EPOCH };
        assert_eq!((node.meta.mode, node.meta.uid, node.meta.mtime), (0o644, 0, mtime), "{name}");
        match &node.kind {
            NodeKind::File(d) => String::from_utf8(d.read_all().unwrap()).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(
        read("modules.dep"),
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n\
         kernel/fs/mbcache.ko:\n\
         kernel/crypto/crc32c_generic.ko:\n\
         kernel/fs/jbd2/jbd2.ko:\n\
         kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
         kernel/fs/overlayfs/overlay.ko:\n\
         kernel/fs/fuse/fuse.ko:\n"
    );
    assert_eq!(
        read("modules.order"),
        "kernel/arch/x86/crypto/crc32c-intel.ko\nkernel/fs/mbcache.ko\nkernel/fs/jbd2/jbd2.ko\n\
         kernel/fs/ext4/ext4.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/fs/fuse/fuse.ko\n\
         kernel/crypto/crc32c_generic.ko\n"
    );
    assert_eq!(read("modules.devname"), "# Device nodes to trigger on-demand module loading.\nfuse fuse c10:229\n");
    assert!(read("modules.alias").ends_with("alias fs-overlay overlay\nalias fs-fuse fuse\nalias devname:fuse fuse\nalias char-major-10-229 fuse\nalias crc32c crc32c_generic\nalias crypto-crc32c crc32c_generic\n"));
    assert_eq!(read("modules.builtin"), MODULES_BUILTIN);
    // Kept modules are the package's bytes; the rest of the tree is untouched.
    let ext4 = tree.lookup(format!("{MODDIR}/kernel/fs/ext4/ext4.ko")).unwrap();
    assert!(
        matches!(&tree.node(ext4).kind, NodeKind::File(d) if d.read_all().unwrap() == objects()["kernel/fs/ext4/ext4.ko"])
    );
    assert!(tree.lookup(format!("boot/vmlinuz-{KVER}")).is_some());
    let tool = tree.lookup("usr/bin/tool").unwrap();
    assert_eq!(tree.lookup("usr/bin/tool2"), Some(tool));
    assert_eq!(tree.name_counts()[tool], 2);
    // The removed nodes are gone from the arena, not only unreachable.
    let reachable: HashSet<usize> = tree.walk().into_iter().map(|(_, id)| id).collect();
    assert_eq!(tree.node_count(), reachable.len() + 1);
    // A selection whose files are not the package's (here: decompressed names) is refused.
    let mut t = package_tree();
    let xz = k.select(&["e1000e"]).unwrap().decompressed().unwrap();
    let e = prune_root(&mut t, &k, &xz, EPOCH).unwrap_err().to_string();
    assert!(e.contains("e1000e.ko is not a module file"), "{e}");
    // The pruned tree is a kernel package of its own, with exactly the selection.
    let again = KernelPackage::find(&tree).unwrap();
    assert_eq!(again.modules().modules().len(), 7);
    assert_eq!(again.select(&["**"]).unwrap().modules_dep(), sel.modules_dep());
}

#[test]
fn initramfs_tree_carries_init_and_the_storage_closure() {
    let k = kernel();
    let init = FileData::Memory(Arc::from(&b"\x7fELF static berth-init"[..]));
    let ir = initramfs_tree_for(&k, TEST_PLATFORMS, &["e1000e"], init, EPOCH).unwrap();
    assert_eq!(ir.unavailable(), ["nvme", "virtio_net"]);
    assert_eq!(ir.drivers.builtin, ["crc16"]);
    // The optional drivers the kernel lacks, the root-only ones included (the synthetic package
    // has no ACPI button driver either).
    assert_eq!(
        ir.drivers.absent_text(),
        "nvme (kvm), virtio_net (kvm), vboxguest (other), button (every platform), evdev (every platform)"
    );
    let t = &ir.tree;
    let walk: Vec<(String, &Node)> =
        t.walk().into_iter().map(|(p, id)| (String::from_utf8(p).unwrap(), t.node(id))).collect();
    let listing: Vec<&str> = walk.iter().map(|(p, _)| p.as_str()).collect();
    let m = |p: &str| format!("usr/lib/modules/{KVER}/{p}");
    let mut expected: Vec<String> =
        ["bin", "dev", "init", "lib", "proc", "run", "sys", "sysroot", "usr", "usr/bin", "usr/lib"]
            .map(str::to_owned)
            .to_vec();
    expected.push("usr/lib/modules".into());
    expected.push(m("").trim_end_matches('/').to_owned());
    for p in [
        "berth-modules.always",
        "kernel",
        "modules.alias",
        "modules.alias.bin",
        "modules.builtin",
        "modules.builtin.alias.bin",
        "modules.builtin.bin",
        "modules.dep",
        "modules.dep.bin",
        "modules.order",
        "modules.softdep",
        "modules.symbols.bin",
        "kernel/arch",
        "kernel/block",
        "kernel/crypto",
        "kernel/drivers",
        "kernel/fs",
        "kernel/lib",
        "kernel/arch/x86",
        "kernel/arch/x86/crypto",
        "kernel/arch/x86/crypto/crc32c-intel.ko",
        "kernel/block/t10-pi.ko",
        "kernel/crypto/crc32c_generic.ko",
        "kernel/drivers/block",
        "kernel/drivers/net",
        "kernel/drivers/scsi",
        "kernel/drivers/virtio",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/net/ethernet",
        "kernel/drivers/net/ethernet/intel",
        "kernel/drivers/net/ethernet/intel/e1000e",
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "kernel/drivers/scsi/scsi_common.ko",
        "kernel/drivers/scsi/scsi_mod.ko",
        "kernel/drivers/scsi/sd_mod.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/fs/ext4",
        "kernel/fs/jbd2",
        "kernel/fs/mbcache.ko",
        "kernel/fs/overlayfs",
        "kernel/fs/ext4/ext4.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/overlayfs/overlay.ko",
        "kernel/lib/crc-t10dif.ko",
    ] {
        expected.push(m(p));
    }
    assert_eq!(listing, expected);
    for (path, node) in &walk {
        assert_eq!((node.meta.uid, node.meta.gid, node.meta.mtime), (0, 0, EPOCH), "{path}");
        let want = match (&node.kind, path.as_str()) {
            (NodeKind::Dir(_), _) => 0o755,
            (NodeKind::Symlink(_), _) => 0o777,
            (NodeKind::File(_), "init") => 0o755,
            _ => 0o644,
        };
        assert_eq!(node.meta.mode, want, "{path}");
    }
    let node = |p: &str| t.node(t.lookup(p).unwrap_or_else(|| panic!("{p} missing")));
    assert_eq!(node("lib").kind, NodeKind::Symlink(b"usr/lib".to_vec()));
    assert_eq!(node("bin").kind, NodeKind::Symlink(b"usr/bin".to_vec()));
    let content = |p: &str| match &node(p).kind {
        NodeKind::File(d) => d.read_all().unwrap(),
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(content("init"), b"\x7fELF static berth-init");
    // The .ko.xz module is stored decompressed under a .ko name.
    assert_eq!(
        content(&m("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko")),
        objects()["kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz"]
    );
    let dep = String::from_utf8(content(&m("modules.dep"))).unwrap();
    assert_eq!(dep, ir.selection.modules_dep());
    assert!(!dep.contains(".xz"), "{dep}");
    assert_eq!(
        simulate_loader(&dep),
        [
            "kernel/arch/x86/crypto/crc32c-intel.ko",
            "kernel/fs/mbcache.ko",
            "kernel/crypto/crc32c_generic.ko",
            "kernel/fs/jbd2/jbd2.ko",
            "kernel/fs/ext4/ext4.ko",
            "kernel/fs/overlayfs/overlay.ko",
            "kernel/lib/crc-t10dif.ko",
            "kernel/block/t10-pi.ko",
            "kernel/drivers/scsi/scsi_common.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/scsi/sd_mod.ko",
            "kernel/drivers/virtio/virtio.ko",
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        ]
    );
    check_orders(&ir.selection);
    assert_eq!(content(&m("modules.builtin")), MODULES_BUILTIN.as_bytes());
    assert_eq!(String::from_utf8(content(&m("modules.alias"))).unwrap(), ir.selection.modules_alias());
    // Stage 1 loads these whatever the devices: ext4 and overlay (INITRAMFS_ALWAYS) and the
    // definition's extra module, with their closure in load order; the device drivers only by
    // modalias.
    assert_eq!(
        String::from_utf8(content(&m(ALWAYS_FILE))).unwrap(),
        "kernel/arch/x86/crypto/crc32c-intel.ko\nkernel/fs/mbcache.ko\nkernel/crypto/crc32c_generic.ko\n\
         kernel/fs/jbd2/jbd2.ko\nkernel/fs/ext4/ext4.ko\nkernel/fs/overlayfs/overlay.ko\n\
         kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko\n"
    );

    // The cpio writer takes the tree as it is; GNU cpio lists what it wrote.
    let archive =
        write_archive(t, &CpioOptions { mtime: Some(EPOCH as u32), compression: Compression::None }, Vec::new())
            .unwrap();
    let mut child = Command::new(tool("cpio", "cpio"))
        .args(["-it", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&archive).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let listed: BTreeSet<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    for p in &listing {
        assert!(listed.contains(*p), "cpio lacks {p}");
    }
    assert!(listed.contains("dev/console"));

    // Explicitly requested modules must exist.
    let init = FileData::from(b"x".to_vec());
    let e = initramfs_tree_for(&k, TEST_PLATFORMS, &["nosuch"], init, EPOCH).unwrap_err().to_string();
    assert!(e.contains("\"nosuch\""), "{e}");
}

/// The platform lists decide what the kernel must have: a root-disk or NIC driver it has
/// neither as a module nor built in fails the initramfs and the root, naming the driver, its
/// role and the platforms needing it; a built-in one is recognised (nothing to carry); an
/// optional one it lacks is reported and skipped.
#[test]
fn platform_driver_lists_are_checked_against_the_kernel() {
    let k = kernel();
    let init = || FileData::from(b"init".to_vec());
    let none: &[&str] = &[];
    let cloud = |platform, nic: &'static [&'static str]| PlatformDrivers {
        platform,
        disk: &["virtio_blk"],
        nic,
        initramfs: &[],
        root: &[],
    };
    let missing = [cloud("cloud", &["ena"]), cloud("cloud2", &["ena", "virtio-net"])];
    for e in [
        initramfs_tree_for(&k, &missing, none, init(), EPOCH).unwrap_err(),
        k.root_selection_for(&missing, none).unwrap_err(),
        check_drivers(k.modules(), &missing).unwrap_err(),
    ] {
        assert!(matches!(e, KernelError::MissingPlatformDriver { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains(&format!("kernel {KVER} has no ena, the NIC driver of cloud, cloud2:")), "{e}");
        assert!(e.contains("nor built in"), "{e}");
    }
    // Optional for one platform, required by another: required, and the error names the
    // platform that needs it.
    let mixed = [
        PlatformDrivers { platform: "a", disk: &["virtio_blk"], nic: &[], initramfs: &["mana"], root: &[] },
        PlatformDrivers { platform: "b", disk: &["mana"], nic: &[], initramfs: &[], root: &[] },
    ];
    let e = check_drivers(k.modules(), &mixed).unwrap_err().to_string();
    assert!(e.contains("has no mana, the root-disk driver of b:"), "{e}");
    let lists = DriverLists::of(&mixed);
    assert_eq!(lists.initramfs_required, ["virtio_blk", "mana"]);
    assert!(lists.initramfs_optional.is_empty());

    // Built in: recognised, not an error, nothing in the initramfs for it.
    let builtin = [PlatformDrivers { platform: "b", disk: &["crc16"], nic: &[], initramfs: &[], root: &[] }];
    let ir = initramfs_tree_for(&k, &builtin, none, init(), EPOCH).unwrap();
    assert_eq!(ir.drivers.builtin, ["crc16"]);
    assert!(ir.selection.builtin().contains(&"crc16".to_owned()));
    assert!(!ir.selection.contains("crc16"));

    // The root carries every list (the initramfs's too, for devices added later) and the
    // modules every boot needs; the optional names the kernel lacks are skipped.
    let root = k.root_selection_for(TEST_PLATFORMS, &["e1000e"]).unwrap();
    for m in ["virtio_blk", "sd_mod", "fuse", "e1000e", "ext4", "overlay"] {
        assert!(root.contains(m), "the root lacks {m}");
    }
    assert_eq!(root.unavailable(), ["nvme", "virtio_net", "vboxguest", "button", "evdev"]);
    let ir = initramfs_tree_for(&k, TEST_PLATFORMS, none, init(), EPOCH).unwrap();
    assert_eq!(check_drivers(k.modules(), TEST_PLATFORMS).unwrap(), ir.drivers);
}

/// Issue 18's drivers are on the lists of their platforms, with the roles that put them where
/// they are needed (root disk and NIC in the initramfs, and required).
#[test]
fn cloud_platforms_list_their_drivers() {
    let role = |platform: &str, name: &str| {
        let p = PLATFORM_DRIVERS.iter().find(|p| p.platform == platform).unwrap_or_else(|| panic!("no {platform}"));
        p.entries().find(|(n, _)| n.replace('-', "_") == name).map(|(_, r)| r)
    };
    use Role::{Disk, Initramfs, Nic, Root};
    for (platform, name, want) in [
        ("aws", "nvme", Disk),
        ("aws", "ena", Nic),
        ("aws", "xen_blkfront", Disk),
        ("aws", "xen_netfront", Nic),
        ("gce", "virtio_scsi", Disk),
        ("gce", "nvme", Disk),
        ("gce", "virtio_net", Nic),
        ("gce", "gve", Nic),
        ("azure", "hv_vmbus", Disk),
        ("azure", "hv_storvsc", Disk),
        ("azure", "nvme", Disk),
        ("azure", "hv_netvsc", Nic),
        ("azure", "pci_hyperv", Initramfs),
        ("azure", "mlx5_core", Initramfs),
        ("azure", "mana", Initramfs),
        ("azure", "mlx4_en", Root),
        ("azure", "hv_utils", Root),
        ("azure", "sr_mod", Root),
        ("azure", "udf", Root),
        ("azure", "isofs", Root),
        ("qemu", "virtio_blk", Disk),
        ("qemu", "virtio_scsi", Disk),
        ("qemu", "virtio_net", Nic),
        ("qemu", "qemu_fw_cfg", Initramfs),
        ("virtualbox", "virtio_scsi", Disk),
        ("virtualbox", "virtio_net", Nic),
    ] {
        assert_eq!(role(platform, name), Some(want), "{platform}: {name}");
    }
    assert!(Disk.required() && Nic.required() && !Initramfs.required() && !Root.required());
    for p in PLATFORM_DRIVERS {
        let names: Vec<&str> = p.entries().map(|(n, _)| n).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "{}: a name listed twice", p.platform);
        assert!(!p.disk.is_empty() && !p.nic.is_empty(), "{}: no disk or NIC driver", p.platform);
    }
}

/// Every image's command line gets `nvme_core.io_timeout` (AWS's EBS volumes) unless its
/// definition sets it, before any `--`.
#[test]
fn image_cmdline_adds_the_defaults_the_definition_lacks() {
    assert_eq!(image_cmdline("console=ttyS0"), "console=ttyS0 nvme_core.io_timeout=4294967295");
    assert_eq!(image_cmdline("  console=ttyS0   quiet "), "console=ttyS0 quiet nvme_core.io_timeout=4294967295");
    assert_eq!(image_cmdline(""), "nvme_core.io_timeout=4294967295");
    assert_eq!(image_cmdline("quiet nvme_core.io_timeout=30"), "quiet nvme_core.io_timeout=30");
    assert_eq!(image_cmdline("quiet nvme-core.io_timeout=30"), "quiet nvme-core.io_timeout=30");
    assert_eq!(image_cmdline("quiet -- single"), "quiet nvme_core.io_timeout=4294967295 -- single");
    // After `--` it is init's argument, not the kernel's parameter.
    assert_eq!(
        image_cmdline("quiet -- nvme_core.io_timeout=30"),
        "quiet nvme_core.io_timeout=4294967295 -- nvme_core.io_timeout=30"
    );
}

// ---------------------------------------------------------------------------------------------
// kmod's binary indexes, judged by depmod and modprobe

/// What depmod writes, in its order.
const DEPMOD_FILES: &[&str] = &[
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
];

/// Writes a tree into the host directory `dir`: directories, files (their content), symlinks.
fn materialize(tree: &Tree, dir: &Path) {
    for (raw, id) in tree.walk() {
        let path = dir.join(String::from_utf8(raw).unwrap());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match &tree.node(id).kind {
            NodeKind::Dir(_) => fs::create_dir_all(&path).unwrap(),
            NodeKind::File(d) => fs::write(&path, d.read_all().unwrap()).unwrap(),
            NodeKind::Symlink(t) => std::os::unix::fs::symlink(String::from_utf8(t.clone()).unwrap(), &path).unwrap(),
            other => panic!("{}: unexpected {other:?}", path.display()),
        }
    }
}

/// Where the first difference between two byte strings is, for a readable assertion.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("berth {} bytes, depmod {} bytes, first difference at byte {at}", a.len(), b.len())
}

/// Runs depmod on a copy of the root `ours` (module directory `<root>/lib/modules/<kver>`)
/// and compares each file depmod writes with Berth's: byte for byte, except `modules.dep`,
/// whose lines Berth writes in load order (the same lines in any order). Returns the copy,
/// for modprobe to compare with.
fn judge_root(ours: &Path, kver: &str) -> tempfile::TempDir {
    let theirs = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-a").arg(ours.join(".")).arg(theirs.path()).status().unwrap();
    assert!(status.success());
    let out = Command::new(tool("depmod", "kmod")).arg("-b").arg(theirs.path()).arg(kver).output().unwrap();
    assert!(out.status.success(), "depmod: {}", String::from_utf8_lossy(&out.stderr));
    let moddir = |root: &Path| root.join("lib/modules").join(kver);
    for name in DEPMOD_FILES {
        let a = fs::read(moddir(ours).join(name)).unwrap_or_else(|e| panic!("berth wrote no {name}: {e}"));
        let b = fs::read(moddir(theirs.path()).join(name)).unwrap();
        if *name == "modules.dep" {
            let lines =
                |t: &[u8]| String::from_utf8(t.to_vec()).unwrap().lines().map(str::to_owned).collect::<BTreeSet<_>>();
            assert_eq!(lines(&a), lines(&b), "modules.dep lines");
        } else {
            assert!(a == b, "{name}: {}", first_difference(&a, &b));
        }
    }
    theirs
}

/// `modprobe -d <root> -S <kver> ARGS` with no host configuration; its output with the root's
/// path replaced by `ROOT`, so that two roots' answers compare.
fn modprobe(root: &Path, kver: &str, args: &[&str]) -> String {
    let no_config = tempfile::tempdir().unwrap();
    let out = Command::new(tool("modprobe", "kmod"))
        .arg("-C")
        .arg(no_config.path())
        .arg("-d")
        .arg(root)
        .args(["-S", kver])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "modprobe {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().replace(&root.display().to_string(), "ROOT")
}

/// `modinfo -b <root> -k <kver> ARGS`, the root's path replaced as for [`modprobe`].
fn modinfo(root: &Path, kver: &str, args: &[&str]) -> String {
    let out = Command::new(tool("modinfo", "kmod")).arg("-b").arg(root).args(["-k", kver]).args(args).output().unwrap();
    assert!(out.status.success(), "modinfo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().replace(&root.display().to_string(), "ROOT")
}

/// Asks modprobe and modinfo the same questions on both roots; the answers must agree.
/// Returns Berth's answers.
fn same_answers(ours: &Path, theirs: &Path, kver: &str, questions: &[&[&str]]) -> Vec<String> {
    let mut answers = Vec::new();
    for q in questions {
        let (a, b) = if q[0] == "modinfo" {
            (modinfo(ours, kver, &q[1..]), modinfo(theirs, kver, &q[1..]))
        } else {
            (modprobe(ours, kver, q), modprobe(theirs, kver, q))
        };
        assert_eq!(a, b, "modprobe/modinfo {q:?}");
        answers.push(a);
    }
    answers
}

#[test]
fn pruned_root_indexes_are_depmods() {
    let mut tree = package_tree();
    let k = KernelPackage::find(&tree).unwrap();
    let sel =
        k.select(&["ext4", "overlay", "fuse", "sd_mod", "virtio_blk", "vfio", "igb", "e1000e", "berth-extra"]).unwrap();
    prune_root(&mut tree, &k, &sel, EPOCH).unwrap();
    let ours = tempfile::tempdir().unwrap();
    materialize(&tree, ours.path());
    let theirs = judge_root(ours.path(), KVER);
    let answers = same_answers(
        ours.path(),
        theirs.path(),
        KVER,
        &[
            &["--show-depends", "ext4"],
            &["--show-depends", "sd_mod"],
            &["--show-depends", "fs-overlay"],
            &["--show-depends", "vfio"],
            &["-R", "fs-overlay"],
            &["-R", "crypto-crc32c"],
            &["-R", "pci:v00008086d000010D3sv00001234sd00005678bc02sc00i00"],
            &["-R", "symbol:berth_scsi_mod"],
            &["-R", "builtin-thing"],
            &["modinfo", "-F", "filename", "e1000e"],
            &["modinfo", "-F", "depends", "sd_mod"],
        ],
    );
    // Not only the same answers: the right ones.
    let m = |p: &str| format!("insmod ROOT/lib/modules/{KVER}/{p} \n");
    assert_eq!(
        answers[1],
        [
            "kernel/lib/crc-t10dif.ko",
            "kernel/block/t10-pi.ko",
            "kernel/drivers/scsi/scsi_common.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/scsi/sd_mod.ko"
        ]
        .map(m)
        .concat()
    );
    assert_eq!(answers[2], m("kernel/fs/overlayfs/overlay.ko"));
    assert_eq!(answers[4], "overlay\n");
    assert_eq!(answers[5], "crc32c_intel\ncrc32c_generic\n");
    assert_eq!(answers[6], "e1000e\n");
    assert_eq!(answers[7], "scsi_mod\n");
    assert_eq!(answers[8], "crc16\n");
    assert_eq!(answers[9], format!("ROOT/lib/modules/{KVER}/kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz\n"));

    // The symbols Berth read are those depmod read: one per module, as exported.
    let symbols = fs::read_to_string(ours.path().join(format!("lib/modules/{KVER}/modules.symbols"))).unwrap();
    assert_eq!(symbols.lines().count(), 1 + sel.modules().len(), "{symbols}");
    for m in sel.modules() {
        assert!(symbols.contains(&format!("alias symbol:berth_{0} {0}\n", m.name)), "{symbols}");
    }
}

/// Writes an initramfs tree to disk and runs depmod on a copy, with the package's
/// `modules.builtin.modinfo` (depmod's source of built-in aliases, which the initramfs does not
/// carry; Berth's index comes from the package's); the indexes must be depmod's, byte for
/// byte. Returns both directories.
fn judge_initramfs(tree: &Tree, kver: &str, builtin_modinfo: &[u8]) -> (tempfile::TempDir, tempfile::TempDir) {
    let ours = tempfile::tempdir().unwrap();
    materialize(tree, ours.path());
    let theirs = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-a").arg(ours.path().join(".")).arg(theirs.path()).status().unwrap();
    assert!(status.success());
    let moddir = |root: &Path| root.join("lib/modules").join(kver);
    fs::write(moddir(theirs.path()).join("modules.builtin.modinfo"), builtin_modinfo).unwrap();
    let out = Command::new(tool("depmod", "kmod")).arg("-b").arg(theirs.path()).arg(kver).output().unwrap();
    assert!(out.status.success(), "depmod: {}", String::from_utf8_lossy(&out.stderr));
    for name in [
        "modules.dep.bin",
        "modules.alias.bin",
        "modules.softdep",
        "modules.symbols.bin",
        "modules.builtin.bin",
        "modules.builtin.alias.bin",
    ] {
        let a = fs::read(moddir(ours.path()).join(name)).unwrap();
        let b = fs::read(moddir(theirs.path()).join(name)).unwrap();
        assert!(a == b, "initramfs {name}: {}", first_difference(&a, &b));
    }
    (ours, theirs)
}

#[test]
fn initramfs_indexes_are_depmods() {
    let k = kernel();
    let ir =
        initramfs_tree_for(&k, TEST_PLATFORMS, &["e1000e", "fuse"], FileData::from(b"init".to_vec()), EPOCH).unwrap();
    let (ours, theirs) = judge_initramfs(&ir.tree, KVER, BUILTIN_MODINFO);
    let answers = same_answers(
        ours.path(),
        theirs.path(),
        KVER,
        &[&["--show-depends", "ext4"], &["--show-depends", "e1000e"], &["-R", "devname:fuse"]],
    );
    assert_eq!(answers[2], "fuse\n");
}

/// depmod orders the modules missing from `modules.order` by its module hash table; Berth's
/// index must agree, as the priorities in the indexes are positions in that order.
#[test]
fn modules_outside_modules_order_follow_depmods_order() {
    let names = ["zeta", "alpha", "m-1", "m_2", "kvm", "loop", "tun", "veth", "xt_mark", "bridge", "a", "bb"];
    let dir = tempfile::tempdir().unwrap();
    let moddir = dir.path().join("lib/modules").join(KVER);
    let mut files = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let path = if i % 3 == 0 { format!("kernel/x/{n}.ko") } else { format!("extra/{n}.ko") };
        let obj = compile_with_symbols(
            &["depends="],
            &Symbols { crc: vec![format!("sym_{}", n.replace('-', "_"))], ..Default::default() },
        );
        fs::create_dir_all(moddir.join(&path).parent().unwrap()).unwrap();
        fs::write(moddir.join(&path), &obj).unwrap();
        files.push((path, FileData::from(obj)));
    }
    // Some modules in modules.order, in an order of their own.
    let order = "kernel/x/veth.ko\nkernel/x/zeta.ko\n";
    fs::write(moddir.join("modules.order"), order).unwrap();
    let idx = ModuleIndex::new(KVER, files, order, "", b"").unwrap();
    let out = Command::new(tool("depmod", "kmod")).arg("-b").arg(dir.path()).arg(KVER).output().unwrap();
    assert!(out.status.success(), "depmod: {}", String::from_utf8_lossy(&out.stderr));
    // depmod writes modules.dep's lines in its module order.
    let theirs: Vec<String> = fs::read_to_string(moddir.join("modules.dep"))
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches(':').to_owned())
        .collect();
    let ours: Vec<&str> = idx.modules().iter().map(|m| m.path.as_str()).collect();
    assert_eq!(ours, theirs);
    let sel = idx.select(&["*"]).unwrap();
    for (name, ours) in [
        ("modules.dep.bin", sel.modules_dep_bin().unwrap()),
        ("modules.alias.bin", sel.modules_alias_bin().unwrap()),
        ("modules.symbols.bin", sel.modules_symbols_bin().unwrap()),
        ("modules.symbols", sel.modules_symbols().into_bytes()),
    ] {
        let theirs = fs::read(moddir.join(name)).unwrap();
        assert!(ours == theirs, "{name}: {}", first_difference(&ours, &theirs));
    }
}

// ---------------------------------------------------------------------------------------------
// A real Debian kernel package, judged by depmod

fn kernel_debs() -> Vec<PathBuf> {
    let mut debs: Vec<PathBuf> = Vec::new();
    if let Some(list) = std::env::var_os("BERTH_TEST_KERNEL_DEBS") {
        debs.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Ok(dir) = fs::read_dir("/var/cache/apt/archives") {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                // The real packages (linux-image-6.1.0-NN-...), not the metapackages.
                name.starts_with("linux-image-")
                    && name.ends_with(".deb")
                    && name["linux-image-".len()..].starts_with(|c: char| c.is_ascii_digit())
                    && !name.contains("-dbg")
            })
            .collect();
        found.sort();
        debs.extend(found);
    }
    // `berth build`'s default cache keeps packages under their digests: ask dpkg-deb which.
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("berth/debs"));
    if let (Some(dpkg_deb), Some(Ok(dir))) = (find_tool("dpkg-deb"), cache.map(fs::read_dir)) {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .filter(|p| {
                let out = Command::new(&dpkg_deb).arg("-f").arg(p).arg("Package").output();
                out.is_ok_and(|o| {
                    let name = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                    name.strip_prefix("linux-image-").is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                        && !name.ends_with("-dbg")
                })
            })
            .collect();
        found.sort();
        debs.extend(found);
    }
    debs
}

/// Parses a modules.dep text into module -> dependency list.
fn parse_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .map(|l| {
            let (m, d) = l.split_once(':').unwrap();
            (m.to_owned(), d.split_whitespace().map(str::to_owned).collect())
        })
        .collect()
}

/// Runs depmod on a copy of `selection`'s files (and the package's order and builtin files)
/// and returns the files it writes.
fn depmod_judge(src_moddir: &Path, sel: &Selection) -> BTreeMap<&'static str, Vec<u8>> {
    let depmod = tool("depmod", "kmod");
    let base = tempfile::tempdir().unwrap();
    let moddir = base.path().join("lib/modules").join(sel.version());
    for m in sel.modules() {
        let to = moddir.join(&m.path);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        // Hard links: the judge needs the files, not copies of 390 MB.
        fs::hard_link(src_moddir.join(&m.path), &to)
            .or_else(|_| fs::copy(src_moddir.join(&m.path), &to).map(|_| ()))
            .unwrap();
    }
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if src_moddir.join(f).exists() {
            fs::copy(src_moddir.join(f), moddir.join(f)).unwrap();
        }
    }
    let out = Command::new(depmod).arg("-b").arg(base.path()).arg(sel.version()).output().unwrap();
    assert!(out.status.success(), "depmod: {}", String::from_utf8_lossy(&out.stderr));
    DEPMOD_FILES.iter().map(|f| (*f, fs::read(moddir.join(f)).unwrap())).collect()
}

/// What [`judge`] found.
struct Judged {
    /// `modules.dep` lines, and those whose dependency list is in depmod's exact order.
    lines: usize,
    exact: usize,
    /// Time taken by Berth to write `modules.dep.bin`, `modules.alias.bin`, `modules.symbols`
    /// and `modules.symbols.bin`.
    indexes: std::time::Duration,
    /// Their sizes.
    index_bytes: usize,
}

/// Compares a selection's files with depmod's: the same `modules.dep` lines with the same
/// dependency lists (depmod writes its lines in modules.order order, Berth in load order);
/// every other file byte for byte.
fn judge(src_moddir: &Path, sel: &Selection) -> Judged {
    let theirs = depmod_judge(src_moddir, sel);
    let text = |f: &str| String::from_utf8(theirs[f].clone()).unwrap();
    let ours = parse_dep(&sel.modules_dep());
    let want = parse_dep(&text("modules.dep"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "modules.dep: different modules");
    let mut exact = 0;
    for (m, deps) in &ours {
        let a: BTreeSet<&String> = deps.iter().collect();
        let b: BTreeSet<&String> = want[m].iter().collect();
        assert_eq!(a, b, "modules.dep line of {m}: dependency sets differ");
        if deps == &want[m] {
            exact += 1;
        } else {
            eprintln!("  order differs for {m}:\n    berth:  {deps:?}\n    depmod: {:?}", want[m]);
        }
    }
    assert_eq!(sel.modules_alias(), text("modules.alias"), "modules.alias");
    assert_eq!(sel.modules_softdep(), text("modules.softdep"), "modules.softdep");
    assert_eq!(sel.modules_devname(), text("modules.devname"), "modules.devname");
    let start = std::time::Instant::now();
    let indexes = [
        ("modules.dep.bin", sel.modules_dep_bin().unwrap()),
        ("modules.alias.bin", sel.modules_alias_bin().unwrap()),
        ("modules.symbols", sel.modules_symbols().into_bytes()),
        ("modules.symbols.bin", sel.modules_symbols_bin().unwrap()),
    ];
    let elapsed = start.elapsed();
    for (name, ours) in &indexes {
        assert!(*ours == theirs[name], "{name}: {}", first_difference(ours, &theirs[name]));
    }
    check_orders(sel);
    Judged { lines: ours.len(), exact, indexes: elapsed, index_bytes: indexes.iter().map(|(_, b)| b.len()).sum() }
}

/// Unpacks a kernel package into `<tempdir>/root` with `dpkg-deb -x`, /usr merged as the
/// image's unpacker does it (bookworm's package ships /lib/modules), and loads it as a tree.
fn unpack_kernel(deb: &Path) -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = Command::new(tool("dpkg-deb", "dpkg")).arg("-x").arg(deb).arg(&root).output().unwrap();
    assert!(out.status.success(), "dpkg-deb -x {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    if root.join("lib").is_dir() && !root.join("lib").is_symlink() {
        fs::create_dir_all(root.join("usr")).unwrap();
        if root.join("usr/lib").exists() {
            let status =
                Command::new("cp").arg("-a").arg(root.join("lib/.")).arg(root.join("usr/lib")).status().unwrap();
            assert!(status.success());
            fs::remove_dir_all(root.join("lib")).unwrap();
        } else {
            fs::rename(root.join("lib"), root.join("usr/lib")).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    }
    let tree = Tree::from_dir(&root, &LoadOptions { all_root: true, mtime: Some(0) }).unwrap();
    (dir, tree)
}

/// "no package" note shared by the real-kernel tests.
const NO_KERNEL_DEB: &str = "note: no linux-image-<version>-*.deb in /var/cache/apt/archives or berth's cache, and \
                             BERTH_TEST_KERNEL_DEBS unset; the real-kernel check is skipped";

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[test]
fn real_debian_kernel_matches_depmod() {
    let debs = kernel_debs();
    if debs.is_empty() {
        eprintln!("{NO_KERNEL_DEB}");
        return;
    }
    for deb in debs {
        let (dir, tree) = unpack_kernel(&deb);
        let root = dir.path().join("root");
        let start = std::time::Instant::now();
        let k = KernelPackage::find(&tree).unwrap();
        let indexed = start.elapsed();
        let host_moddir = root.join(k.modules_dir().strip_prefix("/").unwrap());
        let start = std::time::Instant::now();
        let all = k.select(&["**"]).unwrap();
        let selected = start.elapsed();
        let builtin = fs::read_to_string(host_moddir.join("modules.builtin")).unwrap_or_default();
        eprintln!(
            "{}: kernel {}: {} modules, {} (indexed in {:.2?}; all selected, symbols read, in {selected:.2?}), {} built in",
            deb.file_name().unwrap().to_string_lossy(),
            k.version(),
            all.modules().len(),
            mib(all.bytes()),
            indexed,
            builtin.lines().count(),
        );
        assert_eq!(all.modules().len(), k.modules().modules().len());

        // The whole package, judged by depmod on the package as shipped.
        let j = judge(&host_moddir, &all);
        eprintln!(
            "  whole package: modules.dep lines as depmod's: all {} same sets, {} in identical order; \
             the indexes and modules.symbols ({}) are depmod's bytes, written in {:.2?}",
            j.lines,
            j.exact,
            mib(j.index_bytes as u64),
            j.indexes
        );
        assert_eq!(j.exact, j.lines);

        // The initramfs storage set.
        let ir = initramfs_tree(&k, &[] as &[&str], FileData::from(b"init".to_vec()), 0).unwrap();
        // The initramfs's names, all as optional: the selection's own view of what it carries.
        let lists = DriverLists::of(PLATFORM_DRIVERS);
        let initramfs_names: Vec<&str> = (lists.initramfs_required.iter().chain(&lists.initramfs_optional))
            .map(String::as_str)
            .chain(INITRAMFS_ALWAYS.iter().copied())
            .collect();
        let storage = k.modules().select_with_optional(&[] as &[&str], &initramfs_names).unwrap();
        let j = judge(&host_moddir, &storage);
        eprintln!(
            "  initramfs storage closure: {} modules, {} ({} unavailable: {:?}); depmod agrees on {} lines, {} in identical order",
            ir.selection.modules().len(),
            mib(ir.selection.bytes()),
            ir.unavailable().len(),
            ir.unavailable(),
            j.lines,
            j.exact,
        );
        assert_eq!(j.exact, j.lines);
        for required in ["virtio_blk", "virtio_scsi", "virtio_pci", "nvme", "sd_mod", "ext4"] {
            let builtin = k.modules().is_builtin(required);
            assert!(ir.selection.contains(required) || builtin, "the initramfs lacks {required}");
        }
        if ir.selection.contains("ext4") {
            // ext4 as a module brings a crc32c provider through its softdep.
            assert!(ir.selection.modules().iter().any(|m| m.name.starts_with("crc32c")), "no crc32c provider for ext4");
        }
        // Every platform's storage and network drivers (docs/design.md §8): Debian's kernels
        // have them all.
        for required in [
            "virtio_net",
            "hv_vmbus",
            "hv_storvsc",
            "hv_netvsc",
            "xen_blkfront",
            "xen_netfront",
            "ena",
            "gve",
            "mlx5_core",
            "mana",
        ] {
            let builtin = k.modules().is_builtin(required);
            assert!(ir.selection.contains(required) || builtin, "the initramfs lacks {required}");
        }
        let always = ir.tree.lookup(format!("usr/lib/modules/{}/{ALWAYS_FILE}", k.version())).unwrap();
        let NodeKind::File(always) = &ir.tree.node(always).kind else { panic!("{ALWAYS_FILE} is no file") };
        let always = String::from_utf8(always.read_all().unwrap()).unwrap();
        assert!(always.contains("overlay.ko\n"), "{always}");
        assert!(!always.contains("virtio"), "device drivers load by modalias: {always}");
        eprintln!("  stage 1 always loads: {:?}", always.lines().map(module_name).collect::<Vec<_>>());
        // The root's platform drivers beyond the initramfs's: the ones G's coldplug test uses,
        // and the power button's.
        let root = k.root_selection(&["softdog"]).unwrap();
        for required in ["button", "evdev", "virtio_rng", "virtio_balloon", "pvpanic_pci", "virtio_blk", "hv_netvsc"] {
            assert!(root.contains(required), "the root lacks {required}");
        }
        eprintln!(
            "  root platform drivers (+ softdog): {} modules, {} (not in this kernel: {:?}; of {} root-only names)",
            root.modules().len(),
            mib(root.bytes()),
            root.unavailable(),
            lists.root_optional.len()
        );
        eprintln!("  storage modules built into this kernel: {:?}", ir.selection.builtin());
        eprintln!(
            "  initramfs load order: {:?}",
            ir.selection.load_order().iter().map(|p| module_name(p)).collect::<Vec<_>>()
        );
        let builtin_modinfo = fs::read(host_moddir.join("modules.builtin.modinfo")).unwrap_or_default();
        let (ours, theirs) = judge_initramfs(&ir.tree, k.version(), &builtin_modinfo);
        let answers = same_answers(
            ours.path(),
            theirs.path(),
            k.version(),
            &[&["--show-depends", "overlay"], &["--show-depends", "virtio_blk"], &["-R", "fs-overlay"]],
        );
        assert_eq!(answers[2], "overlay\n");
        eprintln!("  initramfs indexes: depmod's bytes; modprobe agrees");
        let cpio =
            write_archive(&ir.tree, &CpioOptions { mtime: Some(0), compression: Compression::default() }, Vec::new())
                .unwrap();
        eprintln!("  initramfs: {} compressed (zstd level default)", mib(cpio.len() as u64));

        // The proposed container-host list.
        let start = std::time::Instant::now();
        let host = k
            .modules()
            .select_with_optional(&["overlay"], CONTAINER_HOST_MODULES)
            .unwrap_or_else(|e| panic!("container-host list on {}: {e}", k.version()));
        let selected = start.elapsed();
        let j = judge(&host_moddir, &host);
        eprintln!(
            "  container-host list: {} modules, {} (unavailable: {:?}, unresolved softdeps: {:?}); depmod agrees on {} lines, \
             {} in identical order; selected with symbols read in {selected:.2?}, indexes ({}) written in {:.2?}",
            host.modules().len(),
            mib(host.bytes()),
            host.unavailable(),
            host.unresolved_softdeps(),
            j.lines,
            j.exact,
            mib(j.index_bytes as u64),
            j.indexes,
        );
        assert_eq!(j.exact, j.lines);
        let list: Vec<&str> = host.modules().iter().map(|m| m.name.as_str()).collect();
        eprintln!("  container-host closure: {}", list.join(" "));

        // The root with the container-host and storage modules: written to disk, judged by
        // depmod and asked the questions modprobe answers from the indexes.
        let mut pruned = tree.clone();
        let combined: Vec<&str> = CONTAINER_HOST_MODULES
            .iter()
            .copied()
            .filter(|n| !host.unavailable().iter().any(|u| u == n))
            .chain(initramfs_names.iter().copied().filter(|n| !ir.unavailable().iter().any(|u| u == n)))
            .collect();
        let sel = k.select(&combined).unwrap();
        let start = std::time::Instant::now();
        let report = prune_root(&mut pruned, &k, &sel, 0).unwrap();
        let pruned_in = start.elapsed();
        eprintln!(
            "  root with container-host + storage modules: {} kept ({}), {} removed ({}); pruned and depmod's files written in {pruned_in:.2?}",
            report.kept,
            mib(sel.bytes()),
            report.removed,
            mib(report.removed_bytes)
        );
        assert_eq!(KernelPackage::find(&pruned).unwrap().modules().modules().len(), report.kept);
        let ours = tempfile::tempdir().unwrap();
        materialize(&pruned, ours.path());
        let theirs = judge_root(ours.path(), k.version());
        let answers = same_answers(
            ours.path(),
            theirs.path(),
            k.version(),
            &[
                &["--show-depends", "overlay"],
                &["-R", "fs-overlay"],
                &["--show-depends", "br_netfilter"],
                &["--show-depends", "nft_chain_nat"],
                &["--show-depends", "xt_MASQUERADE"],
                &["-R", "nft-expr-ct"],
                &["-R", "symbol:nf_conntrack_in"],
                &["-R", "crypto-crc32c"],
                &["-R", "ext4"],
                &["modinfo", "-F", "filename", "bridge"],
                &["modinfo", "-F", "depends", "br_netfilter"],
            ],
        );
        assert_eq!(answers[0], format!("insmod ROOT/lib/modules/{}/kernel/fs/overlayfs/overlay.ko \n", k.version()));
        assert_eq!(answers[1], "overlay\n");
        assert_eq!(answers[5], "nft_ct\n");
        assert_eq!(answers[6], "nf_conntrack\n");
        eprintln!("  pruned root: every depmod file matches; modprobe and modinfo agree ({} questions)", answers.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Every platform's drivers, against a real Debian kernel package

/// Devices of each platform as the kernel announces them (`modalias`), and the driver that must
/// answer each: (platform, device, modalias, driver). PCI ids are the vendors' (ENA 1d0f:ec20,
/// EBS NVMe 1d0f:8061, gVNIC 1ae0:0042, MANA 1414:00ba, ConnectX-3/4 Lx VFs 15b3:1004/1016);
/// virtio ids are the virtio spec's (1 net, 2 block, 3 console, 8 SCSI; transitional PCI
/// functions 1af4:1001 and 1af4:1004); VMBus devices are `vmbus:` and their class GUID's bytes
/// in memory order, as the VMBus driver prints them (storvsc ba6163d9-04a1-4d29-b605-…,
/// netvsc f8615163-df3e-46c5-913f-…, PCI pass-through 44c4f61d-4444-4400-9d52-…, shutdown
/// 0e0b6031-5213-4934-818b-…).
const DEVICES: &[(&str, &str, &str, &str)] = &[
    ("qemu", "virtio-blk PCI function", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", "virtio_pci"),
    ("qemu", "virtio-blk disk", "virtio:d00000002v00001AF4", "virtio_blk"),
    ("qemu", "PIIX3 IDE", "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80", "ata_piix"),
    ("qemu", "virtio-serial", "virtio:d00000003v00001AF4", "virtio_console"),
    ("qemu", "fw_cfg", "acpi:QEMU0002:", "qemu_fw_cfg"),
    ("qemu", "virtio-net", "virtio:d00000001v00001AF4", "virtio_net"),
    ("qemu", "virtio-rng", "virtio:d00000004v00001AF4", "virtio_rng"),
    ("virtualbox", "VirtioSCSI controller", "virtio:d00000008v00001AF4", "virtio_scsi"),
    ("virtualbox", "PIIX4 IDE", "pci:v00008086d00007111sv00000000sd00000000bc01sc01i8A", "ata_piix"),
    ("aws", "ENA", "pci:v00001D0Fd0000EC20sv00001D0Fsd0000EC20bc02sc00i00", "ena"),
    ("aws", "EBS volume (NVMe)", "pci:v00001D0Fd00008061sv00001D0Fsd00008061bc01sc08i02", "nvme"),
    ("aws", "Xen disk", "xen:vbd", "xen_blkfront"),
    ("aws", "Xen NIC", "xen:vif", "xen_netfront"),
    ("gce", "virtio-scsi PCI function", "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00", "virtio_pci"),
    ("gce", "virtio-scsi", "virtio:d00000008v00001AF4", "virtio_scsi"),
    ("gce", "persistent disk", "scsi:t-0x00", "sd_mod"),
    ("gce", "gVNIC", "pci:v00001AE0d00000042sv00001AE0sd00000058bc02sc00i00", "gve"),
    ("gce", "virtio-net", "virtio:d00000001v00001AF4", "virtio_net"),
    ("azure", "VMBus", "acpi:VMBUS:", "hv_vmbus"),
    ("azure", "synthetic SCSI", "vmbus:d96361baa104294db60572e2ffb1dc7f", "hv_storvsc"),
    ("azure", "synthetic NIC", "vmbus:635161f83edfc546913ff2d2f965ed0e", "hv_netvsc"),
    ("azure", "PCI pass-through", "vmbus:1df6c444444400449d52802e27ede19f", "pci_hyperv"),
    ("azure", "ConnectX-4 Lx VF", "pci:v000015B3d00001016sv000015B3sd00000190bc02sc00i00", "mlx5_core"),
    ("azure", "MANA VF", "pci:v00001414d000000BAsv00001414sd000000BAbc02sc00i00", "mana"),
    ("azure", "ConnectX-3 VF", "pci:v000015B3d00001004sv000015B3sd000061B0bc02sc00i00", "mlx4_core"),
    ("azure", "shutdown service", "vmbus:31600b0e13523449818b38d90ced39db", "hv_utils"),
    ("azure", "provisioning CD drive", "scsi:t-0x05", "sr_mod"),
];

/// Runs GNU cpio on an uncompressed archive with `args`, returning its output.
fn cpio(archive: &[u8], args: &[&str]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(tool("cpio", "cpio"))
        .args(args)
        .arg("--quiet")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = archive.to_vec();
    // Written from a thread: cpio writes while it reads.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "cpio {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Every platform's list (docs/design.md §8) against a real kernel package: each name is a
/// module of the package or built in (`modules.builtin`), a required one (root disk, NIC)
/// always; the initramfs archive the build writes carries each initramfs driver with its whole
/// `modules.dep` closure (depmod's, run on the whole package), with the same `modules.dep` line,
/// and its aliases answer the platform's devices; the root carries every driver with its
/// closure, and its aliases answer the devices found after boot.
#[test]
fn every_platforms_drivers_are_in_the_real_kernel_and_the_initramfs() {
    let debs = kernel_debs();
    if debs.is_empty() {
        eprintln!("{NO_KERNEL_DEB}");
        return;
    }
    for deb in debs {
        let (dir, tree) = unpack_kernel(&deb);
        let k = KernelPackage::find(&tree).unwrap();
        let kver = k.version().to_owned();
        let host_moddir = dir.path().join("root").join(k.modules_dir().strip_prefix("/").unwrap());
        eprintln!("{}: kernel {kver}", deb.file_name().unwrap().to_string_lossy());

        // The judges: depmod's modules.dep of the whole package, and modules.builtin as shipped.
        let all = k.select(&["**"]).unwrap();
        let depmod = parse_dep(&String::from_utf8(depmod_judge(&host_moddir, &all)["modules.dep"].clone()).unwrap());
        let module_path: BTreeMap<String, &String> = depmod.keys().map(|p| (module_name(p), p)).collect();
        let builtin: BTreeSet<String> = fs::read_to_string(host_moddir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
        let plain = |p: &str| p.trim_end_matches(".xz").trim_end_matches(".zst").to_owned();

        // The initramfs as the build makes it: the tree, the zstd cpio archive, read back.
        let ir = initramfs_tree(&k, &[] as &[&str], FileData::from(b"init".to_vec()), 0).unwrap();
        let archive =
            write_archive(&ir.tree, &CpioOptions { mtime: Some(0), ..Default::default() }, Vec::new()).unwrap();
        let unpacked = zstd::decode_all(archive.as_slice()).expect("the initramfs is one zstd stream");
        let listing: BTreeSet<String> =
            String::from_utf8(cpio(&unpacked, &["-it"])).unwrap().lines().map(str::to_owned).collect();
        let moddir = format!("usr/lib/modules/{kver}");
        let read =
            |f: &str| String::from_utf8(cpio(&unpacked, &["-i", "--to-stdout", &format!("{moddir}/{f}")])).unwrap();
        let (ir_dep_text, ir_alias) = (read("modules.dep"), read("modules.alias"));
        let ir_dep = parse_dep(&ir_dep_text);
        let ir_db = berth_devices::modules::ModuleDb::from_text(Path::new(&moddir), &ir_dep_text, &ir_alias);
        let ir_modules: BTreeSet<&str> = listing.iter().filter(|p| p.ends_with(".ko")).map(String::as_str).collect();
        assert_eq!(ir_modules.len(), ir_dep.len(), "module files and modules.dep lines of the archive");

        // The root's selection, as the build prunes the root to it.
        let root = k.root_selection(&[] as &[&str]).unwrap();
        let root_paths: BTreeSet<&str> = root.modules().iter().map(|m| m.path.as_str()).collect();
        let root_db =
            berth_devices::modules::ModuleDb::from_text(Path::new(&moddir), &root.modules_dep(), &root.modules_alias());

        let mut absent: Vec<String> = Vec::new();
        for p in PLATFORM_DRIVERS {
            let mut carried = BTreeSet::new();
            for (name, role) in p.entries() {
                let name = name.replace('-', "_");
                let Some(&path) = module_path.get(&name) else {
                    if builtin.contains(&name) {
                        assert!(ir.drivers.builtin.contains(&name), "{name} is built in; the report says otherwise");
                        assert!(!ir_modules.iter().any(|m| module_name(m) == name), "built-in {name} in the initramfs");
                        continue;
                    }
                    assert!(
                        !role.required(),
                        "{}: {role:?} driver {name} is neither a module of {kver} nor built in",
                        p.platform
                    );
                    assert!(
                        ir.drivers.absent.iter().any(|(n, ps)| *n == name && ps.contains(&p.platform)),
                        "absent {name} of {} not reported: {:?}",
                        p.platform,
                        ir.drivers.absent
                    );
                    absent.push(format!("{name} ({})", p.platform));
                    continue;
                };
                let closure: Vec<&String> = [path].into_iter().chain(&depmod[path]).collect();
                for q in &closure {
                    assert!(root_paths.contains(q.as_str()), "{}: the root lacks {q}, of {name}'s closure", p.platform);
                }
                if !role.in_initramfs() {
                    continue;
                }
                for q in &closure {
                    let want = format!("{moddir}/{}", plain(q));
                    assert!(listing.contains(&want), "{}: the initramfs lacks {want}, of {name}'s closure", p.platform);
                    carried.insert(plain(q));
                }
                let mut theirs: Vec<String> = depmod[path].iter().map(|q| plain(q)).collect();
                let mut ours =
                    ir_dep.get(&plain(path)).unwrap_or_else(|| panic!("no modules.dep line for {path}")).clone();
                theirs.sort();
                ours.sort();
                assert_eq!(ours, theirs, "{}: the initramfs's modules.dep line of {name}", p.platform);
            }
            eprintln!(
                "  {}: disk {:?}, NIC {:?}: the initramfs carries {} modules for it",
                p.platform,
                p.disk,
                p.nic,
                carried.len()
            );
        }

        // The platforms' devices find their drivers: in the initramfs those it carries, in the
        // root the others; a built-in driver needs nothing.
        let lists = DriverLists::of(PLATFORM_DRIVERS);
        for (platform, device, modalias, driver) in DEVICES {
            if builtin.contains(*driver) {
                eprintln!("  {platform} {device}: {driver} is built in");
                continue;
            }
            if !module_path.contains_key(*driver) {
                eprintln!("  {platform} {device}: {driver} is not in this kernel (optional)");
                continue;
            }
            let early = lists.initramfs_required.iter().chain(&lists.initramfs_optional).any(|n| n == driver);
            let db = if early { &ir_db } else { &root_db };
            let found = db.modules_for(modalias);
            assert!(
                found.contains(driver),
                "{platform} {device} ({modalias}): the {} offers {found:?}, not {driver}",
                if early { "initramfs" } else { "root" }
            );
            let load = db.closure(driver).unwrap();
            for q in &load {
                if early {
                    assert!(
                        listing.contains(&format!("{moddir}/{q}")),
                        "{q} to load for {driver} is not in the archive"
                    );
                } else {
                    assert!(root_paths.contains(q), "{q} to load for {driver} is not in the root");
                }
            }
        }
        // Issue 18's drivers, by name: present for their platforms (a module or built in).
        for (platform, name) in [
            ("aws", "ena"),
            ("aws", "nvme"),
            ("gce", "gve"),
            ("gce", "virtio_scsi"),
            ("azure", "hv_vmbus"),
            ("azure", "hv_storvsc"),
            ("azure", "hv_netvsc"),
        ] {
            let listed = PLATFORM_DRIVERS.iter().find(|p| p.platform == platform).unwrap();
            assert!(listed.entries().any(|(n, _)| n == name), "{platform} does not list {name}");
            assert!(module_path.contains_key(name) || builtin.contains(name), "{kver} has no {name}");
            assert!(
                builtin.contains(name)
                    || ir_modules.contains(format!("{moddir}/{}", plain(module_path[name])).as_str()),
                "the initramfs lacks {name}"
            );
        }
        let bytes = ir.selection.bytes();
        eprintln!(
            "  initramfs: {} modules, {} uncompressed ({} bytes), archive {} ({} bytes, zstd); built in: {:?}; \
             optional, not in this kernel: {absent:?}",
            ir_modules.len(),
            mib(bytes),
            bytes,
            mib(archive.len() as u64),
            archive.len(),
            ir.drivers.builtin,
        );
        eprintln!("  root: {} modules for the platforms, {}", root.modules().len(), mib(root.bytes()));
    }
}
