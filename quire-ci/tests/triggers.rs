//! Sources and caches in local mode, driven as a developer would: the real
//! `quire-ci` binary on a real git checkout in a temporary directory.
//! Covered: a pipeline with jobs of `:quire/push` and of `:quire/schedule`
//! validates; `quire-ci run --trigger schedule|push` runs only the jobs of
//! that source (the others give no event at all); `--cache-dir DIR` is the
//! `$QUIRE_CACHE_DIR` commands see and keeps what they write, and without
//! it each run gets a fresh, empty directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Jobs of the push, of the schedule, of both, and one downstream of each.
/// `both` says which source started its run.
const SOURCES: &str = r#"(local ci (require :quire.ci))
(ci.job :on-push [:quire/push] (fn [{: sh}] (sh "echo on-push")))
(ci.job :nightly [:quire/schedule]
  (fn [{: sh : jobs}]
    (sh ["echo" (.. "scheduled-at=" (. (jobs :quire/schedule) :scheduled-at))])))
(ci.job :both [:quire/push :quire/schedule]
  (fn [{: sh : jobs}]
    (sh ["echo" (if (jobs :quire/schedule) "started-by-schedule" "started-by-push")])))
(ci.job :summary [:nightly] (fn [{: sh}] (sh "echo summary")))
(ci.job :after-both [:both] (fn [{: sh}] (sh "echo after-both")))
"#;

#[path = "support/checkout.rs"]
mod checkout;
use checkout::Checkout;

/// One finished `quire-ci run --events stdout --out-dir <tmp> EXTRA…`.
struct Run {
    out: Output,
    logs: tempfile::TempDir,
}

