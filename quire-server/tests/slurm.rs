//! Runs through a real one-node Slurm cluster (`scripts/slurm-cluster`:
//! Debian's munged, slurmctld and slurmd on ports of their own, all state
//! in a temporary directory): the server submits one batch job per run,
//! the executor runs on the "node" as an unprivileged user that cannot
//! read the data root and talks to the server only over HTTP, and the
//! server watches, stops and re-finds the job through the Slurm commands.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Root;

/// The unprivileged user executors run as. Not `nobody`: the fork-bomb
/// tests hold `nobody`'s whole process limit while they run.
const EXECUTOR_USER: &str = "daemon";

/// A running one-node cluster, stopped (with every job) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("slurm-").tempdir_in("/var/tmp").unwrap();
        let out = Command::new(script()).arg("start").arg(dir.path()).output().expect("slurm-cluster runs");
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { dir }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// `scontrol show job -o ID`: the job's record, or None once Slurm
    /// no longer knows it.
    fn job(&self, id: &str) -> Option<String> {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .env("SLURM_CONF", self.conf())
            .output()
            .expect("scontrol runs");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn job_state(&self, id: &str) -> String {
        self.job(id)
            .and_then(|record| {
                record.split_whitespace().find_map(|f| f.strip_prefix("JobState=").map(str::to_string))
            })
            .unwrap_or_else(|| "GONE".to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).status();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster")
}

/// A server whose runs go to `cluster`, as [`EXECUTOR_USER`].
fn serve(root: &Root, cluster: &Cluster) -> common::Server {
    root.write_config(&format!(
        "{{:ci {{:launcher :slurm :slurm {{:sbatch-args [\"--uid={EXECUTOR_USER}\" \"--gid={EXECUTOR_USER}\"]}}}}}}"
    ));
    root.serve_with(&[("SLURM_CONF", cluster.conf().to_str().unwrap())])
}

/// The Slurm job id the server recorded for a run.
fn slurm_job(root: &Root, run: &str) -> String {
    root.wait_for("the run's Slurm job", 30, || {
        let handle: Option<String> =
            root.db().query_row("SELECT executor FROM runs WHERE id = ?1", [run], |r| r.get(0)).ok()?;
        handle?.strip_prefix("slurm:").map(str::to_string)
    })
}

fn run_file(root: &Root, run: &str, file: &str) -> String {
    std::fs::read_to_string(root.path().join("runs/app.git").join(run).join(file)).unwrap_or_default()
}

/// Waits until the server has received `text` in the run's file.
fn wait_for_text(root: &Root, run: &str, file: &str, text: &str) {
    root.wait_for(&format!("{text:?} in {file}"), 60, || {
        run_file(root, run, file).contains(text).then_some(())
    });
}

const PASSING: &str = r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh}]
    (sh "echo built-on-the-node as $(id -u)")
    (sh "echo second")))
(ci.job :test [:build] (fn [{: sh}] (sh "echo testing")))
"#;

