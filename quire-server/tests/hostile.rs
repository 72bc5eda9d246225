//! Hostile pipelines pushed to a real `quire serve` (issue 10): each test
//! is one attack of the issue's classes, carried by a real `git push`, run
//! by real `quire-ci` processes, and judged from the database and the run
//! directory:
//!
//! 1. the sandbox's launch steered from the pipeline, to unhide the data
//!    root;
//! 2. the Lua memory limit from `config.fnl`;
//! 4. secrets leaking into the run directory (`quire-ci.log` included);
//! 5. secrets read by repositories they are not meant for;
//! 7. processes outliving a cancelled or timed-out run;
//! 8. a data root reached through a symlink, and the log and `/tmp` caps
//!    from `config.fnl`.
//!
//! Every server started here is killed on drop, and every process an
//! attack leaves behind is killed when its test ends.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::markers::Markers;
use common::Root;

fn run_dir(root: &Root, repo: &str, run: &str) -> PathBuf {
    root.path().join("runs").join(repo).join(run)
}

fn log(root: &Root, repo: &str, run: &str, job: &str, file: &str) -> String {
    let path = run_dir(root, repo, run).join("jobs").join(job).join(file);
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn job_state(root: &Root, run: &str, job: &str) -> Option<String> {
    root.db()
        .query_row("SELECT state FROM jobs WHERE run_id = ?1 AND job_id = ?2", [run, job], |r| r.get(0))
        .ok()
}

/// `needle` is in no file of the run's directory (`quire-ci.log`,
/// `events.jsonl`, every log).
fn assert_nowhere_in_run(root: &Root, repo: &str, run: &str, needle: &str) {
    for path in common::files_below(&run_dir(root, repo, run)) {
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(!text.contains(needle), "{needle:?} leaked into {}:\n{text}", path.display());
    }
}

/// Pushes `pipeline` as `repo` and waits for its one run to finish.
fn push_and_finish(root: &Root, repo: &str, pipeline: &str) -> (String, (String, Option<String>)) {
    root.push_pipeline(repo, pipeline, "main");
    let run = root.wait_run_count(repo, 1).remove(0);
    let finished = root.wait_finished(&run);
    (run, finished)
}

fn failed_pipeline() -> (String, Option<String>) {
    ("failed".to_string(), Some("pipeline-failure".to_string()))
}

// ---------------------------------------------------------------------------
// Class 1: the sandbox's own launch is steerable from the pipeline.
// ---------------------------------------------------------------------------

/// Fake helpers committed in the repository under `bin/`: each announces
/// itself on stderr, then runs what follows its `--` (so a fake `setpriv`
/// would hand the command root with every capability).
const FAKE_HELPERS: &[&str] =
    &["setpriv", "bwrap", "capsh", "unshare", "nsenter", "prlimit", "setsid", "chroot", "runuser", "env"];

const FAKE_HELPER: &str = "#!/bin/sh\necho \"FAKE-HELPER-RAN $0\" >&2\n\
     while [ $# -gt 0 ] && [ \"$1\" != \"--\" ]; do shift; done\n[ $# -gt 0 ] && shift\nexec \"$@\"\n";

/// Class 1: with fake helpers first on its `PATH`, a command that unmounts
/// what hides the data root still cannot read the root's files, holds no
/// capabilities, and no fake helper ever runs.
#[test]
fn fake_helpers_and_unmounting_cannot_unhide_the_data_root() {
    let root = Root::world_readable();
    root.write_config("; root-canary-7d3a\n{:ci {:max-processes 256}}\n");
    std::fs::set_permissions(root.path().join("config.fnl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _server = root.serve();
    let work = root.repo("app.git");
    for name in FAKE_HELPERS {
        let path = format!("bin/{name}");
        work.write(&path, FAKE_HELPER);
        std::fs::set_permissions(work.path().join(&path), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let r = root.path().display();
    work.pipeline(&format!(
        r#"(local ci (require :quire.ci))
(ci.job :unhide [:quire/push]
  (fn [{{: sh}}]
    (let [ws (string.gsub (. (sh "pwd") :stdout) "%s+$" "")
          tricked {{:check false :env {{:PATH (.. ws "/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")}}}}]
      (sh "umount -l {r}; cat {r}/config.fnl" tricked)
      (sh "umount -l {r}; cat {r}/config.fnl" {{:check false}})
      (sh "grep ^Cap /proc/self/status" tricked))))
"#
    ));
    work.commit("hostile");
    work.push("main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&run), ("complete".to_string(), None), "{}", root.server_log());
    let codes = root.exits(&run, "unhide");
    assert_eq!(codes.len(), 4, "{codes:?}");
    assert_ne!(codes[1], 0, "the data root was read: {}", log(&root, "app.git", &run, "unhide", "sh-2.log"));
    assert_ne!(codes[2], 0, "the data root was read: {}", log(&root, "app.git", &run, "unhide", "sh-3.log"));
    assert_nowhere_in_run(&root, "app.git", &run, "root-canary-7d3a");
    assert_nowhere_in_run(&root, "app.git", &run, "FAKE-HELPER-RAN");
    let caps = log(&root, "app.git", &run, "unhide", "sh-4.log");
    assert!(caps.contains("stdout F CapEff:\t0000000000000000"), "{caps}");
    assert!(caps.contains("stdout F CapBnd:\t0000000000000000"), "{caps}");
}

// ---------------------------------------------------------------------------
// Class 2: Lua resource limits, from config.fnl.
// ---------------------------------------------------------------------------

/// Class 2: `:ci {:lua-memory-mb N}` reaches the executor: an allocation
/// bomb (256 MiB of live strings) fails its job with a reason about memory.
#[test]
fn the_configured_lua_memory_limit_fails_an_allocation_bomb() {
    let root = Root::new();
    root.write_config("{:ci {:lua-memory-mb 64 :sandbox :none}}");
    let _server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :bomb [:quire/push]
  (fn [] (let [t []] (for [i 1 256] (tset t i (.. (string.rep "x" 1048576) i)))) nil))
"#,
    );
    assert_eq!(finished, failed_pipeline(), "{}", root.server_log());
    assert_eq!(job_state(&root, &run, "bomb").as_deref(), Some("failed"));
    let job_log = log(&root, "app.git", &run, "bomb", "job.log");
    assert!(job_log.contains("memory"), "{job_log}");
}

// ---------------------------------------------------------------------------
// Class 4: redaction misses.
// ---------------------------------------------------------------------------

/// Class 4: secrets written by Lua `print` (into `quire-ci.log`, which the
/// web page shows), in an error, split over lines, or straddling a CRI
/// chunk boundary never reach any file of the run directory.
#[test]
fn secrets_never_reach_the_run_directory_through_print_errors_or_line_splits() {
    let root = Root::new();
    root.write_config(
        "{:secrets {:plain \"plain-server-secret-3c9e\"\n           :lines \"first-line-of-server-secret-1a7f\\nsecond-line-of-server-secret-2b8d\"}\n :ci {:sandbox :none}}",
    );
    let _server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :leak [:quire/push]
  (fn [{: sh : secret}]
    (let [plain (secret :plain) lines (secret :lines)]
      (print "printed" plain)
      (print lines)
      (sh ["printf" "%s\n" lines])
      (sh "head -c 16381 /dev/zero | tr '\\000' x; printf '%s\\n' \"$P\"" {:env {:P plain}})
      (error (.. "failed with " plain)))))
"#,
    );
    assert_eq!(finished, failed_pipeline(), "{}", root.server_log());
    assert_eq!(root.exits(&run, "leak"), [0, 0]);
    let quire_ci_log = std::fs::read_to_string(run_dir(&root, "app.git", &run).join("quire-ci.log")).unwrap();
    assert!(quire_ci_log.contains("printed"), "print reached quire-ci.log: {quire_ci_log}");
    for needle in [
        "plain-server-secret-3c9e",
        "in-server-secret-3c9e",
        "first-line-of-server-secret-1a7f",
        "second-line-of-server-secret-2b8d",
    ] {
        assert_nowhere_in_run(&root, "app.git", &run, needle);
    }
}

// ---------------------------------------------------------------------------
// Class 5: secrets are global.
// ---------------------------------------------------------------------------

/// Class 5: a secret scoped to `app.git` reads as undeclared, with exactly
/// the failure of a name never declared, in a run of another repository;
/// an unscoped secret stays readable by both.
#[test]
fn a_scoped_secret_is_undeclared_for_other_repositories() {
    let root = Root::new();
    root.write_config(
        r#"{:secrets {:shared "shared-secret-value-4a1b"
           :scoped {:value "scoped-secret-value-8c2d" :repos ["app.git"]}}
 :ci {:sandbox :none}}"#,
    );
    let _server = root.serve();
    let pipeline = r#"(local ci (require :quire.ci))
(ci.job :shared [:quire/push]
  (fn [{: sh : secret}] (sh ["test" (secret :shared) "=" "shared-secret-value-4a1b"])))
(ci.job :scoped [:quire/push]
  (fn [{: sh : secret}] (sh ["test" (secret :scoped) "=" "scoped-secret-value-8c2d"])))
(ci.job :undeclared [:quire/push]
  (fn [{: secret}] (secret :never-declared)))
"#;
    root.push_pipeline("app.git", pipeline, "main");
    root.push_pipeline("other.git", pipeline, "main");
    let app = root.wait_run_count("app.git", 1).remove(0);
    let other = root.wait_run_count("other.git", 1).remove(0);
    assert_eq!(root.wait_finished(&app), failed_pipeline(), "{}", root.server_log());
    assert_eq!(root.wait_finished(&other), failed_pipeline(), "{}", root.server_log());

    assert_eq!(job_state(&root, &app, "shared").as_deref(), Some("complete"));
    assert_eq!(
        job_state(&root, &app, "scoped").as_deref(),
        Some("complete"),
        "the repository it is for reads it"
    );
    assert_eq!(job_state(&root, &other, "shared").as_deref(), Some("complete"));
    assert_eq!(job_state(&root, &other, "scoped").as_deref(), Some("failed"), "another repository cannot");

    let undeclared = log(&root, "other.git", &other, "undeclared", "job.log");
    let hint = undeclared
        .split("secret `never-declared` is not declared")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("the undeclared failure: {undeclared}"));
    let scoped = log(&root, "other.git", &other, "scoped", "job.log");
    assert!(
        scoped.contains(&format!("secret `scoped` is not declared{hint}\n")),
        "the scoped secret's failure is the undeclared one: {scoped}\nvs {undeclared}"
    );
    assert_nowhere_in_run(&root, "other.git", &other, "scoped-secret-value-8c2d");
}

