//! `berth-bootmgr` (`EFI/BOOT/BOOTX64.EFI`): the UEFI boot manager of a Berth disk.
//!
//! It reads the GPT of its own disk, picks slot A or B with `berth-slot`'s selection, writes the
//! spent try back (backup GPT first, then primary) and starts that slot's kernel from the ESP
//! with its `cmdline` plus `root=PARTUUID=… berth.slot=a|b`, handing the initrd over through the
//! LoadFile2 protocol on the LINUX_EFI_INITRD_MEDIA_GUID device path (docs/design.md §3). Every
//! decision and error goes to the console; on an error it says why, waits, and resets.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

extern crate alloc;

#[cfg_attr(not(target_os = "uefi"), allow(dead_code))]
mod plan;

#[cfg(target_os = "uefi")]
mod efi;
#[cfg(target_os = "uefi")]
mod initrd;

#[cfg(not(target_os = "uefi"))]
fn main() {
    // Keep the pure part linked (and type-checked) in host builds.
    let _ = plan::kernel_cmdline("console=ttyS0", "00000000-0000-0000-0000-000000000000", berth_slot::Slot::A);
    eprintln!("berth-bootmgr is a UEFI application: cargo build -p berth-bootmgr --target x86_64-unknown-uefi");
    std::process::exit(2);
}
