//! The firmware side: find our disk, read and rewrite its GPT, read the slot's files from the ESP,
//! and start the kernel.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use berth_slot::gpt::{Gpt, GptError, Header};
use berth_slot::{Decision, Slots};
use uefi::boot::{self, LoadImageSource, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol};
use uefi::fs::{FileSystem, Path};
use uefi::prelude::*;
use uefi::proto::ProtocolPointer;
use uefi::proto::device_path::{DevicePath, DeviceSubType, DeviceType};
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::block::BlockIO;
use uefi::proto::media::disk::DiskIo;
use uefi::runtime::{self, ResetType};
use uefi::{CString16, println};

use crate::{initrd, plan};

const PREFIX: &str = "berth-bootmgr";
/// How long an error stays on the console before the reset.
const ERROR_PAUSE: Duration = Duration::from_secs(5);
const SECTOR: usize = 512;

/// A failed step: what was being done and the firmware status (or a GPT problem).
struct Fail {
    what: String,
    status: Status,
    detail: Option<String>,
}

impl Fail {
    fn new(what: impl Into<String>, status: Status) -> Fail {
        Fail { what: what.into(), status, detail: None }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}", self.what, self.status)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// Adds context to a firmware result.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Fail>;
}

impl<T, D: fmt::Debug> Context<T> for uefi::Result<T, D> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Fail> {
        self.map_err(|e| Fail::new(what(), e.status()))
    }
}

fn gpt_fail(what: &str, e: GptError) -> Fail {
    Fail { what: what.to_string(), status: Status::VOLUME_CORRUPTED, detail: Some(e.to_string()) }
}

/// Why no kernel was started.
enum Stop {
    Failed(Fail),
    NoSlot(berth_slot::NoBootableSlot),
}

impl From<Fail> for Stop {
    fn from(f: Fail) -> Stop {
        Stop::Failed(f)
    }
}

#[entry]
fn main() -> Status {
    if uefi::helpers::init().is_err() {
        return Status::ABORTED;
    }
    println!("{PREFIX} {}", env!("CARGO_PKG_VERSION"));
    match run() {
        Ok(()) => println!("{PREFIX}: error: the kernel returned: {:?}", Status::LOAD_ERROR),
        Err(Stop::Failed(f)) => println!("{PREFIX}: error: {f}"),
        Err(Stop::NoSlot(e)) => println!("{PREFIX}: {e}; resetting to retry"),
    }
    println!("{PREFIX}: resetting in {} s", ERROR_PAUSE.as_secs());
    boot::stall(ERROR_PAUSE);
    runtime::reset(ResetType::COLD, Status::ABORTED, None)
}

/// Opens a protocol without taking it from drivers that use it (the ESP and its disk stay
/// connected).
fn get<P: ProtocolPointer + ?Sized>(handle: Handle) -> uefi::Result<ScopedProtocol<P>> {
    // SAFETY: GetProtocol does not disconnect anything; we only use the interface while the
    // handle exists (until the kernel starts), and do not uninstall it.
    unsafe {
        boot::open_protocol::<P>(
            OpenProtocolParams { handle, agent: boot::image_handle(), controller: None },
            OpenProtocolAttributes::GetProtocol,
        )
    }
}

/// The whole disk our ESP is on.
struct Disk {
    block: ScopedProtocol<BlockIO>,
    io: ScopedProtocol<DiskIo>,
    media_id: u32,
    last_lba: u64,
}

impl Disk {
    fn read(&self, lba: u64, len: usize) -> Result<Vec<u8>, Fail> {
        let mut buf = vec![0u8; len];
        self.io
            .read_disk(self.media_id, lba * SECTOR as u64, &mut buf)
            .context(|| format!("reading {len} bytes at LBA {lba}"))?;
        Ok(buf)
    }

    fn write(&mut self, lba: u64, data: &[u8], what: &str) -> Result<(), Fail> {
        self.io
            .write_disk(self.media_id, lba * SECTOR as u64, data)
            .context(|| format!("writing the {what} at LBA {lba}"))
    }

