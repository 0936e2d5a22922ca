//! Planning against a directory root, then applying: the links systemctl would make.

use super::*;
use crate::HostInfo;

/// An image tree with unit files in /lib/systemd/system.
fn tree(units: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib/systemd/system");
    std::fs::create_dir_all(&lib).unwrap();
    for (name, text) in units {
        std::fs::write(lib.join(name), text).unwrap();
    }
    dir
}

fn loader(root: &Path) -> Loader {
    Loader::new(root, HostInfo::default())
}

fn enable(root: &Path, name: &str) -> Result<Vec<Change>, InstallError> {
    let changes = plan_enable(&loader(root), name)?;
    apply(root, &changes)?;
    Ok(changes)
}

fn disable(root: &Path, name: &str) -> Result<Vec<Change>, InstallError> {
    let changes = plan_disable(&loader(root), name)?;
    apply(root, &changes)?;
    Ok(changes)
}

const SERVICE: &str = "[Service]\nExecStart=/bin/true\n";

#[test]
fn enable_follows_also_and_aliases_and_disable_undoes_it() {
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlias=www.service\nAlso=helper.service\n");
    let helper = format!("{SERVICE}[Install]\nRequiredBy=web.service\nAlso=web.service\n");
    let dir = tree(&[("web.service", &web), ("helper.service", &helper)]);
    let root = dir.path();
    let web_file = Path::new("/lib/systemd/system/web.service");
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/web.service");
    // Planning alone changes nothing.
    assert_eq!(plan_enable(&loader(root), "web.service").unwrap().len(), 3);
    assert!(root.join("etc").symlink_metadata().is_err());
    let changes = enable(root, "web.service").unwrap();
    assert_eq!(
        changes,
        [
            Change::Created { link: wants.into(), target: web_file.into() },
            Change::Created { link: "/etc/systemd/system/www.service".into(), target: web_file.into() },
            Change::Created {
                link: "/etc/systemd/system/web.service.requires/helper.service".into(),
                target: "/lib/systemd/system/helper.service".into()
            },
        ]
    );
    assert_eq!(
        changes[0].to_string(),
        "Created symlink /etc/systemd/system/multi-user.target.wants/web.service → /lib/systemd/system/web.service."
    );
    let link = root.join("etc/systemd/system/multi-user.target.wants/web.service");
    assert_eq!(std::fs::read_link(&link).unwrap(), web_file);
    let leftovers: Vec<_> = std::fs::read_dir(link.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The loader sees the unit as wanted by the target, as enabled, and the alias as an alias.
    let l = loader(root);
    assert!(l.load("multi-user.target").deps.wants.contains(&"web.service".to_string()));
    assert_eq!(enablement(&l, &l.load("web.service")), Enablement::Enabled);
    assert_eq!(enablement_of(&l, "www.service"), Some(Enablement::Alias));
    assert_eq!(enablement_of(&l, "helper.service"), Some(Enablement::Enabled));
    assert_eq!(enablement_of(&l, "nope.service"), None);
    // Enabling again changes nothing.
    assert_eq!(enable(root, "web.service").unwrap(), []);

    let changes = disable(root, "web.service").unwrap();
    assert_eq!(
        changes,
        [
            Change::Removed { link: wants.into() },
            Change::Removed { link: "/etc/systemd/system/www.service".into() },
            Change::Removed { link: "/etc/systemd/system/web.service.requires/helper.service".into() },
        ]
    );
    assert_eq!(changes[0].to_string(), "Removed /etc/systemd/system/multi-user.target.wants/web.service.");
    assert!(link.symlink_metadata().is_err());
    let l = loader(root);
    assert_eq!(enablement(&l, &l.load("web.service")), Enablement::Disabled);
    assert!(!l.load("multi-user.target").deps.wants.contains(&"web.service".to_string()));
    assert_eq!(disable(root, "web.service").unwrap(), []);
}

#[test]
fn a_stale_link_is_replaced_but_not_a_file() {
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlias=www.service\n");
    let dir = tree(&[("web.service", &web)]);
    let root = dir.path();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/usr/lib/systemd/system/old.service", wants.join("web.service")).unwrap();
    std::fs::write(root.join("etc/systemd/system/www.service"), SERVICE).unwrap();
    let err = enable(root, "web.service").unwrap_err();
    assert!(matches!(&err, InstallError::NotALink { unit, .. } if unit == "web.service"), "{err:?}");
    assert!(err.to_string().contains("/etc/systemd/system/www.service exists and is not a symlink"), "{err}");
    // Nothing was applied: the plan failed first.
    let old = Path::new("/usr/lib/systemd/system/old.service");
    assert_eq!(std::fs::read_link(wants.join("web.service")).unwrap(), old);
    std::fs::remove_file(root.join("etc/systemd/system/www.service")).unwrap();
    enable(root, "web.service").unwrap();
    assert_eq!(std::fs::read_link(wants.join("web.service")).unwrap(), Path::new("/lib/systemd/system/web.service"));
}

#[test]
fn static_masked_broken_and_missing_units() {
    let dir = tree(&[("plain.service", SERVICE)]);
    let root = dir.path();
    let is_static = [Change::Static { unit: "plain.service".into() }];
    assert_eq!(enable(root, "plain.service").unwrap(), is_static);
    assert!(is_static[0].to_string().starts_with("plain.service is static"));
    assert_eq!(disable(root, "plain.service").unwrap(), is_static);
    let l = loader(root);
    assert_eq!(enablement(&l, &l.load("plain.service")), Enablement::Static);
    assert!(root.join("etc").symlink_metadata().is_err(), "nothing was created");

    let err = enable(root, "absent.service").unwrap_err();
    let r = root.display();
    assert_eq!(
        err.to_string(),
        format!(
            "absent.service: unit not found (searched {r}/etc/systemd/system, {r}/usr/lib/systemd/system, \
             {r}/lib/systemd/system)"
        )
    );
    assert!(matches!(disable(root, "absent.service"), Err(InstallError::NotFound { .. })));
    // Links of a unit whose file is gone can still be removed.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/system/gone.service", wants.join("gone.service")).unwrap();
    assert_eq!(
        disable(root, "gone.service").unwrap(),
        [Change::Removed { link: "/etc/systemd/system/multi-user.target.wants/gone.service".into() }]
    );

    // Masked: not enabled, and its mask is not what disabling removes.
    let admin = root.join("etc/systemd/system");
    std::os::unix::fs::symlink("/dev/null", admin.join("plain.service")).unwrap();
    let err = enable(root, "plain.service").unwrap_err();
    assert!(matches!(err, InstallError::Masked { .. }), "{err:?}");
    assert!(err.to_string().contains("masked"), "{err}");
    let l = loader(root);
    assert_eq!(enablement(&l, &l.load("plain.service")), Enablement::Masked);
    disable(root, "plain.service").unwrap();
    assert_eq!(std::fs::read_link(admin.join("plain.service")).unwrap(), Path::new("/dev/null"));

    let broken = tree(&[("bad.service", "[Service]\nType=bogus\n[Install]\nWantedBy=multi-user.target\n")]);
    let err = enable(broken.path(), "bad.service").unwrap_err();
    assert!(matches!(&err, InstallError::Invalid { line: 2, .. }), "{err:?}");
    assert!(err.to_string().starts_with("bad.service: the unit has errors: "), "{err}");

    // An Also= unit that fails names both units.
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlso=absent.service\n");
    let also = tree(&[("web.service", &web)]);
    let err = enable(also.path(), "web.service").unwrap_err();
    assert!(err.to_string().starts_with("web.service: Also=absent.service: absent.service: unit not found"), "{err}");
    assert!(also.path().join("etc").symlink_metadata().is_err(), "nothing was created");
}

#[test]
fn templates_enable_their_default_instance_or_the_instance_asked_for() {
    let kube = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nDefaultInstance=web\n");
    let bare = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\n");
    let dir = tree(&[("kube@.service", &kube), ("bare@.service", &bare)]);
    let root = dir.path();
    let template = Path::new("/lib/systemd/system/kube@.service");
    assert_eq!(
        enable(root, "kube@.service").unwrap(),
        [Change::Created {
            link: "/etc/systemd/system/multi-user.target.wants/kube@web.service".into(),
            target: template.into()
        }]
    );
    assert_eq!(
        enable(root, "kube@db.service").unwrap(),
        [Change::Created {
            link: "/etc/systemd/system/multi-user.target.wants/kube@db.service".into(),
            target: template.into()
        }]
    );
    let l = loader(root);
    assert_eq!(enablement_of(&l, "kube@db.service"), Some(Enablement::Enabled));
    assert!(matches!(enable(root, "bare@.service"), Err(InstallError::NoInstance { .. })));
    assert_eq!(
        disable(root, "kube@.service").unwrap(),
        [Change::Removed { link: "/etc/systemd/system/multi-user.target.wants/kube@web.service".into() }]
    );
    assert_eq!(enablement_of(&loader(root), "kube@db.service"), Some(Enablement::Enabled));
}

#[test]
fn an_alias_of_another_type_is_the_loaders_error_and_not_linked() {
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlias=web.target\n");
    let dir = tree(&[("web.service", &web)]);
    let changes = enable(dir.path(), "web.service").unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(dir.path().join("etc/systemd/system/web.target").symlink_metadata().is_err());
}