impl Run {
    fn of(workspace: &Path, extra: &[&str]) -> Run {
        let logs = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
            .args(["run", "--events", "stdout", "--workspace"])
            .arg(workspace)
            .arg("--out-dir")
            .arg(logs.path())
            .args(extra)
            .env_remove("QUIRE__SERVER_URL")
            .env_remove("QUIRE_CACHE_DIR")
            .output()
            .unwrap();
        Run { out, logs }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn assert_success(&self) {
        assert_eq!(
            self.out.status.code(),
            Some(0),
            "quire-ci run failed:\n{}\n{}",
            String::from_utf8_lossy(&self.out.stdout),
            self.stderr()
        );
        assert_eq!(
            self.events().last().map(|e| e["outcome"].clone()),
            Some(Value::from("success")),
            "the run succeeded:\n{}",
            self.stderr()
        );
    }

    fn events(&self) -> Vec<Value> {
        String::from_utf8_lossy(&self.out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}")))
            .collect()
    }

    /// The ids of the jobs that started, sorted.
    fn started(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .events()
            .iter()
            .filter(|e| e["type"] == "job_started")
            .map(|e| e["job_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// The content of each line of a command's CRI log.
    fn log_lines(&self, job: &str, n: u32) -> Vec<String> {
        let path = self.logs.path().join("jobs").join(job).join(format!("sh-{n}.log"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| line.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
            .collect()
    }

    /// Every event, but a `pipeline` announcement, naming one of `jobs`.
    fn events_of(&self, jobs: &[&str]) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] != "pipeline")
            .filter(|e| jobs.iter().any(|job| e["job_id"] == *job))
            .collect()
    }
}

fn validate(workspace: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["validate", "--format", "json", "--workspace"])
        .arg(workspace)
        .output()
        .expect("quire-ci runs")
}

#[test]
fn a_pipeline_using_both_sources_validates_and_an_unknown_source_names_the_two() {
    let checkout = Checkout::new(SOURCES);
    let out = validate(checkout.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["valid"], true, "{stdout}");
    assert_eq!(
        report["jobs"],
        serde_json::json!(["on-push", "nightly", "both", "summary", "after-both"]),
        "jobs reachable only from :quire/schedule are valid: {stdout}"
    );

    let unknown = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :deploy [:quire/x] (fn [{: sh}] (sh \"true\")))\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["validate", "--format", "short", "--workspace"])
        .arg(unknown.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(".quire/ci.fnl:2:1: error: job `deploy` has unknown source `quire/x`: the sources are `quire/push` and `quire/schedule`"),
        "{stdout}"
    );
}

#[test]
fn trigger_schedule_runs_only_the_schedules_jobs_and_trigger_push_only_the_pushs() {
    let checkout = Checkout::new(SOURCES);

    let scheduled = Run::of(checkout.path(), &["--trigger", "schedule"]);
    scheduled.assert_success();
    assert_eq!(
        scheduled.started(),
        ["after-both", "both", "nightly", "summary"],
        "the jobs that follow from :quire/schedule:\n{}",
        scheduled.stderr()
    );
    assert_eq!(
        scheduled.events_of(&["on-push"]),
        Vec::<Value>::new(),
        "a job of the push alone gives no event in a scheduled run"
    );
    let nightly = scheduled.log_lines("nightly", 1);
    let at = nightly
        .iter()
        .find_map(|l| l.strip_prefix("scheduled-at="))
        .unwrap_or_else(|| panic!("nightly printed the tick: {nightly:?}"));
    assert!(
        at.len() >= 20 && at.as_bytes()[4] == b'-' && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
        ":scheduled-at is an RFC 3339 UTC timestamp: {at:?}"
    );
    assert_eq!(scheduled.log_lines("both", 1), ["started-by-schedule"]);

    let pushed = Run::of(checkout.path(), &["--trigger", "push"]);
    pushed.assert_success();
    assert_eq!(pushed.started(), ["after-both", "both", "on-push"], "{}", pushed.stderr());
    assert_eq!(
        pushed.events_of(&["nightly", "summary"]),
        Vec::<Value>::new(),
        "jobs of the schedule alone give no event in a push run"
    );
    assert_eq!(pushed.log_lines("both", 1), ["started-by-push"]);

    let default = Run::of(checkout.path(), &[]);
    default.assert_success();
    assert_eq!(default.started(), pushed.started(), "without --trigger a run is a push run");
}

/// The pipeline `cache_dir` tests run: prints `$QUIRE_CACHE_DIR`, what an
/// earlier run left in it, then leaves its own mark.
const CACHE: &str = r#"(local ci (require :quire.ci))
(ci.job :cache [:quire/push]
  (fn [{: sh}]
    (sh "echo \"$QUIRE_CACHE_DIR\"")
    (sh "cat \"$QUIRE_CACHE_DIR/marker\" 2>/dev/null || echo no-marker")
    (sh "echo written-by-a-run > \"$QUIRE_CACHE_DIR/marker\"")))
"#;

#[test]
fn cache_dir_is_what_commands_see_as_quire_cache_dir_and_keeps_their_writes() {
    let checkout = Checkout::new(CACHE);
    let parent = tempfile::tempdir().unwrap();
    let dir: PathBuf = parent.path().join("cache");
    let dir_arg = dir.to_str().unwrap();

    let first = Run::of(checkout.path(), &["--cache-dir", dir_arg]);
    first.assert_success();
    let canonical = dir.canonicalize().expect("the cache directory exists after the run");
    assert_eq!(first.log_lines("cache", 1), [canonical.to_str().unwrap()], "$QUIRE_CACHE_DIR is --cache-dir");
    assert_eq!(first.log_lines("cache", 2), ["no-marker"], "the directory started empty");
    assert_eq!(
        std::fs::read_to_string(dir.join("marker")).ok().as_deref(),
        Some("written-by-a-run\n"),
        "the command's write landed in --cache-dir"
    );

    let second = Run::of(checkout.path(), &["--cache-dir", dir_arg]);
    second.assert_success();
    assert_eq!(second.log_lines("cache", 2), ["written-by-a-run"], "the next run sees the first's write");
}

#[test]
fn without_cache_dir_commands_get_an_existing_empty_directory() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :cache [:quire/push]
  (fn [{: sh}]
    (sh "echo \"$QUIRE_CACHE_DIR\"")
    (sh "test -d \"$QUIRE_CACHE_DIR\" && test -w \"$QUIRE_CACHE_DIR\" && [ -z \"$(ls -A \"$QUIRE_CACHE_DIR\")\" ] && echo empty-and-writable")
    (sh "echo left-behind > \"$QUIRE_CACHE_DIR/marker\"")))
"#,
    );
    let mut seen = Vec::new();
    // Twice: a second run would fail its checked `test` if it were given the
    // first run's directory with its marker.
    for _ in 0..2 {
        let run = Run::of(checkout.path(), &[]);
        run.assert_success();
        let path = run.log_lines("cache", 1);
        assert_eq!(path.len(), 1, "one line, the directory: {path:?}");
        assert!(path[0].starts_with('/'), "$QUIRE_CACHE_DIR is an absolute path: {path:?}");
        assert_eq!(run.log_lines("cache", 2), ["empty-and-writable"], "{}", run.stderr());
        seen.push(path[0].clone());
    }
    assert_ne!(seen[0], seen[1], "each run gets a fresh directory");
}
