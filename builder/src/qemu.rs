//! Booting a Berth disk in QEMU: the one place that knows the machine (q35 with OVMF), where
//! distributions install the firmware, and how disks, consoles, user-mode networking and host
//! sockets are spelled on QEMU's command line. `berth run` and the QEMU test harness both use it.
//!
//! [`QemuConfig::command`] only builds a [`Command`]; the caller chooses stdio and spawns it.
//! Port forwards are always bound to 127.0.0.1: a guest is never reachable from other hosts.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::str::FromStr;

/// The emulator, looked up in `PATH`.
pub const QEMU_SYSTEM: &str = "qemu-system-x86_64";
/// QEMU's disk image tool, used only for copy-on-write overlays.
pub const QEMU_IMG: &str = "qemu-img";

/// Where distributions install OVMF, as (code, variable store template) pairs of the same
/// build (their sizes must match), in the order they are tried.
pub const FIRMWARE_LOCATIONS: &[(&str, &str)] = &[
    // Debian and Ubuntu (package ovmf).
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    // Arch (edk2-ovmf).
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
    // Fedora (edk2-ovmf).
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    // openSUSE (qemu-ovmf-x86_64).
    ("/usr/share/qemu/ovmf-x86_64-4m-code.bin", "/usr/share/qemu/ovmf-x86_64-4m-vars.bin"),
    ("/usr/share/qemu/ovmf-x86_64-code.bin", "/usr/share/qemu/ovmf-x86_64-vars.bin"),
    // QEMU's own build of edk2 (upstream installs, Homebrew-style prefixes under /usr/local).
    ("/usr/share/qemu/edk2-x86_64-code.fd", "/usr/share/qemu/edk2-i386-vars.fd"),
    ("/usr/local/share/qemu/edk2-x86_64-code.fd", "/usr/local/share/qemu/edk2-i386-vars.fd"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no UEFI firmware (OVMF) found; looked for {looked}: install the Debian package ovmf")]
    NoFirmware { looked: String },
    #[error("{tool} not found in PATH: install the Debian package {package}")]
    MissingTool { tool: &'static str, package: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("qemu-img could not create the overlay {overlay} over {base} ({status}): {message}")]
    Overlay { overlay: PathBuf, base: PathBuf, status: std::process::ExitStatus, message: String },
    #[error("qemu-img could not resize {image} to {bytes} bytes ({status}): {message}")]
    Resize { image: PathBuf, bytes: u64, status: std::process::ExitStatus, message: String },
    #[error("port forward {spec:?}: {reason}; expected HOST:GUEST, two TCP ports such as 2222:22")]
    BadForward { spec: String, reason: &'static str },
    #[error("disk format {0:?}: expected raw, qcow2 or vmdk")]
    BadFormat(String),
    #[error("QMP {command} on {socket}: {message}")]
    Qmp { socket: PathBuf, command: String, message: String },
    #[error("disk bus {0:?}: expected virtio-blk, virtio-scsi or nvme")]
    BadDiskBus(String),
    #[error(
        "guest forward {spec:?}: {reason}; expected GUESTADDR:PORT=127.0.0.1:HOSTPORT such as 10.0.2.100:80=127.0.0.1:8080"
    )]
    BadGuestForward { spec: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn must_be_file(path: &Path) -> Result<(), Error> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(Error::NotAFile { path: path.to_path_buf() });
    }
    Ok(())
}

/// OVMF: the firmware code (read-only) and the template its per-run variable store is copied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

impl Firmware {
    /// The first pair of [`FIRMWARE_LOCATIONS`] present on this host.
    pub fn find() -> Result<Firmware, Error> {
        Firmware::find_in(FIRMWARE_LOCATIONS)
    }

    /// The first pair of `locations` whose two files both exist.
    pub fn find_in<P: AsRef<Path>>(locations: &[(P, P)]) -> Result<Firmware, Error> {
        for (code, vars) in locations {
            let (code, vars) = (code.as_ref(), vars.as_ref());
            if code.is_file() && vars.is_file() {
                return Ok(Firmware { code: code.to_path_buf(), vars_template: vars.to_path_buf() });
            }
        }
        let looked = locations.iter().map(|(c, _)| c.as_ref().display().to_string()).collect::<Vec<_>>().join(", ");
        Err(Error::NoFirmware { looked })
    }

    /// Firmware files named by the user; both must exist.
    pub fn new(code: impl Into<PathBuf>, vars_template: impl Into<PathBuf>) -> Result<Firmware, Error> {
        let fw = Firmware { code: code.into(), vars_template: vars_template.into() };
        must_be_file(&fw.code)?;
        must_be_file(&fw.vars_template)?;
        Ok(fw)
    }

    /// Copies the variable store template to `dest`, writable by us (firmware writes its
    /// variables there, and the template must never change, so each run gets its own).
    pub fn copy_vars(&self, dest: &Path) -> Result<(), Error> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::copy(&self.vars_template, dest).map_err(io(&self.vars_template))?;
        // The template may be read-only (packaged 0444); the copy must be writable.
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o600)).map_err(io(dest))
    }
}

/// A disk image format QEMU is told explicitly (guessing raw is refused by QEMU for safety).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    /// VMware's format, the disk inside an OVA (streamOptimized: QEMU reads it, so it is booted
    /// through an overlay).
    Vmdk,
}

impl DiskFormat {
    /// The first bytes of every qcow2 image.
    pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
    /// The first bytes of every sparse-extent VMDK (monolithicSparse, streamOptimized).
    pub const VMDK_MAGIC: [u8; 4] = *b"KDMV";

