//! The run page (`/runs/{id}`): the run's facts, its jobs and commands,
//! and the end of each log, within a fixed budget whatever the run did: at
//! most [`COMMANDS_PER_PAGE`] commands a page (`?from=N` pages on), at most
//! [`LOG_TAIL`] of each log and [`PAGE_LOG_BUDGET`] of logs in all (past
//! it, a log is a link to its raw text), and command lines cut at
//! [`CMD_SHOWN`] characters. Files are read and the page is rendered on the
//! blocking pool. While the run is active a small script follows its event
//! stream and rebuilds the jobs live.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped};
use quire_core::cri;
use quire_core::id::{JobId, RunId};
use quire_core::jobs::{JobState, JobSummary};
use quire_core::run_dir::{LogFile, RunDir};
use serde::Deserialize;

use super::layout::{
    duration, error_page, layout, not_found_page, run_duration, run_state, state_badge, when,
};
use super::{ansi, graph};
use crate::http::run::{load_run, LoadedRun};
use crate::http::{require_user, with_db, ApiError, AppState};
use crate::runs::{FailureKind, RunState};

/// Commands shown on one page of a run.
pub const COMMANDS_PER_PAGE: usize = 300;
/// At most this much of the end of one log is shown.
pub const LOG_TAIL: u64 = 64 * 1024;
/// At most this much of logs is shown on one page, over all of them.
pub const PAGE_LOG_BUDGET: u64 = 1024 * 1024;
/// A command line is cut here on the page (the API has it whole).
pub const CMD_SHOWN: usize = 500;

#[derive(Debug, Deserialize)]
pub struct RunPageQuery {
    /// The first command shown, counting from 0 over the whole run.
    from: Option<usize>,
}

/// `/runs/{id}`: jobs, commands and their logs.
#[get("/runs/{id}")]
pub async fn run_page(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
    query: web::Query<RunPageQuery>,
) -> HttpResponse {
    let view = match readable_run(&state, &request, &id).await {
        Ok(view) => view,
        Err(response) => return response,
    };
    let from = query.from.unwrap_or(0);
    match web::block(move || render_run(&view, from).into_string()).await {
        Ok(html) => HttpResponse::build(StatusCode::OK).content_type("text/html; charset=utf-8").body(html),
        Err(e) => error_page(ApiError::internal(e)),
    }
}

/// The run named in the path, loaded, once the reader may see runs; else
/// the page to answer with.
async fn readable_run(
    state: &web::Data<AppState>,
    request: &HttpRequest,
    id: &str,
) -> Result<LoadedRun, HttpResponse> {
    require_user(state, request).map_err(error_page)?;
    let Ok(id) = id.parse::<RunId>() else { return Err(not_found_page().await) };
    let shared = state.clone();
    match with_db(state, move |conn| load_run(conn, &shared.root, &shared.progress, id)).await {
        Ok(Some(view)) => Ok(view),
        Ok(None) => Err(not_found_page().await),
        Err(e) => Err(error_page(e)),
    }
}

/// What is left to spend on logs while a page renders.
struct Budget {
    left: u64,
}

impl Budget {
    /// How much of the end of a log to show now.
    fn take(&mut self, wanted: u64) -> u64 {
        let granted = wanted.min(self.left);
        self.left -= granted;
        granted
    }
}

