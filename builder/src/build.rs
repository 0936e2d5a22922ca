//! `berth build`: an image definition to a bootable disk (docs/design.md §2, §3, §6).
//!
//! Stages, each timed and reported: load the definition; get berth's own binaries (built from
//! the workspace or given prebuilt); open the Debian archive and resolve; fetch the `.deb`s;
//! unpack the root and perform the maintainer-script steps; select kernel modules and build the
//! initramfs; write the disk (GPT, ESP, ext4 root in slot A) and its manifest. Everything is
//! written beside its final name and renamed at the end, so a failed build leaves no image.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use berth_debian::deb::{DebFile, DebInfo, UnpackOptions, Unpacker, merged_usr_skeleton};
use berth_debian::{Archive, ArchiveConfig, FetchedDeb};
use berth_fstree::{FileData, LoadOptions, Metadata, Node, NodeKind, Tree};
use berth_slot::Slot;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cpio::{self, CpioOptions};
use crate::definition::{Definition, Loaded};
use crate::disk::{DiskLayout, DiskSize, write_gpt};
use crate::esp::{EspContents, EspOptions, write_esp};
use crate::export::{Artifact, ExportOptions};
use crate::kernel::{self, KernelPackage};
use crate::platform::Platform;
use crate::size::ByteSize;

/// Inputs of a build besides the definition.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub definition: PathBuf,
    /// Where `<name>.img` and `<name>.manifest.json` go.
    pub out_dir: PathBuf,
    /// Downloaded `.deb`s and verified indexes, by hash.
    pub cache_dir: PathBuf,
    /// Root whose `etc/apt` names the Debian sources (`/` on a build host).
    pub apt_root: PathBuf,
    /// Build from the cache alone.
    pub offline: bool,
    /// Directory with `berth-init`, `berth-update`, `berth-timesync`, `berth-netd`, `berth-devd`, `berth-metadata` and `BOOTX64.EFI`; else built from
    /// `workspace`.
    pub prebuilt: Option<PathBuf>,
    /// The Berth source tree to build binaries from.
    pub workspace: Option<PathBuf>,
    /// Every timestamp in the image (reproducible builds); else the newest in the packages.
    pub source_date_epoch: Option<i64>,
    /// Progress bars and per-stage lines on stderr.
    pub progress: bool,
    /// Platforms to export the disk for after the build (`export`); `<name>.img` (metal) is
    /// always written.
    pub platforms: Vec<Platform>,
}

impl BuildOptions {
    /// A build as a developer runs it from a checkout: the Berth binaries built from
    /// `workspace`, the host's apt sources, the user's cache, online, no progress output.
    pub fn for_workspace(
        workspace: &std::path::Path,
        definition: PathBuf,
        out_dir: PathBuf,
    ) -> anyhow::Result<BuildOptions> {
        Ok(BuildOptions {
            definition,
            out_dir,
            cache_dir: default_cache_dir()?,
            apt_root: PathBuf::from("/"),
            offline: false,
            prebuilt: None,
            workspace: Some(workspace.to_path_buf()),
            source_date_epoch: None,
            progress: false,
            platforms: vec![Platform::Metal],
        })
    }
}

/// The binaries Berth puts into every image.
struct Binaries {
    init: Vec<u8>,
    update: Vec<u8>,
    timesync: Vec<u8>,
    netd: Vec<u8>,
    devd: Vec<u8>,
    metadata: Vec<u8>,
    /// Only for a definition with `[debug] guest-agent = true`.
    agent: Option<Vec<u8>>,
    bootmgr: Vec<u8>,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kernel: String,
    pub cmdline: String,
    pub source_date_epoch: i64,
    pub packages: Vec<ManifestPackage>,
    /// Inodes in the root filesystem (hard links once).
    pub inodes: usize,
    pub content_bytes: u64,
    pub kernel_modules: usize,
    pub initramfs_modules: Vec<String>,
    pub skipped_maintainer_scripts: Vec<String>,
    pub partitions: Vec<ManifestPartition>,
}

