//! Running one child process to completion: its output streamed to a
//! callback as it arrives, a bounded copy kept for the caller, a deadline
//! that kills the whole process group, and no leftovers. One thread, one
//! `poll` over both pipes and a pidfd, so a command costs a fork/exec and
//! little else. What the command is and where the output goes is `sh`'s
//! concern.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{kill_process_group, pidfd_open, Pid, PidfdFlags, Signal};

use super::jail;
use super::jail::protocol::{self, FromHelper, Launch, ToHelper};
use super::reaper;
use crate::cri::Stream;

/// How much of each stream is kept in memory for the caller.
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// At most this much is read after the command exited, from background
/// processes still holding its pipes, before they are killed.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Output kept in memory, up to [`CAPTURE_LIMIT`].
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Everything the stream produced, kept or not.
    pub total: usize,
}

impl Captured {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len();
        let room = CAPTURE_LIMIT.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len()
    }
}

/// The error kind of a job sandbox that went away under a command.
pub const SANDBOX_GONE: io::ErrorKind = io::ErrorKind::ConnectionAborted;

/// What became of a command.
#[derive(Debug)]
pub enum Ended {
    Finished(Finished),
    /// It could not be started (not found, not executable, an argument
    /// the kernel refuses): a failure of the command, not of quire-ci.
    NotStarted(io::Error),
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// The deadline passed and the process group was killed.
    pub timed_out: bool,
    /// Why the guard had it killed, if it did.
    pub stopped: Option<String>,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Runs `command` with its stdin closed, in a new
/// process group, until it exits or `deadline` passes. `on_output` sees
/// every chunk of output in arrival order. When the command exits,
/// whatever else is left in its process group is killed, so a `sh` never
/// leaves processes behind.
pub fn run(
    mut command: Command,
    deadline: Option<Instant>,
    guard: &dyn Fn() -> Option<String>,
    mut on_output: impl FnMut(Stream, &[u8]) -> io::Result<()>,
) -> io::Result<Ended> {
    // No pre_exec hook is added here: without one (no rlimits asked for)
    // the standard library spawns with posix_spawn, which keeps a command's
    // overhead near a shell's. quire-ci stops running commands itself when
    // it is told to stop (`reaper::kill_running_commands`).
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let (mut child, registered) = match reaper::spawn_registered(&mut command) {
        Ok(spawned) => spawned,
        Err(e) => return Ok(Ended::NotStarted(e)),
    };
    let group = Pid::from_raw(child.id() as i32).expect("child pids are positive");
    let pipes = Pipes {
        stdout: child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        stderr: child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    };
    let mut local = Local { child: &mut child, pidfd: None, group, registered: Some(registered) };
    let result = pidfd_open(group, PidfdFlags::empty()).map_err(io::Error::from).and_then(|pidfd| {
        local.pidfd = Some(pidfd);
        supervise(&mut local, pipes, deadline, guard, &mut on_output)
    });
    if result.is_err() {
        let _ = local.kill();
        let _ = local.wait();
    }
    result.map(Ended::Finished)
}

/// Runs a command through the helper inside a job's sandbox: the helper
/// starts it with the write ends of two pipes whose read ends stay here,
/// reports its end, and kills its process group when asked or when it has
/// exited. Same contract as [`run`].
pub fn run_in(
    helper: BorrowedFd<'_>,
    launch: Launch,
    deadline: Option<Instant>,
    guard: &dyn Fn() -> Option<String>,
    mut on_output: impl FnMut(Stream, &[u8]) -> io::Result<()>,
) -> io::Result<Ended> {
    let (out_read, out_write) = pipe_with(PipeFlags::CLOEXEC)?;
    let (err_read, err_write) = pipe_with(PipeFlags::CLOEXEC)?;
    protocol::send(helper, &ToHelper::Launch(launch), &[out_write.as_fd(), err_write.as_fd()])
        .map_err(|e| io::Error::new(SANDBOX_GONE, e))?;
    // Only the command holds the write ends now, so its exit is their end.
    // No "started" comes back: the next word from the helper says how the
    // command ended, or that it never started.
    drop((out_write, err_write));
    let pipes = Pipes { stdout: Some(File::from(out_read)), stderr: Some(File::from(err_read)) };
    let mut jailed = Jailed { helper, not_started: None };
    let finished = supervise(&mut jailed, pipes, deadline, guard, &mut on_output)?;
    Ok(match jailed.not_started {
        Some(e) => Ended::NotStarted(e),
        None => Ended::Finished(finished),
    })
}

/// Where a command's end is learned, and how it is stopped.
trait Watched {
    /// Readable when the command may have ended.
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// Called when [`Watched::exit_fd`] is readable: the exit code (or 128 +
    /// the signal), if the command has ended.
    fn ended(&mut self) -> io::Result<Option<i32>>;
    /// Kills the command's process group.
    fn kill(&mut self) -> io::Result<()>;
    /// After a kill: waits for the end.
    fn wait(&mut self) -> io::Result<i32>;
}

/// A child of quire-ci's own. Its group is killed (leftovers included)
/// while the leader is still unreaped, so the group's id cannot have been
/// reused by then; it leaves the registry before it is reaped too.
struct Local<'a> {
    child: &'a mut Child,
    pidfd: Option<OwnedFd>,
    group: Pid,
    registered: Option<reaper::Registered>,
}

