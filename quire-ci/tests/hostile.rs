//! Hostile pipelines against the real `quire-ci` binary (issue 10). A
//! pipeline is code from whoever can push; each test here is one attack of
//! the issue's classes and asserts the defence:
//!
//! 1. the sandbox's own launch steered from the pipeline (`:env`, `PATH`,
//!    capabilities, mounts);
//! 2. Lua resource limits (memory, deadlines in coroutines and macros, long
//!    C calls);
//! 3. compile time reading the host (`include`, `require`, `import-macros`,
//!    a symlinked `ci.fnl`);
//! 4. redaction misses (`print`, errors, multi-line secrets, CRI chunks);
//! 6. bad values crashing the executor (NUL bytes, over-long ids);
//! 7. processes outliving their run;
//! 8. side effects on the host (ownership of the checkout, log and `/tmp`
//!    sizes).
//!
//! (Class 5, secret scope, is a server matter: quire-server/tests/hostile.rs.)
//!
//! Every quire-ci started here runs under a deadline and is stopped if it
//! hangs (several of these attacks hang an undefended build), and every
//! process an attack leaves behind is killed when its test ends.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "../../quire-core/tests/support/markers.rs"]
mod markers;

use markers::Markers;

const QUIRE_CI: &str = env!("CARGO_BIN_EXE_quire-ci");

