//! `quire-ci validate`: compiles and validates a pipeline and reports the
//! result in one of three formats. Never runs a job.

use std::path::Path;
use std::process::ExitCode;

use quire_core::diagnostic::Diagnostic;
use quire_core::pipeline::{LoadError, LuaLimits, Pipeline};
use quire_core::source::SourceFile;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Short,
    Json,
}

const VALID: u8 = 0;
const INVALID: u8 = 1;
const CANNOT_CHECK: u8 = 2;

pub fn run(workspace: &Path, format: Format, limits: LuaLimits) -> ExitCode {
    let status = match Pipeline::load(workspace, limits) {
        Ok(pipeline) => {
            report_valid(&pipeline, format);
            VALID
        }
        Err(LoadError::Invalid { file, diagnostics }) => {
            report_invalid(&file, &diagnostics, format);
            INVALID
        }
        Err(error) => {
            report_unreadable(&error, format);
            CANNOT_CHECK
        }
    };
    ExitCode::from(status)
}

fn report_valid(pipeline: &Pipeline, format: Format) {
    let ids: Vec<&str> = pipeline.jobs().iter().map(|j| j.id.as_str()).collect();
    match format {
        Format::Human => {
            let name = pipeline.source().display_name();
            match ids.len() {
                0 => println!("{name}: valid, no jobs defined (nothing will run)"),
                1 => println!("{name}: valid, 1 job: {}", ids[0]),
                n => println!("{name}: valid, {n} jobs: {}", ids.join(", ")),
            }
        }
        Format::Short => {}
        Format::Json => println!("{}", json!({ "valid": true, "jobs": ids, "diagnostics": [] })),
    }
}

fn report_invalid(file: &SourceFile, diagnostics: &[Diagnostic], format: Format) {
    match format {
        Format::Human => {
            for diagnostic in diagnostics {
                eprintln!("{:?}", diagnostic.report(file));
            }
            eprintln!("{}: {} error(s)", file.display_name(), diagnostics.len());
        }
        Format::Short => {
            for diagnostic in diagnostics {
                println!("{}", diagnostic.short());
            }
        }
        Format::Json => {
            let diagnostics: Vec<_> = diagnostics.iter().map(diagnostic_json).collect();
            println!("{}", json!({ "valid": false, "jobs": [], "diagnostics": diagnostics }));
        }
    }
}

fn report_unreadable(error: &LoadError, format: Format) {
    match format {
        Format::Json => {
            let diagnostic = diagnostic_json(&Diagnostic::error(error.to_string()));
            println!("{}", json!({ "valid": false, "jobs": [], "diagnostics": [diagnostic] }));
        }
        Format::Human | Format::Short => eprintln!("error: {error}"),
    }
}

fn diagnostic_json(d: &Diagnostic) -> serde_json::Value {
    json!({
        "severity": d.severity,
        "message": d.message,
        "file": d.location.as_ref().map(|l| &l.file),
        "line": d.location.as_ref().map(|l| l.line),
        "column": d.location.as_ref().map(|l| l.column),
    })
}
