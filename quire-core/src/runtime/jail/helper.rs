//! The helper inside a job's sandbox (`quire-ci sandbox-helper`): it
//! receives commands over its stdin (a socket), starts each in a session
//! and process group of its own with the output descriptors it was sent, the
//! environment, directory and limits it was told, and reports how it
//! ended. It runs as the sandbox's unprivileged user, so every command
//! does too; no variable of a command's reaches it, and, being
//! non-dumpable, it cannot be traced or have its socket opened by them.
//! When a command exits, or quire-ci asks, the command's whole process
//! group is killed.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};

use super::protocol::{self, FromHelper, Launch, ToHelper};
use crate::runtime::sandbox;

/// Serves commands until quire-ci closes the socket.
pub fn serve() -> io::Result<()> {
    // The commands run as the same user: made non-dumpable, the helper
    // cannot be traced by them (to spawn past their limits) and its socket
    // cannot be opened through /proc/<pid>/fd. Its children (the commands)
    // are dumpable again once they exec.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    // SAFETY: fd 0 is the socket bubblewrap passed on as stdin; nothing
    // else in this process uses it.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    while let Some((message, fds)) = protocol::receive::<ToHelper>(&socket)? {
        let ToHelper::Launch(launch) = message else { continue };
        let [stdout, stderr]: [OwnedFd; 2] =
            fds.try_into().map_err(|_| io::Error::other("a command must come with its stdout and stderr"))?;
        match start(&launch, stdout, stderr) {
            Ok(child) => {
                let code = watch(child, &socket)?;
                protocol::send(socket.as_fd(), &FromHelper::Exited { code }, &[])?;
            }
            Err(e) => {
                let report = FromHelper::NotStarted {
                    message: e.to_string(),
                    not_found: e.kind() == io::ErrorKind::NotFound,
                };
                protocol::send(socket.as_fd(), &report, &[])?;
            }
        }
    }
    Ok(())
}

fn start(launch: &Launch, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Child> {
    let argv: Vec<OsString> = launch.argv.iter().map(OsString::from).collect();
    if argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty command"));
    }
    let env: Vec<(OsString, OsString)> =
        launch.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
    let mut command = sandbox::command_for(&argv, &launch.cwd, &env, &launch.limits);
    command.stdin(Stdio::null()).stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
    // Each command in a session (and so a process group) of its own, as
    // the per-command sandbox gave it: no terminal to reach, and one group
    // to kill.
    // SAFETY: setsid is a plain system call, safe after fork.
    unsafe {
        command.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
    // `command` holds the only copies of the output descriptors here; they
    // close when it is dropped, so the command's exit ends the output.
    command.spawn()
}

/// Waits for the command to end, killing its group when asked to (or when
/// quire-ci goes away); kills whatever is left of the group at the end.
fn watch(mut child: Child, socket: &OwnedFd) -> io::Result<i32> {
    let group = Pid::from_raw(child.id() as i32).expect("child pids are positive");
    let exited = pidfd_open(group, PidfdFlags::empty())?;
    loop {
        let mut fds = [PollFd::new(&exited, PollFlags::IN), PollFd::new(socket, PollFlags::IN)];
        match poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            other => other?,
        };
        let ended = !fds[0].revents().is_empty();
        let asked = !fds[1].revents().is_empty();
        if ended {
            break;
        }
        if asked {
            match protocol::receive::<ToHelper>(socket)? {
                Some((ToHelper::Kill, _)) => {
                    let _ = kill_process_group(group, Signal::KILL);
                }
                Some((ToHelper::Launch(_), _)) => {}
                None => {
                    let _ = kill_process_group(group, Signal::KILL);
                    let _ = child.wait();
                    return Err(io::Error::other("quire-ci went away"));
                }
            }
        }
    }
    let _ = kill_process_group(group, Signal::KILL);
    let status = child.wait()?;
    // Everything else the command started goes too, even what left its
    // group (`setsid … &`): in the sandbox's PID namespace that is every
    // process but its init and this helper.
    kill_all_but_me();
    Ok(crate::runtime::process::exit_code(status))
}

/// `kill(-1, SIGKILL)`: every process this one may signal but itself and
/// the namespace's init; inside the sandbox, whatever commands left.
fn kill_all_but_me() {
    // The "group" -1 is kill(2)'s spelling of "every process".
    let everyone = Pid::from_raw(1).expect("1 is a valid pid");
    let _ = kill_process_group(everyone, Signal::KILL);
}