/// The longest any quire-ci process may take in these tests. The attacks
/// that hang an undefended build are stopped here and the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a finished process left: its status and both streams.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `command` to its end with its output in files (so that nothing
/// holding a pipe can wedge the test). Past `deadline` it is stopped
/// (SIGTERM, then SIGKILL) and the test fails.
fn run_bounded(mut command: Command, deadline: Duration) -> Ended {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    command.stdin(Stdio::null()).stdout(File::create(&out).unwrap()).stderr(File::create(&err).unwrap());
    let mut child = command.spawn().expect("quire-ci starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            stop(&mut child);
            panic!(
                "quire-ci did not finish within {deadline:?} and was killed\nstdout:\n{}\nstderr:\n{}",
                lossy(&out),
                lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ended { status, stdout: lossy(&out), stderr: lossy(&err) }
}

/// Stops a quire-ci: SIGTERM (it stops its running command on the way out),
/// then SIGKILL if it is still there after a few seconds.
fn stop(child: &mut Child) {
    if child.try_wait().unwrap().is_some() {
        return;
    }
    signal(child.id() as i32, "TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(pid: i32, name: &str) {
    let _ = Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).stderr(Stdio::null()).status();
}

fn lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Polls `check` until it returns Some, failing the test after `secs`.
fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh workspace (not a git checkout) holding `pipeline` as
/// `.quire/ci.fnl`.
fn workspace(pipeline: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    write(ws.path(), ".quire/ci.fnl", pipeline);
    ws
}

fn write(dir: &Path, relative: &str, text: &str) {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn write_executable(dir: &Path, relative: &str, text: &str) {
    write(dir, relative, text);
    std::fs::set_permissions(dir.join(relative), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory outside any workspace (workspaces are made under /tmp) that
/// anyone may read, standing for the rest of the host.
fn outside_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("quirehostile").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// One finished `quire-ci run --events stdout --out-dir <tmp>`.
struct Run {
    ended: Ended,
    logs: tempfile::TempDir,
}

/// `quire-ci run` on `ws`, started from inside it (as a developer would).
fn run(ws: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    run_from(ws, ws, extra, env)
}

/// `quire-ci run` on `ws`, started with `cwd` as its working directory.
fn run_from(cwd: &Path, ws: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let logs = tempfile::tempdir().unwrap();
    let mut command = Command::new(QUIRE_CI);
    command
        .args(["run", "--events", "stdout", "--sha", "1234567", "--ref", "refs/heads/main", "--workspace"])
        .arg(ws)
        .arg("--out-dir")
        .arg(logs.path())
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("QUIRE__SERVER_URL")
        .env_remove("QUIRE__RUN_TOKEN")
        .current_dir(cwd);
    Run { ended: run_bounded(command, DEADLINE), logs }
}

/// `quire-ci run --sandbox bwrap` on `ws`.
fn run_bwrap(ws: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec!["--sandbox", "bwrap"];
    args.extend_from_slice(extra);
    run(ws, &args, env)
}

/// `quire-ci validate` (human format) on `ws`, started from `cwd`.
fn validate_from(cwd: &Path, ws: &Path, extra: &[&str]) -> Ended {
    let mut command = Command::new(QUIRE_CI);
    command.args(["validate", "--workspace"]).arg(ws).args(extra).current_dir(cwd);
    run_bounded(command, DEADLINE)
}

fn validate(ws: &Path, extra: &[&str]) -> Ended {
    validate_from(ws, ws, extra)
}

impl Run {
    fn stderr(&self) -> &str {
        &self.ended.stderr
    }

    fn events(&self) -> Vec<Value> {
        self.ended
            .stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("stdout is not pure JSONL: {line:?}: {e}\nstderr:\n{}", self.stderr())
                })
            })
            .collect()
    }

    /// The exit-0 contract: status 0 and `run_finished` with `outcome` last.
    fn assert_finished(&self, outcome: &str) {
        assert_eq!(self.ended.status.code(), Some(0), "quire-ci exit status; stderr:\n{}", self.stderr());
        let events = self.events();
        let last = events.last().unwrap_or_else(|| panic!("no events; stderr:\n{}", self.stderr()));
        assert_eq!(last["type"], "run_finished", "last event: {last}\nstderr:\n{}", self.stderr());
        assert_eq!(last["outcome"], outcome, "run outcome; stderr:\n{}", self.stderr());
    }

    /// `run_finished` `pipeline_failure` and nothing else: the pipeline was
    /// refused before any job started.
    fn assert_refused(&self) {
        self.assert_finished("pipeline_failure");
        let types: Vec<Value> = self.events().iter().map(|e| e["type"].clone()).collect();
        assert_eq!(types, ["run_finished"], "no job may start; stderr:\n{}", self.stderr());
    }

    fn job_outcome(&self, job: &str) -> Option<String> {
        self.events()
            .iter()
            .find(|e| e["type"] == "job_finished" && e["job_id"] == job)
            .map(|e| e["outcome"].as_str().unwrap().to_string())
    }

    fn assert_job(&self, job: &str, outcome: &str) {
        assert_eq!(
            self.job_outcome(job).as_deref(),
            Some(outcome),
            "job {job}: events {:?}\njob.log: {}\nstderr:\n{}",
            self.events(),
            self.log(job, "job.log"),
            self.stderr()
        );
    }

    /// Exit codes of the job's commands, in order.
    fn exits(&self, job: &str) -> Vec<i64> {
        self.events()
            .iter()
            .filter(|e| e["type"] == "sh_finished" && e["job_id"] == job)
            .map(|e| e["exit_code"].as_i64().unwrap())
            .collect()
    }

    fn log_path(&self, job: &str, file: &str) -> PathBuf {
        self.logs.path().join("jobs").join(job).join(file)
    }

    fn log(&self, job: &str, file: &str) -> String {
        lossy(&self.log_path(job, file))
    }

    /// `(stream, tag, content)` of each CRI line of a log.
    fn cri(&self, job: &str, file: &str) -> Vec<(String, String, String)> {
        self.log(job, file)
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let _timestamp = parts.next().unwrap();
                let stream = parts.next().unwrap_or_default().to_string();
                let tag = parts.next().unwrap_or_default().to_string();
                (stream, tag, parts.next().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// The lines of one stream of a log, `P` chunks joined to their `F`.
    fn reassembled(&self, job: &str, file: &str, stream: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut current = String::new();
        for (s, tag, content) in self.cri(job, file) {
            if s != stream {
                continue;
            }
            current.push_str(&content);
            if tag == "F" {
                lines.push(std::mem::take(&mut current));
            }
        }
        assert!(current.is_empty(), "a P chunk without its F line in {job}/{file}");
        lines
    }

    /// Every place text leaves quire-ci: stdout (events), stderr
    /// (progress), and every file under --out-dir, labelled.
    fn outputs(&self) -> Vec<(String, String)> {
        let mut all = vec![
            ("stdout".to_string(), self.ended.stdout.clone()),
            ("stderr".to_string(), self.ended.stderr.clone()),
        ];
        for path in files_below(self.logs.path()) {
            all.push((path.display().to_string(), lossy(&path)));
        }
        all
    }

    fn everything(&self) -> String {
        self.outputs().into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("\n")
    }

    /// `needle` appears in no output of the run.
    fn assert_nowhere(&self, needle: &str) {
        for (place, text) in self.outputs() {
            assert!(!text.contains(needle), "{needle:?} leaked into {place}:\n{text}");
        }
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.symlink_metadata().unwrap().is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

// ---------------------------------------------------------------------------
// Class 1: the sandbox's own launch is steerable from the pipeline.
// ---------------------------------------------------------------------------

/// Fake helper programs for the pipeline's `PATH`: each announces itself
/// on stderr, leaves a `fake-ran-<name>` marker beside its `bin/`
/// directory, then runs what follows its `--` (so a fake `setpriv` would
/// hand the command root with every capability).
const FAKE_HELPERS: &[&str] =
    &["setpriv", "bwrap", "capsh", "unshare", "nsenter", "prlimit", "setsid", "chroot", "runuser", "env"];

fn plant_fake_helpers(bin: &Path) {
    for name in FAKE_HELPERS {
        write_executable(
            bin,
            name,
            &format!(
                "#!/bin/sh\necho \"FAKE-HELPER-RAN $0\" >&2\ntouch \"$(dirname \"$0\")/../fake-ran-{name}\" 2>/dev/null\n\
                 while [ $# -gt 0 ] && [ \"$1\" != \"--\" ]; do shift; done\n[ $# -gt 0 ] && shift\nexec \"$@\"\n"
            ),
        );
    }
}

/// The pipeline's `PATH` with the fakes first.
fn hostile_path(bin: &Path) -> String {
    format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", bin.display())
}

fn assert_no_fake_ran(marks: &Path, logs: &str) {
    let ran: Vec<String> = std::fs::read_dir(marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("fake-ran-"))
        .collect();
    assert!(ran.is_empty(), "the pipeline's fake helpers were executed: {ran:?}");
    assert!(!logs.contains("FAKE-HELPER-RAN"), "a fake helper announced itself:\n{logs}");
}

const ZERO_CAPS: &str = "0000000000000000";

/// Class 1: as root, a sandboxed command must hold no capabilities, neither
/// effective nor in its bounding set (from which it could regain them).
#[test]
fn a_sandboxed_command_has_no_effective_or_bounding_capabilities() {
    let ws = workspace(
        "(local ci (require :quire.ci))\n(ci.job :caps [:quire/push] (fn [{: sh}] (sh \"grep ^Cap /proc/self/status\")))\n",
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    let log = run.log("caps", "sh-1.log");
    assert!(log.contains(&format!("stdout F CapEff:\t{ZERO_CAPS}")), "{log}");
    assert!(log.contains(&format!("stdout F CapBnd:\t{ZERO_CAPS}")), "{log}");
}

/// Class 1: fake `setpriv`, `bwrap` (and other would-be helpers) first on
/// the pipeline's `:env` `PATH` are never executed, and the command still
/// ends up without capabilities.
#[test]
fn fake_setpriv_and_bwrap_first_on_the_pipelines_path_are_never_run() {
    let ws = tempfile::tempdir().unwrap();
    let bin = ws.path().canonicalize().unwrap().join("bin");
    plant_fake_helpers(&bin);
    write(
        ws.path(),
        ".quire/ci.fnl",
        &format!(
            "(local ci (require :quire.ci))\n(ci.job :caps [:quire/push]\n  (fn [{{: sh}}] (sh \"grep ^Cap /proc/self/status\" {{:env {{:PATH \"{}\"}}}})))\n",
            hostile_path(&bin)
        ),
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    let log = run.log("caps", "sh-1.log");
    assert_no_fake_ran(ws.path(), &run.everything());
    assert!(log.contains(&format!("stdout F CapEff:\t{ZERO_CAPS}")), "{log}");
    assert!(log.contains(&format!("stdout F CapBnd:\t{ZERO_CAPS}")), "{log}");
}

/// Class 1: dynamic-loader variables in `:env` reach the command only: with
/// `LD_DEBUG`, ld.so names every program it loads, and neither bubblewrap
/// nor setpriv may show up.
#[test]
fn ld_debug_in_the_pipelines_env_reaches_only_the_command() {
    let ws = workspace(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"printenv LD_DEBUG\" {:env {:LD_DEBUG \"files\"}})))\n",
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    let log = run.log("a", "sh-1.log");
    assert!(log.contains("stdout F files"), "the command itself gets its :env: {log}");
    assert!(log.contains("stderr F"), "ld.so debug output of the command is in the log: {log}");
    for helper in ["bwrap", "setpriv"] {
        assert!(!log.contains(helper), "LD_DEBUG reached {helper}: {log}");
    }
}

/// Class 1: a command cannot undo the sandbox's mounts, neither directly
/// nor after planting fake helpers on its `PATH`.
#[test]
fn a_command_cannot_unmount_tmp_or_remount_the_host_writable() {
    let ws = tempfile::tempdir().unwrap();
    let bin = ws.path().canonicalize().unwrap().join("bin");
    plant_fake_helpers(&bin);
    write(
        ws.path(),
        ".quire/ci.fnl",
        &format!(
            r#"(local ci (require :quire.ci))
(local tricked {{:check false :env {{:PATH "{path}"}}}})
(ci.job :plain [:quire/push]
  (fn [{{: sh}}]
    (sh "umount /tmp" {{:check false}})
    (sh "mount -o remount,rw /" {{:check false}})))
(ci.job :tricked [:quire/push]
  (fn [{{: sh}}]
    (sh "umount /tmp" tricked)
    (sh "mount -o remount,rw /" tricked)))
"#,
            path = hostile_path(&bin)
        ),
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    for job in ["plain", "tricked"] {
        let exits = run.exits(job);
        assert_eq!(exits.len(), 2, "{job}: {:?}", run.events());
        assert_ne!(exits[0], 0, "{job}: umount /tmp succeeded: {}", run.log(job, "sh-1.log"));
        assert_ne!(exits[1], 0, "{job}: remount of / succeeded: {}", run.log(job, "sh-2.log"));
    }
    assert_no_fake_ran(ws.path(), &run.everything());
}

/// Class 1: a path hidden with `--hide` stays hidden when the command tries
/// to unmount what covers it, with fake helpers on its `PATH`.
#[test]
fn a_hidden_path_stays_hidden_when_the_command_unmounts_its_cover() {
    let hidden = outside_dir();
    write(hidden.path(), "quire.db", "hidden-database-contents-3e1f");
    std::fs::set_permissions(hidden.path().join("quire.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let bin = ws.path().canonicalize().unwrap().join("bin");
    plant_fake_helpers(&bin);
    write(
        ws.path(),
        ".quire/ci.fnl",
        &format!(
            r#"(local ci (require :quire.ci))
(ci.job :unhide [:quire/push]
  (fn [{{: sh}}]
    (sh "umount -l {dir}; cat {dir}/quire.db" {{:check false :env {{:PATH "{path}"}}}})
    (sh "umount -l {dir}; cat {dir}/quire.db" {{:check false}})))
"#,
            dir = hidden.path().display(),
            path = hostile_path(&bin)
        ),
    );
    let hide = hidden.path().display().to_string();
    let run = run_bwrap(ws.path(), &["--hide", &hide], &[]);
    run.assert_finished("success");
    assert_eq!(run.exits("unhide").len(), 2, "{:?}", run.events());
    for exit in run.exits("unhide") {
        assert_ne!(exit, 0, "the hidden file was read: {}", run.log("unhide", "sh-1.log"));
    }
    run.assert_nowhere("hidden-database-contents-3e1f");
    assert_no_fake_ran(ws.path(), &run.everything());
}

// ---------------------------------------------------------------------------
// Class 2: Lua resource limits.
// ---------------------------------------------------------------------------

/// Allocates 256 MiB of distinct strings, all kept alive.
const BOMB: &str = "(let [t []] (for [i 1 256] (tset t i (.. (string.rep \"x\" 1048576) i))) (length t))";

/// Class 2: an allocation bomb in a run-fn hits the Lua memory limit and
/// fails its job with a reason about memory; quire-ci still exits 0.
#[test]
fn an_allocation_bomb_in_a_job_fails_that_job_with_a_memory_error() {
    let ws = workspace(&format!(
        "(local ci (require :quire.ci))\n(ci.job :bomb [:quire/push] (fn [] {BOMB} nil))\n"
    ));
    let run = run(ws.path(), &["--lua-memory-mb", "64"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("bomb", "failed");
    assert!(run.log("bomb", "job.log").contains("memory"), "{}", run.log("bomb", "job.log"));
    assert!(run.stderr().contains("memory"), "{}", run.stderr());
}

/// Class 2: one long C call (`string.rep` of 300 MB) never reaches the
/// instruction hook, but it must still hit the memory limit.
#[test]
fn one_huge_string_rep_fails_its_job_with_a_memory_error() {
    let ws = workspace(
        "(local ci (require :quire.ci))\n(ci.job :rep [:quire/push] (fn [] (length (string.rep \"x\" 300000000)) nil))\n",
    );
    let run = run(ws.path(), &["--lua-memory-mb", "64"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("rep", "failed");
    assert!(run.log("rep", "job.log").contains("memory"), "{}", run.log("rep", "job.log"));
}

/// Class 2: an allocation bomb while the top level is evaluated is a
/// pipeline failure about memory, not a host out of memory.
#[test]
fn an_allocation_bomb_at_top_level_is_a_pipeline_failure_about_memory() {
    let ws = workspace(&format!(
        "(local ci (require :quire.ci))\n(local n {BOMB})\n(ci.job :a [:quire/push] (fn [] {{:n n}}))\n"
    ));
    let run = run(ws.path(), &["--lua-memory-mb", "64"], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("memory"), "{}", run.stderr());
}

/// Class 2: the compile VM has a memory limit too: a macro that allocates
/// 256 MiB is a pipeline failure about memory under `--lua-memory-mb 64`.
#[test]
fn an_allocation_bomb_in_a_macro_is_a_pipeline_failure_about_memory() {
    let pipeline = format!(
        "(local ci (require :quire.ci))\n(macro bomb [] {BOMB} nil)\n(bomb)\n(ci.job :a [:quire/push] (fn [] nil))\n"
    );
    let ws = workspace(&pipeline);
    let run = run(ws.path(), &["--lua-memory-mb", "64"], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("memory"), "{}", run.stderr());
}

/// Class 2: a busy loop inside a coroutine created at top level, resumed
/// from a run-fn, is stopped at the job timeout; the run goes on.
#[test]
fn a_busy_loop_in_a_coroutine_created_at_top_level_fails_at_the_job_timeout() {
    assert_stopped_at_the_job_timeout(
        r#"(local ci (require :quire.ci))
(local spin (coroutine.create (fn [] (while true nil))))
(ci.job :spin [:quire/push] (fn [] (coroutine.resume spin) nil))
(ci.job :after [:quire/push] (fn [] nil))
"#,
        "spin",
    );
}

/// Runs `pipeline` with a 2 s job timeout: `job` fails with "did not
/// finish in time", and the independent job `after` still completes.
fn assert_stopped_at_the_job_timeout(pipeline: &str, job: &str) {
    let ws = workspace(pipeline);
    let run = run(ws.path(), &["--job-timeout", "2"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job(job, "failed");
    run.assert_job("after", "complete");
    assert!(run.log(job, "job.log").contains("did not finish in time"), "{}", run.log(job, "job.log"));
}

/// Class 2: a busy loop inside a coroutine the run-fn creates is stopped at
/// the job timeout.
#[test]
fn a_busy_loop_in_a_coroutine_created_in_the_run_fn_fails_at_the_job_timeout() {
    assert_stopped_at_the_job_timeout(
        r#"(local ci (require :quire.ci))
(ci.job :spin [:quire/push]
  (fn [] (coroutine.resume (coroutine.create (fn [] (while true nil)))) nil))
(ci.job :after [:quire/push] (fn [] nil))
"#,
        "spin",
    );
}

/// Class 2: a run-fn that catches the timeout error with `pcall` and loops
/// again is still stopped at its job timeout.
#[test]
fn a_busy_loop_that_catches_the_timeout_with_pcall_still_fails_at_the_job_timeout() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :stubborn [:quire/push]
  (fn [] (while true (pcall (fn [] (while true nil)))) nil))
(ci.job :after [:quire/push] (fn [] nil))
"#,
    );
    let run = run(ws.path(), &["--job-timeout", "2"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("stubborn", "failed");
    run.assert_job("after", "complete");
    let job_log = run.log("stubborn", "job.log");
    assert!(job_log.contains("did not finish in time"), "{job_log}");
}

/// Class 2: a pathological Lua pattern (exponential backtracking inside one
/// C call, out of reach of the instruction hook) does not outlive the job
/// timeout: the job fails and the run reaches its end.
#[test]
fn a_pathological_pattern_does_not_outlive_the_job_timeout() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :backtrack [:quire/push]
  (fn [] (string.find (string.rep "a" 40) (.. (string.rep "a?" 40) (string.rep "a" 40))) nil))
(ci.job :after [:quire/push] (fn [] nil))
"#,
    );
    let started = Instant::now();
    let run = run(ws.path(), &["--job-timeout", "2"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("backtrack", "failed");
    run.assert_job("after", "complete");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// Class 2: a busy loop inside a coroutine while the top level is evaluated
/// is stopped at the declare deadline.
#[test]
fn a_busy_loop_in_a_coroutine_at_top_level_fails_at_the_declare_timeout() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(coroutine.resume (coroutine.create (fn [] (while true nil))))
(ci.job :a [:quire/push] (fn [] nil))
"#,
    );
    let run = run(ws.path(), &["--declare-timeout-secs", "2"], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("did not finish in time"), "{}", run.stderr());
}

const ENDLESS_MACRO: &str = r#"(local ci (require :quire.ci))
(macro forever [] (while true nil) nil)
(forever)
(ci.job :a [:quire/push] (fn [] nil))
"#;

/// Class 2: a macro that never returns makes `validate` fail (exit 1) once
/// the declare deadline passes, instead of hanging.
#[test]
fn a_macro_that_never_returns_fails_validate_at_the_declare_timeout() {
    let ws = workspace(ENDLESS_MACRO);
    let started = Instant::now();
    let checked = validate(ws.path(), &["--declare-timeout-secs", "2"]);
    assert_eq!(checked.status.code(), Some(1), "{}", checked.both());
    assert!(checked.both().contains("did not finish in time"), "{}", checked.both());
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Class 2: a macro that never returns makes `run` end with a pipeline
/// failure (exit 0, `run_finished` last) once the declare deadline passes.
#[test]
fn a_macro_that_never_returns_ends_run_as_a_pipeline_failure() {
    let ws = workspace(ENDLESS_MACRO);
    let run = run(ws.path(), &["--declare-timeout-secs", "2"], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("did not finish in time"), "{}", run.stderr());
}

// ---------------------------------------------------------------------------
// Class 3: compile time reads the host.
// ---------------------------------------------------------------------------

/// What a file outside the workspace holds: a bare symbol, so that Fennel
/// would echo it in an error ("unknown identifier: …") if it read it.
const STOLEN: &str = "stolen-host-secret-5b7e";

/// A workspace with `pipeline`, and `evil.fnl` (at its root and under
/// `.quire/`) symlinked to a file outside it.
fn workspace_with_outside_link(pipeline: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let outside = outside_dir();
    write(outside.path(), "evil.fnl", &format!("{STOLEN}\n"));
    let ws = workspace(pipeline);
    for link in ["evil.fnl", ".quire/evil.fnl"] {
        std::os::unix::fs::symlink(outside.path().join("evil.fnl"), ws.path().join(link)).unwrap();
    }
    (ws, outside)
}

/// Validate and run both refuse the pipeline as reaching outside the
/// workspace, and the outside file's content shows up nowhere.
fn assert_refused_as_outside(ws: &Path) {
    let checked = validate(ws, &[]);
    assert_eq!(checked.status.code(), Some(1), "{}", checked.both());
    assert!(checked.both().contains("outside the workspace"), "{}", checked.both());
    assert!(!checked.both().contains(STOLEN), "validate showed the outside file:\n{}", checked.both());
    let run = run(ws, &[], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("outside the workspace"), "{}", run.stderr());
    run.assert_nowhere(STOLEN);
}

/// Class 3: `include` of a module that resolves (through a symlink) to a
/// file outside the workspace is refused without reading it out.
#[test]
fn include_of_a_module_resolving_outside_the_workspace_is_refused() {
    let (ws, _outside) = workspace_with_outside_link(
        r#"(local ci (require :quire.ci))
(local stolen (include :evil))
(ci.job :a [:quire/push] (fn [{: sh}] (sh ["echo" (tostring stolen)])))
"#,
    );
    assert_refused_as_outside(ws.path());
}

/// Class 3: `import-macros` of a macro module outside the workspace is
/// refused without reading it out.
#[test]
fn import_macros_of_a_module_resolving_outside_the_workspace_is_refused() {
    let (ws, _outside) = workspace_with_outside_link(
        r#"(local ci (require :quire.ci))
(import-macros evil :evil)
(ci.job :a [:quire/push] (fn [] nil))
"#,
    );
    assert_refused_as_outside(ws.path());
}

/// Class 3: `require` from inside a macro (compile time) of a module
/// outside the workspace is refused without reading it out.
#[test]
fn require_in_a_macro_of_a_module_resolving_outside_the_workspace_is_refused() {
    let (ws, _outside) = workspace_with_outside_link(
        r#"(local ci (require :quire.ci))
(macro steal [] (require :evil) nil)
(steal)
(ci.job :a [:quire/push] (fn [] nil))
"#,
    );
    assert_refused_as_outside(ws.path());
}

/// Class 3: modules are never looked up in quire-ci's own working
/// directory (on a server: wherever `quire serve` was started).
#[test]
fn include_never_reads_modules_from_quire_cis_working_directory() {
    let cwd = outside_dir();
    write(cwd.path(), "stolen.fnl", &format!("{STOLEN}\n"));
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(local stolen (include :stolen))
(ci.job :a [:quire/push] (fn [{: sh}] (sh ["echo" (tostring stolen)])))
"#,
    );
    let checked = validate_from(cwd.path(), ws.path(), &[]);
    assert_eq!(checked.status.code(), Some(1), "{}", checked.both());
    assert!(!checked.both().contains(STOLEN), "{}", checked.both());
    let run = run_from(cwd.path(), ws.path(), &[], &[]);
    run.assert_refused();
    run.assert_nowhere(STOLEN);
}

/// Class 3: a `.quire/ci.fnl` that is a symlink to a file outside the
/// workspace is refused with a clear error that shows none of its content.
#[test]
fn a_ci_fnl_symlinked_outside_the_workspace_is_refused_without_its_content() {
    let outside = outside_dir();
    write(
        outside.path(),
        "ci.fnl",
        &format!(
            "(local ci (require :quire.ci))\n(local x {STOLEN})\n(ci.job :a [:quire/push] (fn [] nil))\n"
        ),
    );
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join(".quire")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("ci.fnl"), ws.path().join(".quire/ci.fnl")).unwrap();

    let checked = validate(ws.path(), &[]);
    assert_ne!(checked.status.code(), Some(0), "{}", checked.both());
    assert!(checked.both().contains("outside the workspace"), "{}", checked.both());
    assert!(!checked.both().contains(STOLEN), "validate showed the outside file:\n{}", checked.both());
    let run = run(ws.path(), &[], &[]);
    run.assert_refused();
    assert!(run.stderr().contains("outside the workspace"), "{}", run.stderr());
    run.assert_nowhere(STOLEN);
}

/// Class 3, the legitimate case: a pipeline may `include` a module of its
/// own under `.quire/`, wherever quire-ci is started from.
#[test]
fn a_pipeline_can_include_its_own_module_under_dot_quire() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(local helpers (include :helpers))
(ci.job :greet [:quire/push] (fn [{: sh}] (sh ["echo" helpers.greeting])))
"#,
    );
    write(ws.path(), ".quire/helpers.fnl", "{:greeting \"hello from a helper module\"}\n");
    let checked = validate_from(Path::new("/"), ws.path(), &[]);
    assert_eq!(checked.status.code(), Some(0), "{}", checked.both());
    let run = run_from(Path::new("/"), ws.path(), &[], &[]);
    run.assert_finished("success");
    assert_eq!(run.reassembled("greet", "sh-1.log", "stdout"), ["hello from a helper module"]);
}

// ---------------------------------------------------------------------------
// Class 4: redaction misses.
// ---------------------------------------------------------------------------

const SECRET: &str = "hunter2-hostile-secret-c0ffee";

/// Class 4: a secret written with Lua `print` is masked.
#[test]
fn a_secret_printed_by_lua_print_never_leaves_quire_ci() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :leak [:quire/push]
  (fn [{: secret}]
    (let [token (secret :token)]
      (print "the token is" token)
      (print (.. "again:" token ":end"))
      nil)))
"#,
    );
    let run = run(ws.path(), &[], &[("QUIRE_SECRET_TOKEN", SECRET)]);
    run.assert_finished("success");
    assert!(
        run.everything().contains("the token is"),
        "print's output went somewhere:\n{}",
        run.everything()
    );
    run.assert_nowhere(SECRET);
}

/// Class 4: a secret inside error messages (a Lua `error`, a command that
/// is not found, a bad `:cwd`, a bad option name) is masked everywhere.
#[test]
fn a_secret_in_error_messages_never_leaves_quire_ci() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :raise [:quire/push] (fn [{: secret}] (error (.. "deploy failed for " (secret :token)))))
(ci.job :program [:quire/push] (fn [{: sh : secret}] (sh [(secret :token) "--help"])))
(ci.job :cwd [:quire/push] (fn [{: sh : secret}] (sh "true" {:cwd (secret :token)})))
(ci.job :option [:quire/push] (fn [{: sh : secret}] (sh "true" {(secret :token) true})))
"#,
    );
    let run = run(ws.path(), &[], &[("QUIRE_SECRET_TOKEN", SECRET)]);
    run.assert_finished("pipeline_failure");
    for job in ["raise", "program", "cwd", "option"] {
        run.assert_job(job, "failed");
    }
    assert!(run.log("raise", "job.log").contains("deploy failed for ***"), "{}", run.log("raise", "job.log"));
    run.assert_nowhere(SECRET);
}

/// Class 4: each line of a multi-line secret is masked, whether the
/// command prints it, `print` writes it, it is in the command line, or in
/// an error.
#[test]
fn every_line_of_a_multi_line_secret_is_masked() {
    let lines =
        ["first-line-of-the-secret-71c4", "second-line-of-the-secret-9d2e", "third-line-of-the-secret-e5a0"];
    let secret = lines.join("\n");
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :leak [:quire/push]
  (fn [{: sh : secret}]
    (let [token (secret :token)]
      (sh ["printf" "%s\n" token])
      (sh "printf '%s\\n' \"$T\" >&2" {:env {:T token}})
      (sh (.. "echo '" token "'"))
      (print token)
      (error (.. "failed:\n" token)))))
"#,
    );
    let run = run(ws.path(), &[], &[("QUIRE_SECRET_TOKEN", &secret)]);
    run.assert_finished("pipeline_failure");
    assert_eq!(run.exits("leak"), [0, 0, 0], "{:?}", run.events());
    for line in lines {
        run.assert_nowhere(line);
    }
}

/// Class 4: a secret straddling the 16 KiB CRI chunk boundary (one output
/// line of 16384 − 3 filler bytes, then the secret) is masked: redaction
/// happens before the line is cut into chunks.
#[test]
fn a_secret_straddling_the_cri_chunk_boundary_is_masked() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :straddle [:quire/push]
  (fn [{: sh : secret}]
    (sh "head -c 16381 /dev/zero | tr '\\000' x; printf '%s\\n' \"$T\"" {:env {:T (secret :token)}})))
"#,
    );
    let run = run(ws.path(), &[], &[("QUIRE_SECRET_TOKEN", SECRET)]);
    run.assert_finished("success");
    let lines = run.reassembled("straddle", "sh-1.log", "stdout");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0], format!("{}***", "x".repeat(16381)), "the line as reassembled from its chunks");
    run.assert_nowhere(SECRET);
    run.assert_nowhere(&SECRET[3..]);
}

