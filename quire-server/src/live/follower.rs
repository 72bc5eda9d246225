//! Reading one run's files incrementally: its `events.jsonl` and the CRI
//! logs the events announce, turned into [`Item`]s (an event line, a log
//! line). It owns the file offsets and nothing else: numbering, framing and
//! sharing the items among viewers are `feed`'s. It never blocks on a file
//! being written; a line counts once its newline is there, except at the
//! very end ([`Follower::drain`]), when the run is over and a last line
//! without a newline is all there will ever be.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use std::collections::HashSet;

use quire_core::cri;
use quire_core::event::{Event, EventKind};
use quire_core::id::JobId;
use quire_core::jobs::{Applied, Fold};
use quire_core::run_dir::{LogFile, RunDir};
use serde_json::json;

/// At most this much of one file is read per poll, so one huge log cannot
/// starve the others (the rest follows on the next polls). Also the longest
/// line the follower passes on: a longer one (no writer of ours makes one)
/// is replaced by a note, so it can never stall the stream.
const MAX_CHUNK: u64 = 256 * 1024;
/// At most about this much is read per poll over all files: what one poll
/// hands the feed, and so what a viewer may have to hold, stays bounded.
const POLL_BUDGET: u64 = 512 * 1024;

/// One thing to send to viewers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An `events.jsonl` line, as written.
    Event(String),
    /// A log line, as the JSON object the live view reads.
    Log(String),
}

/// A piece of a file: a whole line, or a line that outgrew [`MAX_CHUNK`].
enum Piece {
    Line(String),
    Overlong,
}

/// A file read incrementally, up to its last complete line.
#[derive(Debug, Default)]
struct Tail {
    offset: u64,
    /// Inside a line too long to pass on: skip to its newline.
    skipping: bool,
}

impl Tail {
    /// New pieces since the last call. With `to_end`, a last line without
    /// its newline counts too.
    fn read(&mut self, dir: &RunDir, path: &Path, to_end: bool) -> Vec<Piece> {
        let Ok(mut file) = dir.open(path) else { return Vec::new() };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if file.take(MAX_CHUNK).read_to_end(&mut buf).is_err() || buf.is_empty() {
            return Vec::new();
        }
        let mut pieces = Vec::new();
        let mut rest = &buf[..];
        if self.skipping {
            match rest.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.skipping = false;
                    self.offset += at as u64 + 1;
                    rest = &rest[at + 1..];
                }
                None => {
                    self.offset += rest.len() as u64;
                    return pieces;
                }
            }
        }
        let complete = match rest.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if to_end && (rest.len() as u64) < MAX_CHUNK => rest.len(),
            None if buf.len() as u64 == MAX_CHUNK && rest.len() == buf.len() => {
                // A whole chunk without a newline.
                self.offset += rest.len() as u64;
                self.skipping = true;
                pieces.push(Piece::Overlong);
                return pieces;
            }
            None => 0,
        };
        self.offset += complete as u64;
        let text = String::from_utf8_lossy(&rest[..complete]);
        pieces.extend(text.lines().filter(|l| !l.is_empty()).map(|l| Piece::Line(l.to_string())));
        pieces
    }
}

/// A log the events announced, with how far it has been read.
struct Followed {
    job: JobId,
    file: LogFile,
    tail: Tail,
    /// Its writer is done with it (the command or the job has finished):
    /// once read to its end it is dropped from the polls.
    done: bool,
}

/// What one poll found.
pub struct Polled {
    pub items: Vec<Item>,
    /// Whether any file was read further (a poll can consume bytes and
    /// yield nothing, say a line that does not decode).
    pub progressed: bool,
}

/// The follower of one run's files.
pub struct Follower {
    dir: RunDir,
    events: Tail,
    /// The logs still being followed, in the order to read them. A finished
    /// command's log leaves the list once read, so a poll costs the logs
    /// still being written, not every log the run ever had.
    logs: Vec<Followed>,
    /// Every log ever announced, so none is followed twice.
    announced: HashSet<(JobId, LogFile)>,
    /// The same fold ingest and the run page use: it numbers the commands.
    fold: Fold,
}

impl Follower {
    pub fn new(dir: RunDir) -> Follower {
        Follower {
            dir,
            events: Tail::default(),
            logs: Vec::new(),
            announced: HashSet::new(),
            fold: Fold::new(),
        }
    }

    /// What is new since the last poll, up to [`POLL_BUDGET`]; the rest
    /// waits for the next poll.
    pub fn poll(&mut self) -> Polled {
        self.read(false)
    }

