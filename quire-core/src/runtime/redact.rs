//! Secret redaction: every secret value a run has obtained is replaced by
//! `***` wherever the run writes text (logs, event `cmd`s, progress).

use std::cell::RefCell;

pub const MASK: &str = "***";

/// The secret values seen so far in a run.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: RefCell<Vec<String>>,
}

impl Redactor {
    /// Starts masking `value`. Empty values are ignored: masking them would
    /// mangle every string.
    pub fn add(&self, value: &str) {
        let mut secrets = self.secrets.borrow_mut();
        if !value.is_empty() && !secrets.iter().any(|s| s == value) {
            secrets.push(value.to_string());
            // Longest first, so a secret containing another is masked whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.borrow();
        let mut out = text.to_string();
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
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
}
