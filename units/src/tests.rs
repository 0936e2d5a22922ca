//! Whole-loader tests on temporary root trees: Debian's own units, enablement through
//! `.wants/`, drop-in precedence, masks, aliases, templates, and plans with cycles and
//! conflicts.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::error::IgnoredWhat;
use super::graph::CycleBreak;
use super::service::{Delegate, KillMode, LimitValue, Resource, Restart, ServiceType, TasksMax};
use super::*;

/// The fixtures are Debian 12's own files, copied unchanged (see tests/fixtures/README.md):
/// containerd 1.6.20~ds1-1+deb12u3 and openssh-server 1:9.2p1-2+deb12u10.
const CONTAINERD: &str = include_str!("../tests/fixtures/containerd.service");
const SSH: &str = include_str!("../tests/fixtures/ssh.service");
const SSH_SOCKET: &str = include_str!("../tests/fixtures/ssh.socket");
const DEFAULT_SSH: &str = include_str!("../tests/fixtures/default-ssh");

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        for d in load::SYSTEM_UNIT_DIRS {
            std::fs::create_dir_all(dir.path().join(&d[1..])).unwrap();
        }
        Root { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn link(&self, p: &str, target: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    fn loader(&self) -> Loader {
        Loader::new(self.dir.path(), host())
    }
}

fn host() -> HostInfo {
    HostInfo { hostname: "berth".into(), machine_id: "m1d".into(), ..HostInfo::default() }
}

fn clean(unit: &Unit) {
    assert!(unit.errors.is_empty(), "{}: {:#?}", unit.name, unit.errors);
}

fn print_ignored(unit: &Unit) {
    println!("{}: {} ignored directive(s)", unit.name, unit.ignored.len());
    for i in &unit.ignored {
        println!("  {i}");
    }
}

#[test]
fn debian_containerd_service() {
    let root = Root::new();
    root.write("/lib/systemd/system/containerd.service", CONTAINERD);
    let unit = root.loader().load("containerd.service");
    clean(&unit);
    print_ignored(&unit);
    assert!(unit.ignored.is_empty(), "every containerd.service directive is implemented");
    assert_eq!(unit.state, LoadState::Loaded);
    assert_eq!(unit.fragment.as_deref(), Some(Path::new("/lib/systemd/system/containerd.service")));
    assert_eq!(unit.description, "containerd container runtime");
    assert_eq!(unit.documentation, vec!["https://containerd.io"]);
    assert_eq!(unit.deps.after, vec!["network.target", "local-fs.target", "sysinit.target", "basic.target"]);
    assert_eq!(unit.deps.requires, vec!["sysinit.target"]);
    assert_eq!(unit.deps.conflicts, vec!["shutdown.target"]);
    assert_eq!(unit.install.wanted_by, vec!["multi-user.target"]);
    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.service_type, ServiceType::Notify);
    assert_eq!(s.exec_start_pre.len(), 1);
    assert!(s.exec_start_pre[0].flags.ignore_failure);
    assert_eq!(s.exec_start_pre[0].argv, vec!["/sbin/modprobe", "overlay"]);
    assert_eq!(s.exec_start[0].argv, vec!["/usr/bin/containerd"]);
    assert_eq!(s.delegate, Delegate::Yes);
    assert_eq!(s.kill_mode, KillMode::Process);
    assert_eq!(s.restart, Restart::Always);
    assert_eq!(s.restart_sec, Duration::from_secs(5));
    for r in [Resource::Nproc, Resource::Core, Resource::Nofile] {
        assert_eq!(s.limits[&r].soft, LimitValue::Infinity, "{r:?}");
    }
    assert_eq!(s.tasks_max, Some(TasksMax::Infinity));
    assert_eq!(s.oom_score_adjust, Some(-999));
    assert_eq!(s.timeout_start, TimeSpan::Finite(Duration::from_secs(90)));
}

