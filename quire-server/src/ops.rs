//! The operator's `quire ci …` commands: listing runs, showing one, printing
//! its logs, canceling, retriggering and pruning old runs. They read the database and files
//! directly and talk to a running server over the socket when they need it
//! to act (stopping a process, queueing a run).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use quire_core::clock::{format_duration_ms, now_ms};
use quire_core::cri;
use quire_core::id::{InvalidRepoName, RepoName, RunId};
use quire_core::run_dir::LogFile;

use crate::db;
use crate::hook::{self, HookOutcome};
use crate::job_rows;
use crate::protocol::{self, Message, RefUpdate, SendError, ZERO_SHA};
use crate::root::DataRoot;
use crate::runs::{self, Run};
use crate::{caches, retention};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("no run matches {0:?}")]
    NoSuchRun(String),
    #[error("{0:?} matches several runs; give more of the id")]
    Ambiguous(String),
    #[error("run {0} has no job `{1}`")]
    NoSuchJob(RunId, String),
    #[error(transparent)]
    Repo(#[from] InvalidRepoName),
    #[error("no repository {0}")]
    NoSuchRepo(RepoName),
    #[error("{0} has no ref {1}")]
    NoSuchRef(RepoName, String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Hook(#[from] hook::HookError),
    #[error("{}", .0.diagnostic.short())]
    Config(Box<crate::config::ConfigError>),
    #[error(transparent)]
    Prune(#[from] retention::PruneError),
}

/// Finds a run by its id or a unique prefix of it (at least 4 characters).
pub fn find_run(conn: &rusqlite::Connection, id_or_prefix: &str) -> Result<Run, OpsError> {
    let not_found = || OpsError::NoSuchRun(id_or_prefix.to_string());
    if let Ok(id) = id_or_prefix.parse::<RunId>() {
        return runs::get(conn, id)?.ok_or_else(not_found);
    }
    let valid_prefix =
        id_or_prefix.len() >= 4 && id_or_prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !valid_prefix {
        return Err(not_found());
    }
    let mut stmt =
        conn.prepare("SELECT id FROM runs WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2")?;
    let ids: Vec<String> = stmt.query_map([id_or_prefix], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    match ids.as_slice() {
        [one] => runs::get(conn, one.parse().map_err(|_| not_found())?)?.ok_or_else(not_found),
        [] => Err(not_found()),
        _ => Err(OpsError::Ambiguous(id_or_prefix.to_string())),
    }
}

/// `quire ci runs [REPO]`: newest first.
pub fn list_runs(root: &DataRoot, repo: Option<&RepoName>) -> Result<String, OpsError> {
    let conn = db::open_current(&root.db_path())?;
    let runs = runs::list(&conn, repo, 50, runs::Start::Newest)?;
    let now = now_ms();
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("no runs yet\n");
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<36}  {:<20}  {:<24}  {:<10}  {:<8}  {:<10}  {:<16}  DURATION",
        "RUN", "REPO", "REF", "SHA", "TRIGGER", "STATE", "FAILURE"
    );
    for run in runs {
        let _ = writeln!(
            out,
            "{:<36}  {:<20}  {:<24}  {:<10}  {:<8}  {:<10}  {:<16}  {}",
            run.id,
            run.repo,
            run.ref_name,
            run.short_sha(),
            run.trigger.as_str(),
            run.state.as_str(),
            run.failure_kind.as_ref().map_or("-", |k| k.as_str()),
            format_duration_ms(run.duration_ms(now)),
        );
    }
    Ok(out)
}

/// `quire ci show RUN`: the run, its jobs and their commands.
pub fn show_run(root: &DataRoot, id: &str) -> Result<String, OpsError> {
    let conn = db::open_current(&root.db_path())?;
    let run = find_run(&conn, id)?;
    let jobs = job_rows::of_run(&conn, run.id)?;
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", run.id);
    let _ = writeln!(out, "repo      {} {} at {}", run.repo, run.ref_name, run.sha);
    if let Some(subject) = &run.subject {
        let _ = writeln!(out, "commit    {subject} ({})", run.author.as_deref().unwrap_or("unknown author"));
    }
    match run.scheduled_at_ms {
        Some(at) => {
            let _ = writeln!(out, "trigger   schedule (tick {})", timestamp(at));
        }
        None => {
            let _ = writeln!(out, "trigger   {}", run.trigger.as_str());
        }
    }
    let state = match &run.failure_kind {
        Some(kind) => format!("{} ({kind})", run.state.as_str()),
        None => run.state.as_str().to_string(),
    };
    let _ = writeln!(out, "state     {state}");
    let _ = writeln!(out, "queued    {}", timestamp(run.queued_at_ms));
    if let Some(started) = run.started_at_ms {
        let _ = writeln!(out, "started   {}", timestamp(started));
    }
    if let Some(finished) = run.finished_at_ms {
        let _ = writeln!(
            out,
            "finished  {} (took {})",
            timestamp(finished),
            format_duration_ms(run.duration_ms(finished))
        );
    }
    if jobs.is_empty() {
        let _ = writeln!(out, "\nno jobs recorded (see `quire ci logs {}` for quire-ci's own log)", run.id);
    }
    for job in &jobs {
        let took = job.duration_ms().map(format_duration_ms).unwrap_or_default();
        let _ = writeln!(out, "\njob {}  {}  {}", job.job_id, job.state.as_str(), took);
        for command in &job.commands {
            let exit = command.exit_code.map_or("unfinished".to_string(), |c| format!("exit {c}"));
            let took = command.duration_ms().map(format_duration_ms).unwrap_or_default();
            let _ = writeln!(out, "  sh-{}  {exit:<10}  {took:>8}  $ {}", command.seq, command.cmd);
        }
    }
    Ok(out)
}

/// `quire ci logs RUN [JOB]`: the CRI logs as text, command by command.
pub fn logs(root: &DataRoot, id: &str, job: Option<&str>) -> Result<String, OpsError> {
    let conn = db::open_current(&root.db_path())?;
    let run = find_run(&conn, id)?;
    let jobs = job_rows::of_run(&conn, run.id)?;
    let run_dir = root.run_dir(&run.repo, run.id);
    let mut out = String::new();
    let selected: Vec<_> = match job {
        Some(name) => {
            let found: Vec<_> = jobs.iter().filter(|j| j.job_id.as_str() == name).collect();
            if found.is_empty() {
                return Err(OpsError::NoSuchJob(run.id, name.to_string()));
            }
            found
        }
        None => jobs.iter().collect(),
    };
    for job in selected {
        for command in &job.commands {
            let _ = writeln!(out, "==> {} sh-{}: $ {}", job.job_id, command.seq, command.cmd);
            append_log(&mut out, &run_dir.log(&job.job_id, LogFile::Command(command.seq)));
        }
        let job_log = run_dir.log(&job.job_id, LogFile::Job);
        if job_log.exists() {
            let _ = writeln!(out, "==> {} (job)", job.job_id);
            append_log(&mut out, &job_log);
        }
    }
    if job.is_none() {
        let _ = writeln!(out, "==> quire-ci.log");
        match std::fs::read_to_string(run_dir.executor_log()) {
            Ok(text) => out.push_str(&text),
            Err(_) => out.push_str("(no quire-ci.log)\n"),
        }
    }
    Ok(out)
}

fn append_log(out: &mut String, path: &Path) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for line in cri::read_lines(&text) {
                out.push_str(&line.content);
                out.push('\n');
            }
        }
        Err(_) => out.push_str("(no log file)\n"),
    }
}

