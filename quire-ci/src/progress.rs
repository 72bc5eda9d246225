//! The run's two audiences: the event stream (JSONL, for machines) and the
//! progress a person follows (jobs, commands and `print`s prefixed with
//! their job, durations, the tail of what failed). Both are fed from the
//! runtime through one `Sink`; how progress is drawn is `screen`'s.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;

use quire_core::clock::{format_duration_ms, now_ms};
use quire_core::cri;
use quire_core::event::{Event, EventKind, JobOutcome, RunOutcome};
use quire_core::id::JobId;
use quire_core::runtime::{Note, Sink};

use crate::screen::Screen;

/// How many lines of a failed command's log are shown.
const TAIL_LINES: usize = 12;

pub struct Reporter {
    events: Box<dyn Write + Send>,
    progress: Screen,
    started_at: HashMap<JobId, i64>,
    run_started_ms: i64,
    tally: Tally,
}

#[derive(Default)]
struct Tally {
    complete: usize,
    failed: usize,
    skipped: usize,
}

impl Reporter {
    pub fn new(events: Box<dyn Write + Send>, progress: Screen) -> Self {
        Reporter {
            events,
            progress,
            started_at: HashMap::new(),
            run_started_ms: now_ms(),
            tally: Tally::default(),
        }
    }

    /// A line for the person watching. Progress is best effort: a closed
    /// terminal must not fail the run.
    pub fn say(&mut self, line: &str) {
        self.progress.line(line);
    }

    fn show(&mut self, event: &Event) {
        match &event.kind {
            EventKind::JobStarted { job_id } => {
                self.started_at.insert(job_id.clone(), event.at_ms);
                self.say(&format!("▶ {job_id}"));
                self.progress.job_started(job_id);
            }
            EventKind::ShStarted { job_id, cmd } => self.say(&format!("  [{job_id}] $ {cmd}")),
            EventKind::ShFinished { .. } => {}
            EventKind::JobFinished { job_id, outcome } => {
                self.progress.job_ended(job_id);
                let took = self.started_at.get(job_id).map_or(0, |start| event.at_ms - start);
                match outcome {
                    JobOutcome::Complete => {
                        self.tally.complete += 1;
                        self.say(&format!("✔ {job_id} complete in {}", format_duration_ms(took)));
                    }
                    JobOutcome::Failed => {
                        self.tally.failed += 1;
                        self.say(&format!("✘ {job_id} failed after {}", format_duration_ms(took)));
                    }
                }
            }
            EventKind::JobSkipped { .. } => self.tally.skipped += 1,
            EventKind::RunFinished { outcome } => {
                let took = format_duration_ms(event.at_ms - self.run_started_ms);
                let Tally { complete, failed, skipped } = self.tally;
                let verdict = match outcome {
                    RunOutcome::Success => "run succeeded",
                    RunOutcome::PipelineFailure => "run failed",
                };
                self.say(&format!(
                    "{verdict} in {took}: {complete} complete, {failed} failed, {skipped} skipped"
                ));
            }
            EventKind::Pipeline { .. } | EventKind::Unknown => {}
        }
    }
}

impl Sink for Reporter {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        writeln!(self.events, "{}", event.to_line())?;
        self.events.flush()?;
        self.show(event);
        Ok(())
    }

    fn note(&mut self, note: &Note) {
        match note {
            Note::CommandFailed { job, exit_code, log } => {
                let lines = tail(log, TAIL_LINES);
                if lines.is_empty() {
                    self.say(&format!("  [{job}] exit code {exit_code}, no output ({})", log.display()));
                } else {
                    self.say(&format!("  [{job}] exit code {exit_code}; last lines of {}:", log.display()));
                }
                for line in lines {
                    self.say(&format!("  [{job}] | {line}"));
                }
            }
            Note::JobFailed { job, reason } => {
                for (i, line) in reason.lines().enumerate() {
                    let lead = if i == 0 { "error: " } else { "       " };
                    self.say(&format!("  [{job}] {lead}{line}"));
                }
            }
            Note::JobSkipped { job, because } => {
                self.say(&format!("⊘ {job} skipped: its input `{because}` did not complete"));
            }
            Note::Printed { job, text } => {
                for line in text.lines() {
                    self.say(&format!("  [{job}] {line}"));
                }
            }
        }
    }
}

/// The last `n` lines of a CRI log, as text (stderr marked).
fn tail(log: &Path, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else { return Vec::new() };
    let lines = cri::read_lines(&text);
    lines
        .iter()
        .skip(lines.len().saturating_sub(n))
        .map(|l| match l.stream {
            cri::Stream::Stdout => l.content.clone(),
            cri::Stream::Stderr => format!("{} (stderr)", l.content),
        })
        .collect()
}