#[test]
fn debian_ssh_service() {
    let root = Root::new();
    root.write("/lib/systemd/system/ssh.service", SSH);
    root.write("/etc/default/ssh", DEFAULT_SSH);
    let unit = root.loader().load("ssh.service");
    clean(&unit);
    print_ignored(&unit);
    assert!(unit.ignored.is_empty(), "every ssh.service directive is implemented");
    assert_eq!(unit.documentation, vec!["man:sshd(8)", "man:sshd_config(5)"]);
    assert_eq!(unit.conditions.len(), 1);
    let c = &unit.conditions[0];
    assert!(c.negate && !c.trigger && c.value == "/etc/ssh/sshd_not_to_be_run" && c.line == 5);
    let env = condition::ConditionEnv { root: root.path("/"), ..Default::default() };
    assert!(condition::check(&unit.conditions, &env).is_ok());
    root.write("/etc/ssh/sshd_not_to_be_run", "");
    assert!(condition::check(&unit.conditions, &env).is_err());

    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.service_type, ServiceType::Notify);
    assert_eq!(s.environment_files.len(), 1);
    assert!(s.environment_files[0].optional);
    assert_eq!(s.environment_files[0].path, PathBuf::from("/etc/default/ssh"));
    assert_eq!(s.restart, Restart::OnFailure);
    assert_eq!(s.restart_prevent_exit_status.codes, vec![255]);
    assert_eq!(s.runtime_directory.names, vec!["sshd"]);
    assert_eq!(s.runtime_directory.mode, 0o755);
    assert_eq!(s.exec_reload.len(), 2);
    assert_eq!(s.exec_reload[1].argv, vec!["/bin/kill", "-HUP", "$MAINPID"]);
    assert_eq!(unit.install.alias, vec!["sshd.service"]);

    // What the runtime will do with the environment file: `$SSHD_OPTS` is empty → no word.
    let file = env::parse_env_file(&std::fs::read_to_string(root.path("/etc/default/ssh")).unwrap());
    assert_eq!(file.vars, vec![("SSHD_OPTS".to_string(), String::new())]);
    assert_eq!(s.exec_start[0].argv_with_env(&file.vars), vec!["/usr/sbin/sshd", "-D"]);
    let mut environment = file.vars.clone();
    env::set_var(&mut environment, "MAINPID", "4242");
    assert_eq!(s.exec_reload[1].argv_with_env(&environment), vec!["/bin/kill", "-HUP", "4242"]);
}

#[test]
fn debian_ssh_socket_is_loaded_but_unsupported() {
    let root = Root::new();
    root.write("/lib/systemd/system/ssh.socket", SSH_SOCKET);
    let unit = root.loader().load("ssh.socket");
    clean(&unit);
    print_ignored(&unit);
    assert_eq!(unit.state, LoadState::Unsupported);
    assert_eq!(unit.ignored.len(), 1, "one warning for the type, none per [Socket] line");
    assert!(matches!(unit.ignored[0].what, IgnoredWhat::UnitType(UnitType::Socket)));
    assert_eq!(unit.deps.before, vec!["sockets.target"]);
}

