//! Following a run as it happens: tails its `events.jsonl` and its CRI logs
//! and turns new complete lines into Server-Sent Events for
//! `GET /api/runs/{id}/events`. The first poll sends everything so far (the
//! backlog); the stream ends after the run has finished and the files have
//! been read to their end. It reads files only; the database is asked just
//! whether the run has finished.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use quire_core::cri;
use quire_core::event::Event;
use quire_core::id::JobId;
use quire_core::jobs::{Applied, Fold};
use quire_core::run_dir::{LogFile, RunDir};
use serde_json::json;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_millis(200);
/// At most this much of one file is sent per poll, so one huge log cannot
/// starve the others (the rest follows on the next polls).
const MAX_CHUNK: u64 = 512 * 1024;

/// A file read incrementally, only up to its last complete line.
#[derive(Debug, Default)]
struct Tail {
    offset: u64,
}

impl Tail {
    /// New complete lines since the last call.
    fn read_lines(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut file) = File::open(path) else { return Vec::new() };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if file.take(MAX_CHUNK).read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        self.offset += end as u64 + 1;
        String::from_utf8_lossy(&buf[..end]).lines().map(str::to_string).collect()
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

    /// Everything new since the last poll, as SSE messages.
    pub fn poll(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        for line in self.events.read_lines(&self.dir.events()) {
            if let Ok(event) = Event::from_line(&line) {
                match self.fold.apply(&event) {
                    Applied::JobStarted { job } => self.follow(job, LogFile::Job),
                    Applied::CommandStarted { job, seq } => self.follow(job, LogFile::Command(seq)),
                    Applied::Other => {}
                }
                out.push(message("event", line.trim()));
            }
        }
        for ((job, file), tail) in &mut self.logs {
            for line in tail.read_lines(&self.dir.log(job, *file)) {
                let Ok(parsed) = cri::Line::parse(&line) else { continue };
                let data = json!({
                    "job": job,
                    "file": file.file_name(),
                    "stream": parsed.stream.as_str(),
                    "partial": parsed.tag == cri::Tag::Partial,
                    "time": parsed.timestamp,
                    "text": parsed.content,
                });
                out.push(message("log", &data.to_string()));
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

/// One SSE message.
pub fn message(event: &str, data: &str) -> Bytes {
    let mut text = format!("event: {event}\n");
    for line in data.lines() {
        text.push_str("data: ");
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        let first: Vec<String> =
            follower.poll().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first[0].starts_with("event: event\ndata: {\"at_ms\":1"));
        assert!(first[2].starts_with("event: log\n") && first[2].contains("\"text\":\"hi\""), "{}", first[2]);
        assert!(follower.poll().is_empty(), "partial lines wait for their newline");

        writeln!(f, r#"ished","job_id":"b","exit_code":0}}"#).unwrap();
        let next = follower.poll();
        assert_eq!(next.len(), 1);
        assert!(String::from_utf8_lossy(&next[0]).contains("\"exit_code\":0"));
    }

    #[test]
    fn messages_are_sse_framed() {
        assert_eq!(message("end", "{}"), Bytes::from("event: end\ndata: {}\n\n"));
    }
}
