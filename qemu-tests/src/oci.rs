//! A container image for the tests to run, built here rather than pulled: the guest has no
//! route to any registry (`restrict=on`). The image is an OCI image layout in one tar file
//! (what `ctr image import` reads): `oci-layout`, `index.json` naming the image with the
//! `org.opencontainers.image.ref.name` annotation, and under `blobs/sha256/` the manifest, the
//! config and one gzip layer. The root filesystem is Debian's statically linked busybox with a
//! link per applet the tests use, fetched through berth-debian from the host's apt sources
//! exactly as `berth build` fetches packages.
//!
//! Every byte follows from the inputs (entries, times and owners fixed, the gzip header without
//! a name or time), so the same busybox gives the same archive and the same digests.

use std::io::Write;
use std::path::Path;

use berth_debian::deb::{DebFile, EntryKind as DebEntry};
use berth_debian::{Archive, ArchiveConfig};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The Debian package whose `/bin/busybox` is the image's root.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The applets linked in `/bin` (besides `busybox` itself).
pub const BUSYBOX_APPLETS: &[&str] =
    &["sh", "echo", "cat", "sleep", "ls", "ps", "id", "true", "false", "mkdir", "grep", "wc", "env", "hostname"];

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("the Debian archive (host apt sources, cache {cache}): {source}")]
    Archive {
        cache: String,
        #[source]
        source: Box<berth_debian::ArchiveError>,
    },
    #[error("{deb}: {source}")]
    Deb {
        deb: String,
        #[source]
        source: Box<berth_debian::deb::DebError>,
    },
    #[error("{0}")]
    Content(String),
    #[error("writing the {what}: {source}")]
    Write {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One entry of the layer, relative to the container's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Without a leading `/`; directories without a trailing one.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub kind: LayerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// The image layout archive and what names it.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The name `ctr image import` gives the image (the index's ref.name annotation).
    pub reference: String,
    /// The tar file.
    pub archive: Vec<u8>,
    /// `sha256:…` of the manifest, the config, the gzip layer, and the layer's uncompressed tar
    /// (its diff ID, which the config lists).
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub diff_id: String,
}

/// Debian's static busybox binary.
#[derive(Debug, Clone)]
pub struct Busybox {
    pub binary: Vec<u8>,
    /// The package version.
    pub version: String,
    /// The binary's mtime in the package, used for every time in the image.
    pub mtime: i64,
}

/// Fetches [`BUSYBOX_PACKAGE`] from the Debian sources named under `apt_root`'s `etc/apt` (`/`
/// on a build host) into `cache_dir` (downloading only what is not cached, signatures and
/// hashes checked) and takes `/bin/busybox` out of it.
pub fn fetch_busybox(apt_root: &Path, cache_dir: &Path) -> Result<Busybox, OciError> {
    let archive_err = |source| OciError::Archive { cache: cache_dir.display().to_string(), source: Box::new(source) };
    let mut config = ArchiveConfig::new(apt_root, cache_dir);
    config.progress = false;
    let archive = Archive::open(&config).map_err(archive_err)?;
    let wanted: Vec<_> = archive
        .resolve(&[BUSYBOX_PACKAGE])
        .map_err(archive_err)?
        .into_iter()
        .filter(|p| p.name == BUSYBOX_PACKAGE)
        .collect();
    let fetched = archive.fetch(&wanted).map_err(archive_err)?;
    let deb = fetched.first().ok_or_else(|| OciError::Content(format!("{BUSYBOX_PACKAGE} did not resolve")))?;
    let name = deb.path.display().to_string();
    let file =
        DebFile::open(&deb.path).map_err(|source| OciError::Deb { deb: name.clone(), source: Box::new(source) })?;
    let data = file.read_data().map_err(|source| OciError::Deb { deb: name.clone(), source: Box::new(source) })?;
    // bookworm ships /bin/busybox; a merged-/usr package would say usr/bin/busybox.
    let entry = (data.entries.iter())
        .find(|e| matches!(e.path.as_slice(), b"bin/busybox" | b"usr/bin/busybox"))
        .ok_or_else(|| OciError::Content(format!("{name}: no bin/busybox in {BUSYBOX_PACKAGE}")))?;
    let DebEntry::File(bytes) = &entry.kind else {
        return Err(OciError::Content(format!("{name}: bin/busybox is not a regular file: {:?}", entry.kind)));
    };
    Ok(Busybox { binary: bytes.to_vec(), version: deb.version.clone(), mtime: entry.meta.mtime })
}

