//! Kernel uevents as the `NETLINK_KOBJECT_UEVENT` socket delivers them: a header
//! `ACTION@DEVPATH` and `KEY=VALUE` fields, each NUL-terminated. Messages re-broadcast by udev
//! (`libudev` header, another group) are not the kernel's and are rejected.

use std::collections::BTreeMap;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online`, `offline`.
    pub action: String,
    /// The sysfs path below `/sys` (`/devices/pci0000:00/...`).
    pub devpath: String,
    /// Every `KEY=VALUE` field (`SUBSYSTEM`, `MODALIAS`, `DEVNAME`, `DEVTYPE`, `PARTN`, ...).
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    /// Parses one message; `None` if it is not a kernel uevent.
    pub fn parse(msg: &[u8]) -> Option<Uevent> {
        let mut parts = msg.split(|&b| b == 0).filter(|p| !p.is_empty());
        let header = std::str::from_utf8(parts.next()?).ok()?;
        let (action, devpath) = header.split_once('@')?;
        if action.is_empty() || !devpath.starts_with('/') {
            return None;
        }
        let mut vars = BTreeMap::new();
        for p in parts {
            let Ok(field) = std::str::from_utf8(p) else { continue };
            if let Some((k, v)) = field.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        // The fields repeat the header; a message whose fields disagree with it is malformed.
        if vars.get("ACTION").is_some_and(|a| a != action) || vars.get("DEVPATH").is_some_and(|d| d != devpath) {
            return None;
        }
        Some(Uevent { action: action.to_owned(), devpath: devpath.to_owned(), vars })
    }

    /// The field `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// Parses a sysfs `uevent` file (`KEY=VALUE` lines) into fields.
    pub fn file_vars(text: &str) -> BTreeMap<String, String> {
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_messages() {
        let msg = b"add@/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2\0ACTION=add\0\
DEVPATH=/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2\0SUBSYSTEM=virtio\0\
MODALIAS=virtio:d00000004v00001AF4\0SEQNUM=2345\0";
        let e = Uevent::parse(msg).unwrap();
        assert_eq!(e.action, "add");
        assert_eq!(e.devpath, "/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2");
        assert_eq!(e.get("SUBSYSTEM"), Some("virtio"));
        assert_eq!(e.get("MODALIAS"), Some("virtio:d00000004v00001AF4"));
        assert_eq!(e.get("SEQNUM"), Some("2345"));
        assert_eq!(e.get("DEVNAME"), None);

        let part = b"remove@/devices/virtual/block/loop0/loop0p1\0ACTION=remove\0\
DEVPATH=/devices/virtual/block/loop0/loop0p1\0SUBSYSTEM=block\0MAJOR=259\0MINOR=0\0DEVNAME=loop0p1\0\
DEVTYPE=partition\0DISKSEQ=9\0PARTN=1\0PARTNAME=ROOT-A\0SEQNUM=7\0";
        let e = Uevent::parse(part).unwrap();
        assert_eq!((e.action.as_str(), e.get("DEVTYPE"), e.get("PARTN")), ("remove", Some("partition"), Some("1")));
        assert_eq!(e.get("PARTNAME"), Some("ROOT-A"));
    }

    #[test]
    fn not_kernel_messages() {
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(Uevent::parse(b""), None);
        assert_eq!(Uevent::parse(b"add\0ACTION=add\0"), None);
        assert_eq!(Uevent::parse(b"add@/devices/x\0ACTION=remove\0"), None);
        assert_eq!(Uevent::parse(b"add@/devices/x\0DEVPATH=/devices/y\0"), None);
    }

    #[test]
    fn sysfs_uevent_file() {
        let v =
            Uevent::file_vars("MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=EFI system\n");
        assert_eq!(v.get("PARTNAME").map(String::as_str), Some("EFI system"));
        assert_eq!(v.get("PARTN").map(String::as_str), Some("1"));
    }
}
