//! Finding and loading units (systemd.unit(5) "UNIT FILE LOAD PATH"):
//!
//! - unit directories, highest priority first: `/etc/systemd/system` (the admin's, kept across
//!   updates by the `/etc` overlay), `/usr/lib/systemd/system`, `/lib/systemd/system` (the
//!   image's). Never `/run/systemd/system`: tools take its existence to mean systemd is PID 1;
//! - the first directory with a file of the unit's name wins; a symlink to `/dev/null` or an
//!   empty file there masks the unit; a symlink to a file of another name makes an alias;
//! - `foo@bar.service` uses `foo@bar.service` if it exists, else the template `foo@.service`
//!   (`%i` = `bar`);
//! - drop-ins `*.conf` from `<name>.d/` for every name of the unit (aliases, the template),
//!   the dash-prefix directories (`foo-.service.d/` for `foo-bar.service`) and the type
//!   directory (`service.d/`), in every unit directory. A file name in a higher-priority
//!   directory hides the same name below it (a `/dev/null` link hides it without replacement);
//!   the survivors apply in file-name order, after the unit file;
//! - `<name>.wants/` and `<name>.requires/` directories add `Wants=`/`Requires=` on the units
//!   named by their entries (this is what enabling a unit creates, see [`crate::install`]).
//!
//! Everything is looked up inside a root through [`UnitDirs`]: a directory ([`RootDir`]: `/` at
//! run time, an image tree for `berthctl verify --root`) or the image builder's in-memory tree;
//! absolute symlinks are resolved inside that root.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::builtin;
use super::command::EXEC_SEARCH_PATH;
use super::error::{ErrorKind, Ignored, IgnoredWhat, UnitError};
use super::name::UnitName;
use super::service::{Applied, ServiceBuilder};
use super::specifiers::{HostInfo, Specifiers};
use super::syntax;
use super::unit_section::{self, Outcome};
use super::{LoadState, Unit, UnitType, push_unique};

/// The system unit directories, highest priority first: the one list for the runtime, `berthctl`
/// and the image builder. `/lib/systemd/system` stays although Debian images are merged-/usr
/// (there it is `/usr/lib/systemd/system` again, found first, so it costs nothing): packages not
/// yet moved to `/usr` install their units there, and a tree without the merge has it as a real
/// directory.
pub const SYSTEM_UNIT_DIRS: &[&str] = &["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];

/// The instance a template is verified as.
pub const VERIFY_INSTANCE: &str = "test_instance";

/// Where enabling writes its links (the first of [`SYSTEM_UNIT_DIRS`]).
pub const ADMIN_UNIT_DIR: &str = "/etc/systemd/system";

/// Symlink hops before giving up (as the kernel's ELOOP limit).
const MAX_LINKS: usize = 40;
/// Alias chains (`a -> b -> c`) before giving up.
const MAX_ALIAS_DEPTH: usize = 8;

/// What is at a path inside the root, the final symlink not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    File {
        len: u64,
        executable: bool,
    },
    Dir,
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// What is at one path inside the root whose directories are already resolved (no symlink
/// among them): all that [`UnitDirs::resolve`] asks at each step of its walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    /// A symlink and its target, as written.
    Symlink(PathBuf),
    /// A directory, file, device, fifo or socket.
    Other,
}

/// Where a path leads inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The path with its symlinks followed (the final one only if asked); it exists.
    Path(PathBuf),
    /// `/dev/null` (a mask), which an image tree need not have.
    DevNull,
}

/// How the loader reads a root: paths are absolute inside it, symlinks in the middle of a
/// path are followed (a final one only where the method says so). Implemented for a directory
/// ([`RootDir`]) here and for the image builder's in-memory tree in the builder; both follow
/// symlinks with the one walk of [`UnitDirs::resolve`], so that build time and run time see the
/// same units.
pub trait UnitDirs {
    /// What `path` is, the final symlink not followed; the walk's one question.
    fn lookup(&self, path: &Path) -> io::Result<Lookup>;
    /// What `path` is; a final symlink is not followed.
    fn entry(&self, path: &Path) -> io::Result<Entry>;
    /// The text of the file at `path`.
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// The target of the symlink at `path`, as written.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The names in the directory at `path`, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// `path` as messages show it (its place on this machine for a directory root).
    fn shown(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }

    /// Follows the symlinks in `path` (absolute, inside the root) as if the root were `/`, the
    /// final one too if `follow_last`: a relative target is relative to the link's directory,
    /// an absolute one to the root. Errors name `path` (as [`UnitDirs::shown`]).
    fn resolve(&self, path: &Path, follow_last: bool) -> io::Result<Resolved> {
        let named = |e: &dyn std::fmt::Display| format!("{}: {e}", self.shown(path).display());
        let mut done = PathBuf::from("/");
        let mut hops = 0;
        // Components still to walk, next one last.
        let mut stack: Vec<OsString> = Vec::new();
        push_components(&mut stack, path);
        while let Some(c) = stack.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            let candidate = done.join(&c);
            if candidate == Path::new("/dev/null") && stack.is_empty() {
                return Ok(Resolved::DevNull);
            }
            let target = match self.lookup(&candidate) {
                Ok(Lookup::Symlink(target)) if follow_last || !stack.is_empty() => target,
                Ok(Lookup::Missing) => {
                    return Err(io::Error::new(io::ErrorKind::NotFound, named(&"no such file or directory")));
                }
                Ok(_) => {
                    done = candidate;
                    continue;
                }
                Err(e) => return Err(io::Error::new(e.kind(), named(&e))),
            };
            hops += 1;
            if hops > MAX_LINKS {
                return Err(io::Error::other(named(&"too many levels of symbolic links")));
            }
            // /dev/null need not exist in an image tree.
            if target == Path::new("/dev/null") && stack.is_empty() {
                return Ok(Resolved::DevNull);
            }
            // A relative target is relative to the link's directory, which `done` still is.
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            push_components(&mut stack, &target);
        }
        Ok(Resolved::Path(done))
    }
}

/// A root directory on this machine (`/`, or an image tree).
#[derive(Debug, Clone)]
pub struct RootDir {
    root: PathBuf,
}

impl RootDir {
    pub fn new(root: impl Into<PathBuf>) -> RootDir {
        RootDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The real path of `path` (absolute, inside the root) on this machine.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        if self.root == Path::new("/") {
            return path.to_path_buf();
        }
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl UnitDirs for RootDir {
    fn lookup(&self, path: &Path) -> io::Result<Lookup> {
        match self.entry(path) {
            Ok(Entry::Symlink) => Ok(Lookup::Symlink(self.read_link(path)?)),
            Ok(_) => Ok(Lookup::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lookup::Missing),
            Err(e) => Err(e),
        }
    }

    fn entry(&self, path: &Path) -> io::Result<Entry> {
        use std::os::unix::fs::PermissionsExt;
        let meta = self.host_path(path).symlink_metadata()?;
        let kind = meta.file_type();
        Ok(if kind.is_symlink() {
            Entry::Symlink
        } else if kind.is_file() {
            Entry::File { len: meta.len(), executable: meta.permissions().mode() & 0o111 != 0 }
        } else if kind.is_dir() {
            Entry::Dir
        } else {
            Entry::Other
        })
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(self.host_path(path))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.host_path(path))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        Ok(std::fs::read_dir(self.host_path(path))?.flatten().map(|e| e.file_name()).collect())
    }

    fn shown(&self, path: &Path) -> PathBuf {
        self.host_path(path)
    }
}

/// Loads units from the unit directories of a root (a directory unless told otherwise).
#[derive(Debug, Clone)]
pub struct Loader<D = RootDir> {
    files: D,
    dirs: Vec<PathBuf>,
    host: HostInfo,
    /// Built-in targets fill in for missing files (off for tests that want a bare tree).
    builtins: bool,
    /// canonical name → its aliases (symlinks with other names in the unit directories).
    aliases: BTreeMap<String, Vec<String>>,
}

/// What a unit directory holds under a name.
enum Found {
    File(PathBuf),
    Masked(PathBuf),
    Alias(String),
    Broken(PathBuf, String),
}

impl Loader<RootDir> {
    /// A loader for the system unit directories under `root` (`/` on the running system).
    pub fn new(root: impl Into<PathBuf>, host: HostInfo) -> Loader {
        Loader::over(RootDir::new(root), host)
    }

    /// A loader for other unit directories (absolute paths inside `root`), highest first.
    pub fn with_dirs(root: impl Into<PathBuf>, dirs: Vec<PathBuf>, host: HostInfo) -> Loader {
        Loader::over_dirs(RootDir::new(root), dirs, host)
    }