    /// The format of an image that starts with `header`: qcow2 or VMDK by its magic, else raw.
    pub fn from_header(header: &[u8]) -> DiskFormat {
        if header.starts_with(&Self::QCOW2_MAGIC) {
            DiskFormat::Qcow2
        } else if header.starts_with(&Self::VMDK_MAGIC) {
            DiskFormat::Vmdk
        } else {
            DiskFormat::Raw
        }
    }

    /// The format of the image at `path` (a file shorter than the magic is raw).
    pub fn detect(path: &Path) -> Result<DiskFormat, Error> {
        must_be_file(path)?;
        let mut header = Vec::with_capacity(4);
        std::fs::File::open(path).and_then(|f| f.take(4).read_to_end(&mut header)).map_err(io(path))?;
        Ok(DiskFormat::from_header(&header))
    }

    /// QEMU's name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DiskFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            "vmdk" => Ok(DiskFormat::Vmdk),
            _ => Err(Error::BadFormat(s.into())),
        }
    }
}

/// How guest code runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// Emulation: works everywhere, slow.
    #[default]
    Tcg,
    /// Hardware virtualization through /dev/kvm, with the host's CPU model.
    Kvm,
}

/// Where the guest's first serial port (its console) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// This process's stdin and stdout, multiplexed with the QEMU monitor (Ctrl-A C; Ctrl-A X quits).
    Stdio,
    /// Written to a file (created or truncated).
    File(PathBuf),
    /// A unix socket QEMU listens on; a client (`socat -,raw,echo=0 UNIX-CONNECT:PATH`) gets the
    /// console. What the guest prints while no client is connected is lost.
    Socket(PathBuf),
}

/// A TCP port on 127.0.0.1 of the host forwarded to a port of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl FromStr for Forward {
    type Err = Error;
    /// `HOST:GUEST`, e.g. `2222:22`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadForward { spec: s.into(), reason };
        let (host, guest) = s.split_once(':').ok_or_else(|| bad("no ':' between the ports"))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) => Err(bad("port 0 cannot be forwarded")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad("a port is not a number from 1 to 65535")),
        };
        Ok(Forward { host: port(host)?, guest: port(guest)? })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "127.0.0.1:{} -> guest:{}", self.host, self.guest)
    }
}

/// A TCP address the guest connects to (`guestfwd`) and what answers it on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestForward {
    /// An address in the user network, e.g. 10.0.2.100 (QEMU's default network is 10.0.2.0/24).
    pub addr: Ipv4Addr,
    pub port: u16,
    pub target: GuestTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestTarget {
    /// A shell command QEMU starts for each connection, its stdin and stdout being the stream.
    Cmd(String),
    /// A TCP server on 127.0.0.1 of the host. QEMU connects once, when it starts, so the server
    /// must already listen, and the guest gets that one connection.
    Local(u16),
}

/// How the boot disk is attached: the controller the guest's kernel must have a driver for.
/// Each platform's hypervisor offers another (docs/design.md §8); booting the same disk on each
/// shows the image carries every platform's storage driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// A virtio-blk PCI device (`-drive if=virtio`): QEMU's and libvirt's usual disk.
    #[default]
    VirtioBlk,
    /// A SCSI disk (`scsi-hd`) on a virtio-scsi PCI controller: VirtualBox's VirtioSCSI.
    VirtioScsi,
    /// An NVMe controller with the disk as its namespace: the disk of cloud instances.
    Nvme,
}

impl DiskBus {
    /// The serial number of the NVMe controller (QEMU requires one); the guest sees it in
    /// /sys/class/nvme/nvme0/serial and in /dev/disk/by-id names.
    pub const NVME_SERIAL: &str = "berth-disk0";

    /// The word used in this crate's docs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio-blk",
            DiskBus::VirtioScsi => "virtio-scsi",
            DiskBus::Nvme => "nvme",
        }
    }
}

impl fmt::Display for DiskBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DiskBus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "virtio-blk" => Ok(DiskBus::VirtioBlk),
            "virtio-scsi" => Ok(DiskBus::VirtioScsi),
            "nvme" => Ok(DiskBus::Nvme),
            _ => Err(Error::BadDiskBus(s.into())),
        }
    }
}

impl DiskBus {
    /// The disk controller of the machine a platform's artifact is made for (docs/design.md §8),
    /// so that `berth run --platform` boots the disk as that hypervisor would: VirtualBox's
    /// VirtioSCSI (the OVA's controller), NVMe for bare metal (a current server's or laptop's
    /// disk; Debian's cloud kernel has no AHCI), virtio-blk for QEMU and libvirt. The NIC is
    /// virtio-net everywhere.
    pub fn for_platform(platform: crate::platform::Platform) -> DiskBus {
        use crate::platform::Platform;
        match platform {
            Platform::Qemu | Platform::VagrantLibvirt => DiskBus::VirtioBlk,
            Platform::Virtualbox | Platform::VagrantVirtualbox => DiskBus::VirtioScsi,
            // EBS volumes on Nitro are NVMe; GCE's default disk interface is virtio-scsi; Azure's
            // storvsc has no QEMU device, and its newest sizes give NVMe.
            Platform::Metal | Platform::Aws | Platform::Azure => DiskBus::Nvme,
            Platform::Gce => DiskBus::VirtioScsi,
        }
    }
}

/// The id of the PCI Express root port [`QemuConfig::hotplug_port`] adds: `device_add
/// DRIVER,bus=hp0` plugs a device into it while the guest runs (q35's root bus takes none).
pub const HOTPLUG_PORT_ID: &str = "hp0";

/// QEMU's user network (10.0.2.0/24): the host's gateway and DNS server addresses, and the
/// address its DHCP server gives the guest; a `guestfwd` may use none of them.
pub const USER_NET_RESERVED: [(Ipv4Addr, &str); 3] = [
    (Ipv4Addr::new(10, 0, 2, 2), "the gateway to the host"),
    (Ipv4Addr::new(10, 0, 2, 3), "the DNS server"),
    (Ipv4Addr::new(10, 0, 2, 15), "the guest's own address"),
];