impl Local<'_> {
    /// Kills what is left of the group, then reaps the leader.
    fn reap(&mut self) -> io::Result<i32> {
        let _ = kill_process_group(self.group, Signal::KILL);
        drop(self.registered.take());
        Ok(exit_code(self.child.wait()?))
    }
}

impl Watched for Local<'_> {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_ref().expect("set before supervising").as_fd()
    }

    fn ended(&mut self) -> io::Result<Option<i32>> {
        // The pidfd is readable: the leader has exited and is a zombie.
        self.reap().map(Some)
    }

    fn kill(&mut self) -> io::Result<()> {
        let _ = kill_process_group(self.group, Signal::KILL);
        Ok(())
    }

    fn wait(&mut self) -> io::Result<i32> {
        self.reap()
    }
}

/// A command the helper in a job's sandbox started (or failed to).
struct Jailed<'a> {
    helper: BorrowedFd<'a>,
    /// Set when the helper could not start the command.
    not_started: Option<io::Error>,
}

impl Watched for Jailed<'_> {
    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.helper
    }

    fn ended(&mut self) -> io::Result<Option<i32>> {
        match protocol::receive::<FromHelper>(self.helper).map_err(|e| io::Error::new(SANDBOX_GONE, e))? {
            Some((FromHelper::Exited { code }, _)) => Ok(Some(code)),
            Some((FromHelper::NotStarted { message, not_found }, _)) => {
                let kind = if not_found { io::ErrorKind::NotFound } else { io::ErrorKind::PermissionDenied };
                self.not_started = Some(io::Error::new(kind, message));
                // Ends the supervision; `run_in` reports "not started", and
                // `sh` turns that into the shell's exit codes.
                Ok(Some(0))
            }
            None => Err(io::Error::new(SANDBOX_GONE, "its helper went away")),
        }
    }

    fn kill(&mut self) -> io::Result<()> {
        protocol::send(self.helper, &ToHelper::Kill, &[]).map_err(|e| io::Error::new(SANDBOX_GONE, e))
    }

    /// A helper that does not answer a kill within [`jail::HELPER_GRACE`] (a
    /// command stopped it, say) is given up on: the caller drops the whole
    /// sandbox, and the command with it.
    fn wait(&mut self) -> io::Result<i32> {
        let grace = Timespec { tv_sec: jail::HELPER_GRACE.as_secs() as _, tv_nsec: 0 };
        loop {
            let mut fds = [PollFd::new(&self.helper, PollFlags::IN)];
            let ready = match poll(&mut fds, Some(&grace)) {
                Err(rustix::io::Errno::INTR) => continue,
                other => other?,
            };
            if ready == 0 {
                return Err(io::Error::new(SANDBOX_GONE, "its helper did not answer a kill"));
            }
            if let Some(code) = self.ended()? {
                return Ok(code);
            }
        }
    }
}

