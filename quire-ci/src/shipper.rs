//! Server mode's way back: a thread that watches the run's output
//! directory (events, command logs, quire-ci's own log) and sends what each
//! file grew by to the server (`quire_core::output`), at least every
//! [`HEARTBEAT_EVERY`] even when nothing changed. Batches go one at a time,
//! in order, and are retried until the server takes them; the offsets in
//! each chunk let the server drop what it already has. When the server
//! answers that the run is to stop, the shipper stops the commands, sends
//! what is left and ends quire-ci; a SIGTERM (the launcher ending the
//! executor) does the same. What the run writes is the runtime's; how a
//! request travels is `server`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quire_core::output::{Batch, Chunk, OutputFile, MAX_BATCH_BYTES, MAX_HEARTBEAT_GAP_SECS};

use crate::server::{SendError, Server};

/// How often the directory is looked at: what a live view lags by.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The longest silence towards the server (well inside
/// [`MAX_HEARTBEAT_GAP_SECS`]), so that a cancel reaches the run within
/// about a second.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long the server may stay unreachable before the run is given up
/// (the server has long given up on it by then).
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// The longest wait between two attempts to reach the server.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Set while a shipper runs: a stop signal is then its to act on.
static SHIPPING: AtomicBool = AtomicBool::new(false);
/// The stop signal received, if any.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// Called by the signal handler (after it stopped the commands): when a
/// shipper runs, it sends what is left and ends quire-ci itself, and this
/// returns true; the handler is then to wait for it.
pub fn take_over_signal(signal: i32) -> bool {
    SIGNALLED.store(signal, Ordering::SeqCst);
    SHIPPING.load(Ordering::SeqCst)
}

