//! A pipeline's job graph as server-rendered inline SVG: jobs laid out left
//! to right by depth, an arrow from each input to its job, each job a box
//! coloured by its state that links to its section of the page
//! (`#job-{id}`). Sources (`quire/push`, `quire/schedule`, and any input
//! that names no job) are small pills in the first column, one per
//! distinct source. It owns the layout and the drawing; it does not own the
//! jobs, their order or their states (the caller passes them in), nor the
//! page around the graph. Whatever it is given (cycles, unknown inputs,
//! thousands of jobs) it draws at most [`MAX_NODES`] jobs, says how many it
//! left out, and does O(jobs + inputs) work.

use std::collections::{HashMap, HashSet};

use maud::{html, Markup, PreEscaped};

/// One job as the graph needs it.
pub struct Node<'a> {
    /// The job id: ASCII `[A-Za-z0-9_-]`, at most 100 bytes.
    pub id: &'a str,
    /// Job ids, or sources such as `quire/push`.
    pub inputs: &'a [String],
    /// `pending`, `active`, `complete`, `failed`, `skipped`, `aborted` or
    /// `not-run`; anything else is drawn as `not-run`.
    pub state: &'a str,
}

/// Jobs drawn at most; past it the graph says how many were left out.
pub const MAX_NODES: usize = 500;
/// Characters of a job id shown in its box, the `…` of a cut one included.
const JOB_LABEL: usize = 24;
/// Characters of a source shown in its pill.
const SOURCE_LABEL: usize = 18;

const NODE_W: usize = 180;
const NODE_H: usize = 30;
const PILL_W: usize = 140;
const PILL_H: usize = 20;
const COLUMN_GAP: usize = 60;
const ROW_GAP: usize = 14;
const MARGIN: usize = 10;
/// Room under the graph for the note on jobs left out.
const NOTE_H: usize = 24;

/// Each state with its fill, as the state badges on the page colour them.
const STATES: [(&str, &str); 7] = [
    ("complete", "#2e7d32"),
    ("failed", "#c62828"),
    ("active", "#1565c0"),
    ("pending", "#8d6e63"),
    ("skipped", "#9e9e9e"),
    ("aborted", "#6d4c41"),
    ("not-run", "#bdbdbd"),
];
const NOT_RUN: (&str, &str) = ("not-run", "#bdbdbd");
/// Ink for a label on a light fill; white on the others.
const DARK_INK: &str = "#1d1d1f";
const EDGE_COLOUR: &str = "#9e9e9e";

/// The arrowhead every edge ends in.
const ARROW: &str = r##"<marker id="quire-graph-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#9e9e9e"/></marker>"##;

/// What an input refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// A drawn job, by index.
    Job(usize),
    /// A source pill, by index.
    Source(usize),
    /// A job past [`MAX_NODES`]: not drawn, so no edge.
    Hidden,
}

/// The state's name as drawn (unknown ones are `not-run`) and its fill.
/// The name is this module's own, never the caller's text.
fn state_style(state: &str) -> (&'static str, &'static str) {
    STATES.iter().find(|(name, _)| *name == state).copied().unwrap_or(NOT_RUN)
}

/// Text as a box shows it: cut to `max` characters, the last being `…`,
/// when longer (the whole text is in the title).
fn label(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Where everything goes.
struct Layout<'a> {
    /// Each drawn job's inputs, in order.
    inputs: Vec<Vec<Input>>,
    /// The distinct sources, in the order first used.
    sources: Vec<&'a str>,
    /// Each job's column (1 and up; sources are column 0).
    depth: Vec<usize>,
    /// Each job's row within its column.
    row: Vec<usize>,
    /// Column 0 when there are sources; with none, the jobs start at the
    /// left edge.
    first_column: usize,
    columns: usize,
    rows: usize,
}

