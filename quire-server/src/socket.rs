//! The push-event socket (`<root>/server.sock`, mode 0600): the message
//! types the hook and the operator CLI send, the blocking client they use,
//! and the server's listener, which hands each message to the launcher.
//! One JSON line in, one JSON line back.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream as AsyncUnixStream};

use crate::launcher::Launcher;

/// Messages are small; anything longer is refused rather than buffered.
const MAX_MESSAGE: usize = 1024 * 1024;

/// A sha of all zeros: git's "no commit" (a created or deleted ref).
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// A push: sent by the post-receive hook (and by `ci retrigger`).
    Push { repo: String, pushed_at_ms: i64, refs: Vec<RefUpdate> },
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

/// The server's answer: the runs a message created or touched, or why it
/// was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Ok { ok: bool, runs: Vec<String> },
    Error { error: String },
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
pub fn send(socket: &Path, message: &Message) -> Result<Vec<String>, SendError> {
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
        Ok(Reply::Ok { runs, .. }) => Ok(runs),
        Ok(Reply::Error { error }) => Err(SendError::Refused(error)),
        Err(e) => Err(SendError::BadReply(format!("{e}: {answer:?}"))),
    }
}

/// Binds the socket, refusing to steal it from a live server and replacing
/// a stale file left by a dead one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another quire server is already listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the server stops.
pub async fn serve(listener: UnixListener, launcher: Launcher) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let launcher = launcher.clone();
                tokio::spawn(async move { handle(stream, launcher).await });
            }
            Err(e) => {
                tracing::error!(error = %e, "accepting on the push socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: AsyncUnixStream, launcher: Launcher) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read.take(MAX_MESSAGE as u64 + 1)).lines();
    let reply = match lines.next_line().await {
        Ok(Some(line)) if line.len() <= MAX_MESSAGE => match serde_json::from_str::<Message>(&line) {
            Ok(message) => match launcher.handle(message).await {
                Ok(runs) => Reply::Ok { ok: true, runs: runs.iter().map(|r| r.to_string()).collect() },
                Err(error) => Reply::Error { error },
            },
            Err(e) => {
                tracing::warn!(error = %e, "malformed message on the push socket");
                Reply::Error { error: format!("malformed message: {e}") }
            }
        },
        Ok(Some(_)) => Reply::Error { error: format!("message longer than {MAX_MESSAGE} bytes") },
        Ok(None) => return,
        Err(e) => Reply::Error { error: format!("unreadable message: {e}") },
    };
    let mut line = serde_json::to_string(&reply).expect("replies serialize");
    line.push('\n');
    let _ = write.write_all(line.as_bytes()).await;
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
        let ok = Reply::Ok { ok: true, runs: vec!["r".into()] };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":true,"runs":["r"]}"#);
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
