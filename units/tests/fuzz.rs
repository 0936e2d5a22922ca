//! Fuzz targets (berth-fuzzkit): unit files, environment files and setting values, from the
//! seeds in `fuzz/corpus/` and Debian's own files in `tests/fixtures/`. Whatever the bytes, the
//! parser and loader return errors, never panic (overflow checks on), and a loaded unit can be
//! planned, ordered for stopping and enabled.

use std::path::{Path, PathBuf};

use berth_fuzzkit::proptest::prelude::*;
use berth_fuzzkit::{Corpus, run};
use berth_units::specifiers::Specifiers;
use berth_units::syntax::{self, Split};
use berth_units::{HostInfo, Install, Loader, UnitName, UnitSet, command, condition, env, load, name, service, time};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const UNIT_TOKENS: &[&str] = &[
    "[Unit]\n",
    "[Service]\n",
    "[Install]\n",
    "ExecStart=",
    "ExecStart=\n",
    "Type=notify\n",
    "Environment=",
    "EnvironmentFile=",
    "Wants=",
    "After=",
    "Alias=",
    "WantedBy=",
    "DefaultInstance=",
    "TimeoutStartSec=",
    "LimitNOFILE=",
    "TasksMax=",
    "Restart=always\n",
    "RestartSec=",
    "Condition",
    "%i",
    "%",
    "\\x",
    "\\u",
    "\\U",
    "\\0",
    "min",
    "us",
    "infinity",
    "@",
    ".service",
    ".target",
];

/// The unit file under several names (plain, template instance, target, unsupported type),
/// loaded as a system unit in a scratch root, with a pulled-in unit and a drop-in of its own.
#[test]
fn fuzz_unit_files() {
    let root = tempfile::tempdir().unwrap();
    for d in load::SYSTEM_UNIT_DIRS {
        std::fs::create_dir_all(root.path().join(&d[1..])).unwrap();
    }
    let etc = root.path().join("etc/systemd/system");
    std::fs::write(etc.join("other.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let host = HostInfo { hostname: "berth".into(), machine_id: "0123456789abcdef".into(), ..HostInfo::default() };
    let names = ["fuzz.service", "fuzz@one.service", "fuzz.target", "fuzz.socket"];
    let corpus = Corpus::load(&[corpus("unit"), fixtures()]).tokens(UNIT_TOKENS);
    let strategy = (corpus.inputs(), 0..names.len(), any::<bool>());
    run("units/unit", 3000, strategy, |(input, which, as_dropin)| {
        let text = input.text();
        let name = names[which];
        let _ = syntax::parse(&text);
        let _ = Install::parse(name, &text);
        // A fresh directory state: the file (template for an instance), or a drop-in for it.
        let file = if name.contains('@') { "fuzz@.service" } else { name };
        let dropin_dir = etc.join(format!("{file}.d"));
        for f in ["fuzz.service", "fuzz@.service", "fuzz.target", "fuzz.socket"] {
            let _ = std::fs::remove_file(etc.join(f));
        }
        let _ = std::fs::remove_dir_all(&dropin_dir);
        if as_dropin {
            std::fs::write(etc.join(file), "[Unit]\nWants=other.service\n[Service]\nExecStart=/bin/true\n").unwrap();
            std::fs::create_dir_all(&dropin_dir).unwrap();
            std::fs::write(dropin_dir.join("fuzz.conf"), &text).unwrap();
        } else {
            std::fs::write(etc.join(file), &text).unwrap();
        }
        let loader = Loader::new(root.path(), host.clone());
        let unit = loader.load(name);
        let _ = berth_units::install::install_links(&unit);
        let _ = berth_units::install::plan_enable(&loader, name);
        let _ = berth_units::install::plan_disable(&loader, name);
        let _ = loader.load_file(&etc.join(file));
        let set = UnitSet::load(&loader, &[name]);
        let plan = set.plan_start(name, &[]);
        let _ = set.stop_order(&plan.start);
        let _ = set.plan_start("other.service", &[name.to_string()]);
        Ok(())
    });
}

/// Environment files, and the same text as `Environment=` assignments.
#[test]
fn fuzz_env_files() {
    let corpus = Corpus::load(&[corpus("env"), fixtures()]).tokens(&["\\\n", "\"", "'", "=", "#", "export "]);
    run("units/env", 10_000, corpus.inputs(), |input| {
        let text = input.text();
        let parsed = env::parse_env_file(&text);
        for (k, _) in &parsed.vars {
            prop_assert!(env::valid_name(k), "{k:?} from {text:?}");
        }
        for line in text.lines() {
            let _ = env::parse_assignments(line, |s| Ok(s.to_string()));
        }
        Ok(())
    });
}

/// Every value parser a setting goes through, on each line: time spans, sizes, word splitting,
/// C escapes, unit names, specifiers, commands, conditions, signals, globs.
#[test]
fn fuzz_setting_values() {
    let corpus = Corpus::load(&[corpus("values")]).tokens(UNIT_TOKENS);
    let host = HostInfo::default();
    let unit = UnitName::parse("fuzz@inst.service").unwrap();
    let spec = Specifiers { name: &unit, fragment: Some(Path::new("/etc/systemd/system/fuzz@.service")), host: &host };
    run("units/values", 6000, corpus.inputs(), |input| {
        let text = input.text();
        for line in text.lines().chain([text.as_str()]) {
            let _ = time::parse_timespan(line);
            let _ = time::parse_timespan_usec(line);
            let _ = time::parse_timeout(line);
            let _ = time::parse_size(line);
            let _ = syntax::split_words(line, Split::UNIT);
            let _ = syntax::split_words(line, Split::RUNTIME);
            let _ = syntax::c_unescape_one(line);
            let _ = syntax::parse_bool(line);
            if let Ok(n) = UnitName::parse(line) {
                let _ = n.template();
                let _ = n.instantiate(line);
                let _ = n.stem();
            }
            let _ = name::unescape(line);
            let _ = name::unescape_path(line);
            let _ = spec.expand(line);
            if let Ok(cmds) = command::parse_exec(line, 1, |s| spec.expand(s)) {
                for c in cmds {
                    let _ = c.argv_with_env(&[("FOO".into(), line.into())]);
                }
            }
            let words: Vec<String> = line.split(' ').map(String::from).collect();
            let _ = command::expand_argv(&words, |v| Some(format!("{v} {v}")));
            for kind in ["PathExists", "PathExistsGlob", "KernelCommandLine", "Capability", "Virtualization"] {
                if let Some(k) = condition::ConditionKind::from_suffix(kind) {
                    let _ = condition::Condition::parse(k, false, line, 1, |s| Ok(s.to_string()));
                }
            }
            let _ = condition::glob_match(line, "/dev/vda1");
            let _ = condition::glob_match("/dev/vd*", line);
            let _ = condition::capability_number(line);
            let _ = service::parse_signal(line);
        }
        Ok(())
    });
}