// ---------------------------------------------------------------------------
// Class 7: processes outlive their run.
// ---------------------------------------------------------------------------

/// Detaches a process into a session of its own (out of the command's
/// process group), waits for its pid in `$MARK_DIR/detached`, then marks
/// itself and sleeps.
const DETACHING: &str = r#"(local ci (require :quire.ci))
(ci.job :detach [:quire/push]
  (fn [{: sh}]
    (sh "setsid sh -c 'echo $$ > \"$MARK_DIR/detached\"; exec sleep 300' & while [ ! -s \"$MARK_DIR/detached\" ]; do sleep 0.05; done; echo $$ > \"$MARK_DIR/foreground\"; exec sleep 300")))
"#;

/// Class 7: without bubblewrap, a process that detached with `setsid` is
/// gone once the run is cancelled (`quire ci cancel`).
#[test]
fn a_detached_process_is_gone_after_the_run_is_cancelled() {
    let root = Root::new();
    root.write_config("{:ci {:sandbox :none}}");
    let markers = Markers::new();
    let _server = root.serve_with(&[("MARK_DIR", markers.path().to_str().unwrap())]);
    root.push_pipeline("app.git", DETACHING, "main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    root.wait_for("the command to detach and run on", 30, || {
        markers.pid_of("foreground").is_some().then_some(())
    });
    root.quire_ok(&["ci", "cancel", &run]);
    assert_eq!(root.wait_finished(&run), ("failed".to_string(), Some("canceled".to_string())));
    markers.assert_all_gone();
}

