//! The web UI and JSON API over real HTTP against a real server and
//! database: page content, pagination, escaping, path traversal, badges,
//! the proxy auth header and the live event stream.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::Root;

const PIPELINE: &str = r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh}]
    (sh "echo '<script>alert(1)</script> & friends'")
    (sh "echo oops >&2")))
(ci.job :test [:build] (fn [{: sh}] (sh "exit 1")))
(ci.job :deploy [:test] (fn [{: sh}] (sh "echo never")))
"#;

fn get(url: &str) -> (u16, String) {
    get_with(url, &[])
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new().get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// A server with one finished, failing run of `app.git`.
fn finished_run() -> (Root, common::Server, String) {
    let root = Root::new();
    let server = root.serve();
    root.push_pipeline("app.git", PIPELINE, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    root.wait_finished(&id);
    (root, server, id)
}

#[test]
fn pages_show_repositories_runs_and_a_run() {
    let (_root, server, id) = finished_run();
    let (status, home) = get(&server.url);
    assert_eq!(status, 200);
    assert!(home.contains(r#"<a href="/app.git">app.git</a>"#), "{home}");
    assert!(home.contains(r#"<span class="state failed">failed</span>"#), "{home}");

    let (status, runs) = get(&format!("{}/app.git", server.url));
    assert_eq!(status, 200);
    assert!(runs.contains(&format!("/runs/{id}")), "{runs}");
    assert!(runs.contains("pipeline-failure") && runs.contains("refs/heads/main"), "{runs}");

    let (status, run) = get(&format!("{}/runs/{id}", server.url));
    assert_eq!(status, 200);
    for expected in [
        r#"id="job-build""#,
        r#"<span class="state complete">complete</span>"#,
        r#"<span class="state failed">failed</span>"#,
        r#"id="job-deploy""#,
        r#"<span class="state skipped">skipped</span>"#,
        "exit 1",
        r#"<span class="line stderr""#,
        ">oops\n</span>",
    ] {
        assert!(run.contains(expected), "missing {expected:?} in\n{run}");
    }
    assert!(!run.contains("<script>alert(1)"), "pipeline output must be escaped");
    assert!(run.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends"), "{run}");
    assert!(!run.contains("new EventSource"), "a finished run is not followed live");

    let (status, raw) = get(&format!("{}/runs/{id}/logs/build/2", server.url));
    assert_eq!(status, 200);
    assert!(raw.contains(" stderr oops\n"), "{raw}");
}

#[test]
fn unknown_paths_and_traversal_attempts_are_404() {
    let (root, server, id) = finished_run();
    std::fs::write(root.path().join("secret.txt"), "top secret").unwrap();
    for path in [
        "/nope".to_string(),
        "/runs/not-a-run".to_string(),
        format!("/runs/{}", id.to_uppercase()),
        "/runs/../quire.db".to_string(),
        "/runs/%2e%2e/quire.db".to_string(),
        format!("/runs/{id}/logs/build/../../../../secret.txt"),
        format!("/runs/{id}/logs/..%2F..%2F..%2Fsecret.txt/1"),
        format!("/runs/{id}/logs/%2e%2e/1"),
        format!("/runs/{id}/logs/build/99"),
        format!("/runs/{id}/logs/build/-1"),
        "/..%2F..%2Fsecret.txt".to_string(),
        "/%2Fetc%2Fpasswd".to_string(),
        "/etc/passwd.git".to_string(),
        "/api/runs/..%2F..%2Fquire.db".to_string(),
        "/api/repos/..%2Fapp.git/runs".to_string(),
    ] {
        let (status, body) = get(&format!("{}{path}", server.url));
        assert_eq!(status, 404, "{path} answered {status}");
        assert!(!body.contains("top secret") && !body.contains("root:x:0"), "{path} leaked a file");
    }
    let (_, body) = get(&format!("{}/nope", server.url));
    assert!(body.contains("Not found"), "{body}");
    let (_, body) = get(&format!("{}/api/nope", server.url));
    assert_eq!(body, r#"{"error":"no such endpoint"}"#);
    for path in
        ["/api/repos/app.git/runs?page=abc", "/api/repos/app.git/runs?page=-1", "/app.git?page=99999999999"]
    {
        let (status, body) = get(&format!("{}{path}", server.url));
        assert_eq!(status, 400, "{path}");
        assert!(body.starts_with(r#"{"error":"bad query parameter"#), "{path}: {body}");
    }
}

#[test]
fn a_ref_name_with_markup_is_escaped() {
    let root = Root::new();
    let server = root.serve();
    root.push_pipeline(
        "app.git",
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"true\")))\n",
        "<b>bold</b>",
    );
    let id = root.wait_run_count("app.git", 1).remove(0);
    root.wait_finished(&id);
    for path in ["/", "/app.git", &format!("/runs/{id}")] {
        let (_, body) = get(&format!("{}{path}", server.url));
        assert!(!body.contains("<b>bold</b>"), "{path} did not escape the ref");
        assert!(body.contains("&lt;b&gt;bold&lt;/b&gt;"), "{path}: {body}");
    }
}

#[test]
fn runs_are_paginated() {
    let root = Root::new();
    let server = root.serve();
    root.quire_ok(&["repo", "new", "big.git"]);
    let conn = root.db();
    for i in 0..120 {
        let id = format!("01a00000-0000-7000-8000-{:012x}", i);
        conn.execute(
            "INSERT INTO runs (id, repo, ref_name, sha, pushed_at_ms, state, queued_at_ms, started_at_ms, finished_at_ms)
             VALUES (?1, 'big.git', 'refs/heads/main', ?2, 0, 'complete', 1, 2, 3)",
            rusqlite::params![id, format!("{:040x}", i)],
        )
        .unwrap();
    }
    let rows = |body: &str| body.matches("<tr><td><a href=\"/runs/").count();
    let (_, first) = get(&format!("{}/big.git", server.url));
    assert_eq!(rows(&first), 50);
    assert!(first.contains("01a00000-0000-7000-8000-000000000077"), "newest first");
    // Older pages are keyed by the last run shown, not counted.
    let older = |body: &str| {
        let at = body.find("?before=").expect("a link to older runs") + "?before=".len();
        body[at..at + 36].to_string()
    };
    assert_eq!(older(&first), "01a00000-0000-7000-8000-000000000046");
    assert!(!first.contains("newest"));
    let (_, second) = get(&format!("{}/big.git?before={}", server.url, older(&first)));
    assert_eq!(rows(&second), 50);
    assert!(second.contains("01a00000-0000-7000-8000-000000000045") && second.contains("newest"));
    let (_, last) = get(&format!("{}/big.git?before={}", server.url, older(&second)));
    assert_eq!(rows(&last), 20);
    assert!(!last.contains("?before=") && last.contains("01a00000-0000-7000-8000-000000000000"));
    let (_, counted) = get(&format!("{}/big.git?page=3", server.url));
    assert_eq!(rows(&counted), 20, "?page=N still works");
    let (status, json) =
        get(&format!("{}/api/repos/big.git/runs?before=01a00000-0000-7000-8000-000000000014", server.url));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Vec<serde_json::Value>>(&json).unwrap().len(), 20);
    let (status, _) = get(&format!("{}/api/repos/big.git/runs?before=nonsense", server.url));
    assert_eq!(status, 400);
    let (status, json) = get(&format!("{}/api/repos/big.git/runs?page=3", server.url));
    assert_eq!(status, 200);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(runs.len(), 20);
    assert_eq!(runs[0]["state"], "complete");
}

#[test]
fn badges_follow_the_latest_finished_run_of_a_ref() {
    let (_root, server, _id) = finished_run();
    let (status, svg) = get(&format!("{}/app.git/badge.svg?ref=refs/heads/main", server.url));
    assert_eq!(status, 200);
    assert!(svg.starts_with("<svg") && svg.contains("ci: failing"), "{svg}");
    let (_, svg) = get(&format!("{}/app.git/badge.svg?ref=refs/heads/other", server.url));
    assert!(svg.contains("ci: unknown"));
}

#[test]
fn the_json_api_describes_repos_runs_and_jobs() {
    let (_root, server, id) = finished_run();
    let (_, repos) = get(&format!("{}/api/repos", server.url));
    let repos: serde_json::Value = serde_json::from_str(&repos).unwrap();
    assert_eq!(repos[0]["name"], "app.git");
    assert_eq!(repos[0]["latest_run"]["id"], id.as_str());
    let (status, run) = get(&format!("{}/api/runs/{id}", server.url));
    assert_eq!(status, 200);
    let run: serde_json::Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["state"], "failed");
    assert_eq!(run["failure_kind"], "pipeline-failure");
    let jobs: Vec<(&str, &str)> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(jobs, [("build", "complete"), ("test", "failed"), ("deploy", "skipped")]);
    assert_eq!(run["jobs"][0]["commands"][1]["cmd"], "echo oops >&2");
}

#[test]
fn a_trusted_user_header_guards_runs_and_logs_but_not_lists_or_badges() {
    let root = Root::new();
    root.write_config("{:web {:trusted-user-header \"Remote-User\"}}");
    let server = root.serve();
    root.push_pipeline("app.git", PIPELINE, "main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    root.wait_finished(&id);
    for path in [
        format!("/runs/{id}"),
        format!("/runs/{id}/logs/build/1"),
        format!("/api/runs/{id}"),
        format!("/api/runs/{id}/events"),
    ] {
        assert_eq!(get(&format!("{}{path}", server.url)).0, 401, "{path} without the header");
        assert_eq!(
            get_with(&format!("{}{path}", server.url), &[("Remote-User", "ada")]).0,
            200,
            "{path} with it"
        );
    }
    for path in ["/", "/app.git", "/app.git/badge.svg", "/api/repos"] {
        assert_eq!(get(&format!("{}{path}", server.url)).0, 200, "{path} stays public");
    }
}

#[test]
fn the_event_stream_follows_an_active_run_to_its_end() {
    let root = Root::new();
    let server = root.serve();
    let work = root.repo("app.git");
    work.pipeline(
        "(local ci (require :quire.ci))\n(ci.job :slow [:quire/push] (fn [{: sh}] (sh \"echo first; sleep 1; echo second-line\")))\n",
    );
    work.commit("x");
    work.push("main");
    let id = root.wait_run_count("app.git", 1).remove(0);
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/api/runs/{id}/events", server.url))
        .send()
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let started = Instant::now();
    let mut kinds = Vec::new();
    let mut data = Vec::new();
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        if let Some(kind) = line.strip_prefix("event: ") {
            kinds.push(kind.to_string());
        } else if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_string());
        }
    }
    assert!(started.elapsed() < Duration::from_secs(25));
    assert_eq!(kinds.last().map(String::as_str), Some("end"), "{kinds:?}");
    assert!(data.iter().any(|d| d.contains("\"type\":\"job_started\"")), "{data:?}");
    assert!(data.iter().any(|d| d.contains("\"text\":\"second-line\"")), "{data:?}");
    assert!(data.last().unwrap().contains("\"state\":\"complete\""), "{data:?}");
}
