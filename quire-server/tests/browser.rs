//! The web UI in a real browser: Debian's headless Chromium driven through
//! ChromeDriver (W3C WebDriver over loopback HTTP). Checks that an active
//! run's page shows a log line printed after it loaded, without a reload,
//! and what a finished run's page shows (its job graph and ANSI colours
//! among it), and the repository page's chart of runs. Screenshots land in
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

/// The key of a web element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// WebDriver "Find Elements" with a CSS selector: the references of
    /// the matching elements, in document order.
    fn find_all(&self, css: &str) -> Vec<String> {
        let found = self.command(
            reqwest::Method::POST,
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("Find Elements answered {found}"))
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap_or_else(|| panic!("not an element: {e}")).to_string())
            .collect()
    }

    /// An element's computed value of a CSS property.
    fn css(&self, element: &str, property: &str) -> String {
        let value = self.command(reqwest::Method::GET, &format!("/element/{element}/css/{property}"), None);
        value.as_str().unwrap_or_default().to_string()
    }

    fn element_text(&self, element: &str) -> String {
        let value = self.command(reqwest::Method::GET, &format!("/element/{element}/text"), None);
        value.as_str().unwrap_or_default().to_string()
    }
}

fn page_source(url: &str) -> String {
    let response = reqwest::blocking::get(url).unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.text().unwrap()
}