/// `quire ci cancel RUN`: through the server when it runs (it owns the
/// process); directly in the database when it does not.
pub fn cancel(root: &DataRoot, id: &str) -> Result<String, OpsError> {
    let conn = db::open_current(&root.db_path())?;
    let run = find_run(&conn, id)?;
    if run.state.is_finished() {
        return Err(OpsError::Refused(format!("run {} already finished ({})", run.id, run.state.as_str())));
    }
    match protocol::send(&root.socket_path(), &Message::Cancel { run_id: run.id.to_string() }) {
        Ok(_) => Ok(format!("run {} canceled\n", run.id)),
        Err(SendError::NotRunning { .. }) => {
            runs::finish(&conn, run.id, &runs::Ending::Failed(runs::FailureKind::Canceled))?;
            Ok(format!("run {} canceled (the server is not running)\n", run.id))
        }
        Err(e) => Err(OpsError::Refused(e.to_string())),
    }
}

/// `quire ci retrigger REPO REF`: a new run of the ref's current commit,
/// queued exactly like a push of it.
pub fn retrigger(root: &DataRoot, repo: &RepoName, ref_name: &str) -> Result<String, OpsError> {
    let path = root.repo_path(repo);
    if !path.is_dir() {
        return Err(OpsError::NoSuchRepo(repo.clone()));
    }
    let full_ref = full_ref_name(ref_name);
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&path)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{full_ref}^{{commit}}"))
        .output()
        .map_err(|e| OpsError::Refused(format!("cannot run git: {e}")))?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || sha.is_empty() {
        return Err(OpsError::NoSuchRef(repo.clone(), full_ref));
    }
    let update = RefUpdate { ref_name: full_ref.clone(), old_sha: ZERO_SHA.into(), new_sha: sha.clone() };
    Ok(match hook::post_receive(root, repo.clone(), vec![update], quire_core::push::Trigger::Manual)? {
        HookOutcome::Sent { spooled, .. } if spooled > 0 => format!(
            "saved a run for {repo} {full_ref} at {sha} in the spool (the database is busy); the server queues it within seconds\n"
        ),
        HookOutcome::Sent { runs, .. } => format!("queued run {} for {repo} {full_ref} at {sha}\n", runs.join(", ")),
        HookOutcome::QueuedOffline(_) => {
            format!("queued a run for {repo} {full_ref} at {sha}; it starts when `quire serve` runs\n")
        }
        HookOutcome::Spooled { because, .. } => format!(
            "saved a run for {repo} {full_ref} at {sha} in the spool ({because}); the server queues it (at start if it is not running)\n"
        ),
        HookOutcome::NothingToRun => String::new(),
    })
}

