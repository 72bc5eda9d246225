//! Ingest throughput: a 100,000-event `events.jsonl` (500 jobs of 98
//! commands each, the shape a busy run has) into a fresh SQLite database,
//! five times; prints the median and events per second.

use std::io::Write;
use std::time::Instant;

use quire_server::{db, ingest, runs};

const JOBS: usize = 500;
const COMMANDS_PER_JOB: usize = 98;

fn write_events(path: &std::path::Path) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut at = 1_795_000_000_000i64;
    let mut lines = 0;
    let mut line = |out: &mut std::io::BufWriter<std::fs::File>, text: String| {
        writeln!(out, "{text}").unwrap();
        lines += 1;
    };
    for job in 0..JOBS {
        at += 1;
        line(&mut out, format!(r#"{{"at_ms":{at},"type":"job_started","job_id":"job-{job}"}}"#));
        for n in 0..COMMANDS_PER_JOB {
            at += 1;
            line(
                &mut out,
                format!(
                    r#"{{"at_ms":{at},"type":"sh_started","job_id":"job-{job}","cmd":"cargo test --package crate-{n} -- --nocapture"}}"#
                ),
            );
            at += 3;
            line(
                &mut out,
                format!(r#"{{"at_ms":{at},"type":"sh_finished","job_id":"job-{job}","exit_code":0}}"#),
            );
        }
        line(
            &mut out,
            format!(r#"{{"at_ms":{at},"type":"job_finished","job_id":"job-{job}","outcome":"complete"}}"#),
        );
    }
    // 500 × (2 + 2 × 98) = 99,000 lines so far; fill up to 100,000.
    for job in JOBS..JOBS + 999 {
        line(&mut out, format!(r#"{{"at_ms":{at},"type":"job_skipped","job_id":"job-{job}"}}"#));
    }
    line(&mut out, format!(r#"{{"at_ms":{at},"type":"run_finished","outcome":"success"}}"#));
    out.flush().unwrap();
    drop(out);
    lines
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let total = write_events(&events);
    let mut seconds = Vec::new();
    for round in 0..5 {
        let mut conn = db::open_and_migrate(&dir.path().join(format!("quire-{round}.db"))).unwrap();
        let new = runs::NewRun {
            repo: "bench.git".parse().unwrap(),
            ref_name: "refs/heads/main".into(),
            sha: "a".repeat(40),
            previous_sha: None,
            pushed_at_ms: 0,
            trigger: runs::Trigger::Push,
            scheduled_at_ms: None,
        };
        let (run, _) = runs::enqueue(&mut conn, &new).unwrap();
        let started = Instant::now();
        let report = ingest::ingest_file(&mut conn, run, &events, quire_core::clock::now_ms()).unwrap();
        seconds.push(started.elapsed().as_secs_f64());
        assert_eq!(report.events, total);
        assert_eq!(report.skipped_lines, 0);
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "ingest: {total} events, median {median:.3} s, {:.0} events/s (target >= 200000)",
        total as f64 / median
    );
}