/// The boot of an image with containerd and ssh enabled (links as `systemctl enable` makes
/// them), with the built-in targets.
#[test]
fn boot_plan_for_enabled_debian_units() {
    let root = Root::new();
    root.write("/lib/systemd/system/containerd.service", CONTAINERD);
    root.write("/lib/systemd/system/ssh.service", SSH);
    let wants = "/etc/systemd/system/multi-user.target.wants";
    root.link(&format!("{wants}/containerd.service"), "/lib/systemd/system/containerd.service");
    root.link(&format!("{wants}/ssh.service"), "/lib/systemd/system/ssh.service");
    root.link("/etc/systemd/system/sshd.service", "/lib/systemd/system/ssh.service");
    let loader = root.loader();

    let ssh = loader.load("sshd.service");
    assert_eq!(ssh.name, "ssh.service", "sshd.service is an alias");
    assert_eq!(ssh.aliases, vec!["sshd.service"]);
    let links = crate::install::install_links(&ssh).unwrap();
    let target = PathBuf::from("/lib/systemd/system/ssh.service");
    assert_eq!(
        links,
        vec![
            (PathBuf::from(wants).join("ssh.service"), target.clone()),
            ("/etc/systemd/system/sshd.service".into(), target),
        ]
    );

    let set = UnitSet::load(&loader, &["default.target"]);
    assert_eq!(set.resolve("default.target"), Some("multi-user.target"));
    assert_eq!(set.resolve("sshd.service"), Some("ssh.service"));
    let multi = set.get("multi-user.target").unwrap();
    assert_eq!(multi.deps.wants, vec!["containerd.service", "ssh.service"]);
    assert!(multi.deps.after.contains(&"ssh.service".to_string()), "targets order after what they pull in");

    let plan = set.plan_start("default.target", &[]);
    assert!(plan.problems.is_empty(), "{:#?}", plan.problems);
    assert_eq!(
        plan.start,
        vec!["sysinit.target", "basic.target", "containerd.service", "ssh.service", "multi-user.target"]
    );
    assert_eq!(plan.waits_for["basic.target"], vec!["sysinit.target"]);
    assert_eq!(plan.waits_for["ssh.service"], vec!["basic.target", "sysinit.target"]);
    assert_eq!(plan.waits_for["multi-user.target"], vec!["basic.target", "containerd.service", "ssh.service"]);

    // Shutdown: shutdown.target conflicts with every service and target that has default
    // dependencies; they stop in reverse start order.
    let mut set = set;
    set.load_more(&loader, &["shutdown.target"]);
    let active: Vec<String> = plan.start.clone();
    let down = set.plan_start("shutdown.target", &active);
    assert!(down.problems.is_empty(), "{:#?}", down.problems);
    assert_eq!(down.start, vec!["shutdown.target"]);
    assert_eq!(
        down.stop,
        vec!["multi-user.target", "ssh.service", "containerd.service", "basic.target", "sysinit.target"]
    );
}

#[test]
fn builtin_targets_and_overrides() {
    let root = Root::new();
    let loader = root.loader();
    for name in builtin::TARGETS {
        let u = loader.load(name);
        clean(&u);
        assert_eq!(u.state, LoadState::Loaded, "{name}");
        assert!(u.fragment.is_none());
    }
    let basic = loader.load("basic.target");
    assert_eq!(basic.deps.requires, vec!["sysinit.target"]);
    assert!(basic.deps.after.contains(&"sysinit.target".to_string()));
    assert!(loader.load("shutdown.target").deps.conflicts.is_empty());
    assert!(loader.load("boot-complete.target").deps.requires.contains(&"sysinit.target".to_string()));
    // A file wins over the built-in, and default.target may point elsewhere.
    root.write("/etc/systemd/system/network-online.target", "[Unit]\nDescription=Mine\n");
    root.link("/etc/systemd/system/default.target", "/usr/lib/systemd/system/boot-complete.target");
    root.write("/usr/lib/systemd/system/boot-complete.target", "[Unit]\nDescription=From the image\n");
    let loader = root.loader();
    assert_eq!(loader.load("network-online.target").description, "Mine");
    assert_eq!(loader.load("default.target").name, "boot-complete.target");
    // Without built-ins, nothing is found.
    let bare = root.loader().builtins(false);
    assert_eq!(bare.load("sysinit.target").state, LoadState::NotFound);
}

