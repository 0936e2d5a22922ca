use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

fn parsed(line: &str) -> Result<Command, String> {
    parse(&args(line))
}

#[test]
fn commands_parse() {
    assert_eq!(parsed("list"), Ok(Command::List { all: false, json: false }));
    assert_eq!(parsed("list --all --json"), Ok(Command::List { all: true, json: true }));
    assert_eq!(parsed("list -a"), Ok(Command::List { all: true, json: false }));
    assert_eq!(
        parsed("status ssh containerd.service --json"),
        Ok(Command::Status { units: vec!["ssh.service".into(), "containerd.service".into()], json: true })
    );
    assert_eq!(
        parsed("start a b.target getty@tty1"),
        Ok(Command::Job {
            verb: Verb::Start,
            units: vec!["a.service".into(), "b.target".into(), "getty@tty1.service".into()]
        })
    );
    assert_eq!(parsed("stop x"), Ok(Command::Job { verb: Verb::Stop, units: vec!["x.service".into()] }));
    assert_eq!(parsed("restart x"), Ok(Command::Job { verb: Verb::Restart, units: vec!["x.service".into()] }));
    assert_eq!(
        parsed("enable --now ssh"),
        Ok(Command::Install { enable: true, units: vec!["ssh.service".into()], now: true, root: None })
    );
    assert_eq!(
        parsed("disable ssh"),
        Ok(Command::Install { enable: false, units: vec!["ssh.service".into()], now: false, root: None })
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    assert_eq!(
        parse(&["enable".into(), format!("--root={root}"), "ssh".into()]),
        Ok(Command::Install { enable: true, units: vec!["ssh.service".into()], now: false, root: Some(root.into()) })
    );
    assert_eq!(
        parsed("logs containerd"),
        Ok(Command::Logs { unit: "containerd.service".into(), lines: DEFAULT_LOG_LINES, follow: false, json: false })
    );
    assert_eq!(
        parsed("logs -n 5 -f containerd --json"),
        Ok(Command::Logs { unit: "containerd.service".into(), lines: 5, follow: true, json: true })
    );
    assert_eq!(
        parsed("logs --lines=7 --follow x"),
        Ok(Command::Logs { unit: "x.service".into(), lines: 7, follow: true, json: false })
    );
    assert_eq!(parsed("logs -n20 x"), parsed("logs --lines 20 x"));
    assert_eq!(parsed("reboot"), Ok(Command::Reboot));
    assert_eq!(parsed("poweroff"), Ok(Command::Poweroff));
    assert_eq!(parsed("is-system-running"), Ok(Command::IsSystemRunning));
    assert_eq!(parsed("provision-status"), Ok(Command::ProvisionStatus));
    assert_eq!(parsed("--help"), Ok(Command::Help));
    assert_eq!(parsed("status --help"), Ok(Command::Help));
    assert_eq!(parsed("-V"), Ok(Command::Version));
    assert_eq!(
        parsed("verify --root / a.service"),
        Ok(Command::Verify(vec!["--root".into(), "/".into(), "a.service".into()]))
    );
    // `--` ends the options.
    assert_eq!(parsed("stop -- -weird"), Ok(Command::Job { verb: Verb::Stop, units: vec!["-weird.service".into()] }));
}

#[test]
fn usage_errors_say_what_is_wrong() {
    let err = |line: &str| parsed(line).unwrap_err();
    assert!(err("").contains("name a command"));
    assert!(err("frobnicate").contains("unknown command `frobnicate`"));
    assert!(err("start").contains("start: name at least one unit"));
    assert!(err("status").contains("name at least one unit"));
    assert!(err("reboot now").contains("reboot takes no arguments (got `now`)"));
    assert!(err("list x").contains("takes no arguments"));
    assert!(err("start --all x").contains("start: option --all does not apply here"));
    assert!(err("logs -n").contains("-n needs a value"));
    assert!(err("logs -n many x").contains("not a number of lines"));
    assert!(err("logs a b").contains("one unit at a time"));
    assert!(err("start --bogus x").contains("unknown option `--bogus`"));
    assert!(err("start a/b").contains("`a/b` is not a unit name"));
    assert!(err("enable --root /nonexistent-dir x").contains("not a directory"));
    assert!(err("enable --now --root / x").contains("exclude each other"));
}

#[test]
fn unit_names_default_to_services() {
    assert_eq!(unit_name("ssh").unwrap(), "ssh.service");
    assert_eq!(unit_name("ssh.socket").unwrap(), "ssh.socket");
    assert_eq!(unit_name("multi-user.target").unwrap(), "multi-user.target");
    assert_eq!(unit_name("my.app").unwrap(), "my.app.service");
    assert_eq!(unit_name("kube@web.yaml").unwrap(), "kube@web.yaml.service");
    assert!(unit_name("").is_err());
    assert!(unit_name("a b").is_err());
}

fn unit(name: &str, load: &str, active: &str, sub: &str, description: &str) -> UnitStatus {
    UnitStatus {
        name: name.into(),
        load: load.into(),
        active: active.into(),
        sub: sub.into(),
        description: description.into(),
        ..UnitStatus::default()
    }
}

#[test]
fn list_is_a_table() {
    let units = [
        unit("containerd.service", "loaded", "active", "running", "containerd container runtime"),
        unit("broken.service", "loaded", "failed", "failed", "Broken"),
        unit("multi-user.target", "loaded", "active", "active", ""),
    ];
    let table = list_table(&units, false);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "  UNIT               LOAD   ACTIVE SUB     DESCRIPTION");
    assert_eq!(lines[1], "  containerd.service loaded active running containerd container runtime");
    assert_eq!(lines[2], "● broken.service     loaded failed failed  Broken");
    assert_eq!(lines[3], "  multi-user.target  loaded active active");
    assert_eq!(lines[5], "3 loaded units listed. Pass --all to see inactive units, too.");
    assert!(list_table(&[], true).ends_with("\n0 loaded units listed.\n"));
}

