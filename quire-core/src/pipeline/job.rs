//! Jobs as the rest of the system sees them once a pipeline is valid: a
//! job's inputs (sources or other jobs) and where it was declared. The id
//! type itself is `crate::id::JobId`.

use crate::diagnostic::Location;
use crate::id::JobId;

/// The only source a pipeline can take as input.
pub const PUSH_SOURCE: &str = "quire/push";
/// Names under this prefix are reserved for sources.
pub const SOURCE_NAMESPACE: &str = "quire/";

/// What a job takes as input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// The push that triggered the run (`:quire/push`).
    Push,
    /// Another job of the pipeline.
    Job(JobId),
}

/// A validated job, minus its run-fn (which lives in the execute VM).
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub inputs: Vec<Input>,
    /// Where its `ci.job` call is.
    pub location: Location,
}
