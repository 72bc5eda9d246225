//! Jobs as the rest of the system sees them once a pipeline is valid: the
//! `JobId` newtype, a job's inputs, and where it was declared.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::diagnostic::Location;

/// The only source a pipeline can take as input.
pub const PUSH_SOURCE: &str = "quire/push";
/// Names under this prefix are reserved for sources.
pub const SOURCE_NAMESPACE: &str = "quire/";

/// A job's id: non-empty, `[A-Za-z0-9_-]+`. Safe to use as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id {0:?} may only contain letters, digits, `_` and `-`")]
pub struct InvalidJobId(pub String);

impl JobId {
    pub fn new(id: impl Into<String>) -> Result<JobId, InvalidJobId> {
        let id = id.into();
        let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(JobId(id))
        } else {
            Err(InvalidJobId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        JobId::new(id)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_accept_the_documented_set() {
        for ok in ["build", "a", "A-9_z", "0"] {
            assert!(JobId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "quire/push", "a b", "é", "a.b", "../x"] {
            assert!(JobId::new(bad).is_err(), "{bad}");
        }
    }
}
