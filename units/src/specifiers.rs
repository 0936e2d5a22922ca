//! `%` specifiers (systemd.unit(5) "SPECIFIERS"), resolved when a unit is loaded, for the
//! system manager. Values that depend on the machine come from [`HostInfo`], which the runtime
//! fills once at boot (and `berthctl verify` from the machine or image it checks).

use std::path::Path;

use super::name::{self, UnitName};

/// Facts about the machine that some specifiers expand to. Unknown ones expand to "".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_release: String,
    /// systemd's architecture name (`x86-64`, `arm64`, …).
    pub architecture: String,
    /// `ID=` and `VERSION_ID=` of os-release.
    pub os_id: String,
    pub os_version_id: String,
}

impl HostInfo {
    /// Reads what it can from `root` (machine-id, hostname, os-release) and the running kernel
    /// (boot id, release). Missing pieces stay empty; this never fails.
    pub fn detect(root: &Path) -> HostInfo {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).map(|s| s.trim().to_string()).unwrap_or_default();
        let os_release = {
            let text = std::fs::read_to_string(root.join("etc/os-release"))
                .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
                .unwrap_or_default();
            super::env::parse_env_file(&text).vars
        };
        let os = |k: &str| os_release.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let mut hostname = read("etc/hostname");
        if hostname.is_empty() && root == Path::new("/") {
            hostname = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        }
        HostInfo {
            hostname,
            machine_id: read("etc/machine-id"),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().replace('-', ""))
                .unwrap_or_default(),
            kernel_release: nix::sys::utsname::uname()
                .ok()
                .and_then(|u| u.release().to_str().map(str::to_string))
                .unwrap_or_default(),
            architecture: architecture().to_string(),
            os_id: os("ID"),
            os_version_id: os("VERSION_ID"),
        }
    }
}

/// systemd's name for the architecture berth-init was built for.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// Everything a specifier can refer to while one unit is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Specifiers<'a> {
    pub name: &'a UnitName,
    /// The unit file (`%y`), when there is one.
    pub fragment: Option<&'a Path>,
    pub host: &'a HostInfo,
}

impl Specifiers<'_> {
    /// Replaces every `%x` in `text`. `%%` is a literal `%`; an unknown specifier is an error
    /// (systemd drops the whole line then; berth reports it).
    pub fn expand(&self, text: &str) -> Result<String, String> {
        if !text.contains('%') {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err("`%` at the end (write `%%` for a literal %)".into());
            };
            out.push_str(&self.value(spec).ok_or_else(|| format!("unknown specifier `%{spec}`"))?);
        }
        Ok(out)
    }

    fn value(&self, spec: char) -> Option<String> {
        let n = self.name;
        let instance = n.instance.clone().unwrap_or_default();
        // %j: the prefix's last dash-separated component.
        let last = n.prefix.rsplit('-').next().unwrap_or(&n.prefix).to_string();
        let host = self.host;
        Some(match spec {
            '%' => "%".into(),
            'n' => n.full.clone(),
            'N' => n.stem(),
            'p' => n.prefix.clone(),
            'P' => name::unescape(&n.prefix),
            'i' => instance,
            'I' => name::unescape(&instance),
            'j' => last,
            'J' => name::unescape(&last),
            'f' => name::unescape_path(if n.is_instance() { &instance } else { &n.prefix }),
            'y' => self.fragment.map(|p| p.display().to_string()).unwrap_or_default(),
            'Y' => self.fragment.and_then(Path::parent).map(|p| p.display().to_string()).unwrap_or_default(),
            // Directories of the system manager.
            't' => "/run".into(),
            'S' => "/var/lib".into(),
            'C' => "/var/cache".into(),
            'L' => "/var/log".into(),
            'E' => "/etc".into(),
            'T' => "/tmp".into(),
            'V' => "/var/tmp".into(),
            // The system manager's user: root.
            'h' => "/root".into(),
            's' => "/bin/sh".into(),
            'u' | 'g' => "root".into(),
            'U' | 'G' => "0".into(),
            'H' => host.hostname.clone(),
            'l' => host.hostname.split('.').next().unwrap_or_default().to_string(),
            'm' => host.machine_id.clone(),
            'b' => host.boot_id.clone(),
            'v' => host.kernel_release.clone(),
            'a' => host.architecture.clone(),
            'o' => host.os_id.clone(),
            'w' => host.os_version_id.clone(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostInfo {
        HostInfo {
            hostname: "node1.example".into(),
            machine_id: "0123".into(),
            boot_id: "b00t".into(),
            kernel_release: "6.1.0".into(),
            architecture: "x86-64".into(),
            os_id: "berth".into(),
            os_version_id: "1".into(),
        }
    }

    #[test]
    fn instance_specifiers() {
        let name = UnitName::parse("podman-kube@etc-kube-web\\x2dapp.yaml.service").unwrap();
        let h = host();
        let s =
            Specifiers { name: &name, fragment: Some(Path::new("/lib/systemd/system/podman-kube@.service")), host: &h };
        assert_eq!(s.expand("%n").unwrap(), "podman-kube@etc-kube-web\\x2dapp.yaml.service");
        assert_eq!(s.expand("%N").unwrap(), "podman-kube@etc-kube-web\\x2dapp.yaml");
        assert_eq!(s.expand("%i").unwrap(), "etc-kube-web\\x2dapp.yaml");
        assert_eq!(s.expand("%I").unwrap(), "etc/kube/web-app.yaml");
        assert_eq!(s.expand("%f").unwrap(), "/etc/kube/web-app.yaml");
        assert_eq!(s.expand("%p %P %j").unwrap(), "podman-kube podman/kube kube");
        assert_eq!(s.expand("%t/containers %%t 100%%").unwrap(), "/run/containers %t 100%");
        assert_eq!(s.expand("%y|%Y").unwrap(), "/lib/systemd/system/podman-kube@.service|/lib/systemd/system");
        assert_eq!(s.expand("%H %l %m %b %v %a %o %w").unwrap(), "node1.example node1 0123 b00t 6.1.0 x86-64 berth 1");
        assert_eq!(s.expand("%u:%U %g:%G %h %s").unwrap(), "root:0 root:0 /root /bin/sh");
    }

    #[test]
    fn plain_unit_and_errors() {
        let name = UnitName::parse("ssh.service").unwrap();
        let h = HostInfo::default();
        let s = Specifiers { name: &name, fragment: None, host: &h };
        assert_eq!(s.expand("%i|%I|%f|%y").unwrap(), "||/ssh|");
        assert_eq!(s.expand("no specifiers").unwrap(), "no specifiers");
        assert!(s.expand("%q").unwrap_err().contains("%q"));
        assert!(s.expand("50%").is_err());
    }
}