/// `GUESTADDR:PORT=127.0.0.1:HOSTPORT`: connections the guest opens to GUESTADDR:PORT in QEMU's
/// user network reach a TCP server on this host's loopback at HOSTPORT. Only loopback targets
/// are accepted, so a forward never lets the guest reach another machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalGuestForward {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub host_port: u16,
}

impl FromStr for LocalGuestForward {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadGuestForward { spec: s.into(), reason };
        let port = |p: &str, what: &str| match p.parse::<u16>() {
            Ok(0) => Err(bad(format!("{what} 0 cannot be forwarded"))),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(format!("{what} {p:?} is not a number from 1 to 65535"))),
        };
        let (guest, host) = s.split_once('=').ok_or_else(|| bad("no '=' between the guest and host sides".into()))?;
        let (addr, guest_port) = guest.rsplit_once(':').ok_or_else(|| bad("no ':' before the guest port".into()))?;
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| bad(format!("the guest address {addr:?} is not an IPv4 address")))?;
        let (host_addr, host_port) = host.rsplit_once(':').ok_or_else(|| bad("no ':' before the host port".into()))?;
        if host_addr != "127.0.0.1" && host_addr != "localhost" {
            return Err(bad(format!(
                "the host side {host_addr:?} is not 127.0.0.1 or localhost: a guest forward only reaches this \
                 host's loopback"
            )));
        }
        let in_user_net = addr.octets()[..3] == [10, 0, 2] && !matches!(addr.octets()[3], 0 | 255);
        if !in_user_net {
            return Err(bad(format!(
                "the guest address {addr} is not a host address of QEMU's user network 10.0.2.0/24"
            )));
        }
        if let Some((_, what)) = USER_NET_RESERVED.iter().find(|(a, _)| *a == addr) {
            return Err(bad(format!("the guest address {addr} is {what} in QEMU's user network; use e.g. 10.0.2.100")));
        }
        Ok(LocalGuestForward { addr, port: port(guest_port, "guest port")?, host_port: port(host_port, "host port")? })
    }
}

impl fmt::Display for LocalGuestForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest {}:{} -> 127.0.0.1:{}", self.addr, self.port, self.host_port)
    }
}

/// Joins this process's stdin and stdout to a TCP connection to 127.0.0.1:`port` until both
/// directions end: what QEMU's `guestfwd=…-cmd:` starts for each connection the guest opens (a
/// `guestfwd` to a TCP target would carry one connection only, for QEMU's whole life). When the
/// server closes, stdout closes and the guest sees the close at once. Nothing is written to
/// stderr: QEMU connects it to the guest's connection too.
pub fn relay_stdio(port: u16) -> std::io::Result<()> {
    use std::io::Write;
    use std::net::{Shutdown, TcpStream};
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut down = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Guest networking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Network {
    /// No network device at all.
    #[default]
    None,
    /// QEMU's user-mode network (slirp) on a virtio-net device.
    User(UserNet),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    /// `restrict=on`: the guest reaches nothing outside (forwards still work).
    pub restrict: bool,
    pub forwards: Vec<Forward>,
    pub guest_forwards: Vec<GuestForward>,
}

/// QEMU's user network on another range than its default 10.0.2.0/24 (`net=`, `host=`,
/// `dhcpstart=`). A `guestfwd` address must lie inside the user network (libslirp refuses any
/// other), so a guest that must reach a fixed address, such as a cloud's metadata service at
/// 169.254.169.254, needs a network that covers it. QEMU requires `host` and `dhcp_start` inside
/// the network and a prefix of 4 to 32 bits; its DNS server stays at the network's `.2.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSubnet {
    /// The network's address (host bits zero).
    pub net: Ipv4Addr,
    pub prefix_len: u8,
    /// The host's address in it: the guest's gateway and DHCP server.
    pub host: Ipv4Addr,
    /// The first address QEMU's DHCP server gives (the guest's own).
    pub dhcp_start: Ipv4Addr,
}

/// One SMBIOS structure QEMU hands the firmware (`-smbios type=N,KEY=VALUE,...`), which the
/// guest reads in `/sys/class/dmi/id`: e.g. the manufacturer, product and serial a cloud's
/// hypervisor reports (type 1) or a chassis asset tag (type 3). Values may hold spaces and
/// commas (commas are doubled on the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smbios {
    /// The SMBIOS structure type: 0 (BIOS), 1 (system), 2 (baseboard), 3 (chassis), 11 (OEM strings).
    pub kind: u8,
    /// `-smbios` keys and values in order, e.g. (`manufacturer`, `Amazon EC2`).
    pub fields: Vec<(String, String)>,
}

impl Smbios {
    /// A structure of type `kind` with `fields`.
    pub fn new<K: Into<String>, V: Into<String>>(kind: u8, fields: impl IntoIterator<Item = (K, V)>) -> Smbios {
        Smbios { kind, fields: fields.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }
}

/// A virtio-serial port (named for the guest, e.g. `org.berth.agent.0`, in
/// `/dev/virtio-ports/`) whose host end is a unix socket QEMU listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioPort {
    pub name: String,
    pub socket: PathBuf,
}

/// The fw_cfg name berth-init reads its first-boot provisioning document from (QEMU reserves
/// names outside `opt/`; `org.berth` is Berth's own namespace there).
pub const PROVISION_FW_CFG: &str = "opt/org.berth/config";