/// Class 7: without bubblewrap, a process that detached with `setsid` is
/// gone once the run has timed out.
#[test]
fn a_detached_process_is_gone_after_the_run_times_out() {
    let root = Root::new();
    root.write_config("{:ci {:timeout-secs 2 :sandbox :none}}");
    let markers = Markers::new();
    let _server = root.serve_with(&[("MARK_DIR", markers.path().to_str().unwrap())]);
    root.push_pipeline("app.git", DETACHING, "main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&run), ("failed".to_string(), Some("timeout".to_string())));
    assert!(markers.pid_of("detached").is_some(), "the command detached before the timeout");
    markers.assert_all_gone();
}

// ---------------------------------------------------------------------------
// Class 8: side effects on the host.
// ---------------------------------------------------------------------------

/// Class 8: a data root given as a symlink to a real directory still runs
/// sandboxed commands, and the root stays hidden under both its names.
#[test]
fn a_data_root_reached_through_a_symlink_still_runs_sandboxed_commands() {
    let real = tempfile::Builder::new().prefix("quirereal").tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(real.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = Root::world_readable();
    std::fs::remove_dir(root.path()).unwrap();
    std::os::unix::fs::symlink(real.path(), root.path()).unwrap();
    let _server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        &format!(
            r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{{: sh}}]
    (sh "echo built > out.txt && cat out.txt")
    (sh "test -e {link}/quire.db" {{:check false}})
    (sh "test -e {real}/quire.db" {{:check false}})))
"#,
            link = root.path().display(),
            real = real.path().display()
        ),
    );
    assert_eq!(finished, ("complete".to_string(), None), "{}", root.server_log());
    let codes = root.exits(&run, "build");
    assert_eq!(codes.len(), 3, "{codes:?}");
    assert_eq!(codes[0], 0, "{}", log(&root, "app.git", &run, "build", "sh-1.log"));
    assert!(log(&root, "app.git", &run, "build", "sh-1.log").contains("stdout F built"));
    assert_ne!(codes[1], 0, "the data root is visible through its symlink");
    assert_ne!(codes[2], 0, "the data root is visible under its real path");
}