/// A wait status as `sh` reports it: the exit code, or 128 + the signal.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// How often the guard is asked while a command is quiet.
const GUARD_EVERY: Duration = Duration::from_millis(500);

/// Reads the command's output until it ends, killing it at `deadline` or
/// when `guard` gives a reason to.
fn supervise(
    watched: &mut dyn Watched,
    mut pipes: Pipes,
    deadline: Option<Instant>,
    guard: &dyn Fn() -> Option<String>,
    on_output: &mut impl FnMut(Stream, &[u8]) -> io::Result<()>,
) -> io::Result<Finished> {
    let mut captured = [Captured::default(), Captured::default()];
    let mut record = |stream: Stream, data: &[u8]| -> io::Result<()> {
        captured[stream as usize].push(data);
        on_output(stream, data)
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut timed_out = false;
    let mut stopped = None;

    let exit_code = loop {
        if let Some(reason) = guard() {
            stopped = Some(reason);
            watched.kill()?;
            break watched.wait()?;
        }
        let left = match deadline.map(|d| d.checked_duration_since(Instant::now())) {
            Some(None) => {
                timed_out = true;
                watched.kill()?;
                break watched.wait()?;
            }
            Some(Some(left)) => left.min(GUARD_EVERY),
            None => GUARD_EVERY,
        };
        let timeout = Some(Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ });
        let (out_ready, err_ready, exit_ready) =
            wait_for_activity(&pipes, watched.exit_fd(), timeout.as_ref())?;
        if out_ready {
            pipes.read_from(Stream::Stdout, &mut buf, &mut record)?;
        }
        if err_ready {
            pipes.read_from(Stream::Stderr, &mut buf, &mut record)?;
        }
        if exit_ready {
            if let Some(code) = watched.ended()? {
                break code;
            }
        }
    };

    pipes.drain(&mut buf, &mut record)?;
    let [stdout, stderr] = captured;
    Ok(Finished { exit_code, timed_out, stopped, stdout, stderr })
}

