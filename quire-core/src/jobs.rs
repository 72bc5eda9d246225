//! The one fold from a run's events to its jobs and their commands. Ingest
//! stores its result as rows, the live view learns from it which logs to
//! follow, and the run page and the API show it while a run is active, so
//! every reader agrees on what the stream says. It reads events only: where
//! they come from and where the result goes is the caller's business.
//!
//! The rules, for a stream that may be cut short or mangled:
//! - jobs appear in the order of their first event (pipeline order);
//! - commands are numbered per job from 1, in `sh_started` order, which is
//!   also their log's number (`jobs/<id>/sh-<n>.log`);
//! - an `sh_finished` completes the job's oldest unfinished command; one
//!   with no open command is counted as an orphan;
//! - once the stream has ended ([`Fold::finish`]), a job that started and
//!   never finished, or that shows signs of running without a start, is
//!   `aborted`.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::event::{shown_command, DeclaredJob, Event, EventKind, JobOutcome, RunOutcome};
use crate::id::JobId;

/// Where a job is in its life (docs/CI-STATE.md, "Job states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Active,
    Complete,
    Failed,
    Skipped,
    /// Started and never finished: the executor stopped mid-job.
    Aborted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Active => "active",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
            JobState::Skipped => "skipped",
            JobState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "active" => JobState::Active,
            "complete" => JobState::Complete,
            "failed" => JobState::Failed,
            "skipped" => JobState::Skipped,
            "aborted" => JobState::Aborted,
            _ => return None,
        })
    }
}

/// One job of a run, with its commands in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub state: JobState,
    /// The exit code of the job's last finished command.
    pub exit_code: Option<i32>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub commands: Vec<CommandSummary>,
}

/// One `sh` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSummary {
    /// n of `jobs/<job-id>/sh-<n>.log`.
    pub seq: u32,
    pub cmd: String,
    pub exit_code: Option<i32>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl JobSummary {
    fn new(job_id: JobId) -> JobSummary {
        JobSummary {
            job_id,
            state: JobState::Pending,
            exit_code: None,
            started_at_ms: None,
            finished_at_ms: None,
            commands: Vec::new(),
        }
    }

    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at_ms? - self.started_at_ms?)
    }
}

impl CommandSummary {
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at_ms? - self.started_at_ms)
    }
}

/// What one event changed that a follower of the run's files cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The job's n-th command started: its log is `sh-<n>.log`.
    CommandStarted {
        job: JobId,
        seq: u32,
    },
    /// The job started: its `job.log` may appear.
    JobStarted {
        job: JobId,
    },
    Other,
}

/// The most commands a fold keeps for one run (and quire-ci's default
/// `--max-commands`): what a run costs whoever folds it is bounded, however
/// its stream was made. Commands past it are counted as orphans.
pub const MAX_COMMANDS: usize = 50_000;

/// The fold itself: feed it events in stream order.
#[derive(Debug, Default)]
pub struct Fold {
    jobs: Vec<JobSummary>,
    index: HashMap<JobId, usize>,
    /// Per job, indices into its `commands` that have not finished.
    open: HashMap<JobId, VecDeque<usize>>,
    orphans: usize,
    /// Set while the last known event is `run_finished`.
    run_finished: Option<RunOutcome>,
    /// The jobs the pipeline declared, from its `pipeline` event.
    declared: Vec<DeclaredJob>,
    /// Commands kept, over all jobs.
    commands: usize,
}

impl Fold {
    pub fn new() -> Fold {
        Fold::default()
    }