/// One QEMU machine: q35, OVMF, one disk (virtio-blk, virtio-scsi or NVMe), no display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The emulator [default: `qemu-system-x86_64` from `PATH`].
    pub program: PathBuf,
    pub firmware_code: PathBuf,
    /// This run's own writable copy of the variable store (see [`Firmware::copy_vars`]).
    pub firmware_vars: PathBuf,
    pub disk: PathBuf,
    pub format: DiskFormat,
    /// The controller the disk hangs on [default: virtio-blk].
    pub disk_bus: DiskBus,
    /// The guest cannot write the disk (writes fail as on write-protected media).
    pub read_only: bool,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub serial: Serial,
    pub network: Network,
    pub virtio_ports: Vec<VirtioPort>,
    /// Unix sockets QEMU listens on for QMP (the JSON machine protocol), each a monitor of its
    /// own (one client at a time on each).
    pub qmp_sockets: Vec<PathBuf>,
    /// A unix socket QEMU listens on for its human monitor (`socat - UNIX-CONNECT:PATH`).
    pub monitor_socket: Option<PathBuf>,
    /// fw_cfg items the guest reads (`name`, file with the contents), e.g. the first-boot
    /// provisioning document as [`PROVISION_FW_CFG`].
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Extra devices, each one `-device SPEC` (QEMU's own syntax, e.g. `virtio-rng-pci`).
    pub devices: Vec<String>,
    /// An empty PCI Express root port with id [`HOTPLUG_PORT_ID`] for hot-plugging a device.
    pub hotplug_port: bool,
    /// With [`Network::User`]: the user network's range instead of QEMU's 10.0.2.0/24.
    pub user_subnet: Option<UserSubnet>,
    /// SMBIOS structures the firmware passes to the guest (`-smbios`).
    pub smbios: Vec<Smbios>,
    /// Appended verbatim after everything else.
    pub extra_args: Vec<OsString>,
}

impl QemuConfig {
    /// A machine with 2048 MiB, 2 CPUs, TCG, the console on stdio and no network.
    pub fn new(
        firmware: &Firmware,
        vars_copy: impl Into<PathBuf>,
        disk: impl Into<PathBuf>,
        format: DiskFormat,
    ) -> Self {
        QemuConfig {
            program: PathBuf::from(QEMU_SYSTEM),
            firmware_code: firmware.code.clone(),
            firmware_vars: vars_copy.into(),
            disk: disk.into(),
            format,
            disk_bus: DiskBus::VirtioBlk,
            read_only: false,
            memory_mib: 2048,
            cpus: 2,
            accel: Accel::Tcg,
            serial: Serial::Stdio,
            network: Network::None,
            virtio_ports: Vec::new(),
            qmp_sockets: Vec::new(),
            monitor_socket: None,
            fw_cfg: Vec::new(),
            devices: Vec::new(),
            hotplug_port: false,
            user_subnet: None,
            smbios: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.push(["-machine", "q35"]);
        match self.accel {
            Accel::Tcg => a.push(["-accel", "tcg"]),
            Accel::Kvm => a.push(["-accel", "kvm", "-cpu", "host"]),
        }
        a.push(["-smp", &self.cpus.to_string(), "-m", &self.memory_mib.to_string()]);
        a.push(["-display", "none", "-no-user-config"]);
        a.opt("-drive", ["if=pflash,format=raw,readonly=on,file=".into(), escape(&self.firmware_code)]);
        a.opt("-drive", ["if=pflash,format=raw,file=".into(), escape(&self.firmware_vars)]);
        let read_only = if self.read_only { ",readonly=on" } else { "" };
        match self.disk_bus {
            DiskBus::VirtioBlk => a.opt(
                "-drive",
                ["file=".into(), escape(&self.disk), format!(",if=virtio,format={}{read_only}", self.format).into()],
            ),
            // The other buses take a drive without a device of its own (`if=none`), attached by id.
            DiskBus::VirtioScsi | DiskBus::Nvme => {
                if self.disk_bus == DiskBus::VirtioScsi {
                    a.push(["-device", "virtio-scsi-pci,id=scsi0"]);
                }
                a.opt(
                    "-drive",
                    [
                        "file=".into(),
                        escape(&self.disk),
                        format!(",if=none,id=disk0,format={}{read_only}", self.format).into(),
                    ],
                );
                match self.disk_bus {
                    DiskBus::VirtioScsi => a.push(["-device", "scsi-hd,bus=scsi0.0,drive=disk0"]),
                    _ => a.opt("-device", [format!("nvme,serial={},drive=disk0", DiskBus::NVME_SERIAL).into()]),
                }
            }
        }

        match &self.network {
            Network::None => a.push(["-nic", "none"]),
            Network::User(net) => {
                let mut spec: Vec<OsString> = vec!["user,id=n0".into()];
                if net.restrict {
                    spec.push(",restrict=on".into());
                }
                if let Some(r) = &self.user_subnet {
                    spec.push(
                        format!(",net={}/{},host={},dhcpstart={}", r.net, r.prefix_len, r.host, r.dhcp_start).into(),
                    );
                }
                for f in &net.forwards {
                    spec.push(format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest).into());
                }
                for g in &net.guest_forwards {
                    let target = match &g.target {
                        GuestTarget::Cmd(cmd) => format!("cmd:{cmd}"),
                        GuestTarget::Local(port) => format!("tcp:127.0.0.1:{port}"),
                    };
                    spec.push(format!(",guestfwd=tcp:{}:{}-", g.addr, g.port).into());
                    spec.push(escape(OsStr::new(&target)));
                }
                a.opt("-netdev", spec);
                a.push(["-device", "virtio-net-pci,netdev=n0"]);
            }
        }

        match &self.serial {
            Serial::Stdio => a.push(["-serial", "mon:stdio"]),
            // `file:` takes the rest of the string as the path, so it is not escaped.
            Serial::File(path) => a.opt("-serial", ["file:".into(), path.as_os_str().to_owned()]),
            Serial::Socket(path) => {
                a.opt("-chardev", socket_chardev("console", path));
                a.push(["-serial", "chardev:console"]);
            }
        }

        if !self.virtio_ports.is_empty() {
            a.push(["-device", "virtio-serial-pci,id=vser0"]);
        }
        for (i, port) in self.virtio_ports.iter().enumerate() {
            a.opt("-chardev", socket_chardev(&format!("vport{i}"), &port.socket));
            a.opt(
                "-device",
                [format!("virtserialport,bus=vser0.0,chardev=vport{i},name=").into(), escape(OsStr::new(&port.name))],
            );
        }
        for (i, qmp) in self.qmp_sockets.iter().enumerate() {
            let id = if i == 0 { "qmp".to_string() } else { format!("qmp{i}") };
            a.opt("-chardev", socket_chardev(&id, qmp));
            a.opt("-mon", [format!("chardev={id},mode=control").into()]);
        }
        if let Some(monitor) = &self.monitor_socket {
            a.opt("-chardev", socket_chardev("hmp", monitor));
            a.push(["-mon", "chardev=hmp,mode=readline"]);
        }
        for (name, file) in &self.fw_cfg {
            a.opt("-fw_cfg", ["name=".into(), escape(OsStr::new(name)), ",file=".into(), escape(file)]);
        }
        if self.hotplug_port {
            // chassis and slot must be unique among root ports; nothing else here adds one.
            a.opt("-device", [format!("pcie-root-port,id={HOTPLUG_PORT_ID},chassis=1,slot=1").into()]);
        }
        for spec in &self.devices {
            a.opt("-device", [spec.into()]);
        }
        for table in &self.smbios {
            let mut spec: Vec<OsString> = vec![format!("type={}", table.kind).into()];
            for (key, value) in &table.fields {
                spec.push(format!(",{key}=").into());
                spec.push(escape(OsStr::new(value)));
            }
            a.opt("-smbios", spec);
        }
        a.0.extend(self.extra_args.iter().cloned());
        a.0
    }