/// The root filesystem: `/bin/busybox`, a link per [`BUSYBOX_APPLETS`] entry, and the empty
/// directories a runtime mounts over.
pub fn busybox_rootfs(busybox: &[u8]) -> Vec<LayerEntry> {
    let dir = |p: &str, mode| LayerEntry { path: p.into(), mode, kind: LayerKind::Dir };
    let mut entries = vec![dir("bin", 0o755)];
    entries.push(LayerEntry { path: "bin/busybox".into(), mode: 0o755, kind: LayerKind::File(busybox.to_vec()) });
    for applet in BUSYBOX_APPLETS {
        entries.push(LayerEntry {
            path: format!("bin/{applet}"),
            mode: 0o777,
            kind: LayerKind::Symlink("busybox".into()),
        });
    }
    entries.extend([dir("dev", 0o755), dir("etc", 0o755), dir("proc", 0o555), dir("sys", 0o555)]);
    entries.push(dir("tmp", 0o1777));
    entries
}

/// [`fetch_busybox`] from the host's apt sources into berth's default cache, made into an
/// image named `reference`.
pub fn busybox_image(reference: &str) -> Result<OciImage, OciError> {
    let cache = berth_builder::build::default_cache_dir().map_err(|e| OciError::Content(format!("{e:#}")))?;
    let busybox = fetch_busybox(Path::new("/"), &cache)?;
    image_archive(reference, &busybox_rootfs(&busybox.binary), busybox.mtime.max(0) as u64)
}

/// The OCI image layout tar for a one-layer linux/amd64 image of `entries`, every time in it
/// `mtime`, run with `/bin/sh` by default.
pub fn image_archive(reference: &str, entries: &[LayerEntry], mtime: u64) -> Result<OciImage, OciError> {
    let layer_tar = layer(entries, mtime)?;
    let diff_id = digest(&layer_tar);
    let layer_gz = gzip(&layer_tar)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = to_json(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER_GZIP, &layer_gz)],
    });
    let manifest = to_json(&manifest)?;
    let mut manifest_desc = descriptor(MEDIA_MANIFEST, &manifest);
    manifest_desc["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": reference });
    let index = to_json(&json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest_desc] }))?;

    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: &LayerKind, mode| append(&mut out, path, mode, kind, mtime);
    add("oci-layout", &LayerKind::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()), 0o644)?;
    add("index.json", &LayerKind::File(index), 0o644)?;
    add("blobs", &LayerKind::Dir, 0o755)?;
    add("blobs/sha256", &LayerKind::Dir, 0o755)?;
    // Blobs by name, so the order does not depend on what they hold.
    let mut blobs = [(digest(&manifest), manifest), (digest(&config), config.clone()), (digest(&layer_gz), layer_gz)];
    let (manifest_digest, config_digest, layer_digest) = (blobs[0].0.clone(), blobs[1].0.clone(), blobs[2].0.clone());
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (d, bytes) in blobs {
        let hex = d.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), &LayerKind::File(bytes), 0o644)?;
    }
    let archive = out.into_inner().map_err(|source| OciError::Write { what: "image archive", source })?;
    Ok(OciImage { reference: reference.to_string(), archive, manifest_digest, config_digest, layer_digest, diff_id })
}

