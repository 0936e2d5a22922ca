//! Dependency resolution: from requested names to the closure over `Pre-Depends` + `Depends`.
//!
//! Full Debian resolution (with Conflicts/Breaks) is NP-complete; an image builder needs
//! something simpler and, above all, predictable. The rules, applied in a fixed order so the same
//! indexes and requests always give the same set:
//!
//! 1. Every requested package is selected first (in request order), then dependencies are
//!    followed breadth-first. Selecting requests first lets an explicitly requested package
//!    satisfy a virtual dependency or an alternative before a default is picked for it.
//! 2. A dependency group (`a | b`) already satisfied by a selected package (by name and version,
//!    or through a matching `Provides`) needs nothing new.
//! 3. Otherwise its alternatives are tried left to right (the maintainer's preference). For an
//!    alternative, a real package of that name is preferred: the highest version satisfying the
//!    constraint across all sources (ties go to the earlier source). Failing that, a package that
//!    `Provides` it (a versioned provide for a versioned dependency): the lowest package name,
//!    then its highest version.
//! 4. Only one version of a name is ever selected; a later dependency that the selected version
//!    does not satisfy is an error naming both.
//! 5. `Recommends`, `Suggests`, `Conflicts` and `Breaks` are ignored; `Essential`/`required`
//!    packages are not added implicitly: the image definition says what it wants.
//! 6. Arch qualifiers `:any`, `:native` and the target arch are satisfied by the target arch or
//!    `all`; other architectures cannot be satisfied (the image is single-architecture).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::deps::{Alternatives, Dep, display_group, parse_relations};
use super::error::ArchiveError;
use super::packages::Package;
use super::version;

/// All packages of all sources, indexed by name and by provided name.
#[derive(Debug, Default)]
pub struct Universe {
    packages: Vec<Package>,
    /// name → packages, highest version first, then source order.
    by_name: HashMap<String, Vec<u32>>,
    /// provided name → packages providing it.
    providers: HashMap<String, Vec<u32>>,
}

const REQUESTED: &str = "the image definition";

impl Universe {
    /// Indexes `packages`. Identical (name, version, architecture) entries from later sources
    /// are dropped, so the first source listing a version wins.
    pub fn new(packages: Vec<Package>) -> Universe {
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::with_capacity(packages.len());
        for (i, p) in packages.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i as u32);
        }
        for list in by_name.values_mut() {
            // Stable sort: equal versions keep source order.
            list.sort_by(|&a, &b| version::compare(&packages[b as usize].version, &packages[a as usize].version));
            list.dedup_by(|b, a| {
                let (pa, pb) = (&packages[*a as usize], &packages[*b as usize]);
                pa.version == pb.version && pa.architecture == pb.architecture
            });
        }
        let mut providers: HashMap<String, Vec<u32>> = HashMap::new();
        for list in by_name.values() {
            for &i in list {
                for prov in &packages[i as usize].provides {
                    providers.entry(prov.name.clone()).or_default().push(i);
                }
            }
        }
        for list in providers.values_mut() {
            list.sort_by(|&a, &b| {
                let (pa, pb) = (&packages[a as usize], &packages[b as usize]);
                pa.name.cmp(&pb.name).then_with(|| version::compare(&pb.version, &pa.version))
            });
        }
        Universe { packages, by_name, providers }
    }

    /// The package with the given index (as returned by [`Universe::resolve`]).
    pub fn package(&self, index: usize) -> &Package {
        &self.packages[index]
    }

    /// Number of distinct packages (name, version, arch).
    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    /// Whether there is no package at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// All versions of `name`, highest first.
    pub fn versions(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.by_name.get(name).into_iter().flatten().map(|&i| &self.packages[i as usize])
    }

    /// Resolves `requests` (each one dependency group, e.g. `containerd (>= 1.6)` or
    /// `dropbear | openssh-server`) into the closure over `Pre-Depends` and `Depends`, returned
    /// as package indices sorted by name.
    pub fn resolve(&self, requests: &[&str], arch: &str) -> Result<Vec<usize>, ArchiveError> {
        let mut r = Resolver { u: self, arch, selected: BTreeMap::new(), queue: VecDeque::new() };
        for request in requests {
            let groups = parse_relations(request).map_err(|msg| ArchiveError::BadDependency {
                context: REQUESTED.into(),
                text: request.to_string(),
                msg,
            })?;
            let [group] = &groups[..] else {
                return Err(ArchiveError::BadDependency {
                    context: REQUESTED.into(),
                    text: request.to_string(),
                    msg: "expected exactly one package (with optional alternatives and version)".into(),
                });
            };
            r.satisfy(group, REQUESTED)?;
        }
        while let Some(i) = r.queue.pop_front() {
            let p = &self.packages[i as usize];
            let needed_by = format!("{} {}", p.name, p.version);
            for (field, text) in [("Pre-Depends", &p.pre_depends), ("Depends", &p.depends)] {
                let groups = parse_relations(text).map_err(|msg| ArchiveError::BadDependency {
                    context: format!("{field} of {needed_by}"),
                    text: text.clone(),
                    msg,
                })?;
                for group in &groups {
                    r.satisfy(group, &needed_by)?;
                }
            }
        }
        Ok(r.selected.into_values().map(|i| i as usize).collect())
    }
}