    pub fn root(&self) -> &Path {
        self.files.path()
    }

    /// The real path of `path` (absolute, inside the root) on this machine.
    pub fn host_path(&self, path: &Path) -> PathBuf {
        self.files.host_path(path)
    }

    /// Loads a unit file given by path, outside the unit directories (`berthctl verify`):
    /// the name is the file name, the drop-ins are `<path>.d/*.conf`, no `.wants/`. A template
    /// is loaded as the instance [`VERIFY_INSTANCE`] (as `systemd-analyze verify` does), so
    /// that its `%i` makes sense. An empty file or a link to /dev/null loads as masked.
    pub fn load_file(&self, path: &Path) -> Unit {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let parsed = UnitName::parse(file_name).and_then(|n| match n.is_template() {
            true => n.instantiate(VERIFY_INSTANCE),
            false => Ok(n),
        });
        let name = match parsed {
            Ok(n) => n,
            Err(reason) => {
                let mut unit = self.bad_name(file_name, reason);
                if let Some(e) = unit.errors.first_mut() {
                    e.file = path.to_path_buf();
                }
                return unit;
            }
        };
        let masked = std::fs::read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
            || path.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if masked {
            let mut unit = Unit::new(&name, LoadState::Masked);
            unit.fragment = Some(path.to_path_buf());
            return unit;
        }
        let mut dir = path.as_os_str().to_owned();
        dir.push(".d");
        let mut dropins: Vec<PathBuf> = match std::fs::read_dir(PathBuf::from(dir)) {
            Ok(entries) => {
                entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect()
            }
            Err(_) => Vec::new(),
        };
        dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let text = std::fs::read_to_string(path);
        // The paths are the caller's, not inside the root, and no unit directory is involved.
        let alone = Loader {
            files: RootDir::new("/"),
            dirs: Vec::new(),
            host: self.host.clone(),
            builtins: self.builtins,
            aliases: BTreeMap::new(),
        };
        alone.build(&name, Some(path.to_path_buf()), text, dropins)
    }
}

impl<D: UnitDirs> Loader<D> {
    /// A loader for the system unit directories of the root `files` reads.
    pub fn over(files: D, host: HostInfo) -> Loader<D> {
        let dirs = SYSTEM_UNIT_DIRS.iter().map(PathBuf::from).collect();
        Loader::over_dirs(files, dirs, host)
    }

    /// A loader for other unit directories (absolute paths inside the root), highest first.
    pub fn over_dirs(files: D, dirs: Vec<PathBuf>, host: HostInfo) -> Loader<D> {
        let mut loader = Loader { files, dirs, host, builtins: true, aliases: BTreeMap::new() };
        loader.aliases = loader.scan_aliases();
        loader
    }

    /// Turns the built-in targets off (or on).
    pub fn builtins(mut self, on: bool) -> Loader<D> {
        self.builtins = on;
        self
    }

    /// What the loader reads the root through.
    pub fn files(&self) -> &D {
        &self.files
    }

    /// The unit directories, highest priority first (absolute paths inside the root).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// Where `program` (the path of an `Exec*=` command, or a bare name looked up in
    /// [`EXEC_SEARCH_PATH`]) is an executable file inside the root, if it is.
    pub fn find_program(&self, program: &str) -> Option<PathBuf> {
        let candidates: Vec<PathBuf> = if program.starts_with('/') {
            vec![PathBuf::from(program)]
        } else {
            EXEC_SEARCH_PATH.iter().map(|d| Path::new(d).join(program)).collect()
        };
        candidates.into_iter().find(|c| match self.files.resolve(c, true) {
            Ok(Resolved::Path(p)) => matches!(self.files.entry(&p), Ok(Entry::File { executable: true, .. })),
            _ => false,
        })
    }

    /// Loads the unit called `name`. Never fails: problems are in the unit's `state`,
    /// `errors` and `ignored`.
    pub fn load(&self, name: &str) -> Unit {
        self.load_depth(name, 0)
    }

