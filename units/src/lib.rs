//! systemd unit files for berth-init (docs/design.md §5): the parser, the loader (search path,
//! drop-ins, templates, aliases, masks, `.wants/`), typed `[Service]` configuration, and the
//! start/stop ordering of a goal target. Running units is the runtime's job; everything here
//! is pure data plus file reads, so `berthctl verify` uses the same code offline.
//!
//! Contract with the runtime: every setting that is parsed into [`Unit`] or
//! [`service::Service`] is one the runtime must honour; every other line is reported as
//! [`Ignored`] (logged once, never fatal). A line with a bad value is an error and is skipped,
//! as systemd skips it; errors that make a unit unusable (unreadable file, bad section header,
//! no `ExecStart=`, …) set [`LoadState::Error`].
//!
//! Modules: [`syntax`] (lines, sections, quoting), [`name`], [`specifiers`], [`time`],
//! [`command`], [`env`], [`condition`], [`service`], [`load`], [`install`], [`builtin`], [`graph`].

pub mod builtin;
pub mod command;
pub mod condition;
pub mod env;
pub mod error;
pub mod graph;
pub mod install;
pub mod load;
pub mod name;
pub mod service;
pub mod specifiers;
pub mod syntax;
pub mod time;
mod unit_section;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use condition::Condition;
pub use error::{ErrorKind, Ignored, UnitError, ValueError};
pub use graph::{Plan, Problem};
pub use load::Loader;
pub use name::UnitName;
pub use service::Service;
pub use specifiers::HostInfo;
pub use time::TimeSpan;

/// The unit types systemd knows. berth-init runs services and targets; the others are loaded
/// (so their `[Unit]`/`[Install]` sections and dependencies are known) and reported as ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitType {
    Service,
    Target,
    Socket,
    Timer,
    Mount,
    Automount,
    Path,
    Swap,
    Slice,
    Scope,
    Device,
}

impl UnitType {
    pub fn from_suffix(suffix: &str) -> Option<UnitType> {
        Some(match suffix {
            "service" => UnitType::Service,
            "target" => UnitType::Target,
            "socket" => UnitType::Socket,
            "timer" => UnitType::Timer,
            "mount" => UnitType::Mount,
            "automount" => UnitType::Automount,
            "path" => UnitType::Path,
            "swap" => UnitType::Swap,
            "slice" => UnitType::Slice,
            "scope" => UnitType::Scope,
            "device" => UnitType::Device,
            _ => return None,
        })
    }

    pub fn suffix(self) -> &'static str {
        match self {
            UnitType::Service => "service",
            UnitType::Target => "target",
            UnitType::Socket => "socket",
            UnitType::Timer => "timer",
            UnitType::Mount => "mount",
            UnitType::Automount => "automount",
            UnitType::Path => "path",
            UnitType::Swap => "swap",
            UnitType::Slice => "slice",
            UnitType::Scope => "scope",
            UnitType::Device => "device",
        }
    }

    /// The type-specific section (`[Service]`, `[Socket]`, …), if the type has one.
    pub fn section(self) -> Option<&'static str> {
        match self {
            UnitType::Service => Some("Service"),
            UnitType::Socket => Some("Socket"),
            UnitType::Timer => Some("Timer"),
            UnitType::Mount => Some("Mount"),
            UnitType::Automount => Some("Automount"),
            UnitType::Path => Some("Path"),
            UnitType::Swap => Some("Swap"),
            UnitType::Slice => Some("Slice"),
            UnitType::Scope => Some("Scope"),
            UnitType::Target | UnitType::Device => None,
        }
    }

    /// Whether berth-init can run units of this type.
    pub fn is_supported(self) -> bool {
        matches!(self, UnitType::Service | UnitType::Target)
    }
}

/// How loading a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    Loaded,
    /// No unit file (and no built-in default) under that name.
    NotFound,
    /// Linked to /dev/null (or an empty file): must not be started.
    Masked,
    /// Loaded, but a fatal error (see [`Unit::errors`]) makes it unusable.
    Error,
    /// A unit type berth-init does not run (`.socket`, `.timer`, …): inert, never fatal.
    Unsupported,
}