struct Resolver<'a> {
    u: &'a Universe,
    arch: &'a str,
    /// name → selected package; a BTreeMap so the result comes out sorted by name.
    selected: BTreeMap<&'a str, u32>,
    queue: VecDeque<u32>,
}

impl<'a> Resolver<'a> {
    fn pkg(&self, i: u32) -> &'a Package {
        &self.u.packages[i as usize]
    }

    /// Whether the arch qualifier can be met by a target-arch or `all` package at all.
    fn arch_ok(&self, dep: &Dep) -> bool {
        match dep.arch.as_deref() {
            None | Some("any") | Some("native") => true,
            Some(a) => a == self.arch,
        }
    }

    fn version_ok(dep: &Dep, version: &str) -> bool {
        dep.version.as_ref().is_none_or(|(rel, want)| rel.holds(version, want))
    }

    /// Whether package `i` provides `dep` (respecting versioned provides).
    fn provides(&self, i: u32, dep: &Dep) -> bool {
        self.pkg(i).provides.iter().any(|p| {
            p.name == dep.name
                && match (&dep.version, &p.version) {
                    (None, _) => true,
                    (Some((rel, want)), Some(have)) => rel.holds(have, want),
                    (Some(_), None) => false,
                }
        })
    }

    fn is_selected(&self, i: u32) -> bool {
        self.selected.get(self.pkg(i).name.as_str()) == Some(&i)
    }

    fn satisfied(&self, dep: &Dep) -> bool {
        if !self.arch_ok(dep) {
            return false;
        }
        if let Some(&i) = self.selected.get(dep.name.as_str())
            && Self::version_ok(dep, &self.pkg(i).version)
        {
            return true;
        }
        self.u.providers.get(&dep.name).into_iter().flatten().any(|&i| self.is_selected(i) && self.provides(i, dep))
    }

    /// A package to select for `dep`, or why there is none.
    fn candidate(&self, dep: &Dep) -> Result<u32, Miss> {
        if !self.arch_ok(dep) {
            return Err(Miss::Unsatisfiable(format!(
                "architecture `{}` is not available",
                dep.arch.as_deref().unwrap_or("")
            )));
        }
        let real = self.u.by_name.get(&dep.name);
        let mut blocked = None;
        // Rule 3: the real package first, highest satisfying version, unless another version of
        // it is already selected (rule 4).
        for &i in real.into_iter().flatten() {
            let p = self.pkg(i);
            if !Self::version_ok(dep, &p.version) {
                continue;
            }
            match self.selected.get(p.name.as_str()) {
                Some(&s) if s != i => blocked = Some(format!("{} {} is already selected", p.name, self.pkg(s).version)),
                _ => return Ok(i),
            }
        }
        let providers = self.u.providers.get(&dep.name);
        for &i in providers.into_iter().flatten() {
            if !self.provides(i, dep) {
                continue;
            }
            let p = self.pkg(i);
            match self.selected.get(p.name.as_str()) {
                Some(&s) if s != i => {
                    blocked.get_or_insert_with(|| format!("{} {} is already selected", p.name, self.pkg(s).version));
                }
                _ => return Ok(i),
            }
        }
        if real.is_none() && providers.is_none() {
            return Err(Miss::Unknown);
        }
        if let Some(b) = blocked {
            return Err(Miss::Unsatisfiable(b));
        }
        let mut offered: Vec<String> = self.u.versions(&dep.name).map(|p| p.version.clone()).collect();
        if let Some(provs) = providers {
            offered.extend(provs.iter().map(|&i| {
                let p = self.pkg(i);
                let v = p.provides.iter().find(|pr| pr.name == dep.name).and_then(|pr| pr.version.as_deref());
                format!("{} {} provides it{}", p.name, p.version, v.map(|v| format!(" (= {v})")).unwrap_or_default())
            }));
        }
        Err(Miss::Unsatisfiable(format!("available: {}", offered.join(", "))))
    }

    fn satisfy(&mut self, group: &Alternatives, needed_by: &str) -> Result<(), ArchiveError> {
        if group.iter().any(|d| self.satisfied(d)) {
            return Ok(());
        }
        let mut first_miss = None;
        for dep in group {
            match self.candidate(dep) {
                Ok(i) => {
                    if !self.is_selected(i) {
                        self.selected.insert(&self.pkg(i).name, i);
                        self.queue.push_back(i);
                    }
                    return Ok(());
                }
                Err(miss) => {
                    first_miss.get_or_insert(miss);
                }
            }
        }
        let unknown =
            group.iter().all(|d| !self.u.by_name.contains_key(&d.name) && !self.u.providers.contains_key(&d.name));
        if unknown {
            let names: Vec<&str> = group.iter().map(|d| d.name.as_str()).collect();
            return Err(ArchiveError::UnknownPackage { name: names.join(" | "), needed_by: needed_by.to_string() });
        }
        let msg = match first_miss {
            Some(Miss::Unsatisfiable(m)) => m,
            _ => "no alternative is available".into(),
        };
        Err(ArchiveError::Unsatisfiable { dependency: display_group(group), needed_by: needed_by.to_string(), msg })
    }
}

