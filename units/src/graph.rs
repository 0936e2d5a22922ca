//! From a goal to an ordered list of units (systemd.unit(5) "Mapping of unit properties to
//! their inverses", bootup(7)):
//!
//! - the *closure*: the goal and everything it pulls in through `Requires=` and `Wants=`,
//!   transitively (with `.wants/`/`.requires/` entries and default dependencies already in);
//! - a unit that is missing, masked or broken cannot start, nor can anything that *requires*
//!   it (transitively); a merely *wanted* one is left out and that is all;
//! - two units of the closure that conflict: the one not required by the goal is dropped
//!   (both required: an error, the second is dropped);
//! - the start order is a topological order of `After=`/`Before=` between units of the
//!   closure (ordering against units outside it means nothing). An ordering cycle is reported
//!   and broken as systemd breaks it: by dropping a unit of the cycle that the goal only
//!   wants. If every unit of the cycle is required, one `After=` edge of it is ignored instead
//!   (systemd would fail the whole transaction; PID 1 must still boot) and that is an error;
//! - stopping is the reverse order.
//!
//! Ties are broken by name, so a plan is the same on every boot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{LoadState, UnitSet};

/// Something the plan had to leave out or work around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The goal itself cannot be started.
    Goal { goal: String, reason: String },
    /// A unit that some unit of the closure pulls in cannot start (not found, masked, broken).
    Unavailable { unit: String, state: LoadState, needed_by: String, required: bool },
    /// A unit left out because something it requires cannot start.
    DependencyFailed { unit: String, requires: String },
    /// A unit of a type berth-init does not run; it is left out, never fatal.
    Unsupported { unit: String, needed_by: String },
    /// Two units of the closure conflict; `dropped` is not started.
    Conflict { unit: String, with: String, dropped: String, both_required: bool },
    /// An `After=`/`Before=` cycle, in start order (each unit before the next, the last before
    /// the first), and how it was broken.
    OrderingCycle { cycle: Vec<String>, broken: CycleBreak },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleBreak {
    /// This unit (only wanted) is not started.
    DroppedUnit(String),
    /// Every unit of the cycle is required: `after` is no longer ordered after `before`.
    IgnoredOrdering { before: String, after: String },
}

impl Problem {
    /// Whether the plan fails something that was required (rather than merely wanted).
    pub fn is_error(&self) -> bool {
        match self {
            Problem::Goal { .. } | Problem::DependencyFailed { .. } => true,
            Problem::Unavailable { required, .. } => *required,
            Problem::Conflict { both_required, .. } => *both_required,
            Problem::OrderingCycle { broken, .. } => matches!(broken, CycleBreak::IgnoredOrdering { .. }),
            Problem::Unsupported { .. } => false,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Goal { goal, reason } => write!(f, "cannot start {goal}: {reason}"),
            Problem::Unavailable { unit, state, needed_by, required } => {
                let how = if *required { "requires" } else { "wants" };
                let state = match state {
                    LoadState::NotFound => "not found",
                    LoadState::Masked => "masked",
                    LoadState::Error => "broken",
                    LoadState::Unsupported => "not supported",
                    LoadState::Loaded => "loaded",
                };
                write!(f, "{needed_by} {how} {unit}, which is {state}")
            }
            Problem::DependencyFailed { unit, requires } => {
                write!(f, "{unit} is not started: it requires {requires}, which cannot start")
            }
            Problem::Unsupported { unit, needed_by } => {
                write!(f, "{needed_by} pulls in {unit}, a unit type berth-init does not run; ignored")
            }
            Problem::Conflict { unit, with, dropped, .. } => {
                write!(f, "{unit} conflicts with {with}; {dropped} is not started")
            }
            Problem::OrderingCycle { cycle, broken } => {
                let mut text = cycle.join(" → ");
                if let Some(first) = cycle.first() {
                    text.push_str(" → ");
                    text.push_str(first);
                }
                match broken {
                    CycleBreak::DroppedUnit(u) => write!(f, "ordering cycle {text}; {u} (only wanted) is not started"),
                    CycleBreak::IgnoredOrdering { before, after } => write!(
                        f,
                        "ordering cycle {text} between required units; ignoring that {after} starts after {before}"
                    ),
                }
            }
        }
    }
}

/// What to do to reach a goal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub goal: String,
    /// Units to start, in an order consistent with `After=`/`Before=`.
    pub start: Vec<String>,
    /// For each unit of `start`, the units of `start` that must be up before it starts
    /// (so a runtime can start independent units in parallel).
    pub waits_for: BTreeMap<String, Vec<String>>,
    /// Active units that conflict with the units to start, in stop order (stop these first).
    pub stop: Vec<String>,
    pub problems: Vec<Problem>,
}