#[derive(Debug, Serialize)]
pub struct ManifestPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct ManifestPartition {
    pub number: u32,
    pub label: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildReport {
    pub disk: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub downloaded: usize,
    pub stages: Vec<(String, f64)>,
    /// Every artifact: the disk (metal) first, then the exports `BuildOptions::platforms` asked for.
    pub artifacts: Vec<Artifact>,
}

/// Times the stages and prints one line per stage.
struct Stages {
    show: bool,
    done: Vec<(String, f64)>,
}

impl Stages {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<(T, String)>) -> anyhow::Result<T> {
        let start = Instant::now();
        if self.show {
            eprintln!("==> {name}");
        }
        let (v, detail) = f()?;
        let secs = start.elapsed().as_secs_f64();
        if self.show {
            eprintln!("    {detail} ({secs:.1} s)");
        }
        self.done.push((name.to_string(), secs));
        Ok(v)
    }
}

pub fn build(opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let mut st = Stages { show: opts.progress, done: Vec::new() };
    let loaded = st.run("reading the image definition", || {
        let l = Definition::load(&opts.definition)?;
        let d = format!("{} {}", l.definition.name, l.definition.version);
        Ok((l, d))
    })?;
    let def = &loaded.definition;

    let with_agent = def.debug.guest_agent;
    let what = if with_agent {
        "berth-init, berth-update, the guest agent and bootmgr"
    } else {
        "berth-init, berth-update and bootmgr"
    };
    let bins = st.run(&format!("getting {what}"), || {
        let b = binaries(opts, with_agent)?;
        let agent = b.agent.as_ref().map(|a| format!(" + {} (guest agent)", ByteSize(a.len() as u64)));
        let d = format!(
            "{} + {} + {}{}",
            ByteSize(b.init.len() as u64),
            ByteSize(b.update.len() as u64),
            ByteSize(b.bootmgr.len() as u64),
            agent.unwrap_or_default()
        );
        Ok((b, d))
    })?;

    let archive = st.run("opening the Debian archive", || {
        let cfg = ArchiveConfig {
            apt_root: opts.apt_root.clone(),
            cache_dir: opts.cache_dir.clone(),
            offline: opts.offline,
            arch: "amd64".into(),
            progress: opts.progress,
        };
        let a = Archive::open(&cfg)?;
        let s = a.stats();
        let d = format!("{} sources, {} packages", s.sources, s.packages);
        Ok((a, d))
    })?;

    let (root_pkgs, kernel_pkgs) = st.run("resolving packages", || {
        let wanted: Vec<&str> = def.packages.iter().map(String::as_str).collect();
        let root = if wanted.is_empty() { Vec::new() } else { archive.resolve(&wanted)? };
        // Only the kernel packages themselves: their own dependencies (initramfs-tools, kmod…)
        // serve a Debian boot, not Berth's.
        let kernel: Vec<_> = archive
            .resolve(&[def.kernel.package.as_str()])?
            .into_iter()
            .filter(|p| p.name.starts_with("linux-image-"))
            .collect();
        let d = format!("{} packages for the root, kernel {}", root.len(), names(&kernel));
        Ok(((root, kernel), d))
    })?;

    let (root_debs, kernel_debs) = st.run("fetching packages", || {
        let r = archive.fetch(&root_pkgs)?;
        let k = archive.fetch(&kernel_pkgs)?;
        let downloaded = r.iter().chain(&k).filter(|d| d.downloaded).count();
        let bytes: u64 = r.iter().chain(&k).map(|d| d.size).sum();
        let d = format!("{} .debs, {}, {downloaded} downloaded", r.len() + k.len(), ByteSize(bytes));
        Ok(((r, k), d))
    })?;
    let downloaded = root_debs.iter().chain(&kernel_debs).filter(|d| d.downloaded).count();

    let clamp = opts.source_date_epoch;
    let (mut root, infos) = st.run("unpacking the root", || {
        let (tree, infos) = unpack_all(&root_debs, clamp, "root")?;
        let d = format!("{} inodes, {}", tree.inode_count(), ByteSize(tree.content_bytes()));
        Ok(((tree, infos), d))
    })?;
    let skipped: Vec<String> = infos
        .iter()
        .flat_map(|i| i.scripts.iter().map(move |s| format!("{}: {}", i.package(), s.kind.file_name())))
        .collect();
    let (kernel_tree, _) = unpack_all(&kernel_debs, clamp, "kernel")?;
    // Every timestamp: SOURCE_DATE_EPOCH, else the newest mtime the packages carry.
    let epoch = clamp.unwrap_or_else(|| newest_mtime(&root).max(newest_mtime(&kernel_tree)));
    stamp_skeleton(&mut root, epoch);

    let (kpkg, initrd, initramfs_modules) = st.run("kernel, modules and initramfs", || {
        let k = KernelPackage::find(&kernel_tree)?;
        let init = FileData::Memory(bins.init.clone().into());
        let ir = kernel::initramfs_tree(&k, &def.kernel.initramfs_modules, init, epoch)?;
        let mods: Vec<String> = ir.selection.load_order().into_iter().map(str::to_string).collect();
        let opts = CpioOptions { mtime: Some(clamp_u32(epoch)), ..Default::default() };
        let initrd = cpio::write_archive(&ir.tree, &opts, Vec::new())?;
        // Optional platform drivers this kernel lacks (initramfs and root-only ones) are
        // skipped and said; a missing root-disk or NIC driver failed initramfs_tree.
        let absent = ir.drivers.absent_text();
        let d = format!(
            "kernel {}, initramfs {} with {} modules{}",
            k.version(),
            ByteSize(initrd.len() as u64),
            mods.len(),
            if absent.is_empty() {
                String::new()
            } else {
                format!("; warning: optional drivers not in this kernel: {absent}")
            }
        );
        Ok(((k, initrd, mods), d))
    })?;

    let kernel_modules = st.run("assembling the root", || {
        let n = assemble_root(&mut root, &loaded, &infos, &kernel_tree, &kpkg, &bins, epoch)?;
        let d =
            format!("{} inodes, {} of files, {n} kernel modules", root.inode_count(), ByteSize(root.content_bytes()));
        Ok((n, d))
    })?;

    let vmlinuz = kpkg.vmlinuz().read_all()?;
    let (disk, manifest_path, manifest) = st.run("writing the disk", || {
        let r = write_disk(opts, &loaded, &root, &bins, &vmlinuz, &initrd, epoch, |parts| Manifest {
            name: def.name.clone(),
            version: def.version.clone(),
            kernel: kpkg.version().to_string(),
            cmdline: kernel::image_cmdline(&def.kernel.cmdline),
            source_date_epoch: epoch,
            packages: root_debs.iter().chain(&kernel_debs).map(manifest_package).collect(),
            inodes: root.inode_count(),
            content_bytes: root.content_bytes(),
            kernel_modules,
            initramfs_modules: initramfs_modules.clone(),
            skipped_maintainer_scripts: skipped.clone(),
            partitions: parts,
        })?;
        let d = format!("{} ({})", r.0.display(), ByteSize(std::fs::metadata(&r.0).map(|m| m.len()).unwrap_or(0)));
        Ok((r, d))
    })?;
    // The disk is the metal artifact; the other platforms are exports of it (docs/platforms.md).
    let size = std::fs::metadata(&disk).with_context(|| format!("reading {}", disk.display()))?.len();
    let mut artifacts = vec![Artifact { platform: Platform::Metal, path: disk.clone(), bytes: size }];
    let others: Vec<Platform> = opts.platforms.iter().copied().filter(|p| *p != Platform::Metal).collect();
    if !others.is_empty() {
        let exported = st.run("exporting", || {
            let eo = ExportOptions {
                platforms: others.clone(),
                out_dir: opts.out_dir.clone(),
                provision: None,
                source_date_epoch: Some(epoch),
                progress: opts.progress,
            };
            let a = crate::export::export_as(&disk, &def.name, &eo)?;
            let d = a.iter().map(|a| a.platform.name()).collect::<Vec<_>>().join(", ");
            Ok((a, d))
        })?;
        artifacts.extend(exported);
    }
    Ok(BuildReport { disk, manifest_path, manifest, downloaded, stages: st.done, artifacts })
}