enum Miss {
    Unknown,
    Unsatisfiable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::deps::parse_provides;

    fn pkg(name: &str, version: &str, depends: &str, provides: &str, source: usize) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            depends: depends.into(),
            pre_depends: String::new(),
            provides: parse_provides(provides).unwrap(),
            filename: format!("pool/{name}_{version}.deb"),
            size: 1,
            sha256: [0; 32],
            essential: false,
            priority: None,
            multi_arch: None,
            source,
        }
    }

    fn names(u: &Universe, r: &[usize]) -> Vec<String> {
        r.iter().map(|&i| format!("{}={}", u.package(i).name, u.package(i).version)).collect()
    }

    fn universe() -> Universe {
        let mut pre = pkg("app", "1.0", "liba (>= 2), mta | default-mta, awk, libold:any", "", 0);
        pre.pre_depends = "libc6 (>= 2.36)".into();
        Universe::new(vec![
            pre,
            pkg("libc6", "2.36-9", "", "", 0),
            pkg("libc6", "2.36-9+deb12u4", "", "", 1),
            pkg("liba", "1.0", "", "", 0),
            pkg("liba", "2.1", "libc6", "", 0),
            pkg("liba", "3.0~rc1", "libc6", "", 1),
            pkg("postfix", "3.7", "", "mta", 0),
            pkg("exim4", "4.96", "", "mta", 0),
            pkg("mawk", "1.3.4", "", "awk", 0),
            pkg("gawk", "5.2", "", "awk", 0),
            pkg("libold", "1", "", "", 0),
            pkg("cycle-a", "1", "cycle-b", "", 0),
            pkg("cycle-b", "1", "cycle-a", "", 0),
            pkg("needs-v", "1", "libfoo-abi (>= 2)", "", 0),
            pkg("abi1", "1", "", "libfoo-abi (= 1)", 0),
            pkg("abi2", "1", "", "libfoo-abi (= 2)", 0),
            pkg("abi-unversioned", "1", "", "libfoo-abi", 0),
            pkg("pin", "1", "liba (= 1.0)", "", 0),
            pkg("broken", "1", "nonexistent (>= 1) | alsomissing", "", 0),
            pkg("i386-only", "1", "libc6:i386", "", 0),
        ])
    }

    #[test]
    fn closure_with_versions_alternatives_and_provides() {
        let u = universe();
        let r = u.resolve(&["app"], "amd64").unwrap();
        // Highest versions across sources; `mta` (virtual, first alternative) by lowest
        // provider name; `awk` likewise; sorted by name.
        assert_eq!(
            names(&u, &r),
            ["app=1.0", "exim4=4.96", "gawk=5.2", "liba=3.0~rc1", "libc6=2.36-9+deb12u4", "libold=1"]
        );
    }

    #[test]
    fn requested_packages_win_over_defaults() {
        let u = universe();
        // postfix and mawk are requested, so they satisfy `mta` and `awk` instead of the
        // lowest-named providers.
        let r = u.resolve(&["app", "postfix", "mawk"], "amd64").unwrap();
        assert_eq!(
            names(&u, &r),
            ["app=1.0", "liba=3.0~rc1", "libc6=2.36-9+deb12u4", "libold=1", "mawk=1.3.4", "postfix=3.7"]
        );
    }

    #[test]
    fn versioned_requests_and_provides() {
        let u = universe();
        let r = u.resolve(&["liba (<< 3)"], "amd64").unwrap();
        assert_eq!(names(&u, &r), ["liba=2.1", "libc6=2.36-9+deb12u4"]);
        // Only a versioned provide can satisfy a versioned dependency.
        let r = u.resolve(&["needs-v"], "amd64").unwrap();
        assert_eq!(names(&u, &r), ["abi2=1", "needs-v=1"]);
        // Cycles terminate.
        let r = u.resolve(&["cycle-a"], "amd64").unwrap();
        assert_eq!(names(&u, &r), ["cycle-a=1", "cycle-b=1"]);
        // Alternatives in a request.
        let r = u.resolve(&["nothere | libold"], "amd64").unwrap();
        assert_eq!(names(&u, &r), ["libold=1"]);
    }

    #[test]
    fn errors_name_package_and_requester() {
        let u = universe();
        let e = u.resolve(&["libold", "nosuchpkg"], "amd64").unwrap_err().to_string();
        assert_eq!(e, "unknown package `nosuchpkg` (needed by the image definition)");
        let e = u.resolve(&["broken"], "amd64").unwrap_err().to_string();
        assert_eq!(e, "unknown package `nonexistent | alsomissing` (needed by broken 1)");
        let e = u.resolve(&["liba (>= 9)"], "amd64").unwrap_err().to_string();
        assert_eq!(e, "cannot satisfy `liba (>= 9)` (needed by the image definition): available: 3.0~rc1, 2.1, 1.0");
        // One version per name: `pin` wants liba 1.0 but 3.0~rc1 was selected first.
        let e = u.resolve(&["liba", "pin"], "amd64").unwrap_err().to_string();
        assert_eq!(e, "cannot satisfy `liba (= 1.0)` (needed by pin 1): liba 3.0~rc1 is already selected");
        let e = u.resolve(&["i386-only"], "amd64").unwrap_err().to_string();
        assert_eq!(e, "cannot satisfy `libc6:i386` (needed by i386-only 1): architecture `i386` is not available");
        let e = u.resolve(&["a, b"], "amd64").unwrap_err().to_string();
        assert!(e.starts_with("the image definition: bad dependency `a, b`"), "{e}");
        let e = u.resolve(&["Bad Name"], "amd64").unwrap_err().to_string();
        assert!(e.contains("bad dependency `Bad Name`"), "{e}");
    }

    #[test]
    fn duplicate_versions_keep_the_first_source() {
        let u = Universe::new(vec![pkg("x", "1", "", "", 0), pkg("x", "1", "", "", 1), pkg("x", "0.9", "", "", 1)]);
        assert_eq!(u.len(), 2);
        let r = u.resolve(&["x"], "amd64").unwrap();
        assert_eq!(u.package(r[0]).source, 0);
    }
}