#[test]
fn dropins_override_by_file_name_and_apply_in_order() {
    let root = Root::new();
    root.write(
        "/usr/lib/systemd/system/web-front.service",
        "[Service]\nExecStart=/bin/old\nEnvironment=ORDER=unit\nRestart=no\n",
    );
    // Same file name in /etc and /usr/lib: only the /etc one is read.
    root.write("/usr/lib/systemd/system/web-front.service.d/10-a.conf", "[Service]\nEnvironment=SHADOWED=1\n");
    root.write("/etc/systemd/system/web-front.service.d/10-a.conf", "[Service]\nEnvironment=ORDER=etc-10\n");
    root.write(
        "/usr/lib/systemd/system/web-front.service.d/20-b.conf",
        "[Service]\nExecStart=\nExecStart=/bin/new\nRestart=on-failure\n",
    );
    // Type-wide and dash-prefix drop-ins.
    root.write("/lib/systemd/system/service.d/05-all.conf", "[Service]\nEnvironment=ALL=1 ORDER=type\n");
    root.write("/etc/systemd/system/web-.service.d/30-prefix.conf", "[Service]\nEnvironment=ORDER=prefix\n");
    // A drop-in masked in /etc hides the one below it.
    root.write("/usr/lib/systemd/system/web-front.service.d/40-gone.conf", "[Service]\nRestart=always\n");
    root.link("/etc/systemd/system/web-front.service.d/40-gone.conf", "/dev/null");
    // Not a .conf: not read.
    root.write("/etc/systemd/system/web-front.service.d/README", "[Service]\nRestart=always\n");

    let unit = root.loader().load("web-front.service");
    clean(&unit);
    let names: Vec<String> = unit.dropins.iter().map(|p| p.strip_prefix("/").unwrap().display().to_string()).collect();
    assert_eq!(
        names,
        vec![
            "lib/systemd/system/service.d/05-all.conf",
            "etc/systemd/system/web-front.service.d/10-a.conf",
            "usr/lib/systemd/system/web-front.service.d/20-b.conf",
            "etc/systemd/system/web-.service.d/30-prefix.conf",
        ]
    );
    let s = unit.service.unwrap();
    let env: Vec<(&str, &str)> = s.environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, vec![("ORDER", "unit"), ("ALL", "1"), ("ORDER", "type"), ("ORDER", "etc-10"), ("ORDER", "prefix")]);
    assert_eq!(s.exec_start.len(), 1);
    assert_eq!(s.exec_start[0].path, "/bin/new");
    assert_eq!(s.restart, Restart::OnFailure);
}

