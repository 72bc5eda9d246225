//! The facts about what a run is for: what the `:quire/push` and
//! `:quire/schedule` sources hand to jobs, which of them started the run,
//! and what the server's bootstrap endpoint sends to `quire-ci` (SPEC §4.2,
//! §6.5, §11). Where the facts come from (a local git checkout or the
//! server) is the caller's business.

use serde::{Deserialize, Serialize};

use crate::pipeline::Source;

/// One updated ref, and what started its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFacts {
    /// The repository, e.g. `foo.git` (the checkout's directory name locally).
    pub repo: String,
    pub sha: String,
    /// The full ref name, e.g. `refs/heads/main`.
    pub ref_name: String,
    /// The ref's previous commit; `None` for a new ref.
    pub previous_sha: Option<String>,
    pub pushed_at_ms: i64,
    /// The source whose jobs run.
    pub source: Source,
    /// When the schedule fired, for a scheduled run.
    pub scheduled_at_ms: Option<i64>,
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

impl PushFacts {
    /// The outputs of the `:quire/schedule` source as jobs see them; `None`
    /// in a run no schedule started.
    pub fn schedule_outputs(&self) -> Option<serde_json::Value> {
        let at = self.scheduled_at_ms.filter(|_| self.source == Source::Schedule)?;
        let scheduled_at = jiff::Timestamp::from_millisecond(at).map(|t| t.to_string()).unwrap_or_default();
        Some(serde_json::json!({
            "sha": self.sha,
            "ref": self.ref_name,
            "repo": self.repo,
            "scheduled-at": scheduled_at,
        }))
    }
}

/// What started a run, as the server records it (`runs.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    Push,
    Schedule,
    /// `quire ci retrigger`: behaves like a push.
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Push => "push",
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        [Trigger::Push, Trigger::Schedule, Trigger::Manual].into_iter().find(|t| t.as_str() == s)
    }

    pub fn is_scheduled(self) -> bool {
        self == Trigger::Schedule
    }

    /// The source whose jobs run.
    pub fn source(self) -> Source {
        match self {
            Trigger::Schedule => Source::Schedule,
            Trigger::Push | Trigger::Manual => Source::Push,
        }
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
    /// What started the run; absent means a push (the first release's
    /// servers send no trigger).
    #[serde(default, skip_serializing_if = "is_push")]
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at_ms: Option<i64>,
}

fn is_push(trigger: &Trigger) -> bool {
    *trigger == Trigger::Push
}

impl Bootstrap {
    pub fn push_facts(&self) -> PushFacts {
        PushFacts {
            repo: self.repo.clone(),
            sha: self.meta.sha.clone(),
            ref_name: self.meta.ref_name.clone(),
            previous_sha: self.meta.previous_sha.clone(),
            pushed_at_ms: self.meta.pushed_at_ms,
            source: self.meta.trigger.source(),
            scheduled_at_ms: self.meta.scheduled_at_ms,
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
            source: Source::Push,
            scheduled_at_ms: None,
        };
        assert_eq!((facts.branch(), facts.tag()), (Some("main"), None));
        assert_eq!(facts.schedule_outputs(), None, "a push run has no schedule facts");
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
        assert_eq!(bootstrap.push_facts().source, Source::Push);
    }

    #[test]
    fn a_scheduled_bootstrap_starts_the_schedule_source() {
        let body = r#"{"run_id":"r1","repo":"foo.git","meta":{"sha":"abc","ref":"refs/heads/main","pushed_at_ms":5,"previous_sha":null,"trigger":"schedule","scheduled_at_ms":60000}}"#;
        let bootstrap: Bootstrap = serde_json::from_str(body).unwrap();
        assert_eq!(serde_json::to_string(&bootstrap).unwrap(), body);
        let facts = bootstrap.push_facts();
        assert_eq!(facts.source, Source::Schedule);
        let outputs = facts.schedule_outputs().unwrap();
        assert_eq!(outputs["scheduled-at"], "1970-01-01T00:01:00Z");
        assert_eq!(outputs["repo"], "foo.git");
    }
}
