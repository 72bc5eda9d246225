//! Which job may start now and which must be skipped: the run's plan,
//! without threads, Lua or I/O. Only the jobs of the run's source take part
//! (a job whose transitive inputs include the source, and whose job inputs
//! all take part too); the others are not part of the run at all. Jobs are
//! considered in the pipeline's execution order (topological, ties in
//! definition order); a job starts once every input has completed and
//! there is room, and is skipped as soon as an input failed or was
//! skipped. With room for one job this is exactly the sequential order.

use crate::id::JobId;
use crate::pipeline::{Input, Pipeline, Source};

/// Where one job of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not part of this run: `--job` named others, or the job does not
    /// follow from the run's source.
    Unselected,
    Waiting,
    Running,
    Complete,
    /// Failed or skipped: its dependents are skipped.
    NotComplete,
}

/// What the runner should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(usize),
    /// Skip the job at the index, because of the named input.
    Skip(usize, JobId),
}

#[derive(Debug)]
pub struct Schedule {
    order: Vec<usize>,
    ids: Vec<JobId>,
    /// Indices of each job's job inputs.
    inputs: Vec<Vec<usize>>,
    slots: Vec<Slot>,
}

/// A `--job` that names no job of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job `{0}` given to --job")]
pub struct UnknownJob(pub JobId);

impl Schedule {
    /// The plan for `pipeline` in a run started by `source`: every job of
    /// the source, or of those the ones in `only` and their ancestors.
    pub fn new(pipeline: &Pipeline, only: &[JobId], source: Source) -> Result<Schedule, UnknownJob> {
        let jobs = pipeline.jobs();
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        let index_of = |id: &JobId| jobs.iter().position(|j| &j.id == id);
        let inputs: Vec<Vec<usize>> = jobs
            .iter()
            .map(|job| {
                job.inputs
                    .iter()
                    .filter_map(|input| match input {
                        Input::Job(id) => index_of(id),
                        Input::Push | Input::Schedule => None,
                    })
                    .collect()
            })
            .collect();
        let mut schedule = Schedule {
            order: pipeline.execution_order(),
            ids,
            inputs,
            slots: vec![Slot::Waiting; jobs.len()],
        };
        if !only.is_empty() {
            schedule.slots.fill(Slot::Unselected);
            for id in only {
                let index = index_of(id).ok_or_else(|| UnknownJob(id.clone()))?;
                for selected in std::iter::once(index).chain(schedule.ancestors(index)) {
                    schedule.slots[selected] = Slot::Waiting;
                }
            }
        }
        for (index, follows) in schedule.following(pipeline, source).into_iter().enumerate() {
            if !follows {
                schedule.slots[index] = Slot::Unselected;
            }
        }
        Ok(schedule)
    }

    /// For each job, whether it follows from `source`: the source is among
    /// its inputs or those of a job it takes as input, and every job it
    /// takes as input follows too. One pass in execution order suffices,
    /// since inputs come first.
    fn following(&self, pipeline: &Pipeline, source: Source) -> Vec<bool> {
        let jobs = pipeline.jobs();
        let mut follows = vec![false; jobs.len()];
        for &index in &self.order {
            let direct = jobs[index].inputs.iter().any(|input| input.source() == Some(source));
            let inputs = &self.inputs[index];
            follows[index] =
                (direct || inputs.iter().any(|&i| follows[i])) && inputs.iter().all(|&i| follows[i]);
        }
        follows
    }

