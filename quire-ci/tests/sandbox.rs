//! `quire-ci run --sandbox bwrap` with real bubblewrap: what a pipeline may
//! do (work in its checkout) and what it may not (read hidden paths, write
//! outside the workspace, reach the network, see quire's variables, exhaust
//! processes or disk, run forever). Every attempt is reported and the run
//! still reaches its outcome.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Run {
    out: Output,
    logs: tempfile::TempDir,
    events: Vec<Value>,
}

impl Run {
    fn log(&self, job: &str, n: u32) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("jobs/{job}/sh-{n}.log"))).unwrap_or_default()
    }

    /// `(job, exit_code)` of every finished command, in order.
    fn exits(&self) -> Vec<(String, i64)> {
        self.events
            .iter()
            .filter(|e| e["type"] == "sh_finished")
            .map(|e| (e["job_id"].as_str().unwrap().to_string(), e["exit_code"].as_i64().unwrap()))
            .collect()
    }

    fn job_outcomes(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e["type"] == "job_finished")
            .map(|e| (e["job_id"].as_str().unwrap().to_string(), e["outcome"].as_str().unwrap().to_string()))
            .collect()
    }

    fn outcome(&self) -> &str {
        self.events.last().unwrap()["outcome"].as_str().unwrap()
    }
}

fn sandboxed_run(workspace: &Path, pipeline: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    std::fs::create_dir_all(workspace.join(".quire")).unwrap();
    std::fs::write(workspace.join(".quire/ci.fnl"), pipeline).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args([
            "run",
            "--sandbox",
            "bwrap",
            "--events",
            "stdout",
            "--sha",
            "1234567",
            "--ref",
            "refs/heads/main",
        ])
        .arg("--workspace")
        .arg(workspace)
        .arg("--out-dir")
        .arg(logs.path())
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let events =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    Run { out, logs, events }
}

#[test]
fn legitimate_work_in_the_workspace_succeeds() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("input.txt"), "from the checkout\n").unwrap();
    std::fs::create_dir(ws.path().join("scripts")).unwrap();
    std::fs::write(
        ws.path().join("scripts/build.sh"),
        "#!/bin/sh\nmkdir -p out && tr a-z A-Z < input.txt > out/result.txt\n",
    )
    .unwrap();
    let run = sandboxed_run(
        ws.path(),
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh}]
    (sh "sh scripts/build.sh")
    (sh ["cat" "out/result.txt" "input.txt"])
    (sh "echo scratch > /tmp/scratch && cat /tmp/scratch")
    (sh ["ls"] {:cwd "scripts"})))
"#,
        &[],
        &[],
    );
    assert_eq!(run.out.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.out.stderr));
    assert_eq!(run.outcome(), "success", "{}", String::from_utf8_lossy(&run.out.stderr));
    assert!(run.log("build", 2).contains("stdout F FROM THE CHECKOUT"), "{}", run.log("build", 2));
    assert!(run.log("build", 4).contains("stdout F build.sh"));
    assert_eq!(std::fs::read_to_string(ws.path().join("out/result.txt")).unwrap(), "FROM THE CHECKOUT\n");
}

/// A directory under /var/tmp that anyone may read and write.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn without_hide_the_same_file_is_readable() {
    let ws = tempfile::tempdir().unwrap();
    let dir = open_dir();
    std::fs::write(dir.path().join("quire.db"), "database contents").unwrap();
    std::fs::set_permissions(dir.path().join("quire.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let pipeline = format!(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{{: sh}}] (sh \"cat {}/quire.db\")))\n",
        dir.path().display()
    );
    let run = sandboxed_run(ws.path(), &pipeline, &[], &[]);
    assert_eq!(run.outcome(), "success", "{}", String::from_utf8_lossy(&run.out.stderr));
    assert!(run.log("a", 1).contains("database contents"), "the control reads what --hide hides");
}