fn render_run(view: &LoadedRun, from: usize) -> Markup {
    let run = &view.run;
    let live = !run.state.is_finished();
    let crashed = run.state == RunState::Failed && view.jobs.is_empty()
        || matches!(
            run.failure_kind,
            Some(FailureKind::ProcessCrashed | FailureKind::Orphaned | FailureKind::Timeout)
        );
    let executor_log = view.dir.executor_log();
    // A page shows a window of "places": each command is one, and a job
    // without commands one too, so a run of many empty jobs pages as well.
    let total: usize = view.jobs.iter().map(places).sum();
    let from = from.min(total.saturating_sub(1) / COMMANDS_PER_PAGE * COMMANDS_PER_PAGE);
    let window = from..(from + COMMANDS_PER_PAGE).min(total);
    let mut budget = Budget { left: PAGE_LOG_BUDGET };
    // The executor's own log first: when a run crashed it says why.
    let executor_tail = read_tail(&view.dir, &executor_log, budget.take(LOG_TAIL));
    let mut first = 0;
    let jobs: Vec<Markup> = view
        .jobs
        .iter()
        .filter_map(|job| {
            let at = first;
            first += places(job);
            (at < window.end && first > window.start).then(|| render_job(view, job, at, &window, &mut budget))
        })
        .collect();
    html! {
        (layout(&format!("run {}", run.id.short()), html! {
            h1 { "Run " code { (run.id.short()) } " " span #run-state { (run_state(run)) } }
            dl.facts {
                dt { "repository" } dd { a href={ "/" (run.repo) } { (run.repo) } }
                dt { "ref" } dd { code { (run.ref_name) } }
                dt { "commit" } dd {
                    code { (run.sha) }
                    @if let Some(subject) = &run.subject { " " span.subject { (subject) } }
                    @if let Some(author) = &run.author { " " span.muted.author { "by " (author) } }
                }
                dt { "trigger" } dd.trigger {
                    (run.trigger.as_str())
                    @if let Some(at) = run.scheduled_at_ms { " (tick " (when(Some(at))) ")" }
                }
                dt { "queued" } dd { (when(Some(run.queued_at_ms))) }
                dt { "started" } dd { (when(run.started_at_ms)) }
                dt { "finished" } dd { (when(run.finished_at_ms)) }
                dt { "duration" } dd { (duration(run_duration(run))) }
            }
            @if !view.declared.is_empty() {
                div #graph { (job_graph(view)) }
            }
            @if total > COMMANDS_PER_PAGE { (command_pages(run.id, &window, total)) }
            section #jobs data-run=(run.id) data-live=(live) {
                @if view.jobs.is_empty() {
                    p.muted #no-jobs { @if live { "Waiting for the first job…" } @else { "No jobs ran." } }
                }
                @for job in &jobs { (job) }
            }
            @if total > COMMANDS_PER_PAGE { (command_pages(run.id, &window, total)) }
            @if crashed || executor_log.exists() {
                details open[crashed] {
                    summary { "quire-ci.log" }
                    pre.log { @if executor_tail.1 { span.muted { "… earlier lines omitted\n" } } (executor_tail.0) }
                }
            }
            @if live { script { (PreEscaped(LIVE_SCRIPT)) } }
        }))
    }
}

/// Links to the pages of a run with many commands.
fn command_pages(run: RunId, window: &std::ops::Range<usize>, total: usize) -> Markup {
    html! {
        nav.pages.commands {
            @if window.start > 0 {
                a href={ "/runs/" (run) "?from=" (window.start.saturating_sub(COMMANDS_PER_PAGE)) } { "← earlier commands" } " "
            }
            span.muted { "commands " (window.start + 1) "–" (window.end) " of " (total) }
            @if window.end < total { " " a href={ "/runs/" (run) "?from=" (window.end) } { "later commands →" } }
        }
    }
}

/// The places a job takes on the pages: one per command, at least one.
fn places(job: &JobSummary) -> usize {
    job.commands.len().max(1)
}

/// A job with those of its commands inside the window; `first` is the
/// run-wide index of its first place. Its own log goes on the page of its
/// last place.
fn render_job(
    view: &LoadedRun,
    job: &JobSummary,
    first: usize,
    window: &std::ops::Range<usize>,
    budget: &mut Budget,
) -> Markup {
    let job_log = view.dir.log(&job.job_id, LogFile::Job);
    let shown = job.commands.iter().enumerate().filter(|(i, _)| window.contains(&(first + i)));
    let hidden = job.commands.len() - shown.clone().count();
    html! {
        div.job id={ "job-" (job.job_id) } {
            h2 {
                (job.job_id) " "
                span.jobstate { (state_badge(job.state.as_str(), None)) }
                " " span.muted.took { (if job.state == JobState::Skipped { String::new() } else { duration(job.duration_ms()) }) }
            }
            @if hidden > 0 { p.muted.hidden { (hidden) " of its commands are on other pages" } }
            @for (_, command) in shown {
                div.cmd {
                    div.cmdline {
                        code { "$ " (shorten(&command.cmd)) }
                        " " span.exit { (command.exit_code.map_or("running".to_string(), |c| format!("exit {c}"))) }
                        " " span.muted { (duration(command.duration_ms())) }
                        " " a.raw href={ "/runs/" (view.run.id) "/logs/" (job.job_id) "/" (command.seq) } { "raw" }
                    }
                    (render_log(&view.dir, &job.job_id, LogFile::Command(command.seq), budget))
                }
            }
            @if window.contains(&(first + places(job) - 1)) && job_log.exists() {
                div.cmd { div.cmdline { span.muted { "job" } } (render_log(&view.dir, &job.job_id, LogFile::Job, budget)) }
            }
        }
    }
}

