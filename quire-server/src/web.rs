//! The read-only web UI (SPEC §6.6): server-rendered pages for the
//! repositories, a repository's runs, a run (jobs, commands, logs), status
//! badges, and a 404 page. Everything from a pipeline is escaped by maud.
//! Pages work without JavaScript; on an unfinished run a small script
//! follows `/api/runs/{id}/events` and rebuilds the job list live. What it
//! shares with the API is in `http`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use quire_core::clock::{format_duration_ms, now_ms};
use quire_core::cri;
use quire_core::id::{JobId, RepoName, RunId};
use quire_core::jobs::{JobState, JobSummary};
use quire_core::run_dir::LogFile;
use serde::Deserialize;

use crate::http::paging::{Page, PageQuery, PAGE_SIZE};
use crate::http::run::{load_run, LoadedRun};
use crate::http::{require_user, with_db, ApiError, AppState, REPO_PATTERN};
use crate::repos;
use crate::runs::{self, FailureKind, Run, RunState};

/// At most this much of the end of each log is rendered into the page.
const LOG_TAIL: u64 = 256 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(index)
        .service(run_page)
        .service(raw_log)
        .route(&format!("/{REPO_PATTERN}/badge.svg"), web::get().to(badge))
        .route(&format!("/{REPO_PATTERN}"), web::get().to(repo_page));
}

fn page(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(markup.into_string())
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · quire" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { a.brand href="/" { "quire" } " " span.muted { "ci" } }
                main { (body) }
            }
        }
    }
}

/// The 404 page, for any path the UI does not know.
pub async fn not_found_page() -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        layout(
            "not found",
            html! { h1 { "Not found" } p { "Nothing lives here. " a href="/" { "Back to the repositories." } } },
        ),
    )
}

fn error_page(error: ApiError) -> HttpResponse {
    let status = actix_web::ResponseError::status_code(&error);
    page(
        status,
        layout(
            "error",
            html! { h1 { (status.canonical_reason().unwrap_or("Error")) } p { (error.to_string()) } },
        ),
    )
}

fn state_badge(state: &str, kind: Option<&str>) -> Markup {
    html! {
        span class={ "state " (state) } { (state) }
        @if let Some(kind) = kind { " " span.kind { (kind) } }
    }
}

fn run_state(run: &Run) -> Markup {
    state_badge(run.state.as_str(), run.failure_kind.as_ref().map(|k| k.as_str()))
}

