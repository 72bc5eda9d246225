//! The run's event stream and notes as every thread of a run writes them.
//! One lock, so events go out (and are flushed by the sink) as they
//! happen, in one order, stamped so that `at_ms` never goes backwards.
//! A job's events end with its `job_finished`: whatever a job that was
//! given up on says after that is dropped, and so is everything once
//! quire-ci has been told to stop (the jobs it cut off stay unfinished in
//! the stream, which the server records as aborted). Writing to the sink
//! directly from job threads keeps a command's cost free of thread
//! hand-offs.

use std::sync::{Arc, Mutex, MutexGuard};

use super::context::{Note, RunError, Sink};
use super::reaper;
use crate::clock::now_ms;
use crate::event::{Event, EventKind};

pub struct Recorder {
    sink: Arc<Mutex<dyn Sink>>,
    state: Mutex<State>,
}

struct State {
    last_ms: i64,
    /// Per job (by index): its `job_finished` has been written.
    closed: Vec<bool>,
}

impl Recorder {
    pub fn new(sink: Arc<Mutex<dyn Sink>>, jobs: usize) -> Recorder {
        Recorder { sink, state: Mutex::new(State { last_ms: 0, closed: vec![false; jobs] }) }
    }

    /// An event of the run itself, or of a job the runner starts or skips.
    pub fn emit(&self, kind: EventKind) -> Result<(), RunError> {
        let mut state = self.state();
        self.write(&mut state, kind)
    }

    /// An event a running job reports; dropped once the job is closed.
    pub fn job_event(&self, job: usize, kind: EventKind) -> Result<(), RunError> {
        let mut state = self.state();
        if state.closed[job] {
            return Ok(());
        }
        self.write(&mut state, kind)
    }

    /// The job's `job_finished`: nothing of the job is written after it.
    pub fn close_job(&self, job: usize, kind: EventKind) -> Result<(), RunError> {
        let mut state = self.state();
        state.closed[job] = true;
        self.write(&mut state, kind)
    }

    pub fn note(&self, note: &Note) {
        let _state = self.state();
        self.sink().note(note);
    }

    /// A note a running job sends; dropped once the job is closed.
    pub fn job_note(&self, job: usize, note: &Note) {
        let state = self.state();
        if !state.closed[job] {
            self.sink().note(note);
        }
    }

    fn write(&self, state: &mut State, kind: EventKind) -> Result<(), RunError> {
        if reaper::stopping() {
            return Ok(());
        }
        let at_ms = now_ms().max(state.last_ms);
        state.last_ms = at_ms;
        self.sink().event(&Event::new(at_ms, kind)).map_err(RunError::Events)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sink(&self) -> MutexGuard<'_, dyn Sink + 'static> {
        self.sink.lock().unwrap_or_else(|p| p.into_inner())
    }
}
