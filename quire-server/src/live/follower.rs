//! Reading one run's files incrementally: its `events.jsonl` and the CRI
//! logs the events announce, turned into [`Item`]s (an event line, a log
//! line). It owns the file offsets and nothing else: numbering, framing and
//! sharing the items among viewers are `feed`'s. It never blocks on a file
//! being written; a line counts once its newline is there, except at the
//! very end ([`Follower::drain`]), when the run is over and a last line
//! without a newline is all there will ever be.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use quire_core::cri;
use quire_core::event::Event;
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
    fn read(&mut self, path: &Path, to_end: bool) -> Vec<Piece> {
        let Ok(mut file) = File::open(path) else { return Vec::new() };
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

/// The follower of one run's files.
pub struct Follower {
    dir: RunDir,
    events: Tail,
    /// The logs the events announced, in the order to read them, each
    /// with its tail.
    logs: Vec<((JobId, LogFile), Tail)>,
    /// The same fold ingest and the run page use: it numbers the commands.
    fold: Fold,
}

impl Follower {
    pub fn new(dir: RunDir) -> Follower {
        Follower { dir, events: Tail::default(), logs: Vec::new(), fold: Fold::new() }
    }

    /// What is new since the last poll, up to [`POLL_BUDGET`]; the rest
    /// waits for the next poll.
    pub fn poll(&mut self) -> Vec<Item> {
        self.read(false)
    }

    /// The same, for a run that has ended: a last line without its newline
    /// counts too. Call until it returns nothing to read everything.
    pub fn poll_to_end(&mut self) -> Vec<Item> {
        self.read(true)
    }

    fn read(&mut self, to_end: bool) -> Vec<Item> {
        let mut out = Vec::new();
        let mut read = 0;
        let before = self.events.offset;
        for piece in self.events.read(&self.dir.events(), to_end) {
            // An overlong or undecodable line is no event: the page would
            // not know what to do with it.
            let Piece::Line(line) = piece else { continue };
            let Ok(event) = Event::from_line(&line) else { continue };
            match self.fold.apply(&event) {
                Applied::JobStarted { job } => self.follow(job, LogFile::Job),
                Applied::CommandStarted { job, seq } => self.follow(job, LogFile::Command(seq)),
                Applied::Other => {}
            }
            out.push(Item::Event(line.trim().to_string()));
        }
        read += self.events.offset - before;
        for ((job, file), tail) in &mut self.logs {
            if read >= POLL_BUDGET {
                break;
            }
            let before = tail.offset;
            let pieces = tail.read(&self.dir.log(job, *file), to_end);
            read += tail.offset - before;
            for piece in pieces {
                let data = match piece {
                    Piece::Line(line) => {
                        let Ok(parsed) = cri::Line::parse(&line) else { continue };
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
                out.push(Item::Log(data.to_string()));
            }
        }
        out
    }

    fn follow(&mut self, job: JobId, file: LogFile) {
        // job.log is appended once at the end of a job: keep it after the
        // job's commands so its lines arrive after their output.
        let key = (job, file);
        if !self.logs.iter().any(|(k, _)| *k == key) {
            let at = self
                .logs
                .iter()
                .position(|((j, f), _)| *j == key.0 && *f == LogFile::Job)
                .unwrap_or(self.logs.len());
            self.logs.insert(at, (key, Tail::default()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let first = follower.poll();
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(matches!(&first[0], Item::Event(e) if e.starts_with("{\"at_ms\":1")));
        assert!(matches!(&first[2], Item::Log(l) if l.contains("\"text\":\"hi\"")), "{first:?}");
        assert!(follower.poll().is_empty(), "partial lines wait for their newline");

        writeln!(f, r#"ished","job_id":"b","exit_code":0}}"#).unwrap();
        let next = follower.poll();
        assert_eq!(next.len(), 1);
        assert!(text(&next[0]).contains("\"exit_code\":0"));
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
            seen.extend(follower.poll());
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
            if more.is_empty() {
                break;
            }
            polls += 1;
            items.extend(more);
        }
        assert!(polls > 1, "one poll reads a bounded amount");
        let logs: Vec<&str> = items.iter().filter(|i| matches!(i, Item::Log(_))).map(text).collect();
        assert_eq!(logs.len(), log.lines().count());
        assert!(logs.last().unwrap().contains("last-words"));
    }
}
