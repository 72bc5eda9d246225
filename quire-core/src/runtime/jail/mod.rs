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

use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::process::{kill_process_group, Pid, Signal};

use super::reaper::{self, Registered};
use super::sandbox::Bwrap;

/// A job's running sandbox.
pub struct Jail {
    bwrap: Child,
    group: Pid,
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
        let (bwrap, registered) = reaper::spawn_registered(&mut command)?;
        let group = Pid::from_raw(bwrap.id() as i32).expect("child pids are positive");
        Ok(Jail { bwrap, group, socket: ours, _registered: registered })
    }

    /// The helper's end of the conversation.
    pub fn helper(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Whether the sandbox is still there to run commands.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.bwrap.try_wait(), Ok(None))
    }
}

impl Drop for Jail {
    /// Ends the sandbox: closing the socket ends the helper, and with it
    /// the sandbox and everything inside (bubblewrap's PID namespace).
    /// Only a sandbox that does not end by itself is killed.
    fn drop(&mut self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both);
        let ended = rustix::process::pidfd_open(self.group, rustix::process::PidfdFlags::empty()).is_ok_and(
            |pidfd| {
                let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
                let grace = rustix::event::Timespec { tv_sec: 2, tv_nsec: 0 };
                rustix::event::poll(&mut fds, Some(&grace)).is_ok_and(|n| n > 0)
            },
        );
        if !ended {
            let _ = kill_process_group(self.group, Signal::KILL);
        }
        let _ = self.bwrap.wait();
    }
}