/// Class 4: a multi-byte UTF-8 character straddling the chunk boundary
/// comes out intact: the reassembled chunks decode to the original line.
#[test]
fn a_utf8_character_straddling_the_cri_chunk_boundary_comes_out_intact() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :euro [:quire/push]
  (fn [{: sh}] (sh "head -c 16383 /dev/zero | tr '\\000' x; printf '\\342\\202\\254-tail\\n'")))
"#,
    );
    let run = run(ws.path(), &[], &[]);
    run.assert_finished("success");
    let raw = std::fs::read(run.log_path("euro", "sh-1.log")).unwrap();
    assert!(String::from_utf8(raw).is_ok(), "the log is valid UTF-8");
    assert!(!run.log("euro", "sh-1.log").contains('\u{FFFD}'), "a character was mangled");
    for (_, _, chunk) in run.cri("euro", "sh-1.log") {
        assert!(chunk.len() <= 16 * 1024, "a chunk of {} bytes", chunk.len());
    }
    let lines = run.reassembled("euro", "sh-1.log", "stdout");
    assert_eq!(lines, [format!("{}€-tail", "x".repeat(16383))]);
}

// ---------------------------------------------------------------------------
// Class 6: bad values crash the executor instead of failing the job.
// ---------------------------------------------------------------------------

