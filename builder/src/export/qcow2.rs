//! qcow2 disks, made by `qemu-img convert` (docs/design.md §6: QEMU's own tool writes QEMU's
//! format).
//!
//! The qcow2 options are spelled out (`compat=1.1`, 64 KiB clusters, no lazy refcounts, zlib
//! when compressed) so that a newer qemu-img's defaults cannot change the bytes; qcow2 has no
//! timestamps or random identifiers, and `qemu-img convert` writes clusters in order unless told
//! otherwise (`-W`), so the same raw disk gives the same file (tests/export.rs builds twice and
//! compares).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use indicatif::ProgressBar;

use crate::qemu::QEMU_IMG;

/// The options every qcow2 Berth writes gets.
const QCOW2_OPTIONS: &str = "compat=1.1,cluster_size=65536,lazy_refcounts=off,compression_type=zlib";

/// Whether clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain clusters: fastest to write and to run from (the `qemu` platform's disk).
    None,
    /// zlib-compressed clusters (`qemu-img convert -c`): a smaller file that QEMU reads as it
    /// is, for artifacts that are downloaded before use (a Vagrant box's `box.img`).
    Zlib,
}

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("running {QEMU_IMG} (from qemu-utils): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{QEMU_IMG} convert failed ({status}): {message}")]
    Failed { status: std::process::ExitStatus, message: String },
}

/// Converts the raw disk `src` to a qcow2 file at `dst` (replaced), advancing `bar` (0–100) as
/// qemu-img reports its progress.
pub fn convert(src: &Path, dst: &Path, compression: Compression, bar: &ProgressBar) -> Result<(), Qcow2Error> {
    let mut cmd = Command::new(QEMU_IMG);
    cmd.args(["convert", "-p", "-f", "raw", "-O", "qcow2", "-o", QCOW2_OPTIONS]);
    if compression == Compression::Zlib {
        cmd.arg("-c");
    }
    cmd.arg(src).arg(dst).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let spawn = Qcow2Error::Spawn;
    let mut child = cmd.spawn().map_err(spawn)?;
    let mut stderr = child.stderr.take();
    // stderr is read on its own thread so that neither pipe can fill and stall qemu-img.
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    if let Some(mut out) = child.stdout.take() {
        // `-p` prints "    (12.34/100%)" lines ended by '\r'.
        let mut buf = [0u8; 256];
        let mut line = Vec::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if b == b'\r' || b == b'\n' {
                    if let Some(pct) = percent(&line) {
                        bar.set_position(pct);
                    }
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
    }
    let status = child.wait().map_err(spawn)?;
    let message = err_reader.join().unwrap_or_default();
    if !status.success() {
        let message = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        return Err(Qcow2Error::Failed { status, message });
    }
    bar.finish_and_clear();
    Ok(())
}

/// The whole percent of a `(12.34/100%)` progress line.
fn percent(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let inner = text.strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.parse::<f64>().ok().map(|p| p.clamp(0.0, 100.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(percent(b"    (12.34/100%)"), Some(12));
        assert_eq!(percent(b"(100.00/100%)"), Some(100));
        assert_eq!(percent(b"garbage"), None);
    }
}