fn names(p: &[berth_debian::PackageRef]) -> String {
    p.iter().map(|p| format!("{} {}", p.name, p.version)).collect::<Vec<_>>().join(", ")
}

fn manifest_package(d: &FetchedDeb) -> ManifestPackage {
    ManifestPackage {
        name: d.name.clone(),
        version: d.version.clone(),
        architecture: d.architecture.clone(),
        sha256: d.sha256.clone(),
    }
}

fn clamp_u32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// The root directory and the merged-/usr links were made before the epoch was known.
fn stamp_skeleton(t: &mut Tree, epoch: i64) {
    for path in ["/", "bin", "sbin", "lib", "lib64"] {
        if let Some(id) = t.lookup(path) {
            t.node_mut(id).meta.mtime = epoch;
        }
    }
}

fn newest_mtime(t: &Tree) -> i64 {
    t.nodes().map(|(_, n)| n.meta.mtime).max().unwrap_or(0)
}

/// Unpacks `.deb`s in name order into a fresh merged-/usr tree; returns each package's control
/// information (its maintainer scripts did not run).
fn unpack_all(debs: &[FetchedDeb], clamp: Option<i64>, what: &str) -> anyhow::Result<(Tree, Vec<DebInfo>)> {
    let mtime = clamp.unwrap_or(0);
    let mut tree = Tree::new(Metadata::root(0o755, mtime));
    merged_usr_skeleton(&mut tree, mtime).with_context(|| format!("{what}: merged-/usr links"))?;
    let mut u = Unpacker::new(tree, UnpackOptions { mtime_clamp: clamp });
    let mut sorted: Vec<&FetchedDeb> = debs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut infos = Vec::new();
    for d in sorted {
        let deb = DebFile::open(&d.path)?;
        u.unpack(&deb)?;
        infos.push(deb.info().clone());
    }
    Ok((u.into_tree(), infos))
}