#[test]
fn hidden_paths_the_host_and_the_network_are_out_of_reach() {
    let ws = tempfile::tempdir().unwrap();
    // World-readable and world-writable outside the sandbox, so that only
    // the sandbox stands in the way.
    let secret_dir = open_dir();
    std::fs::write(secret_dir.path().join("quire.db"), "database contents").unwrap();
    std::fs::set_permissions(secret_dir.path().join("quire.db"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let outside = open_dir();
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let pipeline = format!(
        r#"(local ci (require :quire.ci))
(ci.job :probe [:quire/push]
  (fn [{{: sh}}]
    (sh "cat {db}" {{:check false}})
    (sh "ls {dir}/quire.db" {{:check false}})
    (sh "echo pwned > {outside}/x" {{:check false}})
    (sh "echo pwned > /etc/quire-pwned" {{:check false}})
    (sh ["bash" "-c" "echo hi > /dev/tcp/127.0.0.2/{port}"] {{:check false}})
    (sh "env | grep -v ^QUIRE_CACHE_DIR= | grep -c QUIRE" {{:check false}})
    (sh "cat /proc/*/environ 2>/dev/null | tr '\\000' '\\n' | grep -c QUIRE__RUN_TOKEN" {{:check false}})
    (sh "echo still running")))
"#,
        db = secret_dir.path().join("quire.db").display(),
        dir = secret_dir.path().display(),
        outside = outside.path().display(),
    );
    let hide = secret_dir.path().display().to_string();
    let run = sandboxed_run(
        ws.path(),
        &pipeline,
        &["--hide", &hide],
        &[("QUIRE__RUN_TOKEN", "token-that-must-not-leak"), ("QUIRE_SECRET_KEY", "sekrit")],
    );
    assert_eq!(run.out.status.code(), Some(0));
    assert_eq!(run.outcome(), "success", "the run goes on: {}", String::from_utf8_lossy(&run.out.stderr));
    let exits: Vec<i64> = run.exits().into_iter().map(|(_, code)| code).collect();
    assert_eq!(exits.len(), 8);
    for (i, code) in exits[..7].iter().enumerate() {
        assert_ne!(*code, 0, "attempt {} succeeded: {}", i + 1, run.log("probe", i as u32 + 1));
    }
    assert_eq!(exits[7], 0);
    assert!(!run.log("probe", 1).contains("database contents"));
    assert!(
        run.log("probe", 3).contains("Read-only file system")
            || run.log("probe", 3).contains("Permission denied")
    );
    assert!(!outside.path().join("x").exists());
    assert!(!Path::new("/etc/quire-pwned").exists());
    assert!(listener.accept().is_err(), "nothing reached the listener on 127.0.0.2");
    assert!(run.log("probe", 6).contains("stdout F 0"), "{}", run.log("probe", 6));
    for n in 1..=8 {
        assert!(!run.log("probe", n).contains("token-that-must-not-leak"));
    }
}

#[test]
fn a_fork_bomb_a_runaway_write_and_an_endless_command_are_stopped() {
    let ws = tempfile::tempdir().unwrap();
    // Commands run as the checkout's owner; the process limit binds only
    // an unprivileged one (never root), so the checkout is nobody's here.
    let chown = Command::new("chown").args(["-R", "65534:65534"]).arg(ws.path()).status().unwrap();
    assert!(chown.success());
    let started = Instant::now();
    let run = sandboxed_run(
        ws.path(),
        r#"(local ci (require :quire.ci))
(ci.job :bomb [:quire/push]
  (fn [{: sh}] (sh ["bash" "-c" "b() { b | b & }; b; sleep 60"] {:timeout 4})))
(ci.job :disk [:quire/push]
  (fn [{: sh}] (sh "head -c 100000000 /dev/zero > big.bin")))
(ci.job :forever [:quire/push]
  (fn [{: sh}] (sh "while true; do :; done" {:timeout 1})))
(ci.job :after [:quire/push]
  (fn [{: sh}] (sh "echo the run goes on")))
"#,
        // One job at a time: the bomb would otherwise use up the process
        // budget its siblings share (RLIMIT_NPROC is per user).
        &["--max-processes", "64", "--max-file-size-mb", "5", "--jobs", "1"],
        &[],
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    assert_eq!(run.out.status.code(), Some(0));
    assert_eq!(
        run.job_outcomes(),
        [
            ("bomb".to_string(), "failed".to_string()),
            ("disk".to_string(), "failed".to_string()),
            ("forever".to_string(), "failed".to_string()),
            ("after".to_string(), "complete".to_string()),
        ]
    );
    assert_eq!(run.outcome(), "pipeline_failure");
    assert!(
        run.log("bomb", 1).contains("quire-ci: command killed after its :timeout of 4s"),
        "{}",
        run.log("bomb", 1)
    );
    assert!(run.log("disk", 1).contains("larger than the limit of 5242880 bytes"), "{}", run.log("disk", 1));
    assert!(std::fs::metadata(ws.path().join("big.bin")).unwrap().len() <= 5 * 1024 * 1024);
    assert!(run.log("forever", 1).contains("command killed after its :timeout of 1s"));
    let job_log = std::fs::read_to_string(run.logs.path().join("jobs/forever/job.log")).unwrap();
    assert!(job_log.contains("command timed out"), "{job_log}");
}

#[test]
fn a_missing_bwrap_is_a_clear_failure_not_an_unsandboxed_run() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ws.path().join(".quire")).unwrap();
    std::fs::write(
        ws.path().join(".quire/ci.fnl"),
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"touch ran\")))\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["run", "--sandbox", "bwrap", "--sha", "1", "--ref", "refs/heads/x", "--workspace"])
        .arg(ws.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bubblewrap (bwrap) is not installed"));
    assert!(!ws.path().join("ran").exists());
}

/// One sandbox per job: a job's commands share it (and its `/tmp`), jobs
/// running at once have their own, and a background process dies with the
/// `sh` that started it.
#[test]
fn each_job_has_its_own_sandbox_and_background_processes_die_with_their_sh() {
    let ws = tempfile::tempdir().unwrap();
    let run = sandboxed_run(
        ws.path(),
        r#"(local ci (require :quire.ci))
(each [_ id (ipairs [:left :right])]
  (ci.job id [:quire/push]
    (fn [{: sh}]
      (sh (.. "echo " id " > /tmp/mine; sleep 0.5; cat /tmp/mine; ls /tmp"))
      (sh "sleep 300 & echo started-in-background")
      (sh "cat /tmp/mine; for p in /proc/[0-9]*; do if [ \"$(cat $p/comm 2>/dev/null)\" = sleep ]; then echo a-sleep-survived; exit 1; fi; done"))))
"#,
        &["--jobs", "2"],
        &[],
    );
    assert_eq!(
        run.outcome(),
        "success",
        "{}\n{}",
        String::from_utf8_lossy(&run.out.stderr),
        run.log("left", 3)
    );
    for (job, other) in [("left", "right"), ("right", "left")] {
        assert!(run.log(job, 1).contains(&format!("stdout F {job}")), "{}", run.log(job, 1));
        assert!(!run.log(job, 1).contains(&format!("stdout F {other}")), "jobs do not share /tmp");
        assert!(run.log(job, 3).contains(&format!("stdout F {job}")), "a job's commands share its /tmp");
        assert!(!run.log(job, 3).contains("a-sleep-survived"));
    }
}

/// A checkout owned by an unprivileged user, deep under `/tmp`: commands
/// run as that user and must reach their workspace by its path through
/// the directories bubblewrap makes inside the private `/tmp`.
#[test]
fn commands_of_an_unprivileged_owner_reach_a_workspace_deep_under_tmp() {
    let outer = tempfile::tempdir_in("/tmp").unwrap();
    let ws = outer.path().join("a/b/checkout");
    std::fs::create_dir_all(ws.join(".quire")).unwrap();
    for dir in [outer.path().to_path_buf(), outer.path().join("a"), outer.path().join("a/b")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let chown = Command::new("chown").args(["-R", "65534:65534"]).arg(&ws).status().unwrap();
    assert!(chown.success());
    let run = sandboxed_run(
        &ws,
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"id -u; cd \\\"$PWD\\\" && pwd\")))\n",
        &[],
        &[],
    );
    assert_eq!(run.outcome(), "success", "{}", run.log("a", 1));
    assert!(run.log("a", 1).contains("stdout F 65534"), "{}", run.log("a", 1));
}
