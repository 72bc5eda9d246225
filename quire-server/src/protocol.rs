//! The push socket's protocol (`<root>/server.sock`): the messages the
//! hook and the operator CLI send, the server's reply, and the blocking
//! client that sends one message and waits for its answer. One JSON line
//! in, one JSON line back. Listening is `socket`'s; acting on a message is
//! the launcher's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use quire_core::push::Trigger;
use serde::{Deserialize, Serialize};

/// Messages are small; anything longer is refused rather than buffered.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A sha of all zeros: git's "no commit" (a created or deleted ref).
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// A push: sent by the post-receive hook (and by `ci retrigger`, as
    /// `manual`).
    Push {
        repo: String,
        pushed_at_ms: i64,
        refs: Vec<RefUpdate>,
        #[serde(default, skip_serializing_if = "is_push")]
        trigger: Trigger,
    },
    /// `quire ci cancel`.
    Cancel { run_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefUpdate {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub old_sha: String,
    pub new_sha: String,
}

impl RefUpdate {
    pub fn is_deletion(&self) -> bool {
        is_zero_sha(&self.new_sha)
    }
}

pub fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// The server's answer: the runs a message created or touched (and how
/// many more it saved in the spool because the database could not take
/// them yet), or why it was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Ok {
        ok: bool,
        runs: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        spooled: usize,
    },
    Error {
        error: String,
    },
}

fn is_push(trigger: &Trigger) -> bool {
    *trigger == Trigger::Push
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the server did with a message it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub runs: Vec<String>,
    /// Runs saved in the spool, queued by the server shortly.
    pub spooled: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the quire server is not running (no answer on {path}): {source}")]
    NotRunning { path: String, source: std::io::Error },
    #[error("talking to the quire server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the quire server refused the message: {0}")]
    Refused(String),
    #[error("the quire server sent an unreadable answer: {0}")]
    BadReply(String),
}

/// Sends one message and waits for the answer.
pub fn send(socket: &Path, message: &Message) -> Result<Accepted, SendError> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|source| SendError::NotRunning { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let line = serde_json::to_string(message).expect("messages serialize");
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    match serde_json::from_str::<Reply>(&answer) {
        Ok(Reply::Ok { runs, spooled, .. }) => Ok(Accepted { runs, spooled }),
        Ok(Reply::Error { error }) => Err(SendError::Refused(error)),
        Err(e) => Err(SendError::BadReply(format!("{e}: {answer:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_messages_have_the_spec_shape() {
        let line = r#"{"type":"push","repo":"foo.git","pushed_at_ms":5,"refs":[{"ref":"refs/heads/main","old_sha":"a","new_sha":"b"}]}"#;
        let message: Message = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&message).unwrap(), line);
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            "",
            "{",
            r#"{"type":"push"}"#,
            r#"{"type":"nuke"}"#,
            r#"{"type":"cancel","run_id":"x","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<Message>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_round_trip() {
        let ok = Reply::Ok { ok: true, runs: vec!["r".into()], spooled: 0 };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":true,"runs":["r"]}"#);
        let spooled: Reply = serde_json::from_str(r#"{"ok":true,"runs":[],"spooled":2}"#).unwrap();
        assert_eq!(spooled, Reply::Ok { ok: true, runs: vec![], spooled: 2 });
        let err: Reply = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
        assert_eq!(err, Reply::Error { error: "no".into() });
    }

    #[test]
    fn deletions_are_all_zero_new_shas() {
        let update =
            RefUpdate { ref_name: "refs/heads/x".into(), old_sha: "a".repeat(40), new_sha: ZERO_SHA.into() };
        assert!(update.is_deletion());
        assert!(!is_zero_sha(""));
    }
}
