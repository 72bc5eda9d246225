//! Validation of the declared job graph (SPEC §3.1 rules 2–7) and its
//! execution order. Works on plain declarations (id, inputs, location) so it
//! knows nothing of Lua; every error names the job and its `ci.job` call.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::job::{Input, Job, PUSH_SOURCE, SCHEDULE_SOURCE, SOURCES, SOURCE_NAMESPACE};
use crate::diagnostic::{Diagnostic, Location};
use crate::id::JobId;

/// One `ci.job` call, as far as the graph is concerned.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub inputs: Vec<String>,
    pub location: Location,
}

/// Checks every rule and returns the jobs in definition order, or every
/// problem found (sorted by position).
pub fn validate(nodes: &[Node]) -> Result<Vec<Job>, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut first_at: HashMap<&str, &Location> = HashMap::new();
    // Jobs with a problem of their own are not also blamed for being
    // unreachable; that would only repeat the first error.
    let mut faulty: HashSet<&str> = HashSet::new();

    for node in nodes {
        if let Err(e) = JobId::new(node.id.as_str()) {
            let mut d = Diagnostic::error(format!("job `{}`: {e}", node.id)).at(node.location.clone());
            if node.id.starts_with(SOURCE_NAMESPACE) {
                d = d.with_help(format!("names under `{SOURCE_NAMESPACE}` are reserved for sources"));
            }
            diagnostics.push(d);
            faulty.insert(&node.id);
        }
        if let Some(first) = first_at.get(node.id.as_str()) {
            diagnostics.push(
                Diagnostic::error(format!(
                    "duplicate job id `{}` (first defined on line {})",
                    node.id, first.line
                ))
                .at(node.location.clone()),
            );
            faulty.insert(&node.id);
        } else {
            first_at.insert(&node.id, &node.location);
        }
        if node.inputs.is_empty() {
            diagnostics.push(
                Diagnostic::error(format!("job `{}` has no inputs", node.id))
                    .at(node.location.clone())
                    .with_help(format!(
                        "give it at least one input, e.g. [:{PUSH_SOURCE}] or another job's id"
                    )),
            );
            faulty.insert(&node.id);
        }
        for input in &node.inputs {
            if let Some(message) = unknown_input(&node.id, input, nodes) {
                diagnostics.push(Diagnostic::error(message).at(node.location.clone()));
                faulty.insert(&node.id);
            }
        }
    }

    let cycles = find_cycles(nodes);
    for cycle in &cycles {
        let start = nodes.iter().find(|n| n.id == cycle[0]).expect("cycle members are declared");
        diagnostics.push(
            Diagnostic::error(format!("job `{}` is part of a cycle: {}", start.id, cycle.join(" -> ")))
                .at(start.location.clone()),
        );
        faulty.extend(cycle.iter().map(|s| s.as_str()));
    }

    let reachable = reachable_from_source(nodes);
    for node in nodes {
        if !reachable.contains(node.id.as_str()) && !faulty.contains(node.id.as_str()) {
            diagnostics.push(
                Diagnostic::error(format!(
                    "job `{}` can never run: none of its inputs leads to a source",
                    node.id
                ))
                .at(node.location.clone())
                .with_help(format!(
                    "every job needs `{PUSH_SOURCE}` or `{SCHEDULE_SOURCE}` among its transitive inputs"
                )),
            );
        }
    }

    if !diagnostics.is_empty() {
        diagnostics.sort_by_key(|d| d.location.as_ref().map(|l| (l.line, l.column)));
        return Err(diagnostics);
    }
    Ok(nodes.iter().map(to_job).collect())
}

fn unknown_input(job: &str, input: &str, nodes: &[Node]) -> Option<String> {
    if SOURCES.contains(&input) || nodes.iter().any(|n| n.id == input) {
        return None;
    }
    if input.starts_with(SOURCE_NAMESPACE) {
        Some(format!(
            "job `{job}` has unknown source `{input}`: the sources are `{PUSH_SOURCE}` and `{SCHEDULE_SOURCE}`"
        ))
    } else {
        Some(format!("job `{job}` has unknown input `{input}`: no job in this pipeline has that id"))
    }
}

fn to_job(node: &Node) -> Job {
    let inputs = node
        .inputs
        .iter()
        .map(|name| match name.as_str() {
            PUSH_SOURCE => Input::Push,
            SCHEDULE_SOURCE => Input::Schedule,
            id => Input::Job(JobId::new(id).expect("validated")),
        })
        .collect();
    Job { id: JobId::new(node.id.as_str()).expect("validated"), inputs, location: node.location.clone() }
}

