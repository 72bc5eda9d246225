//! End to end: a real `quire serve` on a temporary root and a loopback port,
//! real repositories, real `git push`es, real `quire-ci` processes; the
//! assertions read the database, the run directories and the CLI's output.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Root;

const PASSING: &str = r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh : jobs}]
    (sh (.. "echo building " (. (jobs :quire/push) :sha)))
    {:artifact "app"}))
(ci.job :test [:build]
  (fn [{: sh : jobs}]
    (sh ["echo" "testing" (. (jobs :build) :artifact)])
    (sh "echo to-stderr >&2")))
"#;

const NO_SANDBOX: &str = "{:ci {:sandbox :none}}";

const FAILING: &str = r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push] (fn [{: sh}] (sh "echo compiling; exit 2")))
(ci.job :test [:build] (fn [{: sh}] (sh "echo never")))
(ci.job :lint [:quire/push] (fn [{: sh}] (sh "echo lint ok")))
"#;

/// Sleeps long enough to be caught active, unless the branch is `fast`.
/// It leaves its pid in `$MARKER_DIR` so a test can check the process is
/// gone; that needs the host's view of pids and files, so the tests using
/// it run without the sandbox (`NO_SANDBOX`), which has tests of its own.
const SLOW: &str = r#"(local ci (require :quire.ci))
(ci.job :wait [:quire/push]
  (fn [{: sh : jobs}]
    (when (not= (. (jobs :quire/push) :branch) "fast")
      (sh "echo $$ > \"$MARKER_DIR/pid-$(date +%s%N)\"; exec sleep 30"))))
"#;

fn only_run(root: &Root, repo: &str) -> String {
    root.wait_run_count(repo, 1).remove(0)
}

