//! The executors the server is following, in memory: for each run with a
//! launched executor, when it was last heard from
//! over HTTP, and whether it has been told to stop. The runner
//! (`launcher`) adds and removes entries and decides what silence means;
//! the run endpoints (`executor_api`) record contact and carry the stop
//! request back in their answer. Nothing here touches the database or
//! starts a process: the workspace archive the runner may start with an
//! executor is only held here until the executor asks for it (dropping it
//! kills it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quire_core::id::RunId;
use quire_core::output::StopReason;

use crate::run_output::FileTally;

#[derive(Default)]
pub struct Executors {
    followed: Mutex<HashMap<RunId, Followed>>,
}

struct Followed {
    last_heard: Instant,
    /// Why and since when the run is to stop.
    stop: Option<(StopReason, Instant)>,
    /// What the run's quire-ci.log is to say about why the server gave up.
    note: Option<String>,
    /// Held while a batch of the run's output is written, so that a batch
    /// sent again before the first attempt finished waits for it; it holds
    /// the tally of the run's files.
    writing: Arc<Mutex<FileTally>>,
    /// The run's `git archive`, started ahead of the executor's request.
    archive: Option<tokio::process::Child>,
    /// Shared by the run's workspace downloads under way (the count is
    /// its other holders).
    streams: Arc<()>,
    /// How many downloads of the workspace the run has started.
    downloads: usize,
}

/// How many downloads of one run's workspace may be under way at once:
/// its executor needs one, and a second covers a retry made before the
/// server noticed the first one's connection gone. Each is a `git archive`
/// process, so a token holder cannot have the server start them by the
/// thousand.
pub const WORKSPACE_STREAMS: usize = 2;

/// How many downloads of its workspace a run may start in all: its
/// executor needs one; the rest are for retries. Each makes the server
/// archive the whole commit.
pub const WORKSPACE_DOWNLOADS: usize = 8;

/// Why a download of a run's workspace cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadRefused {
    /// The server follows no executor of the run.
    NotFollowed,
    /// [`WORKSPACE_STREAMS`] are under way.
    UnderWay,
    /// The run has started [`WORKSPACE_DOWNLOADS`] already.
    Exhausted,
}

/// One download of a run's workspace under way; it ends with this.
pub struct WorkspaceStream {
    _counted: Arc<()>,
}

impl Executors {
    fn lock(&self) -> MutexGuard<'_, HashMap<RunId, Followed>> {
        self.followed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts following a run whose executor is about to be launched.
    pub fn follow(&self, id: RunId) {
        self.lock().insert(
            id,
            Followed {
                last_heard: Instant::now(),
                stop: None,
                note: None,
                writing: Arc::default(),
                archive: None,
                streams: Arc::default(),
                downloads: 0,
            },
        );
    }

