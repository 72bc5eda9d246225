//! A data root that runs out of space, for real: the root is a small tmpfs,
//! a pipeline fills it, and the server must fail that run cleanly (with
//! the reason where its logs are), keep serving pages, keep its database
//! intact, and run the next push once there is room again.

mod common;

use common::Root;

const FILL: &str = r#"(local ci (require :quire.ci))
(ci.job :fill [:quire/push] (fn [{: sh}] (sh "head -c 200000000 /dev/zero > big; echo wrote")))
"#;

const FINE: &str = r#"(local ci (require :quire.ci))
(ci.job :fine [:quire/push] (fn [{: sh}] (sh "echo still-fine")))
"#;

#[test]
fn a_full_disk_fails_the_run_cleanly_and_the_next_push_completes() {
    let root = Root::on_tmpfs(64);
    let server = root.serve();
    let work = root.repo("app.git");
    // Leave the pipeline about 8 MiB: it asks for 200 MB.
    let filler = root.path().join("filler");
    let keep = 8 * 1024 * 1024;
    let size = root.free_bytes().saturating_sub(keep);
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();

    work.pipeline(FILL).commit("fill the disk");
    work.push("main");
    let first = root.wait_run_count("app.git", 1).remove(0);
    let (state, kind) = root.wait_finished(&first);
    assert_eq!(state, "failed", "kind {kind:?}\n{}", root.server_log());
    let logs: String = common::files_below(&root.path().join("runs/app.git").join(&first))
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let job_state: String = root
        .db()
        .query_row("SELECT state FROM jobs WHERE run_id = ?1 AND job_id = 'fill'", [&first], |r| r.get(0))
        .expect("the failed run's job was recorded");
    // Which of the two depends on what ran out first: the command's output
    // (its job fails) or the executor's own writes (the run crashes, and
    // the page shows quire-ci.log, which says why).
    assert!(["failed", "aborted"].contains(&job_state.as_str()), "{job_state}; run {kind:?}; logs:\n{logs}");
    assert!(
        logs.contains("No space left") || logs.contains("free (the run's floor)"),
        "the reason is in the run's logs:\n{logs}"
    );
    assert!(!logs.contains("stdout F wrote"), "the command did not succeed");

    let integrity: String = root.db().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    let home = reqwest::blocking::get(&server.url).unwrap();
    assert_eq!(home.status(), 200, "pages are still served");

    std::fs::remove_file(&filler).unwrap();
    work.pipeline(FINE).commit("room again");
    work.push("main");
    let second = root.wait_run_count("app.git", 2).into_iter().find(|id| *id != first).unwrap();
    assert_eq!(root.wait_finished(&second), ("complete".to_string(), None), "{}", root.server_log());
    let active: i64 =
        root.db().query_row("SELECT count(*) FROM runs WHERE state = 'active'", [], |r| r.get(0)).unwrap();
    assert_eq!(active, 0, "no run is left active");
}
