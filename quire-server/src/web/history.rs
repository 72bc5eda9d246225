//! A repository's recent runs at a glance: (a) their durations as an
//! inline SVG bar chart, oldest left and newest right, each bar a link to
//! its run coloured by its state; and (b) how long ago a time was, in
//! words ("3 min ago"). It owns the drawing and the wording; it does not
//! own which runs are shown, their links or labels (the caller builds
//! `href` and `label`, and is trusted to make `href` a link of its own),
//! nor the clock: `now_ms` is passed in so the words are testable.

use maud::{html, Markup};

/// One run's bar.
pub struct Bar<'a> {
    pub run_id: &'a str,
    /// Where the bar links to, e.g. the run's page.
    pub href: String,
    /// The run's state: `pending`, `active`, `complete`, `failed`,
    /// `superseded` (job states are coloured too).
    pub state: &'a str,
    /// How long it took or has taken; `None` when not known.
    pub duration_ms: Option<i64>,
    /// The bar's tooltip.
    pub label: String,
}

/// Bars drawn at most: the newest ones.
pub const MAX_BARS: usize = 50;

const BAR_W: f64 = 10.0;
const BAR_GAP: f64 = 4.0;
/// The height of the longest run's bar.
const CHART_H: f64 = 60.0;
/// The height of a bar with no duration, or one too short to see.
const STUB_H: f64 = 2.0;
/// A bar with no duration: light grey whatever its state.
const NO_DURATION: &str = "#bdbdbd";

/// Each state with its fill, as the state badges on the page colour them.
const STATES: [(&str, &str); 8] = [
    ("complete", "#2e7d32"),
    ("failed", "#c62828"),
    ("active", "#1565c0"),
    ("pending", "#8d6e63"),
    ("superseded", "#9e9e9e"),
    ("skipped", "#9e9e9e"),
    ("aborted", "#6d4c41"),
    ("not-run", "#bdbdbd"),
];
const UNKNOWN: (&str, &str) = ("unknown", "#bdbdbd");

/// The state's class as drawn (`unknown` for one not in [`STATES`]) and its
/// fill. The class is this module's own word, never the caller's text.
fn state_style(state: &str) -> (&'static str, &'static str) {
    STATES.iter().find(|(name, _)| *name == state).copied().unwrap_or(UNKNOWN)
}

/// A coordinate as the SVG has it: one decimal, whatever the float.
fn px(value: f64) -> String {
    format!("{value:.1}")
}

/// A bar's height: its share of the longest run, never below a stub so
/// every bar can be seen and clicked. A negative duration counts as 0.
fn bar_height(duration_ms: Option<i64>, longest_ms: i64) -> f64 {
    match duration_ms {
        // Both are converted to f64 first, so even i64::MAX cannot overflow.
        Some(ms) if longest_ms > 0 => (ms.max(0) as f64 / longest_ms as f64 * CHART_H).max(STUB_H),
        _ => STUB_H,
    }
}

/// The durations of the last runs as bars, oldest left, newest right, the
/// longest at full height. At most [`MAX_BARS`] (the newest); nothing when
/// there are no runs.
pub fn chart(bars: &[Bar<'_>]) -> Markup {
    let shown = &bars[bars.len().saturating_sub(MAX_BARS)..];
    if shown.is_empty() {
        return html! {};
    }
    let longest_ms = shown.iter().filter_map(|bar| bar.duration_ms).max().unwrap_or(0);
    let width = px(shown.len() as f64 * (BAR_W + BAR_GAP) - BAR_GAP);
    let height = px(CHART_H);
    html! {
        svg class="history" role="img" aria-label="durations of the last runs" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } {
            @for (i, bar) in shown.iter().enumerate() { (bar_link(i, bar, longest_ms)) }
        }
    }
}