/// Class 6: a NUL byte in an argv element, in an `:env` value and in a
/// shell string each fail only their job with a message about NUL; the
/// other jobs run and quire-ci keeps its exit-0 contract.
#[test]
fn nul_bytes_in_argv_env_or_shell_strings_fail_only_their_job() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :argv [:quire/push] (fn [{: sh}] (sh ["echo" "a\0b"])))
(ci.job :env [:quire/push] (fn [{: sh}] (sh "echo $X" {:env {:X "a\0b"}})))
(ci.job :shell [:quire/push] (fn [{: sh}] (sh "echo a\0b")))
(ci.job :fine [:quire/push] (fn [{: sh}] (sh "echo still running")))
"#,
    );
    let run = run(ws.path(), &[], &[]);
    run.assert_finished("pipeline_failure");
    for job in ["argv", "env", "shell"] {
        run.assert_job(job, "failed");
        let job_log = run.log(job, "job.log");
        assert!(job_log.contains("NUL"), "{job}: {job_log}");
    }
    run.assert_job("fine", "complete");
    assert_eq!(run.reassembled("fine", "sh-1.log", "stdout"), ["still running"]);
}

/// Class 6: a job id too long to be a file name is a validation error
/// (validate exits 1, run ends as a pipeline failure), never a crash.
#[test]
fn an_over_long_job_id_is_a_validation_error() {
    for length in [200, 300] {
        let id = "j".repeat(length);
        let ws = workspace(&format!(
            "(local ci (require :quire.ci))\n(ci.job :{id} [:quire/push] (fn [{{: sh}}] (sh \"echo hi\")))\n"
        ));
        let checked = validate(ws.path(), &["--format", "short"]);
        assert_eq!(checked.status.code(), Some(1), "{length}: {}", checked.both());
        let run = run(ws.path(), &[], &[]);
        run.assert_refused();
    }
}

