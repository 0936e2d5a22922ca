//! The image-level configuration of the root after its packages are unpacked: the steps that
//! replace maintainer scripts (implemented in `berth_debian::deb::setup`, table in
//! `debian/README.md`) in their documented order, then Berth's own files: `os-release`, the
//! update agent's `/usr/lib/berth/update.toml` and the shutdown commands' links to berth-init.

use anyhow::Context;
use berth_debian::deb::DebInfo;
use berth_debian::deb::setup::{self, Accounts, Group, OsRelease, User};
use berth_fstree::{Metadata, Node, NodeKind, Tree};

use crate::definition::Definition;

/// Where the image's update settings go; `/etc/berth/update.toml` overrides them on a host.
pub const UPDATE_CONFIG: &str = "usr/lib/berth/update.toml";

/// What the steps reported that a user may want to know.
#[derive(Debug, Default)]
pub struct SystemReport {
    /// `update-alternatives` commands that could not be read literally from a `postinst`.
    pub unparsed_alternatives: Vec<String>,
    /// Shutdown commands a package ships, kept in place of berth-init's links (also printed).
    pub kept_commands: Vec<String>,
}

/// `reboot`, `poweroff`, `halt` and `shutdown`: berth-init under those names asks PID 1 (as
/// `berthctl` does), so that people and Vagrant find the commands they type.
pub const SHUTDOWN_COMMANDS: [&str; 4] = ["reboot", "poweroff", "halt", "shutdown"];

/// Links `/usr/sbin/{reboot,poweroff,halt,shutdown}` to `berth-init` (beside it), except where a
/// package ships that name (Debian's systemd-sysv does): that file is kept, never overwritten,
/// and the returned notes say which wins.
pub fn shutdown_links(root: &mut Tree, epoch: i64) -> anyhow::Result<Vec<String>> {
    root.mkdir_all("usr/sbin", &Metadata::root(0o755, epoch))?;
    let mut kept = Vec::new();
    for name in SHUTDOWN_COMMANDS {
        let path = format!("usr/sbin/{name}");
        match root.lookup(&path).map(|id| &root.node(id).kind) {
            None => {
                let link = Node::new(NodeKind::Symlink(b"berth-init".to_vec()), Metadata::root(0o777, epoch));
                root.insert(&path, link).with_context(|| format!("linking /{path} to berth-init"))?;
            }
            Some(NodeKind::Symlink(to)) if to == b"berth-init" => {}
            Some(NodeKind::Symlink(to)) => kept.push(format!(
                "/{path} is a package's (a link to {}): kept; berth-init's {name} is not linked there \
                 (`berthctl` reboot/poweroff/halt do the same)",
                String::from_utf8_lossy(to)
            )),
            Some(_) => kept.push(format!(
                "/{path} is a package's: kept; berth-init's {name} is not linked there \
                 (`berthctl` reboot/poweroff/halt do the same)"
            )),
        }
    }
    Ok(kept)
}