#[test]
fn status_reads_like_systemctl() {
    let since = 1_795_338_062_000_000;
    let s = UnitStatus {
        main_pid: Some(812),
        memory_bytes: Some(25 * 1024 * 1024 + 100 * 1024),
        tasks: Some(9),
        restarts: 2,
        last_exit: Some("status=1".into()),
        active_since_us: Some(since),
        status_text: Some("Ready".into()),
        cgroup: Some("/system.slice/containerd.service".into()),
        fragment: Some("/lib/systemd/system/containerd.service".into()),
        enabled: Some("enabled".into()),
        ..unit("containerd.service", "loaded", "active", "running", "containerd container runtime")
    };
    let line = LogLine { unit: "containerd.service".into(), time_us: since + 5, pid: Some(812), text: "up".into() };
    let text = status_text(&s, &[line], since + 184_000_000);
    let expected = "\
● containerd.service - containerd container runtime
     Loaded: loaded (/lib/systemd/system/containerd.service; enabled)
     Active: active (running) since 2026-11-22 09:01:02 UTC; 3min 4s ago
   Main PID: 812
     Status: \"Ready\"
      Tasks: 9
     Memory: 25.1M
   Restarts: 2 (last exit: status=1)
     CGroup: /system.slice/containerd.service

2026-11-22T09:01:02.000005Z containerd.service[812]: up
";
    assert_eq!(text, expected);
    let failed = UnitStatus {
        error: Some("ExecStart=/usr/bin/x: No such file or directory".into()),
        ..unit("x.service", "loaded", "failed", "failed", "")
    };
    let text = status_text(&failed, &[], 0);
    assert!(text.starts_with("× x.service\n     Loaded: loaded\n     Active: failed (failed)\n"), "{text}");
    assert!(text.contains("      Error: ExecStart=/usr/bin/x: No such file or directory\n"), "{text}");
}

#[test]
fn human_units() {
    assert_eq!(human_bytes(512), "512B");
    assert_eq!(human_bytes(1536), "1.5K");
    assert_eq!(human_bytes(3 << 30), "3.0G");
    assert_eq!(ago(250_000), "250ms");
    assert_eq!(ago(45_000_000), "45s");
    assert_eq!(ago(7_500_000_000), "2h 5min");
    assert_eq!(ago(97_200_000_000), "1 day 3h");
    assert_eq!(ago(3 * 86_400_000_000), "3 days 0h");
}

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

const SERVICE: &str = "[Service]\nExecStart=/bin/true\n";

