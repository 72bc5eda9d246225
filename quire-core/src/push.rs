//! The facts about a push that a run is for: what the `:quire/push` source
//! hands to jobs, and what the server's bootstrap endpoint sends to
//! `quire-ci` (SPEC §4.2, §6.5). Where the facts come from (a local git
//! checkout or the server) is the caller's business.

use serde::{Deserialize, Serialize};

/// One updated ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFacts {
    /// The repository, e.g. `foo.git` (the checkout's directory name locally).
    pub repo: String,
    pub sha: String,
    /// The full ref name, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The ref's previous commit; `None` for a new ref.
    pub previous_sha: Option<String>,
    pub pushed_at_ms: i64,
}

impl PushFacts {
    /// `main` for `refs/heads/main`.
    pub fn branch(&self) -> Option<&str> {
        self.ref_name.strip_prefix("refs/heads/")
    }

    /// `v1.0` for `refs/tags/v1.0`.
    pub fn tag(&self) -> Option<&str> {
        self.ref_name.strip_prefix("refs/tags/")
    }

    /// The outputs of the `:quire/push` source as jobs see them.
    pub fn outputs(&self) -> serde_json::Value {
        let pushed_at =
            jiff::Timestamp::from_millisecond(self.pushed_at_ms).map(|t| t.to_string()).unwrap_or_default();
        serde_json::json!({
            "sha": self.sha,
            "ref": self.ref_name,
            "branch": self.branch(),
            "tag": self.tag(),
            "previous-sha": self.previous_sha,
            "repo": self.repo,
            "pushed-at": pushed_at,
        })
    }
}

/// `GET /api/run/bootstrap`'s body: the run and the push it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub run_id: String,
    pub repo: String,
    pub meta: BootstrapMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapMeta {
    pub sha: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub pushed_at_ms: i64,
    pub previous_sha: Option<String>,
}

impl Bootstrap {
    pub fn push_facts(&self) -> PushFacts {
        PushFacts {
            repo: self.repo.clone(),
            sha: self.meta.sha.clone(),
            ref_name: self.meta.ref_name.clone(),
            previous_sha: self.meta.previous_sha.clone(),
            pushed_at_ms: self.meta.pushed_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_and_tag_come_from_the_ref() {
        let mut facts = PushFacts {
            repo: "foo.git".into(),
            sha: "abc".into(),
            ref_name: "refs/heads/main".into(),
            previous_sha: None,
            pushed_at_ms: 0,
        };
        assert_eq!((facts.branch(), facts.tag()), (Some("main"), None));
        facts.ref_name = "refs/tags/v1".into();
        assert_eq!((facts.branch(), facts.tag()), (None, Some("v1")));
        let out = facts.outputs();
        assert_eq!(out["tag"], "v1");
        assert_eq!(out["branch"], serde_json::Value::Null);
        assert_eq!(out["pushed-at"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn bootstrap_body_has_the_spec_shape() {
        let body = r#"{"run_id":"r1","repo":"foo.git","meta":{"sha":"abc","ref":"refs/heads/main","pushed_at_ms":5,"previous_sha":null}}"#;
        let bootstrap: Bootstrap = serde_json::from_str(body).unwrap();
        assert_eq!(serde_json::to_string(&bootstrap).unwrap(), body);
        assert_eq!(bootstrap.push_facts().ref_name, "refs/heads/main");
    }
}
