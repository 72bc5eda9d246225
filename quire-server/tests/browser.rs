//! The web UI in a real browser: Debian's headless Chromium driven through
//! ChromeDriver (W3C WebDriver over loopback HTTP). Checks that an active
//! run's page shows a log line printed after it loaded, without a reload,
//! and what a finished run's page shows. Screenshots land in
//! `target/screenshots/` for a person to look at.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::Root;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A ChromeDriver process with one headless Chromium session; both end on
/// drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed by scripts/setup");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1200,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().unwrap().json().unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser { driver, base, session, http, _profile: profile }
    }

    fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().unwrap().json().unwrap();
        if response["value"]["error"].is_string() {
            panic!("WebDriver {path} failed: {}", response["value"]);
        }
        response["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    fn script(&self, source: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": source, "args": [] })))
    }

    fn text(&self) -> String {
        self.script("return document.body.innerText;").as_str().unwrap_or_default().to_string()
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.command(reqwest::Method::GET, "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn an_active_run_page_shows_new_log_lines_without_reloading() {
    let root = Root::new();
    let server = root.serve();
    let browser = Browser::start();
    let work = root.repo("live.git");
    work.pipeline(
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push]
  (fn [{: sh}]
    (sh "echo early-line; sleep 8; echo late-$((20+22))-line; sleep 5")))
"#,
    );
    work.commit("slow pipeline");
    work.push("main");
    let id = root.wait_run_count("live.git", 1).remove(0);
    root.wait_for("the run to print its first line", 30, || {
        let log = root.path().join(format!("runs/live.git/{id}/jobs/build/sh-1.log"));
        std::fs::read_to_string(log).ok().filter(|t| t.contains("early-line")).map(|_| ())
    });

    browser.open(&format!("{}/runs/{id}", server.url));
    assert!(!browser.text().contains("late-42-line"), "the late line is not printed yet");
    browser.script("window.loadedOnce = 'still-the-same-page'; return null;");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !browser.text().contains("late-42-line") {
        assert!(Instant::now() < deadline, "the late line never appeared:\n{}", browser.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        browser.script("return window.loadedOnce;"),
        json!("still-the-same-page"),
        "the page was not reloaded"
    );
    let state: String =
        root.db().query_row("SELECT state FROM runs WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(state, "active", "the line arrived while the run was still going");
    assert!(browser.text().contains("early-line"));
    browser.screenshot("active-run.png");
}

#[test]
fn finished_runs_and_the_repositories_page_render_in_a_browser() {
    let root = Root::new();
    let server = root.serve();
    root.push_pipeline(
        "passing.git",
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push] (fn [{: sh}] (sh "echo compiled 42 files") {:bin "app"}))
(ci.job :test [:build] (fn [{: sh : jobs}] (sh (.. "echo testing " (. (jobs :build) :bin)))))
"#,
        "main",
    );
    root.push_pipeline(
        "failing.git",
        r#"(local ci (require :quire.ci))
(ci.job :build [:quire/push] (fn [{: sh}] (sh "echo 'error: expected ; on line 3' >&2; exit 1")))
(ci.job :deploy [:build] (fn [{: sh}] (sh "echo never")))
"#,
        "main",
    );
    let green = root.wait_run_count("passing.git", 1).remove(0);
    let red = root.wait_run_count("failing.git", 1).remove(0);
    root.wait_finished(&green);
    root.wait_finished(&red);

    let browser = Browser::start();
    browser.open(&server.url);
    let home = browser.text();
    assert!(home.contains("passing.git") && home.contains("failing.git"), "{home}");
    browser.screenshot("repositories.png");

    browser.open(&format!("{}/runs/{green}", server.url));
    let page = browser.text();
    for expected in
        ["build", "test", "$ echo compiled 42 files", "compiled 42 files", "$ echo testing app", "exit 0"]
    {
        assert!(page.contains(expected), "missing {expected:?} in\n{page}");
    }
    browser.screenshot("passing-run.png");

    browser.open(&format!("{}/runs/{red}", server.url));
    let page = browser.text();
    for expected in
        ["failed", "pipeline-failure", "exit 1", "error: expected ; on line 3", "deploy", "skipped"]
    {
        assert!(page.contains(expected), "missing {expected:?} in\n{page}");
    }
    let stderr_color = browser.script(
        "var s = document.querySelector('pre.log .stderr'); return s ? getComputedStyle(s).color : null;",
    );
    let stdout_color = browser.script("return getComputedStyle(document.querySelector('pre.log')).color;");
    assert_ne!(stderr_color, stdout_color, "stderr lines are told apart");
    browser.screenshot("failing-run.png");
}

#[test]
fn two_active_jobs_show_at_once_on_the_run_page() {
    let root = Root::new();
    root.write_config("{:ci {:sandbox :none :max-parallel-jobs 2}}");
    // Both jobs wait for this directory's `open` file, so neither can finish
    // before the test has seen them running side by side. They also stop
    // waiting once the directory is gone, so a failing test leaves no
    // commands behind.
    let gate = tempfile::tempdir().unwrap();
    let server = root.serve_with(&[("GATE", gate.path().to_str().unwrap())]);
    let browser = Browser::start();
    root.push_pipeline(
        "parallel.git",
        r#"(local ci (require :quire.ci))
(ci.job :left [:quire/push]
  (fn [{: sh}]
    (sh "echo left-running; while [ -d \"$GATE\" ] && [ ! -e \"$GATE/open\" ]; do sleep 0.1; done")))
(ci.job :right [:quire/push]
  (fn [{: sh}]
    (sh "echo right-running; while [ -d \"$GATE\" ] && [ ! -e \"$GATE/open\" ]; do sleep 0.1; done")))
"#,
        "main",
    );
    let id = root.wait_run_count("parallel.git", 1).remove(0);
    for job in ["left", "right"] {
        let line = format!("{job}-running");
        root.wait_for(&format!("job {job} to print its first line"), 30, || {
            let log = root.path().join(format!("runs/parallel.git/{id}/jobs/{job}/sh-1.log"));
            std::fs::read_to_string(log).ok().filter(|t| t.contains(&line)).map(|_| ())
        });
    }

    browser.open(&format!("{}/runs/{id}", server.url));
    // The page may be rebuilt from the event stream after it loads; wait
    // until it shows both jobs' badges and first lines.
    let badges = "return ['left', 'right'].map(function (id) { \
                  var s = document.querySelector('div.job#job-' + id + ' .jobstate'); \
                  return s ? s.textContent.trim() : null; });";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = browser.text();
        let states = browser.script(badges);
        if states == json!(["active", "active"])
            && text.contains("left-running")
            && text.contains("right-running")
        {
            break;
        }
        assert!(Instant::now() < deadline, "both jobs were never shown active: {states}\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let state: String =
        root.db().query_row("SELECT state FROM runs WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(state, "active", "both jobs are shown while the run is still going");
    browser.screenshot("run-two-active-jobs.png");

    std::fs::write(gate.path().join("open"), "").unwrap();
    let (state, failure_kind) = root.wait_finished(&id);
    assert_eq!(state, "complete", "failure kind {failure_kind:?}\nserver log:\n{}", root.server_log());
}
