//! The executors' HTTP API against a real `quire serve`: the test itself
//! speaks for a run's executor (a stand-in script only tells its run token
//! on stderr and waits), sending output, heartbeats and workspace requests
//! the way a well-behaved or a hostile `quire-ci` would; the assertions
//! read the answers, the run directory and the database.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};

use common::Root;

/// The test talks for the executor: silence must not end the run.
const TALKING: &str = "{:ci {:heartbeat-timeout-secs 600 :sandbox :none}}";

/// A stand-in executor that tells its token and waits to be ended.
const TELL_AND_WAIT: &str = "echo \"test-token:[$QUIRE__RUN_TOKEN]\" >&2\nexec sleep 300";

const PIPELINE: &str =
    "(local ci (require :quire.ci))\n(ci.job :build [:quire/push] (fn [{: sh}] (sh \"echo hi\")))\n";

const OUTPUT: &str = "/api/run/output";
const HEARTBEAT: &str = "/api/run/heartbeat";
const WORKSPACE: &str = "/api/run/workspace";
const BOOTSTRAP: &str = "/api/run/bootstrap";

/// What a stand-in does first: what quire-ci does when the launcher asks
/// it to (`--drop-to-nobody`: as root, the confined executor switches to
/// nobody before anything else). The real executor's own switch is
/// checked by `the_real_executor_gives_up_root_in_every_thread`.
const DROP_LIKE_QUIRE_CI: &str = r#"case " $* " in *" --drop-to-nobody "*) [ "$(id -u)" = 0 ] &&
  exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$0" "$@";;
esac"#;