/// Class 8: `:ci {:max-log-mb 1}` caps a command's log: 5 MiB of output
/// leave a log of about 1 MiB ending with a truncation line.
#[test]
fn the_configured_log_cap_truncates_a_flood_of_output() {
    let root = Root::new();
    root.write_config("{:ci {:max-log-mb 1 :sandbox :none}}");
    let _server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :flood [:quire/push]
  (fn [{: sh}] (sh "head -c 5242880 /dev/zero | tr '\\000' y | fold -w 100")))
"#,
    );
    assert_ne!(finished.1.as_deref(), Some("process-crashed"), "{}", root.server_log());
    let path = run_dir(&root, "app.git", &run).join("jobs/flood/sh-1.log");
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 1_258_291, "the log is {size} bytes");
    let text = log(&root, "app.git", &run, "flood", "sh-1.log");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.contains("truncated"), "last line: {last:?}");
}

/// Class 8: `:ci {:max-tmp-mb 8}` caps the sandbox's `/tmp`: writing 64 MiB
/// there fails the command and its job; the run goes on to its end.
#[test]
fn the_configured_tmp_cap_fails_a_command_filling_tmp() {
    let root = Root::world_readable();
    root.write_config("{:ci {:max-tmp-mb 8}}");
    let _server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        r#"(local ci (require :quire.ci))
(ci.job :fill [:quire/push]
  (fn [{: sh}] (sh "dd if=/dev/zero of=/tmp/fill bs=1M count=64")))
(ci.job :after [:quire/push] (fn [{: sh}] (sh "echo the run goes on")))
"#,
    );
    assert_eq!(finished, failed_pipeline(), "{}", root.server_log());
    assert_eq!(job_state(&root, &run, "fill").as_deref(), Some("failed"));
    let codes = root.exits(&run, "fill");
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_ne!(codes[0], 0, "{}", log(&root, "app.git", &run, "fill", "sh-1.log"));
    assert_eq!(job_state(&root, &run, "after").as_deref(), Some("complete"));
}

/// An executor that was taken over (a Lua escape in quire-ci) could leave
/// symlinks in the run directory it writes. The server never reads through
/// them: the raw log, the run page and the live stream all refuse a
/// symlinked log or job directory, so no host file is served.
#[test]
fn symlinks_left_in_a_run_directory_never_make_the_server_serve_host_files() {
    let root = Root::new();
    let server = root.serve();
    let (run, finished) = push_and_finish(
        &root,
        "app.git",
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo one\") (sh \"echo two\")))\n",
    );
    assert_eq!(finished.0, "complete", "{}", root.server_log());
    let canary = root.path().join("host-canary.txt");
    std::fs::write(&canary, "2026-11-22T10:00:00.000000001Z stdout F host-canary-91f3\n").unwrap();
    let dir = run_dir(&root, "app.git", &run);
    // The log itself a link, and a whole job directory a link.
    let log = dir.join("jobs/a/sh-1.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&canary, &log).unwrap();
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&canary, elsewhere.join("sh-2.log")).unwrap();
    std::fs::rename(dir.join("jobs/a"), root.path().join("moved-job")).unwrap();
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("jobs/a")).unwrap();

    for path in [format!("/runs/{run}/logs/a/1"), format!("/runs/{run}/logs/a/2"), format!("/runs/{run}")] {
        let (status, body) = common::get(&format!("{}{path}", server.url));
        assert!(!body.contains("host-canary-91f3"), "{path} served a host file ({status}):\n{body}");
    }
    let (_, events) = common::get(&format!("{}/api/runs/{run}/events", server.url));
    assert!(events.contains("event: end"), "{events}");
    assert!(!events.contains("host-canary-91f3"), "the live stream read through a link:\n{events}");
}
