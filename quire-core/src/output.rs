//! The executor's output on its way to the server (SPEC §11, "Runs beyond
//! one machine"): which files of a run directory an executor may send,
//! the batch it sends them in, and the server's answer. A server-mode
//! `quire-ci` writes its events and logs into a directory of its own and
//! ships what each file grew by since the last batch; the server appends
//! the bytes to the same file of the run's directory, of which it is the
//! single writer.
//!
//! Every chunk names the byte offset it starts at, which is what makes a
//! batch idempotent and ordered: bytes the server already holds are not
//! written again, and a chunk that starts past the end of what the server
//! holds is refused. Sending, retrying and writing are the business of
//! `quire-ci` and the server; this module only says what travels.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::id::JobId;
use crate::run_dir::{LogFile, RunDir};

/// The environment of a server-mode executor: where the server is…
pub const SERVER_URL_VARIABLE: &str = "QUIRE__SERVER_URL";
/// …and the run token it authenticates with.
pub const RUN_TOKEN_VARIABLE: &str = "QUIRE__RUN_TOKEN";
/// Set by launchers whose executors share the server's machine (and pid
/// namespace): the server's pid, which the executor ends with.
pub const SERVER_PID_VARIABLE: &str = "QUIRE__SERVER_PID";

/// `GET`: the commit as a tar stream.
pub const WORKSPACE_PATH: &str = "/api/run/workspace";
/// `POST` a [`Batch`]; answered with a [`Reply`].
pub const OUTPUT_PATH: &str = "/api/run/output";
/// `POST` with no body; answered with a [`Reply`].
pub const HEARTBEAT_PATH: &str = "/api/run/heartbeat";

/// The most an executor sends between two contacts with the server: a
/// server that has heard nothing for longer may think it gone.
pub const MAX_HEARTBEAT_GAP_SECS: u64 = 5;

/// Raw bytes an executor puts into one batch, so that one request stays
/// small and the live view keeps up.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One file of a run directory that an executor produces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputFile {
    /// `events.jsonl`
    Events,
    /// `quire-ci.log`: the executor's own progress and diagnostics.
    ExecutorLog,
    /// `jobs/<job-id>/sh-<n>.log` or `jobs/<job-id>/job.log`.
    Log(JobId, LogFile),
}

/// A file name an executor may not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a file of a run directory; expected events.jsonl, quire-ci.log, \
     jobs/<job-id>/sh-<n>.log or jobs/<job-id>/job.log"
)]
pub struct UnknownOutputFile(pub String);

impl OutputFile {
    /// Its path relative to the run directory, as sent on the wire.
    pub fn wire_name(&self) -> String {
        match self {
            OutputFile::Events => "events.jsonl".to_string(),
            OutputFile::ExecutorLog => "quire-ci.log".to_string(),
            OutputFile::Log(job, file) => format!("jobs/{job}/{file}"),
        }
    }

    /// Its path in `dir`.
    pub fn path_in(&self, dir: &RunDir) -> PathBuf {
        match self {
            OutputFile::Events => dir.events(),
            OutputFile::ExecutorLog => dir.executor_log(),
            OutputFile::Log(job, file) => dir.log(job, *file),
        }
    }

    /// The file a path relative to a run directory names, if an executor
    /// may produce it. Anything else — `..`, absolute paths, a workspace
    /// path, `sh-0.log`, `sh-01.log` — is refused.
    pub fn parse(name: &str) -> Result<OutputFile, UnknownOutputFile> {
        let unknown = || UnknownOutputFile(name.chars().take(200).collect());
        match name {
            "events.jsonl" => return Ok(OutputFile::Events),
            "quire-ci.log" => return Ok(OutputFile::ExecutorLog),
            _ => {}
        }
        let mut parts = name.split('/');
        let (Some("jobs"), Some(job), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        let job = JobId::new(job).map_err(|_| unknown())?;
        let file = match file {
            "job.log" => LogFile::Job,
            other => {
                let n = other
                    .strip_prefix("sh-")
                    .and_then(|rest| rest.strip_suffix(".log"))
                    .ok_or_else(unknown)?;
                // One spelling per file: no sign, no leading zero.
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(unknown());
                }
                LogFile::Command(n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(unknown)?)
            }
        };
        Ok(OutputFile::Log(job, file))
    }

    /// The file `path` (inside `dir`) is, if it is one.
    pub fn of_path(dir: &Path, path: &Path) -> Option<OutputFile> {
        let relative = path.strip_prefix(dir).ok()?.to_str()?;
        OutputFile::parse(relative).ok()
    }
}

impl fmt::Display for OutputFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.wire_name())
    }
}

impl Serialize for OutputFile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.wire_name())
    }
}

impl<'de> Deserialize<'de> for OutputFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        OutputFile::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// Bytes of one file, starting at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub file: OutputFile,
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl Chunk {
    /// The offset just past this chunk.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }
}

/// What an executor sends in one `POST /api/run/output`: chunks in the
/// order they are to be written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub chunks: Vec<Chunk>,
}

/// Why the server wants the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Canceled,
    Superseded,
    Timeout,
    /// The server gave up on the executor (it was silent too long).
    Abandoned,
    /// The server cannot store the run's output (its disk is full).
    Unrecordable,
}

/// The server's answer to a batch or a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Set once the run is to stop: the executor stops its commands, sends
    /// what it has and exits.
    pub cancel: Option<StopReason>,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("data is not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_of_a_run_directory_parse() {
        assert_eq!(OutputFile::parse("events.jsonl"), Ok(OutputFile::Events));
        assert_eq!(OutputFile::parse("quire-ci.log"), Ok(OutputFile::ExecutorLog));
        let build = JobId::new("build").unwrap();
        assert_eq!(
            OutputFile::parse("jobs/build/sh-12.log"),
            Ok(OutputFile::Log(build.clone(), LogFile::Command(12)))
        );
        assert_eq!(OutputFile::parse("jobs/build/job.log"), Ok(OutputFile::Log(build, LogFile::Job)));
        for bad in [
            "",
            "/etc/passwd",
            "../events.jsonl",
            "jobs/../events.jsonl",
            "jobs/build/../../x",
            "jobs/build/sh-0.log",
            "jobs/build/sh-01.log",
            "jobs/build/sh-+1.log",
            "jobs/build/sh-99999999999.log",
            "jobs/build/sh-1.log/x",
            "jobs/build",
            "workspace/a",
            "jobs/a\0b/sh-1.log",
            "jobs//sh-1.log",
            "events.jsonl/",
        ] {
            assert!(OutputFile::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn names_round_trip_through_the_wire_and_the_run_directory() {
        let dir = RunDir::new("/r");
        for name in ["events.jsonl", "quire-ci.log", "jobs/b/sh-3.log", "jobs/b/job.log"] {
            let file = OutputFile::parse(name).unwrap();
            assert_eq!(file.wire_name(), name);
            assert_eq!(OutputFile::of_path(dir.path(), &file.path_in(&dir)), Some(file));
        }
    }

    #[test]
    fn a_batch_carries_bytes_that_are_not_text() {
        let batch =
            Batch { chunks: vec![Chunk { file: OutputFile::Events, offset: 7, data: vec![0, 255, b'\n'] }] };
        let json = serde_json::to_string(&batch).unwrap();
        assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
        assert!(serde_json::from_str::<Batch>(r#"{"chunks":[{"file":"x","offset":0,"data":""}]}"#).is_err());
        assert!(serde_json::from_str::<Batch>(
            r#"{"chunks":[{"file":"events.jsonl","offset":0,"data":"%%"}]}"#
        )
        .is_err());
    }
}