pub fn configure(root: &mut Tree, def: &Definition, debs: &[DebInfo], epoch: i64) -> anyhow::Result<SystemReport> {
    setup::base_files(root, epoch).context("base-files setup")?;

    let accounts = Accounts {
        groups: def.groups.iter().map(|g| Group { name: g.name.clone(), gid: g.gid }).collect(),
        users: def
            .users
            .iter()
            .map(|u| User {
                name: u.name.clone(),
                uid: u.uid,
                gid: u.gid.unwrap_or(u.uid),
                gecos: String::new(),
                home: u.home.clone().unwrap_or_else(|| format!("/home/{}", u.name)),
                shell: u.shell.clone().unwrap_or_else(|| "/bin/sh".into()),
                groups: u.groups.clone(),
            })
            .collect(),
    };
    setup::users(root, &accounts, epoch).context("writing /etc/passwd and /etc/group")?;
    if root.lookup("usr/share/ca-certificates").is_some() {
        setup::ca_bundle(root, epoch).context("building the CA bundle")?;
    }

    setup::openssh_server(root, epoch).context("openssh-server setup")?;
    setup::pam_auth_update(root, epoch).context("PAM stacks (pam-auth-update)")?;

    let mut report = SystemReport::default();
    let mut alts = Vec::new();
    for d in debs {
        for s in d.scripts.iter().filter(|s| s.kind.file_name() == "postinst") {
            let (found, unparsed) = setup::parse_alternatives(&s.body);
            alts.extend(found);
            report.unparsed_alternatives.extend(unparsed.into_iter().map(|u| format!("{}: {u}", d.package())));
        }
    }
    setup::alternatives(root, &alts, epoch).context("update-alternatives links")?;

    setup::os_release(
        root,
        &OsRelease {
            name: "Berth".into(),
            version_id: def.version.to_ascii_lowercase(),
            pretty_name: Some(format!("Berth {} ({})", def.version, def.name)),
            build_id: format!("{}-{}", def.name, def.version),
        },
        epoch,
    )
    .context("writing os-release")?;
    setup::dpkg_status(root, debs.iter().map(|d| &d.control), epoch).context("writing /var/lib/dpkg/status")?;

    home_on_state(root, epoch)?;
    report.kept_commands = shutdown_links(root, epoch)?;
    for note in &report.kept_commands {
        eprintln!("note: {note}");
    }

    let text = update_config(def);
    root.mkdir_all("usr/lib/berth", &Metadata::root(0o755, epoch))?;
    if root.lookup(UPDATE_CONFIG).is_none() {
        root.insert(UPDATE_CONFIG, Node::new(NodeKind::File(text.into_bytes().into()), Metadata::root(0o644, epoch)))?;
    }
    Ok(report)
}

/// `/home` as a link to `var/home`, as Fedora CoreOS has it: the root is read-only, so homes
/// live on STATE (where first-boot provisioning makes them). Package trees ship `/home` empty.
pub fn home_on_state(root: &mut Tree, epoch: i64) -> anyhow::Result<()> {
    if let Some(id) = root.lookup("home") {
        match &root.node(id).kind {
            NodeKind::Symlink(_) => return Ok(()),
            NodeKind::Dir(entries) if entries.is_empty() => {
                root.unlink("home")?;
            }
            _ => anyhow::bail!("/home in the root is not an empty directory: homes live on STATE (/var/home)"),
        }
    }
    root.insert("home", Node::new(NodeKind::Symlink(HOME_LINK.as_bytes().to_vec()), Metadata::root(0o777, epoch)))?;
    Ok(())
}

/// Where `/home` points (relative, so it also resolves inside an image mounted elsewhere).
pub const HOME_LINK: &str = "var/home";

