//! The Berth image builder library: everything `berth` does, as functions.
//!
//! It owns the image definitions ([`definition`]), the build pipeline ([`build`]), the
//! disk-level formats that surround the root filesystem (the GPT disk, the FAT32 ESP, the
//! initramfs cpio archive) and the release repository ([`publish`]). The ext4 writer is its own
//! crate (`berth-ext4`); the A/B contract lives in `berth-slot`. [`qemu`]
//! is the one place that knows how to boot a disk in QEMU (`berth run` and the QEMU tests).

pub mod agent_units;
pub mod build;
pub mod cpio;
pub mod definition;
pub mod disk;
pub mod enablement;
pub mod esp;
pub mod export;
pub mod inspect;
pub mod kernel;
pub mod keys;
pub mod ovf;
pub mod platform;
pub mod publish;
pub mod publish_s3;
pub mod qemu;
pub mod service_units;
pub mod size;
pub mod system;
pub mod tar;
pub mod umask;
pub mod vmdk;