    fn load_depth(&self, requested: &str, depth: usize) -> Unit {
        let name = match UnitName::parse(requested) {
            Ok(n) => n,
            Err(reason) => return self.bad_name(requested, reason),
        };
        let found = self.find(&name.full).or_else(|| {
            // An instance without its own file uses its template's.
            let template = name.template().filter(|_| name.is_instance())?;
            match self.find(&template)? {
                // `foo@.service -> bar@.service`: foo@x is an alias of bar@x.
                Found::Alias(t) => {
                    let t = UnitName::parse(&t).ok()?;
                    Some(Found::Alias(t.instantiate(name.instance.as_deref().unwrap_or_default()).ok()?.full))
                }
                other => Some(other),
            }
        });
        match found {
            Some(Found::Alias(target)) if depth < MAX_ALIAS_DEPTH => {
                let mut unit = self.load_depth(&target, depth + 1);
                push_unique(&mut unit.aliases, &name.full);
                unit
            }
            Some(Found::Alias(target)) => {
                let mut unit = Unit::new(&name, LoadState::Error);
                unit.errors.push(UnitError {
                    file: PathBuf::from(&name.full),
                    line: 0,
                    unit: name.full.clone(),
                    kind: ErrorKind::Link(format!("alias chain too long at {target}")),
                });
                unit
            }
            Some(Found::Masked(path)) => {
                let mut unit = Unit::new(&name, LoadState::Masked);
                unit.fragment = Some(path);
                unit.aliases = self.aliases.get(&name.full).cloned().unwrap_or_default();
                unit
            }
            Some(Found::Broken(path, reason)) => {
                let mut unit = Unit::new(&name, LoadState::Error);
                unit.errors.push(UnitError {
                    file: self.files.shown(&path),
                    line: 0,
                    unit: name.full.clone(),
                    kind: ErrorKind::Link(reason),
                });
                unit
            }
            Some(Found::File(path)) => {
                let text = self.files.read_to_string(&path);
                let dropins = self.dropins(&name);
                self.build(&name, Some(path), text, dropins)
            }
            None if self.builtins && name.full == builtin::DEFAULT_TARGET => {
                let mut unit = self.load_depth(builtin::DEFAULT_TARGET_IS, depth + 1);
                push_unique(&mut unit.aliases, &name.full);
                unit
            }
            None => match builtin::text(&name.full).filter(|_| self.builtins) {
                Some(text) => {
                    let dropins = self.dropins(&name);
                    self.build(&name, None, Ok(text.to_string()), dropins)
                }
                None => Unit::new(&name, LoadState::NotFound),
            },
        }
    }

    fn bad_name(&self, requested: &str, reason: String) -> Unit {
        // A placeholder name so the unit can still be reported.
        let placeholder = UnitName {
            full: requested.to_string(),
            prefix: requested.to_string(),
            instance: None,
            kind: UnitType::Service,
        };
        let mut unit = Unit::new(&placeholder, LoadState::Error);
        unit.errors.push(UnitError {
            file: PathBuf::from(requested),
            line: 0,
            unit: requested.to_string(),
            kind: ErrorKind::Name { name: requested.to_string(), reason },
        });
        unit
    }

    /// Parses the fragment (or built-in text) and the drop-ins into a unit.
    fn build(
        &self,
        name: &UnitName,
        fragment: Option<PathBuf>,
        text: io::Result<String>,
        dropins: Vec<PathBuf>,
    ) -> Unit {
        let mut unit = Unit::new(name, LoadState::Loaded);
        unit.aliases = self.aliases.get(&name.full).cloned().unwrap_or_default();
        unit.fragment = fragment.clone();
        let fragment_file = match &fragment {
            Some(p) => self.files.shown(p),
            None => PathBuf::from(format!("<built-in>/{}", name.full)),
        };
        let spec = Specifiers { name, fragment: fragment.as_deref(), host: &self.host };
        let mut service = (name.kind == UnitType::Service).then(ServiceBuilder::default);
        let readable = text.is_ok();
        match text {
            Ok(text) => self.apply_text(&mut unit, &mut service, &spec, &fragment_file, &text),
            Err(e) => unit.errors.push(UnitError {
                file: fragment_file.clone(),
                line: 0,
                unit: name.full.clone(),
                kind: ErrorKind::Read(e.to_string()),
            }),
        }
        for dropin in dropins {
            let host = self.files.shown(&dropin);
            match self.files.read_to_string(&dropin) {
                Ok(text) => self.apply_text(&mut unit, &mut service, &spec, &host, &text),
                Err(e) => unit.errors.push(UnitError {
                    file: host.clone(),
                    line: 0,
                    unit: name.full.clone(),
                    kind: ErrorKind::Read(e.to_string()),
                }),
            }
            unit.dropins.push(dropin);
        }
        if let Some(builder) = service {
            let (svc, problems) = builder.finish();
            // Without its unit file a service has nothing to check.
            for (line, text) in problems.into_iter().filter(|_| readable) {
                unit.errors.push(UnitError {
                    file: fragment_file.clone(),
                    line,
                    unit: name.full.clone(),
                    kind: ErrorKind::Invalid(text),
                });
            }
            unit.service = Some(svc);
        }
        if name.kind.is_supported() {
            self.add_wants_dirs(&mut unit, name);
        } else {
            unit.ignored.push(Ignored {
                file: fragment_file.clone(),
                line: 0,
                unit: name.full.clone(),
                what: IgnoredWhat::UnitType(name.kind),
            });
        }
        add_default_dependencies(&mut unit);
        unit.state = if unit.errors.iter().any(|e| e.kind.is_fatal()) {
            LoadState::Error
        } else if !name.kind.is_supported() {
            LoadState::Unsupported
        } else {
            LoadState::Loaded
        };
        unit
    }