    pub fn apply(&mut self, event: &Event) -> Applied {
        if !matches!(event.kind, EventKind::Unknown) {
            self.run_finished = match event.kind {
                EventKind::RunFinished { outcome } => Some(outcome),
                _ => None,
            };
        }
        if let EventKind::Pipeline { jobs, .. } = &event.kind {
            self.declared = jobs.clone();
        }
        let Some(job_id) = event.job_id() else { return Applied::Other };
        let slot = match self.index.get(job_id) {
            Some(&slot) => slot,
            None => {
                self.index.insert(job_id.clone(), self.jobs.len());
                self.jobs.push(JobSummary::new(job_id.clone()));
                self.jobs.len() - 1
            }
        };
        let job = &mut self.jobs[slot];
        match &event.kind {
            EventKind::JobStarted { .. } => {
                job.started_at_ms = Some(event.at_ms);
                job.state = JobState::Active;
                return Applied::JobStarted { job: job_id.clone() };
            }
            EventKind::JobFinished { outcome, .. } => {
                job.state = match outcome {
                    JobOutcome::Complete => JobState::Complete,
                    JobOutcome::Failed => JobState::Failed,
                };
                job.finished_at_ms = Some(event.at_ms);
            }
            EventKind::JobSkipped { .. } => {
                job.state = JobState::Skipped;
                job.started_at_ms = None;
                job.finished_at_ms = Some(event.at_ms);
            }
            EventKind::ShStarted { cmd, .. } => {
                if self.commands >= MAX_COMMANDS {
                    self.orphans += 1;
                    return Applied::Other;
                }
                self.commands += 1;
                let seq = job.commands.len() as u32 + 1;
                self.open.entry(job_id.clone()).or_default().push_back(job.commands.len());
                job.commands.push(CommandSummary {
                    seq,
                    // Cut as quire-ci cuts it, whoever wrote the stream.
                    cmd: shown_command(cmd),
                    exit_code: None,
                    started_at_ms: event.at_ms,
                    finished_at_ms: None,
                });
                return Applied::CommandStarted { job: job_id.clone(), seq };
            }
            EventKind::ShFinished { exit_code, .. } => {
                job.exit_code = Some(*exit_code);
                match self.open.get_mut(job_id).and_then(VecDeque::pop_front) {
                    Some(at) => {
                        let command = &mut job.commands[at];
                        command.exit_code = Some(*exit_code);
                        command.finished_at_ms = Some(event.at_ms.max(command.started_at_ms));
                    }
                    None => self.orphans += 1,
                }
            }
            EventKind::RunFinished { .. } | EventKind::Pipeline { .. } | EventKind::Unknown => {}
        }
        Applied::Other
    }

    /// The jobs the pipeline declared (empty when its stream has no
    /// `pipeline` event).
    pub fn declared(&self) -> &[DeclaredJob] {
        &self.declared
    }

    /// The jobs so far, for a stream that is still growing.
    pub fn jobs(&self) -> &[JobSummary] {
        &self.jobs
    }

    /// `sh_finished` events that matched no started command.
    pub fn orphans(&self) -> usize {
        self.orphans
    }

    /// The outcome, if the stream's last known event is `run_finished`.
    pub fn run_finished(&self) -> Option<RunOutcome> {
        self.run_finished
    }

    /// The jobs of a stream that has ended (the executor exited): what is
    /// still running was cut off at `now_ms`.
    pub fn finish(self, now_ms: i64) -> Vec<JobSummary> {
        let mut jobs = self.jobs;
        for job in &mut jobs {
            match job.state {
                JobState::Active => {
                    job.state = JobState::Aborted;
                    job.finished_at_ms = Some(now_ms);
                }
                // Commands or a finish without a start: a mangled stream.
                // The job ran, so it is aborted, at its finish if it has one.
                JobState::Pending | JobState::Complete | JobState::Failed if job.started_at_ms.is_none() => {
                    let at = job.finished_at_ms.unwrap_or(now_ms);
                    job.started_at_ms = Some(at);
                    job.finished_at_ms = Some(at);
                    job.state = JobState::Aborted;
                }
                _ => {}
            }
            if let (Some(start), Some(finish)) = (job.started_at_ms, job.finished_at_ms) {
                job.finished_at_ms = Some(finish.max(start));
            }
        }
        jobs
    }
}