#[test]
fn masking() {
    let root = Root::new();
    root.write("/lib/systemd/system/a.service", "[Service]\nExecStart=/bin/a\n");
    root.write("/lib/systemd/system/b.service", "[Service]\nExecStart=/bin/b\n");
    root.link("/etc/systemd/system/a.service", "/dev/null");
    root.write("/etc/systemd/system/b.service", "");
    root.write("/etc/systemd/system/app.target", "[Unit]\nWants=a.service\n");
    root.write("/etc/systemd/system/strict.target", "[Unit]\nRequires=b.service\n");
    let loader = root.loader();
    assert_eq!(loader.load("a.service").state, LoadState::Masked);
    assert_eq!(loader.load("b.service").state, LoadState::Masked, "an empty file masks too");

    let set = UnitSet::load(&loader, &["app.target", "strict.target"]);
    let plan = set.plan_start("app.target", &[]);
    assert!(!plan.start.contains(&"a.service".to_string()));
    assert!(plan.start.contains(&"app.target".to_string()));
    assert_eq!(plan.problems.len(), 1);
    assert!(!plan.problems[0].is_error(), "a masked wanted unit is only skipped: {}", plan.problems[0]);
    let plan = set.plan_start("strict.target", &[]);
    assert!(plan.start.is_empty());
    assert!(plan.problems.iter().any(Problem::is_error));
    println!("{}", plan.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"));
}

#[test]
fn templates_and_instances() {
    let root = Root::new();
    root.write(
        "/lib/systemd/system/kube@.service",
        "[Unit]\nDescription=Kube %I (%n, %p, %i)\nRequiresMountsFor=%t/containers\n\
         [Service]\nType=notify\nExecStart=/usr/bin/podman kube play \"%I\" --log=%t/%p-%i.log\n\
         Environment=INSTANCE=%i\n[Install]\nWantedBy=default.target\nDefaultInstance=etc-kube-web.yaml\n",
    );
    root.write("/lib/systemd/system/kube@.service.d/10-all.conf", "[Service]\nTimeoutStopSec=70\n");
    root.write("/etc/systemd/system/kube@special.service.d/10-own.conf", "[Service]\nTimeoutStopSec=5\n");
    root.link("/lib/systemd/system/kube@.service.wants/helper@.service", "/lib/systemd/system/helper@.service");
    root.write("/lib/systemd/system/helper@.service", "[Service]\nExecStart=/bin/helper %i\n");
    let loader = root.loader();

    let unit = loader.load("kube@etc-kube-web\\x2dapp.yaml.service");
    clean(&unit);
    assert_eq!(unit.name, "kube@etc-kube-web\\x2dapp.yaml.service");
    assert_eq!(unit.instance.as_deref(), Some("etc-kube-web\\x2dapp.yaml"));
    assert_eq!(
        unit.description,
        "Kube etc/kube/web-app.yaml (kube@etc-kube-web\\x2dapp.yaml.service, kube, etc-kube-web\\x2dapp.yaml)"
    );
    assert_eq!(unit.fragment.as_deref(), Some(Path::new("/lib/systemd/system/kube@.service")));
    assert_eq!(unit.requires_mounts_for, vec![PathBuf::from("/run/containers")]);
    let s = unit.service.as_ref().unwrap();
    assert_eq!(
        s.exec_start[0].argv,
        vec![
            "/usr/bin/podman",
            "kube",
            "play",
            "etc/kube/web-app.yaml",
            "--log=/run/kube-etc-kube-web\\x2dapp.yaml.log"
        ]
    );
    assert_eq!(s.environment, vec![("INSTANCE".to_string(), "etc-kube-web\\x2dapp.yaml".to_string())]);
    assert_eq!(s.timeout_stop, TimeSpan::Finite(Duration::from_secs(70)));
    assert_eq!(unit.deps.wants, vec!["helper@etc-kube-web\\x2dapp.yaml.service"], "template .wants/ instantiated");

    let special = loader.load("kube@special.service");
    assert_eq!(special.service.unwrap().timeout_stop, TimeSpan::Finite(Duration::from_secs(5)));

    // An instance with its own file uses it instead of the template.
    root.write("/etc/systemd/system/kube@own.service", "[Service]\nExecStart=/bin/own\n");
    let own = root.loader().load("kube@own.service");
    assert_eq!(own.fragment.as_deref(), Some(Path::new("/etc/systemd/system/kube@own.service")));

    // Enabling the template enables its default instance.
    let template = loader.load("kube@.service");
    let links = crate::install::install_links(&template).unwrap();
    assert_eq!(links[0].0, PathBuf::from("/etc/systemd/system/default.target.wants/kube@etc-kube-web.yaml.service"));
    // A template's own settings resolve %i to "".
    assert!(loader.load("missing@x.service").state == LoadState::NotFound);
}

#[test]
fn alias_chains_and_dropins_through_aliases() {
    let root = Root::new();
    root.write("/lib/systemd/system/real.service", "[Service]\nExecStart=/bin/real\n");
    root.link("/lib/systemd/system/middle.service", "real.service");
    root.link("/etc/systemd/system/outer.service", "/lib/systemd/system/middle.service");
    root.write("/etc/systemd/system/middle.service.d/x.conf", "[Unit]\nDescription=via alias\n");
    // A unit linked in from elsewhere under its own name is not an alias.
    root.write("/opt/linked.service", "[Service]\nExecStart=/bin/linked\n");
    root.link("/etc/systemd/system/linked.service", "/opt/linked.service");
    root.link("/etc/systemd/system/dangling.service", "/nowhere/dangling.service");
    let loader = root.loader();
    let u = loader.load("outer.service");
    clean(&u);
    assert_eq!(u.name, "real.service");
    assert_eq!(u.aliases, vec!["middle.service", "outer.service"]);
    assert_eq!(u.description, "via alias");
    let linked = loader.load("linked.service");
    assert_eq!(linked.name, "linked.service");
    assert_eq!(linked.fragment.as_deref(), Some(Path::new("/opt/linked.service")));
    let dangling = loader.load("dangling.service");
    assert_eq!(dangling.state, LoadState::Error);
    println!("{}", dangling.errors[0]);
}

#[test]
fn syntax_details_in_a_real_file() {
    let root = Root::new();
    root.write(
        "/etc/systemd/system/tricky.service",
        concat!(
            "# leading comment\n",
            "[Unit]\n",
            "Description=Tricky %n on %H\n",
            "After=a.service \\\n",
            "  # a comment inside the continuation\n",
            "  b.service\n",
            "X-Custom=ignored silently\n",
            "[Service]\n",
            "Type=oneshot\n",
            "RemainAfterExit=yes\n",
            "ExecStart=/bin/sh -c 'echo \"a  b\"' \\\n",
            "   \"c d\" \\x41\\n\n",
            "ExecStart=-/bin/true ; /bin/false\n",
            "Environment=\"A=1 2\" B=x\n",
            "Environment=\n",
            "Environment=C=3\n",
            "TimeoutStartSec=5min 20s\n",
            "StartLimitBurst=3\n",
            "StartLimitInterval=60s\n",
            "ProtectHome=yes\n",
            "[X-Section]\n",
            "Whatever=1\n",
            "[Frobnicate]\n",
            "Key=1\n",
        ),
    );
    let unit = root.loader().load("tricky.service");
    clean(&unit);
    print_ignored(&unit);
    assert_eq!(unit.description, "Tricky tricky.service on berth");
    assert!(unit.deps.after.starts_with(&["a.service".to_string(), "b.service".to_string()]));
    assert_eq!(unit.start_limit_burst, 3);
    assert_eq!(unit.start_limit_interval, TimeSpan::Finite(Duration::from_secs(60)));
    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.exec_start.len(), 3);
    assert_eq!(s.exec_start[0].argv, vec!["/bin/sh", "-c", "echo \"a  b\"", "c d", "A\n"]);
    assert_eq!(s.exec_start[0].line, 11);
    assert!(s.exec_start[1].flags.ignore_failure && !s.exec_start[2].flags.ignore_failure);
    assert_eq!(s.environment, vec![("C".to_string(), "3".to_string())]);
    assert_eq!(s.timeout_start, TimeSpan::Finite(Duration::from_secs(320)));
    let lines: Vec<(usize, String)> = unit.ignored.iter().map(|i| (i.line, i.message())).collect();
    assert_eq!(
        lines,
        vec![
            (20, "[Service] ProtectHome= is not supported by berth-init and will be ignored".to_string()),
            (23, "section [Frobnicate] is not supported by berth-init and will be ignored".to_string()),
        ]
    );
}