    /// The same, for a run that has ended: a last line without its newline
    /// counts too. Call until nothing progresses to read everything.
    pub fn poll_to_end(&mut self) -> Polled {
        self.read(true)
    }

    fn read(&mut self, to_end: bool) -> Polled {
        let mut out = Vec::new();
        let before = self.events.offset;
        for piece in self.events.read(&self.dir, &self.dir.events(), to_end) {
            // An overlong or undecodable line is no event: the page would
            // not know what to do with it.
            let Piece::Line(line) = piece else { continue };
            let Ok(event) = Event::from_line(&line) else { continue };
            self.note(&event);
            out.push(Item::Event(line.trim().to_string()));
        }
        let mut read = self.events.offset - before;
        let mut progressed = read > 0;
        let mut index = 0;
        while index < self.logs.len() && read < POLL_BUDGET {
            let followed = &mut self.logs[index];
            let before = followed.tail.offset;
            let pieces = followed.tail.read(
                &self.dir,
                &self.dir.log(&followed.job, followed.file),
                to_end || followed.done,
            );
            let advanced = followed.tail.offset - before;
            read += advanced;
            progressed |= advanced > 0;
            out.extend(
                pieces
                    .into_iter()
                    .filter_map(|piece| log_item(&followed.job, followed.file, piece))
                    .map(Item::Log),
            );
            if followed.done && advanced == 0 {
                self.logs.remove(index);
            } else {
                index += 1;
            }
        }
        Polled { items: out, progressed }
    }

    /// Follows the logs an event announces, and lets go of those it ends.
    fn note(&mut self, event: &Event) {
        match self.fold.apply(event) {
            Applied::JobStarted { job } => self.follow(job, LogFile::Job),
            Applied::CommandStarted { job, seq } => self.follow(job, LogFile::Command(seq)),
            Applied::Other => {}
        }
        match &event.kind {
            // A command's log is complete when it finishes: the executor
            // writes the log before the event.
            EventKind::ShFinished { job_id, .. } => {
                let seq =
                    self.fold.jobs().iter().find(|j| &j.job_id == job_id).map_or(0, |j| j.commands.len());
                self.finish(job_id, |file| file == LogFile::Command(seq as u32));
            }
            EventKind::JobFinished { job_id, .. } | EventKind::JobSkipped { job_id } => {
                self.finish(job_id, |_| true);
            }
            _ => {}
        }
    }

    fn finish(&mut self, job: &JobId, which: impl Fn(LogFile) -> bool) {
        for followed in self.logs.iter_mut().filter(|f| &f.job == job && which(f.file)) {
            followed.done = true;
        }
    }

    fn follow(&mut self, job: JobId, file: LogFile) {
        if !self.announced.insert((job.clone(), file)) {
            return;
        }
        // job.log is appended once at the end of a job: keep it after the
        // job's commands so its lines arrive after their output.
        let at =
            self.logs.iter().position(|f| f.job == job && f.file == LogFile::Job).unwrap_or(self.logs.len());
        self.logs.insert(at, Followed { job, file, tail: Tail::default(), done: false });
    }
}

