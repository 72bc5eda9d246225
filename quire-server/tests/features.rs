//! Triggers, schedules and caches, driven as an operator would: a real
//! `quire serve`, real `git push`es, real `quire-ci` processes and the
//! `quire` CLI. Covered: a six-field schedule firing `schedule` runs that
//! run only the jobs of `:quire/schedule`; ticks missed while the server
//! was down firing once at start; `quire ci retrigger` as a `manual` run
//! shown as such by the CLI, the API and the pages; and the per-ref caches
//! under `<root>/cache/` (persisting, copied from main for a new branch,
//! never leaking back, evicted past `:ci {:cache-mb N}`, listed and cleared
//! by `quire ci cache`). Every server started here is killed on drop.

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{get, Root, Work};

/// A job of each kind: one of the push, one of the schedule, one of both.
/// `both` says which source started its run; `nightly` prints the tick.
const TRIGGERS: &str = r#"(local ci (require :quire.ci))
(ci.job :on-push [:quire/push] (fn [{: sh}] (sh "echo on-push ran")))
(ci.job :nightly [:quire/schedule]
  (fn [{: sh : jobs}]
    (sh ["echo" (.. "scheduled-at=" (. (jobs :quire/schedule) :scheduled-at))])))
(ci.job :both [:quire/push :quire/schedule]
  (fn [{: sh : jobs}]
    (sh ["echo" (if (jobs :quire/schedule) "started-by-schedule" "started-by-push")])))
"#;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn run_dir(root: &Root, repo: &str, id: &str) -> PathBuf {
    root.path().join("runs").join(repo).join(id)
}

/// The content of each line of command `n`'s CRI log (`ts stream tag text`).
fn log_lines(root: &Root, repo: &str, id: &str, job: &str, n: u32) -> Vec<String> {
    let path = run_dir(root, repo, id).join("jobs").join(job).join(format!("sh-{n}.log"));
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|line| line.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
        .collect()
}