pub struct Shipper {
    finishing: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Shipper {
    /// Starts shipping `out_dir` (the run's directory of this executor).
    /// `workspace` is removed when the run is stopped, before the rest of
    /// the output goes: a full disk is most likely full of it.
    pub fn start(server: Arc<Server>, out_dir: PathBuf, workspace: PathBuf) -> Shipper {
        debug_assert!(HEARTBEAT_EVERY < Duration::from_secs(MAX_HEARTBEAT_GAP_SECS));
        SHIPPING.store(true, Ordering::SeqCst);
        let finishing = Arc::new(AtomicBool::new(false));
        let flag = finishing.clone();
        let thread = std::thread::Builder::new()
            .name("shipper".into())
            .spawn(move || Shipping::new(server, out_dir, workspace).run(&flag))
            .expect("a thread can be started");
        Shipper { finishing, thread }
    }

    /// Sends whatever is left and returns once the server has it all (or
    /// gave up on it).
    pub fn finish(self) {
        self.finishing.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

struct Shipping {
    server: Arc<Server>,
    dir: PathBuf,
    workspace: PathBuf,
    /// Bytes of each file the server holds.
    shipped: BTreeMap<OutputFile, u64>,
    /// Files the server refused for good; not sent again.
    refused: BTreeSet<OutputFile>,
    last_contact: Instant,
    stop_heard: bool,
}

/// How one attempt to send went.
enum Sent {
    Nothing,
    Some { full: bool },
    Failed,
}

impl Shipping {
    fn new(server: Arc<Server>, dir: PathBuf, workspace: PathBuf) -> Shipping {
        Shipping {
            server,
            dir,
            workspace,
            shipped: BTreeMap::new(),
            refused: BTreeSet::new(),
            last_contact: Instant::now(),
            stop_heard: false,
        }
    }

    fn run(mut self, finishing: &AtomicBool) {
        let mut failing_since: Option<Instant> = None;
        let mut backoff = LOOK_EVERY;
        loop {
            match SIGNALLED.load(Ordering::SeqCst) {
                0 => {}
                signal => self.stop(&format!("signal {signal}"), 128 + signal),
            }
            // Read before the flag: a file written before `finish` was
            // called is then seen by the last round.
            let last_round = finishing.load(Ordering::SeqCst);
            match self.send_once() {
                Sent::Failed => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > GIVE_UP_AFTER {
                        eprintln!(
                            "quire-ci: error: the server has been unreachable for {} s; giving up the run",
                            GIVE_UP_AFTER.as_secs()
                        );
                        quire_core::runtime::stop_everything();
                        std::process::exit(crate::exit::FAILED.into());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Sent::Some { full: true } => {
                    failing_since = None;
                    backoff = LOOK_EVERY;
                    continue;
                }
                Sent::Some { full: false } => {
                    failing_since = None;
                    backoff = LOOK_EVERY;
                }
                Sent::Nothing if last_round => return,
                Sent::Nothing => {}
            }
            if !finishing.load(Ordering::SeqCst) {
                std::thread::sleep(LOOK_EVERY);
            }
        }
    }

    /// Sends one batch of what is new, or a heartbeat when it is time.
    fn send_once(&mut self) -> Sent {
        let batch = self.collect();
        if batch.chunks.is_empty() && self.last_contact.elapsed() < HEARTBEAT_EVERY {
            return Sent::Nothing;
        }
        let full = batch.chunks.iter().map(|c| c.data.len()).sum::<usize>() >= MAX_BATCH_BYTES;
        let answer =
            if batch.chunks.is_empty() { self.server.heartbeat() } else { self.server.send_output(&batch) };
        match answer {
            Ok(reply) => {
                self.last_contact = Instant::now();
                for chunk in &batch.chunks {
                    self.shipped.insert(chunk.file.clone(), chunk.end());
                }
                if let Some(why) = reply.cancel {
                    self.stop(&format!("{why:?}"), crate::exit::OUTCOME.into());
                }
                if batch.chunks.is_empty() {
                    Sent::Nothing
                } else {
                    Sent::Some { full }
                }
            }
            Err(SendError::Stopped(why)) => {
                self.stop(&format!("{why:?}"), crate::exit::OUTCOME.into());
                Sent::Failed
            }
            Err(SendError::Behind { file, have }) => {
                if let Ok(file) = OutputFile::parse(&file) {
                    self.shipped.insert(file, have);
                }
                Sent::Some { full: true }
            }
            Err(SendError::Refused { status: 401, message, .. }) => {
                // The run is over for the server (canceled before it began,
                // or already recorded): nothing more to do or send.
                eprintln!("quire-ci: the server no longer takes this run's output ({message}); stopping");
                quire_core::runtime::stop_everything();
                std::process::exit(crate::exit::FAILED.into());
            }
            Err(SendError::Refused { file: Some(file), message, .. }) => {
                eprintln!(
                    "quire-ci: warning: the server refused {file}: {message}; the rest of it is not sent"
                );
                if let Ok(file) = OutputFile::parse(&file) {
                    self.refused.insert(file);
                }
                Sent::Some { full: true }
            }
            Err(SendError::Refused { status, message, .. }) => {
                eprintln!("quire-ci: warning: the server refused a batch ({status}): {message}");
                Sent::Failed
            }
            Err(SendError::Transient(reason)) => {
                if self.last_contact.elapsed() > HEARTBEAT_EVERY * 5 {
                    eprintln!("quire-ci: warning: cannot reach the server ({reason}); retrying");
                }
                Sent::Failed
            }
        }
    }

    /// The run is to stop (the server said so, or a signal came): the
    /// commands go, then the workspace, what they wrote is sent (for at
    /// most a few seconds), and quire-ci exits with `status`; the server
    /// records why the run ended.
    fn stop(&mut self, why: &str, status: i32) {
        if std::mem::replace(&mut self.stop_heard, true) {
            return;
        }
        eprintln!("quire-ci: the run is stopped ({why}); stopping its commands");
        quire_core::runtime::stop_everything();
        if let Err(e) = std::fs::remove_dir_all(&self.workspace) {
            eprintln!("quire-ci: warning: cannot remove the workspace: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.send_once() {
                Sent::Nothing => break,
                Sent::Failed => std::thread::sleep(LOOK_EVERY),
                Sent::Some { .. } => {}
            }
        }
        std::process::exit(status);
    }

    /// What each file grew by, in one batch of at most [`MAX_BATCH_BYTES`].
    /// Events go first, so that a live view sees a command start before
    /// its output.
    fn collect(&self) -> Batch {
        let mut chunks = Vec::new();
        let mut budget = MAX_BATCH_BYTES;
        for (file, path) in output_files(&self.dir) {
            if budget == 0 {
                break;
            }
            if self.refused.contains(&file) {
                continue;
            }
            let from = self.shipped.get(&file).copied().unwrap_or(0);
            match read_from(&path, from, budget) {
                Ok(data) if !data.is_empty() => {
                    budget -= data.len();
                    chunks.push(Chunk { file, offset: from, data });
                }
                _ => {}
            }
        }
        Batch { chunks }
    }
}

/// The files of an output directory the server takes, events first.
fn output_files(dir: &Path) -> Vec<(OutputFile, PathBuf)> {
    let mut files = vec![
        (OutputFile::Events, dir.join("events.jsonl")),
        (OutputFile::ExecutorLog, dir.join("quire-ci.log")),
    ];
    let Ok(jobs) = std::fs::read_dir(dir.join("jobs")) else { return files };
    for job in jobs.flatten() {
        let Ok(logs) = std::fs::read_dir(job.path()) else { continue };
        for log in logs.flatten() {
            let path = log.path();
            if let Some(file) = OutputFile::of_path(dir, &path) {
                files.push((file, path));
            }
        }
    }
    files[2..].sort();
    files
}

/// Up to `limit` bytes of `path` from `offset`.
fn read_from(path: &Path, offset: u64, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::new();
    file.take(limit as u64).read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_directory_lists_events_first_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/b")).unwrap();
        std::fs::write(dir.path().join("jobs/b/sh-2.log"), "x").unwrap();
        std::fs::write(dir.path().join("jobs/b/sh-1.log"), "x").unwrap();
        std::fs::write(dir.path().join("jobs/b/notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("stray"), "x").unwrap();
        let names: Vec<String> = output_files(dir.path()).iter().map(|(f, _)| f.wire_name()).collect();
        assert_eq!(names, ["events.jsonl", "quire-ci.log", "jobs/b/sh-1.log", "jobs/b/sh-2.log"]);
    }

    #[test]
    fn a_read_takes_at_most_the_budget_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_from(&path, 3, 4).unwrap(), b"3456");
        assert_eq!(read_from(&path, 10, 4).unwrap(), b"");
    }
}
