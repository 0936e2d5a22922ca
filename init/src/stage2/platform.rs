//! The platform this machine runs on (docs/design.md §8): the word the artifact put in
//! `berth/platform` on the ESP, else what SMBIOS (`/sys/class/dmi/id`) says, else `metal`.
//! `berth_metadata::platform::detect` is the one judge (`berth-metadata platform` asks it the
//! same question); stage 2 reads the ESP for it with the ESP provisioning source's read-only FAT
//! reader, logs the answer once (a declared word that SMBIOS contradicts, loudly) and writes the
//! word to [`PLATFORM_RUN_FILE`], where `berth-metadata fetch` and `berthctl status` find it.

use std::path::{Path, PathBuf};

pub use berth_metadata::platform::PLATFORM_RUN_FILE;
use berth_metadata::platform::{DMI_DIR, How};
use berth_slot::platform::PLATFORM_FILE;

use super::provision::esp;

/// `berth/platform` holds one word; anything longer is not read.
const MAX_WORD: u64 = 64;

/// Detects the platform on the machine and records it; returns the lines to log.
pub fn run() -> Vec<String> {
    detect_in(esp::device(), Path::new(DMI_DIR), Path::new(PLATFORM_RUN_FILE))
}

/// [`run`] with the ESP's device (or why there is none), the SMBIOS directory and the file to
/// write given.
pub fn detect_in(esp_device: Result<PathBuf, String>, dmi: &Path, run_file: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let word = match esp_device.and_then(|device| esp_word(&device)) {
        Ok(word) => word,
        Err(why) => {
            lines.push(format!("platform: ESP {PLATFORM_FILE}: {why}; asking SMBIOS"));
            None
        }
    };
    let detected = berth_metadata::platform::detect(word.as_deref(), dmi);
    let name = detected.platform.name();
    let how = match detected.how {
        How::EspWord => "ESP berth/platform",
        How::Smbios => "SMBIOS",
        How::Default => "default: neither the ESP nor SMBIOS names one",
    };
    lines.push(format!("platform: {name} ({how})"));
    if let Some(m) = &detected.mismatch {
        lines.push(format!("platform: WARNING: {m}"));
    }
    if let Err(e) = write_word(run_file, name) {
        lines.push(format!("platform: writing {}: {e}", run_file.display()));
    }
    lines
}

/// The word in `berth/platform` on the FAT filesystem on `device`, surrounding whitespace
/// removed; `None` when there is no such file or it is empty.
pub fn esp_word(device: &Path) -> Result<Option<String>, String> {
    let Some(bytes) = esp::read_file(device, PLATFORM_FILE, MAX_WORD)? else {
        return Ok(None);
    };
    if bytes.len() as u64 > MAX_WORD {
        return Err(format!("larger than {MAX_WORD} bytes; not one platform word"));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8 ({e})"))?;
    let word = text.trim();
    Ok((!word.is_empty()).then(|| word.to_string()))
}

/// Replaces `path` with `word` and a newline, 0644, through a temporary file and a rename.
/// Nothing but PID 1 writes its directory (`/run/berth`, root's, 0755), and nothing runs yet.
pub fn write_word(path: &Path, word: &str) -> std::io::Result<()> {
    super::identity::write_atomically(path, format!("{word}\n").as_bytes())
}

#[cfg(test)]
mod tests;
