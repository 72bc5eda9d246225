//! The push socket's listener (`<root>/server.sock`, mode 0600): binds
//! the socket, reads one message per connection and maps it to the
//! launcher (a push queues runs, a cancel stops one), then writes the
//! reply. A push the database cannot take is saved in the spool, which the
//! launcher replays. The messages themselves are `protocol`'s.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use quire_core::id::{InvalidRepoName, InvalidRunId, RepoName, RunId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream as AsyncUnixStream};

use crate::launcher::{Launcher, QueueError};
use crate::protocol::{Message, Reply, MAX_MESSAGE};
use crate::runs::NewRun;
use crate::spool;

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
            Ok(message) => match dispatch(&launcher, message).await {
                Ok(done) => Reply::Ok {
                    ok: true,
                    runs: done.runs.iter().map(|r| r.to_string()).collect(),
                    spooled: done.spooled,
                },
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

/// What the launcher did with a message.
struct Dispatched {
    runs: Vec<RunId>,
    spooled: usize,
}

/// What a message asks of the launcher; the runs it created or touched, or
/// a message for the sender. A push the database cannot take (locked past
/// its busy timeout, disk full) goes to the spool, from which the launcher
/// queues it shortly: an accepted push is never lost.
async fn dispatch(launcher: &Launcher, message: Message) -> Result<Dispatched, String> {
    match message {
        Message::Push { repo, pushed_at_ms, refs, trigger } => {
            let repo: RepoName = repo.parse().map_err(|e: InvalidRepoName| e.to_string())?;
            let mut created = Vec::new();
            for (at, update) in refs.iter().enumerate() {
                let Some(new) = NewRun::from_update(&repo, pushed_at_ms, update, trigger) else { continue };
                let why = match launcher.queue(new).await {
                    Ok(id) => {
                        created.push(id);
                        continue;
                    }
                    Err(QueueError::Refused(why)) => return Err(why),
                    Err(QueueError::Unavailable(why)) => why,
                };
                let rest = Message::Push {
                    repo: repo.to_string(),
                    pushed_at_ms,
                    refs: refs[at..].to_vec(),
                    trigger,
                };
                let spooled = NewRun::from_push(&repo, pushed_at_ms, &refs[at..], trigger).len();
                let dir = launcher.spool_dir();
                tokio::task::spawn_blocking(move || spool::save(&dir, &rest, pushed_at_ms))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|saved| saved.map_err(|e| e.to_string()))
                    .map_err(|e| format!("{why}; and the spool failed too: {e}"))?;
                tracing::warn!(%repo, spooled, reason = %why, "the database could not take a push; saved in the spool");
                return Ok(Dispatched { runs: created, spooled });
            }
            Ok(Dispatched { runs: created, spooled: 0 })
        }
        Message::Cancel { run_id } => {
            let id: RunId = run_id.parse().map_err(|e: InvalidRunId| e.to_string())?;
            launcher.cancel(id).await?;
            Ok(Dispatched { runs: vec![id], spooled: 0 })
        }
    }
}
