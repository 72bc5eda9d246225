//! The event stream's wire schema: the JSON lines `quire-ci` writes and the
//! server ingests (SPEC §5.1). This is the single definition both binaries
//! use; it owns serialization and decoding of one line, not where lines are
//! written to (`quire-ci`) or how they are stored (`quire`).

use serde::{Deserialize, Serialize};

use crate::id::JobId;

/// One line of the stream: when it happened and what happened.
///
/// Serializes as `{"at_ms":…,"type":…,…}` with the fields in the order the
/// spec shows, which is why `kind` is flattened after `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The producer's wall clock, Unix milliseconds.
    pub at_ms: i64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Unknown `type`s decode as [`EventKind::Unknown`] so that an
/// older consumer skips events a newer producer added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    JobStarted {
        job_id: JobId,
    },
    ShStarted {
        job_id: JobId,
        cmd: String,
    },
    ShFinished {
        job_id: JobId,
        exit_code: i32,
    },
    JobFinished {
        job_id: JobId,
        outcome: JobOutcome,
    },
    JobSkipped {
        job_id: JobId,
    },
    RunFinished {
        outcome: RunOutcome,
    },
    /// The pipeline's jobs and their inputs, in declaration order, before
    /// any job starts: what the server draws the job graph from. Written
    /// in server runs only (a Quire addition to SPEC §5.1; readers skip
    /// types they do not know). Bounded: once the line would pass
    /// [`MAX_DECLARED_BYTES`] the remaining jobs are left out and
    /// `truncated` is set.
    Pipeline {
        jobs: Vec<DeclaredJob>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// An event type this build does not know. Never produced.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// A job as declared: its id and its inputs (job ids and sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredJob {
    pub job_id: JobId,
    pub inputs: Vec<String>,
}

/// The most a `pipeline` event's jobs take, well under every reader's
/// line limit.
pub const MAX_DECLARED_BYTES: usize = 128 * 1024;

impl EventKind {
    /// The `pipeline` event for these jobs, cut at [`MAX_DECLARED_BYTES`].
    pub fn pipeline(jobs: impl IntoIterator<Item = DeclaredJob>) -> EventKind {
        let mut kept = Vec::new();
        let mut size = 0;
        for job in jobs {
            size += job.job_id.as_str().len() + job.inputs.iter().map(|i| i.len() + 3).sum::<usize>() + 24;
            if size > MAX_DECLARED_BYTES {
                return EventKind::Pipeline { jobs: kept, truncated: true };
            }
            kept.push(job);
        }
        EventKind::Pipeline { jobs: kept, truncated: false }
    }
}

/// The longest command line (or printed line) the stream carries.
pub const SHOWN_COMMAND: usize = 4096;

/// `command`, cut at [`SHOWN_COMMAND`] bytes (on a character boundary)
/// with a note of its full length: what events and messages show of it.
pub fn shown_command(command: &str) -> String {
    if command.len() <= SHOWN_COMMAND {
        return command.to_string();
    }
    let mut cut = SHOWN_COMMAND;
    while !command.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &command[..cut], command.len())
}

/// How a job that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Complete,
    Failed,
}

/// How the run as a whole ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Success,
    PipelineFailure,
}