/// Writes a stand-in executor (`#!/bin/sh` + `script`) into `dir`.
fn stand_in(dir: &Path, script: &str) -> String {
    let path = dir.join("stand-in.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{DROP_LIKE_QUIRE_CI}\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Starts a server whose executors are the stand-in `script`; the script's
/// directory lives as long as the returned TempDir.
fn serve_stand_in(root: &Root, script: &str, env: &[(&str, &str)]) -> (common::Server, tempfile::TempDir) {
    let scripts = common::scripts_dir();
    let bin = stand_in(scripts.path(), script);
    let mut all: Vec<(&str, &str)> = vec![("QUIRE_CI_BIN", bin.as_str())];
    all.extend_from_slice(env);
    let server = root.serve_with(&all);
    (server, scripts)
}

/// What the stand-in wrote to stderr as `key:[value]` (the server logs
/// each line as `quire-ci: <line>`), once it is there.
fn told(root: &Root, key: &str) -> String {
    let needle = format!("{key}:[");
    root.wait_for(&format!("the stand-in to tell {key}"), 30, || {
        let log = root.server_log();
        let start = log.find(&needle)? + needle.len();
        let len = log[start..].find(']')?;
        Some(log[start..start + len].to_string())
    })
}

fn run_dir(root: &Root, id: &str) -> PathBuf {
    root.path().join("runs").join("app.git").join(id)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn run_state(root: &Root, id: &str) -> String {
    root.db().query_row("SELECT state FROM runs WHERE id = ?1", [id], |r| r.get(0)).unwrap()
}

/// An HTTP answer.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A refusal in the API's shape: `{"error": "<something>"}`.
    fn is_json_error(&self) -> bool {
        self.content_type.starts_with("application/json")
            && self.json()["error"].as_str().is_some_and(|e| !e.is_empty())
    }
}

fn send(
    method: Method,
    url: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> reqwest::Result<Answer> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut request = client.request(method, url);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    if let Some(body) = body {
        request = request.header("Content-Type", "application/json").body(body);
    }
    let response = request.send()?;
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = response.bytes()?.to_vec();
    Ok(Answer { status, content_type, body })
}

/// The test in the executor's seat: the server, the run and its token.
struct Seat {
    url: String,
    id: String,
    token: String,
}

impl Seat {
    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn call(&self, method: Method, path: &str, authorization: Option<&str>, body: Option<Vec<u8>>) -> Answer {
        let url = format!("{}{path}", self.url);
        send(method, &url, authorization, body).unwrap_or_else(|e| panic!("{path} failed: {e}"))
    }

    fn output(&self, batch: &Value) -> Answer {
        self.output_raw(serde_json::to_vec(batch).unwrap())
    }

    fn output_raw(&self, body: Vec<u8>) -> Answer {
        self.call(Method::POST, OUTPUT, Some(&self.bearer()), Some(body))
    }

    fn heartbeat(&self) -> Answer {
        self.call(Method::POST, HEARTBEAT, Some(&self.bearer()), None)
    }
}

/// The run's token, read from what the stand-in told, used to bootstrap
/// the run (pending → active).
fn take_the_run(root: &Root, server: &common::Server, repo: &str) -> Seat {
    let id = root.wait_run_count(repo, 1).remove(0);
    let token = told(root, "test-token");
    assert_eq!(token.len(), 64, "a run token: {token:?}");
    let seat = Seat { url: server.url.clone(), id, token };
    let booted = seat.call(Method::GET, BOOTSTRAP, Some(&seat.bearer()), None);
    assert_eq!(booted.status, 200, "bootstrap: {}", booted.text());
    assert_eq!(booted.json()["run_id"], seat.id.as_str());
    assert_eq!(run_state(root, &seat.id), "active");
    seat
}

/// A server with `config`, a pushed pipeline and its run, active, with the
/// test in the executor's seat (the stand-in runs `script`).
fn live_run(root: &Root, config: &str, script: &str) -> (common::Server, tempfile::TempDir, Seat) {
    root.write_config(config);
    let (server, scripts) = serve_stand_in(root, script, &[]);
    root.push_pipeline("app.git", PIPELINE, "main");
    let seat = take_the_run(root, &server, "app.git");
    (server, scripts, seat)
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn chunk(file: &str, offset: u64, data: &[u8]) -> Value {
    json!({ "file": file, "offset": offset, "data": b64(data) })
}

fn batch(chunks: Vec<Value>) -> Value {
    json!({ "chunks": chunks })
}

/// Every file and directory below `dir`, without following links.
fn entries_below(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        found.insert(path.clone());
        if is_dir {
            found.extend(entries_below(&path));
        }
    }
    found
}

/// Resending, overlapping and concurrent duplicate chunks land exactly
/// once and in order; a chunk past the end is refused with 409 and `have`,
/// the offset to resume from, and the chunks before it stay written.
#[test]
fn output_is_appended_once_in_order_and_tells_where_to_resume() {
    let root = Root::new();
    let (_server, _scripts, seat) = live_run(&root, TALKING, TELL_AND_WAIT);
    let dir = run_dir(&root, &seat.id);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();

    let first =
        batch(vec![chunk("events.jsonl", 0, b"{\"a\":1}\n"), chunk("jobs/build/sh-1.log", 0, b"one\n")]);
    for attempt in ["sent", "sent again"] {
        let answer = seat.output(&first);
        assert_eq!(answer.status, 200, "{attempt}: {}", answer.text());
        assert_eq!(answer.json(), json!({ "cancel": null }), "{attempt}");
        assert_eq!(read("events.jsonl"), "{\"a\":1}\n", "{attempt}");
        assert_eq!(read("jobs/build/sh-1.log"), "one\n", "{attempt}");
    }

    // Chunks starting inside what the server holds: only their tails land;
    // one wholly held is a no-op.
    let answer = seat.output(&batch(vec![
        chunk("events.jsonl", 5, b"1}\n{\"b\":2}\n"),
        chunk("jobs/build/sh-1.log", 2, b"e\ntwo\n"),
        chunk("jobs/build/sh-1.log", 0, b"on"),
    ]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(read("events.jsonl"), "{\"a\":1}\n{\"b\":2}\n");
    assert_eq!(read("jobs/build/sh-1.log"), "one\ntwo\n");

    // The same new chunk sent by several retrying connections at once is
    // written once.
    let again = batch(vec![chunk("jobs/build/sh-1.log", 8, b"three\n")]);
    let (seat_ref, again_ref) = (&seat, &again);
    std::thread::scope(|scope| {
        let senders: Vec<_> =
            (0..8).map(|_| scope.spawn(move || seat_ref.output(again_ref).status)).collect();
        for sender in senders {
            assert_eq!(sender.join().unwrap(), 200);
        }
    });
    assert_eq!(read("jobs/build/sh-1.log"), "one\ntwo\nthree\n");

    // A gap: 409 with where to resume; the chunk before it is written.
    let answer = seat.output(&batch(vec![
        chunk("quire-ci.log", 0, b"started\n"),
        chunk("events.jsonl", 100, b"{\"c\":3}\n"),
    ]));
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert!(answer.is_json_error(), "{}", answer.text());
    let refusal = answer.json();
    assert_eq!(refusal["file"], "events.jsonl");
    assert_eq!(refusal["have"], json!(16));
    assert_eq!(read("events.jsonl"), "{\"a\":1}\n{\"b\":2}\n", "nothing of the refused chunk is written");
    assert_eq!(read("quire-ci.log"), "started\n", "chunks before the refused one stay written");

    // Resuming where the server said completes the file.
    let have = refusal["have"].as_u64().unwrap();
    let answer = seat.output(&batch(vec![chunk("events.jsonl", have, b"{\"c\":3}\n")]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(read("events.jsonl"), "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");

    // A file the server has nothing of resumes at 0.
    let answer = seat.output(&batch(vec![chunk("jobs/test/job.log", 7, b"late\n")]));
    assert_eq!(answer.status, 409, "{}", answer.text());
    assert_eq!(answer.json()["have"], json!(0));
    assert_eq!(read("jobs/test/job.log"), "");

    assert_eq!(std::fs::read(dir.join("events.jsonl")).unwrap(), b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
    assert_eq!(std::fs::read(dir.join("jobs/build/sh-1.log")).unwrap(), b"one\ntwo\nthree\n");
    assert_eq!(std::fs::read(dir.join("quire-ci.log")).unwrap(), b"started\n");
    assert_eq!(run_state(&root, &seat.id), "active");
}

/// A hostile executor cannot name a file outside its run's directory (path
/// traversal, absolute paths, the workspace, odd spellings, NUL bytes) nor
/// get a malformed or oversized body through: each is a 4xx with a JSON
/// error, nothing is written anywhere, and the run goes on.
#[test]
fn hostile_file_names_and_bodies_are_refused_with_a_json_error_and_the_run_goes_on() {
    const MARKER: &[u8] = b"hostile-payload-9b7c";
    let root = Root::new();
    let (_server, _scripts, seat) = live_run(&root, TALKING, TELL_AND_WAIT);
    let dir = run_dir(&root, &seat.id);
    let passwd = std::fs::read("/etc/passwd").ok();
    // What the data root holds outside the run's directory (the server's
    // log and the database's journal files change as a matter of course).
    let outside = || -> BTreeSet<PathBuf> {
        entries_below(root.path())
            .into_iter()
            .filter(|p| !p.starts_with(&dir))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !matches!(name, "server.log" | "quire.db-wal" | "quire.db-shm" | "quire.db-journal")
            })
            .collect()
    };
    let before = outside();

    for name in [
        "../quire.db",
        "../../../quire.db",
        "/etc/passwd",
        "jobs/../../x",
        "jobs/../../../../x",
        "jobs/a/../../x",
        "jobs/a/sh-1.log/../../../x",
        "jobs/%2e%2e/sh-1.log",
        "workspace/x",
        "workspace/.quire/ci.fnl",
        "jobs/a/sh-0.log",
        "jobs/a/sh-01.log",
        "jobs/a/sh--1.log",
        "jobs/a/sh-99999999999.log",
        "jobs/a b/sh-1.log",
        "jobs/a/sh-1.log/",
        "jobs//sh-1.log",
        "jobs/a\0b/sh-1.log",
        "events.jsonl\0",
        "events.jsonl\n",
        "./events.jsonl",
        "quire.db",
        "config.fnl",
        "x",
        "",
    ] {
        let answer = seat.output(&batch(vec![chunk(name, 0, MARKER)]));
        assert_eq!(answer.status, 400, "{name:?}: {}", answer.text());
        assert!(answer.is_json_error(), "{name:?}: {}", answer.text());
        // A valid chunk in the same batch is not written either: the batch
        // is refused whole.
        let answer = seat.output(&batch(vec![chunk("events.jsonl", 0, MARKER), chunk(name, 0, MARKER)]));
        assert_eq!(answer.status, 400, "{name:?} after a valid chunk: {}", answer.text());
    }

    let marker = b64(MARKER);
    let deep = "[".repeat(10_000);
    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"this is not json".to_vec(), 400),
        ("an empty body", Vec::new(), 400),
        ("bytes that are not UTF-8", b"\xff\xfe{\"chunks\":[]}".to_vec(), 400),
        ("a JSON array", b"[]".to_vec(), 400),
        ("null chunks", b"{\"chunks\":null}".to_vec(), 400),
        ("nesting past any depth", deep.into_bytes(), 400),
        ("an unknown field in the batch", format!("{{\"chunks\":[],\"path\":\"{marker}\"}}").into_bytes(), 400),
        (
            "an unknown field in a chunk",
            format!("{{\"chunks\":[{{\"file\":\"events.jsonl\",\"offset\":0,\"data\":\"{marker}\",\"mode\":511}}]}}")
                .into_bytes(),
            400,
        ),
        (
            "data that is not base64",
            b"{\"chunks\":[{\"file\":\"events.jsonl\",\"offset\":0,\"data\":\"%%not base64%%\"}]}".to_vec(),
            400,
        ),
        (
            "a negative offset",
            format!("{{\"chunks\":[{{\"file\":\"events.jsonl\",\"offset\":-1,\"data\":\"{marker}\"}}]}}").into_bytes(),
            400,
        ),
        (
            "an offset that is a string",
            format!("{{\"chunks\":[{{\"file\":\"events.jsonl\",\"offset\":\"0\",\"data\":\"{marker}\"}}]}}")
                .into_bytes(),
            400,
        ),
        (
            "a missing offset",
            format!("{{\"chunks\":[{{\"file\":\"events.jsonl\",\"data\":\"{marker}\"}}]}}").into_bytes(),
            400,
        ),
        (
            "an offset at the end of u64",
            serde_json::to_vec(&batch(vec![chunk("jobs/zz/sh-1.log", u64::MAX, MARKER)])).unwrap(),
            413,
        ),
    ];
    for (what, body, expected) in bodies {
        let answer = seat.output_raw(body);
        assert_eq!(answer.status, expected, "{what}: {}", answer.text());
        assert!(answer.is_json_error(), "{what}: {} {}", answer.content_type, answer.text());
    }

    // A body past the limit (2 MiB + 64 KiB): 3 MiB of base64.
    let oversized =
        serde_json::to_vec(&batch(vec![chunk("events.jsonl", 0, &MARKER.repeat(120_000))])).unwrap();
    assert!(oversized.len() > 3_000_000);
    let oversized_answer =
        match send(Method::POST, &format!("{}{OUTPUT}", seat.url), Some(&seat.bearer()), Some(oversized)) {
            Ok(answer) => Some(answer),
            // The server may answer and close before it has read what the
            // client is still sending; the client then sees a reset.
            Err(e) => {
                eprintln!("the oversized body ended in a transport error: {e}");
                None
            }
        };
    if let Some(answer) = &oversized_answer {
        assert_eq!(answer.status, 413, "an oversized body: {}", answer.text());
    }

    // The run goes on, and only what it may write is written.
    assert_eq!(run_state(&root, &seat.id), "active");
    let heartbeat = seat.heartbeat();
    assert_eq!(heartbeat.status, 200, "{}", heartbeat.text());
    let answer =
        seat.output(&batch(vec![chunk("events.jsonl", 0, b"ok\n"), chunk("jobs/a/sh-1.log", 0, b"fine\n")]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(std::fs::read_to_string(dir.join("events.jsonl")).unwrap(), "ok\n");
    assert_eq!(std::fs::read_to_string(dir.join("jobs/a/sh-1.log")).unwrap(), "fine\n");

    assert_eq!(outside(), before, "nothing appeared in the data root outside the run's directory");
    for stray in ["x", "runs/x", "runs/app.git/x", "jobs", "workspace"] {
        assert!(!root.path().join(stray).exists(), "{stray} was created in the data root");
    }
    assert!(!dir.join("workspace").exists());
    assert!(!dir.join("jobs/zz").exists(), "a refused chunk creates no job directory");
    assert_eq!(std::fs::read("/etc/passwd").ok(), passwd);
    for entry in entries_below(root.path()) {
        let Ok(meta) = std::fs::symlink_metadata(&entry) else { continue };
        if !meta.is_file() {
            continue;
        }
        let content = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !content.windows(MARKER.len()).any(|w| w == MARKER),
            "refused bytes reached {}",
            entry.display()
        );
    }

    // Last, so that everything above is checked whatever this says: the
    // body limit's 413 is a refusal in the API's own shape.
    if let Some(answer) = oversized_answer {
        assert!(
            answer.is_json_error(),
            "an oversized body is refused without the API's JSON error ({}): {:?}",
            answer.content_type,
            answer.text()
        );
    }
}

/// An executor cannot fill the disk through one file: events.jsonl stops at
/// `:max-events-mb`, a command log at `:max-log-mb` + 64 KiB; a chunk that
/// would cross the limit is refused whole (413) and the run goes on.
#[test]
fn a_file_cannot_grow_past_its_limit() {
    const MIB: u64 = 1024 * 1024;
    let root = Root::new();
    let config = "{:ci {:max-events-mb 1 :max-log-mb 1 :heartbeat-timeout-secs 600 :sandbox :none}}";
    let (_server, _scripts, seat) = live_run(&root, config, TELL_AND_WAIT);
    let dir = run_dir(&root, &seat.id);
    let events = dir.join("events.jsonl");
    let bytes = |n: usize, fill: u8| -> Vec<u8> {
        (0..n).map(|i| if i % 100 == 99 { b'\n' } else { fill }).collect()
    };

    let mut expected = Vec::new();
    for (offset, part) in [(0u64, bytes(600_000, b'a')), (600_000, bytes(448_000, b'b'))] {
        let answer = seat.output(&batch(vec![chunk("events.jsonl", offset, &part)]));
        assert_eq!(answer.status, 200, "{}", answer.text());
        expected.extend_from_slice(&part);
    }
    assert_eq!(file_size(&events), 1_048_000, "just under 1 MiB");

    // Crossing the limit: refused, nothing of it written.
    let answer = seat.output(&batch(vec![chunk("events.jsonl", 1_048_000, &bytes(1_000, b'c'))]));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.is_json_error(), "{}", answer.text());
    assert_eq!(answer.json()["file"], "events.jsonl");
    assert!(answer.json()["error"].as_str().unwrap().contains(&MIB.to_string()), "{}", answer.text());
    assert_eq!(file_size(&events), 1_048_000, "the file keeps its size");

    // Up to the limit exactly is fine; one byte more is not.
    let last = bytes((MIB - 1_048_000) as usize, b'd');
    let answer = seat.output(&batch(vec![chunk("events.jsonl", 1_048_000, &last)]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    expected.extend_from_slice(&last);
    assert_eq!(file_size(&events), MIB);
    let answer = seat.output(&batch(vec![chunk("events.jsonl", MIB, b"e")]));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(file_size(&events), MIB);
    // Resending bytes it already holds is still answered as usual.
    let answer = seat.output(&batch(vec![chunk("events.jsonl", 0, &expected[..10])]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(std::fs::read(&events).unwrap(), expected);

    // A command's log: :max-log-mb plus room for quire-ci's closing notes.
    let log_limit = MIB + 64 * 1024;
    let log = dir.join("jobs/build/sh-1.log");
    let answer = seat.output(&batch(vec![chunk("jobs/build/sh-1.log", 0, &bytes(log_limit as usize, b'l'))]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(file_size(&log), log_limit);
    let answer = seat.output(&batch(vec![chunk("jobs/build/sh-1.log", log_limit, b"x")]));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["file"], "jobs/build/sh-1.log");
    assert_eq!(file_size(&log), log_limit);

    assert_eq!(run_state(&root, &seat.id), "active", "the run goes on");
    assert_eq!(seat.heartbeat().status, 200);
}

/// Nobody but the live run's executor gets in: no header, a wrong or
/// mangled token, another scheme, or the hash the database keeps are all
/// 401 with a JSON error; once the run has ended its own token is dead.
/// An executor cannot have the server create files without end: one-byte
/// logs under made-up jobs stop at 2 × `:max-commands` + 1024 files, the
/// refusal is a JSON 413 naming the file, and the run still takes bytes
/// for a file it has.
#[test]
fn a_run_cannot_make_the_server_create_files_without_end() {
    let root = Root::new();
    let config = "{:ci {:max-commands 1 :heartbeat-timeout-secs 600 :sandbox :none}}";
    let (_server, _scripts, seat) = live_run(&root, config, TELL_AND_WAIT);
    let limit = 2 + 1024;
    let chunks: Vec<Value> =
        (0..limit + 50).map(|i| chunk(&format!("jobs/j{i}/sh-1.log"), 0, b"x")).collect();
    let answer = seat.output(&batch(chunks));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.is_json_error(), "{}", answer.text());
    assert_eq!(answer.json()["file"], format!("jobs/j{limit}/sh-1.log"));
    let files = common::files_below(&run_dir(&root, &seat.id).join("jobs"));
    assert_eq!(files.len(), limit, "the files before the limit are kept, none past it");
    // A new file is still refused; a file the run has still grows.
    let answer = seat.output(&batch(vec![chunk("events.jsonl", 0, b"{}\n")]));
    assert_eq!(answer.status, 413, "{}", answer.text());
    let answer = seat.output(&batch(vec![chunk("jobs/j0/sh-1.log", 1, b"y")]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(std::fs::read(run_dir(&root, &seat.id).join("jobs/j0/sh-1.log")).unwrap(), b"xy");
}

#[test]
fn every_executor_endpoint_needs_the_runs_own_live_token() {
    let root = Root::new();
    let (_server, _scripts, seat) = live_run(&root, TALKING, TELL_AND_WAIT);
    let token = seat.token.clone();
    let token_hash: String = root
        .db()
        .query_row("SELECT token_hash FROM runs WHERE id = ?1", [seat.id.as_str()], |r| r.get(0))
        .unwrap();
    let endpoints: Vec<(Method, &str, Option<Vec<u8>>)> = vec![
        (Method::POST, OUTPUT, Some(b"{\"chunks\":[]}".to_vec())),
        (Method::POST, HEARTBEAT, None),
        (Method::GET, WORKSPACE, None),
    ];
    let refusals: Vec<(Option<String>, &str)> = vec![
        (None, "no Authorization header"),
        (Some("Bearer wrong".to_string()), "a wrong token"),
        (Some("Bearer ".to_string()), "an empty token"),
        (Some(format!("Token {token}")), "another scheme"),
        (Some(token.clone()), "the bare token"),
        (Some(format!("Bearer {token}x")), "the token and a byte more"),
        (Some(format!("Bearer {}", &token[..token.len() - 1])), "the token less a byte"),
        (Some(format!("Bearer {token_hash}")), "the hash the database keeps"),
    ];
    for (method, path, body) in &endpoints {
        for (header, what) in &refusals {
            let answer = seat.call(method.clone(), path, header.as_deref(), body.clone());
            assert_eq!(answer.status, 401, "{path} with {what}: {}", answer.text());
            assert!(answer.is_json_error(), "{path} with {what}: {}", answer.text());
        }
        // The run's own token does get in.
        let answer = seat.call(method.clone(), path, Some(&seat.bearer()), body.clone());
        assert_eq!(answer.status, 200, "{path} with the run's token: {}", answer.text());
    }

    root.quire_ok(&["ci", "cancel", &seat.id]);
    assert_eq!(root.wait_finished(&seat.id), ("failed".to_string(), Some("canceled".to_string())));
    let mut after: Vec<(Method, &str, Option<Vec<u8>>)> = endpoints;
    after.push((Method::GET, BOOTSTRAP, None));
    after.push((Method::GET, "/api/run/secrets/anything", None));
    for (method, path, body) in after {
        let answer = seat.call(method, path, Some(&seat.bearer()), body);
        assert_eq!(answer.status, 401, "{path} with the ended run's token: {}", answer.text());
        assert!(answer.is_json_error(), "{path}: {}", answer.text());
    }
    assert_eq!(run_state(&root, &seat.id), "failed", "a dead token cannot bring its run back");
}

/// The workspace is exactly the run's commit, as `git archive` makes it:
/// the files, their contents and the executable bit.
#[test]
fn the_workspace_is_the_commit_as_a_tar_stream() {
    let root = Root::new();
    root.write_config(TALKING);
    let (server, _scripts) = serve_stand_in(&root, TELL_AND_WAIT, &[]);
    let work = root.repo("app.git");
    work.pipeline(PIPELINE);
    work.write("src/a.txt", "alpha\nbeta\n");
    work.write("bin/run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(work.path().join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sha = work.commit("three files");
    work.push("main");
    let seat = take_the_run(&root, &server, "app.git");
    // The process launcher starts the archive with the executor, before
    // anyone asks for it (the stand-in never does): a git child of the
    // server's, running or, the archive being smaller than a pipe, done
    // and not yet reaped.
    let server_pid = server.child.id();
    let git_children = || -> usize {
        std::fs::read_dir(format!("/proc/{server_pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
            .flat_map(|pids| pids.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(" (git) "))
            })
            .count()
    };
    assert_eq!(git_children(), 1, "git archive is under way before the executor asks");
    let answer = seat.call(Method::GET, WORKSPACE, Some(&seat.bearer()), None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.content_type.starts_with("application/x-tar"), "{}", answer.content_type);
    // That one is used up; another request gets a new, identical archive.
    let again = seat.call(Method::GET, WORKSPACE, Some(&seat.bearer()), None);
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.body == answer.body, "a second request gets the same archive");

    let unpacked = tempfile::tempdir().unwrap();
    let archive = unpacked.path().join("workspace.tar");
    std::fs::write(&archive, &answer.body).unwrap();
    let commit = Command::new("git")
        .arg("get-tar-commit-id")
        .stdin(std::fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&commit.stdout).trim(), sha, "the archive is of the run's commit");
    let out = unpacked.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let tar = Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&out).output().unwrap();
    assert!(tar.status.success(), "tar -x: {}", String::from_utf8_lossy(&tar.stderr));

    let mut files: Vec<String> = common::files_below(&out)
        .iter()
        .map(|p| p.strip_prefix(&out).unwrap().display().to_string())
        .collect();
    files.sort();
    assert_eq!(files, [".quire/ci.fnl", "bin/run.sh", "src/a.txt"]);
    assert_eq!(std::fs::read_to_string(out.join(".quire/ci.fnl")).unwrap(), PIPELINE);
    assert_eq!(std::fs::read_to_string(out.join("src/a.txt")).unwrap(), "alpha\nbeta\n");
    assert_eq!(std::fs::read_to_string(out.join("bin/run.sh")).unwrap(), "#!/bin/sh\necho run\n");
    let mode = std::fs::metadata(out.join("bin/run.sh")).unwrap().permissions().mode();
    assert!(mode & 0o111 != 0, "the executable bit survives: {mode:o}");
    let mode = std::fs::metadata(out.join("src/a.txt")).unwrap().permissions().mode();
    assert!(mode & 0o111 == 0, "a plain file stays plain: {mode:o}");
}

/// A token holder cannot have the server start `git archive` processes
/// without bound: two downloads of a run's workspace may be under way at
/// once; a third is refused with a JSON 429 until one of them ends.
#[test]
fn at_most_two_workspace_downloads_of_a_run_are_under_way() {
    use std::io::{Read, Write};
    let root = Root::new();
    root.write_config(TALKING);
    let (server, _scripts) = serve_stand_in(&root, TELL_AND_WAIT, &[]);
    let work = root.repo("app.git");
    work.pipeline(PIPELINE);
    // Larger than what the kernel buffers between the server and a client
    // that does not read: the download stays under way.
    let mut noise = vec![0u8; 48 * 1024 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(work.path().join("noise.bin"), &noise).unwrap();
    work.commit("a big file");
    work.push("main");
    let seat = take_the_run(&root, &server, "app.git");

    let address = seat.url.trim_start_matches("http://").to_string();
    let hold_download = || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let request = format!(
            "GET {WORKSPACE} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
            seat.token
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut start = [0u8; 12];
        stream.read_exact(&mut start).unwrap();
        assert_eq!(&start, b"HTTP/1.1 200", "a download starts");
        stream
    };
    let first = hold_download();
    let second = hold_download();
    let third = seat.call(Method::GET, WORKSPACE, Some(&seat.bearer()), None);
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(third.is_json_error(), "{}", third.text());

    // Once one of them is gone, a download goes through again, whole.
    drop(first);
    let whole = root.wait_for("room for another download", 30, || {
        let answer = seat.call(Method::GET, WORKSPACE, Some(&seat.bearer()), None);
        (answer.status == 200).then_some(answer)
    });
    assert!(whole.body.len() > noise.len(), "the whole archive: {} bytes", whole.body.len());
    drop(second);
}

/// A canceled run's executor hears it at its next contact (heartbeat and
/// output alike), and one that does not stop (it ignores SIGTERM) is
/// killed; the run ends failed/canceled and its token dies.
#[test]
fn a_heartbeat_answers_cancel_once_the_run_is_canceled() {
    let root = Root::new();
    // Like a real executor, the stand-in outlives SIGTERM for a while: it
    // is still there to hear why it is to stop.
    let lingering =
        "echo \"test-token:[$QUIRE__RUN_TOKEN]\" >&2\necho \"test-pid:[$$]\" >&2\ntrap '' TERM\nexec sleep 300";
    let (_server, _scripts, seat) = live_run(&root, TALKING, lingering);
    let pid: i32 = told(&root, "test-pid").parse().unwrap();

    let answer = seat.heartbeat();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({ "cancel": null }));

    root.quire_ok(&["ci", "cancel", &seat.id]);
    let answer = root.wait_for("the heartbeat to answer the cancel", 10, || {
        let answer = seat.heartbeat();
        match answer.status {
            200 if answer.json()["cancel"].is_null() => None,
            _ => Some(answer),
        }
    });
    assert_eq!(answer.status, 200, "the executor, still there, is told why: {}", answer.text());
    assert_eq!(answer.json(), json!({ "cancel": "canceled" }));
    // What it sends on its way out is kept, and the answer says the same.
    let answer = seat.output(&batch(vec![chunk("quire-ci.log", 0, b"stopping\n")]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({ "cancel": "canceled" }));

    assert_eq!(root.wait_finished(&seat.id), ("failed".to_string(), Some("canceled".to_string())));
    common::markers::assert_processes_gone(&[pid]);
    let log = std::fs::read_to_string(run_dir(&root, &seat.id).join("quire-ci.log")).unwrap();
    assert!(log.starts_with("stopping\n"), "{log}");
    let answer = seat.heartbeat();
    assert_eq!(answer.status, 401, "the ended run's token is dead: {}", answer.text());
    assert!(answer.is_json_error(), "{}", answer.text());
}

/// The confined executor (default sandbox: bubblewrap) sees nothing of the
/// data root — no database, no config and its secrets, not even through
/// another process's /proc/<pid>/root — cannot write the host, and can
/// write its own directory.
#[test]
fn the_executor_itself_sees_nothing_of_the_data_root() {
    let has_bwrap = Command::new("sh")
        .args(["-c", "command -v bwrap"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_bwrap {
        eprintln!("skipped: bubblewrap is not installed");
        return;
    }
    const MARKER: &str = "zq-marker-51f0e2";
    // Readable by anyone on the host: only the confinement hides it.
    let root = Root::world_readable();
    root.write_config(&format!("{{:secrets {{:marker \"{MARKER}\"}}}}"));
    let host = tempfile::tempdir_in("/var/tmp").unwrap();
    let real_root = root.path().canonicalize().unwrap().display().to_string();
    let probe = format!(
        r#"r="$PROBE_ROOT"
say() {{ echo "$1:[$2]" >&2; }}
say probe-ls "$(ls -A "$r" 2>&1 | tr '\n' ' ')"
say probe-files "$(find "$r" -type f 2>&1 | tr '\n' ' ')"
say probe-db "$(cat "$r/quire.db" 2>/dev/null | wc -c)"
say probe-config "$(cat "$r/config.fnl" 2>&1 | tr '\n' ' ')"
via=none
for p in /proc/[0-9]*; do
  if grep -q {MARKER} "$p/root$r/config.fnl" 2>/dev/null; then via="$p"; break; fi
done
say probe-proc "$via"
say probe-tmp "$(ls -A /tmp 2>&1 | tr '\n' ' ')"
say probe-id "$(id -u) $(grep CapEff /proc/self/status | tr -d '\t' | tr -d ' ')"
say probe-umount "$(unshare -Urm sh -c "umount -l '$r' 2>&1; umount -l / 2>&1; cat '$r/config.fnl' 2>&1" | tr '\n' ' ')"
if touch "$PROBE_HOST/x-from-executor" 2>/dev/null; then say probe-host written; else say probe-host refused; fi
if touch "$TMPDIR/own-file" 2>/dev/null && test -f "$TMPDIR/own-file"; then say probe-own written; else say probe-own refused; fi
say probe-done yes"#
    );
    let host_dir = host.path().display().to_string();
    let (_server, _scripts) =
        serve_stand_in(&root, &probe, &[("PROBE_ROOT", &real_root), ("PROBE_HOST", &host_dir)]);
    root.push_pipeline("app.git", PIPELINE, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("process-crashed".to_string())));
    told(&root, "probe-done");

    let listed = told(&root, "probe-ls");
    for entry in listed.split_whitespace() {
        assert!(
            ["cache", "executors"].contains(&entry),
            "the executor sees {entry:?} in the data root: {listed}"
        );
    }
    let files = told(&root, "probe-files");
    for file in files.split_whitespace() {
        assert!(
            file.starts_with(&format!("{real_root}/executors/"))
                || file.starts_with(&format!("{real_root}/cache/")),
            "the executor sees the file {file} of the data root"
        );
    }
    assert_eq!(told(&root, "probe-db"), "0", "the database reads as nothing");
    let config = told(&root, "probe-config");
    assert!(!config.contains(MARKER) && !config.contains(":secrets"), "the config is readable: {config}");
    assert_eq!(
        told(&root, "probe-tmp").trim(),
        ".quire-ci-executor",
        "/tmp is a fresh one, with only the executor in it"
    );
    let who = told(&root, "probe-id");
    assert!(
        who.starts_with("65534 ") && who.ends_with("0000000000000000"),
        "the executor is nobody without capabilities: {who}"
    );
    let umount = told(&root, "probe-umount");
    assert!(!umount.contains(MARKER), "unmounting the cover in a user namespace shows the config: {umount}");
    assert!(umount.contains("config.fnl"), "the attempt ran as far as reading: {umount}");
    assert_eq!(told(&root, "probe-host"), "refused", "the host is read-only");
    assert!(!host.path().join("x-from-executor").exists());
    assert_eq!(told(&root, "probe-own"), "written", "its own directory is writable");

    assert!(!root.server_log().contains(MARKER), "the secret reached the server log");
    let quire_ci_log = std::fs::read_to_string(run_dir(&root, &id).join("quire-ci.log"))
        .unwrap_or_else(|e| panic!("no quire-ci.log ({e}):\n{}", root.server_log()));
    assert!(quire_ci_log.contains("probe-done:[yes]"), "its last words are kept: {quire_ci_log}");
    assert!(!quire_ci_log.contains(MARKER), "{quire_ci_log}");
    // Last, so that everything above is checked whatever this says.
    let via = told(&root, "probe-proc");
    assert_eq!(via, "none", "the hidden data root is readable through {via}/root (the host's /proc)");
}

/// The real quire-ci, launched confined by a root server, is `nobody` in
/// every one of its threads, with no capability in any set (bounding and
/// ambient included), no supplementary group and `no_new_privs`: it gives
/// root up itself (`--drop-to-nobody`), before it starts a thread.
#[test]
fn the_real_executor_gives_up_root_in_every_thread() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only a root server has quire-ci give up root");
        return;
    }
    let has_bwrap =
        Command::new("sh").args(["-c", "command -v bwrap"]).output().is_ok_and(|o| o.status.success());
    if !has_bwrap {
        eprintln!("skipped: bubblewrap is not installed");
        return;
    }
    let root = Root::new();
    let _server = root.serve();
    let slow = "(local ci (require :quire.ci))\n(ci.job :wait [:quire/push] (fn [{: sh}] (sh [\"sleep\" \"60\"])))\n";
    root.push_pipeline("app.git", slow, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    let events = run_dir(&root, &id).join("events.jsonl");
    root.wait_for("the command to start", 30, || {
        std::fs::read_to_string(&events).ok().filter(|e| e.contains("\"sh_started\"")).map(|_| ())
    });
    let handle: String =
        root.db().query_row("SELECT executor FROM runs WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    let bwrap: u32 = handle.strip_prefix("process:").unwrap().parse().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{bwrap}/task/{bwrap}/children")).unwrap();
    let executor: Vec<&str> = children.split_whitespace().collect();
    assert_eq!(executor.len(), 1, "bubblewrap runs the executor alone: {children:?}");
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/task", executor[0]))
        .unwrap()
        .map(|task| task.unwrap().path().join("status"))
        .collect();
    assert!(tasks.len() > 3, "the executor runs threads by now: {tasks:?}");
    for task in &tasks {
        let status = std::fs::read_to_string(task).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("no {name} in {}", task.display()))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(field("Uid"), "65534 65534 65534 65534", "{}: {status}", task.display());
        assert_eq!(field("Gid"), "65534 65534 65534 65534", "{}: {status}", task.display());
        assert_eq!(field("Groups"), "", "{}: {status}", task.display());
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(set), "0000000000000000", "{set} of {}: {status}", task.display());
        }
        assert_eq!(field("NoNewPrivs"), "1", "{}: {status}", task.display());
    }
}

/// An executor that bootstraps and then falls silent is given up after
/// `:heartbeat-timeout-secs`: killed, the run failed/process-crashed, and
/// its quire-ci.log says why.
#[test]
fn a_silent_executor_is_given_up_after_the_heartbeat_timeout() {
    let root = Root::new();
    root.write_config("{:ci {:heartbeat-timeout-secs 10 :sandbox :none}}");
    let silent = r#"echo "test-pid:[$$]" >&2
python3 - <<'EOF' || exit 3
import os, urllib.request
request = urllib.request.Request(os.environ["QUIRE__SERVER_URL"] + "/api/run/bootstrap",
    headers={"Authorization": "Bearer " + os.environ["QUIRE__RUN_TOKEN"]})
urllib.request.urlopen(request).read()
EOF
echo "test-bootstrapped:[yes]" >&2
exec sleep 600"#;
    let (_server, _scripts) = serve_stand_in(&root, silent, &[]);
    root.push_pipeline("app.git", PIPELINE, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    let pid: i32 = told(&root, "test-pid").parse().unwrap();
    told(&root, "test-bootstrapped");
    let since = Instant::now();
    assert_eq!(run_state(&root, &id), "active");

    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("process-crashed".to_string())));
    let waited = since.elapsed();
    assert!(waited >= Duration::from_secs(8), "given up before the timeout: {waited:?}");
    let log = std::fs::read_to_string(run_dir(&root, &id).join("quire-ci.log")).unwrap_or_default();
    assert!(log.contains("not heard from"), "{log}");
    common::markers::assert_processes_gone(&[pid]);
}
