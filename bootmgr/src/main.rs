//! `berth-bootmgr` (`EFI/BOOT/BOOTX64.EFI`): the UEFI boot manager of a Berth disk.
//!
//! It will read the GPT of its own disk, pick slot A or B with `berth-slot`'s selection, write
//! the spent try back, and start that slot's kernel (DESIGN.md §3). Until the boot chain lands
//! it reports its version and hands control back to the firmware, so a disk carrying it is
//! never a boot loop.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod efi {
    use uefi::prelude::*;

    #[entry]
    fn main() -> Status {
        if uefi::helpers::init().is_err() {
            return Status::ABORTED;
        }
        let fresh = berth_slot::Slots::FRESH;
        uefi::println!("berth-bootmgr {}: fresh disk state {}", env!("CARGO_PKG_VERSION"), fresh);
        uefi::println!("berth-bootmgr: booting a slot is not implemented yet; returning to firmware");
        boot::stall(core::time::Duration::from_secs(3));
        Status::UNSUPPORTED
    }
}

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("berth-bootmgr is a UEFI application: cargo build -p berth-bootmgr --target x86_64-unknown-uefi");
    std::process::exit(2);
}