#[test]
fn errors_name_file_line_and_unit() {
    let root = Root::new();
    root.write(
        "/etc/systemd/system/broken.service",
        "[Unit]\nRequires=not a unit\n[Service\nType=simple\nExecStart=/bin/x\n",
    );
    root.write("/etc/systemd/system/broken.service.d/bad.conf", "[Service]\nTimeoutSec=soon\n");
    let unit = root.loader().load("broken.service");
    let shown: Vec<String> = unit.errors.iter().map(|e| e.to_string()).collect();
    println!("{}", shown.join("\n"));
    let base = root.path("/etc/systemd/system/broken.service").display().to_string();
    assert_eq!(unit.errors.len(), 4, "{shown:#?}");
    assert!(shown[0].starts_with(&format!("{base}:2: broken.service: [Unit] Requires=: `not`")), "{shown:?}");
    assert!(shown[1].starts_with(&format!("{base}:3: broken.service: invalid section header")), "{shown:?}");
    assert!(shown[2].starts_with(&format!("{base}.d/bad.conf:2: broken.service: [Service] TimeoutSec=")), "{shown:?}");
    // The lines after the bad header are lost, ExecStart= with them.
    assert!(shown[3].ends_with("broken.service: the service has no ExecStart= and no ExecStop="), "{shown:?}");
    assert_eq!(unit.state, LoadState::Error, "a bad section header makes the file unusable");
}

