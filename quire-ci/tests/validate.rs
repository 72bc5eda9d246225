//! `quire-ci validate` driven as an editor or a user would: the real binary
//! on fixture workspaces, checking output formats and exit statuses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn validate(workspace: &Path, format: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quire-ci"))
        .args(["validate", "--format", format, "--workspace"])
        .arg(workspace)
        .output()
        .expect("quire-ci runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The `short` lines for an invalid fixture, with the fixture path made
/// relative so the expectations read like an editor's error list.
fn short_errors(name: &str) -> Vec<String> {
    let out = validate(&fixture(name), "short");
    assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
    let prefix = format!("{}/", fixture(name).display());
    stdout(&out).lines().map(|l| l.replacen(&prefix, "", 1)).collect()
}

#[test]
fn valid_pipeline_summarises_its_jobs() {
    let out = validate(&fixture("valid"), "human");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).ends_with("ci.fnl: valid, 3 jobs: build, test, lint\n"), "{}", stdout(&out));
}

#[test]
fn valid_pipeline_in_short_format_prints_nothing() {
    let out = validate(&fixture("valid"), "short");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_valid_pipeline_as_json_lists_its_jobs() {
    let out = validate(&fixture("valid"), "json");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "{\"valid\":true,\"jobs\":[\"build\",\"test\",\"lint\"],\"diagnostics\":[]}\n");
}

#[test]
fn a_job_destructuring_its_runtime_table_is_valid() {
    let out = validate(&fixture("destructured"), "json");
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["jobs"], serde_json::json!(["only"]));
}

#[test]
fn a_pipeline_without_jobs_is_valid() {
    let out = validate(&fixture("empty"), "human");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("valid, no jobs defined"), "{}", stdout(&out));
}

#[test]
fn syntax_error_has_fennels_position() {
    assert_eq!(
        short_errors("syntax-error"),
        [".quire/ci.fnl:5:10: error: Compile error: expected even number of name/value bindings"]
    );
    assert_eq!(
        short_errors("unbalanced"),
        [".quire/ci.fnl:6:1: error: Parse error: expected closing delimiter )"]
    );
}

#[test]
fn rule_bad_id_is_an_error_at_the_job_call() {
    assert_eq!(
        short_errors("bad-id"),
        [".quire/ci.fnl:5:3: error: job `deploy/prod`: job id \"deploy/prod\" may only contain letters, digits, `_` and `-`"]
    );
}

#[test]
fn rule_duplicate_id_points_at_the_second_declaration() {
    assert_eq!(
        short_errors("duplicate-id"),
        [".quire/ci.fnl:5:1: error: duplicate job id `build` (first defined on line 3)"]
    );
}

#[test]
fn rule_empty_inputs_is_an_error() {
    assert_eq!(short_errors("empty-inputs"), [".quire/ci.fnl:3:1: error: job `build` has no inputs"]);
}

#[test]
fn rule_unknown_input_and_source() {
    assert_eq!(
        short_errors("unknown-input"),
        [
            ".quire/ci.fnl:4:1: error: job `test` has unknown input `biuld`: no job in this pipeline has that id",
            ".quire/ci.fnl:5:1: error: job `deploy` has unknown source `quire/tag`: the sources are `quire/push` and `quire/schedule`",
        ]
    );
}

#[test]
fn rule_cycle_lists_the_cycle() {
    assert_eq!(
        short_errors("cycle"),
        [".quire/ci.fnl:3:1: error: job `a` is part of a cycle: a -> c -> b -> a"]
    );
}

#[test]
fn rule_unreachable_job_is_an_error() {
    assert_eq!(
        short_errors("unreachable"),
        [
            ".quire/ci.fnl:4:1: error: job `orphan-a` is part of a cycle: orphan-a -> orphan-b -> orphan-a",
            ".quire/ci.fnl:6:1: error: job `stranded` can never run: none of its inputs leads to a source",
        ]
    );
}

#[test]
fn an_error_at_top_level_names_its_line() {
    let errors = short_errors("top-level-error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(".quire/ci.fnl:4:1: error: ")
            && errors[0].ends_with("refusing to declare more jobs"),
        "{errors:?}"
    );
}

#[test]
fn requiring_a_file_is_refused() {
    let errors = short_errors("require-file");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(".quire/ci.fnl:2:"), "{errors:?}");
    assert!(errors[0].contains("module 'helpers' is not available"), "{errors:?}");
}

#[test]
fn human_format_shows_the_source_snippet() {
    let out = validate(&fixture("duplicate-id"), "human");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("duplicate job id `build`"), "{err}");
    assert!(err.contains("(ci.job :build [:quire/push] (fn [] nil))"), "snippet missing: {err}");
    assert!(err.contains(".quire/ci.fnl:5:1"), "{err}");
}

#[test]
fn json_lists_every_diagnostic_with_position() {
    let out = validate(&fixture("unknown-input"), "json");
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["valid"], false);
    let diagnostics = doc["diagnostics"].as_array().unwrap();
    assert_eq!(diagnostics.len(), 2);
    assert_eq!(diagnostics[0]["severity"], "error");
    assert_eq!(diagnostics[0]["line"], 4);
    assert_eq!(diagnostics[0]["column"], 1);
    assert!(diagnostics[0]["file"].as_str().unwrap().ends_with(".quire/ci.fnl"));
    assert!(diagnostics[0]["message"].as_str().unwrap().contains("`biuld`"));
}

#[test]
fn missing_pipeline_is_exit_2_in_every_format() {
    let empty = tempfile::tempdir().unwrap();
    for format in ["human", "short", "json"] {
        let out = validate(empty.path(), format);
        assert_eq!(out.status.code(), Some(2), "{format}");
    }
    let out = validate(empty.path(), "human");
    assert!(stderr(&out).contains("no pipeline at"), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&validate(empty.path(), "json"))).unwrap();
    assert_eq!(doc["valid"], false);
    assert!(doc["diagnostics"][0]["message"].as_str().unwrap().contains(".quire/ci.fnl"));
}

#[test]
fn bad_usage_is_exit_2() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_quire-ci")).args(["validate", "--format", "xml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn top_level_code_cannot_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("touched");
    let cases = [
        ("(io.open \"x\" \"w\")", "unknown identifier: io"),
        ("(debug.getinfo 1)", "unknown identifier: debug"),
        ("(dofile \"x.lua\")", "unknown identifier: dofile"),
        ("(loadfile \"x.lua\")", "unknown identifier: loadfile"),
        (&format!("(os.execute \"touch {}\")", marker.display()), "execute"),
        ("((load \"\\27Lua\"))", "attempt to call a nil value"),
        ("(require :fennel)", "module 'fennel' is not available"),
    ];
    for (code, expected) in cases {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join(".quire")).unwrap();
        std::fs::write(ws.path().join(".quire/ci.fnl"), format!("(local ci (require :quire.ci))\n{code}\n"))
            .unwrap();
        let out = validate(ws.path(), "short");
        assert_eq!(out.status.code(), Some(1), "{code} should fail");
        assert!(stdout(&out).contains(expected), "{code}: {}", stdout(&out));
        assert!(stdout(&out).contains("ci.fnl:2:"), "{code}: {}", stdout(&out));
    }
    assert!(!marker.exists(), "os.execute must not exist");
}

#[test]
fn this_repositorys_own_pipeline_is_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = validate(repo, "human");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
