//! A closed set of modules and the depmod-format files that describe it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use berth_fstree::FileData;

use super::index::{IndexBuilder, kmod_hash_order};
use super::{KernelError, Module, ModuleCompression, ModuleIndex, Resolved, modinfo};

/// Modules selected from a [`ModuleIndex`] with their dependency closure: every hard
/// dependency (`depends=`) and every soft dependency (`softdep=` `pre:` and `post:`) the
/// package provides. See the [module docs](super) for the ordering contract.
#[derive(Debug, Clone)]
pub struct Selection {
    version: String,
    /// In depmod's order (`modules.order`).
    modules: Vec<Module>,
    /// Per module, its transitive hard dependencies as `modules.dep` lists them.
    deps: Vec<Vec<usize>>,
    /// Positions in `modules`, dependencies first.
    load_order: Vec<usize>,
    builtin: Vec<String>,
    unavailable: Vec<String>,
    unresolved_softdeps: Vec<(String, String)>,
    /// `modules.order` lines of the selected modules, in shipped order.
    order: Vec<String>,
    /// Exported symbols and their modules (positions), in depmod's hash-table order.
    symbols: Vec<(String, usize)>,
}

/// Computes the closure of `roots` (indexes into `index`) and its orders.
pub(super) fn build(
    index: &ModuleIndex,
    roots: BTreeSet<usize>,
    builtin: Vec<String>,
    unavailable: Vec<String>,
) -> Result<Selection, KernelError> {
    let version = index.version.clone();
    // Closure. Soft edges are kept as (needs, needed) index pairs: `pre:` means the module
    // needs the target loaded first; `post:` means the target is loaded after the module.
    let mut chosen = BTreeSet::new();
    let mut work: Vec<usize> = roots.into_iter().rev().collect();
    let mut soft_edges: Vec<(usize, usize)> = Vec::new();
    let mut unresolved = Vec::new();
    let mut softdep_cache: HashMap<String, Option<Vec<usize>>> = HashMap::new();
    while let Some(i) = work.pop() {
        if !chosen.insert(i) {
            continue;
        }
        let m = &index.modules[i];
        for d in &m.depends {
            if let Some(&j) = index.by_name.get(d) {
                work.push(j);
            } else if !index.builtin.contains(d) {
                return Err(KernelError::MissingDependency {
                    module: m.name.clone(),
                    dependency: d.clone(),
                    version: version.clone(),
                });
            }
        }
        let (pre, post) = m.info.softdep_names();
        for (names, is_pre) in [(pre, true), (post, false)] {
            for name in names {
                let targets = softdep_cache.entry(name.clone()).or_insert_with(|| match index.resolve_softdep(&name) {
                    Resolved::Modules(found) => Some(found),
                    Resolved::Builtin => Some(Vec::new()),
                    Resolved::Nothing => None,
                });
                match targets {
                    Some(found) => {
                        for &j in found.iter().filter(|&&j| j != i) {
                            soft_edges.push(if is_pre { (i, j) } else { (j, i) });
                            work.push(j);
                        }
                    }
                    None => unresolved.push((m.name.clone(), name)),
                }
            }
        }
    }

    let indexes: Vec<usize> = chosen.into_iter().collect();
    let pos: HashMap<usize, usize> = indexes.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let modules: Vec<Module> = indexes.iter().map(|&i| index.modules[i].clone()).collect();
    let module_symbols = modules
        .iter()
        .map(|m| {
            modinfo::read_symbols(&m.data, m.compression)
                .map_err(|source| KernelError::Modinfo { path: m.path.clone(), source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // depmod's symbol table: a symbol exported twice belongs to the later module.
    let mut owner: HashMap<&str, usize> = HashMap::new();
    for (p, s) in module_symbols.iter().enumerate() {
        for name in &s.exports {
            owner.insert(name, p);
        }
    }
    // The dependencies are `depends=`'s; their order is depmod's, which records a dependency
    // where the module first uses one of its symbols. That order decides depmod's ranks, and
    // so the order of each `modules.dep` list. Dependencies no symbol leads to (a module
    // without a symbol table) keep `depends=`'s order after the others.
    let direct: Vec<Vec<usize>> = modules
        .iter()
        .zip(&module_symbols)
        .map(|(m, s)| {
            let declared: Vec<usize> = m.depends.iter().filter_map(|d| index.by_name.get(d)).map(|i| pos[i]).collect();
            let mut ordered: Vec<usize> = Vec::with_capacity(declared.len());
            for import in &s.imports {
                // depmod's lookup ignores a leading '.' (PPC64 function descriptors).
                let name = import.strip_prefix('.').unwrap_or(import);
                if let Some(&o) = owner.get(name)
                    && declared.contains(&o)
                    && !ordered.contains(&o)
                {
                    ordered.push(o);
                }
            }
            for d in declared {
                if !ordered.contains(&d) {
                    ordered.push(d);
                }
            }
            ordered
        })
        .collect();
    let mut symbols: Vec<(String, usize)> = owner.into_iter().map(|(name, p)| (name.to_owned(), p)).collect();
    symbols.sort_by(|a, b| kmod_hash_order(&a.0, SYMBOL_BUCKETS).cmp(&kmod_hash_order(&b.0, SYMBOL_BUCKETS)));
    let rank = depmod_rank(&modules, &direct, &version)?;
    let deps: Vec<Vec<usize>> = (0..modules.len())
        .map(|p| {
            let mut all = Vec::new();
            collect_deps(p, &direct, &mut all);
            all.sort_by_key(|&d| rank[d]);
            all
        })
        .collect();
    let soft_edges: Vec<(usize, usize)> = soft_edges.into_iter().map(|(a, b)| (pos[&a], pos[&b])).collect();
    let load_order = load_order(&deps, &direct, &soft_edges);

    let selected: BTreeSet<&str> = modules.iter().map(Module::uncompressed_path).collect();
    let order = index.order.iter().filter(|l| selected.contains(l.as_str())).cloned().collect();
    unresolved.sort();
    unresolved.dedup();
    Ok(Selection {
        version,
        modules,
        deps,
        load_order,
        builtin,
        unavailable,
        unresolved_softdeps: unresolved,
        order,
        symbols,
    })
}

/// depmod's symbol hash table size, whose iteration order `modules.symbols` follows.
const SYMBOL_BUCKETS: u32 = 2048;

/// depmod's topological index (`depmod_calculate_dependencies`): Kahn's algorithm over the
/// modules in depmod order, the ready set used as a stack, so that modules nothing depends on
/// come first and a module always ranks before its dependencies. With the same dependency
/// order per module this gives depmod's exact ranks; `modules.dep` lists sort by them.
fn depmod_rank(modules: &[Module], direct: &[Vec<usize>], version: &str) -> Result<Vec<usize>, KernelError> {
    let n = modules.len();
    let mut users = vec![0usize; n];
    for deps in direct {
        for &d in deps {
            users[d] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&p| users[p] == 0).collect();
    let mut rank = vec![usize::MAX; n];
    let mut next = 0;
    while let Some(src) = ready.pop() {
        rank[src] = next;
        next += 1;
        for &dst in &direct[src] {
            users[dst] -= 1;
            if users[dst] == 0 {
                ready.push(dst);
            }
        }
    }
    if next < n {
        return Err(KernelError::Cycle { cycle: find_cycle(modules, direct, &rank), version: version.to_owned() });
    }
    Ok(rank)
}

/// A dependency cycle among the modules Kahn's algorithm could not rank, as names.
fn find_cycle(modules: &[Module], direct: &[Vec<usize>], rank: &[usize]) -> Vec<String> {
    let stuck = |p: usize| rank[p] == usize::MAX;
    let Some(start) = (0..modules.len()).find(|&p| stuck(p)) else { return Vec::new() };
    // Every unranked module has an unranked dependency (or it would have been ranked), so
    // walking to one repeatedly must revisit a module: that stretch is a cycle.
    let mut path = vec![start];
    let mut seen = HashMap::from([(start, 0usize)]);
    let mut at = start;
    loop {
        let Some(&next) = direct[at].iter().find(|&&d| stuck(d)) else { return Vec::new() };
        if let Some(&from) = seen.get(&next) {
            let mut cycle: Vec<String> = path[from..].iter().map(|&p| modules[p].name.clone()).collect();
            cycle.push(modules[next].name.clone());
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

/// Transitive dependencies of `p`, each once (depmod's `mod_fill_all_unique_dependencies`).
fn collect_deps(p: usize, direct: &[Vec<usize>], out: &mut Vec<usize>) {
    for &d in &direct[p] {
        if !out.contains(&d) {
            out.push(d);
            collect_deps(d, direct, out);
        }
    }
}

/// The order to load the modules in: a depth-first post-order over "must be loaded before"
/// edges, starting from each module in depmod order. A module's hard dependencies are visited
/// from the end of its `modules.dep` list backwards (modprobe's order for that module); its
/// `pre:` soft dependencies before them. Soft edges that would contradict the hard ones (or
/// each other) are dropped, since hard dependencies cannot be loaded in any other order.
fn load_order(deps: &[Vec<usize>], direct: &[Vec<usize>], soft_edges: &[(usize, usize)]) -> Vec<usize> {
    let n = deps.len();
    // needs[p]: what must be loaded before p, soft first, then hard.
    let mut soft: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in soft_edges {
        if soft[a].contains(&b) || reaches(b, a, direct, &soft) {
            continue;
        }
        soft[a].push(b);
    }
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for p in 0..n {
        visit(p, deps, &soft, &mut done, &mut out);
    }
    out
}

fn visit(p: usize, deps: &[Vec<usize>], soft: &[Vec<usize>], done: &mut [bool], out: &mut Vec<usize>) {
    if done[p] {
        return;
    }
    // Marked before the children: the accepted edges form no cycle, so this only stops
    // revisits through shared dependencies.
    done[p] = true;
    for &s in &soft[p] {
        visit(s, deps, soft, done, out);
    }
    for &d in deps[p].iter().rev() {
        visit(d, deps, soft, done, out);
    }
    out.push(p);
}

/// Whether `to` must already be loaded before `from` through hard and soft edges.
fn reaches(from: usize, to: usize, direct: &[Vec<usize>], soft: &[Vec<usize>]) -> bool {
    let mut seen = vec![false; direct.len()];
    let mut stack = vec![from];
    while let Some(p) = stack.pop() {
        if p == to {
            return true;
        }
        if std::mem::replace(&mut seen[p], true) {
            continue;
        }
        stack.extend(direct[p].iter().chain(&soft[p]));
    }
    false
}

impl Selection {
    /// The kernel version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The selected modules, in depmod's order.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Whether the module of this name is selected.
    pub fn contains(&self, name: &str) -> bool {
        let name = super::normalize(name);
        self.modules.iter().any(|m| m.name == name)
    }

    /// Module paths (relative to the modules directory) in the order stage 1 loads them:
    /// every module after its hard dependencies and its `pre:` soft dependencies.
    pub fn load_order(&self) -> Vec<&str> {
        self.load_order.iter().map(|&p| self.modules[p].path.as_str()).collect()
    }

    /// The dependency list of a module's `modules.dep` line (dependents first; load from the
    /// end), or `None` if the module is not selected.
    pub fn dependencies(&self, name: &str) -> Option<Vec<&str>> {
        let name = super::normalize(name);
        let p = self.modules.iter().position(|m| m.name == name)?;
        Some(self.deps[p].iter().map(|&d| self.modules[d].path.as_str()).collect())
    }

    /// Requested names that are built into the kernel (nothing to load).
    pub fn builtin(&self) -> &[String] {
        &self.builtin
    }

    /// Optional patterns the kernel has no module for (see
    /// [`ModuleIndex::select_with_optional`]).
    pub fn unavailable(&self) -> &[String] {
        &self.unavailable
    }

    /// `(module, softdep name)` pairs that neither a module of the package nor a built-in
    /// module provides; such soft dependencies are skipped.
    pub fn unresolved_softdeps(&self) -> &[(String, String)] {
        &self.unresolved_softdeps
    }

    /// Total size of the selected module files, as stored.
    pub fn bytes(&self) -> u64 {
        self.modules.iter().map(|m| m.data.len()).sum()
    }

    /// `modules.dep`: one `path: deps...` line per module, in load order (see the module docs).
    pub fn modules_dep(&self) -> String {
        let mut out = String::new();
        for &p in &self.load_order {
            out.push_str(&self.dep_line(p));
            out.push('\n');
        }
        out
    }

    /// A module's `modules.dep` line without its newline.
    fn dep_line(&self, p: usize) -> String {
        let mut line = format!("{}:", self.modules[p].path);
        for &d in &self.deps[p] {
            line.push(' ');
            line.push_str(&self.modules[d].path);
        }
        line
    }

    /// `modules.dep.bin`: module name to its `modules.dep` line, each module's priority its
    /// position in depmod's order. This is what modprobe, `modinfo` and the kernel's
    /// `request_module` (through modprobe) look modules up in.
    pub fn modules_dep_bin(&self) -> Result<Vec<u8>, KernelError> {
        let mut ix = IndexBuilder::new();
        for (p, m) in self.modules.iter().enumerate() {
            ix.insert(&m.name, &self.dep_line(p), p as u32).map_err(index_err("modules.dep.bin"))?;
        }
        ix.write().map_err(index_err("modules.dep.bin"))
    }

    /// `modules.alias.bin`: every `alias=` pattern, normalised as kmod does (`-` to `_` outside
    /// `[...]`), to its module. An alias with an unmatched bracket is left out, as depmod
    /// leaves it out (with a warning); `modules.alias` still lists it.
    pub fn modules_alias_bin(&self) -> Result<Vec<u8>, KernelError> {
        let mut ix = IndexBuilder::new();
        for (p, m) in self.modules.iter().enumerate() {
            for alias in m.info.aliases.iter().filter_map(|a| alias_key(a)) {
                ix.insert(&alias, &m.name, p as u32).map_err(index_err("modules.alias.bin"))?;
            }
        }
        ix.write().map_err(index_err("modules.alias.bin"))
    }

    /// `modules.symbols` as depmod writes it: `alias symbol:<name> <module>` per exported
    /// symbol, in depmod's hash-table order (what `symbol_request()` resolves through
    /// modprobe).
    pub fn modules_symbols(&self) -> String {
        let mut out = String::from("# Aliases for symbols, used by symbol_request().\n");
        for (name, p) in &self.symbols {
            out.push_str(&format!("alias symbol:{name} {}\n", self.modules[*p].name));
        }
        out
    }

    /// `modules.symbols.bin`: `symbol:<name>` to the exporting module.
    pub fn modules_symbols_bin(&self) -> Result<Vec<u8>, KernelError> {
        let mut ix = IndexBuilder::new();
        for (name, p) in &self.symbols {
            ix.insert(&format!("symbol:{name}"), &self.modules[*p].name, *p as u32)
                .map_err(index_err("modules.symbols.bin"))?;
        }
        ix.write().map_err(index_err("modules.symbols.bin"))
    }

    /// `modules.alias` as depmod writes it: `alias <pattern> <module>` per `alias=` field.
    pub fn modules_alias(&self) -> String {
        let mut out = String::from("# Aliases extracted from modules themselves.\n");
        for m in &self.modules {
            for a in &m.info.aliases {
                out.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        out
    }

    /// `modules.softdep` as depmod writes it: `softdep <module> <value>` per `softdep=` field.
    pub fn modules_softdep(&self) -> String {
        let mut out = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in &self.modules {
            for s in &m.info.softdeps {
                out.push_str(&format!("softdep {} {s}\n", m.name));
            }
        }
        out
    }

    /// `modules.devname` as depmod writes it: `<module> <node> <c|b><major>:<minor>` for
    /// modules with a `devname:` alias and a `char-major-`/`block-major-` alias (what
    /// `kmod static-nodes` reads to create `/dev/fuse`, `/dev/net/tun`, ...). Empty when
    /// no module has one, as depmod leaves it.
    pub fn modules_devname(&self) -> String {
        let mut out = String::new();
        for m in &self.modules {
            let mut devname = None;
            let mut node = None;
            for a in &m.info.aliases {
                if let Some(d) = a.strip_prefix("devname:") {
                    devname = Some(d);
                } else if let Some(n) = parse_major_minor(a) {
                    node = Some(n);
                }
                if devname.is_some() && node.is_some() {
                    break;
                }
            }
            if let (Some(devname), Some((kind, major, minor))) = (devname, node) {
                if out.is_empty() {
                    out.push_str("# Device nodes to trigger on-demand module loading.\n");
                }
                out.push_str(&format!("{} {devname} {kind}{major}:{minor}\n", m.name));
            }
        }
        out
    }

    /// `modules.order` as shipped, keeping only the selected modules' lines.
    pub fn modules_order(&self) -> String {
        self.order.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The same selection with every compressed module decompressed in memory and its path
    /// renamed to `.ko` (for the initramfs, which is compressed as a whole).
    pub fn decompressed(&self) -> Result<Selection, KernelError> {
        let mut out = self.clone();
        for m in &mut out.modules {
            if m.compression == ModuleCompression::None {
                continue;
            }
            let plain = modinfo::decompress(&m.data, m.compression)
                .map_err(|source| KernelError::Modinfo { path: m.path.clone(), source })?;
            m.path = m.uncompressed_path().to_owned();
            m.data = FileData::Memory(Arc::from(plain));
            m.compression = ModuleCompression::None;
        }
        Ok(out)
    }
}

/// Attaches the index file's name to an index error.
pub(super) fn index_err(file: &'static str) -> impl Fn(super::index::IndexError) -> KernelError {
    move |source| KernelError::Index { file, source }
}

/// An alias as depmod keys it in the binary index (`alias_normalize`): `-` becomes `_` except
/// inside `[...]`; `None` for an unmatched bracket.
pub(super) fn alias_key(alias: &str) -> Option<String> {
    let mut out = String::with_capacity(alias.len());
    let mut class = false;
    for c in alias.chars() {
        match c {
            '[' if !class => class = true,
            ']' if class => class = false,
            ']' => return None,
            '-' if !class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    (!class).then_some(out)
}

/// `char-major-M-N` or `block-major-M-N` as (`c`|`b`, M, N), as depmod's `sscanf` reads them.
fn parse_major_minor(alias: &str) -> Option<(char, u32, u32)> {
    let (kind, rest) = if let Some(r) = alias.strip_prefix("char-major-") {
        ('c', r)
    } else {
        ('b', alias.strip_prefix("block-major-")?)
    };
    let (major, minor) = rest.split_once('-')?;
    let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
    Some((kind, major.parse().ok()?, minor.parse().ok()?))
}
