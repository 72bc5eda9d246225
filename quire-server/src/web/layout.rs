//! What every page shares: the HTML frame and its style, the 404 and
//! error pages, and how states, times and durations are shown. A leaf of
//! `web`: the pages import it, it imports none of them.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use quire_core::clock::{format_duration_ms, now_ms};

use crate::http::ApiError;
use crate::runs::Run;

use super::history;

fn page(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status).content_type("text/html; charset=utf-8").body(markup.into_string())
}

pub fn layout(title: &str, body: Markup) -> Markup {
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

pub fn error_page(error: ApiError) -> HttpResponse {
    let status = actix_web::ResponseError::status_code(&error);
    page(
        status,
        layout(
            "error",
            html! { h1 { (status.canonical_reason().unwrap_or("Error")) } p { (error.to_string()) } },
        ),
    )
}

pub fn state_badge(state: &str, kind: Option<&str>) -> Markup {
    html! {
        span class={ "state " (state) } { (state) }
        @if let Some(kind) = kind { " " span.kind { (kind) } }
    }
}

pub fn run_state(run: &Run) -> Markup {
    state_badge(run.state.as_str(), run.failure_kind.as_ref().map(|k| k.as_str()))
}

pub fn when(ms: Option<i64>) -> Markup {
    match ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
        Some(ts) => {
            let iso = ts.to_string();
            let short = ts.strftime("%Y-%m-%d %H:%M:%S").to_string();
            html! { time datetime=(iso) title=(iso) { (short) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// A moment as "3 min ago", with the exact time on hover.
pub fn ago(ms: Option<i64>) -> Markup {
    match ms.and_then(|ms| Some((ms, jiff::Timestamp::from_millisecond(ms).ok()?))) {
        Some((ms, ts)) => {
            let iso = ts.to_string();
            html! { time datetime=(iso) title=(iso) { (history::relative(ms, now_ms())) } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// A span for the pages; `—` when it is not known.
pub fn duration(ms: Option<i64>) -> String {
    ms.map_or_else(|| "—".to_string(), format_duration_ms)
}

pub fn run_duration(run: &Run) -> Option<i64> {
    let start = run.started_at_ms?;
    Some(run.finished_at_ms.unwrap_or_else(now_ms) - start)
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
pre.log .line { position: relative; } pre.log .line:target { background: #3a3a10; }
pre.log a.ln { position: absolute; left: -1.1rem; width: 1rem; text-decoration: none; color: #777; }
pre.log .line:hover a.ln::before { content: '#'; }
#graph { overflow-x: auto; margin: .8rem 0; } #graph svg { max-width: none; }
.history { display: block; margin: .6rem 0 1rem; }
.subject { color: #333; } .author { font-size: .85rem; }
td.subject { max-width: 22rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
pre.log:empty { display: none; }
nav.pages { margin: .8rem 0; }
details { margin: 1rem 0; } summary { cursor: pointer; color: #555; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_durations_are_a_dash() {
        assert_eq!(duration(None), "—");
        assert_eq!(duration(Some(1500)), "1.5s");
    }
}
