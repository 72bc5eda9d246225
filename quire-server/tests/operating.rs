//! Operating under faults: each test names the fault it survives and drives
//! a real `quire serve`, real `git push`es and real `quire-ci` processes.
//! Covered: pushes arriving while another process holds the database's
//! write lock past the busy timeout (spooled, then replayed: no push lost);
//! a live viewer reconnecting with `Last-Event-ID` (resumed, no duplicate);
//! hundreds of viewers of one run (one shared feed) and the cap on open
//! streams (503 past it); a run page of a run with thousands of commands
//! (paged, within its byte budget); and retention (`:ci {:retention …}`
//! after each run and `quire ci prune`), which never removes the newest run
//! or a ref's badge run. Every server started here is killed on drop, and
//! every gated command stops once its gate directory is gone.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{get, Root, Server, Work};

const TRIVIAL: &str =
    "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo hi\")))\n";

/// Prints `first`, waits until the test creates `$GATE/open` (or removes
/// `$GATE`, so a failing test leaves no command behind), prints `second`.
/// `$GATE` is a host path, so the servers running it use `:sandbox :none`.
const GATED: &str = r#"(local ci (require :quire.ci))
(ci.job :wait [:quire/push]
  (fn [{: sh}]
    (sh "echo first; while [ -d \"$GATE\" ] && [ ! -e \"$GATE/open\" ]; do sleep 0.05; done; echo second")))
"#;

/// `/api/health`'s JSON.
fn health(server: &Server) -> serde_json::Value {
    let (status, body) = get(&format!("{}/api/health", server.url));
    assert_eq!(status, 200, "/api/health answered {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/health is not JSON ({e}): {body}"))
}

fn run_dir(root: &Root, repo: &str, id: &str) -> PathBuf {
    root.path().join("runs").join(repo).join(id)
}

fn count_rows(root: &Root, sql: &str, id: &str) -> i64 {
    root.db().query_row(sql, [id], |r| r.get(0)).unwrap()
}

/// A server running commands unsandboxed with `$GATE` set to a fresh
/// directory (see [`GATED`]); the directory goes when the test ends.
fn gated_server(root: &Root, config: &str) -> (Server, tempfile::TempDir) {
    root.write_config(config);
    let gate = tempfile::tempdir().unwrap();
    let server = root.serve_with(&[("GATE", gate.path().to_str().unwrap())]);
    (server, gate)
}

/// Pushes [`GATED`] as `app.git` and waits until its command has printed
/// `first` (so the run is active and stays so until the gate opens).
fn gated_run(root: &Root) -> String {
    root.push_pipeline("app.git", GATED, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    let log = run_dir(root, "app.git", &id).join("jobs/wait/sh-1.log");
    root.wait_for("the gated command to print its first line", 30, || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("first")).map(|_| ())
    });
    id
}

fn open_gate(gate: &tempfile::TempDir) {
    std::fs::write(gate.path().join("open"), "").unwrap();
}

/// Commits on top of `work`, pushes it to `branch` and waits until its run
/// has finished complete; returns the run's id.
fn push_and_finish(root: &Root, work: &Work, branch: &str, message: &str) -> String {
    let before = root.run_ids(&work.name);
    work.commit(message);
    work.push(branch);
    let id = root.wait_for(&format!("the run of commit {message:?}"), 30, || {
        root.run_ids(&work.name).into_iter().find(|id| !before.contains(id))
    });
    let (state, kind) = root.wait_finished(&id);
    assert_eq!(state, "complete", "run {id} of {message:?} ({kind:?})\nserver log:\n{}", root.server_log());
    id
}

// ---------------------------------------------------------------------------
// The database locked past its busy timeout.
// ---------------------------------------------------------------------------

