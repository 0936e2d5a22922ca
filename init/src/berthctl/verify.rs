//! `verify`: unit files checked offline, like `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_units::error::location;
use berth_units::{ErrorKind, HostInfo, LoadState, Loader, Unit, syntax};

use super::USAGE;

/// `berthctl verify [--root DIR] FILE...`: like `systemd-analyze verify`, works on any machine.
/// Errors and warnings go to stderr as `FILE:LINE: error: …` / `FILE:LINE: warning: …`.
pub(super) fn verify(args: &[String]) -> i32 {
    let mut root: Option<PathBuf> = None;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut options = true;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--" if options => options = false,
            "--root" if options => match iter.next() {
                Some(dir) => root = Some(PathBuf::from(dir)),
                None => {
                    crate::sys::log::err("berthctl verify: --root needs a directory\n");
                    return 2;
                }
            },
            a if options && a.starts_with("--root=") => root = Some(PathBuf::from(&a["--root=".len()..])),
            a if options && a.starts_with('-') && a.len() > 1 => {
                crate::sys::log::err(&format!("berthctl verify: unknown option `{a}`\n\n{USAGE}"));
                return 2;
            }
            a => files.push(PathBuf::from(a)),
        }
    }
    if files.is_empty() {
        crate::sys::log::err(&format!("berthctl verify: name at least one unit file\n\n{USAGE}"));
        return 2;
    }
    if let Some(r) = &root
        && !r.is_dir()
    {
        crate::sys::log::err(&format!("berthctl verify: --root {}: not a directory\n", r.display()));
        return 2;
    }
    let root_dir = root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let loader = Loader::new(&root_dir, HostInfo::detect(&root_dir));
    let mut states: BTreeMap<String, LoadState> = BTreeMap::new();
    let mut errors = 0;
    for file in &files {
        let unit = loader.load_file(file);
        let mut report = Report::default();
        if unit.state == LoadState::Masked {
            report.warning(file, 0, &format!("{} is masked (an empty file or a link to /dev/null)", unit.name));
        }
        for e in &unit.errors {
            report.error(&e.file, e.line, &e.kind.to_string());
        }
        for w in &unit.ignored {
            report.warning(&w.file, w.line, &w.message());
        }
        if root.is_some() {
            check_against_root(&loader, &unit, &mut states, &mut report);
        }
        errors += report.errors;
        crate::sys::log::err(&report.sorted(&unit));
    }
    if errors > 0 { 1 } else { 0 }
}

/// The messages about one unit.
#[derive(Default)]
pub(super) struct Report {
    entries: Vec<(PathBuf, usize, String)>,
    errors: usize,
}

impl Report {
    fn error(&mut self, file: &Path, line: usize, message: &str) {
        self.errors += 1;
        self.entries.push((file.to_path_buf(), line, format!("{}: error: {message}\n", location(file, line))));
    }

    fn warning(&mut self, file: &Path, line: usize, message: &str) {
        self.entries.push((file.to_path_buf(), line, format!("{}: warning: {message}\n", location(file, line))));
    }

    /// The messages in reading order: the unit file, then each drop-in, by line.
    fn sorted(mut self, unit: &Unit) -> String {
        let files: Vec<&PathBuf> = unit.fragment.iter().chain(&unit.dropins).collect();
        let rank = |f: &PathBuf| files.iter().position(|x| *x == f).unwrap_or(files.len());
        self.entries.sort_by_key(|(file, line, _)| (rank(file), *line));
        self.entries.into_iter().map(|(_, _, text)| text).collect()
    }
}

