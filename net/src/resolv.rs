//! `/run/berth/resolv.conf`: the DNS servers and search domains of the current leases.
//! `/etc/resolv.conf` in the image is a symlink to it (the root is read-only; `/run` is a tmpfs
//! that starts empty each boot, so a stale file from a previous boot cannot be read).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use super::dhcp::client::Lease;

pub const PATH: &str = "/run/berth/resolv.conf";

/// glibc's resolver reads at most 3 nameservers (MAXNS) and, before 2.26, 6 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 6;

/// The file for `leases` (interface name, lease), in interface order, duplicates dropped.
pub fn render(leases: &[(&str, &Lease)]) -> String {
    let names: Vec<&str> = leases.iter().map(|(n, _)| *n).collect();
    let mut text = if names.is_empty() {
        "# Written by berth-netd: no DHCP lease.\n".to_string()
    } else {
        format!("# Written by berth-netd from DHCP on {}.\n", names.join(", "))
    };
    let mut servers: Vec<Ipv4Addr> = Vec::new();
    let mut search: Vec<&str> = Vec::new();
    for (_, lease) in leases {
        for s in &lease.dns {
            if !servers.contains(s) {
                servers.push(*s);
            }
        }
        for d in &lease.domains {
            if !search.contains(&d.as_str()) {
                search.push(d);
            }
        }
    }
    if servers.is_empty() && !names.is_empty() {
        text.push_str("# The DHCP servers named no DNS server.\n");
    }
    for s in servers.iter().take(MAX_NAMESERVERS) {
        text.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        let list: Vec<&str> = search.into_iter().take(MAX_SEARCH).collect();
        text.push_str(&format!("search {}\n", list.join(" ")));
    }
    text
}

/// Replaces `path` atomically (a temporary file in the same directory, then rename): readers
/// see the old file or the new one, never half of one.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn lease(dns: &[[u8; 4]], domains: &[&str]) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![],
            dns: dns.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            host_name: None,
            duration: Some(Duration::from_secs(60)),
            t1: Duration::from_secs(30),
            t2: Duration::from_secs(50),
            acquired: Instant::now(),
        }
    }

    #[test]
    fn servers_and_domains_in_interface_order_once_each() {
        let a = lease(&[[10, 0, 2, 3], [1, 1, 1, 1]], &["a.example", "b.example"]);
        let b = lease(&[[1, 1, 1, 1], [8, 8, 8, 8], [9, 9, 9, 9]], &["b.example", "c.example"]);
        assert_eq!(
            render(&[("eth0", &a), ("eth1", &b)]),
            "# Written by berth-netd from DHCP on eth0, eth1.\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n\
             nameserver 8.8.8.8\nsearch a.example b.example c.example\n"
        );
    }

    #[test]
    fn without_dns_or_leases_the_file_says_so() {
        assert_eq!(
            render(&[("eth0", &lease(&[], &[]))]),
            "# Written by berth-netd from DHCP on eth0.\n# The DHCP servers named no DNS server.\n"
        );
        assert_eq!(render(&[]), "# Written by berth-netd: no DHCP lease.\n");
    }

    #[test]
    fn written_atomically_into_a_created_directory() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/berth/resolv.conf");
        write(&path, "nameserver 10.0.2.3\n").unwrap();
        write(&path, "nameserver 10.0.2.4\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "nameserver 10.0.2.4\n");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["resolv.conf"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