    /// The indices of every job `index` depends on, transitively.
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        let mut found: Vec<usize> = Vec::new();
        let mut stack = vec![index];
        while let Some(at) = stack.pop() {
            for &input in &self.inputs[at] {
                if !found.contains(&input) {
                    found.push(input);
                    stack.push(input);
                }
            }
        }
        found
    }

    /// What can happen now, with room for `free` more running jobs, in
    /// the order to do it. The jobs returned are marked running or skipped.
    pub fn next(&mut self, mut free: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        for position in 0..self.order.len() {
            if free == 0 {
                break;
            }
            let index = self.order[position];
            if self.slots[index] != Slot::Waiting {
                continue;
            }
            let inputs = &self.inputs[index];
            if inputs.iter().any(|&i| matches!(self.slots[i], Slot::Waiting | Slot::Running)) {
                continue;
            }
            match inputs.iter().find(|&&i| self.slots[i] == Slot::NotComplete) {
                Some(&failed) => {
                    self.slots[index] = Slot::NotComplete;
                    actions.push(Action::Skip(index, self.ids[failed].clone()));
                }
                None => {
                    self.slots[index] = Slot::Running;
                    actions.push(Action::Start(index));
                    free -= 1;
                }
            }
        }
        actions
    }

    /// Records how a running job ended.
    pub fn finished(&mut self, index: usize, complete: bool) {
        self.slots[index] = if complete { Slot::Complete } else { Slot::NotComplete };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::LuaLimits;
    use crate::source::SourceFile;

    fn pipeline(jobs: &[(&str, &[&str])]) -> Pipeline {
        let mut text = String::from("(local ci (require :quire.ci))\n");
        for (id, inputs) in jobs {
            let inputs: Vec<String> = inputs.iter().map(|i| format!(":{i}")).collect();
            text.push_str(&format!("(ci.job :{id} [{}] (fn [] nil))\n", inputs.join(" ")));
        }
        Pipeline::from_source(SourceFile::new("ci.fnl", text), None, LuaLimits::default()).unwrap()
    }

    fn names(p: &Pipeline, actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Start(i) => format!("start {}", p.jobs()[*i].id),
                Action::Skip(i, because) => format!("skip {} ({because})", p.jobs()[*i].id),
            })
            .collect()
    }

    const DIAMOND: &[(&str, &[&str])] =
        &[("a", &["quire/push"]), ("b", &["quire/push"]), ("c", &["quire/push"]), ("join", &["a", "b", "c"])];

    #[test]
    fn independent_jobs_start_together_up_to_the_room_in_definition_order() {
        let p = pipeline(DIAMOND);
        let mut s = Schedule::new(&p, &[], Source::Push).unwrap();
        assert_eq!(names(&p, &s.next(2)), ["start a", "start b"]);
        assert_eq!(names(&p, &s.next(0)), Vec::<String>::new());
        s.finished(0, true);
        assert_eq!(names(&p, &s.next(1)), ["start c"]);
        s.finished(1, true);
        assert!(s.next(1).is_empty(), "join waits for c");
        s.finished(2, true);
        assert_eq!(names(&p, &s.next(4)), ["start join"]);
    }

    #[test]
    fn a_failure_skips_its_dependents_transitively_and_nothing_else() {
        let p = pipeline(&[("a", &["quire/push"]), ("b", &["a"]), ("c", &["b"]), ("d", &["quire/push"])]);
        let mut s = Schedule::new(&p, &[], Source::Push).unwrap();
        assert_eq!(names(&p, &s.next(4)), ["start a", "start d"]);
        s.finished(0, false);
        assert_eq!(names(&p, &s.next(3)), ["skip b (a)", "skip c (b)"]);
    }

    #[test]
    fn with_room_for_one_the_order_is_sequential() {
        let p = pipeline(&[("a", &["quire/push"]), ("c", &["quire/push"]), ("b", &["a"])]);
        let mut s = Schedule::new(&p, &[], Source::Push).unwrap();
        let mut seen = names(&p, &s.next(1));
        s.finished(0, false);
        seen.extend(names(&p, &s.next(1)));
        s.finished(1, true);
        seen.extend(names(&p, &s.next(1)));
        assert_eq!(seen, ["start a", "start c", "skip b (a)"]);
    }

    #[test]
    fn selection_keeps_the_named_jobs_and_their_ancestors() {
        let p = pipeline(DIAMOND);
        let mut s = Schedule::new(&p, &[JobId::new("a").unwrap()], Source::Push).unwrap();
        assert_eq!(names(&p, &s.next(4)), ["start a"]);
        let unknown = Schedule::new(&p, &[JobId::new("nope").unwrap()], Source::Push).unwrap_err();
        assert_eq!(unknown.to_string(), "unknown job `nope` given to --job");
    }

    #[test]
    fn only_the_jobs_of_the_runs_source_take_part() {
        let p = pipeline(&[
            ("build", &["quire/push"]),
            ("nightly", &["quire/schedule"]),
            ("both", &["quire/push", "quire/schedule"]),
            ("report", &["nightly"]),
            ("needs-build", &["nightly", "build"]),
        ]);
        let mut pushed = Schedule::new(&p, &[], Source::Push).unwrap();
        assert_eq!(names(&p, &pushed.next(10)), ["start build", "start both"]);
        let mut scheduled = Schedule::new(&p, &[], Source::Schedule).unwrap();
        assert_eq!(names(&p, &scheduled.next(10)), ["start nightly", "start both"]);
        scheduled.finished(1, true);
        assert_eq!(
            names(&p, &scheduled.next(10)),
            ["start report"],
            "needs-build waits on a push-only job: not part"
        );
    }
}