/// Ten pushes arriving while another process holds the database's write
/// lock longer than the server's busy timeout (10 s) each return without
/// waiting for the lock to go away, are saved in the spool, and once the
/// lock is released all ten become runs that complete.
#[test]
fn pushes_arriving_while_the_database_is_locked_past_the_busy_timeout_all_become_runs() {
    let root = Root::new();
    let server = root.serve();
    let (work, _) = root.push_pipeline("app.git", TRIVIAL, "main");
    let first = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&first), ("complete".to_string(), None), "{}", root.server_log());

    // Another process (this test) takes the write lock and keeps it until
    // every push has returned.
    let lock = root.db();
    lock.execute_batch("BEGIN IMMEDIATE").expect("the test takes the write lock");
    let taken = Instant::now();
    let branches: Vec<String> = (0..10).map(|i| format!("busy-{i}")).collect();
    let said: Vec<String> = std::thread::scope(|s| {
        let work = &work;
        let pushes: Vec<_> = branches.iter().map(|b| s.spawn(move || work.push(b))).collect();
        pushes.into_iter().map(|p| p.join().expect("a git push thread panicked")).collect()
    });
    let pushing = taken.elapsed();
    assert!(
        pushing < Duration::from_secs(45),
        "the pushes waited {pushing:?} with the lock held: they should give up on the database after its busy timeout"
    );
    for (branch, said) in branches.iter().zip(&said) {
        assert!(said.contains("spool"), "the push to {branch} says its run waits in the spool: {said}");
    }
    assert_eq!(
        root.run_ids("app.git"),
        std::slice::from_ref(&first),
        "nothing could be queued while the lock was held"
    );
    let spooled = health(&server)["spooled_pushes"].as_u64();
    assert_eq!(
        spooled,
        Some(10),
        "/api/health counts the ten spooled pushes\nserver log:\n{}",
        root.server_log()
    );
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);

    let ids = root.wait_run_count("app.git", 11);
    assert_eq!(ids.len(), 11, "one run per pushed branch, no push run twice: {ids:?}");
    let mut refs: Vec<String> = Vec::new();
    for id in ids.iter().filter(|id| **id != first) {
        let (state, kind) = root.wait_finished(id);
        assert_eq!(state, "complete", "run {id} ({kind:?})\nserver log:\n{}", root.server_log());
        refs.push(
            root.db().query_row("SELECT ref_name FROM runs WHERE id = ?1", [id], |r| r.get(0)).unwrap(),
        );
    }
    refs.sort();
    let mut expected: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
    expected.sort();
    assert_eq!(refs, expected, "each pushed branch has its run");
    root.wait_for("the spool to be empty", 30, || {
        (health(&server)["spooled_pushes"].as_u64() == Some(0)).then_some(())
    });
}

// ---------------------------------------------------------------------------
// Live viewers: reconnects, crowds and the stream cap.
// ---------------------------------------------------------------------------

/// One Server-Sent Events message.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: String,
}

/// A client of `/api/runs/{id}/events`, read one message at a time.
struct EventStream {
    lines: std::io::Lines<BufReader<reqwest::blocking::Response>>,
}

impl EventStream {
    fn connect(url: &str, last_event_id: Option<&str>) -> EventStream {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        EventStream { lines: BufReader::new(response).lines() }
    }

    /// The next message; None once the server has closed the stream.
    /// Comments (`: keep-alive`) are skipped.
    fn next(&mut self) -> Option<Sse> {
        let mut message = Sse { id: None, event: String::new(), data: String::new() };
        let mut started = false;
        loop {
            let line = self.lines.next()?.expect("the event stream reads");
            if line.is_empty() {
                if started {
                    return Some(message);
                }
            } else if line.starts_with(':') {
                continue;
            } else if let Some(id) = line.strip_prefix("id: ") {
                message.id = Some(id.to_string());
                started = true;
            } else if let Some(event) = line.strip_prefix("event: ") {
                message.event = event.to_string();
                started = true;
            } else if let Some(data) = line.strip_prefix("data: ") {
                if !message.data.is_empty() {
                    message.data.push('\n');
                }
                message.data.push_str(data);
                started = true;
            }
        }
    }
}