/// With `--root`: the units `unit` requires or wants, its install targets, and its programs
/// must exist in the image.
pub(super) fn check_against_root(
    loader: &Loader,
    unit: &Unit,
    states: &mut BTreeMap<String, LoadState>,
    report: &mut Report,
) {
    let root = loader.root().display().to_string();
    let mut state_of = |name: &str| *states.entry(name.to_string()).or_insert_with(|| loader.load(name).state);
    let deps = [("Requires", &unit.deps.requires, true), ("Wants", &unit.deps.wants, false)];
    for (key, names, required) in deps {
        for name in names {
            let (file, line) = locate(unit, "Unit", key, name);
            let reason = match state_of(name) {
                LoadState::Loaded => continue,
                LoadState::NotFound => format!("no such unit in {root}"),
                LoadState::Masked => format!("masked in {root}"),
                LoadState::Error => format!("the unit in {root} has errors"),
                LoadState::Unsupported => {
                    report.warning(&file, line, &format!("{key}={name}: berth-init does not run this unit type"));
                    continue;
                }
            };
            let err = ErrorKind::Dependency { key: key.to_string(), name: name.clone(), reason };
            if required {
                report.error(&file, line, &err.to_string());
            } else {
                report.warning(&file, line, &format!("{err}; ignored"));
            }
        }
    }
    for (key, names) in [("WantedBy", &unit.install.wanted_by), ("RequiredBy", &unit.install.required_by)] {
        for name in names {
            if state_of(name) != LoadState::Loaded {
                let (file, line) = locate(unit, "Install", key, name);
                report.warning(&file, line, &format!("[Install] {key}={name}: no such unit in {root}"));
            }
        }
    }
    let Some(service) = &unit.service else { return };
    let lists = [
        ("ExecCondition", &service.exec_condition),
        ("ExecStartPre", &service.exec_start_pre),
        ("ExecStart", &service.exec_start),
        ("ExecStartPost", &service.exec_start_post),
        ("ExecReload", &service.exec_reload),
        ("ExecStop", &service.exec_stop),
        ("ExecStopPost", &service.exec_stop_post),
    ];
    for (key, commands) in lists {
        for command in commands {
            if loader.find_program(&command.path).is_some() {
                continue;
            }
            let file = locate_line(unit, "Service", key, command.line);
            let kind = ErrorKind::Value {
                section: "Service".into(),
                key: key.into(),
                reason: format!("{} is not an executable file in {root}", command.path),
            };
            if command.flags.ignore_failure {
                report.warning(&file, command.line, &format!("{kind}; ignored (`-` prefix)"));
            } else {
                report.error(&file, command.line, &kind.to_string());
            }
        }
    }
}

/// The files a unit was read from (the unit file, then its drop-ins), with their text.
pub(super) fn sources(unit: &Unit) -> Vec<(PathBuf, String)> {
    unit.fragment
        .iter()
        .chain(&unit.dropins)
        .filter_map(|p| std::fs::read_to_string(p).ok().map(|t| (p.clone(), t)))
        .collect()
}

/// The last line that sets `key` in `section` with `word` in its value (where a dependency
/// came from); the unit file with line 0 when none does (a default dependency).
pub(super) fn locate(unit: &Unit, section: &str, key: &str, word: &str) -> (PathBuf, usize) {
    let mut found = (unit.fragment.clone().unwrap_or_else(|| PathBuf::from(&unit.name)), 0);
    for (path, text) in sources(unit) {
        for a in syntax::parse(&text).assignments {
            if a.section == section && a.key == key && a.value.split_whitespace().any(|w| w == word) {
                found = (path.clone(), a.line);
            }
        }
    }
    found
}

/// The file (unit file or drop-in) in which `key` is set on line `line`.
pub(super) fn locate_line(unit: &Unit, section: &str, key: &str, line: usize) -> PathBuf {
    let fallback = unit.fragment.clone().unwrap_or_else(|| PathBuf::from(&unit.name));
    sources(unit)
        .into_iter()
        .rev()
        .find(|(_, text)| {
            syntax::parse(text).assignments.iter().any(|a| a.section == section && a.key == key && a.line == line)
        })
        .map(|(p, _)| p)
        .unwrap_or(fallback)
}