/// The layer's uncompressed tar.
fn layer(entries: &[LayerEntry], mtime: u64) -> Result<Vec<u8>, OciError> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut b, &e.path, e.mode, &e.kind, mtime)?;
    }
    b.into_inner().map_err(|source| OciError::Write { what: "layer", source })
}

/// One ustar entry owned by root, with nothing from the host in its header.
fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, kind: &LayerKind, mtime: u64) -> Result<(), OciError> {
    let write = |source| OciError::Write { what: "tar entry", source };
    let mut h = tar::Header::new_ustar();
    let name = match kind {
        LayerKind::Dir => format!("{path}/"),
        _ => path.to_string(),
    };
    h.set_path(&name).map_err(write)?;
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    let data: &[u8] = match kind {
        LayerKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            &[]
        }
        LayerKind::File(bytes) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(bytes.len() as u64);
            bytes
        }
        LayerKind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_link_name(target).map_err(write)?;
            &[]
        }
    };
    h.set_cksum();
    b.append(&h, data).map_err(write)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, OciError> {
    let write = |source| OciError::Write { what: "gzip layer", source };
    // No file name and time 0 in the header: the output depends on the bytes alone.
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).map_err(write)?;
    gz.finish().map_err(write)
}

/// `sha256:<hex>`.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!("sha256:{}", d.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest(blob), "size": blob.len() })
}