    fn apply_text(
        &self,
        unit: &mut Unit,
        service: &mut Option<ServiceBuilder>,
        spec: &Specifiers<'_>,
        file: &Path,
        text: &str,
    ) {
        let doc = syntax::parse(text);
        let (errors_before, ignored_before) = (unit.errors.len(), unit.ignored.len());
        let unit_name = unit.name.clone();
        let error =
            |line: usize, kind: ErrorKind| UnitError { file: file.to_path_buf(), line, unit: unit_name.clone(), kind };
        for (line, kind) in doc.errors {
            unit.errors.push(error(line, kind));
        }
        let own_section = unit.kind.section();
        for (section, line) in &doc.sections {
            let known = section == "Unit" || section == "Install" || Some(section.as_str()) == own_section;
            if !known && !section.is_empty() && !section.starts_with("X-") {
                unit.ignored.push(Ignored {
                    file: file.to_path_buf(),
                    line: *line,
                    unit: unit.name.clone(),
                    what: IgnoredWhat::Section(section.clone()),
                });
            }
        }
        let expand = |s: &str| spec.expand(s);
        for a in doc.assignments {
            // X- keys are for other tools, by definition not ours: silently skipped.
            if a.key.starts_with("X-") {
                continue;
            }
            let outcome = match a.section.as_str() {
                "Unit" => unit_section::apply_unit(unit, &a.key, &a.value, a.line, &expand),
                "Install" => unit_section::apply_install(&mut unit.install, spec.name, &a.key, &a.value, &expand),
                "Service" if a.key.starts_with("StartLimit") && service.is_some() => {
                    unit_section::apply_unit(unit, &a.key, &a.value, a.line, &expand)
                }
                "Service" if service.is_some() => {
                    match service.as_mut().map(|b| b.apply(&a.key, &a.value, a.line, &expand)) {
                        Some(Ok(Applied::Done)) => Ok(Outcome::Done),
                        Some(Ok(Applied::Unknown)) => Ok(Outcome::Unknown),
                        Some(Err(e)) => Err(e),
                        None => Ok(Outcome::Done),
                    }
                }
                // The type section of a type berth-init does not run, an unknown section, or
                // lines after a bad header: reported once per section (or unit type) already.
                _ => continue,
            };
            let ignored = |what| Ignored { file: file.to_path_buf(), line: a.line, unit: unit.name.clone(), what };
            match outcome {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Note(text)) => unit.ignored.push(ignored(IgnoredWhat::Note(text))),
                Ok(Outcome::Unknown) => unit
                    .ignored
                    .push(ignored(IgnoredWhat::Directive { section: a.section.clone(), key: a.key.clone() })),
                Err(reason) => unit
                    .errors
                    .push(error(a.line, ErrorKind::Value { section: a.section.clone(), key: a.key.clone(), reason })),
            }
        }
        // Report this file's problems in line order (syntax errors were found first).
        unit.errors[errors_before..].sort_by_key(|e| e.line);
        unit.ignored[ignored_before..].sort_by_key(|i| i.line);
    }