/// Why a line of the stream could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed event line: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl Event {
    pub fn new(at_ms: i64, kind: EventKind) -> Self {
        Event { at_ms, kind }
    }

    /// The event as one JSON line, without the trailing newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events contain only strings and integers")
    }

    /// Decodes one line (with or without its trailing newline).
    pub fn from_line(line: &str) -> Result<Event, DecodeError> {
        Ok(serde_json::from_str(line.trim_end())?)
    }

    /// The job this event belongs to, if any.
    pub fn job_id(&self) -> Option<&JobId> {
        match &self.kind {
            EventKind::JobStarted { job_id }
            | EventKind::ShStarted { job_id, .. }
            | EventKind::ShFinished { job_id, .. }
            | EventKind::JobFinished { job_id, .. }
            | EventKind::JobSkipped { job_id } => Some(job_id),
            EventKind::RunFinished { .. } | EventKind::Pipeline { .. } | EventKind::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_event_lists_jobs_and_is_bounded() {
        let job = |id: &str, inputs: &[&str]| DeclaredJob {
            job_id: JobId::new(id).unwrap(),
            inputs: inputs.iter().map(|i| i.to_string()).collect(),
        };
        let event = Event::new(1, EventKind::pipeline([job("a", &["quire/push"]), job("b", &["a"])]));
        assert_eq!(
            event.to_line(),
            r#"{"at_ms":1,"type":"pipeline","jobs":[{"job_id":"a","inputs":["quire/push"]},{"job_id":"b","inputs":["a"]}]}"#
        );
        assert_eq!(Event::from_line(&event.to_line()).unwrap(), event);
        let many = (0..100_000).map(|i| job(&format!("job-{i}"), &["quire/push"]));
        let big = Event::new(1, EventKind::pipeline(many));
        assert!(big.to_line().len() < 2 * MAX_DECLARED_BYTES);
        assert!(matches!(big.kind, EventKind::Pipeline { truncated: true, .. }));
    }

    fn job(id: &str) -> JobId {
        JobId::new(id).unwrap()
    }

    /// The exact lines of SPEC §5.1, with the values they carry.
    fn spec_lines() -> Vec<(&'static str, Event)> {
        use EventKind::*;
        vec![
            (
                r#"{"at_ms":100,"type":"job_started","job_id":"build"}"#,
                Event::new(100, JobStarted { job_id: job("build") }),
            ),
            (
                r#"{"at_ms":110,"type":"sh_started","job_id":"build","cmd":"echo hi"}"#,
                Event::new(110, ShStarted { job_id: job("build"), cmd: "echo hi".into() }),
            ),
            (
                r#"{"at_ms":190,"type":"sh_finished","job_id":"build","exit_code":0}"#,
                Event::new(190, ShFinished { job_id: job("build"), exit_code: 0 }),
            ),
            (
                r#"{"at_ms":200,"type":"job_finished","job_id":"build","outcome":"complete"}"#,
                Event::new(200, JobFinished { job_id: job("build"), outcome: JobOutcome::Complete }),
            ),
            (
                r#"{"at_ms":210,"type":"job_started","job_id":"test"}"#,
                Event::new(210, JobStarted { job_id: job("test") }),
            ),
            (
                r#"{"at_ms":220,"type":"job_finished","job_id":"test","outcome":"failed"}"#,
                Event::new(220, JobFinished { job_id: job("test"), outcome: JobOutcome::Failed }),
            ),
            (
                r#"{"at_ms":225,"type":"job_skipped","job_id":"deploy"}"#,
                Event::new(225, JobSkipped { job_id: job("deploy") }),
            ),
            (
                r#"{"at_ms":230,"type":"run_finished","outcome":"success"}"#,
                Event::new(230, RunFinished { outcome: RunOutcome::Success }),
            ),
            (
                r#"{"at_ms":231,"type":"run_finished","outcome":"pipeline_failure"}"#,
                Event::new(231, RunFinished { outcome: RunOutcome::PipelineFailure }),
            ),
        ]
    }

    #[test]
    fn serializes_exactly_as_the_spec_shows() {
        for (line, event) in spec_lines() {
            assert_eq!(event.to_line(), line);
        }
    }

    #[test]
    fn decodes_the_spec_lines_back() {
        for (line, event) in spec_lines() {
            assert_eq!(Event::from_line(line).unwrap(), event);
            assert_eq!(Event::from_line(&format!("{line}\n")).unwrap(), event);
        }
    }

    #[test]
    fn signal_exit_codes_round_trip() {
        let event = Event::new(5, EventKind::ShFinished { job_id: job("a"), exit_code: 137 });
        assert_eq!(Event::from_line(&event.to_line()).unwrap(), event);
    }

    #[test]
    fn unknown_type_decodes_as_unknown() {
        let event = Event::from_line(r#"{"at_ms":1,"type":"artifact_uploaded","path":"x"}"#).unwrap();
        assert_eq!(event, Event::new(1, EventKind::Unknown));
        assert_eq!(event.job_id(), None);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "",
            "{",
            r#"{"at_ms":1,"type":"job_started","#,
            r#"{"at_ms":1,"type":"job_started"}"#,
            r#"{"at_ms":1,"type":"job_started","job_id":"a/b"}"#,
            r#"{"at_ms":"x","type":"run_finished","outcome":"success"}"#,
            r#"{"at_ms":1,"type":"run_finished","outcome":"great"}"#,
        ] {
            assert!(Event::from_line(line).is_err(), "{line:?} should not decode");
        }
    }
}