/// A command line as the page shows it.
fn shorten(cmd: &str) -> String {
    match cmd.char_indices().nth(CMD_SHOWN) {
        Some((at, _)) => format!("{}… ({} bytes in all)", &cmd[..at], cmd.len()),
        None => cmd.to_string(),
    }
}

/// The end of a CRI log as lines: colours and bold as styles (`ansi`),
/// stderr marked, each line's timestamp in its title and an anchor of its
/// own, `#<job>-<n>-<line>` (`n` 0 for the job's own log; lines counted
/// from the first one shown). With the budget spent, only a note.
fn render_log(dir: &RunDir, job: &JobId, file: LogFile, budget: &mut Budget) -> Markup {
    let path = &dir.log(job, file);
    let element_id = format!("log-{job}-{file}");
    // The link's own size, never its target's: `read_tail` refuses links.
    let len = std::fs::symlink_metadata(path).map_or(0, |m| m.len());
    let granted = budget.take(len.min(LOG_TAIL));
    if granted == 0 && len > 0 {
        return html! { pre.log id=(element_id) { span.muted { "output not shown: this page shows at most " (PAGE_LOG_BUDGET / 1024) " KiB of logs (see raw)" } } };
    }
    let (text, cut) = read_tail(dir, path, granted);
    let lines = cri::read_lines(&text);
    let n = match file {
        LogFile::Command(n) => n,
        LogFile::Job => 0,
    };
    html! {
        pre.log id=(element_id) {
            @if cut { span.muted { "… earlier output omitted (see raw)\n" } }
            @for (at, line) in lines.iter().enumerate() {
                @let anchor = format!("{job}-{n}-{}", at + 1);
                span class={ "line " (line.stream.as_str()) } id=(anchor) title=(line.timestamp) {
                    a.ln href={ "#" (anchor) } aria-hidden="true" {}
                    (ansi::render(&line.content)) "\n"
                }
            }
        }
    }
}

/// The run's job graph: the declared jobs, each in its state so far.
fn job_graph(view: &LoadedRun) -> Markup {
    let live = !view.run.state.is_finished();
    let states: std::collections::HashMap<&JobId, &str> =
        view.jobs.iter().map(|job| (&job.job_id, job.state.as_str())).collect();
    let nodes: Vec<graph::Node<'_>> = view
        .declared
        .iter()
        .map(|declared| {
            let state = match states.get(&declared.job_id) {
                Some(state) => state,
                None if live => "pending",
                None => "not-run",
            };
            graph::Node { id: declared.job_id.as_str(), inputs: &declared.inputs, state }
        })
        .collect();
    graph::render(&nodes)
}

/// `/runs/{id}/graph.svg`: the job graph alone, which the live page
/// fetches again as jobs start and finish.
#[get("/runs/{id}/graph.svg")]
pub async fn graph_svg(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(e) = require_user(&state, &request) {
        return error_page(e);
    }
    let Ok(id) = id.parse::<RunId>() else { return not_found_page().await };
    let shared = state.clone();
    let view = match with_db(&state, move |conn| load_run(conn, &shared.root, &shared.progress, id)).await {
        Ok(Some(view)) => view,
        Ok(None) => return not_found_page().await,
        Err(e) => return error_page(e),
    };
    match web::block(move || job_graph(&view).into_string()).await {
        Ok(svg) => HttpResponse::Ok()
            .content_type("image/svg+xml")
            .insert_header(("Cache-Control", "no-cache"))
            .body(svg),
        Err(e) => error_page(ApiError::internal(e)),
    }
}