// ---------------------------------------------------------------------------
// Class 7: processes outlive their run.
// ---------------------------------------------------------------------------

/// A command that detaches a process into a session of its own (which
/// leaves the command's process group), waits until it has written its pid
/// to `$MARK_DIR/detached`, then runs `tail` (shell text, escaped for a
/// Fennel string).
fn detaching_pipeline(tail: &str) -> String {
    format!(
        r#"(local ci (require :quire.ci))
(ci.job :detach [:quire/push]
  (fn [{{: sh}}]
    (sh "setsid sh -c 'echo $$ > \"$MARK_DIR/detached\"; exec sleep 300' & while [ ! -s \"$MARK_DIR/detached\" ]; do sleep 0.05; done; {tail}")))
"#
    )
}

/// Class 7: without bubblewrap, a process that detached with `setsid` is
/// gone once quire-ci has finished the run normally.
#[test]
fn a_detached_process_is_gone_when_quire_ci_finishes() {
    let markers = Markers::new();
    let ws = workspace(&detaching_pipeline("echo detached"));
    let run = run(ws.path(), &["--sandbox", "none"], &[("MARK_DIR", markers.path().to_str().unwrap())]);
    run.assert_finished("success");
    assert!(markers.pid_of("detached").is_some(), "the detached process wrote its pid");
    markers.assert_all_gone();
}