/// Ids of the runs of `repo` with `trigger`, oldest first.
fn runs_of(root: &Root, repo: &str, trigger: &str) -> Vec<String> {
    let conn = root.db();
    let mut stmt = conn.prepare("SELECT id FROM runs WHERE repo = ?1 AND trigger = ?2 ORDER BY id").unwrap();
    stmt.query_map([repo, trigger], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// The ids of a run's rows in `jobs`, sorted.
fn job_rows(root: &Root, id: &str) -> Vec<String> {
    let conn = root.db();
    let mut stmt = conn.prepare("SELECT job_id FROM jobs WHERE run_id = ?1 ORDER BY job_id").unwrap();
    stmt.query_map([id], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// `(trigger, scheduled_at_ms, sha, ref_name)` of a run.
fn run_row(root: &Root, id: &str) -> (String, Option<i64>, String, String) {
    root.db()
        .query_row("SELECT trigger, scheduled_at_ms, sha, ref_name FROM runs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
}

fn assert_complete(root: &Root, id: &str) {
    let (state, kind) = root.wait_finished(id);
    assert_eq!(state, "complete", "run {id} ({kind:?})\nserver log:\n{}", root.server_log());
}

/// Commits `pipeline` on top of `work`, pushes it to `branch` and waits
/// until its run has finished complete; returns the run's id.
fn push_and_finish(root: &Root, work: &Work, branch: &str, pipeline: &str, message: &str) -> String {
    let before = root.run_ids(&work.name);
    work.pipeline(pipeline);
    work.commit(message);
    work.push(branch);
    let id = root.wait_for(&format!("the run of commit {message:?}"), 30, || {
        root.run_ids(&work.name).into_iter().find(|id| !before.contains(id))
    });
    assert_complete(root, &id);
    id
}

// ---------------------------------------------------------------------------
// Schedules.
// ---------------------------------------------------------------------------

/// A schedule of `*/2 * * * * *` (six fields: seconds first) on main fires
/// runs with trigger `schedule` of main's commit, on even seconds, that run
/// exactly the jobs following from `:quire/schedule` (`nightly`, `both`)
/// and nothing of `on-push`, not even an event; `nightly` sees the tick as
/// an RFC 3339 `:scheduled-at`. The push's own run runs `on-push` and
/// `both` only.
#[test]
fn a_six_field_schedule_fires_schedule_runs_that_run_only_the_schedules_jobs() {
    let root = Root::new();
    root.write_config(r#"{:schedules [{:repo "app.git" :ref "refs/heads/main" :cron "*/2 * * * * *"}]}"#);
    let server = root.serve();
    let (_work, sha) = root.push_pipeline("app.git", TRIGGERS, "main");

    let pushed = root.wait_for("the push's run", 30, || runs_of(&root, "app.git", "push").into_iter().next());
    assert_complete(&root, &pushed);
    assert_eq!(
        job_rows(&root, &pushed),
        ["both", "on-push"],
        "a push run runs the jobs of :quire/push only\nserver log:\n{}",
        root.server_log()
    );
    let (trigger, scheduled_at, _, _) = run_row(&root, &pushed);
    assert_eq!((trigger.as_str(), scheduled_at), ("push", None), "the push's run is a push run");
    assert_eq!(log_lines(&root, "app.git", &pushed, "both", 1), ["started-by-push"]);

    // Each tick supersedes the schedule's unfinished run, so wait for one
    // that got to finish.
    let scheduled = root.wait_for("a schedule run to finish complete", 90, || {
        root.db()
            .query_row(
                "SELECT id FROM runs WHERE repo = 'app.git' AND trigger = 'schedule' AND state = 'complete'
                 ORDER BY id LIMIT 1",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok()
    });
    let (_, repo_page) = get(&format!("{}/app.git", server.url));
    let (_, run_page) = get(&format!("{}/runs/{scheduled}", server.url));
    // Stop the ticks: nothing below needs the server.
    server.kill();

    assert!(repo_page.contains(r#"<td class="trigger">schedule</td>"#), "{repo_page}");
    assert!(repo_page.contains(r#"<td class="trigger">push</td>"#), "{repo_page}");
    assert!(run_page.contains(r#"<dd class="trigger">schedule"#), "{run_page}");

    assert_eq!(
        job_rows(&root, &scheduled),
        ["both", "nightly"],
        "a schedule run runs the jobs of :quire/schedule only\nserver log:\n{}",
        root.server_log()
    );
    let (trigger, scheduled_at, run_sha, ref_name) = run_row(&root, &scheduled);
    assert_eq!(trigger, "schedule");
    assert_eq!((run_sha.as_str(), ref_name.as_str()), (sha.as_str(), "refs/heads/main"), "main's commit");
    let tick = scheduled_at.expect("a schedule run has scheduled_at_ms");
    assert_eq!(tick % 2000, 0, "*/2 in the seconds field ticks on even seconds: {tick}");

    let nightly = log_lines(&root, "app.git", &scheduled, "nightly", 1);
    let at = nightly
        .iter()
        .find_map(|line| line.strip_prefix("scheduled-at="))
        .unwrap_or_else(|| panic!("nightly printed its tick: {nightly:?}"));
    let parsed: jiff::Timestamp =
        at.parse().unwrap_or_else(|e| panic!(":scheduled-at is an RFC 3339 timestamp ({e}): {at:?}"));
    assert_eq!(parsed.as_millisecond(), tick, ":scheduled-at is the run's tick: {at}");
    assert_eq!(log_lines(&root, "app.git", &scheduled, "both", 1), ["started-by-schedule"]);

    // The first event declares every job; none after it is about on-push.
    let dir = run_dir(&root, "app.git", &scheduled);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let events: Vec<serde_json::Value> =
        events.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(events[0]["type"], "pipeline", "the run announces its pipeline first: {:?}", events[0]);
    let declared: Vec<&str> =
        events[0]["jobs"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(declared, ["on-push", "nightly", "both"], "every declared job, in order");
    for event in &events[1..] {
        assert_ne!(event["job_id"], "on-push", "on-push is not part of a schedule run: {event}");
    }
    assert!(!dir.join("jobs/on-push").exists(), "on-push left no logs in a schedule run");

    let unticked: i64 = root
        .db()
        .query_row(
            "SELECT count(*) FROM runs WHERE (trigger = 'schedule') <> (scheduled_at_ms IS NOT NULL)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unticked, 0, "scheduled_at_ms is set exactly for schedule runs");
}

/// A daily schedule whose last fired tick is five days old (the server was
/// down through five 03:00s) fires once when the server starts, for the
/// latest missed tick, and not once per missed tick.
#[test]
fn ticks_missed_while_the_server_was_down_fire_once_at_start() {
    const DAILY: &str = "0 3 * * *";
    let root = Root::new();
    let server = root.serve();
    let (_work, sha) = root.push_pipeline("app.git", TRIGGERS, "main");
    let pushed = root.wait_run_count("app.git", 1).remove(0);
    assert_complete(&root, &pushed);
    server.stop();

    root.write_config(&format!(
        r#"{{:schedules [{{:repo "app.git" :ref "refs/heads/main" :cron "{DAILY}"}}]}}"#
    ));
    let five_days_ago = now_ms() - 5 * DAY_MS;
    root.db()
        .execute(
            "INSERT INTO schedule_ticks (repo, ref_name, cron, fired_at_ms) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params!["app.git", "refs/heads/main", DAILY, five_days_ago],
        )
        .unwrap();

    let _server = root.serve();
    let fired = root.wait_for("the missed schedule to fire", 30, || {
        let ids = runs_of(&root, "app.git", "schedule");
        (!ids.is_empty()).then_some(ids)
    });
    assert_eq!(
        fired.len(),
        1,
        "five missed ticks fire one run: {fired:?}\nserver log:\n{}",
        root.server_log()
    );
    let id = fired[0].clone();
    assert_complete(&root, &id);
    assert_eq!(
        runs_of(&root, "app.git", "schedule"),
        std::slice::from_ref(&id),
        "still one schedule run once it has finished\nserver log:\n{}",
        root.server_log()
    );
    assert_eq!(job_rows(&root, &id), ["both", "nightly"]);

    let (_, scheduled_at, run_sha, _) = run_row(&root, &id);
    assert_eq!(run_sha, sha);
    let tick = scheduled_at.expect("a schedule run has scheduled_at_ms");
    assert_eq!(tick.rem_euclid(DAY_MS), 3 * 3_600_000, "the tick is a 03:00 UTC: {tick}");
    assert!(
        tick > now_ms() - DAY_MS - 60_000 && tick <= now_ms(),
        "the latest missed tick, not an older one: {tick} (last fired {five_days_ago})"
    );
    let recorded: i64 = root
        .db()
        .query_row(
            "SELECT fired_at_ms FROM schedule_ticks WHERE repo = 'app.git' AND ref_name = 'refs/heads/main' AND cron = ?1",
            [DAILY],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recorded, tick, "the fired tick is recorded as the last one");
}

// ---------------------------------------------------------------------------
// Retrigger.
// ---------------------------------------------------------------------------

/// `quire ci retrigger app.git main` queues a run of main's commit with
/// trigger `manual` that runs the push's jobs; `quire ci runs` shows it in
/// its TRIGGER column, `/api/runs/{id}` as `"trigger":"manual"`, and the
/// pages say so too.
#[test]
fn a_retrigger_is_a_manual_run_of_the_push_jobs_shown_as_manual_everywhere() {
    let root = Root::new();
    let server = root.serve();
    let (_work, sha) = root.push_pipeline("app.git", TRIGGERS, "main");
    let pushed = root.wait_run_count("app.git", 1).remove(0);
    assert_complete(&root, &pushed);

    let said = root.quire_ok(&["ci", "retrigger", "app.git", "main"]);
    let ids = root.wait_run_count("app.git", 2);
    assert_eq!(ids.len(), 2, "one new run: {ids:?}");
    let manual = ids[1].clone();
    assert!(said.contains(&manual), "retrigger names the run it queued: {said}");
    assert_complete(&root, &manual);

    let (trigger, scheduled_at, run_sha, ref_name) = run_row(&root, &manual);
    assert_eq!((trigger.as_str(), scheduled_at), ("manual", None));
    assert_eq!((run_sha.as_str(), ref_name.as_str()), (sha.as_str(), "refs/heads/main"));
    assert_eq!(job_rows(&root, &manual), ["both", "on-push"], "a manual run runs the push's jobs");
    assert_eq!(log_lines(&root, "app.git", &manual, "both", 1), ["started-by-push"]);

    let listing = root.quire_ok(&["ci", "runs", "app.git"]);
    let header: Vec<&str> = listing.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header.get(4), Some(&"TRIGGER"), "a TRIGGER column:\n{listing}");
    let trigger_of = |id: &str| -> String {
        let line = listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("quire ci runs lists {id}:\n{listing}"));
        line.split_whitespace().nth(4).unwrap_or_default().to_string()
    };
    assert_eq!(trigger_of(&manual), "manual", "{listing}");
    assert_eq!(trigger_of(&pushed), "push", "{listing}");

    for (id, expected) in [(&manual, "manual"), (&pushed, "push")] {
        let (status, body) = get(&format!("{}/api/runs/{id}", server.url));
        assert_eq!(status, 200, "{body}");
        let run: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/runs/{id} is JSON ({e}): {body}"));
        assert_eq!(run["trigger"], expected, "{body}");
    }
    let (_, page) = get(&format!("{}/runs/{manual}", server.url));
    assert!(page.contains(r#"<dd class="trigger">manual</dd>"#), "{page}");
    let (_, page) = get(&format!("{}/app.git", server.url));
    assert!(page.contains(r#"<td class="trigger">manual</td>"#), "{page}");
}

// ---------------------------------------------------------------------------
// Caches.
// ---------------------------------------------------------------------------

/// `<root>/cache/<repo>/<ref, bytes outside [A-Za-z0-9._-] as %XX>`.
fn cache_dir(root: &Root, repo: &str, ref_name: &str) -> PathBuf {
    let encoded: String = ref_name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    root.path().join("cache").join(repo).join(encoded)
}

const WRITE_FROM_MAIN: &str = r#"(local ci (require :quire.ci))
(ci.job :write [:quire/push] (fn [{: sh}] (sh "echo hello > \"$QUIRE_CACHE_DIR/from-main\"")))
"#;

/// What main's first run writes in `$QUIRE_CACHE_DIR` is in main's cache
/// directory and seen by main's next run; another repository's run does
/// not see it.
#[test]
fn a_refs_cache_persists_across_its_runs_and_other_repositories_never_see_it() {
    let root = Root::new();
    let _server = root.serve();
    let work = root.repo("app.git");
    let first = push_and_finish(&root, &work, "main", WRITE_FROM_MAIN, "write the cache");
    let main_cache = cache_dir(&root, "app.git", "refs/heads/main");
    assert_eq!(
        std::fs::read_to_string(main_cache.join("from-main")).ok().as_deref(),
        Some("hello\n"),
        "run {first} wrote into {}\nserver log:\n{}",
        main_cache.display(),
        root.server_log()
    );

    let second = push_and_finish(
        &root,
        &work,
        "main",
        r#"(local ci (require :quire.ci))
(ci.job :read [:quire/push] (fn [{: sh}] (sh "cat \"$QUIRE_CACHE_DIR/from-main\"")))
"#,
        "read the cache",
    );
    assert_eq!(log_lines(&root, "app.git", &second, "read", 1), ["hello"], "main's second run read it");

    let (_other, _) = root.push_pipeline(
        "other.git",
        r#"(local ci (require :quire.ci))
(ci.job :look [:quire/push]
  (fn [{: sh}] (sh "test ! -e \"$QUIRE_CACHE_DIR/from-main\" && echo not-there")))
"#,
        "main",
    );
    let other = root.wait_run_count("other.git", 1).remove(0);
    assert_complete(&root, &other);
    assert_eq!(log_lines(&root, "other.git", &other, "look", 1), ["not-there"]);
    assert!(
        !cache_dir(&root, "other.git", "refs/heads/main").join("from-main").exists(),
        "other.git's cache is its own"
    );
}

/// A branch's first run starts from a copy of main's cache: it sees what
/// main wrote, and what it writes stays in its own cache, never in main's.
#[test]
fn a_new_branch_starts_from_a_copy_of_mains_cache_and_its_writes_never_reach_main() {
    let root = Root::new();
    let _server = root.serve();
    let work = root.repo("app.git");
    push_and_finish(&root, &work, "main", WRITE_FROM_MAIN, "write the cache");

    let topic = push_and_finish(
        &root,
        &work,
        "topic",
        r#"(local ci (require :quire.ci))
(ci.job :branch [:quire/push]
  (fn [{: sh}]
    (sh "cat \"$QUIRE_CACHE_DIR/from-main\"")
    (sh "echo topic > \"$QUIRE_CACHE_DIR/from-topic\"")))
"#,
        "topic writes",
    );
    assert_eq!(log_lines(&root, "app.git", &topic, "branch", 1), ["hello"], "topic saw main's cache");
    let topic_cache = cache_dir(&root, "app.git", "refs/heads/topic");
    assert!(topic_cache.join("from-topic").exists(), "topic's write is in {}", topic_cache.display());
    assert!(topic_cache.join("from-main").exists(), "topic's cache holds the copy of main's");

    let main = push_and_finish(
        &root,
        &work,
        "main",
        r#"(local ci (require :quire.ci))
(ci.job :check [:quire/push]
  (fn [{: sh}]
    (sh "test ! -e \"$QUIRE_CACHE_DIR/from-topic\" && echo no-topic")
    (sh "cat \"$QUIRE_CACHE_DIR/from-main\"")))
"#,
        "main checks",
    );
    assert_eq!(log_lines(&root, "app.git", &main, "check", 1), ["no-topic"]);
    assert_eq!(log_lines(&root, "app.git", &main, "check", 2), ["hello"], "main keeps its own cache");
    assert!(!cache_dir(&root, "app.git", "refs/heads/main").join("from-topic").exists());
}

/// With `:ci {:cache-mb 1}`, two branches writing 700 KB each do not both
/// fit: when the second branch's run ends the first branch's cache (the
/// least recently used) is evicted and the second's kept. `quire ci cache
/// list` lists the one left; `quire ci cache clear` removes it.
#[test]
fn past_cache_mb_the_least_recently_used_ref_is_evicted_and_the_cli_lists_and_clears_caches() {
    const BLOB: &str = r#"(local ci (require :quire.ci))
(ci.job :fill [:quire/push]
  (fn [{: sh}] (sh "head -c 700000 /dev/zero > \"$QUIRE_CACHE_DIR/blob\"")))
"#;
    let root = Root::new();
    root.write_config("{:ci {:cache-mb 1}}");
    let _server = root.serve();
    let work = root.repo("app.git");
    let one_cache = cache_dir(&root, "app.git", "refs/heads/one");
    let two_cache = cache_dir(&root, "app.git", "refs/heads/two");

    push_and_finish(&root, &work, "one", BLOB, "fill one");
    let size = |dir: &PathBuf| std::fs::metadata(dir.join("blob")).map(|m| m.len()).ok();
    assert_eq!(size(&one_cache), Some(700_000), "700 KB fit in 1 MiB\nserver log:\n{}", root.server_log());

    push_and_finish(&root, &work, "two", BLOB, "fill two");
    root.wait_for("the cache of refs/heads/one to be evicted", 30, || (!one_cache.exists()).then_some(()));
    assert_eq!(size(&two_cache), Some(700_000), "the ref of the run that just ended is kept");

    let listing = root.quire_ok(&["ci", "cache", "list", "app.git"]);
    let caches: Vec<Vec<&str>> = listing.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(caches.len(), 1, "one cache left:\n{listing}");
    assert_eq!(caches[0].first(), Some(&"app.git"), "{listing}");
    assert_eq!(
        caches[0].get(1).map(|r| r.replace("%2F", "/")).as_deref(),
        Some("refs/heads/two"),
        "{listing}"
    );
    assert!(caches[0].iter().any(|f| f.ends_with("iB")), "a size in KiB or MiB:\n{listing}");

    let cleared = root.quire_ok(&["ci", "cache", "clear", "app.git"]);
    assert!(
        cleared.contains("refs/heads/two") || cleared.contains("refs%2Fheads%2Ftwo"),
        "clear says what it removed: {cleared}"
    );
    assert!(!two_cache.exists(), "the cache of refs/heads/two is gone");
    let repo_caches = root.path().join("cache/app.git");
    let left: Vec<std::ffi::OsString> = std::fs::read_dir(&repo_caches)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no cache of app.git is left: {left:?}");
    let listing = root.quire_ok(&["ci", "cache", "list", "app.git"]);
    assert!(!listing.contains("two"), "nothing to list after clear:\n{listing}");
}