/// The update agent's settings from the definition (docs/design.md §4).
fn update_config(def: &Definition) -> String {
    let mut s = String::from("# Berth update settings of this image; /etc/berth/update.toml overrides them.\n");
    s.push_str(&format!("version = {:?}\n", def.version));
    match &def.update {
        Some(u) => {
            s.push_str(&format!("channel = {:?}\n", u.channel));
            s.push_str(&format!("threshold = {}\n", u.threshold));
            let keys: Vec<String> = u.keys.iter().map(|k| format!("{k:?}")).collect();
            s.push_str(&format!("keys = [{}]\n", keys.join(", ")));
        }
        None => s.push_str("# No channel: this image does not update itself.\n"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_of(t: &Tree, path: &str) -> Option<Vec<u8>> {
        match &t.node(t.lookup(path)?).kind {
            NodeKind::Symlink(to) => Some(to.clone()),
            _ => None,
        }
    }

    /// The file the builder writes is the one the agent reads: with and without `[update]`.
    #[test]
    fn update_config_parses_as_the_agent_reads_it() {
        use berth_release::config::UpdateConfig;
        let path = std::path::Path::new("images/t.toml");
        let base = "name = \"t\"\nversion = \"1.2.3\"\n[kernel]\npackage = \"linux-image-cloud-amd64\"\ncmdline = \"console=ttyS0\"\n";
        let key = "ab".repeat(32);
        let with = format!(
            "{base}[update]\nchannel = \"https://releases.example/x/channels/stable.json\"\nkeys = [\"{key}\"]\nthreshold = 1\n"
        );
        let read = |def: &str| {
            let d = Definition::parse(def, path).unwrap();
            let text = update_config(&d);
            UpdateConfig::from_texts(&[(std::path::PathBuf::from("/usr/lib/berth/update.toml"), text.clone())])
                .unwrap_or_else(|e| panic!("{e}\n{text}"))
        };
        let c = read(&with);
        assert_eq!(c.version.as_deref(), Some("1.2.3"));
        assert_eq!(c.channel.as_deref(), Some("https://releases.example/x/channels/stable.json"));
        assert_eq!(c.keys, vec![key.clone()]);
        assert_eq!(c.threshold, 1);
        let c = read(base);
        assert_eq!(c.version.as_deref(), Some("1.2.3"));
        assert_eq!(c.channel, None);
        assert!(c.keys.is_empty());
    }

    #[test]
    fn shutdown_commands_link_to_berth_init_unless_a_package_ships_them() {
        let mut t = Tree::new(Metadata::root(0o755, 0));
        assert!(shutdown_links(&mut t, 0).unwrap().is_empty());
        for name in SHUTDOWN_COMMANDS {
            assert_eq!(link_of(&t, &format!("usr/sbin/{name}")).as_deref(), Some(&b"berth-init"[..]), "{name}");
        }
        // Again: unchanged, nothing to say.
        assert!(shutdown_links(&mut t, 0).unwrap().is_empty());
        // systemd-sysv's links to systemctl, and a plain file: kept, and said.
        let mut t = Tree::new(Metadata::root(0o755, 0));
        t.mkdir_all("usr/sbin", &Metadata::root(0o755, 0)).unwrap();
        let theirs = Node::new(NodeKind::Symlink(b"../bin/systemctl".to_vec()), Metadata::root(0o777, 0));
        t.insert("usr/sbin/reboot", theirs).unwrap();
        t.insert("usr/sbin/halt", Node::new(NodeKind::File(b"#!/bin/sh\n".to_vec().into()), Metadata::root(0o755, 0)))
            .unwrap();
        let kept = shutdown_links(&mut t, 0).unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept[0].starts_with("/usr/sbin/reboot is a package's (a link to ../bin/systemctl): kept"), "{kept:?}");
        assert!(kept[1].starts_with("/usr/sbin/halt is a package's: kept"), "{kept:?}");
        assert_eq!(link_of(&t, "usr/sbin/reboot").as_deref(), Some(&b"../bin/systemctl"[..]));
        assert_eq!(link_of(&t, "usr/sbin/halt"), None);
        assert_eq!(link_of(&t, "usr/sbin/poweroff").as_deref(), Some(&b"berth-init"[..]));
        assert_eq!(link_of(&t, "usr/sbin/shutdown").as_deref(), Some(&b"berth-init"[..]));
    }

    #[test]
    fn home_becomes_a_link_to_var_home() {
        // As base-files ships it: an empty directory.
        let mut t = Tree::new(Metadata::root(0o755, 0));
        t.mkdir_all("home", &Metadata::root(0o755, 0)).unwrap();
        home_on_state(&mut t, 0).unwrap();
        assert_eq!(link_of(&t, "home").as_deref(), Some(&b"var/home"[..]));
        // Again: unchanged.
        home_on_state(&mut t, 0).unwrap();
        assert_eq!(link_of(&t, "home").as_deref(), Some(&b"var/home"[..]));
        // No /home at all.
        let mut t = Tree::new(Metadata::root(0o755, 0));
        home_on_state(&mut t, 0).unwrap();
        assert_eq!(link_of(&t, "home").as_deref(), Some(&b"var/home"[..]));
        // Files under /home would be hidden by STATE: refused.
        let mut t = Tree::new(Metadata::root(0o755, 0));
        t.mkdir_all("home/core", &Metadata::root(0o755, 0)).unwrap();
        let e = home_on_state(&mut t, 0).unwrap_err().to_string();
        assert!(e.contains("/home in the root is not an empty directory"), "{e}");
    }
}