/// The child's output pipes; `None` once a pipe reached end of file.
struct Pipes {
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Pipes {
    /// Reads one chunk from a ready pipe; closes it at end of file.
    fn read_from(
        &mut self,
        stream: Stream,
        buf: &mut [u8],
        record: &mut impl FnMut(Stream, &[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let read = match stream {
            Stream::Stdout => self.stdout.as_mut().map(|p| p.read(buf)),
            Stream::Stderr => self.stderr.as_mut().map(|p| p.read(buf)),
        };
        match read {
            None => Ok(0),
            Some(Ok(0)) => {
                match stream {
                    Stream::Stdout => self.stdout = None,
                    Stream::Stderr => self.stderr = None,
                }
                Ok(0)
            }
            Some(Ok(n)) => {
                record(stream, &buf[..n])?;
                Ok(n)
            }
            Some(Err(e))
                if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock =>
            {
                Ok(0)
            }
            Some(Err(e)) => Err(e),
        }
    }

    /// After the child exited: reads what is already in the pipes without
    /// waiting for background processes that may hold them open.
    fn drain(
        &mut self,
        buf: &mut [u8],
        record: &mut impl FnMut(Stream, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let mut taken = 0;
            while taken < DRAIN_LIMIT {
                let ready = match stream {
                    Stream::Stdout => self.stdout.as_ref().map(|p| readable_now(p.as_fd())),
                    Stream::Stderr => self.stderr.as_ref().map(|p| readable_now(p.as_fd())),
                };
                match ready {
                    Some(Ok(true)) => {}
                    Some(Err(e)) => return Err(e),
                    _ => break,
                }
                let n = self.read_from(stream, buf, record)?;
                if n == 0 {
                    break;
                }
                taken += n;
            }
        }
        Ok(())
    }
}

fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        match poll(&mut fds, Some(&zero)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocks until a pipe has data (or closed), the child exited, or the
/// timeout passed. Returns which of the three fired.
fn wait_for_activity(
    pipes: &Pipes,
    exited: BorrowedFd<'_>,
    timeout: Option<&Timespec>,
) -> io::Result<(bool, bool, bool)> {
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    let mut fds = Vec::with_capacity(3);
    fds.push(PollFd::new(&exited, PollFlags::IN));
    if let Some(out) = &pipes.stdout {
        fds.push(PollFd::new(out, PollFlags::IN));
    }
    if let Some(err) = &pipes.stderr {
        fds.push(PollFd::new(err, PollFlags::IN));
    }
    loop {
        match poll(&mut fds, timeout) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let child_exited = fds[0].revents().intersects(ready);
    let mut rest = fds[1..].iter();
    let out_ready = pipes.stdout.is_some() && rest.next().is_some_and(|f| f.revents().intersects(ready));
    let err_ready = pipes.stderr.is_some() && rest.next().is_some_and(|f| f.revents().intersects(ready));
    Ok((out_ready, err_ready, child_exited))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    fn run_collecting(script: &str, deadline: Option<Instant>) -> (Finished, Vec<(Stream, Vec<u8>)>) {
        let mut seen = Vec::new();
        let ended = run(shell(script), deadline, &|| None, |s, d| {
            seen.push((s, d.to_vec()));
            Ok(())
        })
        .unwrap();
        (finished(ended), seen)
    }

    fn finished(ended: Ended) -> Finished {
        match ended {
            Ended::Finished(f) => f,
            Ended::NotStarted(e) => panic!("the command did not start: {e}"),
        }
    }

    #[test]
    fn captures_both_streams_and_the_exit_code() {
        let (f, _) = run_collecting("echo out; echo err >&2; exit 3", None);
        assert_eq!(f.exit_code, 3);
        assert_eq!(f.stdout.bytes, b"out\n");
        assert_eq!(f.stderr.bytes, b"err\n");
        assert!(!f.timed_out);
    }

    #[test]
    fn a_signal_becomes_128_plus_its_number() {
        let (f, _) = run_collecting("kill -TERM $$", None);
        assert_eq!(f.exit_code, 128 + 15);
    }

    #[test]
    fn the_deadline_kills_the_process_group() {
        let started = Instant::now();
        let (f, _) = run_collecting(
            "sleep 30 & sleep 30; echo never",
            Some(Instant::now() + Duration::from_millis(200)),
        );
        assert!(f.timed_out);
        assert_eq!(f.exit_code, 128 + 9);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(f.stdout.bytes.is_empty());
    }

    #[test]
    fn the_guard_stops_a_command_and_says_why() {
        let started = Instant::now();
        let asked = std::cell::Cell::new(0);
        let guard = || {
            asked.set(asked.get() + 1);
            (started.elapsed() > Duration::from_millis(300)).then(|| "the disk is full".to_string())
        };
        let f = finished(run(shell("sleep 30"), None, &guard, |_, _| Ok(())).unwrap());
        assert_eq!(f.stopped.as_deref(), Some("the disk is full"));
        assert_eq!(f.exit_code, 128 + 9);
        assert!(asked.get() >= 2 && started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn background_processes_do_not_hold_up_the_command() {
        let started = Instant::now();
        let (f, _) = run_collecting("sleep 30 & echo started", None);
        assert_eq!(f.exit_code, 0);
        assert_eq!(f.stdout.bytes, b"started\n");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn capture_is_bounded_but_the_callback_sees_everything() {
        let mut streamed = 0;
        let f = finished(
            run(shell("head -c 3000000 /dev/zero"), None, &|| None, |_, d| {
                streamed += d.len();
                Ok(())
            })
            .unwrap(),
        );
        assert_eq!(streamed, 3_000_000);
        assert_eq!(f.stdout.total, 3_000_000);
        assert_eq!(f.stdout.bytes.len(), CAPTURE_LIMIT);
        assert!(f.stdout.truncated());
    }

    #[test]
    fn a_command_that_cannot_start_is_not_started_rather_than_an_error() {
        match run(Command::new("/nonexistent/quire-test"), None, &|| None, |_, _| Ok(())).unwrap() {
            Ended::NotStarted(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            Ended::Finished(f) => panic!("it ran: {f:?}"),
        }
    }
}
