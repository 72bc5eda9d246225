//! Local mode: push facts read from the workspace's git checkout (or given
//! with `--sha`/`--ref`), and secrets from `QUIRE_SECRET_<NAME>` variables.

use std::path::Path;
use std::process::Command;

use quire_core::push::{PushFacts, Trigger};
use quire_core::runtime::{SecretError, SecretSource};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "{} is not a git checkout, so the push facts cannot be read from it; \
         pass both --sha and --ref to run it anyway",
        .0
    )]
    NotACheckout(String),
    #[error("cannot read the checkout's HEAD commit in {0}: {1}")]
    NoHead(String, String),
}

/// The push facts for a local run: HEAD, its branch (or exact tag), with
/// `--sha` and `--ref` taking precedence.
pub fn push_facts(
    workspace: &Path,
    sha: Option<String>,
    ref_name: Option<String>,
    trigger: Trigger,
) -> Result<PushFacts, LocalError> {
    let repo =
        workspace.file_name().map_or_else(|| "workspace".to_string(), |n| n.to_string_lossy().into_owned());
    let pushed_at_ms = quire_core::clock::now_ms();
    let scheduled_at_ms = (trigger == Trigger::Schedule).then_some(pushed_at_ms);
    let facts = |sha: String, ref_name: String| PushFacts {
        repo: repo.clone(),
        sha,
        ref_name,
        previous_sha: None,
        pushed_at_ms,
        source: trigger.source(),
        scheduled_at_ms,
    };
    if let (Some(sha), Some(ref_name)) = (&sha, &ref_name) {
        return Ok(facts(sha.clone(), ref_name.clone()));
    }
    if git(workspace, &["rev-parse", "--is-inside-work-tree"]).as_deref() != Some("true") {
        return Err(LocalError::NotACheckout(workspace.display().to_string()));
    }
    let sha = match sha {
        Some(sha) => sha,
        None => git(workspace, &["rev-parse", "--verify", "HEAD"])
            .ok_or_else(|| LocalError::NoHead(workspace.display().to_string(), "no commits yet?".into()))?,
    };
    let ref_name = ref_name.unwrap_or_else(|| current_ref(workspace));
    Ok(facts(sha, ref_name))
}

/// `refs/heads/<branch>`, else `refs/tags/<tag>` when HEAD is exactly a
/// tag, else `HEAD` (detached).
fn current_ref(workspace: &Path) -> String {
    if let Some(branch) = git(workspace, &["symbolic-ref", "-q", "HEAD"]) {
        return branch;
    }
    if let Some(tag) = git(workspace, &["describe", "--exact-match", "--tags", "HEAD"]) {
        return format!("refs/tags/{tag}");
    }
    "HEAD".to_string()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Secrets from the environment: `deploy-token` is `QUIRE_SECRET_DEPLOY_TOKEN`.
pub struct EnvSecrets;

pub fn secret_variable(name: &str) -> String {
    let upper: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("QUIRE_SECRET_{upper}")
}

impl SecretSource for EnvSecrets {
    fn secret(&self, name: &str) -> Result<String, SecretError> {
        let variable = secret_variable(name);
        std::env::var(&variable).map_err(|_| SecretError::Undeclared {
            name: name.to_string(),
            hint: format!(" (locally, set the environment variable {variable})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_map_to_variables() {
        assert_eq!(secret_variable("deploy-token"), "QUIRE_SECRET_DEPLOY_TOKEN");
        assert_eq!(secret_variable("api.key"), "QUIRE_SECRET_API_KEY");
    }
}
