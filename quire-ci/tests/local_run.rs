//! `quire-ci run` in local mode, driven as a developer would: the real
//! binary on a real git checkout made in a temporary directory, asserting
//! on the exact event lines, the CRI log files and the exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "support/checkout.rs"]
mod checkout;
use checkout::Checkout;

/// One finished `quire-ci run --events stdout --out-dir <tmp>`.
struct Run {
    out: Output,
    logs: tempfile::TempDir,
}

impl Run {
    fn of(workspace: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let logs = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
            .args(["run", "--events", "stdout", "--workspace"])
            .arg(workspace)
            .arg("--out-dir")
            .arg(logs.path())
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("QUIRE__SERVER_URL")
            .output()
            .unwrap();
        Run { out, logs }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The event lines with `at_ms` checked (non-decreasing) and zeroed, so
    /// they compare against literal expected lines, field order included.
    fn events(&self) -> Vec<String> {
        let stdout = String::from_utf8(self.out.stdout.clone()).unwrap();
        let mut last = 0;
        stdout
            .lines()
            .map(|line| {
                let value: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                let at = value["at_ms"].as_i64().expect("at_ms is an integer");
                assert!(at >= last, "at_ms went backwards in {stdout}");
                last = at;
                line.replacen(&format!("\"at_ms\":{at},"), "\"at_ms\":0,", 1)
            })
            .collect()
    }

    fn log_path(&self, job: &str, file: &str) -> PathBuf {
        self.logs.path().join("jobs").join(job).join(file)
    }

    fn log(&self, job: &str, file: &str) -> String {
        std::fs::read_to_string(self.log_path(job, file)).unwrap_or_default()
    }

    /// `(stream, tag, content)` of each CRI line, checking the timestamp.
    fn log_lines(&self, job: &str, file: &str) -> Vec<(String, String, String)> {
        self.log(job, file)
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert_eq!(ts.len(), 30, "RFC 3339 with nanoseconds: {ts}");
                assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
                let stream = parts.next().unwrap().to_string();
                let tag = parts.next().unwrap().to_string();
                (stream, tag, parts.next().unwrap_or_default().to_string())
            })
            .collect()
    }
}

fn ev(kind: &str, rest: &str) -> String {
    if rest.is_empty() {
        format!(r#"{{"at_ms":0,"type":"{kind}"}}"#)
    } else {
        format!(r#"{{"at_ms":0,"type":"{kind}",{rest}}}"#)
    }
}

fn line(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.into(), tag.into(), content.into())
}

#[test]
fn a_passing_pipeline_with_outputs_flowing_between_jobs() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh : jobs}]
    (let [push (jobs :quire/push)]
      (sh (.. "echo " push.sha " " push.branch " " push.ref)))
    {:artifact "app.tar" :count 3}))
(ci.job :test [:build]
  (fn [{: sh : jobs}]
    (let [build (jobs :build)]
      (sh ["echo" build.artifact (tostring build.count)]))))