/// A log piece as the JSON object the live view reads; `None` for a line
/// that is not CRI (quire-ci writes none).
fn log_item(job: &JobId, file: LogFile, piece: Piece) -> Option<String> {
    let data = match piece {
        Piece::Line(line) => {
            let parsed = cri::Line::parse(&line).ok()?;
            json!({
                "job": job,
                "file": file.file_name(),
                "stream": parsed.stream.as_str(),
                "partial": parsed.tag == cri::Tag::Partial,
                "time": parsed.timestamp,
                "text": parsed.content,
            })
        }
        Piece::Overlong => json!({
            "job": job,
            "file": file.file_name(),
            "stream": "stderr",
            "partial": false,
            "time": "",
            "text": "[quire: a line too long for the live view was left out; see the raw log]",
        }),
    };
    Some(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn text(item: &Item) -> &str {
        match item {
            Item::Event(s) | Item::Log(s) => s,
        }
    }

    #[test]
    fn follows_events_and_the_logs_they_announce() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let mut f = File::create(&events).unwrap();
        writeln!(f, r#"{{"at_ms":1,"type":"job_started","job_id":"b"}}"#).unwrap();
        writeln!(f, r#"{{"at_ms":2,"type":"sh_started","job_id":"b","cmd":"echo hi"}}"#).unwrap();
        write!(f, r#"{{"at_ms":3,"type":"sh_fin"#).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/b")).unwrap();
        std::fs::write(
            dir.path().join("jobs/b/sh-1.log"),
            "2026-11-22T10:00:00.000000001Z stdout F hi\n2026-11-22T10:00:00.0",
        )
        .unwrap();

        let mut follower = Follower::new(RunDir::new(dir.path()));
        let first = follower.poll().items;
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(matches!(&first[0], Item::Event(e) if e.starts_with("{\"at_ms\":1")));
        assert!(matches!(&first[2], Item::Log(l) if l.contains("\"text\":\"hi\"")), "{first:?}");
        assert!(follower.poll().items.is_empty(), "partial lines wait for their newline");

        writeln!(f, r#"ished","job_id":"b","exit_code":0}}"#).unwrap();
        let next = follower.poll().items;
        assert_eq!(next.len(), 1);
        assert!(text(&next[0]).contains("\"exit_code\":0"));
    }

    #[test]
    fn a_finished_commands_log_is_read_to_its_end_then_no_longer_polled() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = File::create(dir.path().join("events.jsonl")).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/b")).unwrap();
        writeln!(events, r#"{{"at_ms":1,"type":"job_started","job_id":"b"}}"#).unwrap();
        for n in 1..=3 {
            std::fs::write(
                dir.path().join(format!("jobs/b/sh-{n}.log")),
                format!("2026-11-22T10:00:00.000000001Z stdout F out-{n}\n"),
            )
            .unwrap();
            writeln!(events, r#"{{"at_ms":2,"type":"sh_started","job_id":"b","cmd":"x"}}"#).unwrap();
            writeln!(events, r#"{{"at_ms":3,"type":"sh_finished","job_id":"b","exit_code":0}}"#).unwrap();
        }
        let mut follower = Follower::new(RunDir::new(dir.path()));
        let items = follower.poll().items;
        let logs: Vec<&str> = items.iter().filter(|i| matches!(i, Item::Log(_))).map(text).collect();
        assert_eq!(logs.len(), 3, "{logs:?}");
        follower.poll();
        assert_eq!(follower.logs.len(), 1, "only job.log is still followed");
        assert_eq!(follower.logs[0].file, LogFile::Job);
    }

    #[test]
    fn a_line_longer_than_a_chunk_does_not_stall_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = File::create(dir.path().join("events.jsonl")).unwrap();
        writeln!(events, r#"{{"at_ms":1,"type":"job_started","job_id":"b"}}"#).unwrap();
        writeln!(events, r#"{{"at_ms":2,"type":"sh_started","job_id":"b","cmd":"x"}}"#).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/b")).unwrap();
        let huge =
            format!("2026-11-22T10:00:00.000000001Z stdout F {}\n", "y".repeat(3 * MAX_CHUNK as usize));
        let after = "2026-11-22T10:00:00.000000002Z stdout F after\n";
        std::fs::write(dir.path().join("jobs/b/sh-1.log"), huge + after).unwrap();

        let mut follower = Follower::new(RunDir::new(dir.path()));
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.extend(follower.poll().items);
        }
        let logs: Vec<&str> = seen.iter().filter(|i| matches!(i, Item::Log(_))).map(text).collect();
        assert_eq!(logs.len(), 2, "{logs:?}");
        assert!(logs[0].contains("too long for the live view"));
        assert!(logs[1].contains("\"text\":\"after\""));
    }

    #[test]
    fn reading_to_the_end_gets_past_the_budget_and_keeps_a_last_line_without_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut events = File::create(dir.path().join("events.jsonl")).unwrap();
        writeln!(events, r#"{{"at_ms":1,"type":"job_started","job_id":"b"}}"#).unwrap();
        writeln!(events, r#"{{"at_ms":2,"type":"sh_started","job_id":"b","cmd":"x"}}"#).unwrap();
        std::fs::create_dir_all(dir.path().join("jobs/b")).unwrap();
        let line = "2026-11-22T10:00:00.000000001Z stdout F ".to_string() + &"z".repeat(200) + "\n";
        let mut log = line.repeat(2 * MAX_CHUNK as usize / line.len() + 10);
        log.push_str("2026-11-22T10:00:00.000000002Z stdout P last-words");
        std::fs::write(dir.path().join("jobs/b/sh-1.log"), &log).unwrap();

        let mut follower = Follower::new(RunDir::new(dir.path()));
        let mut items = Vec::new();
        let mut polls = 0;
        loop {
            let more = follower.poll_to_end();
            if !more.progressed {
                break;
            }
            polls += 1;
            items.extend(more.items);
        }
        assert!(polls > 1, "one poll reads a bounded amount");
        let logs: Vec<&str> = items.iter().filter(|i| matches!(i, Item::Log(_))).map(text).collect();
        assert_eq!(logs.len(), log.lines().count());
        assert!(logs.last().unwrap().contains("last-words"));
    }
}