impl<'a> Layout<'a> {
    /// `drawn` are the jobs drawn, `hidden` those past [`MAX_NODES`].
    fn new(drawn: &[Node<'a>], hidden: &[Node<'a>]) -> Layout<'a> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, node) in drawn.iter().enumerate() {
            index.entry(node.id).or_insert(i);
        }
        let hidden: HashSet<&str> = hidden.iter().map(|node| node.id).collect();
        let mut sources: Vec<&'a str> = Vec::new();
        let mut source_index: HashMap<&'a str, usize> = HashMap::new();
        let mut inputs = Vec::with_capacity(drawn.len());
        for node in drawn {
            let mut resolved = Vec::with_capacity(node.inputs.len());
            for input in node.inputs {
                let name = input.as_str();
                resolved.push(if let Some(&job) = index.get(name) {
                    Input::Job(job)
                } else if hidden.contains(name) {
                    Input::Hidden
                } else {
                    let next = sources.len();
                    let source = *source_index.entry(name).or_insert(next);
                    if source == next {
                        sources.push(name);
                    }
                    Input::Source(source)
                });
            }
            inputs.push(resolved);
        }
        let depth = depths(&inputs);
        let deepest = depth.iter().copied().max().unwrap_or(1);
        let mut per_column = vec![0usize; deepest + 1];
        let mut row = Vec::with_capacity(depth.len());
        for &column in &depth {
            row.push(per_column[column]);
            per_column[column] += 1;
        }
        let first_column = if sources.is_empty() { 1 } else { 0 };
        let rows = per_column.iter().copied().chain([sources.len(), 1]).max().unwrap_or(1);
        Layout { inputs, sources, depth, row, first_column, columns: deepest + 1 - first_column, rows }
    }

    fn column_x(&self, column: usize) -> usize {
        MARGIN + column.saturating_sub(self.first_column) * (NODE_W + COLUMN_GAP)
    }

    fn row_y(row: usize) -> usize {
        MARGIN + row * (NODE_H + ROW_GAP)
    }

    /// The top left corner of job `i`'s box.
    fn job_at(&self, i: usize) -> (usize, usize) {
        (self.column_x(self.depth[i]), Self::row_y(self.row[i]))
    }

    /// The top left corner of source `k`'s pill, centred on its row.
    fn source_at(&self, k: usize) -> (usize, usize) {
        (self.column_x(0), Self::row_y(k) + (NODE_H - PILL_H) / 2)
    }

    /// Where an edge from this input leaves: the middle of its right side.
    fn edge_start(&self, input: Input) -> Option<(usize, usize)> {
        match input {
            Input::Job(j) => {
                let (x, y) = self.job_at(j);
                Some((x + NODE_W, y + NODE_H / 2))
            }
            Input::Source(k) => {
                let (x, y) = self.source_at(k);
                Some((x + PILL_W, y + PILL_H / 2))
            }
            Input::Hidden => None,
        }
    }

    /// The bottom of the drawn boxes.
    fn content_bottom(&self) -> usize {
        MARGIN + self.rows * NODE_H + (self.rows - 1) * ROW_GAP
    }

    fn width(&self) -> usize {
        2 * MARGIN + self.columns * NODE_W + (self.columns - 1) * COLUMN_GAP
    }

    fn height(&self, with_note: bool) -> usize {
        let note = if with_note { NOTE_H } else { 0 };
        self.content_bottom() + note + MARGIN
    }
}

/// Each job's depth: 1 + the deepest of its job inputs (sources are 0).
/// Walked depth first without recursion; an input met again while its own
/// inputs are still being walked closes a cycle, and that one edge is left
/// out of the depth, so every job gets one and the walk ends. Each job and
/// each input is looked at a bounded number of times: O(jobs + inputs).
/// Depths are capped at the number of jobs all the same.
fn depths(inputs: &[Vec<Input>]) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Unseen,
        Open,
        Done(usize),
    }
    let n = inputs.len();
    let mut marks = vec![Mark::Unseen; n];
    for root in 0..n {
        if marks[root] != Mark::Unseen {
            continue;
        }
        marks[root] = Mark::Open;
        // Each entry: a job, and the position of its next input to walk.
        let mut stack = vec![(root, 0usize)];
        while let Some((job, next)) = stack.last_mut() {
            let job = *job;
            match inputs[job].get(*next) {
                Some(&Input::Job(input)) => {
                    *next += 1;
                    if marks[input] == Mark::Unseen {
                        marks[input] = Mark::Open;
                        stack.push((input, 0));
                    }
                }
                Some(_) => *next += 1,
                None => {
                    let deepest = inputs[job]
                        .iter()
                        .filter_map(|input| match input {
                            Input::Job(i) => match marks[*i] {
                                Mark::Done(depth) => Some(depth),
                                _ => None,
                            },
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                    marks[job] = Mark::Done((deepest + 1).min(n));
                    stack.pop();
                }
            }
        }
    }
    marks
        .iter()
        .map(|mark| match mark {
            Mark::Done(depth) => *depth,
            _ => 1,
        })
        .collect()
}

/// The job graph, or nothing when there are no jobs.
pub fn render(nodes: &[Node<'_>]) -> Markup {
    let (drawn, hidden) = nodes.split_at(nodes.len().min(MAX_NODES));
    if drawn.is_empty() {
        return html! {};
    }
    let layout = Layout::new(drawn, hidden);
    let (width, height) = (layout.width(), layout.height(!hidden.is_empty()));
    html! {
        svg class="graph" role="img" aria-label="job graph" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) } font-family="ui-monospace, monospace" font-size="12" {
            defs { (PreEscaped(ARROW)) }
            @for (i, node) in drawn.iter().enumerate() { (edges(&layout, i, node)) }
            @for (k, source) in layout.sources.iter().enumerate() { (source_pill(&layout, k, source)) }
            @for (i, node) in drawn.iter().enumerate() { (job_box(&layout, i, node)) }
            @if !hidden.is_empty() {
                text.left-out x=(MARGIN) y=(layout.content_bottom() + 16) fill=(DARK_INK) {
                    (hidden.len()) " more jobs not drawn (the graph shows the first " (MAX_NODES) ")"
                }
            }
        }
    }
}

