//! Connecting to a session's socket, and who is at the other end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt::PeerCredentials, AddressFamily, SockFlag, SockType};
use nix::sys::socket::{UnixAddr, UnixCredentials};

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
