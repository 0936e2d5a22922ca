//! STATE at boot (interim: found by partition number on the root's disk, created when empty;
//! growing comes with the full version).

use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_slot::layout::{STATE_LABEL, STATE_PARTITION};

pub struct Prepared {
    pub device: PathBuf,
    lines: Vec<String>,
}

impl Prepared {
    pub fn report(&self) -> Vec<String> {
        self.lines.clone()
    }
}

pub fn prepare(root_partition: &Path) -> Result<Prepared, String> {
    let name = root_partition.file_name().ok_or("no root name")?.to_string_lossy().into_owned();
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}")).map_err(|e| format!("{name}: {e}"))?;
    let disk = sys.parent().ok_or("no disk")?;
    let mut device = None;
    for e in std::fs::read_dir(disk).map_err(|e| e.to_string())?.flatten() {
        if std::fs::read_to_string(e.path().join("partition")).is_ok_and(|t| t.trim() == STATE_PARTITION.to_string()) {
            device = Some(Path::new("/dev").join(e.file_name()));
        }
    }
    let device = device.ok_or("no STATE partition")?;
    let mut lines = Vec::new();
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&device).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 2];
    file.read_exact_at(&mut magic, 1080).map_err(|e| e.to_string())?;
    if magic != [0x53, 0xEF] {
        let size =
            std::fs::read_to_string(disk.join(&*device.file_name().unwrap_or_default().to_string_lossy()).join("size"))
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u64>()
                .map_err(|e| e.to_string())?
                * 512;
        let t = Instant::now();
        let ts =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as u32;
        let opts = berth_ext4::Options::writable(STATE_LABEL, device.to_string_lossy().as_bytes(), ts, size);
        berth_ext4::write_at(
            &berth_fstree::Tree::new(berth_fstree::Metadata::root(0o755, i64::from(ts))),
            &file,
            0,
            &opts,
        )
        .map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        lines.push(format!(
            "STATE {}: created ext4 ({size} bytes) in {} ms",
            device.display(),
            t.elapsed().as_millis()
        ));
    }
    Ok(Prepared { device, lines })
}

pub fn grow_filesystem(_mount: &Path, _device: &Path) -> Result<Option<String>, String> {
    Ok(None)
}