/// The edges into job `i`, one per input that is drawn.
fn edges(layout: &Layout<'_>, i: usize, node: &Node<'_>) -> Markup {
    let (x, y) = layout.job_at(i);
    let end = (x, y + NODE_H / 2);
    html! {
        @for (input, name) in layout.inputs[i].iter().zip(node.inputs) {
            @if let Some(start) = layout.edge_start(*input) {
                path class="edge" data-from=(name) data-to=(node.id) d=(curve(start, end)) fill="none"
                    stroke=(EDGE_COLOUR) stroke-width="1.5" marker-end="url(#quire-graph-arrow)" {}
            }
        }
    }
}

/// A curve from one box's right side to another's left, leaving and
/// arriving level.
fn curve((x1, y1): (usize, usize), (x2, y2): (usize, usize)) -> String {
    let mid = (x1 + x2) / 2;
    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
}

fn source_pill(layout: &Layout<'_>, k: usize, source: &str) -> Markup {
    let (x, y) = layout.source_at(k);
    html! {
        g class="source" {
            title { (source) }
            rect x=(x) y=(y) width=(PILL_W) height=(PILL_H) rx=(PILL_H / 2) fill="#eeeeee" stroke=(EDGE_COLOUR) {}
            text x=(x + 10) y=(y + PILL_H / 2) dominant-baseline="central" fill=(DARK_INK) { (label(source, SOURCE_LABEL)) }
        }
    }
}