/// The last `limit` bytes of a file, from a line start; and whether
/// anything was cut.
fn read_tail(dir: &RunDir, path: &Path, limit: u64) -> (String, bool) {
    let Ok(mut file) = dir.open(path) else { return (String::new(), false) };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(limit);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), false);
    }
    let mut buf = Vec::new();
    let _ = file.take(limit).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start == 0 {
        return (text, false);
    }
    let from = text.find('\n').map_or(text.len(), |i| i + 1);
    (text[from..].to_string(), true)
}

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
  // The graph is drawn by the server: fetched again as jobs move, one
  // request at a time.
  var graph = document.getElementById('graph'), fetching = false, stale = false;
  function refreshGraph() {
    if (!graph) { graph = el('div'); graph.id = 'graph'; section.parentNode.insertBefore(graph, section); }
    if (fetching) { stale = true; return; }
    fetching = true;
    fetch('/runs/' + run + '/graph.svg').then(function (r) { return r.ok ? r.text() : null; })
      .then(function (svg) { if (svg) graph.innerHTML = svg; })
      .catch(function () {})
      .then(function () { fetching = false; if (stale) { stale = false; refreshGraph(); } });
  }
  // Colour codes are drawn when the page is rendered; live, they are left out.
  function plain(t) {
    return t.replace(/\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b\[[0-9;:?<=>]*[ -\/]*[@-~]?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f]/g, '');
  }
  source.addEventListener('event', function (m) {
    if (!started) { started = true; section.textContent = ''; }
    var e = JSON.parse(m.data);
    if (e.type === 'job_started' || e.type === 'job_finished' || e.type === 'job_skipped' || e.type === 'pipeline') refreshGraph();
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
  function note(text) { section.parentNode.insertBefore(el('p', 'muted', text), section); }
  source.addEventListener('truncated', function () {
    note('The start of this run\u2019s output is not kept for live viewers: the raw logs have all of it.');
  });
  source.addEventListener('gap', function () {
    note('This page fell behind the run and skipped some output: the raw logs have all of it.');
  });
  // The server cannot resume this stream (it restarted, or this page fell
  // too far behind): the page, rendered afresh, starts a new one.
  source.addEventListener('reset', function () { source.close(); location.reload(); });
  source.addEventListener('log', function (m) {
    var l = JSON.parse(m.data);
    var span = el('span', 'line ' + l.stream, plain(l.text) + (l.partial ? '' : '\n')); span.title = l.time;
    log(l.job, l.file).appendChild(span);
  });
  source.addEventListener('end', function (m) {
    source.close();
    refreshGraph();
    var e = JSON.parse(m.data); var rs = document.getElementById('run-state'); rs.textContent = '';
    rs.appendChild(state(e.state)); if (e.failure_kind) rs.appendChild(el('span', 'kind', ' ' + e.failure_kind));
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_start_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let line = "2026-11-22T10:00:00.000000001Z stdout F ".to_string() + &"y".repeat(100) + "\n";
        std::fs::write(&path, line.repeat(5000)).unwrap();
        let (text, cut) = read_tail(&RunDir::new(dir.path()), &path, LOG_TAIL);
        assert!(cut);
        assert!(text.starts_with("2026-"));
        assert!(text.len() as u64 <= LOG_TAIL);
    }

    #[test]
    fn the_budget_is_spent_once() {
        let mut budget = Budget { left: 100 };
        assert_eq!(budget.take(60), 60);
        assert_eq!(budget.take(60), 40);
        assert_eq!(budget.take(60), 0);
    }

    #[test]
    fn long_command_lines_are_cut_on_a_character() {
        let cmd = "é".repeat(CMD_SHOWN + 10);
        let shown = shorten(&cmd);
        assert!(shown.starts_with(&"é".repeat(CMD_SHOWN)));
        assert!(shown.ends_with("bytes in all)"));
        assert_eq!(shorten("ls"), "ls");
    }
}