/// `<feed>-<seq>` split in its two parts.
fn feed_and_seq(id: &str) -> (String, u64) {
    let (feed, seq) = id.rsplit_once('-').unwrap_or_else(|| panic!("an event id is <feed>-<seq>: {id:?}"));
    (feed.to_string(), seq.parse().unwrap_or_else(|_| panic!("an event id ends with a number: {id:?}")))
}

/// The `text` of a `log` message.
fn log_text(message: &Sse) -> String {
    let data: serde_json::Value = serde_json::from_str(&message.data)
        .unwrap_or_else(|e| panic!("a log message's data is JSON ({e}): {}", message.data));
    data["text"].as_str().unwrap_or_else(|| panic!("a log message has a text: {}", message.data)).to_string()
}

/// A viewer that drops its connection mid-run and reconnects with the
/// `Last-Event-ID` it last received gets exactly what it missed: nothing
/// twice, nothing lost, in order, up to `end`.
#[test]
fn a_reconnecting_live_client_with_last_event_id_gets_no_duplicate() {
    let root = Root::new();
    let (server, gate) = gated_server(&root, "{:ci {:sandbox :none}}");
    root.push_pipeline("app.git", GATED, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    let url = format!("{}/api/runs/{id}/events", server.url);

    let mut received = Vec::new();
    let mut first = EventStream::connect(&url, None);
    let noted = loop {
        let message = first.next().unwrap_or_else(|| {
            panic!(
                "the stream closed before the first line: {received:?}\nserver log:\n{}",
                root.server_log()
            )
        });
        assert_ne!(message.event, "end", "the run ended before its gate opened: {received:?}");
        received.push(message.clone());
        if message.event == "log" && log_text(&message) == "first" {
            break message.id.clone().expect("a log message has an id");
        }
    };
    drop(first);
    open_gate(&gate);

    let mut second = EventStream::connect(&url, Some(&noted));
    let mut resumed = Vec::new();
    while let Some(message) = second.next() {
        resumed.push(message);
    }
    assert_eq!(
        resumed.last().map(|m| m.event.as_str()),
        Some("end"),
        "the resumed stream runs to its end: {resumed:?}\nserver log:\n{}",
        root.server_log()
    );
    assert!(
        resumed.iter().all(|m| m.event != "reset" && m.event != "truncated"),
        "the feed still existed, so the stream resumed rather than starting over: {resumed:?}"
    );
    let (feed, noted_seq) = feed_and_seq(&noted);
    for message in &resumed {
        if let Some(id) = &message.id {
            let (their_feed, seq) = feed_and_seq(id);
            assert_eq!(their_feed, feed, "the same feed resumed: {id} after {noted}");
            assert!(seq > noted_seq, "{id} was already received (up to {noted}): {resumed:?}");
        }
    }

    let all: Vec<&Sse> = received.iter().chain(&resumed).collect();
    let ids: Vec<&str> = all.iter().filter_map(|m| m.id.as_deref()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no id twice: {ids:?}");
    let texts: Vec<String> = all.iter().filter(|m| m.event == "log").map(|m| log_text(m)).collect();
    for line in ["first", "second"] {
        assert_eq!(
            texts.iter().filter(|t| *t == line).count(),
            1,
            "the log line {line:?} arrives exactly once over both connections: {texts:?}"
        );
    }
    let events: Vec<&str> = all.iter().filter(|m| m.event == "event").map(|m| m.data.as_str()).collect();
    assert_eq!(events.iter().collect::<HashSet<_>>().len(), events.len(), "no event twice: {events:?}");
    assert!(events.iter().any(|e| e.contains("\"run_finished\"")), "{events:?}");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None));
}