/// Requirement and ordering dependencies, after drop-ins, `.wants/`/`.requires/` directories
/// and the default dependencies. Names may be aliases: resolve them with [`UnitSet::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    pub wants: Vec<String>,
    /// `Requires=` (and `BindsTo=`, which berth-init treats the same).
    pub requires: Vec<String>,
    pub conflicts: Vec<String>,
    pub after: Vec<String>,
    pub before: Vec<String>,
}

/// The `[Install]` section: what enabling the unit creates (see [`install::install_links`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    pub alias: Vec<String>,
    pub also: Vec<String>,
    pub default_instance: Option<String>,
}

impl Install {
    /// The `[Install]` section of `text`, the unit file of `unit`, read the way the loader
    /// reads it (syntax, specifiers, list resets): what an image builder needs to enable a unit
    /// inside an image without loading it. Errors name the line.
    pub fn parse(unit: &str, text: &str) -> Result<Install, String> {
        let name = UnitName::parse(unit).map_err(|e| format!("{unit}: {e}"))?;
        let host = HostInfo::default();
        let spec = specifiers::Specifiers { name: &name, fragment: None, host: &host };
        let expand = |s: &str| spec.expand(s);
        let doc = syntax::parse(text);
        if let Some((line, e)) = doc.errors.first() {
            return Err(format!("{unit}:{line}: {e}"));
        }
        let mut install = Install::default();
        for a in doc.assignments.iter().filter(|a| a.section == "Install") {
            unit_section::apply_install(&mut install, &name, &a.key, &a.value, &expand)
                .map_err(|e| format!("{unit}:{}: {}={}: {e}", a.line, a.key, a.value))?;
        }
        Ok(install)
    }
}

/// A loaded unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The canonical name (for an alias, the name of the unit it points to).
    pub name: String,
    pub kind: UnitType,
    pub state: LoadState,
    /// The unit file as seen inside the root (`/lib/systemd/system/ssh.service`); `None` for
    /// built-in targets and units that were not found.
    pub fragment: Option<PathBuf>,
    /// Drop-ins applied after the fragment, in the order they were applied.
    pub dropins: Vec<PathBuf>,
    /// Other names of the unit (symlinks in the unit directories).
    pub aliases: Vec<String>,
    /// For `foo@bar.service`: `bar` (still escaped; `%I` is the unescaped form).
    pub instance: Option<String>,
    pub description: String,
    pub documentation: Vec<String>,
    pub deps: Dependencies,
    pub default_dependencies: bool,
    pub conditions: Vec<Condition>,
    pub asserts: Vec<Condition>,
    /// Start rate limit: at most `start_limit_burst` starts per interval (0 disables it).
    pub start_limit_interval: TimeSpan,
    pub start_limit_burst: u32,
    pub allow_isolate: bool,
    pub refuse_manual_start: bool,
    pub refuse_manual_stop: bool,
    /// Recorded only: berth-init mounts every file system before it starts units.
    pub requires_mounts_for: Vec<PathBuf>,
    pub install: Install,
    /// The `[Service]` configuration of a loaded `.service` unit.
    pub service: Option<Service>,
    pub errors: Vec<UnitError>,
    /// Directives (and unit types, sections) berth-init does not act on; log each once.
    pub ignored: Vec<Ignored>,
}

impl Unit {
    /// An empty unit named `name` in `state`, with systemd's defaults.
    pub fn new(name: &UnitName, state: LoadState) -> Unit {
        Unit {
            name: name.full.clone(),
            kind: name.kind,
            state,
            fragment: None,
            dropins: Vec::new(),
            aliases: Vec::new(),
            instance: name.instance.clone().filter(|i| !i.is_empty()),
            description: String::new(),
            documentation: Vec::new(),
            deps: Dependencies::default(),
            default_dependencies: true,
            conditions: Vec::new(),
            asserts: Vec::new(),
            start_limit_interval: TimeSpan::Finite(Duration::from_secs(10)),
            start_limit_burst: 5,
            allow_isolate: false,
            refuse_manual_start: false,
            refuse_manual_stop: false,
            requires_mounts_for: Vec::new(),
            install: Install::default(),
            service: None,
            errors: Vec::new(),
            ignored: Vec::new(),
        }
    }

