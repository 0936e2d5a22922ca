//! Where the files of a release repository live (docs/design.md §4).
//!
//! ```text
//! keys/<N>.json                  key set version N (crate::keyset): the signing keys, signed by the root keys
//! keys/<N>.json.sig              its detached signatures (the same format as an index's)
//! channels/<channel>.json        the index, signed by the signing keys of the newest key set
//! channels/<channel>.json.sig
//! releases/<version>/…           root.img.zst, vmlinuz, initrd.img
//! ```

/// `channels/<channel>.json`, from the repository root.
pub fn index_path(channel: &str) -> String {
    format!("channels/{channel}.json")
}

/// `channels/<channel>.json.sig`, from the repository root.
pub fn signature_path(channel: &str) -> String {
    format!("channels/{channel}.json.sig")
}

/// The signature file's URL: the index's URL with `.sig` appended.
pub fn signature_url(index_url: &str) -> String {
    format!("{index_url}.sig")
}

/// The directory of the key sets, from the repository root.
pub const KEYSET_DIR: &str = "keys";

/// `keys/<version>.json`, from the repository root: every version stays, so that a host that
/// missed some can walk the chain of root signatures from the one it trusts.
pub fn keyset_path(version: u64) -> String {
    format!("{KEYSET_DIR}/{version}.json")
}

/// `keys/<version>.json.sig`, from the repository root.
pub fn keyset_signature_path(version: u64) -> String {
    format!("{KEYSET_DIR}/{version}.json.sig")
}

/// The version of a key set file's name (`7.json` → 7); `None` for any other name.
pub fn keyset_version(file_name: &str) -> Option<u64> {
    let n = file_name.strip_suffix(".json")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0')).then(|| n.parse().ok())?
}

/// The directory of a release's artifacts, from the repository root.
pub fn release_dir(version: &str) -> String {
    format!("releases/{version}")
}

/// File names inside a release directory.
pub const ROOT_FILE: &str = "root.img.zst";
/// The root's frame list (berth_release::index::FrameList), beside it.
pub const FRAMES_FILE: &str = "root.img.zst.frames";
/// The kernel's file name, in a release directory and in `berth/<slot>/` on the ESP.
pub const VMLINUZ_FILE: &str = "vmlinuz";
/// The initramfs' file name, in a release directory and in `berth/<slot>/` on the ESP.
pub const INITRD_FILE: &str = "initrd.img";

/// The repository root's URL, from an index URL ending in `channels/<channel>.json`, and the
/// channel's name; `None` if the URL does not end so.
pub fn split_index_url(index_url: &str) -> Option<(&str, &str)> {
    let (base, file) = index_url.rsplit_once("/channels/")?;
    let channel = file.strip_suffix(".json")?;
    (!channel.is_empty() && !channel.contains('/')).then_some((base, channel))
}

/// The URL of `path` (an artifact path from the index) in the repository at `base`.
pub fn artifact_url(base: &str, path: &str) -> String {
    format!("{}/{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(split_index_url("http://10.0.2.100/channels/stable.json"), Some(("http://10.0.2.100", "stable")));
        assert_eq!(split_index_url("https://h/x/channels/beta.json"), Some(("https://h/x", "beta")));
        assert_eq!(split_index_url("https://h/stable.json"), None);
        assert_eq!(artifact_url("http://h/", "releases/1/vmlinuz"), "http://h/releases/1/vmlinuz");
        assert_eq!(signature_url("http://h/channels/s.json"), "http://h/channels/s.json.sig");
        assert_eq!(artifact_url("http://h", &keyset_path(3)), "http://h/keys/3.json");
        assert_eq!(keyset_version("12.json"), Some(12));
        assert_eq!([keyset_version("012.json"), keyset_version("0.json"), keyset_version("x.json")], [None; 3]);
    }
}
