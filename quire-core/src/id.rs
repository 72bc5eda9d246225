//! The names Quire gives things: repositories (`RepoName`), runs (`RunId`)
//! and jobs (`JobId`). Each is a validated newtype, so a value of one of
//! these types is always safe to use as a path component or in a URL. This
//! module is a leaf: it does no I/O and knows nothing of pipelines, the
//! database or HTTP; those layers parse into these types at their edges.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's id: non-empty, `[A-Za-z0-9_-]+`, at most [`JobId::MAX_LEN`]
/// bytes. Safe to use as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJobId {
    #[error("job id {0:?} may only contain letters, digits, `_` and `-`")]
    Characters(String),
    #[error("job id {start:?}… is {len} bytes long; at most {max} are allowed", max = JobId::MAX_LEN)]
    TooLong { start: String, len: usize },
}

impl JobId {
    /// Long enough for any sensible name, short enough that
    /// `jobs/<id>/sh-<n>.log` is a valid file name everywhere.
    pub const MAX_LEN: usize = 100;

    pub fn new(id: impl Into<String>) -> Result<JobId, InvalidJobId> {
        let id = id.into();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(InvalidJobId::Characters(id.chars().take(Self::MAX_LEN + 20).collect()));
        }
        if id.len() > Self::MAX_LEN {
            return Err(InvalidJobId::TooLong { start: id[..20].to_string(), len: id.len() });
        }
        Ok(JobId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        JobId::new(id)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A repository name: `name.git` or `group/name.git`, characters
/// `[A-Za-z0-9._-]`, no `..`, no hidden components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository name {name:?}: {reason}")]
pub struct InvalidRepoName {
    pub name: String,
    pub reason: &'static str,
}

impl FromStr for RepoName {
    type Err = InvalidRepoName;
    fn from_str(name: &str) -> Result<RepoName, InvalidRepoName> {
        let fail = |reason| Err(InvalidRepoName { name: name.chars().take(100).collect(), reason });
        if !name.ends_with(".git") {
            return fail("it must end in .git, e.g. foo.git");
        }
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() > 2 {
            return fail("at most one group level is allowed, e.g. group/foo.git");
        }
        for part in &parts {
            if part.is_empty() || part.starts_with('.') {
                return fail("components must be non-empty and must not start with a dot");
            }
            if !part.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return fail("only letters, digits, '.', '_' and '-' are allowed");
            }
        }
        if name.contains("..") {
            return fail("'..' is not allowed");
        }
        Ok(RepoName(name.to_string()))
    }
}

impl TryFrom<String> for RepoName {
    type Error = InvalidRepoName;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<RepoName> for String {
    fn from(name: RepoName) -> String {
        name.0
    }
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A run's id: a UUIDv7, so ids sort by creation time. Only the canonical
/// lower-case hyphenated spelling parses, so a run has one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(uuid::Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a run id (a UUID such as 0193a4b2-7c1e-7d3f-8a9b-0c1d2e3f4a5b)")]
pub struct InvalidRunId(pub String);

impl RunId {
    pub fn generate() -> RunId {
        RunId(uuid::Uuid::now_v7())
    }

    /// The first 13 characters: enough to tell runs apart on a page.
    pub fn short(&self) -> String {
        self.to_string()[..13].to_string()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RunId {
    type Err = InvalidRunId;
    fn from_str(s: &str) -> Result<RunId, InvalidRunId> {
        match uuid::Uuid::try_parse(s) {
            Ok(id) if s.len() == 36 && id.hyphenated().to_string() == s => Ok(RunId(id)),
            _ => Err(InvalidRunId(s.chars().take(64).collect())),
        }
    }
}

impl Serialize for RunId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_accept_the_documented_set() {
        for ok in ["build", "a", "A-9_z", "0", &"x".repeat(JobId::MAX_LEN)] {
            assert!(JobId::new(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "a/b", "quire/push", "a b", "é", "a.b", "../x", "a\0b", &"x".repeat(JobId::MAX_LEN + 1)]
        {
            assert!(JobId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repo_names_follow_the_rules() {
        for ok in ["foo.git", "group/foo.git", "a.b_c-d.git", "x.y.git"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "foo",
            "foo.git/",
            "/foo.git",
            "a/b/c.git",
            "../foo.git",
            "a/../b.git",
            "a..b.git",
            ".git",
            ".hidden.git",
            "g/.git",
            "sp ace.git",
            "é.git",
            "",
            "foo.git\n",
            "a//b.git",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn run_ids_round_trip_and_reject_other_spellings() {
        let id = RunId::generate();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
        for bad in ["", "x", "../etc", &id.to_string().to_uppercase(), &id.to_string().replace('-', "")] {
            assert!(bad.parse::<RunId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_serialize_as_plain_strings() {
        let repo: RepoName = "g/foo.git".parse().unwrap();
        assert_eq!(serde_json::to_string(&repo).unwrap(), r#""g/foo.git""#);
        assert!(serde_json::from_str::<RepoName>(r#""../x.git""#).is_err());
        let id = RunId::generate();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
    }
}