    fn flush(&mut self, what: &str) -> Result<(), Fail> {
        self.block.flush_blocks().context(|| format!("flushing the disk after the {what}"))
    }
}

/// Finds the disk handle: the handle with BlockIO whose device path is the ESP's without its
/// HardDrive media node, and whose media is a whole disk.
fn find_disk(esp: Handle) -> Result<Disk, Fail> {
    let path = get::<DevicePath>(esp).context(|| "opening the ESP's device path".into())?;
    let mut bytes = Vec::new();
    let mut found_partition = false;
    for node in path.node_iter() {
        if node.device_type() == DeviceType::MEDIA && node.sub_type() == DeviceSubType::MEDIA_HARD_DRIVE {
            found_partition = true;
            break;
        }
        let len = usize::from(node.length());
        // SAFETY: a node is `length` bytes long, header included.
        let raw = unsafe { core::slice::from_raw_parts(node.as_ffi_ptr().cast::<u8>(), len) };
        bytes.extend_from_slice(raw);
    }
    if !found_partition {
        return Err(Fail::new("the ESP's device path has no hard-drive (partition) node", Status::NOT_FOUND));
    }
    bytes.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    let disk_path = <&DevicePath>::try_from(bytes.as_slice())
        .map_err(|_| Fail::new("building the disk's device path", Status::ABORTED))?;
    let mut rest = disk_path;
    let handle = boot::locate_device_path::<BlockIO>(&mut rest).context(|| "locating the ESP's parent disk".into())?;
    if rest.node_iter().next().is_some() {
        return Err(Fail::new("the ESP's parent disk has no BlockIO of its own", Status::NOT_FOUND));
    }
    let block = get::<BlockIO>(handle).context(|| "opening BlockIO on the disk".into())?;
    let media = block.media();
    if media.is_logical_partition() {
        return Err(Fail::new("the ESP's parent BlockIO is a partition, not a disk", Status::NOT_FOUND));
    }
    if media.block_size() as usize != SECTOR {
        return Err(Fail::new(
            format!("the disk has {}-byte sectors, not 512", media.block_size()),
            Status::UNSUPPORTED,
        ));
    }
    let (media_id, last_lba) = (media.media_id(), media.last_block());
    let io = get::<DiskIo>(handle).context(|| "opening DiskIO on the disk".into())?;
    Ok(Disk { block, io, media_id, last_lba })
}

/// Reads and checks the primary GPT (header at LBA 1 and its entries).
fn read_primary(disk: &Disk) -> Result<Gpt, Fail> {
    let primary = disk.read(1, SECTOR)?;
    let header = Header::parse(&primary).map_err(|e| gpt_fail("primary GPT header", e))?;
    let entries = disk.read(header.entries_lba, header.entries_bytes())?;
    Gpt::parse(&primary, &entries).map_err(|e| gpt_fail("primary GPT", e))
}

/// Reads the backup GPT at the last LBA of the disk, as seen from the primary.
fn read_backup(disk: &Disk) -> Result<Gpt, Fail> {
    let sector = disk.read(disk.last_lba, SECTOR)?;
    let header = Header::parse(&sector).map_err(|e| gpt_fail("backup GPT header", e))?;
    if header.my_lba != disk.last_lba || header.alternate_lba != 1 {
        return Err(Fail {
            what: "backup GPT header".into(),
            status: Status::VOLUME_CORRUPTED,
            detail: Some(format!("claims LBA {}, other copy at {}", header.my_lba, header.alternate_lba)),
        });
    }
    let entries = disk.read(header.entries_lba, header.entries_bytes())?;
    Gpt::with_header(header, &entries).map_err(|e| gpt_fail("backup GPT", e))
}