fn rows(root: &Root, sql: &str, id: &str) -> Vec<String> {
    let conn = root.db();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([id], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "-".to_string(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn run_dir(root: &Root, repo: &str, id: &str) -> std::path::PathBuf {
    root.path().join("runs").join(repo).join(id)
}

fn wait_state(root: &Root, id: &str, state: &str) {
    root.wait_for(&format!("run {id} to be {state}"), 30, || {
        let now: String =
            root.db().query_row("SELECT state FROM runs WHERE id = ?1", [id], |r| r.get(0)).ok()?;
        (now == state).then_some(())
    });
}

/// A stand-in executor: a shell script used through `QUIRE_CI_BIN`.
fn fake_executor(dir: &Path, name: &str, script: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn http_get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::blocking::Client::new().get(url);
    if let Some(t) = token {
        request = request.header("Authorization", t);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_passing_pipeline_is_recorded_as_complete() {
    let root = Root::new();
    let _server = root.serve();
    let (_work, sha) = root.push_pipeline("app.git", PASSING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());

    let run = rows(&root, "SELECT repo, ref_name, sha, previous_sha FROM runs WHERE id = ?1", &id);
    assert_eq!(run, [format!("app.git|refs/heads/main|{sha}|-")]);
    assert_eq!(
        rows(&root, "SELECT job_id, state, exit_code FROM jobs WHERE run_id = ?1 ORDER BY position", &id),
        ["build|complete|0", "test|complete|0"]
    );
    assert_eq!(
        rows(
            &root,
            "SELECT job_id, seq, cmd, exit_code FROM sh_events WHERE run_id = ?1 ORDER BY job_id, seq",
            &id
        ),
        [
            format!("build|1|echo building {sha}|0"),
            "test|1|echo testing app|0".into(),
            "test|2|echo to-stderr >&2|0".into()
        ]
    );
    // The rows match the event stream the executor wrote.
    let dir = run_dir(&root, "app.git", &id);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let sh_started = events.lines().filter(|l| l.contains("\"sh_started\"")).count();
    assert_eq!(sh_started, 3);
    assert!(events.trim_end().ends_with(r#""type":"run_finished","outcome":"success"}"#), "{events}");
    let log = std::fs::read_to_string(dir.join("jobs/test/sh-2.log")).unwrap();
    assert!(log.contains(" stderr F to-stderr"), "{log}");
    assert!(!dir.join("workspace").exists(), "the workspace is removed after the run");
    // Timestamps are ordered and stamped.
    let times = rows(
        &root,
        "SELECT queued_at_ms <= started_at_ms AND started_at_ms <= finished_at_ms FROM runs WHERE id = ?1",
        &id,
    );
    assert_eq!(times, ["1"]);

    let shown = root.quire_ok(&["ci", "show", &id]);
    assert!(shown.contains("state     complete"), "{shown}");
    assert!(shown.contains("sh-1  exit 0"), "{shown}");
    let logs = root.quire_ok(&["ci", "logs", &id, "test"]);
    assert!(logs.contains("testing app\n") && logs.contains("to-stderr\n"), "{logs}");
    let listed = root.quire_ok(&["ci", "runs", "app.git"]);
    assert!(listed.contains(&id) && listed.contains("complete"), "{listed}");
}

#[test]
fn a_failing_job_fails_the_run_and_skips_its_dependents() {
    let root = Root::new();
    let _server = root.serve();
    root.push_pipeline("app.git", FAILING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("pipeline-failure".to_string())));
    assert_eq!(
        rows(&root, "SELECT job_id, state, exit_code, started_at_ms IS NULL FROM jobs WHERE run_id = ?1 ORDER BY job_id", &id),
        ["build|failed|2|0", "lint|complete|0|0", "test|skipped|-|1"]
    );
}

#[test]
fn a_compile_error_is_a_pipeline_failure() {
    let root = Root::new();
    let _server = root.serve();
    root.push_pipeline("app.git", "(local ci (require :quire.ci))\n(ci.job :a [:quire/push]\n", "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("pipeline-failure".to_string())));
    let log = std::fs::read_to_string(run_dir(&root, "app.git", &id).join("quire-ci.log")).unwrap();
    assert!(log.contains(".quire/ci.fnl:3"), "the diagnostic names the line: {log}");
    assert!(rows(&root, "SELECT job_id FROM jobs WHERE run_id = ?1", &id).is_empty());
}

/// What a pipeline's top level prints (while quire-ci loads it, alongside
/// the workspace download) lands in the run's quire-ci.log, never in the
/// server's log.
#[test]
fn a_pipelines_top_level_output_goes_to_the_runs_log() {
    let root = Root::new();
    let _server = root.serve();
    let pipeline = "(local ci (require :quire.ci))\n(print \"top-level-says-zq81\")\n\
                    (ci.job :a [:quire/push] (fn [{: sh}] (sh [\"true\"])))\n";
    root.push_pipeline("app.git", pipeline, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
    let log = std::fs::read_to_string(run_dir(&root, "app.git", &id).join("quire-ci.log")).unwrap();
    assert!(log.contains("top-level-says-zq81"), "{log}");
    assert!(!root.server_log().contains("top-level-says-zq81"), "{}", root.server_log());
}

/// A commit dated in the future with many files: GNU tar would warn once
/// per file about its time stamp; enough warnings to fill a pipe must not
/// stall the workspace download.
#[test]
fn a_commit_from_the_future_with_many_files_runs() {
    let root = Root::new();
    let _server = root.serve();
    let work = root.repo("app.git");
    work.pipeline(PASSING);
    for i in 0..2000 {
        work.write(&format!("files/f{i}.txt"), "x\n");
    }
    common::git(work.path(), &["add", "-A"]);
    let committed = std::process::Command::new("git")
        .current_dir(work.path())
        .args(["commit", "-q", "-m", "from the future"])
        .env("GIT_AUTHOR_DATE", "@3786825600 +0000")
        .env("GIT_COMMITTER_DATE", "@3786825600 +0000")
        .status()
        .unwrap();
    assert!(committed.success());
    work.push("main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
}

/// Nothing of the executor's own environment reaches a server run's
/// commands: not the run token, the server's address or the server's pid
/// (`QUIRE__*`), whatever the launcher adds.
#[test]
fn a_server_runs_commands_see_no_quire_variable() {
    let root = Root::new();
    let _server = root.serve();
    let pipeline =
        "(local ci (require :quire.ci))\n(ci.job :env [:quire/push] (fn [{: sh}] (sh [\"env\"])))\n";
    root.push_pipeline("app.git", pipeline, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
    let log = std::fs::read_to_string(run_dir(&root, "app.git", &id).join("jobs/env/sh-1.log")).unwrap();
    assert!(log.contains("PATH="), "the command's environment is in its log: {log}");
    assert!(!log.contains("QUIRE__"), "{log}");
}

#[test]
fn a_crashing_executor_is_process_crashed() {
    let root = Root::new();
    let scripts = common::scripts_dir();
    let bin = fake_executor(scripts.path(), "crash.sh", "echo 'executor exploding' >&2; exit 3");
    let _server = root.serve_with(&[("QUIRE_CI_BIN", &bin)]);
    root.push_pipeline("app.git", PASSING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("process-crashed".to_string())));
    let log = std::fs::read_to_string(run_dir(&root, "app.git", &id).join("quire-ci.log")).unwrap();
    assert!(log.contains("executor exploding"), "{log}");
}

/// A stand-in server-mode executor speaking the HTTP protocol: bootstrap,
/// fetch the workspace, run the real quire-ci on it locally, send its
/// events without the last line (`run_finished`), exit 0.
const TRUNCATING_EXECUTOR: &str = r#"
import base64, io, json, os, subprocess, sys, tarfile, tempfile, urllib.request
url, token = os.environ["QUIRE__SERVER_URL"], os.environ["QUIRE__RUN_TOKEN"]
def call(method, path, body=None):
    request = urllib.request.Request(url + path, data=body, method=method,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return urllib.request.urlopen(request).read()
meta = json.loads(call("GET", "/api/run/bootstrap"))["meta"]
workspace = tempfile.mkdtemp()
tarfile.open(fileobj=io.BytesIO(call("GET", "/api/run/workspace"))).extractall(workspace)
local = {k: v for k, v in os.environ.items() if not k.startswith("QUIRE__")}
events = subprocess.run([os.environ["REAL_QUIRE_CI"], "run", "--workspace", workspace, "--events", "stdout",
    "--sandbox", "none", "--sha", meta["sha"], "--ref", meta["ref"]], capture_output=True, check=True, env=local).stdout
kept = b"".join(events.splitlines(keepends=True)[:-1])
batch = {"chunks": [{"file": "events.jsonl", "offset": 0, "data": base64.b64encode(kept).decode()}]}
call("POST", "/api/run/output", json.dumps(batch).encode())
"#;

#[test]
fn an_executor_exiting_0_without_run_finished_is_process_crashed() {
    let root = Root::new();
    let scripts = common::scripts_dir();
    std::fs::write(scripts.path().join("truncate.py"), TRUNCATING_EXECUTOR).unwrap();
    let bin = fake_executor(
        scripts.path(),
        "truncate.sh",
        &format!("exec python3 '{}'", scripts.path().join("truncate.py").display()),
    );
    let real = common::quire_ci_bin().display().to_string();
    root.write_config("{:ci {:sandbox :none}}");
    let _server = root.serve_with(&[("QUIRE_CI_BIN", &bin), ("REAL_QUIRE_CI", &real)]);
    root.push_pipeline("app.git", PASSING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(
        root.wait_finished(&id),
        ("failed".to_string(), Some("process-crashed".to_string())),
        "{}",
        root.server_log()
    );
    // What the executor did report is still recorded.
    assert_eq!(rows(&root, "SELECT count(*) FROM jobs WHERE run_id = ?1", &id), ["2"]);
    let log = std::fs::read_to_string(run_dir(&root, "app.git", &id).join("quire-ci.log")).unwrap();
    assert!(log.contains("ended without finishing the run"), "{log}");
}

#[test]
fn a_run_exceeding_the_timeout_is_killed() {
    let root = Root::new();
    root.write_config("{:ci {:timeout-secs 2 :sandbox :none}}");
    let markers = tempfile::tempdir().unwrap();
    let _server = root.serve_with(&[("MARKER_DIR", markers.path().to_str().unwrap())]);
    let started = Instant::now();
    root.push_pipeline("app.git", SLOW, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("timeout".to_string())));
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_all_marked_processes_gone(markers.path());
    assert_eq!(
        rows(&root, "SELECT job_id, state FROM jobs WHERE run_id = ?1", &id),
        ["wait|aborted"],
        "the job cut off by the kill is recorded as aborted"
    );
}

/// Every process that wrote a pid marker is gone.
fn assert_all_marked_processes_gone(dir: &Path) {
    common::markers::assert_processes_gone(&common::markers::pids_in(dir));
}

#[test]
fn a_second_push_to_a_ref_supersedes_the_first() {
    let root = Root::new();
    root.write_config(NO_SANDBOX);
    let markers = tempfile::tempdir().unwrap();
    let _server = root.serve_with(&[("MARKER_DIR", markers.path().to_str().unwrap())]);
    let (work, _) = root.push_pipeline("app.git", SLOW, "main");
    let first = only_run(&root, "app.git");
    wait_state(&root, &first, "active");
    root.wait_for("the first run's command", 20, || {
        (std::fs::read_dir(markers.path()).ok()?.count() > 0).then_some(())
    });

    work.pipeline(PASSING);
    work.commit("fix");
    work.push("main");
    let ids = root.wait_run_count("app.git", 2);
    assert_eq!(ids[0], first);
    assert_eq!(root.wait_finished(&first).0, "superseded");
    assert_all_marked_processes_gone(markers.path());
    assert_eq!(root.wait_finished(&ids[1]), ("complete".to_string(), None));
}

#[test]
fn pushes_to_two_refs_both_run() {
    let root = Root::new();
    let _server = root.serve();
    let (work, _) = root.push_pipeline("app.git", PASSING, "main");
    work.push("feature");
    let ids = root.wait_run_count("app.git", 2);
    for id in &ids {
        assert_eq!(root.wait_finished(id), ("complete".to_string(), None));
    }
    let refs = rows(&root, "SELECT group_concat(ref_name, ',') FROM (SELECT ref_name FROM runs WHERE repo = ?1 ORDER BY ref_name)", "app.git");
    assert_eq!(refs, ["refs/heads/feature,refs/heads/main"]);
}

#[test]
fn a_server_killed_mid_run_orphans_it_and_runs_the_queue_after_restart() {
    let root = Root::new();
    root.write_config("{:ci {:max-concurrent-runs 1 :sandbox :none}}");
    let markers = tempfile::tempdir().unwrap();
    let env = [("MARKER_DIR", markers.path().to_str().unwrap())];
    let server = root.serve_with(&env);
    let (work, _) = root.push_pipeline("app.git", SLOW, "main");
    let active = only_run(&root, "app.git");
    // Killed once the server holds the start of the command: what it had
    // received is what the orphaned run shows.
    let events = run_dir(&root, "app.git", &active).join("events.jsonl");
    root.wait_for("the command's start on the server", 20, || {
        std::fs::read_to_string(&events).ok()?.contains("sh_started").then_some(())
    });
    work.push("fast");
    let queued = root.wait_run_count("app.git", 2)[1].clone();
    wait_state(&root, &queued, "pending");

    server.kill();
    // The executor dies with the server rather than running unsupervised.
    assert_all_marked_processes_gone(markers.path());

    let _server = root.serve_with(&env);
    assert_eq!(root.wait_finished(&active), ("failed".to_string(), Some("orphaned".to_string())));
    assert_eq!(root.wait_finished(&queued), ("complete".to_string(), None));
    // What the orphaned run did before the server died is recorded, and
    // its executor's directory is gone.
    assert_eq!(rows(&root, "SELECT job_id, state FROM jobs WHERE run_id = ?1", &active), ["wait|aborted"]);
    assert!(!root.path().join("executors").join(&active).exists());
}

/// The pids of confined executors working for the data root `root`.
fn confined_executors(root: &Root) -> Vec<String> {
    let needle = format!("--hide\0{}\0", root.path().display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmd| {
                cmd.starts_with(b"/tmp/.quire-ci-executor\0")
                    && String::from_utf8_lossy(&cmd).contains(&needle)
            })
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_data_root_in_a_private_directory_still_runs_confined() {
    // The executor is nobody: the way down to its own directory is made
    // again inside its sandbox.
    let root = Root::in_private_dir();
    let _server = root.serve();
    root.push_pipeline("app.git", PASSING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None), "{}", root.server_log());
}

#[test]
fn a_confined_executor_dies_with_a_killed_server() {
    let root = Root::new();
    let server = root.serve();
    root.push_pipeline(
        "app.git",
        "(local ci (require :quire.ci))\n(ci.job :wait [:quire/push] (fn [{: sh}] (sh \"echo started; sleep 300\")))\n",
        "main",
    );
    let run = only_run(&root, "app.git");
    let log = run_dir(&root, "app.git", &run).join("jobs/wait/sh-1.log");
    root.wait_for("the command to start", 30, || {
        std::fs::read_to_string(&log).ok()?.contains("started").then_some(())
    });
    assert_eq!(confined_executors(&root).len(), 1, "the executor runs confined as nobody");
    server.kill();
    // Its sandbox gets the server's death signal, the executor its
    // sandbox's (which it set itself: the switch to nobody clears one).
    root.wait_for("the executor to die with the server", 30, || {
        confined_executors(&root).is_empty().then_some(())
    });
}

/// Starts a server and stops it once it is listening, leaving a migrated
/// database behind.
fn serve_once(root: &Root) {
    root.serve().kill();
}

#[test]
fn a_push_while_the_server_is_down_is_queued_in_the_database_and_runs_when_it_starts() {
    let root = Root::new();
    serve_once(&root);
    let work = root.repo("app.git");
    work.pipeline(PASSING);
    work.commit("pipeline");
    let said = work.push("main");
    assert!(
        said.contains("quire server is not running") && said.contains("queued"),
        "the hook warns: {said}"
    );
    let id = only_run(&root, "app.git");
    wait_state(&root, &id, "pending");
    let _server = root.serve();
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None));
}

/// Only `quire serve` creates and migrates the database, so a push to a
/// root whose server never ran goes to the spool, and the first server
/// start queues and runs it.
#[test]
fn a_push_before_any_server_ran_is_spooled_and_runs_at_the_first_start() {
    let root = Root::new();
    let work = root.repo("app.git");
    work.pipeline(PASSING);
    let sha = work.commit("pipeline");
    let said = work.push("main");
    assert!(said.contains("saved in the spool"), "the hook says where the push went: {said}");
    assert!(!root.path().join("quire.db").exists(), "the hook creates no database");
    let spooled = std::fs::read_dir(root.path().join("spool")).unwrap().count();
    assert_eq!(spooled, 1);

    let _server = root.serve();
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None));
    assert_eq!(rows(&root, "SELECT sha FROM runs WHERE id = ?1", &id), [sha]);
    assert_eq!(
        std::fs::read_dir(root.path().join("spool")).unwrap().count(),
        0,
        "replayed once, then removed"
    );
}

#[test]
fn operator_commands_never_create_or_migrate_the_database() {
    let root = Root::new();
    let out = root.quire(&["ci", "runs"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("no database") && said.contains("quire serve"), "{said}");
    assert!(!root.path().join("quire.db").exists());

    serve_once(&root);
    root.db().pragma_update(None, "user_version", 999).unwrap();
    let out = root.quire(&["ci", "runs"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("schema version 999") && said.contains("newer quire"), "{said}");
}

#[test]
fn deleting_a_ref_starts_nothing() {
    let root = Root::new();
    let _server = root.serve();
    let (work, _) = root.push_pipeline("app.git", PASSING, "main");
    work.push("doomed");
    let ids = root.wait_run_count("app.git", 2);
    for id in &ids {
        root.wait_finished(id);
    }
    // git waits for the post-receive hook, and the hook for the server's
    // answer, so once the push returns every run it caused is queued.
    let said = work.push_refspec(":refs/heads/doomed");
    assert!(!said.contains("queued"), "the hook queued nothing: {said}");
    assert_eq!(root.run_ids("app.git").len(), 2);
}

/// With `max-concurrent-runs 1`, two runs pushed together run one after
/// the other: their active spans never overlap.
#[test]
fn max_concurrent_runs_of_one_never_lets_two_runs_overlap() {
    let root = Root::new();
    root.write_config("{:ci {:max-concurrent-runs 1 :sandbox :none}}");
    let _server = root.serve();
    let pipeline =
        "(local ci (require :quire.ci))\n(ci.job :nap [:quire/push] (fn [{: sh}] (sh \"sleep 1\")))\n";
    let (work, _) = root.push_pipeline("app.git", pipeline, "main");
    work.push("other");
    let ids = root.wait_run_count("app.git", 2);
    let mut spans: Vec<(i64, i64)> = ids
        .iter()
        .map(|id| {
            assert_eq!(root.wait_finished(id), ("complete".to_string(), None));
            root.db()
                .query_row("SELECT started_at_ms, finished_at_ms FROM runs WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap()
        })
        .collect();
    spans.sort();
    let (first, second) = (spans[0], spans[1]);
    assert!(first.1 - first.0 >= 1000 && second.1 - second.0 >= 1000, "each run slept: {spans:?}");
    assert!(first.1 <= second.0, "the second run started only after the first finished: {spans:?}");
}

/// Captures each run token the server hands out, then runs the real
/// executor.
fn token_recorder(root: &Root) -> String {
    let real = common::quire_ci_bin().display().to_string();
    let tokens = root.path().join("tokens");
    fake_executor(
        root.path(),
        "record.sh",
        &format!("echo \"$QUIRE__RUN_TOKEN\" >> '{}'\nexec '{real}' \"$@\"", tokens.display()),
    )
}

#[test]
fn run_tokens_authenticate_only_their_own_live_run() {
    let root = Root::new();
    root.write_config("{:secrets {:deploy-token \"s3cr3t-value\"} :ci {:sandbox :none}}");
    let markers = tempfile::tempdir().unwrap();
    let server = root.serve_with(&[
        ("QUIRE_CI_BIN", &token_recorder(&root)),
        ("MARKER_DIR", markers.path().to_str().unwrap()),
    ]);
    let (_work, sha) = root.push_pipeline("app.git", SLOW, "main");
    let id = only_run(&root, "app.git");
    wait_state(&root, &id, "active");
    let token = std::fs::read_to_string(root.path().join("tokens")).unwrap().trim().to_string();
    assert!(token.len() >= 32);
    let url = |path: &str| format!("{}{path}", server.url);

    for (header, what) in
        [(None, "no token"), (Some("Token abc"), "malformed"), (Some("Bearer wrong"), "wrong token")]
    {
        let (status, body) = http_get(&url("/api/run/bootstrap"), header);
        assert_eq!(status, 401, "{what}");
        assert!(body["error"].is_string(), "{what}: {body}");
        assert_eq!(http_get(&url("/api/run/secrets/deploy-token"), header).0, 401, "{what}");
    }
    let bearer = format!("Bearer {token}");
    let (status, body) = http_get(&url("/api/run/bootstrap"), Some(&bearer));
    assert_eq!(status, 200);
    assert_eq!(body["run_id"], id.as_str(), "a token yields its own run");
    assert_eq!(body["repo"], "app.git");
    assert_eq!(body["meta"]["sha"], sha.as_str());
    assert_eq!(body["meta"]["ref"], "refs/heads/main");
    let (status, body) = http_get(&url("/api/run/secrets/deploy-token"), Some(&bearer));
    assert_eq!((status, body["value"].as_str()), (200, Some("s3cr3t-value")));
    let (status, body) = http_get(&url("/api/run/secrets/undeclared"), Some(&bearer));
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("undeclared"));

    root.quire_ok(&["ci", "cancel", &id]);
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("canceled".to_string())));
    assert_eq!(http_get(&url("/api/run/bootstrap"), Some(&bearer)).0, 401, "the token died with the run");
    assert_eq!(http_get(&url("/api/run/secrets/deploy-token"), Some(&bearer)).0, 401);
    assert_eq!(http_get(&url("/api/nope"), None).0, 404);
}

#[test]
fn secrets_reach_the_pipeline_and_are_redacted() {
    let root = Root::new();
    root.write_config("{:secrets {:deploy-token \"hunter2-very-secret\"}}");
    let _server = root.serve();
    let pipeline = r#"(local ci (require :quire.ci))
(ci.job :deploy [:quire/push]
  (fn [{: sh : secret}]
    (let [token (secret :deploy-token)]
      (sh (.. "echo using " token))
      (sh ["test" token "=" "hunter2-very-secret"]))))
"#;
    root.push_pipeline("app.git", pipeline, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id), ("complete".to_string(), None));
    let dir = run_dir(&root, "app.git", &id);
    let log = std::fs::read_to_string(dir.join("jobs/deploy/sh-1.log")).unwrap();
    assert!(log.contains("stdout F using ***"), "{log}");
    for entry in common::files_below(&dir) {
        let text = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains("hunter2-very-secret"),
            "secret leaked into {}",
            entry.display()
        );
    }
    assert_eq!(
        rows(&root, "SELECT cmd FROM sh_events WHERE run_id = ?1 ORDER BY seq", &id),
        ["echo using ***", "test *** = ***"]
    );
}

#[test]
fn a_malformed_socket_message_is_refused_and_the_server_keeps_working() {
    let root = Root::new();
    let _server = root.serve();
    let socket = root.path().join("server.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for garbage in [
        "this is not json\n",
        "{\"type\":\"push\",\"repo\":\"../../etc.git\",\"pushed_at_ms\":1,\"refs\":[]}\n",
        "{\"type\":\"launch\"}\n",
    ] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.write_all(garbage.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).unwrap();
        assert!(answer.contains("\"error\""), "{garbage:?} got {answer}");
    }
    // A connection that sends nothing at all does not wedge the listener.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = String::new();
    let _ = silent.read_to_string(&mut rest);

    root.push_pipeline("app.git", PASSING, "main");
    let id = only_run(&root, "app.git");
    assert_eq!(root.wait_finished(&id).0, "complete");
}

#[test]
fn cancel_fails_the_run_and_retrigger_queues_the_refs_current_commit() {
    let root = Root::new();
    root.write_config(NO_SANDBOX);
    let markers = tempfile::tempdir().unwrap();
    let _server = root.serve_with(&[("MARKER_DIR", markers.path().to_str().unwrap())]);
    let (_work, sha) = root.push_pipeline("app.git", SLOW, "main");
    let id = only_run(&root, "app.git");
    wait_state(&root, &id, "active");
    // Active is not yet running: cancel once the command has marked itself,
    // so there is a process whose end the test can check.
    root.wait_for("the command to start", 30, || {
        (!common::markers::pids_in(markers.path()).is_empty()).then_some(())
    });
    let said = root.quire_ok(&["ci", "cancel", &id[..13]]);
    assert!(said.contains("canceled"), "{said}");
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("canceled".to_string())));
    assert_all_marked_processes_gone(markers.path());
    let again = root.quire(&["ci", "cancel", &id]);
    assert!(!again.status.success(), "canceling a finished run is refused");

    let said = root.quire_ok(&["ci", "retrigger", "app.git", "main"]);
    assert!(said.contains(&sha), "{said}");
    let ids = root.wait_run_count("app.git", 2);
    assert_eq!(
        rows(&root, "SELECT sha, ref_name FROM runs WHERE id = ?1", &ids[1]),
        [format!("{sha}|refs/heads/main")]
    );
    root.quire_ok(&["ci", "cancel", &ids[1]]);
    assert_eq!(root.wait_finished(&ids[1]).1.as_deref(), Some("canceled"));

    let missing = root.quire(&["ci", "retrigger", "app.git", "nope"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no ref refs/heads/nope"));
}

#[test]
fn repositories_are_created_listed_and_removed_with_valid_names_only() {
    let root = Root::new();
    root.quire_ok(&["repo", "new", "one.git"]);
    root.quire_ok(&["repo", "new", "team/two.git"]);
    assert_eq!(root.quire_ok(&["repo", "list"]), "one.git\nteam/two.git\n");
    for bad in ["../evil.git", "noext", "a/b/c.git", "sp ace.git"] {
        let out = root.quire(&["repo", "new", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid repository name"), "{bad}");
    }
    assert!(!root.quire(&["repo", "new", "one.git"]).status.success(), "no duplicates");
    root.quire_ok(&["repo", "rm", "team/two.git"]);
    assert_eq!(root.quire_ok(&["repo", "list"]), "one.git\n");
}

#[test]
fn a_broken_config_is_a_startup_error_naming_file_and_line() {
    let root = Root::new();
    root.write_config("{:listen \"127.0.0.1:0\"\n :ci {:max-concurrent-runs \"lots\"}}");
    let out = root.quire(&["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.fnl:2"), "{err}");
    assert!(err.contains(":max-concurrent-runs must be a positive whole number"), "{err}");
}

/// A stand-in Sentry: accepts envelopes over HTTP and keeps their bodies.
struct FakeSentry {
    dsn: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeSentry {
    fn start() -> FakeSentry {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dsn = format!("http://publickey@{}/1", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                sink.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
            }
        });
        FakeSentry { dsn, received }
    }

    fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

#[test]
fn operational_errors_reach_sentry_and_pipeline_failures_do_not() {
    let sentry = FakeSentry::start();
    let root = Root::new();
    root.write_config(&format!("{{:sentry {{:dsn \"{}\"}}}}", sentry.dsn));
    {
        let server = root.serve();
        root.push_pipeline("app.git", FAILING, "main");
        let id = only_run(&root, "app.git");
        assert_eq!(root.wait_finished(&id).1.as_deref(), Some("pipeline-failure"));
        // A graceful stop flushes the Sentry client before the process
        // exits, so whatever the failing run reported has arrived by now.
        server.stop();
        let events: Vec<String> =
            sentry.bodies().into_iter().filter(|b| b.contains("\"type\":\"event\"")).collect();
        assert!(events.is_empty(), "a failing pipeline is not an operational error: {events:?}");
    }
    let _server = root.serve_with(&[("QUIRE_CI_BIN", "/nonexistent/quire-ci")]);
    root.push_pipeline("other.git", PASSING, "main");
    let id = only_run(&root, "other.git");
    assert_eq!(root.wait_finished(&id).1.as_deref(), Some("process-crashed"));
    root.wait_for("a Sentry event", 20, || {
        sentry.bodies().into_iter().any(|b| b.contains("launching the executor failed")).then_some(())
    });

    // quire-ci reports its own operational failures to the DSN it is given.
    let workspace = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::quire_ci_bin())
        .args([
            "run",
            "--sha",
            "1",
            "--ref",
            "refs/heads/x",
            "--events",
            "/nonexistent/events.jsonl",
            "--workspace",
        ])
        .arg(workspace.path())
        .env("QUIRE__SENTRY_DSN", &sentry.dsn)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    root.wait_for("quire-ci's Sentry event", 20, || {
        sentry.bodies().into_iter().any(|b| b.contains("cannot write the events file")).then_some(())
    });
}

/// Two jobs in flight, each with a command that would run for 30 s.
const TWO_SLOW_JOBS: &str = r#"(local ci (require :quire.ci))
(each [_ id (ipairs [:one :two])]
  (ci.job id [:quire/push]
    (fn [{: sh}] (sh "echo $$ > \"$MARKER_DIR/pid-$(date +%s%N)\"; exec sleep 30"))))
"#;

/// Starts a server with `config`, pushes [`TWO_SLOW_JOBS`] and waits until
/// both commands run; returns the run id and the markers' directory.
fn two_jobs_in_flight(root: &Root, config: &str) -> (common::Server, String, tempfile::TempDir) {
    root.write_config(config);
    let markers = tempfile::tempdir().unwrap();
    let server = root.serve_with(&[("MARKER_DIR", markers.path().to_str().unwrap())]);
    root.push_pipeline("app.git", TWO_SLOW_JOBS, "main");
    let id = only_run(root, "app.git");
    root.wait_for("both jobs' commands", 20, || {
        (std::fs::read_dir(markers.path()).ok()?.count() == 2).then_some(())
    });
    (server, id, markers)
}

/// Cancelling a run with several jobs in flight leaves none of their
/// processes behind.
#[test]
fn cancelling_a_run_with_two_jobs_in_flight_leaves_no_process_behind() {
    let root = Root::new();
    let (_server, id, markers) = two_jobs_in_flight(&root, "{:ci {:sandbox :none :max-parallel-jobs 2}}");
    root.quire_ok(&["ci", "cancel", &id]);
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("canceled".to_string())));
    assert_all_marked_processes_gone(markers.path());
}

/// A run timing out with several jobs in flight leaves none of their
/// processes behind, and both jobs are recorded as cut off.
#[test]
fn a_run_timing_out_with_two_jobs_in_flight_leaves_no_process_behind() {
    let root = Root::new();
    let config = "{:ci {:sandbox :none :max-parallel-jobs 2 :timeout-secs 2}}";
    let (_server, id, markers) = two_jobs_in_flight(&root, config);
    assert_eq!(root.wait_finished(&id), ("failed".to_string(), Some("timeout".to_string())));
    assert_all_marked_processes_gone(markers.path());
    assert_eq!(
        rows(&root, "SELECT job_id, state FROM jobs WHERE run_id = ?1 ORDER BY job_id", &id),
        ["one|aborted", "two|aborted"]
    );
}
