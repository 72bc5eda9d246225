//! Every process a run starts is gone when the run ends, sandbox or not.
//!
//! Commands run in process groups of their own, and a command's group is
//! killed when its `sh` returns. A process that leaves its group (`setsid`,
//! a daemon's double fork) escapes that, so quire-ci makes itself a child
//! subreaper: such orphans are re-parented to quire-ci instead of init, and
//! [`sweep_orphans`] kills every child that is not a running command. It
//! runs when the run ends and when quire-ci is told to stop, not after each
//! command, so a job's daemon lives as long as the run (a job may start a
//! database in the background and test against it).
//!
//! This module also keeps the registry of running command groups, which a
//! signal handler can walk: [`kill_running_commands`] only makes `kill`
//! calls on atomics.

use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

use rustix::process::{kill_process, kill_process_group, waitpid, Pid, Signal, WaitOptions};

/// At most this many commands run at once (one per job in flight).
const SLOTS: usize = 256;

/// Process groups (= leader pids) of the commands running now; 0 is free.
static GROUPS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

/// Held while spawning and while sweeping, so a sweep never mistakes a
/// command that has just been spawned (and not yet registered) for an
/// orphan.
static SPAWNING: Mutex<()> = Mutex::new(());

/// Set once quire-ci has been told to stop: what its jobs report from
/// then on (a command "failing" because it was killed) is not the run's.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether quire-ci is stopping (see [`stop_everything`]).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Makes this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// A running command's place in the registry; dropping it frees the place.
pub struct Registered {
    slot: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        GROUPS[self.slot].store(0, Ordering::SeqCst);
    }
}

/// Spawns `command` (which must make itself a process group leader) and
/// registers its group.
pub fn spawn_registered(command: &mut Command) -> io::Result<(Child, Registered)> {
    let _spawning = SPAWNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let slot = GROUPS
        .iter()
        .position(|g| g.load(Ordering::SeqCst) == 0)
        .ok_or_else(|| io::Error::other(format!("more than {SLOTS} commands at once")))?;
    let child = command.spawn()?;
    GROUPS[slot].store(child.id() as i32, Ordering::SeqCst);
    Ok((child, Registered { slot }))
}

/// Kills every running command's process group. Async-signal-safe.
pub fn kill_running_commands() {
    for group in &GROUPS {
        if let Some(pid) = Pid::from_raw(group.load(Ordering::SeqCst)) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// Stops the run's processes when quire-ci is told to stop: kills every
/// running command's group, waits (a little) for their leaders to die, so
/// that what they had detached is re-parented here, then sweeps.
pub fn stop_everything() {
    STOPPING.store(true, Ordering::SeqCst);
    kill_running_commands();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline && GROUPS.iter().any(|g| is_running(g.load(Ordering::SeqCst)))
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        kill_running_commands();
    }
    sweep_orphans();
}

/// Whether `pid` names a process that has not exited (a zombie has).
fn is_running(pid: i32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Kills and reaps every child of this process that is not a running
/// command, until none is left (killing one re-parents its children here).
/// Returns how many running processes it killed.
pub fn sweep_orphans() -> usize {
    let _spawning = SPAWNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sweep_children(|pid| GROUPS.iter().any(|g| g.load(Ordering::SeqCst) == pid.as_raw_nonzero().get()))
}

/// Kills (with its process group) and reaps every child of this process
/// that `keep` does not claim, until none is left. For a process that
/// spawns children of its own kind (the server's executors), `keep` says
/// which are its own; the caller makes sure none is being spawned now.
pub fn sweep_children(keep: impl Fn(Pid) -> bool) -> usize {
    let mut killed = 0;
    for _round in 0..1000 {
        let orphans: Vec<Pid> = children().into_iter().filter(|&pid| !keep(pid)).collect();
        if orphans.is_empty() {
            break;
        }
        for pid in orphans {
            // An orphan that has already exited only needs reaping.
            if is_running(pid.as_raw_nonzero().get()) {
                let _ = kill_process_group(pid, Signal::KILL);
                let _ = kill_process(pid, Signal::KILL);
                killed += 1;
            }
            let _ = waitpid(Some(pid), WaitOptions::empty());
        }
    }
    killed
}

/// The children of every thread of this process.
fn children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else { continue };
        pids.extend(text.split_whitespace().filter_map(|p| p.parse().ok()).filter_map(Pid::from_raw));
    }
    pids
}