/// Opens `path` on the server as an event stream over a raw connection and
/// reads its response head; the stream stays open while the value lives.
fn open_stream(server: &Server, path: &str) -> TcpStream {
    let addr = server.url.strip_prefix("http://").expect("an http:// URL");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap_or_else(|e| {
            panic!("reading the head of {path} failed ({e}): {}", String::from_utf8_lossy(&head))
        });
        assert_eq!(n, 1, "the server closed {path} before its head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{path} answered:\n{head}");
    assert!(head.to_ascii_lowercase().contains("text/event-stream"), "{path} answered:\n{head}");
    stream
}

/// Two hundred viewers of one active run cost one follower: the server
/// reads the run's files once, whatever the number of viewers.
#[test]
fn two_hundred_live_clients_on_one_active_run_cost_one_follower() {
    let root = Root::new();
    let (server, gate) = gated_server(&root, "{:ci {:sandbox :none} :http {:max-live-streams 1000}}");
    let id = gated_run(&root);
    let path = format!("/api/runs/{id}/events");
    let viewers: Vec<TcpStream> = (0..200).map(|_| open_stream(&server, &path)).collect();

    let live = root.wait_for("/api/health to count the 200 streams", 30, || {
        let live = health(&server)["live"].clone();
        (live["streams"].as_u64() >= Some(200)).then_some(live)
    });
    assert_eq!(live["followers"].as_u64(), Some(1), "one feed for one run's 200 viewers: {live}");
    assert_eq!(live["max_streams"].as_u64(), Some(1000), "{live}");

    drop(viewers);
    open_gate(&gate);
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
}

/// Past `:http {:max-live-streams N}` open streams a new viewer gets 503
/// with a JSON error naming the setting, and the places come back once the
/// streams end.
#[test]
fn a_stream_past_max_live_streams_gets_503_naming_the_setting() {
    let root = Root::new();
    let (server, gate) = gated_server(&root, "{:ci {:sandbox :none} :http {:max-live-streams 3}}");
    let id = gated_run(&root);
    let path = format!("/api/runs/{id}/events");
    let viewers: Vec<TcpStream> = (0..3).map(|_| open_stream(&server, &path)).collect();
    root.wait_for("/api/health to count the 3 streams", 30, || {
        (health(&server)["live"]["streams"].as_u64() == Some(3)).then_some(())
    });

    let (status, body) = get(&format!("{}{path}", server.url));
    assert_eq!(status, 503, "the 4th stream is refused: {body}");
    let error: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("the 503 body is JSON ({e}): {body}"));
    let message = error["error"].as_str().unwrap_or_else(|| panic!("the 503 body has an error: {body}"));
    assert!(message.contains("max-live-streams"), "the error names the setting: {message}");

    // The run's end closes the three streams and frees their places, even
    // though their clients are still connected.
    open_gate(&gate);
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
    root.wait_for("the ended streams to give their places back", 30, || {
        (health(&server)["live"]["streams"].as_u64() == Some(0)).then_some(())
    });
    drop(viewers);
    let (status, body) = get(&format!("{}{path}", server.url));
    assert_eq!(status, 200, "a viewer is admitted again: {body}");
    assert!(body.contains("event: end"), "{body}");
}

// ---------------------------------------------------------------------------
// A run with thousands of commands.
// ---------------------------------------------------------------------------

