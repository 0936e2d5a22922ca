//! Which drivers each platform's devices need, where they go (initramfs or root), and which
//! the kernel must have: the one home of the per-platform driver lists (docs/design.md §3, §8).
//!
//! Every image carries every platform's drivers (one root, one initramfs for all of them), so
//! the lists only decide *where* a driver goes and whether its absence is an error:
//! - a platform's root-disk and NIC drivers go into the initramfs, and the kernel package must
//!   have each, as a module or built in (`modules.builtin`): an image whose kernel lacks one
//!   cannot boot, or cannot reach its metadata service, on that platform, so the build fails
//!   naming the driver and the platforms ([`check_drivers`]);
//! - its other early drivers (hardware a platform may have, or devices stage 2 reads before
//!   `berth-devd` runs) go into the initramfs where the kernel has them;
//! - the rest go into the root only, where the kernel has them, and `berth-devd` loads them by
//!   `modalias`.
//!
//! An optional name the kernel lacks is reported ([`DriverReport::absent`]), never silently
//! dropped; a name the kernel builds in is reported too ([`DriverReport::builtin`]): there is
//! nothing to load, and nothing to put in the initramfs.
//!
//! Each module also stays in the root, so a device that appears after boot (a hot-added disk or
//! NIC) finds its driver there.

use std::collections::BTreeMap;

use crate::platform::Platform;

use super::{KernelError, ModuleIndex, normalize};

/// One platform's drivers, by module name (`_` or `-`, as the kernel spells them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformDrivers {
    /// The platform as docs/design.md §8 names it. The Vagrant boxes run on `qemu` (libvirt)
    /// and `virtualbox` hardware; `metal` has no list of its own (its drivers depend on the
    /// machine; those of the other platforms and the definition's modules are what it gets).
    pub platform: &'static str,
    /// Root-disk controller drivers and their disk layer: initramfs, required.
    pub disk: &'static [&'static str],
    /// NIC drivers: initramfs, required (networking and the metadata service come up before
    /// `berth-devd` could load anything from the root).
    pub nic: &'static [&'static str],
    /// More initramfs drivers, where the kernel has them.
    pub initramfs: &'static [&'static str],
    /// Root-only drivers, where the kernel has them; `berth-devd` loads them by `modalias`.
    pub root: &'static [&'static str],
}