/// Class 7: without bubblewrap, a process that detached with `setsid` is
/// gone once quire-ci has been stopped with SIGTERM mid-run (how the
/// server cancels and times out runs).
#[test]
fn a_detached_process_is_gone_when_quire_ci_is_terminated_mid_run() {
    let markers = Markers::new();
    let ws = workspace(&detaching_pipeline(r#"echo $$ > \"$MARK_DIR/foreground\"; exec sleep 300"#));
    let logs = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let mut quire_ci = Stopped(
        Command::new(QUIRE_CI)
            .args(["run", "--sandbox", "none", "--sha", "1234567", "--ref", "refs/heads/main", "--workspace"])
            .arg(ws.path())
            .arg("--out-dir")
            .arg(logs.path())
            .env("MARK_DIR", markers.path())
            .env_remove("QUIRE__SERVER_URL")
            .env_remove("QUIRE__RUN_TOKEN")
            .current_dir(ws.path())
            .stdin(Stdio::null())
            .stdout(File::create(output.path().join("stdout")).unwrap())
            .stderr(File::create(output.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut quire_ci.0;
    let running = wait_for("the command to detach and run on", 30, || {
        if markers.pid_of("foreground").is_some() {
            return Some(true);
        }
        child.try_wait().unwrap().map(|_| false)
    });
    assert!(running, "quire-ci ended before its command ran: {}", lossy(&output.path().join("stderr")));
    signal(child.id() as i32, "TERM");
    wait_for("quire-ci to exit on SIGTERM", 30, || child.try_wait().unwrap());
    markers.assert_all_gone();
}

/// A quire-ci started by a test, stopped when the test ends however it ends.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

// ---------------------------------------------------------------------------
// Class 8: side effects on the host.
// ---------------------------------------------------------------------------

/// uid, gid and mode of every path below (and including) `dir`.
fn ownership(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32)> {
    let mut all = BTreeMap::new();
    let meta = dir.symlink_metadata().unwrap();
    all.insert(dir.to_path_buf(), (meta.uid(), meta.gid(), meta.mode()));
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            all.extend(ownership(&entry.unwrap().path()));
        }
    }
    all
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git").current_dir(dir).args(args).output().unwrap()
}

/// Class 8: `quire-ci run --sandbox bwrap` as root on a checkout owned by
/// root leaves the owner, group and mode of every file and directory of the
/// checkout as they were, and git still accepts the checkout afterwards.
#[test]
fn a_local_bwrap_run_as_root_leaves_the_checkouts_ownership_and_modes_alone() {
    let checkout = tempfile::tempdir().unwrap();
    write(
        checkout.path(),
        ".quire/ci.fnl",
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"cat README.md\") (sh \"ls -la src\")))\n",
    );
    write(checkout.path(), "README.md", "the user's own checkout\n");
    write(checkout.path(), "src/main.txt", "source\n");
    write_executable(checkout.path(), "scripts/build.sh", "#!/bin/sh\necho build\n");
    // As `git clone` leaves it: anyone may read the checkout.
    std::fs::set_permissions(checkout.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["config", "user.email", "t@example.com"],
        &["config", "user.name", "T"],
        &["add", "-A"],
        &["commit", "-q", "-m", "checkout"],
    ] {
        assert!(git(checkout.path(), args).status.success(), "git {args:?}");
    }
    let before = ownership(checkout.path());

    let run = run_bwrap(checkout.path(), &[], &[]);
    run.assert_finished("success");

    let after = ownership(checkout.path());
    for (path, was) in &before {
        assert_eq!(after.get(path), Some(was), "{} changed (uid, gid, mode)", path.display());
    }
    let status = git(checkout.path(), &["status", "--porcelain"]);
    assert!(status.status.success(), "git refuses the checkout: {}", String::from_utf8_lossy(&status.stderr));
}

/// Class 8: a command flooding its output (5 MiB) under `--max-log-mb 1`
/// leaves a log of about 1 MiB ending with a truncation line.
#[test]
fn a_flood_of_output_is_cut_at_max_log_mb_with_a_truncation_line() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :flood [:quire/push]
  (fn [{: sh}] (sh "head -c 5242880 /dev/zero | tr '\\000' y | fold -w 100")))
"#,
    );
    let run = run(ws.path(), &["--max-log-mb", "1"], &[]);
    let events = run.events();
    assert_eq!(run.ended.status.code(), Some(0), "{}", run.stderr());
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    let size = std::fs::metadata(run.log_path("flood", "sh-1.log")).unwrap().len();
    assert!(size < 1_258_291, "the log is {size} bytes");
    let log = run.log("flood", "sh-1.log");
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("truncated"), "last line: {last:?}");
}