/// Bar `i` from the left, bottom-aligned, inside a link to its run.
fn bar_link(i: usize, bar: &Bar<'_>, longest_ms: i64) -> Markup {
    let (class, state_fill) = state_style(bar.state);
    let fill = if bar.duration_ms.is_some() { state_fill } else { NO_DURATION };
    let h = bar_height(bar.duration_ms, longest_ms);
    html! {
        a href=(bar.href) {
            rect class={ "bar " (class) } data-run=(bar.run_id) x=(px(i as f64 * (BAR_W + BAR_GAP))) y=(px(CHART_H - h))
                width=(px(BAR_W)) height=(px(h)) fill=(fill) {
                title { (bar.label) }
            }
        }
    }
}

/// Under this many seconds either way, a time is "just now".
const JUST_NOW_S: u128 = 5;
const MINUTE_S: u128 = 60;
const HOUR_S: u128 = 60 * MINUTE_S;
const DAY_S: u128 = 24 * HOUR_S;

/// How far `ms` is from `now_ms`, in words, rounded down to a whole unit:
/// under 5 s "just now"; under a minute "12 s ago"; under an hour
/// "3 min ago"; under a day "2 h ago"; then "1 day ago", "5 days ago"
/// (days however many). A time after `now_ms` reads "in 3 min". Any two
/// i64 values are fine.
pub fn relative(ms: i64, now_ms: i64) -> String {
    // In i128 the difference of any two i64 fits.
    let ago = i128::from(now_ms) - i128::from(ms);
    let seconds = ago.unsigned_abs() / 1000;
    if seconds < JUST_NOW_S {
        return "just now".to_string();
    }
    let span = if seconds < MINUTE_S {
        format!("{seconds} s")
    } else if seconds < HOUR_S {
        format!("{} min", seconds / MINUTE_S)
    } else if seconds < DAY_S {
        format!("{} h", seconds / HOUR_S)
    } else {
        match seconds / DAY_S {
            1 => "1 day".to_string(),
            days => format!("{days} days"),
        }
    };
    if ago < 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar<'a>(run_id: &'a str, state: &'static str, duration_ms: Option<i64>) -> Bar<'a> {
        Bar { run_id, href: format!("/runs/{run_id}"), state, duration_ms, label: format!("run {run_id}") }
    }

    /// The `height` of each bar, in order.
    fn heights(svg: &str) -> Vec<String> {
        svg.split("<rect")
            .skip(1)
            .filter_map(|rect| rect.split(" height=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_bar_per_run_each_in_its_link() {
        let bars =
            [bar("r1", "complete", Some(1000)), bar("r2", "failed", Some(500)), bar("r3", "active", None)];
        let out = chart(&bars).into_string();
        assert_eq!(out.matches("<rect").count(), 3);
        assert!(out.contains("<svg class=\"history\" role=\"img\" aria-label=\"durations of the last runs\""));
        assert!(out.contains("viewBox=\"0 0 38.0 60.0\""), "{out}");
        assert!(out.contains("<a href=\"/runs/r1\"><rect class=\"bar complete\" data-run=\"r1\""), "{out}");
        assert!(out.contains("<a href=\"/runs/r2\"><rect class=\"bar failed\""));
        assert!(out.contains("<a href=\"/runs/r3\"><rect class=\"bar active\""));
        assert!(out.contains("<title>run r1</title></rect></a>"));
        assert!(out.contains("fill=\"#2e7d32\""));
        assert!(out.contains("fill=\"#c62828\""));
        // No duration: a grey stub, not the state's blue.
        assert!(!out.contains("#1565c0"));
        // Oldest left: r1's bar is at x 0, r3's at 2 × (10 + 4).
        assert!(out.contains("data-run=\"r1\" x=\"0.0\""));
        assert!(out.contains("data-run=\"r3\" x=\"28.0\""));
    }

    #[test]
    fn heights_scale_with_duration() {
        let bars = [
            bar("a", "complete", Some(2000)),
            bar("b", "complete", Some(500)),
            bar("c", "pending", None),
            bar("d", "complete", Some(1)),
        ];
        let out = chart(&bars).into_string();
        assert_eq!(heights(&out), ["60.0", "15.0", "2.0", "2.0"]);
        // Bottom-aligned: y + height is the chart's height.
        assert!(out.contains("y=\"45.0\" width=\"10.0\" height=\"15.0\""), "{out}");
    }

    #[test]
    fn odd_durations_do_not_panic() {
        let bars = [
            bar("a", "complete", Some(-5)),
            bar("b", "complete", Some(i64::MAX)),
            bar("c", "complete", Some(i64::MIN)),
            bar("d", "complete", Some(0)),
        ];
        let out = chart(&bars).into_string();
        assert_eq!(heights(&out), ["2.0", "60.0", "2.0", "2.0"]);
        let all_negative = [bar("a", "failed", Some(-1)), bar("b", "failed", Some(i64::MIN))];
        assert_eq!(heights(&chart(&all_negative).into_string()), ["2.0", "2.0"]);
    }

    #[test]
    fn at_most_the_newest_fifty() {
        let ids: Vec<String> = (0..60).map(|i| format!("r{i}")).collect();
        let bars: Vec<Bar<'_>> = ids.iter().map(|id| bar(id, "complete", Some(100))).collect();
        let out = chart(&bars).into_string();
        assert_eq!(out.matches("<rect").count(), MAX_BARS);
        assert!(!out.contains("href=\"/runs/r9\""));
        assert!(out.contains("<a href=\"/runs/r10\"><rect class=\"bar complete\" data-run=\"r10\" x=\"0.0\""));
        assert!(out.contains("href=\"/runs/r59\""));
        assert_eq!(chart(&[]).into_string(), "");
    }

    #[test]
    fn text_is_escaped_and_states_are_known_words() {
        let mut b = bar("r1", "\"><script>", Some(10));
        b.label = "<b>label</b>".to_string();
        b.href = "/runs/\"onmouseover=\"x".to_string();
        let out = chart(&[b]).into_string();
        assert!(out.contains("class=\"bar unknown\""));
        assert!(!out.contains("<script") && !out.contains("<b>"));
        assert!(out.contains("&lt;b&gt;label&lt;/b&gt;"));
        assert!(out.contains("href=\"/runs/&quot;onmouseover=&quot;x\""));
        assert_eq!(state_style("superseded"), ("superseded", "#9e9e9e"));
        assert_eq!(state_style("Complete"), UNKNOWN);
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = 1_700_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - 4_999, now), "just now");
        assert_eq!(relative(now + 4_999, now), "just now");
        assert_eq!(relative(now - 5_000, now), "5 s ago");
        assert_eq!(relative(now - 12_000, now), "12 s ago");
        assert_eq!(relative(now - 59_999, now), "59 s ago");
        assert_eq!(relative(now - 60_000, now), "1 min ago");
        assert_eq!(relative(now - 3 * 60_000 - 59_000, now), "3 min ago");
        assert_eq!(relative(now - 2 * 3_600_000 - 1, now), "2 h ago");
        assert_eq!(relative(now - 86_400_000, now), "1 day ago");
        assert_eq!(relative(now - 5 * 86_400_000, now), "5 days ago");
        assert_eq!(relative(now + 3 * 60_000, now), "in 3 min");
        assert_eq!(relative(now + 30_000, now), "in 30 s");
    }

    #[test]
    fn relative_takes_any_two_times() {
        for (ms, now) in
            [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (i64::MAX, i64::MAX), (i64::MIN, 0), (0, i64::MIN)]
        {
            let words = relative(ms, now);
            assert!(
                words.ends_with("days ago") || words.starts_with("in ") || words == "just now",
                "{words}"
            );
        }
        assert_eq!(relative(0, i64::MAX), format!("{} days ago", i64::MAX as u128 / 1000 / 86_400));
        assert_eq!(relative(i64::MAX, i64::MIN), format!("in {} days", u64::MAX as u128 / 1000 / 86_400));
    }
}
