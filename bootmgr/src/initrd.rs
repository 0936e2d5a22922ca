//! The initrd handed to the Linux EFI stub: a LoadFile2 protocol on a handle whose device path is
//! a single VendorMedia node with LINUX_EFI_INITRD_MEDIA_GUID. The stub locates that device path,
//! calls LoadFile with no buffer to learn the size, allocates, and calls again.

use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use alloc::vec::Vec;
use uefi::proto::device_path::DevicePath;
use uefi::{Handle, Identify, Status, boot};
use uefi_raw::Boolean;
use uefi_raw::protocol::device_path::DevicePathProtocol;
use uefi_raw::protocol::media::LoadFile2Protocol;

/// Device path: VendorMedia (type 4, subtype 3, length 20) with GUID
/// 5568e427-68fc-4f3d-ac74-ca555231cc68 (stored mixed-endian), then End Entire (7f ff 04 00).
static INITRD_DEVICE_PATH: [u8; 24] = [
    0x04, 0x03, 20, 0, // VendorMedia header
    0x27, 0xe4, 0x68, 0x55, 0xfc, 0x68, 0x3d, 0x4f, 0xac, 0x74, 0xca, 0x55, 0x52, 0x31, 0xcc, 0x68, // GUID
    0x7f, 0xff, 4, 0, // End Entire
];

static INITRD_LOAD_FILE2: LoadFile2Protocol = LoadFile2Protocol { load_file: load_initrd };

/// The initrd bytes, leaked for the lifetime of boot services.
static INITRD_PTR: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static INITRD_LEN: AtomicUsize = AtomicUsize::new(0);

unsafe extern "efiapi" fn load_initrd(
    this: *mut LoadFile2Protocol,
    file_path: *const DevicePathProtocol,
    boot_policy: Boolean,
    buffer_size: *mut usize,
    buffer: *mut c_void,
) -> Status {
    if this.is_null() || file_path.is_null() || buffer_size.is_null() {
        return Status::INVALID_PARAMETER;
    }
    // LoadFile2 never serves a boot selection.
    if bool::from(boot_policy) {
        return Status::UNSUPPORTED;
    }
    let data = INITRD_PTR.load(Ordering::Acquire);
    let len = INITRD_LEN.load(Ordering::Acquire);
    if data.is_null() {
        return Status::NOT_FOUND;
    }
    // SAFETY: the caller passes a valid `buffer_size`, checked non-null above.
    let size = unsafe { &mut *buffer_size };
    if buffer.is_null() || *size < len {
        *size = len;
        return Status::BUFFER_TOO_SMALL;
    }
    // SAFETY: `buffer` holds at least `len` bytes (checked above); `data` is the leaked initrd of
    // `len` bytes, which never overlaps a buffer the stub allocated.
    unsafe { core::ptr::copy_nonoverlapping(data, buffer.cast::<u8>(), len) };
    *size = len;
    Status::SUCCESS
}

/// Installs the initrd device path and LoadFile2 on a new handle. `initrd` is kept alive (leaked)
/// because the kernel reads it after this function returns.
pub fn install(initrd: Vec<u8>) -> uefi::Result<Handle> {
    let leaked: &'static mut [u8] = initrd.leak();
    INITRD_LEN.store(leaked.len(), Ordering::Release);
    INITRD_PTR.store(leaked.as_mut_ptr(), Ordering::Release);
    // SAFETY: both interfaces are statics matching the GUIDs they are installed under; the device
    // path bytes are a well-formed path (one node and its end).
    unsafe {
        let handle =
            boot::install_protocol_interface(None, &DevicePath::GUID, INITRD_DEVICE_PATH.as_ptr().cast::<c_void>())?;
        boot::install_protocol_interface(
            Some(handle),
            &LoadFile2Protocol::GUID,
            (&raw const INITRD_LOAD_FILE2).cast::<c_void>(),
        )?;
        Ok(handle)
    }
}

/// The initrd device path, for printing.
pub fn device_path() -> Option<&'static DevicePath> {
    <&DevicePath>::try_from(INITRD_DEVICE_PATH.as_slice()).ok()
}