#[test]
fn start_order_with_cycles() {
    let root = Root::new();
    let w = |name: &str, text: &str| root.write(&format!("/etc/systemd/system/{name}"), text);
    // app.target wants a and b, requires c; a → b → c → a is an After= cycle.
    w("app.target", "[Unit]\nWants=a.service b.service\nRequires=c.service\n");
    w("a.service", "[Unit]\nAfter=c.service\n[Service]\nExecStart=/bin/a\n");
    w("b.service", "[Unit]\nAfter=a.service\nWants=d.service\n[Service]\nExecStart=/bin/b\n");
    w("c.service", "[Unit]\nAfter=b.service\n[Service]\nExecStart=/bin/c\n");
    w("d.service", "[Unit]\nBefore=b.service\n[Service]\nExecStart=/bin/d\n");
    let loader = root.loader();
    let set = UnitSet::load(&loader, &["app.target"]);
    let plan = set.plan_start("app.target", &[]);
    println!("{:#?}", plan.problems);
    assert_eq!(plan.problems.len(), 1);
    let Problem::OrderingCycle { cycle, broken } = &plan.problems[0] else { panic!("{:?}", plan.problems) };
    assert_eq!(cycle.len(), 3);
    assert!(!plan.problems[0].is_error());
    // The first wanted-only unit in the cycle goes (a or b, never the required c).
    let CycleBreak::DroppedUnit(dropped) = broken else { panic!() };
    assert_ne!(dropped, "c.service");
    assert!(!plan.start.contains(dropped));
    assert!(plan.start.contains(&"c.service".to_string()));
    // The order holds for what remains.
    let pos = |n: &str| plan.start.iter().position(|x| x == n);
    for (unit, waits) in &plan.waits_for {
        for w in waits {
            assert!(pos(w) < pos(unit), "{w} before {unit}");
        }
    }
    assert_eq!(plan.start.last().map(String::as_str), Some("app.target"));

    // Only required units in the cycle: an ordering edge is ignored, reported as an error.
    w("hard.target", "[Unit]\nRequires=x.service y.service\n");
    w("x.service", "[Unit]\nAfter=y.service\n[Service]\nExecStart=/bin/x\n");
    w("y.service", "[Unit]\nAfter=x.service\n[Service]\nExecStart=/bin/y\n");
    let set = UnitSet::load(&root.loader(), &["hard.target"]);
    let plan = set.plan_start("hard.target", &[]);
    assert_eq!(plan.problems.len(), 1, "{:#?}", plan.problems);
    assert!(plan.problems[0].is_error());
    println!("{}", plan.problems[0]);
    assert!(plan.start.contains(&"x.service".to_string()) && plan.start.contains(&"y.service".to_string()));

    // Stopping is the reverse of starting.
    let names: Vec<String> = ["c.service", "app.target", "sysinit.target"].iter().map(|s| s.to_string()).collect();
    let set = UnitSet::load(&root.loader(), &["app.target"]);
    let (order, problems) = set.stop_order(&names);
    assert!(problems.is_empty());
    assert_eq!(order, vec!["app.target", "c.service", "sysinit.target"]);
}

#[test]
fn stop_plan_orders_through_units_that_are_not_stopped() {
    let root = Root::new();
    let w = |name: &str, text: &str| root.write(&format!("/etc/systemd/system/{name}"), text);
    // net before online.target, clock and agent after it; the target itself is not stopped.
    w("online.target", "[Unit]\nDescription=online\n");
    w("net.service", "[Unit]\nBefore=online.target\n[Service]\nExecStart=/bin/net\n");
    w("clock.service", "[Unit]\nAfter=online.target\n[Service]\nExecStart=/bin/clock\n");
    w("agent.service", "[Unit]\nAfter=online.target clock.service\n[Service]\nExecStart=/bin/agent\n");
    w("other.service", "[Service]\nExecStart=/bin/other\n");
    w("all.target", "[Unit]\nWants=net.service clock.service agent.service other.service online.target\n");
    let set = UnitSet::load(&root.loader(), &["all.target"]);
    let names: Vec<String> =
        ["net.service", "clock.service", "agent.service", "other.service"].iter().map(|s| s.to_string()).collect();
    let (plan, problems) = set.stop_plan(&names);
    assert!(problems.is_empty(), "{problems:?}");
    let after = |unit: &str| plan.iter().find(|(u, _)| u == unit).map(|(_, a)| a.clone()).unwrap();
    let at = |unit: &str| plan.iter().position(|(u, _)| u == unit).unwrap();
    assert_eq!(after("agent.service"), Vec::<String>::new());
    assert_eq!(after("clock.service"), vec!["agent.service"]);
    assert_eq!(after("net.service"), vec!["agent.service", "clock.service"]);
    assert_eq!(after("other.service"), Vec::<String>::new());
    assert!(at("agent.service") < at("clock.service") && at("clock.service") < at("net.service"), "{plan:?}");
    let (order, _) = set.stop_order(&names);
    assert_eq!(order, plan.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>());
}

