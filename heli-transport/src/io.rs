//! Deadline-bounded waits and reads shared by the transports.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use heli_core::protocol::LineBuffer;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Waits until `fd` shows one of `events` (or an error/hang-up), or until
/// `deadline` (`None`: no deadline).
///
/// Returns the events seen; `TimedOut` when the deadline passed first.
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<PollFlags> {
    Ok(wait_any(&[(fd, events)], deadline)?[0])
}

/// Waits until one of `fds` shows its events (or an error/hang-up), or until
/// `deadline`; returns the events seen on each, `TimedOut` at the deadline.
pub(crate) fn wait_any<const N: usize>(
    fds: &[(BorrowedFd<'_>, PollFlags); N],
    deadline: Option<Instant>,
) -> io::Result<[PollFlags; N]> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                // Round up so that we never wake just before the deadline.
                let ms = left.as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut polled = fds.map(|(fd, events)| PollFd::new(fd, events));
        match poll(&mut polled, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(polled.map(|p| p.revents().unwrap_or(PollFlags::empty()))),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Whether `fd` has bytes to read right now.
pub(crate) fn has_input(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        let mut polled = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut polled, PollTimeout::ZERO) {
            Ok(_) => {
                return Ok(polled[0]
                    .revents()
                    .is_some_and(|seen| seen.contains(PollFlags::POLLIN)))
            }
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads from the non-blocking `fd` until `lines` holds a complete line or
/// the deadline passes, and returns that line.
///
/// `UnexpectedEof` when the writer went away first, `TimedOut` at the
/// deadline, `InvalidData` for an over-long line.
pub(crate) fn read_line(
    fd: impl AsFd,
    lines: &mut LineBuffer,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    read_line_by(fd.as_fd(), lines, deadline, |buf| {
        nix::unistd::read(fd.as_fd(), buf)
    })
}

/// As [`read_line`], reading with `read` (which reads from `fd` into the
/// buffer it is given, as `read(2)` does: `recvmsg(2)`, say).
pub(crate) fn read_line_by(
    fd: BorrowedFd<'_>,
    lines: &mut LineBuffer,
    deadline: Instant,
    mut read: impl FnMut(&mut [u8]) -> nix::Result<usize>,
) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(line) = lines.next_line() {
            return line.map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err));
        }
        match read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => lines.extend(&buf[..n]),
            Err(Errno::EAGAIN) => {
                let seen = wait(fd, PollFlags::POLLIN, Some(deadline))?;
                if !seen.contains(PollFlags::POLLIN)
                    && seen.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Writes all of `data` to the non-blocking `fd` before `deadline`.
pub(crate) fn write_all(fd: impl AsFd, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd.as_fd(), data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => {
                wait(fd.as_fd(), PollFlags::POLLOUT, Some(deadline))?;
            }
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Reads and throws away whatever the non-blocking `fd` holds now.
pub(crate) fn drain(fd: impl AsFd) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(fd.as_fd(), &mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Sends all of `data` on the non-blocking socket `fd` before `deadline`,
/// without `SIGPIPE` when the peer is gone (`BrokenPipe` instead).
///
/// With `stop`, gives up (`Interrupted`) as soon as that descriptor is
/// readable: a listener being stopped does not wait on a slow reader.
pub(crate) fn send_all(
    fd: impl AsFd,
    mut data: &[u8],
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;

    while !data.is_empty() {
        match send(fd.as_fd().as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) => wait_writable(fd.as_fd(), deadline, stop)?,
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Waits until the socket `fd` takes more bytes, as [`send_all`] does:
/// `TimedOut` at `deadline`, `Interrupted` as soon as `stop` is readable.
pub(crate) fn wait_writable(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    stop: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    match stop {
        None => {
            wait(fd, PollFlags::POLLOUT, Some(deadline))?;
        }
        Some(stop) => {
            let seen = wait_any(
                &[(fd, PollFlags::POLLOUT), (stop, PollFlags::POLLIN)],
                Some(deadline),
            )?;
            if !seen[1].is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the listener is stopping",
                ));
            }
        }
    }
    Ok(())
}

/// A refusal to use `path`, saying `why` ("it {why}").
pub(crate) fn refuse(path: &std::path::Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing to use {}: it {why}", path.display()),
    )
}

/// `err`, naming the `path` it happened on.
pub(crate) fn annotate(err: io::Error, path: &std::path::Path) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}