/// Reads the primary GPT and checks the backup copy; if the primary is damaged, uses the backup
/// (both copies are rewritten from it when the slot state changes).
fn read_gpt(disk: &Disk) -> Result<Gpt, Fail> {
    let mut gpt = match read_primary(disk) {
        Ok(gpt) => gpt,
        Err(primary) => {
            println!("{PREFIX}: warning: {primary}; trying the backup GPT");
            let gpt = read_backup(disk)?;
            println!("{PREFIX}: using the backup GPT");
            return Ok(gpt);
        }
    };
    if gpt.backup_header_lba() != disk.last_lba {
        println!(
            "{PREFIX}: warning: backup GPT header at LBA {}, but the disk ends at LBA {}",
            gpt.backup_header_lba(),
            disk.last_lba
        );
    }
    let backup = disk.read(gpt.backup_header_lba(), SECTOR)?;
    if let Err(e) = gpt.check_backup(&backup) {
        println!("{PREFIX}: warning: backup GPT header: {e}; it will be rewritten if the slot state changes");
    }
    Ok(gpt)
}

/// Writes `after` to both GPT copies (backup first), flushes, and reads it back.
fn write_slots(disk: &mut Disk, gpt: &Gpt, after: Slots) -> Result<(), Fail> {
    let out = gpt.with_slots(after).map_err(|e| gpt_fail("updating the slot attributes", e))?.encode();
    disk.write(out.backup_entries_lba, &out.entries, "backup GPT entries")?;
    disk.write(out.backup_header_lba, &out.backup_header, "backup GPT header")?;
    disk.flush("backup GPT")?;
    disk.write(out.primary_entries_lba, &out.entries, "primary GPT entries")?;
    disk.write(out.primary_header_lba, &out.primary_header, "primary GPT header")?;
    disk.flush("primary GPT")?;
    let reread = read_primary(disk).map_err(|f| Fail { what: format!("re-reading the written {}", f.what), ..f })?;
    let mut check = reread.clone();
    check
        .check_backup(&disk.read(out.backup_header_lba, SECTOR)?)
        .map_err(|e| gpt_fail("re-reading the backup GPT", e))?;
    let on_disk = reread.slots().map_err(|e| gpt_fail("re-reading the slots", e))?;
    if on_disk != after {
        return Err(Fail {
            what: "verifying the GPT write".into(),
            status: Status::DEVICE_ERROR,
            detail: Some(format!("wrote {after}, read back {on_disk}")),
        });
    }
    Ok(())
}

/// Reads `path` (with `/` separators, as printed) from the ESP.
fn read_file(fs: &mut FileSystem, path: &str) -> Result<Vec<u8>, Fail> {
    let name = CString16::try_from(path.replace('/', "\\").as_str())
        .map_err(|_| Fail::new(format!("file name {path}"), Status::INVALID_PARAMETER))?;
    fs.read(Path::new(&name)).map_err(|e| {
        let status = match &e {
            uefi::fs::Error::Io(io) => io.uefi_error.status(),
            _ => Status::ABORTED,
        };
        Fail { what: format!("reading {path} from the ESP"), status, detail: Some(format!("{e}")) }
    })
}