    /// The command to spawn (stdio left to the caller).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args());
        cmd
    }
}

/// Runs one QMP command (a JSON object such as `{"execute":"system_powerdown"}`) on a fresh
/// connection to the QMP socket at `socket` and returns the JSON text of its `return` value.
/// Events QEMU sends meanwhile are skipped; each read waits at most `timeout`.
pub fn qmp_execute(socket: &Path, command: &str, timeout: std::time::Duration) -> Result<String, Error> {
    use std::io::{BufRead, BufReader, Write};
    let fail = |message: String| Error::Qmp { socket: socket.to_path_buf(), command: command.to_string(), message };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| fail(format!("connecting: {e}")))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| fail(e.to_string()))?);
    let mut writer = stream;
    let mut line = String::new();
    // The greeting, then capability negotiation, then the command.
    reader.read_line(&mut line).map_err(|e| fail(format!("reading the greeting: {e}")))?;
    let mut answer = String::new();
    for cmd in [r#"{"execute":"qmp_capabilities"}"#, command] {
        writer.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| fail(e.to_string()))?;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| fail(format!("reading the answer: {e}")))?;
            if n == 0 {
                return Err(fail("QEMU closed the connection before answering".into()));
            }
            let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| fail(format!("{e}: {line:?}")))?;
            if let Some(r) = v.get("return") {
                answer = r.to_string();
                break;
            }
            if let Some(e) = v.get("error") {
                return Err(fail(e.to_string()));
            }
        }
    }
    Ok(answer)
}

/// A unix socket chardev QEMU listens on without waiting for a client.
fn socket_chardev(id: &str, path: &Path) -> [OsString; 3] {
    [format!("socket,id={id},path=").into(), escape(path), ",server=on,wait=off".into()]
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, args: [&str; N]) {
        self.0.extend(args.iter().map(OsString::from));
    }

    /// `flag` followed by one argument made of `parts`.
    fn opt(&mut self, flag: &str, parts: impl IntoIterator<Item = OsString>) {
        self.0.push(flag.into());
        self.0.push(parts.into_iter().collect());
    }
}

/// A value inside a QEMU `key=value,...` option: a comma is written twice.
fn escape(value: impl AsRef<OsStr>) -> OsString {
    let bytes = value.as_ref().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsStr::from_bytes(&out).to_owned()
}

/// Spawns a QEMU command; a missing emulator is named with the package that provides it.
pub fn spawn(cmd: &mut Command) -> Result<Child, Error> {
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingTool { tool: QEMU_SYSTEM, package: "qemu-system-x86" },
        _ => Error::Io { path: PathBuf::from(cmd.get_program()), source: e },
    })
}

/// The arguments of `qemu-img` that create `overlay`, a qcow2 image whose reads fall through to
/// `base` (an absolute path: qcow2 resolves a relative one against the overlay's directory) and
/// whose writes stay in the overlay.
pub fn overlay_args(base: &Path, base_format: DiskFormat, overlay: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["create", "-q", "-f", "qcow2", "-F", base_format.as_str(), "-b"].map(OsString::from).into();
    args.push(base.as_os_str().to_owned());
    args.push(overlay.as_os_str().to_owned());
    args
}

/// Creates a copy-on-write qcow2 `overlay` over `base`, so that a guest can write to its disk
/// while `base` stays unchanged. Returns the absolute path of `base` it refers to.
pub fn create_overlay(base: &Path, base_format: DiskFormat, overlay: &Path) -> Result<PathBuf, Error> {
    must_be_file(base)?;
    let abs = std::fs::canonicalize(base).map_err(io(base))?;
    let out = qemu_img(overlay_args(&abs, base_format, overlay))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        return Err(Error::Overlay { overlay: overlay.to_path_buf(), base: abs, status: out.status, message });
    }
    Ok(abs)
}

