//! Pid markers for tests that check no process outlives its run: the
//! pipeline's commands write their pids into a directory, the test asserts
//! every one of them is gone, and on drop kills whatever is left, so a
//! failing test leaves nothing behind. Shared by the quire-ci and
//! quire-server test suites (included with `#[path]`), which is why it is
//! not a target of its own.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A directory where commands leave their pids, one per file.
pub struct Markers {
    dir: tempfile::TempDir,
}

impl Markers {
    pub fn new() -> Markers {
        Markers { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn pids(&self) -> Vec<i32> {
        pids_in(self.path())
    }

    /// The pid a command wrote to `name`, once it has written all of it.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.path().join(name)).ok()?.trim().parse().ok()
    }

    /// Every marked process is gone (zombies count as gone), within 10 s.
    pub fn assert_all_gone(&self) {
        assert_processes_gone(&self.pids());
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// The pids written (one per file) into `dir` by a pipeline's commands.
pub fn pids_in(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()?.trim().parse().ok()).collect()
}

/// Every process in `pids` is gone within 10 s (a zombie counts as gone:
/// the test process may be the one that has to reap it).
pub fn assert_processes_gone(pids: &[i32]) {
    assert!(!pids.is_empty(), "the pipeline wrote its pids");
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while Path::new(&format!("/proc/{pid}")).exists() {
            let zombie =
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
            if zombie {
                break;
            }
            assert!(Instant::now() < deadline, "process {pid} is still running after its run ended");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
