//! `berth-init`: Berth's PID 1.
//!
//! As `/init` in the initramfs (stage 1) it will load the storage modules, wait for the root
//! partition and `switch_root` into it; as PID 1 of the root (stage 2) it will mount the API
//! filesystems and STATE, run the units and supervise, reap and shut down (DESIGN.md §3, §5).
//! It is built as a static `x86_64-unknown-linux-musl` binary so that it needs nothing from the
//! image it boots.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    if std::env::args().any(|a| a == "--version") {
        println!("berth-init {version}");
        return;
    }
    eprintln!("berth-init {version}: stage 1 and stage 2 are not implemented yet");
    std::process::exit(1);
}
