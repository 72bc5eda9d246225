//! Jobs as the rest of the system sees them once a pipeline is valid: a
//! job's inputs (sources or other jobs) and where it was declared. The id
//! type itself is `crate::id::JobId`.

use crate::diagnostic::Location;
use crate::id::JobId;

/// The source of push-triggered (and manually retriggered) runs.
pub const PUSH_SOURCE: &str = "quire/push";
/// The source of runs started by a schedule in the server's config.
pub const SCHEDULE_SOURCE: &str = "quire/schedule";
/// Every source a pipeline can take as input.
pub const SOURCES: [&str; 2] = [PUSH_SOURCE, SCHEDULE_SOURCE];
/// Names under this prefix are reserved for sources.
pub const SOURCE_NAMESPACE: &str = "quire/";

/// What a job takes as input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// The push that triggered the run (`:quire/push`).
    Push,
    /// The schedule that triggered the run (`:quire/schedule`).
    Schedule,
    /// Another job of the pipeline.
    Job(JobId),
}

impl Input {
    /// The source this input names, if it is one.
    pub fn source(&self) -> Option<Source> {
        match self {
            Input::Push => Some(Source::Push),
            Input::Schedule => Some(Source::Schedule),
            Input::Job(_) => None,
        }
    }
}

/// What started a run, as its jobs see it: the source whose dependents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Source {
    /// A push, or a manual retrigger (which behaves like one).
    #[default]
    Push,
    Schedule,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Push => PUSH_SOURCE,
            Source::Schedule => SCHEDULE_SOURCE,
        }
    }
}

/// A validated job, minus its run-fn (which lives in the execute VM).
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub inputs: Vec<Input>,
    /// Where its `ci.job` call is.
    pub location: Location,
}
