//! Source text and the name it is shown under: what diagnostics point into.
//! A leaf: reading files is the caller's business (the pipeline loader, the
//! server's config loader), so this module does no I/O.

/// A Fennel file's text and its display name (usually a path relative to
/// where the user stands, such as `.quire/ci.fnl`).
#[derive(Debug, Clone)]
pub struct SourceFile {
    display_name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(display_name: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile { display_name: display_name.into(), text: text.into() }
    }

    /// Shows the file under another name, e.g. relative to its workspace.
    pub fn with_display_name(mut self, name: impl Into<String>) -> Self {
        self.display_name = name.into();
        self
    }

    /// The path as diagnostics show it.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }
}