    /// Whether the runtime may start this unit (loaded, of a type it runs).
    pub fn is_startable(&self) -> bool {
        self.state == LoadState::Loaded
    }

    /// `Description=`, or the name when there is none (for log lines).
    pub fn label(&self) -> &str {
        if self.description.is_empty() { &self.name } else { &self.description }
    }

    /// Every name this unit answers to.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// The units a runtime knows about, by canonical name, with their aliases.
#[derive(Debug, Clone, Default)]
pub struct UnitSet {
    units: BTreeMap<String, Unit>,
    aliases: BTreeMap<String, String>,
}

impl UnitSet {
    pub fn new() -> UnitSet {
        UnitSet::default()
    }

    /// Loads `names` and every unit they pull in (`Wants=`, `Requires=`, transitively), then
    /// adds the implicit `After=` of targets on the units they pull in.
    pub fn load(loader: &Loader, names: &[&str]) -> UnitSet {
        let mut set = UnitSet::new();
        set.load_more(loader, names);
        set
    }

    /// Like [`UnitSet::load`], adding to what is already loaded.
    pub fn load_more(&mut self, loader: &Loader, names: &[&str]) {
        let mut queue: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        while let Some(name) = queue.pop() {
            if self.resolve(&name).is_some() {
                continue;
            }
            let unit = loader.load(&name);
            // A name the loader resolved through an alias we have not seen yet.
            if unit.name != name {
                self.aliases.insert(name.clone(), unit.name.clone());
                if self.units.contains_key(&unit.name) {
                    continue;
                }
            }
            queue.extend(unit.deps.wants.iter().chain(&unit.deps.requires).cloned());
            self.insert(unit);
        }
        self.add_target_ordering();
    }

    /// Adds (or replaces) a unit.
    pub fn insert(&mut self, unit: Unit) {
        for alias in &unit.aliases {
            self.aliases.insert(alias.clone(), unit.name.clone());
        }
        self.units.insert(unit.name.clone(), unit);
    }

    /// The canonical name for `name` (itself, or the unit it is an alias of), if loaded.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some((k, _)) = self.units.get_key_value(name) {
            return Some(k.as_str());
        }
        self.aliases.get(name).map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Unit> {
        self.resolve(name).and_then(|n| self.units.get(n))
    }

    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.units.values()
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// What to start (in order) to reach `goal`, and what to stop first; see [`graph::plan`].
    pub fn plan_start(&self, goal: &str, active: &[String]) -> Plan {
        graph::plan(self, goal, active)
    }

    /// The order to stop `names` in (the reverse of their start order).
    pub fn stop_order(&self, names: &[String]) -> (Vec<String>, Vec<Problem>) {
        graph::stop_order(self, names)
    }

    /// [`UnitSet::stop_order`], each unit with the ones that must be down before it stops; see
    /// [`graph::stop_plan`].
    pub fn stop_plan(&self, names: &[String]) -> (Vec<(String, Vec<String>)>, Vec<Problem>) {
        graph::stop_plan(self, names)
    }

    /// systemd's default dependency of targets: a target is ordered after the units it wants
    /// or requires, unless either side has `DefaultDependencies=no` or the unit is ordered
    /// after the target (which would make a cycle).
    fn add_target_ordering(&mut self) {
        let mut additions: Vec<(String, String)> = Vec::new();
        for target in self.units.values().filter(|u| u.kind == UnitType::Target && u.default_dependencies) {
            for dep in target.deps.wants.iter().chain(&target.deps.requires) {
                let Some(other) = self.get(dep) else { continue };
                let before_other = target.deps.before.iter().any(|b| self.resolve(b) == Some(other.name.as_str()))
                    || other.deps.after.iter().any(|a| self.resolve(a) == Some(target.name.as_str()));
                if other.state == LoadState::Loaded && other.default_dependencies && !before_other {
                    additions.push((target.name.clone(), other.name.clone()));
                }
            }
        }
        for (target, other) in additions {
            if let Some(t) = self.units.get_mut(&target) {
                push_unique(&mut t.deps.after, &other);
            }
        }
    }
}

/// Appends `name` unless it is already there.
pub(crate) fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}
