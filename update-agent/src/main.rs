//! `berth-update`: Berth's on-host update agent.
//!
//! It will check the signed channel, stream the new image into the passive slot, switch slots
//! through `berth-slot`'s transitions and roll back when the new slot fails (DESIGN.md §4).
//! Built as a static `x86_64-unknown-linux-musl` binary.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    if std::env::args().any(|a| a == "--version") {
        println!("berth-update {version}");
        return;
    }
    eprintln!("berth-update {version}: not implemented yet");
    std::process::exit(1);
}
