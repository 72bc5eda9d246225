//! The read-only web UI (SPEC §6.6): server-rendered pages for the
//! repositories, a repository's runs, a run (`run_page`) and its raw logs
//! (`raw_log`), status badges, and a 404 page. Everything from a pipeline
//! is escaped by maud. Pages work without JavaScript; on an unfinished run a
//! small script follows `/api/runs/{id}/events` and rebuilds the job list
//! live. What it shares with the API is in `http`.

pub mod ansi;
pub mod graph;
pub mod history;
pub mod layout;
pub mod raw_log;
pub mod run_page;

use actix_web::{get, web, HttpResponse};
use bytes::Bytes;
use maud::{html, Markup};
use quire_core::id::RepoName;
use serde::Deserialize;

use crate::http::paging::{PageQuery, PAGE_SIZE};
use crate::http::{with_db, ApiError, AppState, REPO_PATTERN};
use crate::repos;
use crate::runs::{self, Run, RunState, Start};
pub use layout::not_found_page;
use layout::{ago, duration, error_page, layout, run_duration, run_state};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(index)
        .service(run_page::run_page)
        .service(run_page::graph_svg)
        .service(raw_log::raw_log)
        .route(&format!("/{REPO_PATTERN}/badge.svg"), web::get().to(badge))
        .route(&format!("/{REPO_PATTERN}"), web::get().to(repo_page));
}

/// `/`: every repository with its latest run.
#[get("/")]
async fn index(state: web::Data<AppState>) -> HttpResponse {
    cached_page(&state, "/".to_string(), render_index(state.clone())).await
}

async fn render_index(state: web::Data<AppState>) -> Result<String, HttpResponse> {
    let root = state.root.clone();
    let listed = with_db(&state, move |conn| {
        let names = repos::list(&root).map_err(ApiError::internal)?;
        runs::latest_of_repos(conn, names).map_err(ApiError::internal)
    })
    .await;
    let repos = listed.map_err(error_page)?;
    Ok(layout(
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
                                        td.subject { code { (run.short_sha()) } @if let Some(subject) = &run.subject { " " (subject) } }
                                        td { (ago(run.finished_at_ms)) }
                                    } @else {
                                        td.muted colspan="4" { "no runs yet" }
                                    }
                                }
                            }
                        }
                    }
                }
            },
    )
    .into_string())
}

/// `/{repo}`: the repository's runs, newest first, a page at a time.
async fn repo_page(
    state: web::Data<AppState>,
    repo: web::Path<String>,
    query: web::Query<PageQuery>,
) -> HttpResponse {
    let Ok(repo) = repo.parse::<RepoName>() else { return not_found_page().await };
    let start = match query.start() {
        Ok(start) => start,
        Err(e) => return error_page(e),
    };
    let key = format!("/{repo}?{start:?}");
    cached_page(&state, key, render_repo_page(state.clone(), repo, start)).await
}

async fn render_repo_page(
    state: web::Data<AppState>,
    repo: RepoName,
    start: Start,
) -> Result<String, HttpResponse> {
    let (listed, bare) = (repo.clone(), state.root.repo_path(&repo));
    let result = with_db(&state, move |conn| {
        let runs = runs::list(conn, Some(&listed), PAGE_SIZE + 1, start).map_err(ApiError::internal)?;
        Ok((runs, bare.is_dir()))
    })
    .await;
    let (mut runs, exists) = result.map_err(error_page)?;
    if !exists && runs.is_empty() {
        return Err(not_found_page().await);
    }
    let more = runs.len() > PAGE_SIZE as usize;
    runs.truncate(PAGE_SIZE as usize);
    Ok(layout(
            repo.as_str(),
            html! {
                h1 { (repo) }
                p { img src={ "/" (repo) "/badge.svg?ref=refs/heads/main" } alt="status of main"; }
                @if runs.is_empty() {
                    p.muted { "No runs yet: push to the repository to start one." }
                } @else {
                    (history_chart(&runs))
                    table.runs {
                        thead { tr { th { "run" } th { "state" } th { "trigger" } th { "ref" } th { "commit" } th { "queued" } th { "started" } th { "finished" } th { "duration" } } }
                        tbody {
                            @for run in &runs {
                                tr {
                                    td { a href={ "/runs/" (run.id) } { code { (run.id.short()) } } }
                                    td { (run_state(run)) }
                                    td.trigger { (run.trigger.as_str()) }
                                    td { code { (run.ref_name) } }
                                    td.subject title=[run.author.as_deref()] { code { (run.short_sha()) } @if let Some(subject) = &run.subject { " " (subject) } }
                                    td { (ago(Some(run.queued_at_ms))) }
                                    td { (ago(run.started_at_ms)) }
                                    td { (ago(run.finished_at_ms)) }
                                    td { (duration(run_duration(run))) }
                                }
                            }
                        }
                    }
                    nav.pages {
                        @if start != Start::Newest { a href={ "/" (repo) } { "← newest" } " " }
                        @if let (true, Some(last)) = (more, runs.last()) {
                            a href={ "/" (repo) "?before=" (last.id) } { "older →" }
                        }
                    }
                }
            },
    )
    .into_string())
}

/// The runs of a page (newest first) as a chart of durations, oldest left.
fn history_chart(runs: &[Run]) -> Markup {
    let ids: Vec<String> = runs.iter().rev().map(|run| run.id.short()).collect();
    let bars: Vec<history::Bar<'_>> = runs
        .iter()
        .rev()
        .zip(&ids)
        .map(|(run, id)| history::Bar {
            run_id: id,
            href: format!("/runs/{}", run.id),
            state: run.state.as_str(),
            duration_ms: run_duration(run),
            label: format!(
                "{} {} {}{}",
                run.id.short(),
                run.state.as_str(),
                duration(run_duration(run)),
                run.subject.as_deref().map(|s| format!(": {s}")).unwrap_or_default()
            ),
        })
        .collect();
    history::chart(&bars)
}

/// Serves `key` from the page cache, or renders it with `render` (whose
/// error responses are never cached).
async fn cached_page(
    state: &web::Data<AppState>,
    key: String,
    render: impl std::future::Future<Output = Result<String, HttpResponse>>,
) -> HttpResponse {
    let shared = state.clone();
    let version = web::block(move || shared.pages.version()).await.ok().flatten();
    if let Some(body) = version.and_then(|v| state.pages.get(&key, v)) {
        return html_response(body);
    }
    match render.await {
        Ok(html) => {
            let body = Bytes::from(html);
            if let Some(version) = version {
                state.pages.put(key, version, body.clone());
            }
            html_response(body)
        }
        Err(response) => response,
    }
}

fn html_response(body: Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(body)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_are_svg_naming_their_verdict() {
        let svg = badge_svg("passing", "#2e7d32");
        assert!(svg.starts_with("<svg") && svg.contains("ci: passing"));
    }
}