/// Class 8: filling the sandbox's `/tmp` past `--max-tmp-mb` fails the
/// command (its job fails, or `:check false` sees a non-zero exit), and
/// the run still reaches its end.
#[test]
fn filling_the_sandboxes_tmp_past_max_tmp_mb_fails_the_command() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :fill [:quire/push]
  (fn [{: sh}] (sh "dd if=/dev/zero of=/tmp/fill bs=1M count=64")))
(ci.job :lenient [:quire/push]
  (fn [{: sh}]
    (let [r (sh "dd if=/dev/zero of=/tmp/fill bs=1M count=64" {:check false})]
      (when (= r.exit 0) (error "the write to /tmp was not capped")))))
(ci.job :after [:quire/push] (fn [{: sh}] (sh "echo the run goes on")))
"#,
    );
    let run = run_bwrap(ws.path(), &["--max-tmp-mb", "8"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("fill", "failed");
    assert_eq!(run.exits("fill").len(), 1);
    assert_ne!(run.exits("fill")[0], 0, "{}", run.log("fill", "sh-1.log"));
    run.assert_job("lenient", "complete");
    run.assert_job("after", "complete");
}

/// Free bytes on the file system holding `path`, as `stat -f` reports them.
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    parts.next().unwrap() * parts.next().unwrap()
}

/// Class 8: a command that writes the workspace's file system down past
/// `--min-free-disk-mb` is killed, its job fails, and the run finishes; the
/// file it was writing stops growing well before the disk is full. (While
/// the disk stays below the floor every later command is killed too.)
#[test]
fn filling_the_disk_past_the_free_space_floor_kills_the_command() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :fill [:quire/push]
  (fn [{: sh}] (sh "for i in $(seq 1 1000); do head -c 1048576 /dev/zero >> fill.bin; sleep 0.01; done")))
