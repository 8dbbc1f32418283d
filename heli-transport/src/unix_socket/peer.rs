//! Connecting to a session's socket, and who is at the other end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Pid, Processes};
use heli_proc::{ProcFs, ProcessHandle};
use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::socket::sockopt::{PeerCredentials, PeerPidfd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, UnixCredentials};

use crate::io::annotate;

/// How long probing a socket (is a controller behind it?) may take.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A new Unix stream socket, close-on-exec and non-blocking, to connect or
/// to bind.
pub(super) fn stream_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// Connects to the socket at `path` without blocking past `deadline`.
///
/// Errors keep their `errno` (`ENOENT`, `ECONNREFUSED`, ...); `TimedOut`
/// when the listener's backlog stayed full until the deadline.
pub(super) fn connect_socket(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path).map_err(|err| annotate(err.into(), path))?;
    let mut backoff = Duration::from_micros(20);
    loop {
        let fd = stream_socket()?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            // The listener's backlog is full (a Unix socket never answers
            // EINPROGRESS): wait for the accept loop.
            Err(Errno::EAGAIN) if Instant::now() < deadline => {
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(10));
            }
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{}: the controller accepts no connection", path.display()),
                ))
            }
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

pub(super) fn credentials(stream: &UnixStream) -> io::Result<UnixCredentials> {
    Ok(socket::getsockopt(stream, PeerCredentials)?)
}

/// The process at the other end, as the kernel saw it connect or listen.
pub(super) fn server_pid(stream: &UnixStream) -> Option<u32> {
    credentials(stream)
        .ok()
        .and_then(|cred| u32::try_from(cred.pid()).ok())
        .filter(|&pid| pid > 0)
}

/// The process at the other end of `stream`, which connected with `pid`
/// (from [`credentials`]), held so that it cannot be confused with a later
/// process given its pid; `None` when it cannot be told (it has exited
/// already, or its pid is not visible here).
///
/// The kernel's own pidfd of the peer (`SO_PEERPIDFD`, Linux 6.5 and
/// later) is exact. Before 6.5, the pid is opened right away
/// (`pidfd_open`), and the process's identity read after opening must
/// match the one read before: a pid reused in between with another start
/// time is caught, but not one reused before the connection was accepted
/// with a start time equal to the clock tick (see [`ProcessHandle`]).
pub(super) fn peer_process(stream: &UnixStream, pid: i32) -> Option<ProcessHandle> {
    let opened = match socket::getsockopt(stream, PeerPidfd) {
        Ok(pidfd) => ProcessHandle::from_pidfd(pidfd),
        // A kernel without SO_PEERPIDFD.
        Err(Errno::ENOPROTOOPT) => by_pid(pid),
        // The peer is gone already (or in no pid namespace of ours).
        Err(err) => {
            debug!("no pidfd for the peer PID {pid}: {err}");
            return None;
        }
    };
    opened.unwrap_or_else(|err| {
        warn!("cannot tell which process PID {pid} is: {err}");
        None
    })
}

/// The process with pid `pid`, if its identity read before opening it
/// matches the one read after.
pub(super) fn by_pid(pid: i32) -> std::io::Result<Option<ProcessHandle>> {
    let Some(pid) = u32::try_from(pid).ok().and_then(Pid::new) else {
        return Ok(None);
    };
    match ProcFs.identity(pid)? {
        Some(before) => ProcessHandle::open(before),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_peer_is_held_by_a_pidfd_with_or_without_so_peerpidfd() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let me = ProcFs.identity(Pid::this()).unwrap();
        let cred = credentials(&accepted).unwrap();
        let handle = peer_process(&accepted, cred.pid()).unwrap();
        assert_eq!(handle.identity(), me);
        // The way of kernels before 6.5.
        let handle = by_pid(cred.pid()).unwrap().unwrap();
        assert_eq!(handle.identity(), me);
        assert!(by_pid(0).unwrap().is_none());
    }
}
