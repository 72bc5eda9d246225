//! Diagnostics about a Fennel file (a pipeline or the server's config): what
//! is wrong and where. Owns the position type and the rendering to miette
//! reports and to editor-style one-liners; it does not decide what is an
//! error (that is `lua::compile`, `pipeline` and `pipeline::graph`).

use std::fmt;

use miette::{LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

use crate::source::SourceFile;

/// A position in a pipeline file. Lines and columns count from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl Location {
    pub fn new(file: impl Into<String>, line: u32, column: u32) -> Self {
        Location { file: file.into(), line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
}

/// One problem with a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub location: Option<Location>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, message: message.into(), location: None, help: None }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `path:line:col: error: message`, the format editors parse.
    pub fn short(&self) -> String {
        match &self.location {
            Some(loc) => format!("{loc}: error: {}", self.message),
            None => format!("error: {}", self.message),
        }
    }

    /// A miette report with the source snippet around the location.
    pub fn report(&self, source: &SourceFile) -> miette::Report {
        let span = self.location.as_ref().and_then(|loc| span_of(&source.text, loc.line, loc.column));
        let mut report = Report {
            message: self.message.clone(),
            help: self.help.clone(),
            label: span.map(|s| LabeledSpan::at(s, "here")),
            code: None,
        };
        if report.label.is_some() {
            report.code = Some(NamedSource::new(source.display_name(), source.text.clone()));
        }
        miette::Report::new(report)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// A byte span for a 1-based line and column: from the column to the end of
/// the token that starts there (or one byte, for a delimiter).
fn span_of(text: &str, line: u32, column: u32) -> Option<SourceSpan> {
    let line_start: usize =
        text.split_inclusive('\n').take(line.checked_sub(1)? as usize).map(str::len).sum();
    let line_text = text[line_start..].split('\n').next().unwrap_or_default();
    let col = (column.max(1) as usize - 1).min(line_text.len());
    let rest = &line_text[col..];
    let token = rest
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_whitespace() || "()[]{}".contains(*c))
        .map_or(rest.len(), |(i, _)| i);
    Some(SourceSpan::new((line_start + col).into(), token.max(1).min(rest.len().max(1))))
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Report {
    message: String,
    help: Option<String>,
    label: Option<LabeledSpan>,
    code: Option<NamedSource<String>>,
}

impl miette::Diagnostic for Report {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.code.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.label.clone().map(|l| Box::new(std::iter::once(l)) as Box<dyn Iterator<Item = _>>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_format_is_editor_friendly() {
        let d = Diagnostic::error("duplicate job id `a`").at(Location::new(".quire/ci.fnl", 3, 1));
        assert_eq!(d.short(), ".quire/ci.fnl:3:1: error: duplicate job id `a`");
    }

    #[test]
    fn spans_cover_the_token_at_the_position() {
        let text = "(local x 1)\n(ci.job :a/b [:quire/push] f)\n";
        let span = span_of(text, 2, 9).unwrap();
        assert_eq!(&text[span.offset()..span.offset() + span.len()], ":a/b");
        let span = span_of(text, 2, 1).unwrap();
        assert_eq!(&text[span.offset()..span.offset() + span.len()], "(ci.job");
    }

    #[test]
    fn spans_past_the_end_do_not_panic() {
        assert!(span_of("abc", 9, 9).is_some());
        assert!(span_of("", 1, 40).is_some());
        assert!(span_of("abc", 0, 1).is_none());
    }
}