fn to_json(v: &serde_json::Value) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(v).map_err(|e| OciError::Content(format!("serializing JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::process::Command;

    use super::*;

    const REF: &str = "localhost/berth/busybox:test";

    fn fake_rootfs() -> Vec<LayerEntry> {
        busybox_rootfs(b"\x7fELF not really busybox")
    }

    /// Path to (entry type, link target, data, mode) for every entry of a tar.
    type Listing = BTreeMap<String, (tar::EntryType, Option<String>, Vec<u8>, u32)>;

    /// A tar's [`Listing`], read with the tar crate.
    fn entries(tar_bytes: &[u8]) -> Listing {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let (kind, mode) = (e.header().entry_type(), e.header().mode().unwrap());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, (kind, link, data, mode));
        }
        out
    }

    fn blob<'a>(all: &'a Listing, digest: &str) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap());
        let bytes = &all.get(&path).unwrap_or_else(|| panic!("no {path}")).2;
        assert_eq!(super::digest(bytes), digest, "{path} does not hash to its name");
        bytes
    }

    #[test]
    fn layout_index_manifest_config_and_layer_agree() {
        let img = image_archive(REF, &fake_rootfs(), 1_700_000_000).unwrap();
        let all = entries(&img.archive);
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        assert_eq!(names.len(), 7, "{names:?}");
        assert!(names.contains(&"oci-layout") && names.contains(&"index.json") && names.contains(&"blobs/sha256/"));
        let layout: serde_json::Value = serde_json::from_slice(&all["oci-layout"].2).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");

        let index: serde_json::Value = serde_json::from_slice(&all["index.json"].2).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], REF);
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(m["digest"], img.manifest_digest.as_str());
        let manifest_bytes = blob(&all, &img.manifest_digest);
        assert_eq!(m["size"], manifest_bytes.len());

        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
        let config_bytes = blob(&all, &img.config_digest);
        assert_eq!(manifest["config"]["size"], config_bytes.len());
        let layer_desc = &manifest["layers"][0];
        assert_eq!(layer_desc["digest"], img.layer_digest.as_str());
        assert_eq!(layer_desc["mediaType"], MEDIA_LAYER_GZIP);
        let gz = blob(&all, &img.layer_digest);
        assert_eq!(layer_desc["size"], gz.len());

        // The config's diff ID is the uncompressed layer's digest.
        let mut layer_tar = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut layer_tar).unwrap();
        let config: serde_json::Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer_tar).as_str());
        assert_eq!(digest(&layer_tar), img.diff_id);
        assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("amd64"), Some("linux")));

        let layer = entries(&layer_tar);
        assert_eq!(layer["bin/busybox"].2, b"\x7fELF not really busybox");
        assert_eq!(layer["bin/busybox"].3, 0o755);
        for applet in BUSYBOX_APPLETS {
            let (kind, link, _, _) = &layer[&format!("bin/{applet}")];
            assert_eq!((*kind, link.as_deref()), (tar::EntryType::Symlink, Some("busybox")), "bin/{applet}");
        }
        assert_eq!(layer["tmp/"].0, tar::EntryType::Directory);
        assert_eq!(layer["tmp/"].3, 0o1777);
    }

    #[test]
    fn same_inputs_same_bytes() {
        let a = image_archive(REF, &fake_rootfs(), 1_700_000_000).unwrap();
        let b = image_archive(REF, &fake_rootfs(), 1_700_000_000).unwrap();
        assert_eq!(a.archive, b.archive);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        let later = image_archive(REF, &fake_rootfs(), 1_700_000_001).unwrap();
        assert_ne!(a.layer_digest, later.layer_digest, "the time is part of the layer");
        let other = image_archive("localhost/berth/other:test", &fake_rootfs(), 1_700_000_000).unwrap();
        assert_eq!(a.manifest_digest, other.manifest_digest, "the name is only in the index");
        assert_ne!(a.archive, other.archive);
    }

    /// GNU tar, an independent reader, lists the same entries with root owners and the time.
    #[test]
    fn gnu_tar_reads_the_layout_and_the_layer() {
        let img = image_archive(REF, &fake_rootfs(), 1_700_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image.tar");
        std::fs::write(&file, &img.archive).unwrap();
        let out = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(&file).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8(out.stdout).unwrap();
        assert_eq!(list.lines().count(), 7, "{list}");
        assert!(list.lines().all(|l| l.contains(" 0/0 ") && l.contains("2023-11-14")), "{list}");
        let out = Command::new("tar").arg("-xf").arg(&file).arg("-C").arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let layer = dir.path().join("blobs/sha256").join(img.layer_digest.trim_start_matches("sha256:"));
        let out = Command::new("tar").args(["-tzf"]).arg(&layer).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let list = String::from_utf8(out.stdout).unwrap();
        for want in ["bin/", "bin/busybox", "bin/sh", "bin/sleep", "bin/cat", "proc/", "tmp/"] {
            assert!(list.lines().any(|l| l == want), "{want} missing from:\n{list}");
        }
    }

    /// The real busybox from the host's apt sources (downloads it once into berth's cache).
    #[test]
    fn debian_busybox_is_a_static_binary_in_a_small_image() {
        let img = busybox_image(REF).unwrap_or_else(|e| panic!("{e}"));
        let cache = berth_builder::build::default_cache_dir().unwrap();
        let bb = fetch_busybox(Path::new("/"), &cache).unwrap();
        assert!(bb.binary.starts_with(b"\x7fELF"), "not an ELF file");
        // Statically linked: no program interpreter (PT_INTERP) in the program headers.
        let phoff = u64::from_le_bytes(bb.binary[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (
            u16::from_le_bytes(bb.binary[0x36..0x38].try_into().unwrap()) as usize,
            u16::from_le_bytes(bb.binary[0x38..0x3a].try_into().unwrap()) as usize,
        );
        let interp = (0..phnum).any(|i| {
            let at = phoff + i * phentsize;
            u32::from_le_bytes(bb.binary[at..at + 4].try_into().unwrap()) == 3
        });
        assert!(!interp, "{BUSYBOX_PACKAGE} {} has a program interpreter", bb.version);
        let size = img.archive.len();
        assert!((256 << 10..4 << 20).contains(&size), "image archive of {size} bytes");
        assert_eq!(busybox_image(REF).unwrap().archive, img.archive, "not reproducible");
        eprintln!("{BUSYBOX_PACKAGE} {}: image {} KiB, manifest {}", bb.version, size >> 10, img.manifest_digest);
    }
}
