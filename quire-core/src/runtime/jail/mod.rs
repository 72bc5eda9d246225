//! One sandbox per job. The first `sh` of a job under `--sandbox bwrap`
//! starts a bubblewrap process holding a small helper (quire-ci itself, as
//! `quire-ci sandbox-helper`); every command of the job is then started by
//! that helper, inside the same sandbox, which costs a process spawn
//! instead of a sandbox set-up. Jobs running at once have separate
//! sandboxes, so separate `/tmp`s. The sandbox ends with its job (or with
//! quire-ci: bubblewrap dies with its parent and takes every process inside
//! with it). `protocol` is what the two sides say; `helper` is the side
//! inside.

pub mod helper;
pub mod protocol;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{shutdown, socketpair, AddressFamily, Shutdown, SocketFlags, SocketType};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use super::reaper::{self, Registered};
use super::sandbox::Bwrap;

/// How long the helper (or bubblewrap, when the job ends) has to answer
/// before the sandbox is killed from outside.
pub const HELPER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A job's running sandbox. bubblewrap is watched and signalled through a
/// pidfd, never by its number, which could belong to another process once
/// bubblewrap has been reaped.
pub struct Jail {
    bwrap: Child,
    pidfd: OwnedFd,
    socket: OwnedFd,
    _registered: Registered,
}

impl Jail {
    /// Starts the sandbox and its helper for a job working in `workspace`.
    pub fn start(bwrap: &Bwrap, workspace: &Path) -> io::Result<Jail> {
        let (ours, theirs) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let mut command = bwrap.command(workspace)?;
        // The helper talks over its stdin; its stderr (and bubblewrap's)
        // is quire-ci's, so a sandbox that cannot start says why there.
        command.stdin(Stdio::from(theirs)).stdout(Stdio::null()).process_group(0);
        let (mut bwrap, registered) = reaper::spawn_registered(&mut command)?;
        let pid = Pid::from_raw(bwrap.id() as i32).expect("child pids are positive");
        let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(e) => {
                let _ = bwrap.kill();
                let _ = bwrap.wait();
                return Err(e.into());
            }
        };
        Ok(Jail { bwrap, pidfd, socket: ours, _registered: registered })
    }

    /// The helper's end of the conversation.
    pub fn helper(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Whether the sandbox is still there to run commands.
    pub fn is_alive(&mut self) -> bool {
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        matches!(poll(&mut fds, Some(&now)), Ok(0))
    }
}

impl Drop for Jail {
    /// Ends the sandbox: closing the socket ends the helper, and with it
    /// the sandbox and everything inside (bubblewrap's PID namespace).
    /// Only a sandbox that does not end by itself is killed; bubblewrap's
    /// death takes the rest with it (`--die-with-parent`).
    fn drop(&mut self) {
        let _ = shutdown(&self.socket, Shutdown::Both);
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let grace = Timespec { tv_sec: HELPER_GRACE.as_secs() as _, tv_nsec: 0 };
        if !matches!(poll(&mut fds, Some(&grace)), Ok(n) if n > 0) {
            let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
        }
        let _ = self.bwrap.wait();
    }
}