/// Every platform's drivers. Debian's `linux-image-cloud-amd64` (6.1) has all the required
/// ones; it builds `nvme` in (and `ext4`), and lacks `ahci` and `vboxguest` (VirtualBox's SATA
/// controller and guest device: use `linux-image-amd64` there, or the VirtioSCSI controller
/// Berth's OVA declares). On `6.1.0-57-cloud-amd64` the initramfs's closure is 31 modules,
/// 6.6 MiB (1.4 MiB in the zstd archive; `mlx5_core` alone is 2.4 MiB), of which stage 1 loads
/// only those the devices present ask for; the root's share for the platforms is 57 modules,
/// 9.3 MiB.
pub const PLATFORM_DRIVERS: &[PlatformDrivers] = &[
    PlatformDrivers {
        platform: Platform::Qemu.name(),
        // virtio-blk and virtio-scsi on virtio-pci; QEMU's NVMe device.
        disk: &["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "nvme"],
        nic: &["virtio_net"],
        // q35's SATA and i440fx's PIIX IDE; virtio-serial (the guest agent's channel, consoles);
        // fw_cfg in sysfs, where stage 2 reads the provisioning document before berth-devd runs.
        initramfs: &["ahci", "ata_piix", "virtio_console", "qemu_fw_cfg"],
        root: &[
            "virtio_rng",
            "virtio_balloon",
            "virtio_input",
            "virtio_mem",
            "pvpanic_pci",
            "pvpanic_mmio",
            "ptp_kvm",
            "vmw_vsock_virtio_transport",
        ],
    },
    PlatformDrivers {
        platform: Platform::Virtualbox.name(),
        // The OVA's VirtioSCSI controller.
        disk: &["virtio_pci", "virtio_scsi", "sd_mod"],
        nic: &["virtio_net"],
        // A VM whose disk is on the SATA (AHCI) or IDE controller instead.
        initramfs: &["ahci", "ata_piix"],
        // Guest properties.
        root: &["vboxguest"],
    },
    PlatformDrivers {
        platform: Platform::Aws.name(),
        // Nitro: EBS volumes are NVMe. Xen instances: blkfront and netfront.
        disk: &["nvme", "xen_blkfront"],
        nic: &["ena", "xen_netfront"],
        initramfs: &[],
        root: &[],
    },
    PlatformDrivers {
        platform: Platform::Gce.name(),
        // Persistent disks on virtio-scsi, NVMe on the newer machine series.
        disk: &["virtio_pci", "virtio_scsi", "sd_mod", "nvme"],
        // virtio-net, or gVNIC.
        nic: &["virtio_net", "gve"],
        initramfs: &[],
        root: &[],
    },
    PlatformDrivers {
        platform: Platform::Azure.name(),
        // The VMBus, its synthetic SCSI controller; NVMe on the newest sizes.
        disk: &["hv_vmbus", "hv_storvsc", "sd_mod", "nvme"],
        nic: &["hv_netvsc"],
        // Accelerated networking: the VF appears on a Hyper-V PCI bus, driven by mlx5 or MANA.
        initramfs: &["pci_hyperv", "mlx5_core", "mana"],
        root: &[
            // Integration services (KVP, shutdown, time sync), balloon, keyboard, mouse, vsock.
            "hv_utils",
            "hv_balloon",
            "hyperv_keyboard",
            "hid_hyperv",
            "hv_sock",
            // ConnectX-3 VFs. Root only: mlx4_core has no netdev of its own and asks the kernel
            // for `mlx4_en` (request_module, i.e. the root's /sbin/modprobe) when it binds,
            // which in the initramfs could not be answered.
            "mlx4_core",
            "mlx4_en",
            // The provisioning CD (ovf-env.xml, CustomData): read in stage 2, so on the root.
            "sr_mod",
            "cdrom",
            "udf",
            "isofs",
        ],
    },
];

/// Root-only drivers of every platform: the ACPI power button and the input devices it appears
/// as (a hypervisor's or cloud's "stop" is a press of it; `berth-devd` watches KEY_POWER).
pub const EVERY_PLATFORM_ROOT: &[&str] = &["button", "evdev"];

/// Kernel parameters every image's command line gets unless its definition sets them
/// ([`image_cmdline`]). The command line is one per slot for every platform, so only
/// parameters harmless everywhere belong here:
/// - `nvme_core.io_timeout=4294967295`: AWS's EBS volumes are NVMe devices whose I/O may stall
///   for longer than the driver's 30 s default during the service's own recoveries; a timeout
///   there resets the controller and fails the I/O, and ext4 remounts read-only. AWS, Flatcar
///   and Fedora CoreOS set it (the largest value: no timeout). Elsewhere it only matters for a
///   hung NVMe controller, which then waits rather than being reset.
pub const DEFAULT_CMDLINE: &[&str] = &["nvme_core.io_timeout=4294967295"];

/// The command line an image boots with: the definition's, then each [`DEFAULT_CMDLINE`]
/// parameter it does not set itself (by name: `nvme_core.io_timeout=30` in the definition
/// wins), before a `--` (what follows it is init's, not the kernel's).
pub fn image_cmdline(definition: &str) -> String {
    let words: Vec<&str> = definition.split_ascii_whitespace().collect();
    let end = words.iter().position(|w| *w == "--").unwrap_or(words.len());
    let key = |w: &str| w.split('=').next().unwrap_or(w).replace('-', "_");
    let mut out: Vec<&str> = words[..end].to_vec();
    for param in DEFAULT_CMDLINE {
        if !words[..end].iter().any(|w| key(w) == key(param)) {
            out.push(param);
        }
    }
    out.extend(&words[end..]);
    out.join(" ")
}

/// What a driver is for on a platform: decides where it goes and whether the kernel must have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Root-disk driver (required, initramfs).
    Disk,
    /// NIC driver (required, initramfs).
    Nic,
    /// Other early driver (optional, initramfs).
    Initramfs,
    /// Root-only driver (optional).
    Root,
}

impl Role {
    /// Whether the kernel must have drivers of this role.
    pub fn required(self) -> bool {
        matches!(self, Role::Disk | Role::Nic)
    }

    /// Whether drivers of this role go into the initramfs.
    pub fn in_initramfs(self) -> bool {
        matches!(self, Role::Disk | Role::Nic | Role::Initramfs)
    }

    fn describe(self) -> &'static str {
        match self {
            Role::Disk => "root-disk driver",
            Role::Nic => "NIC driver",
            Role::Initramfs => "early driver",
            Role::Root => "driver",
        }
    }
}