fn run() -> Result<(), Stop> {
    let image = boot::image_handle();
    let esp = {
        let loaded = get::<LoadedImage>(image).context(|| "opening our LoadedImage".into())?;
        loaded.device().ok_or_else(|| Fail::new("our LoadedImage has no device", Status::NOT_FOUND))?
    };
    let mut disk = find_disk(esp)?;
    println!("{PREFIX}: disk: {} sectors of {SECTOR} bytes", disk.last_lba + 1);
    let gpt = read_gpt(&disk)?;
    let slots = gpt.slots().map_err(|e| gpt_fail("reading the slot attributes", e))?;
    for line in plan::slot_lines(slots) {
        println!("{PREFIX}: {line}");
    }
    let mut decision: Decision = slots.select().map_err(Stop::NoSlot)?;
    println!("{PREFIX}: {}", plan::decision_line(slots, &decision));
    if decision.must_write {
        println!(
            "{PREFIX}: writing slot {}: {} (backup GPT first, then primary)",
            plan::name(decision.slot),
            decision.attrs_after()
        );
        match write_slots(&mut disk, &gpt, decision.slots_after) {
            Ok(()) => println!("{PREFIX}: GPT updated and verified"),
            // The trial is off (its try would not count), but a successful slot can still
            // boot: better than resetting into the same failure forever.
            Err(f) => match slots.select_without_writing() {
                Ok(instead) => {
                    println!("{PREFIX}: error: {f}; not trying slot {}", plan::name(decision.slot));
                    println!(
                        "{PREFIX}: -> booting {} instead ({}): slot {}'s try cannot be recorded",
                        plan::name(instead.slot),
                        if instead.is_fallback() { "fallback" } else { "normal" },
                        plan::name(decision.slot)
                    );
                    decision = instead;
                }
                Err(_) => return Err(Stop::Failed(f)),
            },
        }
    }
    let slot = decision.slot;
    let part = gpt.slot_partition(slot).map_err(|e| gpt_fail("reading the slot partition", e))?;
    let partuuid = part.unique_guid.to_string();
    drop(disk);

    let sfs =
        get::<uefi::proto::media::fs::SimpleFileSystem>(esp).context(|| "opening the ESP's file system".into())?;
    let mut fs = FileSystem::new(sfs);
    let dir = slot.esp_dir();
    let kernel = read_file(&mut fs, &format!("{dir}/vmlinuz"))?;
    let initrd = read_file(&mut fs, &format!("{dir}/initrd.img"))?;
    let cmdline_file = read_file(&mut fs, &format!("{dir}/cmdline"))?;
    drop(fs);
    let cmdline_text = core::str::from_utf8(&cmdline_file)
        .map_err(|_| Fail::new(format!("{}/cmdline is not UTF-8", slot.esp_dir()), Status::VOLUME_CORRUPTED))?;
    let cmdline = plan::kernel_cmdline(cmdline_text, &partuuid, slot);
    println!("{PREFIX}: {}/vmlinuz ({} bytes), initrd.img ({} bytes)", slot.esp_dir(), kernel.len(), initrd.len());
    println!("{PREFIX}: command line: {cmdline}");

    initrd::install(initrd).context(|| "installing the initrd LoadFile2 protocol".into())?;
    if let Some(p) = initrd::device_path() {
        println!("{PREFIX}: initrd on LoadFile2 at {}", DisplayPath(p));
    }
    let kernel_image = boot::load_image(image, LoadImageSource::FromBuffer { buffer: &kernel, file_path: None })
        .context(|| format!("loading {}/vmlinuz", slot.esp_dir()))?;
    drop(kernel);
    let options = CString16::try_from(cmdline.as_str())
        .map_err(|_| Fail::new("the command line is not UCS-2", Status::INVALID_PARAMETER))?;
    {
        let mut loaded = get::<LoadedImage>(kernel_image).context(|| "opening the kernel's LoadedImage".into())?;
        let size = options.num_bytes();
        let size =
            u32::try_from(size).map_err(|_| Fail::new("the command line is too long", Status::BAD_BUFFER_SIZE))?;
        let leaked: &'static CString16 = alloc::boxed::Box::leak(alloc::boxed::Box::new(options));
        // SAFETY: the options are leaked, so they outlive the kernel's use of them.
        unsafe { loaded.set_load_options(leaked.as_ptr().cast::<u8>(), size) };
    }
    println!("{PREFIX}: starting the kernel of slot {}", plan::name(slot));
    boot::start_image(kernel_image).context(|| format!("starting {}/vmlinuz", slot.esp_dir()))?;
    Ok(())
}

struct DisplayPath<'a>(&'a DevicePath);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use uefi::proto::device_path::text::{AllowShortcuts, DisplayOnly};
        match self.0.to_string16(DisplayOnly(false), AllowShortcuts(false)) {
            Ok(s) => write!(f, "{s}"),
            Err(_) => f.write_str("VenMedia(5568e427-68fc-4f3d-ac74-ca555231cc68)"),
        }
    }
}