fn job_box(layout: &Layout<'_>, i: usize, node: &Node<'_>) -> Markup {
    let (x, y) = layout.job_at(i);
    let (state, fill) = state_style(node.state);
    let ink = if matches!(state, "not-run" | "skipped") { DARK_INK } else { "#ffffff" };
    html! {
        g class={ "node " (state) } id={ "graph-" (node.id) } {
            title { (node.id) ": " (state) }
            a href={ "#job-" (node.id) } {
                rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="4" fill=(fill) {}
                text x=(x + 8) y=(y + NODE_H / 2) dominant-baseline="central" fill=(ink) { (label(node.id, JOB_LABEL)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Spec = (&'static str, Vec<String>, &'static str);

    fn spec(id: &'static str, inputs: &[&str], state: &'static str) -> Spec {
        (id, inputs.iter().map(|s| s.to_string()).collect(), state)
    }

    fn nodes(specs: &[Spec]) -> Vec<Node<'_>> {
        specs.iter().map(|(id, inputs, state)| Node { id, inputs: inputs.as_slice(), state }).collect()
    }

    fn draw(specs: &[Spec]) -> String {
        render(&nodes(specs)).into_string()
    }

    #[test]
    fn a_node_per_job_and_an_edge_per_input() {
        let specs = [
            spec("build", &["quire/push"], "complete"),
            spec("test", &["build"], "failed"),
            spec("deploy", &["build", "test", "quire/push"], "pending"),
            spec("nightly", &["quire/schedule"], "not-run"),
        ];
        let out = draw(&specs);
        assert_eq!(out.matches("class=\"node ").count(), 4, "{out}");
        assert_eq!(out.matches("class=\"edge\"").count(), 6, "{out}");
        // One pill per distinct source.
        assert_eq!(out.matches("class=\"source\"").count(), 2, "{out}");
        assert!(out.contains("class=\"graph\""));
        assert!(out.contains("role=\"img\""));
        assert!(out.contains("aria-label=\"job graph\""));
        assert!(out.contains("viewBox=\"0 0 "));
        assert!(out.contains(
            "<g class=\"node failed\" id=\"graph-test\"><title>test: failed</title><a href=\"#job-test\">"
        ));
        assert!(out.contains("data-from=\"build\" data-to=\"test\""));
        assert!(out.contains("data-from=\"quire/push\" data-to=\"deploy\""));
        assert!(out.contains("fill=\"#2e7d32\""));
        assert!(out.contains("fill=\"#c62828\""));
    }

    #[test]
    fn jobs_are_layered_by_depth() {
        let specs = [
            spec("a", &["quire/push"], "complete"),
            spec("b", &["a"], "complete"),
            spec("c", &["a", "b"], "complete"),
        ];
        let inputs = Layout::new(&nodes(&specs), &[]).inputs;
        assert_eq!(depths(&inputs), vec![1, 2, 3]);
        let out = draw(&specs);
        // Sources are column 0, so `c` at depth 3 is three columns in.
        let x = MARGIN + 3 * (NODE_W + COLUMN_GAP);
        assert!(out.contains(&format!("<a href=\"#job-c\"><rect x=\"{x}\" y=\"{MARGIN}\"")), "{out}");
    }

    #[test]
    fn without_sources_jobs_start_at_the_left() {
        let out = draw(&[spec("only", &[], "active")]);
        assert!(out.contains(&format!("<rect x=\"{MARGIN}\" y=\"{MARGIN}\"")), "{out}");
        assert!(!out.contains("class=\"source\""));
        assert!(out.contains(&format!("width=\"{}\"", 2 * MARGIN + NODE_W)));
    }

    #[test]
    fn a_cycle_terminates() {
        let specs =
            [spec("a", &["b"], "pending"), spec("b", &["a"], "pending"), spec("c", &["c", "a"], "pending")];
        let out = draw(&specs);
        assert_eq!(out.matches("class=\"node ").count(), 3);
        assert_eq!(out.matches("class=\"edge\"").count(), 4);
        let inputs = Layout::new(&nodes(&specs), &[]).inputs;
        assert!(depths(&inputs).iter().all(|&d| (1..=3).contains(&d)));
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let specs: Vec<Spec> = (0..MAX_NODES)
            .map(|i| {
                let id: &'static str = Box::leak(format!("j{i}").into_boxed_str());
                let inputs = if i == 0 { vec![] } else { vec![format!("j{}", i - 1)] };
                (id, inputs, "complete")
            })
            .rev()
            .collect();
        let inputs = Layout::new(&nodes(&specs), &[]).inputs;
        let depth = depths(&inputs);
        assert_eq!(depth.iter().max(), Some(&MAX_NODES));
    }

    #[test]
    fn an_unknown_input_becomes_a_source_pill() {
        let out = draw(&[spec("a", &["ghost"], "complete")]);
        assert_eq!(out.matches("class=\"source\"").count(), 1);
        assert!(out.contains("<title>ghost</title>"));
        assert!(out.contains("data-from=\"ghost\" data-to=\"a\""));
    }

    #[test]
    fn unknown_states_are_not_run_and_text_is_escaped() {
        let out = draw(&[spec("a", &["quire/<push>\""], "\"><script>x</script>")]);
        assert!(out.contains("class=\"node not-run\""));
        assert!(out.contains("<title>a: not-run</title>"));
        assert!(!out.contains("<script"));
        assert!(out.contains("quire/&lt;push&gt;&quot;"));
        assert!(!out.contains("<push>"));
    }

    #[test]
    fn long_ids_are_cut_with_the_whole_id_in_the_title() {
        let id = "a_very_long_job_identifier_indeed";
        let out = draw(&[spec(id, &[], "complete")]);
        assert!(out.contains(&format!("<title>{id}: complete</title>")));
        assert!(out.contains(">a_very_long_job_identif…</text>"), "{out}");
        assert_eq!(label("short", JOB_LABEL), "short");
        assert_eq!(label(&"x".repeat(24), JOB_LABEL), "x".repeat(24));
        assert_eq!(label(&"x".repeat(25), JOB_LABEL).chars().count(), 24);
    }

    #[test]
    fn at_most_max_nodes_are_drawn() {
        let specs: Vec<Spec> = (0..MAX_NODES + 20)
            .map(|i| {
                let id: &'static str = Box::leak(format!("j{i}").into_boxed_str());
                (id, vec![format!("j{}", MAX_NODES + 19 - i)], "complete")
            })
            .collect();
        let out = draw(&specs);
        assert_eq!(out.matches("class=\"node ").count(), MAX_NODES);
        assert!(out.contains("20 more jobs not drawn"));
        // Inputs from jobs left out are neither edges nor pills.
        assert!(!out.contains("class=\"source\""));
        assert_eq!(out.matches("class=\"edge\"").count(), MAX_NODES - 20);
    }

    #[test]
    fn no_jobs_no_graph() {
        assert_eq!(draw(&[]), "");
    }
}