#[test]
fn conflicts_and_unavailable_units() {
    let root = Root::new();
    let w = |name: &str, text: &str| root.write(&format!("/etc/systemd/system/{name}"), text);
    w("goal.target", "[Unit]\nRequires=keep.service\nWants=loser.service gone.service sock.socket\n");
    w("keep.service", "[Unit]\nConflicts=loser.service\n[Service]\nExecStart=/bin/keep\n");
    w("loser.service", "[Service]\nExecStart=/bin/loser\n");
    w("sock.socket", "[Socket]\nListenStream=1\n");
    w("needs-gone.service", "[Unit]\nRequires=gone.service\n[Service]\nExecStart=/bin/x\n");
    w("top.target", "[Unit]\nWants=needs-gone.service\n");
    let set = UnitSet::load(&root.loader(), &["goal.target", "top.target"]);
    let plan = set.plan_start("goal.target", &["old.service".to_string()]);
    let text: Vec<String> = plan.problems.iter().map(|p| p.to_string()).collect();
    println!("{}", text.join("\n"));
    assert!(plan.start.contains(&"keep.service".to_string()));
    assert!(!plan.start.contains(&"loser.service".to_string()));
    assert!(!plan.start.contains(&"sock.socket".to_string()));
    assert!(plan.problems.iter().all(|p| !p.is_error()), "{text:#?}");
    assert_eq!(plan.problems.len(), 3, "{text:#?}");
    // A unit that requires a missing one is left out; its target still starts.
    let plan = set.plan_start("top.target", &[]);
    assert!(!plan.start.contains(&"needs-gone.service".to_string()));
    assert!(plan.start.contains(&"top.target".to_string()));
    assert!(
        plan.problems
            .iter()
            .any(|p| matches!(p, Problem::DependencyFailed { unit, .. } if unit == "needs-gone.service"))
    );
}

#[test]
fn signals_and_exit_statuses_in_units() {
    let root = Root::new();
    root.write(
        "/etc/systemd/system/sig.service",
        "[Service]\nExecStart=/bin/x\nKillSignal=SIGINT\nSuccessExitStatus=143 SIGTERM\n",
    );
    let u = root.loader().load("sig.service");
    clean(&u);
    let s = u.service.unwrap();
    assert_eq!(s.kill_signal, Signal::SIGINT);
    assert_eq!(s.success_exit_status.codes, vec![143]);
}

#[test]
fn verify_style_load_of_a_file_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("solo.service");
    std::fs::write(&path, "[Service]\nExecStart=/bin/solo\nFrob=1\n").unwrap();
    std::fs::create_dir(dir.path().join("solo.service.d")).unwrap();
    std::fs::write(dir.path().join("solo.service.d/b.conf"), "[Service]\nRestart=always\n").unwrap();
    std::fs::write(dir.path().join("solo.service.d/a.conf"), "[Service]\nRestart=on-failure\nNice=5\n").unwrap();
    let root = Root::new();
    let unit = root.loader().load_file(&path);
    clean(&unit);
    assert_eq!(unit.dropins.len(), 2);
    assert!(unit.dropins[0].ends_with("a.conf"));
    let s = unit.service.as_ref().unwrap();
    assert_eq!(s.restart, Restart::Always);
    assert_eq!(s.nice, Some(5));
    assert_eq!(unit.ignored.len(), 1);
    assert_eq!(unit.ignored[0].file, path);
    assert_eq!(unit.ignored[0].line, 3);
    let bad = root.loader().load_file(&dir.path().join("no-suffix"));
    assert_eq!(bad.state, LoadState::Error);
}