#[test]
fn a_push_runs_through_slurm_as_a_user_that_cannot_read_the_data_root() {
    let cluster = Cluster::start();
    let root = Root::new();
    // A data root as an operator keeps it: its owner's alone.
    std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let _server = serve(&root, &cluster);
    let (_work, _) = root.push_pipeline("app.git", PASSING, "main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    let job = slurm_job(&root, &run);
    assert_eq!(root.wait_finished(&run), ("complete".to_string(), None), "{}", root.server_log());

    let record = cluster.job(&job).expect("Slurm still knows the finished job");
    assert!(record.contains(&format!("JobName=quire-{run}")), "{record}");
    assert!(record.contains(&format!("UserId={EXECUTOR_USER}(")), "{record}");
    assert!(record.contains("JobState=COMPLETED"), "{record}");
    // The default run timeout (3600 s) plus a minute, should the server
    // not be there to stop it.
    assert!(record.contains("TimeLimit=01:01:00"), "{record}");

    let jobs: Vec<String> = {
        let conn = root.db();
        let mut stmt = conn
            .prepare("SELECT job_id || '|' || state FROM jobs WHERE run_id = ?1 ORDER BY position")
            .unwrap();
        stmt.query_map([&run], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(jobs, ["build|complete", "test|complete"]);
    let sh: i64 = root
        .db()
        .query_row("SELECT count(*) FROM sh_events WHERE run_id = ?1", [&run], |r| r.get(0))
        .unwrap();
    assert_eq!(sh, 3);
    // Written by the server from what the executor sent.
    let uid = Command::new("id").args(["-u", EXECUTOR_USER]).output().unwrap();
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    let log = run_file(&root, &run, "jobs/build/sh-1.log");
    assert!(log.contains(&format!("built-on-the-node as {uid}")), "{log}");
    assert!(run_file(&root, &run, "events.jsonl").contains("run_finished"));
    assert!(run_file(&root, &run, "quire-ci.log").contains("quire-ci: running app.git"));
    // Nothing of the executor's own landed in the data root, which its
    // user cannot even look into.
    assert!(!root.path().join("executors").join(&run).exists());
    let peek =
        Command::new("runuser").args(["-u", EXECUTOR_USER, "--", "ls"]).arg(root.path()).output().unwrap();
    assert!(!peek.status.success(), "{EXECUTOR_USER} can list the data root");
}

#[test]
fn a_failing_pipeline_on_slurm_is_a_pipeline_failure() {
    let cluster = Cluster::start();
    let root = Root::new();
    let _server = serve(&root, &cluster);
    root.push_pipeline(
        "app.git",
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo about-to-fail; exit 4\")))\n",
        "main",
    );
    let run = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&run), ("failed".to_string(), Some("pipeline-failure".to_string())));
    assert!(run_file(&root, &run, "jobs/a/sh-1.log").contains("about-to-fail"));
    assert_eq!(root.exits(&run, "a"), [4]);
}

const SLOW: &str = r#"(local ci (require :quire.ci))
(ci.job :slow [:quire/push]
  (fn [{: sh}]
    (sh "echo first-line; sleep 3; echo later-line; sleep 300")))
"#;

#[test]
fn the_live_view_of_a_slurm_run_streams_a_line_printed_later() {
    let cluster = Cluster::start();
    let root = Root::new();
    let server = serve(&root, &cluster);
    root.push_pipeline("app.git", SLOW, "main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    wait_for_text(&root, &run, "jobs/slow/sh-1.log", "first-line");
    assert!(!run_file(&root, &run, "jobs/slow/sh-1.log").contains("later-line"));
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .get(format!("{}/api/runs/{run}/events", server.url))
        .send()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(response).lines() {
        let line = line.expect("the stream stays open while the run is active");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("later-line") {
            break;
        }
    }
    assert!(seen.contains("first-line") && seen.contains("later-line"), "{seen}");
    root.quire_ok(&["ci", "cancel", &run]);
    root.wait_finished(&run);
}

#[test]
fn cancel_and_a_superseding_push_stop_the_slurm_job() {
    let cluster = Cluster::start();
    let root = Root::new();
    let _server = serve(&root, &cluster);
    let (work, _) = root.push_pipeline("app.git", SLOW, "main");
    let canceled = root.wait_run_count("app.git", 1).remove(0);
    let job = slurm_job(&root, &canceled);
    wait_for_text(&root, &canceled, "jobs/slow/sh-1.log", "first-line");
    root.quire_ok(&["ci", "cancel", &canceled]);
    assert_eq!(root.wait_finished(&canceled), ("failed".to_string(), Some("canceled".to_string())));
    root.wait_for("the canceled job to leave the cluster", 30, || {
        (!["RUNNING", "PENDING", "COMPLETING"].contains(&cluster.job_state(&job).as_str())).then_some(())
    });

    work.commit("again");
    work.push("main");
    let older = root.wait_run_count("app.git", 2)[1].clone();
    let older_job = slurm_job(&root, &older);
    wait_for_text(&root, &older, "jobs/slow/sh-1.log", "first-line");
    work.commit("newer");
    work.push("main");
    assert_eq!(root.wait_finished(&older), ("superseded".to_string(), None));
    root.wait_for("the superseded job to leave the cluster", 30, || {
        (!["RUNNING", "PENDING", "COMPLETING"].contains(&cluster.job_state(&older_job).as_str()))
            .then_some(())
    });
    let newest = root.wait_run_count("app.git", 3)[2].clone();
    root.quire_ok(&["ci", "cancel", &newest]);
    root.wait_finished(&newest);
}

/// The pids of the executor user's `quire-ci run` processes.
fn remote_executors() -> Vec<String> {
    let out = Command::new("pgrep").args(["-u", EXECUTOR_USER, "-f", "quire-ci run"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_killed_remote_executor_is_process_crashed() {
    let cluster = Cluster::start();
    let root = Root::new();
    let _server = serve(&root, &cluster);
    root.push_pipeline("app.git", SLOW, "main");
    let run = root.wait_run_count("app.git", 1).remove(0);
    let job = slurm_job(&root, &run);
    wait_for_text(&root, &run, "jobs/slow/sh-1.log", "first-line");
    // The job's own executor: the one whose environment names this job.
    let pid = root.wait_for("the remote quire-ci", 30, || {
        remote_executors().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| String::from_utf8_lossy(&env).contains(&format!("SLURM_JOB_ID={job}\0")))
        })
    });
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    assert_eq!(
        root.wait_finished(&run),
        ("failed".to_string(), Some("process-crashed".to_string())),
        "{}",
        root.server_log()
    );
    assert!(run_file(&root, &run, "quire-ci.log").contains("ended without finishing the run"));
    assert!(run_file(&root, &run, "jobs/slow/sh-1.log").contains("first-line"), "what it sent is kept");
}

#[test]
fn a_server_restart_mid_run_keeps_following_the_slurm_job() {
    let cluster = Cluster::start();
    let root = Root::new();
    let server = serve(&root, &cluster);
    root.push_pipeline(
        "app.git",
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo before; sleep 4; echo after\")))\n",
        "main",
    );
    let run = root.wait_run_count("app.git", 1).remove(0);
    let job = slurm_job(&root, &run);
    wait_for_text(&root, &run, "jobs/a/sh-1.log", "before");
    let address = server.url.trim_start_matches("http://").to_string();
    server.kill();
    assert_eq!(cluster.job_state(&job), "RUNNING", "the job outlives the server");
    // Back at the same address, where the executor keeps trying.
    let _server = root.serve_at(&address, &[("SLURM_CONF", cluster.conf().to_str().unwrap())]);
    assert_eq!(root.wait_finished(&run), ("complete".to_string(), None), "{}", root.server_log());
    assert!(run_file(&root, &run, "jobs/a/sh-1.log").contains("after"));
    assert!(root.server_log().contains("following a run's executor again after a restart"));
}