/// A finished run of `a` (from the push), `b` (after `a`) and `c` (after
/// `a` and the push) draws an SVG graph of 3 job nodes, each linking to its
/// job's section, and 4 edges (one per input, the source's included), also
/// served alone as `/runs/{id}/graph.svg`. A command printing ANSI red and
/// bold shows a red, bold line with an anchor of its own and its time in
/// its title, and no escape byte reaches the page; commands see
/// `TERM=xterm-256color` and `CLICOLOR_FORCE=1`; the commit's subject and
/// author are shown.
#[test]
fn a_finished_run_page_draws_the_job_graph_and_renders_ansi_colours_without_escape_bytes() {
    let root = Root::new();
    let server = root.serve();
    let work = root.repo("graph.git");
    work.pipeline(
        r#"(local ci (require :quire.ci))
(ci.job :a [:quire/push]
  (fn [{: sh}]
    (sh "printf '\\033[1;31mred-and-bold\\033[0m plain\\n'")
    (sh "echo $TERM $CLICOLOR_FORCE")))
(ci.job :b [:a] (fn [{: sh}] (sh "echo b")))
(ci.job :c [:a :quire/push] (fn [{: sh}] (sh "echo c")))
"#,
    );
    work.commit("Draw the graph in colour");
    work.push("main");
    let id = root.wait_run_count("graph.git", 1).remove(0);
    let (state, failure_kind) = root.wait_finished(&id);
    assert_eq!(state, "complete", "failure kind {failure_kind:?}\nserver log:\n{}", root.server_log());

    let url = format!("{}/runs/{id}", server.url);
    let raw = page_source(&url);
    assert!(!raw.contains('\u{1b}'), "an escape byte reached the page");
    assert!(
        raw.contains(r#"<span style="color:#cd3131;font-weight:bold">red-and-bold</span>"#),
        "the coloured text is a styled span:\n{raw}"
    );

    let browser = Browser::start();
    browser.open(&url);
    assert_eq!(browser.find_all("#graph svg.graph").len(), 1, "one graph:\n{}", browser.text());
    assert_eq!(browser.find_all("svg.graph g.node").len(), 3, "a node per job");
    assert_eq!(browser.find_all("svg.graph g.node.complete").len(), 3, "every job completed");
    assert_eq!(browser.find_all("svg.graph path.edge").len(), 4, "an edge per input");
    let edges = browser.script(
        "return Array.from(document.querySelectorAll('svg.graph path.edge')).map(function (p) { \
         return p.getAttribute('data-from') + '->' + p.getAttribute('data-to'); }).sort();",
    );
    assert_eq!(edges, json!(["a->b", "a->c", "quire/push->a", "quire/push->c"]));
    let links = browser.script(
        "return Array.from(document.querySelectorAll('svg.graph g.node')).map(function (g) { \
         var a = g.querySelector('a'), href = a ? a.getAttribute('href') : null; \
         return [g.id, href, !!(href && document.getElementById(href.slice(1)))]; });",
    );
    assert_eq!(
        links,
        json!([["graph-a", "#job-a", true], ["graph-b", "#job-b", true], ["graph-c", "#job-c", true]]),
        "each node links to its job's section"
    );

    let svg = page_source(&format!("{url}/graph.svg"));
    assert_eq!(svg.matches("class=\"node ").count(), 3, "graph.svg draws the same nodes: {svg}");
    assert_eq!(svg.matches("class=\"edge\"").count(), 4, "graph.svg draws the same edges: {svg}");

    // Command 1 of job a, line 1.
    let line = browser.find_all("span.line#a-1-1");
    assert_eq!(line.len(), 1, "the first line of a's first command has its anchor:\n{}", browser.text());
    let title = browser.script("return document.getElementById('a-1-1').getAttribute('title');");
    let title = title.as_str().unwrap_or_default();
    assert!(title.parse::<jiff::Timestamp>().is_ok(), "the line's title is its timestamp: {title:?}");
    let styled = browser.find_all("#a-1-1 span[style]");
    assert_eq!(styled.len(), 1, "one styled run in the line");
    assert_eq!(browser.element_text(&styled[0]), "red-and-bold");
    let default_colour = browser.css(&browser.find_all("#a-1-1")[0], "color");
    let colour = browser.css(&styled[0], "color");
    assert_ne!(colour, default_colour, "the red text is not in the log's default colour");
    assert!(colour.contains("205, 49, 49"), "ANSI red is #cd3131: {colour}");
    let weight = browser.css(&styled[0], "font-weight");
    assert!(weight == "700" || weight == "bold", "ANSI bold is bold: {weight}");
    assert_eq!(
        browser.script("return document.documentElement.outerHTML.indexOf('\\u001b');"),
        json!(-1),
        "no escape character in the document"
    );
    let env = browser.script("return document.getElementById('a-2-1').textContent.trim();");
    assert_eq!(env, json!("xterm-256color 1"), "commands see TERM and CLICOLOR_FORCE");

    let subject = browser.find_all("span.subject");
    assert_eq!(subject.len(), 1, "the commit's subject:\n{}", browser.text());
    assert_eq!(browser.element_text(&subject[0]), "Draw the graph in colour");
    assert!(browser.text().contains("by Test"), "the commit's author:\n{}", browser.text());
    browser.screenshot("run-graph-ansi.png");
}

/// After three runs the repository page charts them as three bars, oldest
/// left, each a link to its run; the table shows each commit's subject and
/// relative times with the exact time in their titles.
#[test]
fn the_repository_page_charts_each_run_as_a_bar_linking_to_it() {
    let root = Root::new();
    let server = root.serve();
    let work = root.repo("history.git");
    work.pipeline(
        "(local ci (require :quire.ci))\n(ci.job :a [:quire/push] (fn [{: sh}] (sh \"echo hi\")))\n",
    );
    let subjects = ["First change", "Second change", "Third change"];
    for (n, subject) in subjects.iter().enumerate() {
        work.commit(subject);
        work.push("main");
        let id = root.wait_run_count("history.git", n + 1).remove(n);
        let (state, failure_kind) = root.wait_finished(&id);
        assert_eq!(state, "complete", "failure kind {failure_kind:?}\nserver log:\n{}", root.server_log());
    }
    let ids = root.run_ids("history.git");
    assert_eq!(ids.len(), 3, "{ids:?}");

    let browser = Browser::start();
    browser.open(&format!("{}/history.git", server.url));
    assert_eq!(browser.find_all("svg.history").len(), 1, "a history chart:\n{}", browser.text());
    assert_eq!(browser.find_all("svg.history a > rect.bar").len(), 3, "a bar per run");
    assert_eq!(browser.find_all("svg.history a > rect.bar.complete").len(), 3, "every run completed");
    let bars = browser.script(
        "return Array.from(document.querySelectorAll('svg.history a > rect.bar')).map(function (r) { \
         return [r.parentNode.getAttribute('href'), parseFloat(r.getAttribute('x'))]; });",
    );
    let bars = bars.as_array().unwrap_or_else(|| panic!("{bars}"));
    let hrefs: Vec<&str> = bars.iter().map(|b| b[0].as_str().unwrap_or_default()).collect();
    let expected: Vec<String> = ids.iter().map(|id| format!("/runs/{id}")).collect();
    assert_eq!(hrefs, expected, "a link to each run, oldest first");
    let xs: Vec<f64> = bars.iter().map(|b| b[1].as_f64().unwrap_or(f64::NAN)).collect();
    assert!(xs.windows(2).all(|w| w[0] < w[1]), "oldest left: {xs:?}");
    for href in &hrefs {
        let page = page_source(&format!("{}{href}", server.url));
        assert!(page.contains("Run "), "{href} is a run page");
    }

    let subjects_shown = browser.script(
        "return Array.from(document.querySelectorAll('table.runs td.subject')).map(function (t) { \
         return t.textContent; });",
    );
    for subject in subjects {
        assert!(subjects_shown.to_string().contains(subject), "{subject:?} in {subjects_shown}");
    }
    let times = browser.script(
        "return Array.from(document.querySelectorAll('table.runs time')).map(function (t) { \
         return [t.getAttribute('datetime'), t.getAttribute('title'), t.textContent.trim()]; });",
    );
    let times = times.as_array().unwrap_or_else(|| panic!("{times}"));
    assert!(times.len() >= 9, "queued, started and finished of each run: {times:?}");
    for time in times {
        let (datetime, title, text) = (
            time[0].as_str().unwrap_or_default(),
            time[1].as_str().unwrap_or_default(),
            time[2].as_str().unwrap_or_default(),
        );
        assert!(datetime.parse::<jiff::Timestamp>().is_ok(), "datetime is a timestamp: {time}");
        assert_eq!(title, datetime, "the exact time is the title: {time}");
        assert!(text == "just now" || text.ends_with(" ago"), "a relative time: {time}");
    }
    browser.screenshot("repository-history.png");
}