/// The page of a run with 3,000 commands stays under 2 MiB: 300 commands a
/// page, with links to the others, and the last page shows the last one.
#[test]
fn a_run_page_of_a_run_with_3000_commands_is_under_the_page_budget() {
    let root = Root::new();
    root.write_config("{:ci {:sandbox :none}}");
    let server = root.serve();
    root.push_pipeline(
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :many [:quire/push] (fn [{: sh}] (for [i 1 3000] (sh ["echo" (.. "line-" i)]))))
"#,
        "main",
    );
    let id = root.wait_run_count("app.git", 1).remove(0);
    let finished = root.wait_for(&format!("run {id} of 3000 commands to finish"), 300, || {
        root.db()
            .query_row(
                "SELECT state, failure_kind FROM runs WHERE id = ?1 AND state IN ('complete','failed','superseded')",
                [&id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .ok()
    });
    assert_eq!(finished, ("complete".to_string(), None), "{}", root.server_log());
    assert_eq!(count_rows(&root, "SELECT count(*) FROM sh_events WHERE run_id = ?1", &id), 3000);

    let (status, page) = get(&format!("{}/runs/{id}", server.url));
    assert_eq!(status, 200);
    assert!(page.len() < 2 * 1024 * 1024, "the first page is {} bytes", page.len());
    assert!(page.contains("commands 1–300 of 3000"), "{}", page.chars().take(4000).collect::<String>());
    assert!(page.contains(&format!("/runs/{id}?from=300")), "a link to the next commands");
    assert!(page.contains("line-300") && !page.contains("line-301"), "commands 1 to 300 only");

    let (status, last) = get(&format!("{}/runs/{id}?from=2700", server.url));
    assert_eq!(status, 200);
    assert!(last.len() < 2 * 1024 * 1024, "the last page is {} bytes", last.len());
    assert!(last.contains("commands 2701–3000 of 3000"), "{}", last.chars().take(4000).collect::<String>());
    assert!(last.contains("line-3000"), "the last page shows the last command");
    assert!(last.contains(&format!("/runs/{id}?from=2400")), "a link to the earlier commands");
}

// ---------------------------------------------------------------------------
// Retention.
// ---------------------------------------------------------------------------

/// With `:keep-runs 2`, the runs past the newest two are deleted, rows and
/// directories, as runs finish; the newest run and the badge stay.
#[test]
fn retention_prunes_old_runs_and_keeps_the_latest() {
    let root = Root::new();
    root.write_config("{:ci {:retention {:keep-runs 2}}}");
    let server = root.serve();
    let work = root.repo("app.git");
    work.pipeline(TRIVIAL);
    let ids: Vec<String> =
        (1..=5).map(|n| push_and_finish(&root, &work, "main", &format!("commit {n}"))).collect();

    let (pruned, kept) = ids.split_at(3);
    root.wait_for("retention to leave two runs", 30, || (root.run_ids("app.git").len() <= 2).then_some(()));
    assert_eq!(
        root.run_ids("app.git"),
        kept,
        "the newest two runs are kept\nserver log:\n{}",
        root.server_log()
    );
    root.wait_for("the pruned runs' directories to go", 30, || {
        pruned.iter().all(|id| !run_dir(&root, "app.git", id).exists()).then_some(())
    });
    for id in pruned {
        for table in ["jobs", "sh_events"] {
            let sql = format!("SELECT count(*) FROM {table} WHERE run_id = ?1");
            assert_eq!(count_rows(&root, &sql, id), 0, "{table} rows of pruned run {id} are gone");
        }
    }
    for id in kept {
        assert!(run_dir(&root, "app.git", id).exists(), "kept run {id} keeps its directory");
        assert_eq!(count_rows(&root, "SELECT count(*) FROM jobs WHERE run_id = ?1", id), 1, "run {id}");
    }
    let (status, svg) = get(&format!("{}/app.git/badge.svg?ref=refs/heads/main", server.url));
    assert_eq!(status, 200);
    assert!(svg.contains("ci: passing"), "{svg}");
}

/// The run ids a `quire ci prune` output lists after `verb`.
fn listed(out: &str, verb: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| line.strip_prefix(verb)?.split_whitespace().next())
        .filter(|id| id.len() == 36)
        .map(str::to_string)
        .collect()
}