fn when(ms: Option<i64>) -> Markup {
    match ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
        Some(ts) => {
            let iso = ts.to_string();
            let short = ts.strftime("%Y-%m-%d %H:%M:%S").to_string();
            html! { time datetime=(iso) title=(iso) { (short) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// A span for the pages; `—` when it is not known.
fn duration(ms: Option<i64>) -> String {
    ms.map_or_else(|| "—".to_string(), format_duration_ms)
}

fn run_duration(run: &Run) -> Option<i64> {
    let start = run.started_at_ms?;
    Some(run.finished_at_ms.unwrap_or_else(now_ms) - start)
}

/// `/`: every repository with its latest run.
#[get("/")]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    let root = state.root.clone();
    let listed = with_db(&state, move |conn| {
        let names = repos::list(&root).map_err(ApiError::internal)?;
        runs::latest_of_repos(conn, names).map_err(ApiError::internal)
    })
    .await;
    let repos = match listed {
        Ok(repos) => repos,
        Err(e) => return error_page(e),
    };
    page(
        StatusCode::OK,
        layout(
            "repositories",
            html! {
                h1 { "Repositories" }
                @if repos.is_empty() {
                    p.muted { "No repositories yet. Create one with " code { "quire repo new NAME.git" } "." }
                } @else {
                    table {
                        thead { tr { th { "repository" } th { "latest run" } th { "ref" } th { "commit" } th { "finished" } } }
                        tbody {
                            @for (name, latest) in &repos {
                                tr {
                                    td { a href={ "/" (name) } { (name) } }
                                    @if let Some(run) = latest {
                                        td { a href={ "/runs/" (run.id) } { (run_state(run)) } }
                                        td { code { (run.ref_name) } }
                                        td { code { (run.short_sha()) } }
                                        td { (when(run.finished_at_ms)) }
                                    } @else {
                                        td.muted colspan="4" { "no runs yet" }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// `/{repo}`: the repository's runs, newest first, a page at a time.
async fn repo_page(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<PageQuery>,
) -> HttpResponse {
    let Ok(repo) = repo.parse::<RepoName>() else { return not_found_page().await };
    let window = Page::from_query(&query);
    let page_number = window.number;
    let exists = state.root.repo_path(&repo).is_dir();
    let listed = repo.clone();
    let result = with_db(&state, move |conn| {
        runs::list(conn, Some(&listed), PAGE_SIZE + 1, window.offset).map_err(ApiError::internal)
    })
    .await;
    let mut runs = match result {
        Ok(runs) => runs,
        Err(e) => return error_page(e),
    };
    if !exists && runs.is_empty() {
        return not_found_page().await;
    }
    let more = runs.len() > PAGE_SIZE as usize;
    runs.truncate(PAGE_SIZE as usize);
    page(
        StatusCode::OK,
        layout(
            repo.as_str(),
            html! {
                h1 { (repo) }
                p { img src={ "/" (repo) "/badge.svg?ref=refs/heads/main" } alt="status of main"; }
                @if runs.is_empty() {
                    p.muted { "No runs yet: push to the repository to start one." }
                } @else {
                    table.runs {
                        thead { tr { th { "run" } th { "state" } th { "ref" } th { "commit" } th { "queued" } th { "started" } th { "finished" } th { "duration" } } }
                        tbody {
                            @for run in &runs {
                                tr {
                                    td { a href={ "/runs/" (run.id) } { code { (run.id.short()) } } }
                                    td { (run_state(run)) }
                                    td { code { (run.ref_name) } }
                                    td { code { (run.short_sha()) } }
                                    td { (when(Some(run.queued_at_ms))) }
                                    td { (when(run.started_at_ms)) }
                                    td { (when(run.finished_at_ms)) }
                                    td { (duration(run_duration(run))) }
                                }
                            }
                        }
                    }
                    nav.pages {
                        @if page_number > 1 { a href={ "?page=" (page_number - 1) } { "← newer" } " " }
                        span.muted { "page " (page_number) }
                        @if more { " " a href={ "?page=" (page_number + 1) } { "older →" } }
                    }
                }
            },
        ),
    )
}

/// `/runs/{id}`: jobs, commands and their logs.
#[get("/runs/{id}")]
async fn run_page(state: web::Data<AppState>, request: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if let Err(e) = require_user(&state, &request) {
        return error_page(e);
    }
    let Ok(id) = id.parse::<RunId>() else { return not_found_page().await };
    let root = state.root.clone();
    let view = match with_db(&state, move |conn| load_run(conn, &root, id)).await {
        Ok(Some(view)) => view,
        Ok(None) => return not_found_page().await,
        Err(e) => return error_page(e),
    };
    page(StatusCode::OK, render_run(&view))
}

fn render_run(view: &LoadedRun) -> Markup {
    let run = &view.run;
    let live = !run.state.is_finished();
    let crashed = run.state == RunState::Failed && view.jobs.is_empty()
        || matches!(
            run.failure_kind,
            Some(FailureKind::ProcessCrashed | FailureKind::Orphaned | FailureKind::Timeout)
        );
    let executor_log = view.dir.executor_log();
    html! {
        (layout(&format!("run {}", run.id.short()), html! {
            h1 { "Run " code { (run.id.short()) } " " span #run-state { (run_state(run)) } }
            dl.facts {
                dt { "repository" } dd { a href={ "/" (run.repo) } { (run.repo) } }
                dt { "ref" } dd { code { (run.ref_name) } }
                dt { "commit" } dd { code { (run.sha) } }
                dt { "queued" } dd { (when(Some(run.queued_at_ms))) }
                dt { "started" } dd { (when(run.started_at_ms)) }
                dt { "finished" } dd { (when(run.finished_at_ms)) }
                dt { "duration" } dd { (duration(run_duration(run))) }
            }
            section #jobs data-run=(run.id) data-live=(live) {
                @if view.jobs.is_empty() {
                    p.muted #no-jobs { @if live { "Waiting for the first job…" } @else { "No jobs ran." } }
                }
                @for job in &view.jobs { (render_job(view, job)) }
            }
            @if crashed || executor_log.exists() {
                details open[crashed] {
                    summary { "quire-ci.log" }
                    pre.log { (read_tail(&executor_log).0) }
                }
            }
            @if live { script { (PreEscaped(LIVE_SCRIPT)) } }
        }))
    }
}

fn render_job(view: &LoadedRun, job: &JobSummary) -> Markup {
    let job_log = view.dir.log(&job.job_id, LogFile::Job);
    html! {
        div.job id={ "job-" (job.job_id) } {
            h2 {
                (job.job_id) " "
                span.jobstate { (state_badge(job.state.as_str(), None)) }
                " " span.muted.took { (if job.state == JobState::Skipped { String::new() } else { duration(job.duration_ms()) }) }
            }
            @for command in &job.commands {
                div.cmd {
                    div.cmdline {
                        code { "$ " (command.cmd) }
                        " " span.exit { (command.exit_code.map_or("running".to_string(), |c| format!("exit {c}"))) }
                        " " span.muted { (duration(command.duration_ms())) }
                        " " a.raw href={ "/runs/" (view.run.id) "/logs/" (job.job_id) "/" (command.seq) } { "raw" }
                    }
                    (render_log(&view.dir.log(&job.job_id, LogFile::Command(command.seq)), &format!("log-{}-{}", job.job_id, LogFile::Command(command.seq))))
                }
            }
            @if job_log.exists() {
                div.cmd { div.cmdline { span.muted { "job" } } (render_log(&job_log, &format!("log-{}-{}", job.job_id, LogFile::Job))) }
            }
        }
    }
}

/// A CRI log as lines; stderr is marked, timestamps are in each line's
/// title.
fn render_log(path: &Path, element_id: &str) -> Markup {
    let (text, cut) = read_tail(path);
    let lines = cri::read_lines(&text);
    html! {
        pre.log id=(element_id) {
            @if cut { span.muted { "… earlier output omitted (see raw)\n" } }
            @for line in &lines {
                span class={ "line " (line.stream.as_str()) } title=(line.timestamp) { (line.content) "\n" }
            }
        }
    }
}

/// The last [`LOG_TAIL`] bytes of a file, from a line start; and whether
/// anything was cut.
fn read_tail(path: &Path) -> (String, bool) {
    let Ok(mut file) = File::open(path) else { return (String::new(), false) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), false);
    }
    let mut buf = Vec::new();
    let _ = file.take(LOG_TAIL).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start == 0 {
        return (text, false);
    }
    let from = text.find('\n').map_or(text.len(), |i| i + 1);
    (text[from..].to_string(), true)
}

/// `/runs/{id}/logs/{job}/{n}`: one command's log as plain text (`n` = 0
/// is the job's own log).
#[get("/runs/{id}/logs/{job}/{n}")]
async fn raw_log(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<(String, String, u32)>,
) -> HttpResponse {
    if let Err(e) = require_user(&state, &request) {
        return error_page(e);
    }
    let (id, job, n) = path.into_inner();
    let (Ok(id), Ok(job)) = (id.parse::<RunId>(), JobId::new(job)) else {
        return not_found_page().await;
    };
    let root = state.root.clone();
    let run = match with_db(&state, move |conn| runs::get(conn, id).map_err(ApiError::internal)).await {
        Ok(Some(run)) => run,
        Ok(None) => return not_found_page().await,
        Err(e) => return error_page(e),
    };
    let file = if n == 0 { LogFile::Job } else { LogFile::Command(n) };
    let path = root.run_dir(&run.repo, id).log(&job, file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let body: String = cri::read_lines(&text)
                .into_iter()
                .map(|l| format!("{} {} {}\n", l.timestamp, l.stream.as_str(), l.content))
                .collect();
            HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body)
        }
        Err(_) => not_found_page().await,
    }
}

#[derive(Deserialize)]
pub struct BadgeQuery {
    #[serde(rename = "ref")]
    ref_name: Option<String>,
}

/// `/{repo}/badge.svg?ref=…`: the latest finished run's state for the ref.
async fn badge(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<BadgeQuery>,
) -> HttpResponse {
    let Ok(repo) = repo.parse::<RepoName>() else { return not_found_page().await };
    let ref_name = query.ref_name.clone().unwrap_or_else(|| "refs/heads/main".to_string());
    let latest =
        with_db(&state, move |conn| runs::latest_verdict(conn, &repo, &ref_name).map_err(ApiError::internal))
            .await;
    let (label, color) = match latest {
        Ok(Some(RunState::Complete)) => ("passing", "#2e7d32"),
        Ok(Some(RunState::Failed)) => ("failing", "#c62828"),
        _ => ("unknown", "#757575"),
    };
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header(("Cache-Control", "no-cache"))
        .body(badge_svg(label, color))
}

fn badge_svg(label: &str, color: &str) -> String {
    let width = 34 + label.len() as u32 * 7 + 10;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="ci: {label}"><title>ci: {label}</title><rect width="34" height="20" fill="#555"/><rect x="34" width="{w}" height="20" fill="{color}"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="8" y="14">ci</text><text x="39" y="14">{label}</text></g></svg>"##,
        total = width,
        w = width - 34,
    )
}

const STYLE: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
header { background: #1d1d1f; color: #eee; padding: .6rem 1.2rem; }
header a.brand { color: #fff; font-weight: 700; text-decoration: none; }
main { max-width: 72rem; margin: 1rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin: 0 0 .4rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e3e3; }
th { font-weight: 600; color: #555; font-size: .85rem; }
code { font: 13px ui-monospace, monospace; }
a { color: #0b57d0; }
.muted { color: #777; }
.state { display: inline-block; padding: 0 .45rem; border-radius: .6rem; font-size: .8rem; font-weight: 600; color: #fff; background: #757575; }
.state.complete { background: #2e7d32; } .state.failed { background: #c62828; }
.state.active { background: #1565c0; } .state.pending { background: #8d6e63; }
.state.skipped, .state.superseded { background: #9e9e9e; } .state.aborted { background: #6d4c41; }
.kind { font-size: .8rem; color: #c62828; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; }
dl.facts dt { color: #777; } dl.facts dd { margin: 0; }
.job { background: #fff; border: 1px solid #e3e3e3; border-radius: .4rem; padding: .7rem .9rem; margin: .8rem 0; }
.cmdline { margin: .4rem 0 .2rem; } .cmdline .exit { font-size: .85rem; font-weight: 600; } a.raw { font-size: .8rem; }
pre.log { background: #111; color: #ddd; padding: .5rem .7rem; margin: 0; overflow-x: auto; max-height: 30rem; font: 12.5px/1.4 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
pre.log .stderr { color: #ff8a80; }
pre.log:empty { display: none; }
nav.pages { margin: .8rem 0; }
details { margin: 1rem 0; } summary { cursor: pointer; color: #555; }
"#;

/// Follows the run's event stream and rebuilds the jobs from it. Uses
/// `textContent` only, never HTML, for anything from the pipeline.
const LIVE_SCRIPT: &str = r#"
(function () {
  var section = document.getElementById('jobs');
  var run = section.dataset.run;
  var source = new EventSource('/api/runs/' + run + '/events');
  var counts = {};
  var started = false;
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }
  function state(name) { return el('span', 'state ' + name, name); }
  function job(id) {
    var div = document.getElementById('job-' + id);
    if (!div) {
      div = el('div', 'job'); div.id = 'job-' + id;
      var h = el('h2', null, id + ' '); var s = el('span', 'jobstate'); h.appendChild(s); div.appendChild(h);
      section.appendChild(div);
    }
    return div;
  }
  function setState(id, name) { var s = job(id).querySelector('.jobstate'); s.textContent = ''; s.appendChild(state(name)); }
  function log(jobId, file) {
    var id = 'log-' + jobId + '-' + file;
    var pre = document.getElementById(id);
    if (!pre) { var wrap = el('div', 'cmd'); wrap.appendChild(el('div', 'cmdline muted', 'job')); pre = el('pre', 'log'); pre.id = id; wrap.appendChild(pre); job(jobId).appendChild(wrap); }
    return pre;
  }
  source.addEventListener('event', function (m) {
    if (!started) { started = true; section.textContent = ''; }
    var e = JSON.parse(m.data);
    if (e.type === 'job_started') { job(e.job_id); setState(e.job_id, 'active'); }
    else if (e.type === 'job_finished') { setState(e.job_id, e.outcome); }
    else if (e.type === 'job_skipped') { job(e.job_id); setState(e.job_id, 'skipped'); }
    else if (e.type === 'sh_started') {
      var n = counts[e.job_id] = (counts[e.job_id] || 0) + 1;
      var wrap = el('div', 'cmd'); var line = el('div', 'cmdline');
      line.appendChild(el('code', null, '$ ' + e.cmd)); line.appendChild(document.createTextNode(' '));
      var exit = el('span', 'exit', 'running'); exit.id = 'exit-' + e.job_id + '-' + n; line.appendChild(exit);
      wrap.appendChild(line); var pre = el('pre', 'log'); pre.id = 'log-' + e.job_id + '-sh-' + n + '.log'; wrap.appendChild(pre);
      job(e.job_id).appendChild(wrap);
    } else if (e.type === 'sh_finished') {
      var x = document.getElementById('exit-' + e.job_id + '-' + (counts[e.job_id] || 0));
      if (x) x.textContent = 'exit ' + e.exit_code;
    } else if (e.type === 'run_finished') {
      var rs = document.getElementById('run-state'); rs.textContent = ''; rs.appendChild(state(e.outcome === 'success' ? 'complete' : 'failed'));
    }
  });
  source.addEventListener('log', function (m) {
    var l = JSON.parse(m.data);
    var span = el('span', 'line ' + l.stream, l.text + (l.partial ? '' : '\n')); span.title = l.time;
    log(l.job, l.file).appendChild(span);
  });
  source.addEventListener('end', function (m) {
    source.close();
    var e = JSON.parse(m.data); var rs = document.getElementById('run-state'); rs.textContent = '';
    rs.appendChild(state(e.state)); if (e.failure_kind) rs.appendChild(el('span', 'kind', ' ' + e.failure_kind));
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_durations_are_a_dash() {
        assert_eq!(duration(None), "—");
        assert_eq!(duration(Some(1500)), "1.5s");
    }

    #[test]
    fn badges_are_svg_naming_their_verdict() {
        let svg = badge_svg("passing", "#2e7d32");
        assert!(svg.starts_with("<svg") && svg.contains("ci: passing"));
    }

    #[test]
    fn log_tails_start_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let line = "2026-11-22T10:00:00.000000001Z stdout F ".to_string() + &"y".repeat(100) + "\n";
        std::fs::write(&path, line.repeat(5000)).unwrap();
        let (text, cut) = read_tail(&path);
        assert!(cut);
        assert!(text.starts_with("2026-"));
        assert!(text.len() as u64 <= LOG_TAIL);
    }
}
