//! The standard targets berth-init provides when no unit file exists for them (Berth images
//! do not ship the systemd package, which is where Debian's copies live).
//!
//! Each mirrors Debian 12's (systemd 252) target, minus what refers to units berth has no use
//! for: `local-fs.target`/`swap.target` (stage 2 mounts everything before units start),
//! `sockets/timers/paths/slices.target` (unit types berth-init does not run), `emergency` and
//! `rescue`. `default.target` is an alias of `multi-user.target`, as a container host's is.

/// Names of the built-in targets (`default.target` is an alias, see [`DEFAULT_TARGET`]).
pub const TARGETS: &[&str] = &[
    "sysinit.target",
    "basic.target",
    "network-pre.target",
    "network.target",
    "network-online.target",
    "multi-user.target",
    "boot-complete.target",
    "shutdown.target",
];

/// `default.target`, the boot goal, and what it is an alias of when no file says otherwise.
pub const DEFAULT_TARGET: &str = "default.target";
pub const DEFAULT_TARGET_IS: &str = "multi-user.target";

/// The text of a built-in target, or `None` when `name` is not one.
pub fn text(name: &str) -> Option<&'static str> {
    Some(match name {
        // Debian adds Wants=/After=local-fs.target swap.target and conflicts with emergency.
        "sysinit.target" => "[Unit]\nDescription=System Initialization\n",
        // Debian adds sockets/timers/paths/slices.target, tmp.mount, RequiresMountsFor=/var.
        "basic.target" => "[Unit]\nDescription=Basic System\nRequires=sysinit.target\nAfter=sysinit.target\n",
        // Passive: a network manager pulls it in and orders itself before it.
        "network-pre.target" => "[Unit]\nDescription=Preparation for Network\nRefuseManualStart=yes\n",
        "network.target" => "[Unit]\nDescription=Network\nAfter=network-pre.target\nRefuseManualStart=yes\n",
        // Active: pulled in by its users; a wait-online service is WantedBy= and Before= it.
        "network-online.target" => "[Unit]\nDescription=Network is Online\nAfter=network.target\n",
        // Debian adds Conflicts=/After=rescue.service rescue.target.
        "multi-user.target" => {
            "[Unit]\nDescription=Multi-User System\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n"
        }
        // Health checks are RequiredBy= and Before= it; not part of the boot unless pulled in.
        "boot-complete.target" => {
            "[Unit]\nDescription=Boot Completion Check\nRequires=sysinit.target\nAfter=sysinit.target\n"
        }
        "shutdown.target" => "[Unit]\nDescription=System Shutdown\nDefaultDependencies=no\nRefuseManualStart=yes\n",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::parse;

    #[test]
    fn every_builtin_parses_cleanly() {
        for name in TARGETS {
            let text = text(name).unwrap();
            let doc = parse(text);
            assert!(doc.errors.is_empty(), "{name}: {:?}", doc.errors);
            assert!(doc.assignments.iter().any(|a| a.key == "Description"), "{name}");
        }
        assert!(text(DEFAULT_TARGET).is_none(), "default.target is an alias, not a unit");
    }
}