"#,
    );
    // The floor sits 64 MiB below what is free now; the command writes up
    // to 1 GiB at about 100 MiB/s, so it crosses the floor within a second.
    let floor_mb = (free_bytes(ws.path()) / (1024 * 1024)).saturating_sub(64);
    let run = run(ws.path(), &["--jobs", "1", "--min-free-disk-mb", &floor_mb.to_string()], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("fill", "failed");
    let written = std::fs::metadata(ws.path().join("fill.bin")).unwrap().len();
    assert!(written < 512 * 1024 * 1024, "the command was stopped early: {written} bytes written");
    let log = run.log("fill", "sh-1.log");
    assert!(log.contains("quire-ci: command killed: the workspace's file system has less than"), "{log}");
}

/// Class 1: the helper that starts a job's commands inside its sandbox
/// runs as the same user as they do; a command can neither open the
/// helper's socket through /proc nor trace it (to start processes past its
/// own limits or with another environment).
#[test]
fn a_command_cannot_reach_the_helper_that_started_it() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push]
  (fn [{: sh}]
    (sh "if ls /proc/$PPID/fd >/dev/null 2>&1; then echo helper-fds-visible; else echo helper-fds-hidden; fi")
    (sh "if cat /proc/$PPID/environ >/dev/null 2>&1; then echo helper-environ-visible; else echo helper-environ-hidden; fi")))
"#,
    );
    let owned = Command::new("chown").args(["-R", "65534:65534"]).arg(ws.path()).status().unwrap();
    assert!(owned.success());
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    assert!(run.log("a", "sh-1.log").contains("helper-fds-hidden"), "{}", run.log("a", "sh-1.log"));
    assert!(run.log("a", "sh-2.log").contains("helper-environ-hidden"), "{}", run.log("a", "sh-2.log"));
}

/// Class 7: a command that stops the helper of its sandbox (same user) so
/// that its kill is never carried out still ends at its timeout: the whole
/// sandbox goes.
#[test]
fn stopping_the_sandbox_helper_does_not_outlive_the_timeout() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push] (fn [{: sh}] (sh "kill -STOP $PPID; exec sleep 100000" {:timeout 2})))
"#,
    );
    let started = std::time::Instant::now();
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("a", "failed");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// Class 7: in the sandbox, what a command detached from its group
/// (`setsid … &`) is gone when the command returns, so it cannot watch the
/// job's later commands.
#[test]
fn a_detached_process_in_the_sandbox_dies_with_its_sh() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push]
  (fn [{: sh}]
    (sh "setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo detached")
    (sh "for p in /proc/[0-9]*; do if [ \"$(cat $p/comm 2>/dev/null)\" = sleep ]; then echo survived; fi; done")))
"#,
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    assert!(run.log("a", "sh-1.log").contains("detached"));
    assert!(!run.log("a", "sh-2.log").contains("survived"), "{}", run.log("a", "sh-2.log"));
}

/// Class 8: a command line of 10 MB does not flood the event stream: what
/// events and messages show of it is bounded.
#[test]
fn a_huge_command_line_is_shown_cut() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push] (fn [{: sh}] (sh (.. "true " (string.rep "x" 10000000)) {:check false})))
"#,
    );
    let run = run(ws.path(), &[], &[]);
    run.assert_finished("success");
    let cmd =
        run.events().iter().find(|e| e["type"] == "sh_started").unwrap()["cmd"].as_str().unwrap().to_string();
    assert!(cmd.len() < 5000, "the event shows {} bytes", cmd.len());
    assert!(cmd.ends_with("(10000005 bytes in all)"), "{}", &cmd[cmd.len() - 40..]);
}

/// Class 8: a run-fn printing without end fills neither the progress
/// output nor (on the server) `quire-ci.log`: each print is cut, and a
/// job's prints stop after 1 MiB with a line saying so.
#[test]
fn a_printing_loop_is_cut_to_a_budget() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :loud [:quire/push]
  (fn [] (for [i 1 2000] (print (string.rep "y" 100000))) nil))
"#,
    );
    let run = run(ws.path(), &[], &[]);
    run.assert_finished("success");
    let shown = run.stderr().len() + run.ended.stdout.len();
    assert!(shown < 2 * 1024 * 1024, "{shown} bytes of output");
    assert!(run.stderr().contains("the rest of its print output is discarded"));
}

/// Class 8: a run that loops on `sh` is stopped at its command budget
/// (`--max-commands`): the job fails saying so, and the run goes on.
#[test]
fn a_run_looping_on_sh_is_stopped_at_its_command_budget() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :looping [:quire/push] (fn [{: sh}] (while true (sh ["true"]))))
(ci.job :after [:quire/push] (fn [] nil))
"#,
    );
    let run = run(ws.path(), &["--max-commands", "25", "--jobs", "1"], &[]);
    run.assert_finished("pipeline_failure");
    run.assert_job("looping", "failed");
    run.assert_job("after", "complete");
    let started = run.events().iter().filter(|e| e["type"] == "sh_started").count();
    assert_eq!(started, 25, "exactly the budget ran");
    assert!(
        run.log("looping", "job.log").contains("its limit (--max-commands"),
        "{}",
        run.log("looping", "job.log")
    );
}

/// Class 8: a `ci.fnl` of more than 1 MiB is refused before it is read
/// whole; the run is a pipeline failure and quire-ci exits 0.
#[test]
fn an_oversized_pipeline_is_refused_unread() {
    let mut text = String::from("(local ci (require :quire.ci))\n");
    text.push_str(&";".repeat(2 * 1024 * 1024));
    let ws = workspace(&text);
    let checked = validate(ws.path(), &[]);
    assert_ne!(checked.status.code(), Some(0));
    assert!(checked.both().contains("larger than 1048576 bytes"), "{}", checked.both());
    let run = run(ws.path(), &[], &[]);
    run.assert_refused();
}

/// Class 1: in a job's sandbox each command leads a session of its own, as
/// a sandbox per command did (no terminal it could reach, one group to kill).
#[test]
fn each_sandboxed_command_leads_its_own_session() {
    let ws = workspace(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push]
  (fn [{: sh}]
    (sh "read -r pid comm state ppid pgrp sid rest < /proc/self/stat; if [ \"$sid\" = \"$$\" ] && [ \"$pgrp\" = \"$$\" ]; then echo own-session; fi")))
"#,
    );
    let run = run_bwrap(ws.path(), &[], &[]);
    run.assert_finished("success");
    assert!(run.log("a", "sh-1.log").contains("own-session"), "{}", run.log("a", "sh-1.log"));
}
