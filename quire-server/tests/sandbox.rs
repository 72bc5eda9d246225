//! The server's default sandbox with real bubblewrap: a hostile pipeline
//! pushed to a real server cannot reach the data root, the host, the
//! network or the run token; runaway commands are stopped; and each attempt
//! is recorded while the run reaches its outcome.

mod common;

use std::net::TcpListener;

use common::Root;

fn log(root: &Root, run: &str, job: &str, n: u32) -> String {
    std::fs::read_to_string(root.path().join(format!("runs/app.git/{run}/jobs/{job}/sh-{n}.log")))
        .unwrap_or_default()
}

/// The run token in the environment of the running confined executor.
fn executor_token() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        if !cmdline.starts_with(b"/tmp/.quire-ci-executor\0run") {
            return None;
        }
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"QUIRE__RUN_TOKEN="))
            .map(|token| String::from_utf8_lossy(token).into_owned())
    })
}

#[test]
fn a_hostile_pipeline_reaches_nothing_it_does_not_own() {
    let root = Root::world_readable();
    root.write_config(
        // One job at a time: the fork bomb would otherwise use up the process
        // budget its siblings share (RLIMIT_NPROC is per user).
        "{:secrets {:deploy-token \"the-secret\"}\n :ci {:max-processes 64 :max-file-size-mb 5 :max-parallel-jobs 1}}",
    );
    let server = root.serve();
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let other_port = listener.local_addr().unwrap().port();

    // A first, harmless run whose logs the second one will go looking for.
    let work = root.repo("app.git");
    work.pipeline("(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo first-run-output\")))\n");
    work.commit("first");
    work.push("main");
    let first = root.wait_run_count("app.git", 1).remove(0);
    assert_eq!(root.wait_finished(&first).0, "complete");

    let r = root.path().display().to_string();
    work.pipeline(&format!(
        r#"(local ci (require :quire.ci))
(ci.job :probe [:quire/push]
  (fn [{{: sh}}]
    (sh "cat {r}/quire.db" {{:check false}})
    (sh "test -e {r}/quire.db" {{:check false}})
    (sh "cat {r}/config.fnl" {{:check false}})
    (sh "cat {r}/runs/app.git/{first}/jobs/a/sh-1.log" {{:check false}})
    (sh "ls {r}/repos/app.git/HEAD" {{:check false}})
    (sh "echo x > /var/tmp/quire-escape-$$" {{:check false}})
    (sh ["bash" "-c" "echo x > /dev/tcp/127.0.0.1/{port}"] {{:check false}})
    (sh ["bash" "-c" "echo x > /dev/tcp/127.0.0.2/{other_port}"] {{:check false}})
    (sh "env | grep -v ^QUIRE_CACHE_DIR= | grep QUIRE" {{:check false}})
    (sh "cat /proc/*/environ 2>/dev/null | tr '\\000' '\\n' | grep QUIRE__RUN_TOKEN" {{:check false}})
    (sh "echo workspace-ok > built.txt && cat built.txt .quire/ci.fnl > /dev/null")))
(ci.job :bomb [:quire/push]
  (fn [{{: sh}}] (sh ["bash" "-c" "b() {{ b | b & }}; b; sleep 60"] {{:timeout 4}})))
(ci.job :disk [:quire/push]
  (fn [{{: sh}}] (sh "head -c 50000000 /dev/zero > big.bin")))
(ci.job :forever [:quire/push]
  (fn [{{: sh}}] (sh "sleep 60" {{:timeout 1}})))
(ci.job :report [:probe]
  (fn [{{: sh}}] (sh "echo the run reached its end")))
"#
    ));
    work.commit("hostile");
    work.push("main");
    // The run's token, from its executor's environment (root may read it;
    // the confined executor writes nothing the test could see).
    let token = root.wait_for("the hostile run's executor", 30, executor_token);
    let run = root.wait_run_count("app.git", 2).remove(1);
    let (state, kind) = root.wait_finished(&run);
    assert_eq!(
        (state.as_str(), kind.as_deref()),
        ("failed", Some("pipeline-failure")),
        "{}",
        root.server_log()
    );

    let probe = root.exits(&run, "probe");
    assert_eq!(probe.len(), 11, "{probe:?}");
    for (i, code) in probe[..10].iter().enumerate() {
        assert_ne!(
            *code,
            0,
            "attempt {} was not stopped: {}",
            i + 1,
            log(&root, &run, "probe", i as u32 + 1)
        );
    }
    assert_eq!(probe[10], 0, "legitimate work in the workspace succeeds");
    assert!(!log(&root, &run, "probe", 4).contains("first-run-output"));
    assert!(listener.accept().is_err(), "nothing reached 127.0.0.2");
    let conn = root.db();
    let states: Vec<(String, String)> = {
        let mut stmt =
            conn.prepare("SELECT job_id, state FROM jobs WHERE run_id = ?1 ORDER BY position").unwrap();
        stmt.query_map([&run], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let state_of = |job: &str| states.iter().find(|(j, _)| j == job).map(|(_, s)| s.as_str());
    assert_eq!(state_of("probe"), Some("complete"));
    assert_eq!(state_of("report"), Some("complete"), "the run went on");
    assert_eq!(state_of("bomb"), Some("failed"));
    assert_eq!(state_of("disk"), Some("failed"));
    assert_eq!(state_of("forever"), Some("failed"));
    assert!(log(&root, &run, "bomb", 1).contains("killed after its :timeout of 4s"));
    assert!(log(&root, &run, "disk", 1).contains("larger than the limit of 5242880 bytes"));
    assert!(log(&root, &run, "forever", 1).contains("killed after its :timeout of 1s"));

    let run_dir = root.path().join(format!("runs/app.git/{run}"));
    for entry in common::files_below(&run_dir) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned();
        assert!(!text.contains(&token), "the run token leaked into {}", entry.display());
    }
    let quire_ci_log = std::fs::read_to_string(run_dir.join("quire-ci.log")).unwrap();
    assert!(quire_ci_log.contains("commands run in bubblewrap (no network"), "{quire_ci_log}");
}

#[test]
fn a_repository_allowed_network_can_reach_loopback_listeners() {
    let root = Root::world_readable();
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    root.write_config("{:ci {:network [\"net.git\"]}}");
    let _server = root.serve();
    let pipeline = format!(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{{: sh}}] (sh [\"bash\" \"-c\" \"echo hello > /dev/tcp/127.0.0.2/{port}\"])))\n"
    );
    for repo in ["net.git", "nonet.git"] {
        root.push_pipeline(repo, &pipeline, "main");
    }
    let allowed = root.wait_run_count("net.git", 1).remove(0);
    let denied = root.wait_run_count("nonet.git", 1).remove(0);
    assert_eq!(root.wait_finished(&allowed).0, "complete", "{}", root.server_log());
    assert_eq!(root.wait_finished(&denied).1.as_deref(), Some("pipeline-failure"));
    let (mut stream, _) = listener.accept().unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut stream, &mut got).unwrap();
    assert_eq!(got, "hello\n");
}
