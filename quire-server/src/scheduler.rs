//! Firing schedules while the server runs: a task that sleeps until the
//! next tick of any schedule, queues a `schedule` run of the ref's current
//! commit through the launcher (as a push would be queued) and records the
//! tick. At start it first fires, once, each schedule missed while the
//! server was down. What a schedule is and when it ticks is `schedule`'s.

use std::path::Path;
use std::time::Duration;

use quire_core::clock::now_ms;

use crate::db::Pool;
use crate::launcher::Launcher;
use crate::root::DataRoot;
use crate::runs::{NewRun, Trigger};
use crate::schedule::{self, Schedule};

/// The ref's current commit in the bare repository.
fn current_commit(bare: &Path, ref_name: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{ref_name}^{{commit}}"))
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !sha.is_empty()).then_some(sha)
}

/// Fires every schedule when it is due, for as long as the server runs.
pub async fn run(schedules: Vec<Schedule>, launcher: Launcher, pool: Pool, root: DataRoot) {
    if schedules.is_empty() {
        return;
    }
    let now = now_ms();
    let mut next: Vec<Option<i64>> = Vec::with_capacity(schedules.len());
    for schedule in &schedules {
        let missed = {
            let (pool, schedule) = (pool.clone(), schedule.clone());
            tokio::task::spawn_blocking(move || {
                let conn = pool.get().map_err(|e| e.to_string())?;
                schedule::missed_at_start(&conn, &schedule, now).map_err(|e| e.to_string())
            })
            .await
        };
        match missed {
            Ok(Ok(Some(tick))) => {
                tracing::info!(repo = %schedule.repo, r#ref = %schedule.ref_name, cron = %schedule.pattern, "firing a schedule missed while the server was down");
                fire(schedule, tick, &launcher, &pool, &root).await;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(cron = %schedule.pattern, error = %e, "cannot read when a schedule last fired")
            }
            Err(e) => tracing::error!(error = %e, "schedule task failed"),
        }
        next.push(schedule.next_after(now));
    }
    loop {
        let Some(due) = next.iter().flatten().min().copied() else { return };
        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for (schedule, tick) in schedules.iter().zip(next.iter_mut()) {
            if let Some(at) = *tick {
                if at <= now_ms() {
                    fire(schedule, at, &launcher, &pool, &root).await;
                    *tick = schedule.next_after(at.max(now_ms()));
                }
            }
        }
    }
}

/// Queues a `schedule` run of the ref's current commit for `tick` and
/// records the tick. A ref that does not exist (yet) fires nothing.
async fn fire(schedule: &Schedule, tick: i64, launcher: &Launcher, pool: &Pool, root: &DataRoot) {
    let bare = root.repo_path(&schedule.repo);
    let ref_name = schedule.ref_name.clone();
    let sha = tokio::task::spawn_blocking(move || current_commit(&bare, &ref_name)).await.ok().flatten();
    match sha {
        Some(sha) => {
            let new = NewRun {
                repo: schedule.repo.clone(),
                ref_name: schedule.ref_name.clone(),
                sha,
                previous_sha: None,
                pushed_at_ms: tick,
                trigger: Trigger::Schedule,
                scheduled_at_ms: Some(tick),
            };
            match launcher.queue(new).await {
                Ok(id) => {
                    tracing::info!(run = %id, repo = %schedule.repo, cron = %schedule.pattern, "scheduled run queued")
                }
                Err(e) => {
                    // Not recorded: the next start fires it as missed.
                    tracing::error!(repo = %schedule.repo, cron = %schedule.pattern, error = %e, "cannot queue a scheduled run");
                    return;
                }
            }
        }
        None => {
            tracing::warn!(repo = %schedule.repo, r#ref = %schedule.ref_name, "a schedule fired for a ref that does not exist")
        }
    }
    let (pool, schedule) = (pool.clone(), schedule.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        let conn = pool.get().map_err(|e| e.to_string())?;
        schedule::record_tick(&conn, &schedule, tick).map_err(|e| e.to_string())
    })
    .await;
    if !matches!(recorded, Ok(Ok(()))) {
        tracing::error!("cannot record a schedule's tick; it may fire again at the next start");
    }
}