/// Everything the root needs beyond the unpacked packages, in the order that lets later steps
/// see earlier ones.
fn assemble_root(
    root: &mut Tree,
    loaded: &Loaded,
    debs: &[DebInfo],
    kernel_tree: &Tree,
    kpkg: &KernelPackage,
    bins: &Binaries,
    epoch: i64,
) -> anyhow::Result<usize> {
    let def = &loaded.definition;
    let dir = Metadata::root(0o755, epoch);
    let exe = Metadata::root(0o755, epoch);

    // Kernel modules: the selection and its closure, with a regenerated modules.dep.
    // The definition's modules and every platform's device drivers (kernel/mod.rs lists them).
    let selection = kpkg.root_selection(&def.kernel.modules)?;
    let moddir = format!("usr/lib/modules/{}", kpkg.version());
    copy_subtree(kernel_tree, root, kpkg.modules_dir(), Path::new(&moddir), epoch)?;
    // Same paths in both trees, so the kernel tree's index describes the copy.
    let report = kernel::prune_root(root, kpkg, &selection, epoch)?;

    // Mount points berth-init needs on the read-only root: API filesystems, tmpfs, STATE, overlay.
    for (path, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("etc", 0o755),
    ] {
        if root.lookup(path).is_none() {
            root.mkdir_all(path, &Metadata::root(mode, epoch))?;
        }
    }

    // berth's own binaries; /sbin/init is what the kernel starts after the initramfs.
    root.mkdir_all("usr/lib/berth", &dir)?;
    put_file(root, "usr/sbin/berth-init", &bins.init, &exe)?;
    put_file(root, "usr/bin/berth-update", &bins.update, &exe)?;
    put_file(root, "usr/bin/berth-timesync", &bins.timesync, &exe)?;
    put_file(root, "usr/bin/berth-netd", &bins.netd, &exe)?;
    put_file(root, "usr/bin/berth-devd", &bins.devd, &exe)?;
    put_file(root, "usr/bin/berth-metadata", &bins.metadata, &exe)?;
    // The agent's units, berth-netd's and (test images) the guest agent's, enabled below with the
    // image's own (the overlay may replace them).
    crate::agent_units::install(root, epoch)?;
    crate::service_units::install(root, epoch, def.debug.guest_agent)?;
    // Unauthenticated root access for whoever reaches its virtio-serial port: test images only.
    if let Some(agent) = bins.agent.as_ref().filter(|_| def.debug.guest_agent) {
        put_file(root, berth_guest_agent::INSTALL_PATH.trim_start_matches('/'), agent, &exe)?;
    }
    // berth-netd's DHCP client writes the resolver configuration under /run (the root is
    // read-only); an admin may still replace the link through the /etc overlay.
    if root.lookup("etc/resolv.conf").is_none() {
        root.mkdir_all("etc", &dir)?;
        root.insert(
            "etc/resolv.conf",
            Node::new(NodeKind::Symlink(b"../run/berth/resolv.conf".to_vec()), Metadata::root(0o777, epoch)),
        )?;
    }
    // berthctl is berth-init under another name.
    if root.lookup("usr/bin/berthctl").is_none() {
        root.insert(
            "usr/bin/berthctl",
            Node::new(NodeKind::Symlink(b"../sbin/berth-init".to_vec()), Metadata::root(0o777, epoch)),
        )?;
    }
    if root.lookup("usr/sbin/init").is_none() {
        root.insert(
            "usr/sbin/init",
            Node::new(NodeKind::Symlink(b"berth-init".to_vec()), Metadata::root(0o777, epoch)),
        )?;
    }

    // What maintainer scripts would have done (documented in debian/README.md).
    crate::system::configure(root, def, debs, epoch)?;

    if let Some(overlay) = &loaded.overlay {
        let o = Tree::from_dir(overlay, &LoadOptions { all_root: true, mtime: Some(epoch) })
            .with_context(|| format!("reading overlay {}", overlay.display()))?;
        copy_subtree(&o, root, Path::new("/"), Path::new("/"), epoch)
            .with_context(|| format!("applying overlay {}", overlay.display()))?;
    }

    // After the overlay, so that units it ships can be enabled too. The update agent's units
    // first: every image carries the agent.
    let mut enable = crate::agent_units::names();
    enable.extend(crate::service_units::names(def.debug.guest_agent));
    enable.extend(def.units.enable.iter().cloned());
    crate::enablement::enable(root, &enable, epoch)?;
    Ok(report.kept)
}