/// `main` as `refs/heads/main`; a full ref as it is.
fn full_ref_name(ref_name: &str) -> String {
    if ref_name.starts_with("refs/") {
        ref_name.to_string()
    } else {
        format!("refs/heads/{ref_name}")
    }
}

/// `quire ci cache list [REPO]`: each ref cache, its size and last use.
pub fn cache_list(root: &DataRoot, repo: Option<&RepoName>) -> Result<String, OpsError> {
    let listed =
        caches::list(root, repo).map_err(|e| OpsError::Refused(format!("cannot read the caches: {e}")))?;
    if listed.is_empty() {
        return Ok("no caches\n".to_string());
    }
    let mut out = format!("{:<24}  {:<32}  {:>10}  LAST-USED\n", "REPO", "REF", "SIZE");
    for cache in listed {
        let used = cache.last_used_ms.map_or_else(|| "-".to_string(), timestamp);
        let _ = writeln!(
            out,
            "{:<24}  {:<32}  {:>10}  {used}",
            cache.repo,
            cache.ref_name,
            mebibytes(cache.bytes)
        );
    }
    Ok(out)
}

/// `quire ci cache clear REPO [REF]`: removes a ref's cache, or all of the
/// repository's.
pub fn cache_clear(root: &DataRoot, repo: &RepoName, ref_name: Option<&str>) -> Result<String, OpsError> {
    let full = ref_name.map(full_ref_name);
    let removed = caches::clear(root, repo, full.as_deref())
        .map_err(|e| OpsError::Refused(format!("cannot remove the caches: {e}")))?;
    let mut out = String::new();
    for cache in &removed {
        let _ = writeln!(
            out,
            "removed the cache of {} {} ({})",
            cache.repo,
            cache.ref_name,
            mebibytes(cache.bytes)
        );
    }
    let _ = writeln!(out, "removed {} cache(s)", removed.len());
    Ok(out)
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string())
}

/// `quire ci prune [REPO] [--dry-run]`: applies `:ci {:retention …}` to one
/// repository or to every repository with runs, listing what goes.
pub fn prune(root: &DataRoot, repo: Option<&RepoName>, dry_run: bool) -> Result<String, OpsError> {
    let config = crate::config::load(&root.config_path()).map_err(|e| OpsError::Config(Box::new(e)))?;
    let policy = config.ci.retention;
    let mut conn = db::open_current(&root.db_path())?;
    let repos = match repo {
        Some(repo) => vec![repo.clone()],
        None => retention::repos_with_runs(&conn)?,
    };
    let mut out = String::new();
    if policy.keeps_everything() {
        out.push_str("no :ci {:retention …} in config.fnl: every run is kept\n");
    }
    let now = now_ms();
    let mut count = 0;
    for repo in &repos {
        let doomed = retention::candidates(&conn, repo, &policy, now)?;
        let gone = if dry_run { doomed } else { retention::delete(&mut conn, root, doomed)? };
        for run in &gone {
            let verb = if dry_run { "would prune" } else { "pruned" };
            let _ = writeln!(out, "{verb} {} {} {} {}", run.id, run.repo, run.ref_name, run.state.as_str());
        }
        count += gone.len();
    }
    let verb = if dry_run { "would prune" } else { "pruned" };
    let _ = writeln!(out, "{verb} {count} run(s)");
    Ok(out)
}
