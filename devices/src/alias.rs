//! `modules.alias` and matching a device's `modalias` against it, as kmod does.
//!
//! Each line is `alias PATTERN MODULE`; a pattern is an fnmatch(3) glob (`*`, `?`, `[...]`
//! with ranges and `!`/`^` negation, no escapes). kmod normalises an alias before looking it
//! up, `-` becoming `_` outside brackets, and depmod does the same to the patterns it indexes
//! (the text file keeps them as the module spelled them), so both sides are normalised here.

/// The parsed `modules.alias`: patterns (normalised) and their modules, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasTable {
    entries: Vec<(String, String)>,
}

impl AliasTable {
    /// Parses `modules.alias` text; lines that are not `alias PATTERN MODULE` are skipped.
    pub fn parse(text: &str) -> AliasTable {
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_ascii_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((normalize(pattern), module.replace('-', "_")))
                    }
                    _ => None,
                }
            })
            .collect();
        AliasTable { entries }
    }

    /// How many aliases the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The modules whose patterns match `modalias`, each once, in file order.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let alias = normalize(modalias.trim());
        let mut out: Vec<&str> = Vec::new();
        for (pattern, module) in &self.entries {
            if !out.contains(&module.as_str()) && fnmatch(pattern, &alias) {
                out.push(module);
            }
        }
        out
    }
}

/// kmod's alias normalisation: `-` becomes `_` except inside `[...]`.
pub fn normalize(alias: &str) -> String {
    let mut out = String::with_capacity(alias.len());
    let mut in_class = false;
    for c in alias.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// fnmatch(3) without flags, as kmod matches aliases: the one wildcard matcher of the workspace
/// (`berth_units::condition::glob_match`: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`/`[^a]`, an
/// unclosed `[` matching itself).
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    berth_units::condition::glob_match(pattern, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(fnmatch("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(!fnmatch("virtio:d00000001v*", "virtio:d00000002v00001AF4"));
        assert!(fnmatch("a?c", "abc"));
        assert!(!fnmatch("a?c", "ac"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("a*b*c", "axxbyyc"));
        assert!(!fnmatch("a*b*c", "axxbyy"));
        assert!(fnmatch("x[0-9]y", "x5y"));
        assert!(!fnmatch("x[0-9]y", "xay"));
        assert!(fnmatch("x[!0-9]y", "xay"));
        assert!(fnmatch("x[^0-9]y", "xay"));
        assert!(fnmatch("x[]]y", "x]y"));
        assert!(fnmatch("x[ab-]y", "x-y"));
        assert!(fnmatch("x[y", "x[y"));
        assert!(fnmatch("**a", "bba"));
    }

    /// Lines of the Debian 6.1 cloud kernel's `modules.alias` (depmod's output) and modaliases
    /// as QEMU q35's devices show them in sysfs.
    const EXCERPT: &str = "\
# Aliases extracted from modules themselves.
alias acpi*:LNXPWRBN:* button
alias acpi*:PNP0C0C:* button
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000005v* virtio_balloon
alias virtio:d00000004v* virtio_rng
alias of:N*T*Cqemu,pvpanic-mmioC* pvpanic_mmio
alias acpi*:QEMU0001:* pvpanic_mmio
alias pci:v00001B36d00000011sv*sd*bc*sc*i* pvpanic_pci
alias virtio:d00000001v* virtio_net
alias xen:vif xen_netfront
alias vmbus:635161f83edfc546913ff2d2f965ed0e hv_netvsc
alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev
alias of:N*T*Cqemu,fw-cfg-mmioC* qemu_fw_cfg
alias of:N*T*Cqemu,fw-cfg-mmio qemu_fw_cfg
alias acpi*:QEMU0002:* qemu_fw_cfg
alias acpi*:VMBUS:* hv_vmbus
alias pci:v00001D0Fd0000EC20sv*sd*bc*sc*i* ena
alias scsi:t-0x00* sd_mod
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
";

    #[test]
    fn real_modules_alias_excerpt() {
        let t = AliasTable::parse(EXCERPT);
        assert_eq!(t.len(), 19);
        let m = |a: &str| t.modules_for(a);
        assert_eq!(m("acpi:LNXPWRBN:"), ["button"]);
        assert_eq!(m("acpi:PNP0C0C:"), ["button"]);
        assert_eq!(m("pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00"), ["virtio_pci"]);
        assert_eq!(m("pci:v00001B36d00000011sv00001AF4sd00001100bc08sc80i00"), ["pvpanic_pci"]);
        assert_eq!(m("virtio:d00000004v00001AF4"), ["virtio_rng"]);
        assert_eq!(m("virtio:d00000005v00001AF4"), ["virtio_balloon"]);
        assert_eq!(m("virtio:d00000001v00001AF4\n"), ["virtio_net"]);
        assert_eq!(m("acpi:QEMU0002:"), ["qemu_fw_cfg"]);
        assert_eq!(m("of:NfwcfgT<NULL>Cqemu,fw-cfg-mmio"), ["qemu_fw_cfg"]);
        assert_eq!(m("xen:vif"), ["xen_netfront"]);
        assert_eq!(m("scsi:t-0x00"), ["sd_mod"]);
        assert_eq!(m("scsi:t-0x05"), Vec::<&str>::new());
        assert_eq!(m("input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"), ["evdev"]);
        assert_eq!(m("cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0094,00E5"), ["crc32c_intel"]);
        assert!(m("pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00").is_empty());
    }
}