fn put_file(t: &mut Tree, path: &str, data: &[u8], meta: &Metadata) -> anyhow::Result<()> {
    if let Some(parent) = Path::new(path).parent() {
        t.mkdir_all(parent, &Metadata::root(0o755, meta.mtime))?;
    }
    if t.lookup(path).is_some() {
        t.unlink(path)?;
    }
    t.insert(path, Node::new(NodeKind::File(FileData::Memory(data.into())), meta.clone()))?;
    Ok(())
}

/// Copies the subtree at `from` of `src` to `to` in `dst`: directories merged, everything else
/// replacing what is there; hard links inside the subtree stay hard links.
fn copy_subtree(src: &Tree, dst: &mut Tree, from: &Path, to: &Path, epoch: i64) -> anyhow::Result<()> {
    let start = src.lookup(from).with_context(|| format!("{} is not in the tree", from.display()))?;
    dst.mkdir_all(to, &Metadata::root(0o755, epoch))?;
    let mut linked: std::collections::HashMap<usize, PathBuf> = std::collections::HashMap::new();
    let mut stack = vec![(start, to.to_path_buf())];
    while let Some((dir, at)) = stack.pop() {
        for (name, id) in src.entries(dir) {
            let path = at.join(std::ffi::OsStr::from_bytes(name));
            let node = src.node(id);
            if node.kind.is_dir() {
                let d = dst.mkdir_all(&path, &node.meta)?;
                dst.node_mut(d).meta = node.meta.clone();
                stack.push((id, path));
                continue;
            }
            if dst.lookup(&path).is_some() {
                dst.unlink(&path)?;
            }
            if let Some(first) = linked.get(&id) {
                dst.hard_link(first, &path)?;
            } else {
                dst.insert(&path, node.clone())?;
                linked.insert(id, path);
            }
        }
    }
    Ok(())
}