    /// What the unit directories hold under `name`, from the highest-priority one that has it.
    fn find(&self, name: &str) -> Option<Found> {
        for dir in &self.dirs {
            let path = dir.join(name);
            return Some(match self.files.entry(&path) {
                Err(_) => continue,
                Ok(Entry::Symlink) => match self.files.resolve(&path, true) {
                    Ok(Resolved::DevNull) => Found::Masked(path),
                    Ok(Resolved::Path(target)) => self.link_target(name, path, target),
                    Err(e) => Found::Broken(path, format!("cannot follow the link: {e}")),
                },
                Ok(Entry::File { len: 0, .. }) => Found::Masked(path),
                Ok(Entry::File { .. }) => Found::File(path),
                Ok(_) => Found::Broken(path, "not a regular file".into()),
            });
        }
        None
    }

    /// A unit directory entry `path` named `name` that links to `target`.
    fn link_target(&self, name: &str, path: PathBuf, target: PathBuf) -> Found {
        // `target` is resolved: no symlink left to follow.
        match self.files.entry(&target) {
            Ok(Entry::File { len: 0, .. }) => return Found::Masked(path),
            Ok(Entry::File { .. }) => {}
            Ok(_) => return Found::Broken(path, format!("links to {}, not a file", target.display())),
            Err(e) => return Found::Broken(path, format!("links to {}: {e}", target.display())),
        }
        let target_name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (Ok(own), Ok(other)) = (UnitName::parse(name), UnitName::parse(target_name)) else {
            return Found::File(target);
        };
        // Same name (a "linked" unit file), or an instance linked to its own template.
        if target_name == name || (own.is_instance() && own.template().as_deref() == Some(target_name)) {
            return Found::File(target);
        }
        if own.kind != other.kind || own.is_template() != other.is_template() && !own.is_instance() {
            return Found::Broken(path, format!("aliases {target_name}, which is not the same kind of unit"));
        }
        if own.is_instance() && other.is_template() {
            return match other.instantiate(own.instance.as_deref().unwrap_or_default()) {
                Ok(n) => Found::Alias(n.full),
                Err(e) => Found::Broken(path, e),
            };
        }
        Found::Alias(target_name.to_string())
    }

    /// The names of a unit's drop-in directories, most specific first.
    fn dropin_dir_names(&self, name: &UnitName) -> Vec<String> {
        let suffix = name.kind.suffix();
        let mut names = vec![name.full.clone()];
        names.extend(self.aliases.get(&name.full).cloned().unwrap_or_default());
        if let Some(t) = name.template().filter(|_| name.is_instance()) {
            names.extend(self.aliases.get(&t).cloned().unwrap_or_default());
            names.push(t);
        }
        // `foo-bar-baz.service` also reads `foo-bar-.service.d` and `foo-.service.d`.
        let parts: Vec<&str> = name.prefix.split('-').collect();
        for i in (1..parts.len()).rev() {
            let joined = parts[..i].join("-");
            if !joined.is_empty() {
                names.push(format!("{joined}-.{suffix}"));
            }
        }
        names.push(suffix.to_string());
        names
    }

    /// The drop-ins of a unit, in the order to apply them (paths inside the root).
    fn dropins(&self, name: &UnitName) -> Vec<PathBuf> {
        let mut chosen: BTreeMap<OsString, Option<PathBuf>> = BTreeMap::new();
        let dir_names = self.dropin_dir_names(name);
        for dir in &self.dirs {
            for dir_name in &dir_names {
                let d = dir.join(format!("{dir_name}.d"));
                let Ok(mut files) = self.files.read_dir(&d) else { continue };
                files.sort();
                for file in files {
                    if !file.to_string_lossy().ends_with(".conf") || chosen.contains_key(&file) {
                        continue;
                    }
                    let path = d.join(&file);
                    let masked = match self.files.resolve(&path, true) {
                        Ok(Resolved::DevNull) => true,
                        Ok(Resolved::Path(p)) => matches!(self.files.entry(&p), Ok(Entry::File { len: 0, .. })),
                        Err(_) => false,
                    };
                    chosen.insert(file, (!masked).then_some(path));
                }
            }
        }
        chosen.into_values().flatten().collect()
    }

