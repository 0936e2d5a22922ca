use super::args::{Command, DEFAULT_LOG_LINES, Verb, parse, unit_name};
use super::status::{ago, human_bytes, list_table, status_text, system_text};
use crate::control::{LogLine, UnitStatus};

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
    assert_eq!(parsed("provision-metadata"), Ok(Command::ProvisionMetadata));
    // Without a unit, status is the machine's.
    assert_eq!(parsed("status"), Ok(Command::SystemStatus { json: false }));
    assert_eq!(parsed("status --json"), Ok(Command::SystemStatus { json: true }));
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
    assert!(err("logs").contains("name at least one unit"));
    assert!(err("provision-metadata now").contains("provision-metadata takes no arguments (got `now`)"));
    assert!(err("provision-metadata --all").contains("option --all does not apply here"));
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

#[test]
fn is_enabled_parses() {
    assert_eq!(
        parsed("is-enabled ssh getty@tty1"),
        Ok(Command::IsEnabled { units: vec!["ssh.service".into(), "getty@tty1.service".into()], root: None })
    );
    assert_eq!(
        parsed("is-enabled --root / ssh"),
        Ok(Command::IsEnabled { units: vec!["ssh.service".into()], root: Some("/".into()) })
    );
    assert!(parsed("is-enabled --now ssh").unwrap_err().contains("option --now does not apply here"));
    assert!(parsed("is-enabled").unwrap_err().contains("name at least one unit"));
}

#[test]
fn status_without_a_unit_shows_the_machine_and_its_platform() {
    assert_eq!(
        system_text("node-1", &Ok("running".into()), &Ok("aws".into())),
        "● node-1\n      State: running\n   Platform: aws\n"
    );
    let missing = Err("/run/berth/platform is missing: berth-init did not record it this boot".to_string());
    let text = system_text("localhost", &Err("cannot reach berth-init".into()), &missing);
    assert_eq!(
        text,
        "● localhost\n      State: unknown (cannot reach berth-init)\n   Platform: unknown (/run/berth/platform is \
         missing: berth-init did not record it this boot)\n"
    );
}