/// The package cache when none is named: `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`.
pub fn default_cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("berth"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set: pass --cache DIR")?;
    Ok(PathBuf::from(home).join(".cache/berth"))
}

/// berth's own binaries on disk: what `--prebuilt DIR` holds, under these names.
#[derive(Debug, Clone)]
pub struct OwnBinaries {
    pub init: PathBuf,
    pub update: PathBuf,
    pub timesync: PathBuf,
    pub netd: PathBuf,
    pub devd: PathBuf,
    pub metadata: PathBuf,
    pub agent: PathBuf,
    pub bootmgr: PathBuf,
}

/// The variables cargo sets for the one crate it builds, runs or tests, as opposed to its
/// configuration (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*`, …), which is the user's.
fn set_by_cargo_for_a_crate(name: &str) -> bool {
    ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"].iter().any(|p| name.starts_with(p))
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

impl OwnBinaries {
    /// The layout of a `--prebuilt` directory.
    pub fn in_dir(dir: &Path) -> OwnBinaries {
        OwnBinaries {
            init: dir.join("berth-init"),
            update: dir.join("berth-update"),
            timesync: dir.join("berth-timesync"),
            netd: dir.join("berth-netd"),
            devd: dir.join("berth-devd"),
            metadata: dir.join("berth-metadata"),
            agent: dir.join("berth-guest-agent"),
            bootmgr: dir.join("BOOTX64.EFI"),
        }
    }

    /// Builds berth-init, berth-update, berth-timesync, berth-netd, berth-devd, berth-metadata and berth-guest-agent (static, musl) and bootmgr (UEFI) with cargo in the
    /// Berth source tree `workspace`, and returns where cargo put them.
    pub fn build(workspace: &Path) -> anyhow::Result<OwnBinaries> {
        const MUSL: &str = "x86_64-unknown-linux-musl";
        const UEFI: &str = "x86_64-unknown-uefi";
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let mut command = Command::new(&cargo);
            command.current_dir(workspace).args(args);
            // Not what cargo set for the crate whose test or build script runs this: a build
            // script that is rerun when one changes (ring's reads CARGO_MANIFEST_DIR) would
            // otherwise see another value than a `cargo build` from a shell, and every binary
            // that links it would be rebuilt.
            for (name, _) in std::env::vars_os() {
                if name.to_str().is_some_and(set_by_cargo_for_a_crate) {
                    command.env_remove(&name);
                }
            }
            let status = command.status().with_context(|| format!("running cargo in {}", workspace.display()))?;
            if !status.success() {
                bail!(
                    "cargo {} failed in {} (a missing target is added with: rustup target add {MUSL} {UEFI})",
                    args.join(" "),
                    workspace.display()
                );
            }
            Ok(())
        };
        let packages =
            ["berth-init", "berth-update", "berth-timesync", "berth-net", "berth-devices", "berth-guest-agent"];
        let musl: Vec<&str> = packages.iter().flat_map(|p| ["-p", p]).collect();
        run(&[&["build", "-q", "--release", "--target", MUSL][..], &musl[..]].concat())?;
        // Apart: built with the others, its default feature (the HTTP clients of the metadata
        // providers) would be unified into the berth-metadata that berth-init links without it.
        run(&["build", "-q", "--release", "--target", MUSL, "-p", "berth-metadata"])?;
        run(&["build", "-q", "--release", "--target", UEFI, "-p", "berth-bootmgr"])?;
        // Where cargo put them: CARGO_TARGET_DIR when set (relative to the workspace), as cargo reads it.
        let t = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => workspace.join(dir),
            None => workspace.join("target"),
        };
        Ok(OwnBinaries {
            init: t.join(MUSL).join("release/berth-init"),
            update: t.join(MUSL).join("release/berth-update"),
            timesync: t.join(MUSL).join("release/berth-timesync"),
            netd: t.join(MUSL).join("release/berth-netd"),
            devd: t.join(MUSL).join("release/berth-devd"),
            metadata: t.join(MUSL).join("release/berth-metadata"),
            agent: t.join(MUSL).join("release/berth-guest-agent"),
            bootmgr: t.join(UEFI).join("release/berth-bootmgr.efi"),
        })
    }

    /// Copies the binaries into `dir` under the `--prebuilt` names.
    pub fn copy_to(&self, dir: &Path) -> anyhow::Result<OwnBinaries> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let to = OwnBinaries::in_dir(dir);
        let pairs = [
            (&self.init, &to.init),
            (&self.update, &to.update),
            (&self.timesync, &to.timesync),
            (&self.netd, &to.netd),
            (&self.devd, &to.devd),
            (&self.metadata, &to.metadata),
            (&self.agent, &to.agent),
            (&self.bootmgr, &to.bootmgr),
        ];
        for (from, dest) in pairs {
            std::fs::copy(from, dest).with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        }
        Ok(to)
    }
}

