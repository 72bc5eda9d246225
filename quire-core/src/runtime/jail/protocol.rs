//! What quire-ci and the helper inside a job's sandbox say to each other,
//! over a `SOCK_SEQPACKET` socket pair (one message per packet): a command
//! to launch, with the write ends of its output pipes passed along
//! (`SCM_RIGHTS`); a request to kill it; and what became of it (one answer
//! per command, so a command costs one round trip). Nothing here runs a
//! process.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::runtime::limits::Limits;

/// The largest message: a Unix socket's default send buffer is about
/// 208 KiB, and a packet must fit in it whole.
pub const MAX_MESSAGE: usize = 192 * 1024;

/// One command for the helper to start. Its stdout and stderr are the two
/// descriptors sent with the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub argv: Vec<String>,
    /// The command's whole environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub limits: Limits,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    Launch(Launch),
    /// Kill the running command's process group.
    Kill,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// It could not be started (`not_found`: no such program).
    NotStarted { message: String, not_found: bool },
    /// It ended: its exit code, or 128 + the signal that killed it.
    Exited { code: i32 },
}

/// Sends one message, with `fds` attached.
pub fn send(socket: BorrowedFd<'_>, message: &impl Serialize, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the command and its environment take {} bytes, more than {MAX_MESSAGE}", bytes.len()),
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    sendmsg(socket, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives one message and the descriptors that came with it; `None` when
/// the other side has closed the socket.
pub fn receive<T: DeserializeOwned>(socket: impl AsFd) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match recvmsg(&socket, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.bytes == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..received.bytes]).map_err(io::Error::other)?;
    Ok(Some((message, fds)))
}
