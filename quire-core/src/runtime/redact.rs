//! Secret redaction: every secret value a run has obtained is replaced by
//! `***` in everything that leaves quire-ci: CRI logs (before long lines
//! are cut into chunks, see `cri::Mask`), event `cmd`s, `job.log`, Lua's
//! `print`, failure reasons and progress. Shared by all jobs of a run, so
//! a secret one job fetched is masked in every job's output.

use std::sync::Mutex;

use crate::cri::Mask;

pub const MASK: &str = "***";

/// Lines of a multi-line secret shorter than this are not masked on their
/// own: masking `{` or `a` everywhere would mangle every log.
const MIN_LINE_SECRET: usize = 4;

/// The secret values seen so far in a run, longest first, so that a
/// secret containing another is masked whole.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Mutex<Vec<String>>,
}

impl Redactor {
    /// Starts masking `value`, and each line of it on its own. Empty
    /// values are ignored: masking them would mangle every string.
    pub fn add(&self, value: &str) {
        let mut secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let lines = value.lines().map(|l| l.trim_end_matches('\r')).filter(|l| l.len() >= MIN_LINE_SECRET);
        for candidate in std::iter::once(value).chain(lines) {
            if !candidate.is_empty() && !secrets.iter().any(|s| s == candidate) {
                secrets.push(candidate.to_string());
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

impl Mask for Redactor {
    fn mask(&self, text: &str) -> String {
        self.redact(text)
    }

    fn spans(&self, raw: &[u8]) -> Vec<(usize, usize)> {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        let mut spans = Vec::new();
        for secret in secrets.iter().map(String::as_bytes) {
            let found = raw.windows(secret.len()).enumerate().filter(|(_, window)| *window == secret);
            spans.extend(found.map(|(start, _)| (start, start + secret.len())));
        }
        spans
    }

    fn longest(&self) -> usize {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner()).first().map_or(0, String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_known_secret() {
        let r = Redactor::default();
        assert_eq!(r.redact("nothing yet"), "nothing yet");
        r.add("s3cret");
        r.add("s3cret-long");
        r.add("");
        assert_eq!(r.redact("a s3cret-long b s3cret c"), "a *** b *** c");
        assert_eq!(r.redact("plain"), "plain");
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked_on_its_own() {
        let r = Redactor::default();
        r.add("-----BEGIN KEY-----\r\nAAAAB3NzaC1yc2E\n}\n-----END KEY-----\n");
        assert_eq!(r.redact("line: AAAAB3NzaC1yc2E"), "line: ***");
        assert_eq!(r.redact("-----END KEY-----"), "***");
        assert_eq!(r.redact("{ a }"), "{ a }", "short lines are not masked alone");
        assert_eq!(r.spans(b"x AAAAB3NzaC1yc2E y"), [(2, 17)]);
    }
}