    pub fn forget(&self, id: RunId) {
        self.lock().remove(&id);
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// The executor got in touch: the stop request it is to act on, if any.
    /// `None` for a run that is not followed.
    pub fn heard_from(&self, id: RunId) -> Option<Option<StopReason>> {
        let mut followed = self.lock();
        let run = followed.get_mut(&id)?;
        run.last_heard = Instant::now();
        Some(run.stop.map(|(why, _)| why))
    }

    /// The executor cannot have been heard from yet (its job waits in the
    /// scheduler's queue): silence so far does not count.
    pub fn excuse_silence(&self, id: RunId) {
        if let Some(run) = self.lock().get_mut(&id) {
            run.last_heard = Instant::now();
        }
    }

    pub fn silent_for(&self, id: RunId) -> Option<Duration> {
        self.lock().get(&id).map(|run| run.last_heard.elapsed())
    }

    /// Asks the run's executor to stop (the first reason wins). False when
    /// the run is not followed.
    pub fn request_stop(&self, id: RunId, why: StopReason) -> bool {
        match self.lock().get_mut(&id) {
            Some(run) => {
                run.stop.get_or_insert((why, Instant::now()));
                true
            }
            None => false,
        }
    }

    /// Stops the run for a reason of the server's own, with what the run's
    /// log is to say about it (the first such note is kept).
    pub fn give_up(&self, id: RunId, why: StopReason, note: String) {
        if let Some(run) = self.lock().get_mut(&id) {
            run.stop.get_or_insert((why, Instant::now()));
            run.note.get_or_insert(note);
        }
    }

    /// The note [`Executors::give_up`] left, once.
    pub fn take_note(&self, id: RunId) -> Option<String> {
        self.lock().get_mut(&id).and_then(|run| run.note.take())
    }

    /// Why the run is to stop, and how long ago that was asked.
    pub fn stop_request(&self, id: RunId) -> Option<(StopReason, Duration)> {
        self.lock().get(&id).and_then(|run| run.stop).map(|(why, at)| (why, at.elapsed()))
    }

    /// Keeps the run's workspace archive, started ahead of the executor's
    /// request, until it asks (dropped, and so killed, if the run is not
    /// followed).
    pub fn hold_archive(&self, id: RunId, archive: tokio::process::Child) {
        if let Some(run) = self.lock().get_mut(&id) {
            run.archive = Some(archive);
        }
    }

    /// The archive [`Executors::hold_archive`] kept, once.
    pub fn take_archive(&self, id: RunId) -> Option<tokio::process::Child> {
        self.lock().get_mut(&id).and_then(|run| run.archive.take())
    }

    /// Room for one more download of the run's workspace.
    pub fn start_workspace_stream(&self, id: RunId) -> Result<WorkspaceStream, DownloadRefused> {
        let mut followed = self.lock();
        let run = followed.get_mut(&id).ok_or(DownloadRefused::NotFollowed)?;
        if run.downloads >= WORKSPACE_DOWNLOADS {
            return Err(DownloadRefused::Exhausted);
        }
        if Arc::strong_count(&run.streams) > WORKSPACE_STREAMS {
            return Err(DownloadRefused::UnderWay);
        }
        run.downloads += 1;
        Ok(WorkspaceStream { _counted: run.streams.clone() })
    }

    /// The lock a batch of the run's output is written under.
    pub fn writing_lock(&self, id: RunId) -> Option<Arc<Mutex<FileTally>>> {
        self.lock().get(&id).map(|run| run.writing.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_request_reaches_the_executor_at_its_next_contact() {
        let executors = Executors::default();
        let id = RunId::generate();
        assert_eq!(executors.heard_from(id), None, "not followed");
        assert!(!executors.request_stop(id, StopReason::Canceled));
        executors.follow(id);
        assert_eq!(executors.heard_from(id), Some(None));
        assert!(executors.request_stop(id, StopReason::Canceled));
        assert!(executors.request_stop(id, StopReason::Timeout));
        assert_eq!(executors.heard_from(id), Some(Some(StopReason::Canceled)), "the first reason wins");
        executors.forget(id);
        assert_eq!(executors.heard_from(id), None);
    }

    #[test]
    fn a_run_has_at_most_two_workspace_downloads_under_way_and_eight_in_all() {
        let executors = Executors::default();
        let id = RunId::generate();
        assert_eq!(executors.start_workspace_stream(id).err(), Some(DownloadRefused::NotFollowed));
        executors.follow(id);
        let first = executors.start_workspace_stream(id).unwrap();
        let second = executors.start_workspace_stream(id).unwrap();
        assert_eq!(executors.start_workspace_stream(id).err(), Some(DownloadRefused::UnderWay));
        drop(first);
        let third = executors.start_workspace_stream(id).unwrap();
        assert_eq!(executors.start_workspace_stream(id).err(), Some(DownloadRefused::UnderWay));
        drop((second, third));
        for _ in 3..WORKSPACE_DOWNLOADS {
            drop(executors.start_workspace_stream(id).unwrap());
        }
        assert_eq!(executors.start_workspace_stream(id).err(), Some(DownloadRefused::Exhausted));
    }
}