/// Grows (or shrinks) the virtual disk `image` to `bytes`: a bigger disk, as a cloud volume
/// resized by its owner.
pub fn resize(image: &Path, bytes: u64) -> Result<(), Error> {
    must_be_file(image)?;
    let out =
        qemu_img([OsString::from("resize"), "-q".into(), image.as_os_str().to_owned(), bytes.to_string().into()])?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ");
        return Err(Error::Resize { image: image.to_path_buf(), bytes, status: out.status, message });
    }
    Ok(())
}

fn qemu_img(args: impl IntoIterator<Item = OsString>) -> Result<std::process::Output, Error> {
    Command::new(QEMU_IMG).args(args).output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingTool { tool: QEMU_IMG, package: "qemu-utils" },
        _ => Error::Io { path: PathBuf::from(QEMU_IMG), source: e },
    })
}

/// `program args...` as one line a POSIX shell reads back the same (for `--verbose` and logs).
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(shell_quote).collect::<Vec<_>>().join(" ")
}

/// One argument as a POSIX shell word: as it is when no character is special, else quoted.
pub fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !s.is_empty() && s.chars().all(plain) { s.into_owned() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw() -> Firmware {
        Firmware { code: "/fw/CODE.fd".into(), vars_template: "/fw/VARS.fd".into() }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_str().unwrap().to_string()).collect()
    }

    #[test]
    fn default_machine_is_tcg_with_console_on_stdio_and_no_network() {
        let c = QemuConfig::new(&fw(), "/run/vars.fd", "/d/disk.img", DiskFormat::Raw);
        let expected = [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-m",
            "2048",
            "-display",
            "none",
            "-no-user-config",
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/fw/CODE.fd",
            "-drive",
            "if=pflash,format=raw,file=/run/vars.fd",
            "-drive",
            "file=/d/disk.img,if=virtio,format=raw",
            "-nic",
            "none",
            "-serial",
            "mon:stdio",
        ];
        assert_eq!(strings(&c.args()), expected);
        assert_eq!(c.command().get_program(), "qemu-system-x86_64");
    }

    #[test]
    fn every_option_spelled_for_qemu() {
        let mut c = QemuConfig::new(&fw(), "/t/vars.fd", "/t/o.qcow2", DiskFormat::Qcow2);
        c.memory_mib = 768;
        c.cpus = 1;
        c.accel = Accel::Kvm;
        c.serial = Serial::File("/t/console,1.log".into());
        c.network = Network::User(UserNet {
            restrict: true,
            forwards: vec![Forward { host: 2222, guest: 22 }, Forward { host: 8080, guest: 80 }],
            guest_forwards: vec![
                GuestForward {
                    addr: Ipv4Addr::new(10, 0, 2, 100),
                    port: 80,
                    target: GuestTarget::Cmd("nc 127.0.0.1 8000".into()),
                },
                GuestForward { addr: Ipv4Addr::new(10, 0, 2, 101), port: 443, target: GuestTarget::Local(8443) },
            ],
        });
        c.virtio_ports = vec![
            VirtioPort { name: "org.berth.agent.0".into(), socket: "/t/a.sock".into() },
            VirtioPort { name: "org.berth.log".into(), socket: "/t/b,c.sock".into() },
        ];
        c.qmp_sockets = vec!["/t/qmp.sock".into()];
        c.fw_cfg = vec![(PROVISION_FW_CFG.into(), "/t/first,boot.toml".into())];
        c.extra_args = vec!["-no-reboot".into()];
        let args = strings(&c.args());
        let line = args.join(" ");
        assert!(line.starts_with("-machine q35 -accel kvm -cpu host -smp 1 -m 768 -display none"), "{line}");
        assert!(line.contains(" -drive file=/t/o.qcow2,if=virtio,format=qcow2 "), "{line}");
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,\
             guestfwd=tcp:10.0.2.100:80-cmd:nc 127.0.0.1 8000,guestfwd=tcp:10.0.2.101:443-tcp:127.0.0.1:8443"
        );
        assert!(line.contains(" -device virtio-net-pci,netdev=n0 "), "{line}");
        assert!(!line.contains("-nic"), "{line}");
        assert!(line.contains(" -serial file:/t/console,1.log "), "{line}");
        assert_eq!(line.matches("virtio-serial-pci").count(), 1, "{line}");
        assert!(
            line.contains(
                " -device virtio-serial-pci,id=vser0 \
                 -chardev socket,id=vport0,path=/t/a.sock,server=on,wait=off \
                 -device virtserialport,bus=vser0.0,chardev=vport0,name=org.berth.agent.0 \
                 -chardev socket,id=vport1,path=/t/b,,c.sock,server=on,wait=off \
                 -device virtserialport,bus=vser0.0,chardev=vport1,name=org.berth.log "
            ),
            "{line}"
        );
        assert!(
            line.ends_with(
                "-chardev socket,id=qmp,path=/t/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control \
                 -fw_cfg name=opt/org.berth/config,file=/t/first,,boot.toml -no-reboot"
            ),
            "{line}"
        );
    }

    #[test]
    fn disk_buses_attach_the_same_drive_to_their_controller() {
        let mut c = QemuConfig::new(&fw(), "/t/vars.fd", "/t/a,b.img", DiskFormat::Raw);
        let default_line = strings(&c.args()).join(" ");
        c.disk_bus = DiskBus::VirtioBlk;
        assert_eq!(strings(&c.args()).join(" "), default_line, "virtio-blk is the default");

        c.disk_bus = DiskBus::VirtioScsi;
        c.read_only = true;
        let line = strings(&c.args()).join(" ");
        assert!(
            line.contains(
                " -device virtio-scsi-pci,id=scsi0 -drive file=/t/a,,b.img,if=none,id=disk0,format=raw,readonly=on \
                 -device scsi-hd,bus=scsi0.0,drive=disk0 -nic none "
            ),
            "{line}"
        );
        assert!(!line.contains("if=virtio"), "{line}");

        c.disk_bus = DiskBus::Nvme;
        c.read_only = false;
        c.format = DiskFormat::Qcow2;
        let line = strings(&c.args()).join(" ");
        assert!(
            line.contains(
                " -drive file=/t/a,,b.img,if=none,id=disk0,format=qcow2 -device nvme,serial=berth-disk0,drive=disk0 \
                 -nic none "
            ),
            "{line}"
        );
        assert!(!line.contains("scsi") && !line.contains("if=virtio"), "{line}");
    }

    #[test]
    fn extra_devices_and_the_hotplug_port_come_before_the_pass_through() {
        let mut c = QemuConfig::new(&fw(), "/t/vars.fd", "/t/d.img", DiskFormat::Raw);
        c.devices = vec!["virtio-rng-pci".into(), "pvpanic".into()];
        c.hotplug_port = true;
        c.extra_args = vec!["-no-reboot".into()];
        let line = strings(&c.args()).join(" ");
        assert!(
            line.ends_with(
                " -serial mon:stdio -device pcie-root-port,id=hp0,chassis=1,slot=1 -device virtio-rng-pci \
                 -device pvpanic -no-reboot"
            ),
            "{line}"
        );
        assert_eq!(HOTPLUG_PORT_ID, "hp0");
    }

    #[test]
    fn a_user_network_range_and_smbios_tables_for_a_cloud_machine() {
        let mut c = QemuConfig::new(&fw(), "/t/vars.fd", "/t/d.img", DiskFormat::Raw);
        c.network = Network::User(UserNet {
            restrict: true,
            forwards: vec![Forward { host: 2222, guest: 22 }],
            guest_forwards: vec![GuestForward {
                addr: Ipv4Addr::new(169, 254, 169, 254),
                port: 80,
                target: GuestTarget::Cmd("relay 8080".into()),
            }],
        });
        c.user_subnet = Some(UserSubnet {
            net: Ipv4Addr::new(169, 254, 0, 0),
            prefix_len: 16,
            host: Ipv4Addr::new(169, 254, 0, 2),
            dhcp_start: Ipv4Addr::new(169, 254, 0, 15),
        });
        c.smbios = vec![
            Smbios::new(1, [("manufacturer", "Amazon EC2"), ("product", "m5.large"), ("serial", "ec2a,b")]),
            Smbios::new(3, [("asset", "7783-7084-3265-9085-8269-3286-77")]),
        ];
        let args = strings(&c.args());
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,\
             hostfwd=tcp:127.0.0.1:2222-:22,guestfwd=tcp:169.254.169.254:80-cmd:relay 8080"
        );
        let line = args.join(" ");
        assert!(
            line.ends_with(
                " -smbios type=1,manufacturer=Amazon EC2,product=m5.large,serial=ec2a,,b \
                 -smbios type=3,asset=7783-7084-3265-9085-8269-3286-77"
            ),
            "{line}"
        );
        // Without a user network the range says nothing.
        c.network = Network::None;
        assert!(!strings(&c.args()).join(" ").contains("net="));
    }

    #[test]
    fn console_and_monitor_on_unix_sockets() {
        let mut c = QemuConfig::new(&fw(), "/t/vars.fd", "/t/d.img", DiskFormat::Raw);
        c.serial = Serial::Socket("/t/con,sole.sock".into());
        c.monitor_socket = Some("/t/mon.sock".into());
        c.qmp_sockets = vec!["/t/qmp.sock".into(), "/t/berth.sock".into()];
        let line = strings(&c.args()).join(" ");
        assert!(
            line.contains(
                " -nic none -chardev socket,id=console,path=/t/con,,sole.sock,server=on,wait=off \
                 -serial chardev:console "
            ),
            "{line}"
        );
        assert!(
            line.ends_with(
                " -chardev socket,id=qmp,path=/t/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control \
                 -chardev socket,id=qmp1,path=/t/berth.sock,server=on,wait=off -mon chardev=qmp1,mode=control \
                 -chardev socket,id=hmp,path=/t/mon.sock,server=on,wait=off -mon chardev=hmp,mode=readline"
            ),
            "{line}"
        );
        assert!(!line.contains("stdio"), "{line}");
    }

    #[test]
    fn disk_bus_names_and_the_platforms_device_sets() {
        use crate::platform::Platform;
        for bus in [DiskBus::VirtioBlk, DiskBus::VirtioScsi, DiskBus::Nvme] {
            assert_eq!(bus.as_str().parse::<DiskBus>().unwrap(), bus);
        }
        let e = "sata".parse::<DiskBus>().unwrap_err().to_string();
        assert!(e.contains("\"sata\"") && e.contains("virtio-blk, virtio-scsi or nvme"), "{e}");
        assert_eq!(DiskBus::for_platform(Platform::Qemu), DiskBus::VirtioBlk);
        assert_eq!(DiskBus::for_platform(Platform::VagrantLibvirt), DiskBus::VirtioBlk);
        assert_eq!(DiskBus::for_platform(Platform::Virtualbox), DiskBus::VirtioScsi);
        assert_eq!(DiskBus::for_platform(Platform::VagrantVirtualbox), DiskBus::VirtioScsi);
        assert_eq!(DiskBus::for_platform(Platform::Metal), DiskBus::Nvme);
    }

    #[test]
    fn guest_forwards_reach_only_loopback_from_the_user_network() {
        let ok = |s: &str| s.parse::<LocalGuestForward>().unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            ok("10.0.2.100:80=127.0.0.1:8080"),
            LocalGuestForward { addr: Ipv4Addr::new(10, 0, 2, 100), port: 80, host_port: 8080 }
        );
        assert_eq!(ok("10.0.2.4:443=localhost:8443").host_port, 8443);
        for (bad, why) in [
            ("10.0.2.100:80=192.168.1.5:8080", "is not 127.0.0.1 or localhost"),
            ("10.0.2.100:80=0.0.0.0:8080", "is not 127.0.0.1 or localhost"),
            ("10.0.2.100:80=example.org:80", "is not 127.0.0.1 or localhost"),
            ("10.0.2.100:80=8080", "no ':' before the host port"),
            ("10.0.2.100:80", "no '='"),
            ("10.0.2.100=127.0.0.1:8080", "no ':' before the guest port"),
            ("10.0.3.1:80=127.0.0.1:8080", "not a host address of QEMU's user network"),
            ("10.0.2.255:80=127.0.0.1:8080", "not a host address"),
            ("10.0.2.2:80=127.0.0.1:8080", "the gateway to the host"),
            ("10.0.2.3:53=127.0.0.1:5353", "the DNS server"),
            ("10.0.2.15:80=127.0.0.1:8080", "the guest's own address"),
            ("host:80=127.0.0.1:8080", "not an IPv4 address"),
            ("10.0.2.100:0=127.0.0.1:8080", "guest port 0"),
            ("10.0.2.100:80=127.0.0.1:99999", "host port \"99999\" is not a number"),
        ] {
            let e = bad.parse::<LocalGuestForward>().unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains(bad) && e.contains("GUESTADDR:PORT=127.0.0.1:HOSTPORT"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn commas_in_paths_are_doubled_inside_options() {
        let c = QemuConfig::new(&fw(), "/a,b/vars.fd", "/x,y/disk.img", DiskFormat::Raw);
        let args = strings(&c.args());
        assert!(args.contains(&"if=pflash,format=raw,file=/a,,b/vars.fd".to_string()), "{args:?}");
        assert!(args.contains(&"file=/x,,y/disk.img,if=virtio,format=raw".to_string()), "{args:?}");
    }

    #[test]
    fn forwards_parse_and_reject_with_the_reason() {
        assert_eq!("2222:22".parse::<Forward>().unwrap(), Forward { host: 2222, guest: 22 });
        assert_eq!("65535:1".parse::<Forward>().unwrap(), Forward { host: 65535, guest: 1 });
        for (bad, why) in [
            ("22", "no ':'"),
            ("0:22", "port 0"),
            ("2222:0", "port 0"),
            ("65536:22", "not a number"),
            ("a:22", "not a number"),
            ("127.0.0.1:2222:22", "not a number"),
            (":22", "not a number"),
        ] {
            let e = bad.parse::<Forward>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad) && e.contains("HOST:GUEST"), "{bad}: {e}");
        }
    }

    #[test]
    fn format_from_magic_bytes() {
        assert_eq!(DiskFormat::from_header(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::from_header(b"QFI"), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_header(&[0; 512]), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_header(b""), DiskFormat::Raw);

        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let r = dir.path().join("r");
        std::fs::write(&r, [0u8; 2]).unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(&r).unwrap(), DiskFormat::Raw);
        let missing = DiskFormat::detect(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        let not_file = DiskFormat::detect(dir.path()).unwrap_err().to_string();
        assert!(not_file.contains("not a regular file"), "{not_file}");

        assert_eq!("qcow2".parse::<DiskFormat>().unwrap(), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::from_header(b"KDMV\x03\0\0\0"), DiskFormat::Vmdk);
        assert_eq!("vmdk".parse::<DiskFormat>().unwrap(), DiskFormat::Vmdk);
        assert!("vdi".parse::<DiskFormat>().unwrap_err().to_string().contains("raw, qcow2 or vmdk"));
    }

    #[test]
    fn firmware_is_the_first_complete_pair() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for n in ["code1", "code2", "vars2", "vars3"] {
            std::fs::write(p(n), b"fw").unwrap();
        }
        // Pair 1 lacks its vars, pair 3 its code: pair 2 is chosen.
        let fw =
            Firmware::find_in(&[(p("code1"), p("vars1")), (p("code2"), p("vars2")), (p("code3"), p("vars3"))]).unwrap();
        assert_eq!(fw, Firmware { code: p("code2"), vars_template: p("vars2") });

        let e = Firmware::find_in(&[(p("code3"), p("vars3"))]).unwrap_err().to_string();
        assert!(e.contains("code3") && e.contains("install the Debian package ovmf"), "{e}");
        assert!(Firmware::new(p("code2"), p("missing")).unwrap_err().to_string().contains("missing"));
    }

    #[test]
    fn vars_copy_is_writable_even_from_a_read_only_template() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("VARS.fd");
        std::fs::write(&template, b"vars").unwrap();
        std::fs::set_permissions(&template, std::fs::Permissions::from_mode(0o444)).unwrap();
        let fw = Firmware::new(dir.path().join("VARS.fd"), &template).unwrap();
        let copy = dir.path().join("copy.fd");
        fw.copy_vars(&copy).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"vars");
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn overlay_names_its_base_and_format() {
        let args = overlay_args(Path::new("/imgs/disk.img"), DiskFormat::Raw, Path::new("/t/o.qcow2"));
        assert_eq!(strings(&args), ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/imgs/disk.img", "/t/o.qcow2"]);
    }

    #[test]
    fn command_line_quotes_only_what_a_shell_would_split() {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-m", "768", "-netdev", "user,id=n0,guestfwd=tcp:10.0.2.100:80-cmd:nc x 1", "it's"]);
        assert_eq!(
            command_line(&cmd),
            r"qemu-system-x86_64 -m 768 -netdev 'user,id=n0,guestfwd=tcp:10.0.2.100:80-cmd:nc x 1' 'it'\''s'"
        );
    }
}