/// berth's binaries: prebuilt, or built with cargo from the workspace.
fn binaries(opts: &BuildOptions, with_agent: bool) -> anyhow::Result<Binaries> {
    let paths = match (&opts.prebuilt, &opts.workspace) {
        (Some(dir), _) => OwnBinaries::in_dir(dir),
        (None, Some(ws)) => OwnBinaries::build(ws)?,
        (None, None) => bail!(
            "no berth sources to build berth-init, berth-update, berth-timesync, berth-netd, berth-devd, berth-metadata, \
             berth-guest-agent and bootmgr from: pass --prebuilt DIR (holding berth-init, berth-update, berth-timesync, \
             berth-netd, berth-devd, berth-metadata, berth-guest-agent and \
             BOOTX64.EFI) or --workspace DIR"
        ),
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(Binaries {
        init: read(&paths.init)?,
        update: read(&paths.update)?,
        timesync: read(&paths.timesync)?,
        netd: read(&paths.netd)?,
        devd: read(&paths.devd)?,
        metadata: read(&paths.metadata)?,
        agent: if with_agent { Some(read(&paths.agent)?) } else { None },
        bootmgr: read(&paths.bootmgr)?,
    })
}

/// Writes the disk beside its final name, then the manifest; renames both at the end.
#[allow(clippy::too_many_arguments)]
fn write_disk(
    opts: &BuildOptions,
    loaded: &Loaded,
    root: &Tree,
    bins: &Binaries,
    vmlinuz: &[u8],
    initrd: &[u8],
    epoch: i64,
    manifest: impl FnOnce(Vec<ManifestPartition>) -> Manifest,
) -> anyhow::Result<(PathBuf, PathBuf, Manifest)> {
    let def = &loaded.definition;
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    // Identifiers follow from the definition's exact bytes.
    let seed: Vec<u8> = Sha256::new().chain_update(b"berth disk v1\0").chain_update(&loaded.source).finalize().to_vec();
    let layout = DiskLayout {
        esp_size: def.partitions.esp.0,
        root_size: def.partitions.root.0,
        size: DiskSize::State(def.partitions.state.0),
        seed: seed.clone(),
    };
    let plan = layout.plan()?;
    let final_path = opts.out_dir.join(format!("{}.img", def.name));
    // The temporary file stays open and owned by `tmp` until it is persisted: a failure anywhere
    // below removes it, and its name is never opened a second time (no race with a planted link).
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.img.", def.name))
        .tempfile_in(&opts.out_dir)
        .with_context(|| format!("creating a temporary file in {}", opts.out_dir.display()))?;
    let file = tmp.as_file();
    write_gpt(file, &plan).with_context(|| {
        format!("writing the partition table of {} ({} disk)", final_path.display(), ByteSize(plan.disk_size()))
    })?;
    crate::disk::write_state_marker(file, &plan).context("marking STATE as new")?;

    let mut esp = EspContents::new();
    esp.add_file("EFI/BOOT/BOOTX64.EFI", bins.bootmgr.clone())?;
    let a = Slot::A.esp_dir();
    esp.add_file(&format!("{a}/vmlinuz"), vmlinuz.to_vec())?;
    esp.add_file(&format!("{a}/initrd.img"), initrd.to_vec())?;
    // The definition's command line with the parameters every image gets (kernel/platforms.rs).
    esp.add_file(&format!("{a}/cmdline"), format!("{}\n", kernel::image_cmdline(&def.kernel.cmdline)).into_bytes())?;
    // The disk is the metal artifact; exports rewrite this word (docs/platforms.md).
    esp.add_file(crate::platform::PLATFORM_FILE, Platform::Metal.file_contents().into_bytes())?;
    // The update agent writes into berth/b/ in place; fatfs 0.3 would create the directory with
    // malformed dot entries there (see esp::fix_dot_entries), so it exists from the start.
    esp.add_dir(Slot::B.esp_dir())?;
    let p = plan.esp();
    write_esp(file, p.offset, p.size, &esp, &EspOptions::from_seed(&seed, berth_slot::layout::ESP_LABEL, epoch))?;

    let r = plan.root(Slot::A);
    let mut o = berth_ext4::Options::derived(Slot::A.label(), &seed, clamp_u32(epoch));
    o.size = Some(r.size);
    berth_ext4::write_at(root, file, r.offset, &o).context("writing the root filesystem into ROOT-A")?;
    file.sync_all().context("flushing the disk image")?;

    let ranges: Vec<(u64, u64)> = plan.partitions().iter().map(|p| (p.offset, p.size)).collect();
    let part_sums = hash_ranges(file, &ranges)?;
    let parts = plan
        .partitions()
        .iter()
        .zip(part_sums)
        .map(|(p, sha256)| ManifestPartition {
            number: p.number,
            label: p.label.to_string(),
            guid: p.guid.to_string().to_uppercase(),
            offset: p.offset,
            size: p.size,
            sha256,
        })
        .collect();
    let manifest = manifest(parts);
    let manifest_path = opts.out_dir.join(format!("{}.manifest.json", def.name));
    let json = serde_json::to_vec_pretty(&manifest)?;
    let mut mtmp = tempfile::Builder::new()
        .prefix(&format!(".{}.manifest.json.", def.name))
        .tempfile_in(&opts.out_dir)
        .with_context(|| format!("creating a temporary file in {}", opts.out_dir.display()))?;
    mtmp.write_all(&json).with_context(|| format!("writing {}", mtmp.path().display()))?;
    // tempfile creates 0600; outputs get what any other file the user creates gets.
    crate::umask::apply(mtmp.as_file()).context("setting the manifest's mode")?;
    crate::umask::apply(file).context("setting the image's mode")?;
    tmp.persist(&final_path).map_err(|e| e.error).with_context(|| format!("renaming into {}", final_path.display()))?;
    mtmp.persist(&manifest_path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    Ok((final_path, manifest_path, manifest))
}

/// SHA-256 of each byte range of the image, the ranges spread over two threads (the build
/// host's cores; hashing the 2 GiB of a disk is the longest step of a warm build).
fn hash_ranges(f: &std::fs::File, ranges: &[(u64, u64)]) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::FileExt;
    let one = |&(offset, len): &(u64, u64)| -> anyhow::Result<String> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], offset + at).context("reading the disk image back")?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    };
    // Largest first onto the less loaded thread keeps the two about even.
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ranges[i].1));
    let mut lanes: [(u64, Vec<usize>); 2] = [(0, Vec::new()), (0, Vec::new())];
    for i in order {
        let lane = if lanes[0].0 <= lanes[1].0 { 0 } else { 1 };
        lanes[lane].0 += ranges[i].1;
        lanes[lane].1.push(i);
    }
    let mut out = vec![String::new(); ranges.len()];
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = lanes
            .iter()
            .map(|(_, idx)| s.spawn(move || idx.iter().map(|&i| one(&ranges[i]).map(|h| (i, h))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            for r in h.join().map_err(|_| anyhow::anyhow!("a hashing thread panicked"))? {
                let (i, sum) = r?;
                out[i] = sum;
            }
        }
        Ok(())
    })?;
    Ok(out)
}