/// `quire ci prune --dry-run` lists what the policy would delete and
/// deletes nothing; `quire ci prune` then deletes exactly those, sparing
/// the newest run and each ref's badge run.
#[test]
fn prune_dry_run_lists_and_deletes_nothing_then_prune_deletes_the_same_runs() {
    let root = Root::new();
    let server = root.serve();
    let work = root.repo("app.git");
    work.pipeline(TRIVIAL);
    let main_1 = push_and_finish(&root, &work, "main", "main 1");
    let main_2 = push_and_finish(&root, &work, "main", "main 2");
    let topic = push_and_finish(&root, &work, "topic", "topic");
    let main_3 = push_and_finish(&root, &work, "main", "main 3");
    let all = vec![main_1.clone(), main_2.clone(), topic.clone(), main_3.clone()];
    assert_eq!(root.run_ids("app.git"), all);

    // Retention is configured only now: the CLI reads config.fnl itself.
    root.write_config("{:ci {:retention {:keep-runs 1}}}");
    let dry = root.quire_ok(&["ci", "prune", "app.git", "--dry-run"]);
    assert_eq!(
        listed(&dry, "would prune "),
        [main_1.clone(), main_2.clone()],
        "past the newest run, all but topic's badge run:\n{dry}"
    );
    assert!(dry.trim_end().lines().last().unwrap_or_default().contains("would prune 2 run(s)"), "{dry}");
    assert_eq!(root.run_ids("app.git"), all, "a dry run deletes no row");
    for id in &all {
        assert!(run_dir(&root, "app.git", id).exists(), "a dry run deletes no directory ({id})");
    }

    let real = root.quire_ok(&["ci", "prune", "app.git"]);
    assert_eq!(listed(&real, "pruned "), listed(&dry, "would prune "), "the dry run told the truth:\n{real}");
    assert!(real.trim_end().lines().last().unwrap_or_default().contains("pruned 2 run(s)"), "{real}");
    assert_eq!(root.run_ids("app.git"), [topic.clone(), main_3.clone()]);
    for id in [&main_1, &main_2] {
        assert!(!run_dir(&root, "app.git", id).exists(), "pruned run {id} lost its directory");
        assert_eq!(count_rows(&root, "SELECT count(*) FROM jobs WHERE run_id = ?1", id), 0, "run {id}");
    }
    for id in [&topic, &main_3] {
        assert!(run_dir(&root, "app.git", id).exists(), "kept run {id} keeps its directory");
    }
    let again = root.quire_ok(&["ci", "prune", "app.git"]);
    assert!(again.contains("pruned 0 run(s)"), "a second prune has nothing left to do: {again}");
    for branch in ["main", "topic"] {
        let (_, svg) = get(&format!("{}/app.git/badge.svg?ref=refs/heads/{branch}", server.url));
        assert!(svg.contains("ci: passing"), "{branch}: {svg}");
    }
}

/// A viewer that connects and never reads must cost the others nothing:
/// while it sits on its socket, a run prints 20 MB, another viewer follows
/// the whole run to its `end`, and the server keeps answering.
#[test]
fn a_viewer_that_never_reads_holds_up_neither_the_run_nor_other_viewers() {
    let root = Root::new();
    let (server, gate) = gated_server(&root, "{:ci {:sandbox :none}}");
    root.push_pipeline(
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :loud [:quire/push]
  (fn [{: sh}]
    (sh "echo first; while [ -d \"$GATE\" ] && [ ! -e \"$GATE/open\" ]; do sleep 0.05; done; yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 200000; echo last-line")))
"#,
        "main",
    );
    let id = root.wait_run_count("app.git", 1).remove(0);
    let log = run_dir(&root, "app.git", &id).join("jobs/loud/sh-1.log");
    root.wait_for("the command to start", 30, || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("first")).map(|_| ())
    });
    let stalled = open_stream(&server, &format!("/api/runs/{id}/events"));
    open_gate(&gate);
    let (status, body) = get(&format!("{}/api/runs/{id}/events", server.url));
    assert_eq!(status, 200);
    assert!(body.contains("event: end"), "the reading viewer got to the end");
    assert!(body.contains("last-line") || body.contains("event: gap") || body.contains("event: truncated"));
    assert_eq!(root.wait_finished(&id).0, "complete", "{}", root.server_log());
    let health = health(&server);
    assert_eq!(health["status"], "ok");
    drop(stalled);
}