#[test]
fn enable_and_disable_make_and_remove_the_links() {
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlias=www.service\nAlso=helper.service\n");
    let helper = format!("{SERVICE}[Install]\nRequiredBy=web.service\n");
    let dir = tree(&[("web.service", &web), ("helper.service", &helper)]);
    let root = dir.path();
    let web_file = Path::new("/lib/systemd/system/web.service");
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants/web.service");
    let changes = enable_links(root, "web.service").unwrap();
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
    assert!(
        !std::fs::read_dir(link.parent().unwrap())
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().contains("berthctl") })
    );
    // The loader now sees the unit as wanted by the target, and as enabled.
    let loader = loader(root);
    assert!(loader.load("multi-user.target").deps.wants.contains(&"web.service".to_string()));
    assert_eq!(enablement(root, &loader.load("web.service")), "enabled");
    // Enabling again changes nothing.
    assert_eq!(enable_links(root, "web.service").unwrap(), []);

    let changes = disable_links(root, "web.service").unwrap();
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
    assert_eq!(enablement(root, &loader.load("web.service")), "disabled");
    assert!(!loader.load("multi-user.target").deps.wants.contains(&"web.service".to_string()));
    assert_eq!(disable_links(root, "web.service").unwrap(), []);
}

#[test]
fn enable_replaces_a_stale_link_but_not_a_file() {
    let web = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nAlias=www.service\n");
    let dir = tree(&[("web.service", &web)]);
    let root = dir.path();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/usr/lib/systemd/system/old.service", wants.join("web.service")).unwrap();
    std::fs::write(root.join("etc/systemd/system/www.service"), SERVICE).unwrap();
    let err = enable_links(root, "web.service").unwrap_err();
    assert!(err.contains("/etc/systemd/system/www.service exists and is not a symlink"), "{err}");
    assert_eq!(std::fs::read_link(wants.join("web.service")).unwrap(), Path::new("/lib/systemd/system/web.service"));
}

#[test]
fn static_masked_and_missing_units() {
    let masked = tree(&[("plain.service", SERVICE)]);
    let root = masked.path();
    assert_eq!(enable_links(root, "plain.service").unwrap(), [Change::Static { unit: "plain.service".into() }]);
    assert!(Change::Static { unit: "plain.service".into() }.to_string().starts_with("plain.service is static"));
    assert_eq!(disable_links(root, "plain.service").unwrap(), [Change::Static { unit: "plain.service".into() }]);
    assert_eq!(enablement(root, &loader(root).load("plain.service")), "static");
    assert!(root.join("etc").symlink_metadata().is_err(), "nothing was created");

    let err = enable_links(root, "absent.service").unwrap_err();
    assert_eq!(
        err,
        format!(
            "unit not found (searched /etc/systemd/system, /usr/lib/systemd/system, /lib/systemd/system in {})",
            root.display()
        )
    );
    assert!(disable_links(root, "absent.service").unwrap_err().starts_with("unit not found"));
    // Links of a unit whose file is gone can still be removed.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("/lib/systemd/system/gone.service", wants.join("gone.service")).unwrap();
    assert_eq!(
        disable_links(root, "gone.service").unwrap(),
        [Change::Removed { link: "/etc/systemd/system/multi-user.target.wants/gone.service".into() }]
    );

    let admin = root.join("etc/systemd/system");
    std::os::unix::fs::symlink("/dev/null", admin.join("plain.service")).unwrap();
    let err = enable_links(root, "plain.service").unwrap_err();
    assert!(err.contains("masked"), "{err}");
    let broken = tree(&[("bad.service", "[Service]\nType=bogus\n[Install]\nWantedBy=multi-user.target\n")]);
    let err = enable_links(broken.path(), "bad.service").unwrap_err();
    assert!(err.starts_with("the unit has errors: ") && err.contains("bad.service:2"), "{err}");
}

#[test]
fn templates_enable_their_default_instance() {
    let kube = format!("{SERVICE}[Install]\nWantedBy=multi-user.target\nDefaultInstance=web\n");
    let dir = tree(&[("kube@.service", &kube)]);
    let root = dir.path();
    let changes = enable_links(root, "kube@.service").unwrap();
    assert_eq!(
        changes,
        [Change::Created {
            link: "/etc/systemd/system/multi-user.target.wants/kube@web.service".into(),
            target: "/lib/systemd/system/kube@.service".into()
        }]
    );
    assert_eq!(
        disable_links(root, "kube@.service").unwrap(),
        [Change::Removed { link: "/etc/systemd/system/multi-user.target.wants/kube@web.service".into() }]
    );
}