impl PlatformDrivers {
    /// Every name with its role, in the table's order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, Role)> + '_ {
        let with = |names: &'static [&'static str], role| names.iter().map(move |n| (*n, role));
        with(self.disk, Role::Disk)
            .chain(with(self.nic, Role::Nic))
            .chain(with(self.initramfs, Role::Initramfs))
            .chain(with(self.root, Role::Root))
    }
}

/// The module names of `platforms` (plus [`EVERY_PLATFORM_ROOT`]) by where they go, each once,
/// in table order. A name listed with several roles takes the strongest: required over
/// optional, initramfs over root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverLists {
    /// Root-disk and NIC drivers: initramfs, required.
    pub initramfs_required: Vec<String>,
    /// Other initramfs drivers, where the kernel has them.
    pub initramfs_optional: Vec<String>,
    /// Root-only drivers, where the kernel has them.
    pub root_optional: Vec<String>,
}

impl DriverLists {
    /// The lists of `platforms`.
    pub fn of(platforms: &[PlatformDrivers]) -> DriverLists {
        let roles = roles(platforms);
        let pick = |want: Role| -> Vec<String> {
            roles.order.iter().filter(|n| roles.strongest(n) == want).cloned().collect()
        };
        let required: Vec<String> = roles.order.iter().filter(|n| roles.strongest(n).required()).cloned().collect();
        DriverLists {
            initramfs_required: required,
            initramfs_optional: pick(Role::Initramfs),
            root_optional: pick(Role::Root),
        }
    }
}

/// Names (normalised) in first-seen order, with every (platform, role) listing them.
struct Roles {
    order: Vec<String>,
    by_name: BTreeMap<String, Vec<(&'static str, Role)>>,
}

impl Roles {
    fn strongest(&self, name: &str) -> Role {
        // Disk < Nic < Initramfs < Root: the smallest is the strongest.
        self.by_name[name].iter().map(|(_, r)| *r).min().unwrap_or(Role::Root)
    }
}

fn roles(platforms: &[PlatformDrivers]) -> Roles {
    let mut order = Vec::new();
    let mut by_name: BTreeMap<String, Vec<(&'static str, Role)>> = BTreeMap::new();
    let every = EVERY_PLATFORM_ROOT.iter().map(|n| ("every platform", *n, Role::Root));
    let listed = platforms.iter().flat_map(|p| p.entries().map(move |(n, r)| (p.platform, n, r)));
    for (platform, name, role) in listed.chain(every) {
        let name = normalize(name);
        let entry = by_name.entry(name.clone()).or_default();
        if entry.is_empty() {
            order.push(name);
        }
        entry.push((platform, role));
    }
    Roles { order, by_name }
}

/// How a kernel provides the platform drivers ([`check_drivers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Names built into the kernel image (listed in `modules.builtin`): nothing to load.
    pub builtin: Vec<String>,
    /// Optional names the kernel has neither as a module nor built in, each with the platforms
    /// that list it; the build goes on without them and says so.
    pub absent: Vec<(String, Vec<&'static str>)>,
}

impl DriverReport {
    /// `name (platform, ...)` for each absent driver, comma-separated; empty if none.
    pub fn absent_text(&self) -> String {
        self.absent.iter().map(|(n, p)| format!("{n} ({})", p.join(", "))).collect::<Vec<_>>().join(", ")
    }
}

/// Checks `platforms`' lists against the kernel's modules: a root-disk or NIC driver the kernel
/// has neither as a module nor built in is an error naming it, its role and its platforms;
/// built-in and absent optional drivers are reported.
pub fn check_drivers(index: &ModuleIndex, platforms: &[PlatformDrivers]) -> Result<DriverReport, KernelError> {
    let roles = roles(platforms);
    let mut report = DriverReport::default();
    for name in &roles.order {
        if index.get(name).is_some() {
            continue;
        }
        if index.is_builtin(name) {
            report.builtin.push(name.clone());
            continue;
        }
        let listed = &roles.by_name[name];
        let platforms_of = |required: bool| -> Vec<&'static str> {
            let mut p: Vec<&'static str> =
                listed.iter().filter(|(_, r)| r.required() == required).map(|(p, _)| *p).collect();
            p.dedup();
            p
        };
        let strongest = roles.strongest(name);
        if strongest.required() {
            return Err(KernelError::MissingPlatformDriver {
                module: name.clone(),
                role: strongest.describe(),
                platforms: platforms_of(true).join(", "),
                version: index.version().to_owned(),
            });
        }
        report.absent.push((name.clone(), platforms_of(false)));
    }
    Ok(report)
}
