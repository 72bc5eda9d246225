//! A git checkout holding a pipeline, for tests that run `quire-ci` on
//! one. Shared by the quire-ci test suites (included with `#[path]`),
//! which is why it is not a target of its own.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A git checkout with a pipeline, committed on branch `main`.
pub struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    pub fn new(pipeline: &str) -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".quire")).unwrap();
        std::fs::write(dir.path().join(".quire/ci.fnl"), pipeline).unwrap();
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["config", "user.email", "t@example.com"],
            &["config", "user.name", "T"],
            &["add", "-A"],
            &["commit", "-q", "-m", "pipeline"],
        ] {
            git(dir.path(), args);
        }
        Checkout { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn head(&self) -> String {
        git(self.path(), &["rev-parse", "HEAD"]).trim().to_string()
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