"#,
    );
    let run = Run::of(checkout.path(), &[], &[]);
    assert_eq!(run.out.status.code(), Some(0), "{}", run.stderr());
    let head = checkout.head();
    assert_eq!(
        run.events(),
        [
            ev("job_started", r#""job_id":"build""#),
            ev("sh_started", &format!(r#""job_id":"build","cmd":"echo {head} main refs/heads/main""#)),
            ev("sh_finished", r#""job_id":"build","exit_code":0"#),
            ev("job_finished", r#""job_id":"build","outcome":"complete""#),
            ev("job_started", r#""job_id":"test""#),
            ev("sh_started", r#""job_id":"test","cmd":"echo app.tar 3""#),
            ev("sh_finished", r#""job_id":"test","exit_code":0"#),
            ev("job_finished", r#""job_id":"test","outcome":"complete""#),
            ev("run_finished", r#""outcome":"success""#),
        ]
    );
    assert_eq!(
        run.log_lines("build", "sh-1.log"),
        [line("stdout", "F", &format!("{head} main refs/heads/main"))]
    );
    assert_eq!(run.log_lines("test", "sh-1.log"), [line("stdout", "F", "app.tar 3")]);
}

#[test]
fn a_failing_checked_sh_fails_its_job_and_check_false_lets_the_run_fn_decide() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :lenient [:quire/push]
  (fn [{: sh}]
    (let [r (sh "echo partial; exit 4" {:check false})]
      (when (= r.exit 4)
        (sh (.. "echo handled " r.stdout))))))
(ci.job :strict [:quire/push]
  (fn [{: sh}]
    (sh "exit 3")
    (sh "echo unreachable")))
"#,
    );
    // One job at a time: the events come in exactly the sequential order.
    let run = Run::of(checkout.path(), &["--jobs", "1"], &[]);
    assert_eq!(run.out.status.code(), Some(0));
    assert_eq!(
        run.events(),
        [
            ev("job_started", r#""job_id":"lenient""#),
            ev("sh_started", r#""job_id":"lenient","cmd":"echo partial; exit 4""#),
            ev("sh_finished", r#""job_id":"lenient","exit_code":4"#),
            ev("sh_started", r#""job_id":"lenient","cmd":"echo handled partial\n""#),
            ev("sh_finished", r#""job_id":"lenient","exit_code":0"#),
            ev("job_finished", r#""job_id":"lenient","outcome":"complete""#),
            ev("job_started", r#""job_id":"strict""#),
            ev("sh_started", r#""job_id":"strict","cmd":"exit 3""#),
            ev("sh_finished", r#""job_id":"strict","exit_code":3"#),
            ev("job_finished", r#""job_id":"strict","outcome":"failed""#),
            ev("run_finished", r#""outcome":"pipeline_failure""#),
        ]
    );
    assert_eq!(
        run.log_lines("strict", "job.log"),
        [line("stderr", "F", ".quire/ci.fnl:9: command failed with exit code 3: exit 3")]
    );
}

#[test]
fn a_failed_job_skips_its_dependents_but_not_independent_jobs() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push] (fn [{: sh}] (sh "false")))
(ci.job :test [:build] (fn [{: sh}] (sh "echo test")))
(ci.job :deploy [:test] (fn [{: sh}] (sh "echo deploy")))
(ci.job :lint [:quire/push] (fn [{: sh}] (sh "echo lint")))
"#,
    );
    let run = Run::of(checkout.path(), &["--jobs", "1"], &[]);
    assert_eq!(
        run.events(),
        [
            ev("job_started", r#""job_id":"build""#),
            ev("sh_started", r#""job_id":"build","cmd":"false""#),
            ev("sh_finished", r#""job_id":"build","exit_code":1"#),
            ev("job_finished", r#""job_id":"build","outcome":"failed""#),
            ev("job_skipped", r#""job_id":"test""#),
            ev("job_skipped", r#""job_id":"deploy""#),
            ev("job_started", r#""job_id":"lint""#),
            ev("sh_started", r#""job_id":"lint","cmd":"echo lint""#),
            ev("sh_finished", r#""job_id":"lint","exit_code":0"#),
            ev("job_finished", r#""job_id":"lint","outcome":"complete""#),
            ev("run_finished", r#""outcome":"pipeline_failure""#),
        ]
    );
}

#[test]
fn a_compile_error_gives_only_run_finished() {
    let checkout =
        Checkout::new("(local ci (require :quire.ci))\n(ci.job :a [:quire/push]\n  (fn [] (let [x] x)))\n");
    let run = Run::of(checkout.path(), &[], &[]);
    assert_eq!(run.out.status.code(), Some(0));
    assert_eq!(run.events(), [ev("run_finished", r#""outcome":"pipeline_failure""#)]);
    assert!(run.stderr().contains(".quire/ci.fnl:3:"), "{}", run.stderr());
    assert!(run.stderr().contains("expected even number of name/value bindings"));
}

#[test]
fn a_missing_pipeline_is_a_pipeline_failure() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run::of(dir.path(), &["--sha", "abc", "--ref", "refs/heads/x"], &[]);
    assert_eq!(run.out.status.code(), Some(0));
    assert_eq!(run.events(), [ev("run_finished", r#""outcome":"pipeline_failure""#)]);
    assert!(run.stderr().contains("no pipeline at"), "{}", run.stderr());
}

#[test]
fn a_run_fn_error_names_its_fnl_line_in_the_log_and_on_stderr() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push]\n  (fn []\n    (let [t nil]\n      (. t :field))))\n",
    );
    let run = Run::of(checkout.path(), &[], &[]);
    let job_log = run.log("a", "job.log");
    assert!(job_log.contains("stderr F .quire/ci.fnl:5: attempt to index a nil value"), "{job_log}");
    assert!(run.stderr().contains(".quire/ci.fnl:5: attempt to index a nil value"), "{}", run.stderr());
    assert_eq!(run.events().last().unwrap(), &ev("run_finished", r#""outcome":"pipeline_failure""#));
}

#[test]
fn a_command_not_found_fails_the_job_clearly() {
    let checkout = Checkout::new("(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh [\"no-such-command-xyz\" \"--flag\"])))\n");
    let run = Run::of(checkout.path(), &[], &[]);
    assert!(run.events().contains(&ev("sh_finished", r#""job_id":"a","exit_code":127"#)));
    assert_eq!(
        run.log_lines("a", "sh-1.log"),
        [line("stderr", "F", "quire-ci: command not found: no-such-command-xyz")]
    );
    assert!(run.log("a", "job.log").contains("command not found: no-such-command-xyz"));
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_children() {
    let checkout =
        Checkout::new("(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"sleep 30 & sleep 30\" {:timeout 1})))\n");
    let started = std::time::Instant::now();
    let run = Run::of(checkout.path(), &[], &[]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        run.events().contains(&ev("sh_finished", r#""job_id":"a","exit_code":137"#)),
        "{:?}",
        run.events()
    );
    assert!(run.log("a", "sh-1.log").contains("quire-ci: command killed after its :timeout of 1s"));
    assert!(run.log("a", "job.log").contains("command timed out"));
}

#[test]
fn long_lines_are_split_into_partial_chunks() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"head -c 40000 /dev/zero | tr '\\\\000' x; echo\")))\n",
    );
    let run = Run::of(checkout.path(), &[], &[]);
    let lines = run.log_lines("a", "sh-1.log");
    let shape: Vec<(&str, usize)> = lines.iter().map(|(_, tag, c)| (tag.as_str(), c.len())).collect();
    assert_eq!(shape, [("P", 16384), ("P", 16384), ("F", 40000 - 2 * 16384)], "{}", run.stderr());
    assert!(lines.iter().all(|(_, _, c)| c.bytes().all(|b| b == b'x')));
}

#[test]
fn output_without_a_trailing_newline_ends_with_a_full_line() {
    let checkout = Checkout::new("(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"printf 'first\\\\nlast'\")))\n");
    let run = Run::of(checkout.path(), &[], &[]);
    assert_eq!(run.log_lines("a", "sh-1.log"), [line("stdout", "F", "first"), line("stdout", "F", "last")]);
}

#[test]
fn stdout_and_stderr_keep_their_order_per_stream() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done\")))\n",
    );
    let run = Run::of(checkout.path(), &[], &[]);
    let lines = run.log_lines("a", "sh-1.log");
    let of = |stream: &str| -> Vec<String> {
        lines.iter().filter(|l| l.0 == stream).map(|l| l.2.clone()).collect()
    };
    assert_eq!(of("stdout"), ["out1", "out2", "out3"]);
    assert_eq!(of("stderr"), ["err1", "err2", "err3"]);
    let order: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(order, ["out1", "err1", "out2", "err2", "out3", "err3"], "sleeps separate the pairs");
}

#[test]
fn secrets_are_redacted_from_logs_and_events() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :deploy [:quire/push]
  (fn [{: sh : secret}]
    (let [token (secret :deploy-token)]
      (sh (.. "echo token=" token)))))
(ci.job :nosuch [:quire/push]
  (fn [{: secret}] (secret :undeclared-thing)))
"#,
    );
    let run = Run::of(checkout.path(), &[], &[("QUIRE_SECRET_DEPLOY_TOKEN", "hunter2-secret-value")]);
    assert!(run.events().contains(&ev("sh_started", r#""job_id":"deploy","cmd":"echo token=***""#)));
    assert_eq!(run.log_lines("deploy", "sh-1.log"), [line("stdout", "F", "token=***")]);
    let everything = format!(
        "{}{}{}{}",
        String::from_utf8_lossy(&run.out.stdout),
        run.stderr(),
        run.log("deploy", "sh-1.log"),
        run.log("deploy", "job.log")
    );
    assert!(!everything.contains("hunter2-secret-value"));
    let nosuch = run.log("nosuch", "job.log");
    assert!(nosuch.contains("secret `undeclared-thing` is not declared"), "{nosuch}");
    assert!(nosuch.contains("QUIRE_SECRET_UNDECLARED_THING"), "{nosuch}");
}

#[test]
fn quire_variables_never_reach_commands() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh [\"env\"])))\n",
    );
    let run = Run::of(
        checkout.path(),
        &[],
        &[
            ("QUIRE__RUN_TOKEN", "tok-123"),
            ("QUIRE__SENTRY_DSN", "dsn"),
            ("QUIRE_SECRET_X", "1"),
            ("MY_VAR", "visible"),
        ],
    );
    let env = run.log("a", "sh-1.log");
    assert!(env.contains("stdout F MY_VAR=visible"), "{env}");
    for hidden in ["QUIRE__", "QUIRE_SECRET_", "tok-123"] {
        assert!(!env.contains(hidden), "{hidden} reached the command: {env}");
    }
}

#[test]
fn job_selection_runs_the_jobs_and_their_ancestors_only() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push] (fn [] nil))
(ci.job :b [:a] (fn [] nil))
(ci.job :c [:b] (fn [] nil))
(ci.job :d [:quire/push] (fn [] nil))
"#,
    );
    let run = Run::of(checkout.path(), &["--job", "b"], &[]);
    assert_eq!(
        run.events(),
        [
            ev("job_started", r#""job_id":"a""#),
            ev("job_finished", r#""job_id":"a","outcome":"complete""#),
            ev("job_started", r#""job_id":"b""#),
            ev("job_finished", r#""job_id":"b","outcome":"complete""#),
            ev("run_finished", r#""outcome":"success""#),
        ]
    );
    let unknown = Run::of(checkout.path(), &["--job", "zzz"], &[]);
    assert_eq!(unknown.out.status.code(), Some(2));
    assert!(
        unknown.stderr().contains("unknown job `zzz`") && unknown.stderr().contains("a, b, c, d"),
        "{}",
        unknown.stderr()
    );
}

#[test]
fn events_on_stdout_leave_stdout_pure_jsonl() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (print \"from print\") (sh \"echo from-sh; exit 1\")))\n",
    );
    let run = Run::of(checkout.path(), &[], &[]);
    for line in String::from_utf8(run.out.stdout.clone()).unwrap().lines() {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not an event: {line:?}"));
        assert!(value["at_ms"].is_i64() && value["type"].is_string());
    }
    let progress = run.stderr();
    for expected in
        ["▶ a", "[a] $ echo from-sh; exit 1", "[a] | from-sh", "✘ a failed", "from print", "run failed"]
    {
        assert!(progress.contains(expected), "missing {expected:?} in progress:\n{progress}");
    }
}

#[test]
fn without_out_dir_the_logs_go_to_a_temporary_directory_named_at_the_end() {
    let checkout = Checkout::new(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo kept\")))\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["run", "--workspace"])
        .arg(checkout.path())
        .output()
        .unwrap();
    let progress = String::from_utf8_lossy(&out.stdout).into_owned();
    let dir = progress
        .lines()
        .find_map(|l| l.strip_prefix("logs are in "))
        .expect("the log directory is named")
        .to_string();
    let log = std::fs::read_to_string(Path::new(&dir).join("jobs/a/sh-1.log")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(log.ends_with(" stdout F kept\n"), "{log}");
}

#[test]
fn a_directory_that_is_not_a_checkout_needs_sha_and_ref() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".quire")).unwrap();
    std::fs::write(
        dir.path().join(".quire/ci.fnl"),
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh : jobs}] (sh (.. \"echo \" (. (jobs :quire/push) :sha) \" \" (. (jobs :quire/push) :tag)))))\n",
    )
    .unwrap();
    let refused = Run::of(dir.path(), &[], &[]);
    assert_eq!(refused.out.status.code(), Some(2));
    assert!(
        refused.stderr().contains("is not a git checkout") && refused.stderr().contains("--sha and --ref")
    );
    let run = Run::of(dir.path(), &["--sha", "abc123", "--ref", "refs/tags/v1.2"], &[]);
    assert_eq!(run.log_lines("a", "sh-1.log"), [line("stdout", "F", "abc123 v1.2")]);
}

#[test]
fn sh_options_are_checked_and_applied() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :ok [:quire/push]
  (fn [{: sh}]
    (sh "pwd" {:cwd "sub"})
    (sh "echo $FOO" {:env {:FOO "bar"}})))
(ci.job :typo [:quire/push] (fn [{: sh}] (sh "true" {:chek false})))
(ci.job :empty [:quire/push] (fn [{: sh}] (sh [])))
(ci.job :escape [:quire/push] (fn [{: sh}] (sh "pwd" {:cwd ".."})))
(ci.job :stranger [:quire/push] (fn [{: jobs}] (jobs :ok)))
"#,
    );
    std::fs::create_dir(checkout.path().join("sub")).unwrap();
    let run = Run::of(checkout.path(), &[], &[]);
    let sub = checkout.path().canonicalize().unwrap().join("sub");
    assert_eq!(run.log_lines("ok", "sh-1.log"), [line("stdout", "F", &sub.display().to_string())]);
    assert_eq!(run.log_lines("ok", "sh-2.log"), [line("stdout", "F", "bar")]);
    for (job, message) in [
        ("typo", "sh: unknown option :chek"),
        ("empty", "sh: the argv is empty"),
        ("escape", "must stay inside the workspace"),
        ("stranger", "jobs: `ok` is not an input of job `stranger`"),
    ] {
        assert!(run.log(job, "job.log").contains(message), "{job}: {}", run.log(job, "job.log"));
    }
}

#[test]
fn the_runtime_table_is_dead_after_its_job() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(var saved nil)
(ci.job :a [:quire/push] (fn [rt] (set saved rt) nil))
(ci.job :b [:a] (fn [] (saved.sh "echo should not run")))
"#,
    );
    let run = Run::of(checkout.path(), &[], &[]);
    assert!(run.events().contains(&ev("job_finished", r#""job_id":"b","outcome":"failed""#)));
    // Each job runs in an execute VM of its own: what job `a` saved is not
    // even there for job `b`, so its command never runs.
    assert!(run.log("b", "job.log").contains("attempt to index a nil value"), "{}", run.log("b", "job.log"));
    assert!(!run.events().iter().any(|e| e.contains("should not run")));
}

#[test]
fn an_unwritable_events_file_is_a_failure_of_quire_ci() {
    let checkout = Checkout::new("(local ci (require :quire.ci))\n");
    let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["run", "--events", "/nonexistent-dir/events.jsonl", "--workspace"])
        .arg(checkout.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write the events file"));
}

#[test]
fn huge_output_is_kept_in_the_log_and_capped_in_lua() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push]
  (fn [{: sh}]
    (let [r (sh "head -c 5000000 /dev/zero | tr '\\000' y | fold -w 100")]
      (sh (.. "echo captured " (length r.stdout))))))
"#,
    );
    let run = Run::of(checkout.path(), &[], &[]);
    let lines = run.log_lines("a", "sh-1.log");
    assert_eq!(lines.len(), 50_000);
    assert_eq!(lines.iter().map(|l| l.2.len()).sum::<usize>(), 5_000_000);
    let captured = run.log_lines("a", "sh-2.log");
    let n: usize = captured[0].2.strip_prefix("captured ").unwrap().parse().unwrap();
    assert!((1024 * 1024..1024 * 1024 + 400).contains(&n), "captured {n} bytes");
}

/// The job ids of the events of `kind`, in stream order.
fn jobs_of(events: &[String], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.contains(&format!("\"type\":\"{kind}\"")))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["job_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn independent_jobs_run_at_once_and_the_join_waits_for_all_of_them() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(each [_ id (ipairs [:a :b :c :d])]
  (ci.job id [:quire/push] (fn [{: sh}] (sh "sleep 1") {:done id})))
(ci.job :join [:a :b :c :d]
  (fn [{: jobs}] (assert (= (. (jobs :d) :done) :d)) nil))
"#,
    );
    let run = Run::of(checkout.path(), &["--jobs", "4"], &[]);
    assert_eq!(run.out.status.code(), Some(0), "{}", run.stderr());
    let events = run.events();
    let position = |kind: &str, job: &str| {
        events.iter().position(|e| e.contains(&format!("\"type\":\"{kind}\",\"job_id\":\"{job}\""))).unwrap()
    };
    let last_start = ["a", "b", "c", "d"].map(|j| position("job_started", j)).into_iter().max().unwrap();
    let first_finish = ["a", "b", "c", "d"].map(|j| position("job_finished", j)).into_iter().min().unwrap();
    assert!(last_start < first_finish, "all four started before any finished: {events:#?}");
    let last_finish = ["a", "b", "c", "d"].map(|j| position("job_finished", j)).into_iter().max().unwrap();
    assert!(position("job_started", "join") > last_finish, "the join started after all four");
    assert_eq!(jobs_of(&events, "job_started")[..4], ["a", "b", "c", "d"], "ties start in definition order");
    assert!(events.last().unwrap().contains("\"run_finished\",\"outcome\":\"success\""));
}

#[test]
fn a_failing_job_skips_only_its_dependents_while_a_parallel_sibling_completes() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push] (fn [{: sh}] (sh "sleep 0.2; false")))
(ci.job :test [:build] (fn [{: sh}] (sh "echo test")))
(ci.job :deploy [:test] (fn [{: sh}] (sh "echo deploy")))
(ci.job :lint [:quire/push] (fn [{: sh}] (sh "sleep 0.5; echo lint")))
"#,
    );
    let run = Run::of(checkout.path(), &["--jobs", "2"], &[]);
    let events = run.events();
    assert_eq!(jobs_of(&events, "job_started"), ["build", "lint"]);
    assert_eq!(jobs_of(&events, "job_skipped"), ["test", "deploy"]);
    assert!(events.contains(&ev("job_finished", r#""job_id":"lint","outcome":"complete""#)));
    assert!(events.contains(&ev("job_finished", r#""job_id":"build","outcome":"failed""#)));
    assert!(events.last().unwrap().contains("pipeline_failure"));
}

#[test]
fn a_looping_job_waits_for_its_timeout_while_a_sibling_finishes() {
    let checkout = Checkout::new(
        r#"(local ci (require :quire.ci))
(ci.job :spin [:quire/push] (fn [] (while true nil)))
(ci.job :ok [:quire/push] (fn [{: sh}] (sh "echo fine")))
"#,
    );
    let run = Run::of(checkout.path(), &["--jobs", "2", "--job-timeout", "2"], &[]);
    assert_eq!(run.out.status.code(), Some(0));
    let events = run.events();
    let finished = jobs_of(&events, "job_finished");
    assert_eq!(finished, ["ok", "spin"], "the sibling finished first");
    assert!(run.log("spin", "job.log").contains("did not finish in time"), "{}", run.log("spin", "job.log"));
}