/// Plans reaching `goal` from a system where `active` units run.
pub fn plan(set: &UnitSet, goal: &str, active: &[String]) -> Plan {
    let mut plan = Plan { goal: goal.to_string(), ..Plan::default() };
    let Some(goal) = set.resolve(goal).map(str::to_string) else {
        plan.problems.push(Problem::Goal { goal: goal.to_string(), reason: "not loaded".into() });
        return plan;
    };
    if let Some(u) = set.get(&goal)
        && !u.is_startable()
    {
        plan.problems.push(Problem::Goal { goal: goal.clone(), reason: format!("its load state is {:?}", u.state) });
        return plan;
    }

    // Units (canonical names, or the bare name when not loaded) left out so far.
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    let name_of = |n: &str| set.resolve(n).unwrap_or(n).to_string();

    // 1. Closure, and what cannot start.
    let first = closure(set, &goal, &excluded);
    for (unit, (needed_by, required)) in &first.pulled_by {
        match set.get(unit).map(|u| u.state) {
            Some(LoadState::Loaded) => {}
            Some(LoadState::Unsupported) => {
                plan.problems.push(Problem::Unsupported { unit: unit.clone(), needed_by: needed_by.clone() });
                excluded.insert(unit.clone());
            }
            state => {
                plan.problems.push(Problem::Unavailable {
                    unit: unit.clone(),
                    state: state.unwrap_or(LoadState::NotFound),
                    needed_by: needed_by.clone(),
                    required: *required,
                });
                excluded.insert(unit.clone());
            }
        }
    }
    // Anything that requires an unavailable unit cannot start either, transitively.
    let unavailable: BTreeSet<String> =
        excluded.iter().filter(|u| set.get(u).is_none_or(|x| x.state != LoadState::Unsupported)).cloned().collect();
    let mut blocked = unavailable.clone();
    loop {
        let mut changed = false;
        for unit in &first.members {
            if blocked.contains(unit) {
                continue;
            }
            let Some(u) = set.get(unit) else { continue };
            if let Some(r) = u.deps.requires.iter().map(|r| name_of(r)).find(|r| blocked.contains(r)) {
                plan.problems.push(Problem::DependencyFailed { unit: unit.clone(), requires: r });
                blocked.insert(unit.clone());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if blocked.contains(&goal) {
        plan.problems.push(Problem::Goal { goal: goal.clone(), reason: "a unit it requires cannot start".into() });
        return plan;
    }
    excluded.extend(blocked);

    // 2. Conflicts inside the closure.
    loop {
        let c = closure(set, &goal, &excluded);
        let mut dropped = None;
        'outer: for a in &c.members {
            let Some(ua) = set.get(a) else { continue };
            for b in ua.deps.conflicts.iter().map(|n| name_of(n)) {
                if b == *a || !c.members.contains(&b) {
                    continue;
                }
                let (a_req, b_req) = (c.required.contains(a), c.required.contains(&b));
                let drop = if !b_req {
                    b.clone()
                } else if !a_req {
                    a.clone()
                } else {
                    b.clone()
                };
                let drop = if drop == goal { a.clone() } else { drop };
                plan.problems.push(Problem::Conflict {
                    unit: a.clone(),
                    with: b.clone(),
                    dropped: drop.clone(),
                    both_required: a_req && b_req,
                });
                dropped = Some(drop);
                break 'outer;
            }
        }
        match dropped {
            Some(d) => {
                excluded.insert(d);
            }
            None => break,
        }
    }

    // 3. Order, breaking cycles.
    let mut ignored_edges: BTreeSet<(String, String)> = BTreeSet::new();
    let (members, order, edges) = loop {
        let c = closure(set, &goal, &excluded);
        let edges = ordering_edges(set, &c.members, &ignored_edges);
        match toposort(&c.members, &edges) {
            Ok(order) => break (c.members, order, edges),
            Err(cycle) => {
                let droppable = cycle.iter().find(|u| !c.required.contains(*u) && **u != goal).cloned();
                let broken = match droppable {
                    Some(u) => {
                        excluded.insert(u.clone());
                        CycleBreak::DroppedUnit(u)
                    }
                    None => {
                        // The edge from the last unit of the cycle back to the first.
                        let before = cycle.last().cloned().unwrap_or_default();
                        let after = cycle.first().cloned().unwrap_or_default();
                        ignored_edges.insert((before.clone(), after.clone()));
                        CycleBreak::IgnoredOrdering { before, after }
                    }
                };
                plan.problems.push(Problem::OrderingCycle { cycle, broken });
            }
        }
    };
    for unit in &order {
        let waits: Vec<String> = edges.pred.get(unit).map(|p| p.iter().cloned().collect()).unwrap_or_default();
        plan.waits_for.insert(unit.clone(), waits);
    }
    plan.start = order;

    // 4. Active units that conflict with what starts.
    let mut to_stop = Vec::new();
    for name in active {
        let name = name_of(name);
        if members.contains(&name) || to_stop.contains(&name) {
            continue;
        }
        let Some(u) = set.get(&name) else { continue };
        let conflicts = u.deps.conflicts.iter().any(|c| members.contains(&name_of(c)))
            || members
                .iter()
                .any(|m| set.get(m).is_some_and(|mu| mu.deps.conflicts.iter().any(|c| name_of(c) == name)));
        if conflicts {
            to_stop.push(name);
        }
    }
    let (stop, problems) = stop_order(set, &to_stop);
    plan.stop = stop;
    plan.problems.extend(problems);
    plan
}

/// The order to stop `names` in: the reverse of a start order. Cycles are broken by ignoring
/// an ordering edge (nothing can be "not stopped"), and reported.
pub fn stop_order(set: &UnitSet, names: &[String]) -> (Vec<String>, Vec<Problem>) {
    let (order, problems) = stop_plan(set, names);
    (order.into_iter().map(|(unit, _)| unit).collect(), problems)
}

/// [`stop_order`], each unit with the units before it in that order that must be down before it
/// is stopped (the ones ordered after it, directly or through units that are not stopped, such
/// as a target between a service and the services ordered after that target).
pub fn stop_plan(set: &UnitSet, names: &[String]) -> (Vec<(String, Vec<String>)>, Vec<Problem>) {
    let members: BTreeSet<String> = names.iter().map(|n| set.resolve(n).unwrap_or(n).to_string()).collect();
    let mut ignored: BTreeSet<(String, String)> = BTreeSet::new();
    let mut problems = Vec::new();
    loop {
        let edges = ordering_edges_through(set, &members, &ignored);
        match toposort(&members, &edges) {
            Ok(mut order) => {
                order.reverse();
                let plan = (order.iter())
                    .map(|unit| {
                        let after = edges.succ.get(unit).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                        (unit.clone(), after)
                    })
                    .collect();
                return (plan, problems);
            }
            Err(cycle) => {
                let before = cycle.last().cloned().unwrap_or_default();
                let after = cycle.first().cloned().unwrap_or_default();
                ignored.insert((before.clone(), after.clone()));
                problems.push(Problem::OrderingCycle { cycle, broken: CycleBreak::IgnoredOrdering { before, after } });
            }
        }
    }
}

struct Closure {
    members: BTreeSet<String>,
    /// Reachable from the goal through `Requires=` only (the goal included).
    required: BTreeSet<String>,
    /// For each unit: the first unit that pulled it in, and whether any unit requires it.
    pulled_by: BTreeMap<String, (String, bool)>,
}

/// The goal and everything it pulls in, skipping `excluded` units (and what only they pull in).
fn closure(set: &UnitSet, goal: &str, excluded: &BTreeSet<String>) -> Closure {
    let mut c = Closure { members: BTreeSet::new(), required: BTreeSet::new(), pulled_by: BTreeMap::new() };
    // Two walks: through Requires= only, then through Requires= and Wants=.
    for with_wants in [false, true] {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut queue = vec![goal.to_string()];
        while let Some(unit) = queue.pop() {
            if !seen.insert(unit.clone()) {
                continue;
            }
            let Some(u) = set.get(&unit).filter(|u| u.state == LoadState::Loaded) else { continue };
            let lists: &[(&Vec<String>, bool)] = if with_wants {
                &[(&u.deps.requires, true), (&u.deps.wants, false)]
            } else {
                &[(&u.deps.requires, true)]
            };
            for (list, req) in lists {
                for dep in list.iter() {
                    let dep = set.resolve(dep).unwrap_or(dep).to_string();
                    if with_wants {
                        let entry = c.pulled_by.entry(dep.clone()).or_insert_with(|| (unit.clone(), false));
                        entry.1 |= *req;
                    }
                    if !excluded.contains(&dep) {
                        queue.push(dep);
                    }
                }
            }
        }
        if with_wants { c.members = seen } else { c.required = seen }
    }
    c
}

struct Edges {
    /// unit → units that must start after it.
    succ: BTreeMap<String, BTreeSet<String>>,
    /// unit → units that must start before it.
    pred: BTreeMap<String, BTreeSet<String>>,
}

/// `before → after` edges between members, from both sides' `After=` and `Before=`.
fn ordering_edges(set: &UnitSet, members: &BTreeSet<String>, ignored: &BTreeSet<(String, String)>) -> Edges {
    let mut edges = Edges { succ: BTreeMap::new(), pred: BTreeMap::new() };
    let mut add = |before: &str, after: &str| {
        if before == after || !members.contains(before) || !members.contains(after) {
            return;
        }
        if ignored.contains(&(before.to_string(), after.to_string())) {
            return;
        }
        edges.succ.entry(before.to_string()).or_default().insert(after.to_string());
        edges.pred.entry(after.to_string()).or_default().insert(before.to_string());
    };
    for m in members {
        let Some(u) = set.get(m) else { continue };
        for a in &u.deps.after {
            add(set.resolve(a).unwrap_or(a), m);
        }
        for b in &u.deps.before {
            add(m, set.resolve(b).unwrap_or(b));
        }
    }
    edges
}

/// [`ordering_edges`] between `members`, plus an edge wherever a chain of orderings leads from
/// one member to another through units that are not members: stopping `a`, a target after it
/// and `b` after the target, `b` goes before `a` even when the target itself has nothing to stop.
fn ordering_edges_through(set: &UnitSet, members: &BTreeSet<String>, ignored: &BTreeSet<(String, String)>) -> Edges {
    // Every unit's direct successors (start order), by canonical name.
    let mut succ: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for u in set.units() {
        for a in &u.deps.after {
            succ.entry(set.resolve(a).unwrap_or(a)).or_default().insert(&u.name);
        }
        for b in &u.deps.before {
            succ.entry(&u.name).or_default().insert(set.resolve(b).unwrap_or(b));
        }
    }
    let mut edges = ordering_edges(set, members, ignored);
    for m in members {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = vec![m.as_str()];
        while let Some(x) = stack.pop() {
            for &y in succ.get(x).into_iter().flatten() {
                if !seen.insert(y) {
                    continue;
                }
                if !members.contains(y) {
                    stack.push(y);
                } else if x != m.as_str() && y != m.as_str() && !ignored.contains(&(m.clone(), y.to_string())) {
                    edges.succ.entry(m.clone()).or_default().insert(y.to_string());
                    edges.pred.entry(y.to_string()).or_default().insert(m.clone());
                }
            }
        }
    }
    edges
}

/// Kahn's algorithm, smallest name first. On a cycle, returns one cycle in start order.
fn toposort(members: &BTreeSet<String>, edges: &Edges) -> Result<Vec<String>, Vec<String>> {
    let mut indegree: BTreeMap<&str, usize> = members.iter().map(|m| (m.as_str(), 0)).collect();
    for (after, befores) in &edges.pred {
        if let Some(d) = indegree.get_mut(after.as_str()) {
            *d = befores.len();
        }
    }
    let mut ready: BTreeSet<&str> = indegree.iter().filter(|(_, d)| **d == 0).map(|(m, _)| *m).collect();
    let mut order = Vec::with_capacity(members.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for s in edges.succ.get(next).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(s.as_str()) {
                *d = d.saturating_sub(1);
                if *d == 0 {
                    ready.insert(s.as_str());
                }
            }
        }
    }
    if order.len() == members.len() {
        return Ok(order);
    }
    // Every unit left has a predecessor that is left too: walk predecessors until one repeats.
    let placed: BTreeSet<&str> = order.iter().map(String::as_str).collect();
    let left: BTreeSet<&str> = members.iter().map(String::as_str).filter(|m| !placed.contains(m)).collect();
    let mut path: Vec<&str> = Vec::new();
    let mut current = left.first().copied().unwrap_or_default();
    while !path.contains(&current) {
        path.push(current);
        let pred = edges.pred.get(current).and_then(|p| p.iter().map(String::as_str).find(|p| left.contains(p)));
        match pred {
            Some(p) => current = p,
            None => break,
        }
    }
    let start = path.iter().position(|p| *p == current).unwrap_or(0);
    // `path` runs backwards (each entry after the next); reverse it into start order.
    let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
    cycle.reverse();
    Err(cycle)
}
