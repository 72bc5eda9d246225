//! Test harness for driving `quire` as an operator would: a temporary data
//! root, a real `quire serve` on a loopback port, real bare repositories and
//! real `git push`es. Every server started here is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

#[path = "../../../quire-core/tests/support/markers.rs"]
pub mod markers;

pub const QUIRE: &str = env!("CARGO_BIN_EXE_quire");

/// The quire-ci binary built alongside (target/<profile>/quire-ci).
/// A directory for stand-in executors: outside /tmp and any data root,
/// which a confined executor does not see.
pub fn scripts_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a directory in the target dir")
}

pub fn quire_ci_bin() -> PathBuf {
    Path::new(QUIRE).with_file_name("quire-ci")
}

/// A data root in a temporary directory.
pub struct Root {
    /// A file system of its own, unmounted (first) on drop.
    mount: Option<Mount>,
    pub dir: tempfile::TempDir,
    /// The root, when it is not `dir` itself but a directory inside it.
    inner: Option<PathBuf>,
}

/// A tmpfs mounted for one test.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

impl Root {
    pub fn new() -> Root {
        Root { mount: None, dir: tempfile::tempdir().expect("tempdir"), inner: None }
    }

    /// A root on a tmpfs of `size_mb`, to run out of space for real.
    /// Needs root, as the whole server suite does.
    pub fn on_tmpfs(size_mb: u64) -> Root {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "cannot mount a tmpfs (the server tests run as root)");
        Root { mount: Some(Mount(dir.path().to_path_buf())), dir, inner: None }
    }

    /// Bytes free on the root's file system.
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df prints the free bytes")
    }

    /// A root outside /tmp (which sandboxes replace anyway) that anyone may
    /// read, so that only the sandbox keeps pipelines out of it.
    pub fn world_readable() -> Root {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Root { mount: None, dir, inner: None }
    }

    /// A root inside a directory only its owner may enter (as a root in
    /// root's home is), outside /tmp.
    pub fn in_private_dir() -> Root {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let inner = dir.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        Root { mount: None, dir, inner: Some(inner) }
    }

    pub fn path(&self) -> &Path {
        self.inner.as_deref().unwrap_or(self.dir.path())
    }

    /// Runs `quire --root <root> ARGS` to completion.
    pub fn quire(&self, args: &[&str]) -> Output {
        Command::new(QUIRE).arg("--root").arg(self.path()).args(args).output().expect("quire runs")
    }

    pub fn quire_ok(&self, args: &[&str]) -> String {
        let out = self.quire(args);
        assert!(out.status.success(), "quire {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path().join("config.fnl"), text).unwrap();
    }

    pub fn db(&self) -> Connection {
        let conn = Connection::open(self.path().join("quire.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    /// Starts `quire serve` on an ephemeral loopback port.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    pub fn serve_with(&self, env: &[(&str, &str)]) -> Server {
        self.serve_at("127.0.0.1:0", env)
    }

    /// A server listening at `listen` (e.g. the address of one that was
    /// killed, as a restarted server would be).
    pub fn serve_at(&self, listen: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(QUIRE)
            .arg("--root")
            .arg(self.path())
            .args(["serve", "--listen", listen])
            .env("QUIRE_CI_BIN", quire_ci_bin())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(self.path().join("server.log")).unwrap()))
            .spawn()
            .expect("quire serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("quire: listening on ") {
                        break url.to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(self.path().join("server.log")).unwrap_or_default();
                    panic!("quire serve did not start:\n{log}");
                }
            }
        };
        Server { child, url }
    }

    /// Creates a repository and a working clone with `files` committed.
    pub fn repo(&self, name: &str) -> Work {
        self.quire_ok(&["repo", "new", name]);
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "-q", "-b", "main"]);
        git(work.path(), &["config", "user.email", "test@example.com"]);
        git(work.path(), &["config", "user.name", "Test"]);
        let remote = self.path().join("repos").join(name);
        git(work.path(), &["remote", "add", "origin", remote.to_str().unwrap()]);
        Work { dir: work, name: name.to_string() }
    }

    /// Creates `repo`, commits `pipeline` as its `.quire/ci.fnl` and pushes
    /// it to `branch`; returns the clone and the commit.
    pub fn push_pipeline(&self, repo: &str, pipeline: &str, branch: &str) -> (Work, String) {
        let work = self.repo(repo);
        work.pipeline(pipeline);
        let sha = work.commit("pipeline");
        work.push(branch);
        (work, sha)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path().join("server.log")).unwrap_or_default()
    }

    /// Polls until `check` returns Some, or panics after `secs`.
    pub fn wait_for<T>(&self, what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\nserver log:\n{}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The state and failure kind of a run, once it has finished.
    pub fn wait_finished(&self, run_id: &str) -> (String, Option<String>) {
        self.wait_for(&format!("run {run_id} to finish"), 60, || {
            self.db()
                .query_row(
                    "SELECT state, failure_kind FROM runs WHERE id = ?1 AND state IN ('complete','failed','superseded')",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok()
        })
    }

    /// Ids of the runs of a repository, oldest first.
    pub fn run_ids(&self, repo: &str) -> Vec<String> {
        let conn = self.db();
        let mut stmt = conn.prepare("SELECT id FROM runs WHERE repo = ?1 ORDER BY id").unwrap();
        stmt.query_map([repo], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    }

    pub fn wait_run_count(&self, repo: &str, n: usize) -> Vec<String> {
        self.wait_for(&format!("{n} runs of {repo}"), 30, || {
            let ids = self.run_ids(repo);
            (ids.len() >= n).then_some(ids)
        })
    }
}

/// A running `quire serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Kills the server abruptly (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server as an operator would (SIGTERM) and waits until it
    /// has exited.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM reached quire serve");
        let status = self.child.wait().expect("quire serve is waited for");
        assert!(status.success(), "quire serve stops cleanly on SIGTERM: {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A working clone that pushes to a hosted repository.
pub struct Work {
    pub dir: tempfile::TempDir,
    pub name: String,
}

impl Work {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, text: &str) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
        self
    }

    pub fn pipeline(&self, fennel: &str) -> &Self {
        self.write(".quire/ci.fnl", fennel)
    }

    /// Commits everything and returns the new HEAD.
    pub fn commit(&self, message: &str) -> String {
        git(self.path(), &["add", "-A"]);
        git(self.path(), &["commit", "-q", "--allow-empty", "-m", message]);
        git(self.path(), &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// `git push origin HEAD:<branch>`; returns git's stderr (the hook's
    /// messages).
    pub fn push(&self, branch: &str) -> String {
        self.push_refspec(&format!("HEAD:refs/heads/{branch}"))
    }

    /// `git push origin <refspec>` (`:refs/heads/x` deletes x); returns
    /// git's stderr.
    pub fn push_refspec(&self, refspec: &str) -> String {
        let out = Command::new("git")
            .current_dir(self.path())
            .args(["push", "-q", "origin", refspec])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "git push failed: {stderr}");
        stderr
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").current_dir(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

impl Root {
    /// Exit codes of a job's commands, in order.
    pub fn exits(&self, run: &str, job: &str) -> Vec<i64> {
        let conn = self.db();
        let mut stmt = conn
            .prepare("SELECT exit_code FROM sh_events WHERE run_id = ?1 AND job_id = ?2 ORDER BY seq")
            .unwrap();
        stmt.query_map([run, job], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }
}

/// `GET url` with a minute's timeout: the status and the body.
pub fn get(url: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    (response.status().as_u16(), response.text().unwrap())
}