    /// Adds the entries of `.wants/` and `.requires/` directories.
    fn add_wants_dirs(&self, unit: &mut Unit, name: &UnitName) {
        let mut owners: Vec<(String, bool)> = vec![(name.full.clone(), false)];
        owners.extend(self.aliases.get(&name.full).into_iter().flatten().map(|a| (a.clone(), false)));
        if let Some(t) = name.template().filter(|_| name.is_instance()) {
            owners.push((t, true));
        }
        for dir in &self.dirs {
            for (owner, is_template_dir) in &owners {
                for (suffix, requires) in [(".wants", false), (".requires", true)] {
                    let d = dir.join(format!("{owner}{suffix}"));
                    let Ok(entries) = self.files.read_dir(&d) else { continue };
                    let mut files: Vec<String> = entries.into_iter().filter_map(|e| e.into_string().ok()).collect();
                    files.sort();
                    for file in files {
                        let wanted = match UnitName::parse(&file) {
                            // In a template's directory, a template entry means "the same instance".
                            Ok(n) if n.is_template() && *is_template_dir => {
                                match n.instantiate(name.instance.as_deref().unwrap_or_default()) {
                                    Ok(i) => i.full,
                                    Err(_) => continue,
                                }
                            }
                            Ok(n) if !n.is_template() => n.full,
                            _ => {
                                unit.ignored.push(Ignored {
                                    file: self.files.shown(&d.join(&file)),
                                    line: 0,
                                    unit: unit.name.clone(),
                                    what: IgnoredWhat::Note(format!(
                                        "`{file}` in {} is not a unit berth-init can pull in",
                                        d.display()
                                    )),
                                });
                                continue;
                            }
                        };
                        let list = if requires { &mut unit.deps.requires } else { &mut unit.deps.wants };
                        push_unique(list, &wanted);
                    }
                }
            }
        }
    }

    /// Every symlink in the unit directories whose target has another unit name is an alias.
    fn scan_aliases(&self) -> BTreeMap<String, Vec<String>> {
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut seen: Vec<String> = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = self.files.read_dir(dir) else { continue };
            let mut names: Vec<String> = entries
                .into_iter()
                .filter_map(|e| e.into_string().ok())
                .filter(|name| self.files.entry(&dir.join(name)).is_ok_and(|e| e == Entry::Symlink))
                .collect();
            names.sort();
            for name in names {
                // A higher-priority directory already decided what this name is.
                if seen.contains(&name) || UnitName::parse(&name).is_err() {
                    continue;
                }
                seen.push(name.clone());
                if let Some(Found::Alias(target)) = self.find(&name) {
                    let mut target = target;
                    // Follow alias chains to the unit that has the file.
                    for _ in 0..MAX_ALIAS_DEPTH {
                        match self.find(&target) {
                            Some(Found::Alias(next)) => target = next,
                            _ => break,
                        }
                    }
                    aliases.entry(target).or_default().push(name);
                }
            }
        }
        for list in aliases.values_mut() {
            list.sort();
        }
        aliases
    }
}

/// Pushes the components of `p` so that the first one is popped first.
fn push_components(stack: &mut Vec<OsString>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_owned()),
            Component::ParentDir => stack.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

impl ErrorKind {
    /// Errors that make the whole unit unusable (rather than one skipped line).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ErrorKind::Read(_)
                | ErrorKind::SectionHeader(_)
                | ErrorKind::Name { .. }
                | ErrorKind::Invalid(_)
                | ErrorKind::Link(_)
        )
    }
}

/// systemd's default dependencies (systemd.service(5), systemd.target(5)) for units that do
/// not say `DefaultDependencies=no`. The `After=` a target gets on what it pulls in needs the
/// other units and is added by [`super::UnitSet`].
fn add_default_dependencies(unit: &mut Unit) {
    if !unit.default_dependencies || unit.state != LoadState::Loaded {
        return;
    }
    let deps = &mut unit.deps;
    match unit.kind {
        UnitType::Service => {
            push_unique(&mut deps.requires, "sysinit.target");
            push_unique(&mut deps.after, "sysinit.target");
            push_unique(&mut deps.after, "basic.target");
            push_unique(&mut deps.conflicts, "shutdown.target");
            push_unique(&mut deps.before, "shutdown.target");
        }
        UnitType::Target if unit.name != "shutdown.target" => {
            push_unique(&mut deps.conflicts, "shutdown.target");
            push_unique(&mut deps.before, "shutdown.target");
        }
        _ => {}
    }
}