/// Each elementary cycle found by a depth-first walk in definition order,
/// as `[a, b, c, a]`. A cycle is reported once, from its first-defined job.
fn find_cycles(nodes: &[Node]) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let index: HashMap<&str, usize> =
        nodes.iter().enumerate().rev().map(|(i, n)| (n.id.as_str(), i)).collect();
    let mut marks = vec![Mark::New; nodes.len()];
    let mut cycles = Vec::new();

    fn visit(
        at: usize,
        nodes: &[Node],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        cycles: &mut Vec<Vec<String>>,
    ) {
        marks[at] = Mark::OnPath;
        path.push(at);
        for input in &nodes[at].inputs {
            let Some(&next) = index.get(input.as_str()) else { continue };
            match marks[next] {
                Mark::New => visit(next, nodes, index, marks, path, cycles),
                Mark::OnPath => {
                    let from = path.iter().position(|&p| p == next).expect("on the path");
                    // Arrows read "takes as input": `a -> c` means a needs c.
                    let mut cycle: Vec<String> = path[from..].iter().map(|&i| nodes[i].id.clone()).collect();
                    cycle.push(nodes[next].id.clone());
                    cycles.push(cycle);
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[at] = Mark::Done;
    }

    for start in 0..nodes.len() {
        if marks[start] == Mark::New {
            visit(start, nodes, &index, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    cycles
}

/// Ids of jobs with a source among their transitive inputs.
fn reachable_from_source(nodes: &[Node]) -> HashSet<&str> {
    let mut reachable: HashSet<&str> = HashSet::new();
    loop {
        let before = reachable.len();
        for node in nodes {
            if node.inputs.iter().any(|i| SOURCES.contains(&i.as_str()) || reachable.contains(i.as_str())) {
                reachable.insert(&node.id);
            }
        }
        if reachable.len() == before {
            return reachable;
        }
    }
}

/// The order jobs run in: every job after its inputs, ties broken by
/// definition order. `jobs` must be valid (acyclic).
pub fn topological_order(jobs: &[Job]) -> Vec<usize> {
    let index: HashMap<&JobId, usize> = jobs.iter().enumerate().map(|(i, j)| (&j.id, i)).collect();
    let mut waiting_on: Vec<usize> =
        jobs.iter().map(|j| j.inputs.iter().filter(|i| matches!(i, Input::Job(_))).count()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        for input in &job.inputs {
            if let Input::Job(id) = input {
                dependents[index[id]].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..jobs.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(jobs.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &d in &dependents[next] {
            waiting_on[d] -= 1;
            if waiting_on[d] == 0 {
                ready.insert(d);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(line: u32, id: &str, inputs: &[&str]) -> Node {
        Node {
            id: id.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            location: Location::new("ci.fnl", line, 1),
        }
    }

    fn errors(nodes: &[Node]) -> Vec<String> {
        validate(nodes).unwrap_err().iter().map(|d| d.short()).collect()
    }

    #[test]
    fn a_valid_graph_keeps_definition_order() {
        let jobs = validate(&[node(1, "a", &["quire/push"]), node(2, "b", &["a", "quire/push"])]).unwrap();
        assert_eq!(jobs[1].inputs, vec![Input::Job(JobId::new("a").unwrap()), Input::Push]);
    }

    #[test]
    fn no_jobs_is_valid() {
        assert!(validate(&[]).unwrap().is_empty());
    }

    #[test]
    fn each_rule_names_job_and_position() {
        assert_eq!(
            errors(&[node(4, "a/b", &["quire/push"])]),
            ["ci.fnl:4:1: error: job `a/b`: job id \"a/b\" may only contain letters, digits, `_` and `-`"]
        );
        assert_eq!(
            errors(&[node(1, "a", &["quire/push"]), node(5, "a", &["quire/push"])]),
            ["ci.fnl:5:1: error: duplicate job id `a` (first defined on line 1)"]
        );
        assert_eq!(errors(&[node(2, "a", &[])]), ["ci.fnl:2:1: error: job `a` has no inputs"]);
        assert_eq!(
            errors(&[node(3, "a", &["nope"])]),
            ["ci.fnl:3:1: error: job `a` has unknown input `nope`: no job in this pipeline has that id"]
        );
        assert_eq!(
            errors(&[node(3, "a", &["quire/pull"])]),
            ["ci.fnl:3:1: error: job `a` has unknown source `quire/pull`: the sources are `quire/push` and `quire/schedule`"]
        );
        assert_eq!(
            errors(&[node(1, "a", &["quire/push", "c"]), node(2, "b", &["a"]), node(3, "c", &["b"])]),
            ["ci.fnl:1:1: error: job `a` is part of a cycle: a -> c -> b -> a"]
        );
        assert_eq!(
            errors(&[
                node(1, "a", &["quire/push"]),
                node(7, "lonely", &["lonely2"]),
                node(8, "lonely2", &["lonely"])
            ])
            .len(),
            1,
            "a cycle is reported once, not also as unreachable"
        );
        assert_eq!(
            errors(&[node(1, "a", &["b"]), node(2, "b", &["a"]), node(3, "c", &["b"])]),
            [
                "ci.fnl:1:1: error: job `a` is part of a cycle: a -> b -> a",
                "ci.fnl:3:1: error: job `c` can never run: none of its inputs leads to a source",
            ]
        );
    }

    #[test]
    fn self_loop_is_a_cycle() {
        assert_eq!(
            errors(&[node(1, "a", &["a"])]),
            ["ci.fnl:1:1: error: job `a` is part of a cycle: a -> a"]
        );
    }

    #[test]
    fn topological_order_breaks_ties_by_definition() {
        let jobs = validate(&[
            node(1, "test", &["build"]),
            node(2, "lint", &["quire/push"]),
            node(3, "build", &["quire/push"]),
            node(4, "docs", &["quire/push"]),
        ])
        .unwrap();
        let order: Vec<&str> = topological_order(&jobs).into_iter().map(|i| jobs[i].id.as_str()).collect();
        assert_eq!(order, ["lint", "build", "test", "docs"]);
    }
}