/// Folds a whole stream of events.
pub fn fold<'e>(events: impl IntoIterator<Item = &'e Event>) -> Fold {
    let mut fold = Fold::new();
    for event in events {
        fold.apply(event);
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fold_keeps_at_most_its_budget_of_commands_each_cut_short() {
        let job = JobId::new("j").unwrap();
        let mut fold = Fold::new();
        fold.apply(&Event::new(1, EventKind::JobStarted { job_id: job.clone() }));
        let long = "x".repeat(100_000);
        for _ in 0..MAX_COMMANDS + 3 {
            fold.apply(&Event::new(2, EventKind::ShStarted { job_id: job.clone(), cmd: long.clone() }));
        }
        assert_eq!(fold.jobs()[0].commands.len(), MAX_COMMANDS);
        assert_eq!(fold.orphans(), 3);
        assert!(fold.jobs()[0].commands[0].cmd.len() < 5_000, "a command line is kept cut");
    }

    fn job(id: &str) -> JobId {
        JobId::new(id).unwrap()
    }

    fn ev(at_ms: i64, kind: EventKind) -> Event {
        Event::new(at_ms, kind)
    }

    #[test]
    fn a_complete_stream_folds_to_jobs_and_numbered_commands() {
        let events = [
            ev(1, EventKind::JobStarted { job_id: job("a") }),
            ev(2, EventKind::ShStarted { job_id: job("a"), cmd: "one".into() }),
            ev(3, EventKind::ShFinished { job_id: job("a"), exit_code: 0 }),
            ev(4, EventKind::ShStarted { job_id: job("a"), cmd: "two".into() }),
            ev(5, EventKind::ShFinished { job_id: job("a"), exit_code: 2 }),
            ev(6, EventKind::JobFinished { job_id: job("a"), outcome: JobOutcome::Failed }),
            ev(7, EventKind::JobSkipped { job_id: job("b") }),
            ev(8, EventKind::RunFinished { outcome: RunOutcome::PipelineFailure }),
        ];
        let folded = fold(&events);
        assert_eq!(folded.run_finished(), Some(RunOutcome::PipelineFailure));
        assert_eq!(folded.orphans(), 0);
        let jobs = folded.finish(100);
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].state, jobs[0].exit_code, jobs[0].duration_ms()),
            (JobState::Failed, Some(2), Some(5))
        );
        let seqs: Vec<_> = jobs[0].commands.iter().map(|c| (c.seq, c.cmd.as_str(), c.exit_code)).collect();
        assert_eq!(seqs, [(1, "one", Some(0)), (2, "two", Some(2))]);
        assert_eq!(
            (jobs[1].state, jobs[1].started_at_ms, jobs[1].finished_at_ms),
            (JobState::Skipped, None, Some(7))
        );
    }

    #[test]
    fn a_cut_stream_aborts_what_was_running_only_once_it_has_ended() {
        let events = [
            ev(1, EventKind::JobStarted { job_id: job("a") }),
            ev(2, EventKind::ShStarted { job_id: job("a"), cmd: "sleep".into() }),
        ];
        let folded = fold(&events);
        assert_eq!(folded.jobs()[0].state, JobState::Active, "a live stream keeps the job active");
        assert_eq!(folded.run_finished(), None);
        let jobs = folded.finish(50);
        assert_eq!((jobs[0].state, jobs[0].finished_at_ms), (JobState::Aborted, Some(50)));
        assert_eq!(jobs[0].commands[0].exit_code, None);
    }

    #[test]
    fn finishes_without_a_start_are_orphans_and_mangled_jobs_abort() {
        let events = [
            ev(5, EventKind::ShFinished { job_id: job("x"), exit_code: 1 }),
            ev(6, EventKind::JobFinished { job_id: job("y"), outcome: JobOutcome::Complete }),
        ];
        let folded = fold(&events);
        assert_eq!(folded.orphans(), 1);
        let jobs = folded.finish(9);
        assert_eq!((jobs[0].state, jobs[0].started_at_ms), (JobState::Aborted, Some(9)));
        assert_eq!(
            (jobs[1].state, jobs[1].started_at_ms, jobs[1].finished_at_ms),
            (JobState::Aborted, Some(6), Some(6))
        );
    }

    #[test]
    fn unknown_events_do_not_hide_run_finished_but_later_known_ones_do() {
        let finished = ev(1, EventKind::RunFinished { outcome: RunOutcome::Success });
        assert_eq!(
            fold(&[finished.clone(), ev(2, EventKind::Unknown)]).run_finished(),
            Some(RunOutcome::Success)
        );
        let after = ev(2, EventKind::JobStarted { job_id: job("a") });
        assert_eq!(fold(&[finished, after]).run_finished(), None);
    }

    #[test]
    fn applying_tells_which_log_appeared() {
        let mut folded = Fold::new();
        assert_eq!(
            folded.apply(&ev(1, EventKind::JobStarted { job_id: job("a") })),
            Applied::JobStarted { job: job("a") }
        );
        let started = ev(2, EventKind::ShStarted { job_id: job("a"), cmd: "x".into() });
        assert_eq!(folded.apply(&started), Applied::CommandStarted { job: job("a"), seq: 1 });
        assert_eq!(folded.apply(&started), Applied::CommandStarted { job: job("a"), seq: 2 });
    }

    #[test]
    fn job_states_round_trip_through_their_names() {
        for state in [
            JobState::Pending,
            JobState::Active,
            JobState::Complete,
            JobState::Failed,
            JobState::Skipped,
            JobState::Aborted,
        ] {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("started"), None);
    }
}
